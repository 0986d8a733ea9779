"""sando's resource providers: Pulumi dynamic providers that act on a node over SSH.

pulumi-command's provider binary cannot be built here (see README "Engine"), so
these small providers do the remote work. Being ours, they also give what
pulumi-command lacks: a Read for drift (refresh sees a hand-edited `current`
symlink or file), sha256-verified uploads, and connection reuse per node.

Every resource takes `connection` (host, port, user, hostKey, insecure) and the
secret `privateKey` (None = SSH agent); both are outputs too because Pulumi
hands a provider only the old outputs on delete. `privateKey` and `token` are
declared secret outputs by the resource classes, so state holds them encrypted.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import secrets
import time
from datetime import datetime, timezone
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult

from . import build, commands, paths, ssh

SECRET_OUTPUTS = ["privateKey", "token"]


def _conn(props: dict) -> ssh.Conn:
    return ssh.Conn.from_props(props["connection"], props.get("privateKey"))


def _target(props: dict) -> tuple[str, int, str]:
    c = props["connection"]
    return (c["host"], int(c["port"]), props.get("root", ""))


def _changed(olds: dict, news: dict, keys: list[str]) -> list[str]:
    return [k for k in keys if olds.get(k) != news.get(k)]


# How a resource reaches its node. A change here (a rotated key, another user) is an update
# that only refreshes the outputs, so that a later delete uses the new credentials.
AUTH = ["connection", "privateKey"]


def _refresh_auth(olds: dict, news: dict) -> dict:
    return {**_public(olds), **{k: news.get(k) for k in AUTH}}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _NodeResource(Resource):
    """A dynamic resource acting on a node: `outputs` start unknown; secrets stay secret outputs."""

    _provider_class: type[ResourceProvider]
    _output_names: tuple[str, ...] = ()

    def __init__(self, name: str, props: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            self._provider_class(), name, {**props, **dict.fromkeys(self._output_names)},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)),
        )


# --- files --------------------------------------------------------------------------


class RemoteFileProvider(ResourceProvider):
    """A file on the node with given content and mode; written atomically (temp + rename)."""

    def _write(self, props: dict) -> dict:
        conn, path = _conn(props), props["path"]
        tmp = f"{path}.sando-tmp-{secrets.token_hex(4)}"
        ssh.upload(conn, [(props["content"].encode(), tmp, 0o600)])
        ssh.run(conn, commands.install_file(tmp, path, int(props["mode"])))
        return {**_public(props), "sha256": sha256_text(props["content"])}

    def create(self, props):
        outs = self._write(props)
        return CreateResult(id_=f"{props['connection']['host']}:{props['path']}", outs=outs)

    def diff(self, _id, olds, news):
        news = {**news, "sha256": sha256_text(news["content"])}
        changes = _changed(olds, news, ["path", "sha256", "mode", *AUTH])
        replaces = ["path"] if olds.get("path") != news["path"] or _target(olds) != _target(news) else []
        return DiffResult(changes=bool(changes), replaces=replaces, delete_before_replace=False)

    def update(self, _id, olds, news):
        if olds.get("sha256") == sha256_text(news["content"]) and olds.get("mode") == news["mode"]:
            return UpdateResult(outs=_refresh_auth(olds, news))
        return UpdateResult(outs=self._write(news))

    def delete(self, _id, props):
        ssh.run(_conn(props), commands.remove_files(props["path"]))

    def read(self, id_, props):
        _, out, _ = ssh.run(_conn(props), commands.file_state(props["path"]))
        if not out.strip():
            return ReadResult(id_=None, outs={})  # gone: refresh drops it, next up recreates it
        digest, mode = out.split()[0], int(out.split()[-1], 8)
        return ReadResult(id_=id_, outs={**props, "sha256": digest, "mode": mode})


class RemoteFile(_NodeResource):
    _provider_class, _output_names = RemoteFileProvider, ("sha256",)
    sha256: pulumi.Output[str]
    path: pulumi.Output[str]

    def __init__(self, name: str, *, connection, private_key, path: str, content: str, mode: int,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, {"connection": connection, "privateKey": private_key, "path": path,
                                "content": content, "mode": mode}, opts)


# --- commands ----------------------------------------------------------------------------


class RemoteCommandProvider(ResourceProvider):
    """Runs `create` on create, `update` (or `create`) when its triggers change, `delete` on delete."""

    def _run(self, props: dict, cmd: str) -> dict:
        _, out, _ = ssh.run(_conn(props), cmd)
        return {**_public(props), "stdout": out[-4000:]}

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:{secrets.token_hex(4)}",
                            outs=self._run(props, props["create"]))

    def diff(self, _id, olds, news):
        changes = _changed(olds, news, ["create", "update", "delete", "triggers", *AUTH])
        replaces = ["connection"] if _target(olds) != _target(news) else []
        return DiffResult(changes=bool(changes), replaces=replaces)

    def update(self, _id, olds, news):
        if not _changed(olds, news, ["create", "update", "delete", "triggers"]):
            return UpdateResult(outs=_refresh_auth(olds, news))
        return UpdateResult(outs=self._run(news, news.get("update") or news["create"]))

    def delete(self, _id, props):
        if props.get("delete"):
            ssh.run(_conn(props), props["delete"])


class RemoteCommand(_NodeResource):
    _provider_class, _output_names = RemoteCommandProvider, ("stdout",)
    stdout: pulumi.Output[str]

    def __init__(self, name: str, *, connection, private_key, create: str, update: str | None = None,
                 delete: str | None = None, triggers: list | None = None, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, {"connection": connection, "privateKey": private_key, "create": create,
                                "update": update, "delete": delete, "triggers": triggers or []}, opts)


# --- releases ---------------------------------------------------------------------------


def _node_paths(props: dict) -> paths.NodePaths:
    return paths.NodePaths(root=props.get("root", ""), release_root=props["releaseRoot"])


def _live_links(conn: ssh.Conn, np: paths.NodePaths) -> tuple[str | None, str | None]:
    """Versions `current` and `previous` point at (None where a link is missing), in one round trip."""
    out = ssh.run(conn, " ; ".join([commands.read_link(np.current), "echo ---", commands.read_link(np.previous)]))[1]
    cur, _, prev = (part.strip() for part in out.partition("---"))
    return (paths.NodePaths.version_of_target(cur) if cur else None,
            paths.NodePaths.version_of_target(prev) if prev else None)


def _read_manifest(conn: ssh.Conn, np: paths.NodePaths, version: str) -> dict | None:
    rc, out, _ = ssh.run(conn, commands.cat(np.manifest(version)), check=False)
    if rc != 0:
        return None
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return None


class ReleaseProvider(ResourceProvider):
    """releases/<version>/ on a node: built locally, uploaded to a staging dir, sha256-verified
    there, then renamed into place. Immutable: an existing release is reused, never rewritten.
    Delete (= pruning by keepReleases) never removes the live or the previous release."""

    def create(self, props):
        conn, np, version = _conn(props), _node_paths(props), props["version"]
        ssh.run(conn, " && ".join([commands.mkdir_p(np.releases), commands.clean_staging(np.releases)]))
        existing = _read_manifest(conn, np, version)
        if existing is not None:
            if existing.get("commit") != props["commit"]:
                raise Exception(
                    f"sando:version: release {version} on {conn.label} was built from commit "
                    f"{existing.get('commit', '?')[:12]}, but {version} now resolves to {props['commit'][:12]}; "
                    "releases are immutable: deploy the new commit under a new version name")
            ssh.run(conn, commands.verify_sums(np.release(version)))
            return CreateResult(id_=f"{conn.host}:{version}", outs=self._outs(props, existing, 0))
        b = props["build"]
        art = build.ensure_built(b["repo"], props["commit"], b["command"], b["binDir"], b["errorPagesDir"],
                                 list(props["binNames"]), b.get("cacheDir"))
        staging = np.staging(version, secrets.token_hex(4))
        manifest = {
            "sando": 1, "version": version, "commit": props["commit"], "createdAt": time.time(),
            "files": {rel: digest for rel, digest, _ in art.files}, "bins": list(props["binNames"]),
        }
        sent = ssh.upload(conn, [  # one SFTP session: the files, then their sums and the manifest
            *[(posixpath.join(art.root, rel), posixpath.join(staging, rel), mode) for rel, _, mode in art.files],
            (art.sums().encode(), posixpath.join(staging, paths.SUMS), 0o644),
            (json.dumps(manifest, indent=1).encode(), posixpath.join(staging, paths.MANIFEST), 0o644),
        ])
        ssh.run(conn, " && ".join([commands.verify_sums(staging),
                                   commands.finalize_release(staging, np.release(version))]))
        return CreateResult(id_=f"{conn.host}:{version}", outs=self._outs(props, manifest, sent))

    @staticmethod
    def _outs(props: dict, manifest: dict, sent: int) -> dict:
        files = manifest.get("files", {})
        return {
            **_public(props),
            "sha256": {b: files.get(b) for b in props["binNames"]},
            "path": _node_paths(props).release(props["version"]),
            "uploadedBytes": sent,
            "createdAt": manifest.get("createdAt"),
        }

    def diff(self, _id, olds, news):
        # The build settings do not define a release; its commit does.
        changes = _changed(olds, news, ["version", "commit", "binNames", "releaseRoot", "root", *AUTH])
        replaces = [k for k in changes if k not in AUTH] + (
            ["connection"] if _target(olds) != _target(news) else [])
        return DiffResult(changes=bool(changes), replaces=replaces, delete_before_replace=False)

    def update(self, _id, olds, news):  # only how to reach the node changed
        return UpdateResult(outs=_refresh_auth(olds, news))

    def delete(self, _id, props):
        conn, np, version = _conn(props), _node_paths(props), props["version"]
        if version in _live_links(conn, np):
            return  # never prune the live release or the rollback target
        ssh.run(conn, commands.remove_release(np.release(version)), check=False)

    def read(self, id_, props):
        manifest = _read_manifest(_conn(props), _node_paths(props), props["version"])
        if manifest is None:
            return ReadResult(id_=None, outs={})
        return ReadResult(id_=id_, outs={**props, "commit": manifest.get("commit")})


class ReleaseFiles(_NodeResource):
    _provider_class, _output_names = ReleaseProvider, ("sha256", "path", "uploadedBytes", "createdAt")
    sha256: pulumi.Output[dict]
    path: pulumi.Output[str]
    uploadedBytes: pulumi.Output[int]
    commit: pulumi.Output[str]


# --- restart warning -------------------------------------------------------------------------


class RestartWarningProvider(ResourceProvider):
    """POSTs the app's restart warning (once per new version). Runs alongside the upload, so the
    notice period overlaps it; the pointer waits out whatever is left before restarting."""

    def _send(self, props: dict) -> dict:
        conn = _conn(props)
        cmd = commands.restart_warning(props["url"], int(props["seconds"]), timeout=10)
        header = f"Authorization: Bearer {props['token']}\n".encode()
        try:
            _, code, err = ssh.run(conn, cmd, stdin=header, timeout=20, check=False)
            ok = code.strip().startswith("2")
            status = "sent" if ok else f"failed: HTTP {code.strip() or '-'} {err.strip()}"[:300]
        except ssh.RemoteError as exc:
            ok, status = False, f"failed: {exc}"[:300]
        if not ok and props.get("onFailure") == "abort":
            raise Exception(f"restart warning to {props['url']} on {conn.label} {status} "
                            "(sando:restartWarningOnFailure=abort); nothing was restarted")
        return {**_public(props), "token": props["token"], "status": status,
                "sentAt": time.time() if ok else None}

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:warning", outs=self._send(props))

    def diff(self, _id, olds, news):
        changes = _changed(olds, news, ["version", "url", "seconds", *AUTH])
        return DiffResult(changes=bool(changes), replaces=[])

    def update(self, _id, olds, news):
        if not _changed(olds, news, ["version", "url", "seconds"]):
            return UpdateResult(outs=_refresh_auth(olds, news))
        return UpdateResult(outs=self._send(news))


class RestartWarning(_NodeResource):
    _provider_class, _output_names = RestartWarningProvider, ("status", "sentAt")
    sentAt: pulumi.Output[float]
    status: pulumi.Output[str]


# --- current pointer ---------------------------------------------------------------------


class HealthError(Exception):
    pass


class PointerProvider(ResourceProvider):
    """Switches <releaseRoot>/current to releases/<version> atomically, restarts the service,
    health-checks it, and switches back (restart + check again) when it is not healthy."""

    def _health(self, conn: ssh.Conn, props: dict) -> str:
        deadline = time.monotonic() + float(props["healthTimeout"])
        last = "no answer"
        while True:
            rc, out, err = ssh.run(conn, commands.http_probe(props["healthUrl"], timeout=3), check=False, timeout=10)
            if rc == 0:
                if not props.get("expectVersion") or props["version"] in out or props["commit"] in out:
                    return "ok"
                last = f"serves {out.strip()[:200]!r}, not version {props['version']}"
            else:
                last = (err.strip() or f"curl exit {rc}")[:200]
            if time.monotonic() >= deadline:
                raise HealthError(last)
            time.sleep(float(props["healthInterval"]))

    def _switch(self, conn, np, service: str, version: str, previous: str | None) -> None:
        """Point current (and previous) at their releases, then restart; a failed restart is
        reported as HealthError so the caller switches back."""
        cmds = [commands.switch_link(np.current, np.link_target(version)),
                commands.switch_link(np.error_pages, posixpath.join("current", paths.ERROR_PAGES))]
        if previous and previous != version:
            cmds.append(commands.switch_link(np.previous, np.link_target(previous)))
        ssh.run(conn, " && ".join(cmds))
        rc, out, err = ssh.run(conn, commands.systemctl("reload-or-restart", service), check=False, timeout=120)
        if rc != 0:
            raise HealthError(f"systemctl reload-or-restart {service} exited {rc}: {(err or out).strip()[:300]}")

    def _apply(self, props: dict) -> dict:
        conn, np, version = _conn(props), _node_paths(props), props["version"]
        ssh.run(conn, commands.verify_sums(np.release(version)))  # complete manifest or refuse
        live, previous = _live_links(conn, np)
        if live == version:
            health = self._health(conn, props)
            return self._outs(props, live, previous, props.get("switchedAt"), health)
        sent_at, seconds = props.get("warningSentAt"), float(props.get("warningSeconds") or 0)
        if sent_at and seconds:
            time.sleep(max(0.0, float(sent_at) + seconds - time.time()))
        switched_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            self._switch(conn, np, props["service"], version, live)
            health = self._health(conn, props)
        except HealthError as exc:
            if not live:
                raise Exception(f"{version} on {conn.label} is not healthy ({exc}); there is no earlier "
                                "release to switch back to") from None
            try:
                self._switch(conn, np, props["service"], live, previous)
                self._health(conn, props | {"version": live, "expectVersion": False})
                again = f"previous version {live} is live again"
            except HealthError as exc2:
                again = f"switched back to {live}, but it is not healthy either ({exc2})"
            raise Exception(f"{version} failed its health check on {conn.label} ({exc}); {again}") from None
        return self._outs(props, version, live, switched_at, health)

    @staticmethod
    def _outs(props, live, previous, switched_at, health) -> dict:
        return {**_public(props), "liveVersion": live, "previousVersion": previous,
                "switchedAt": switched_at, "health": health}

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:current", outs=self._apply(props))

    def diff(self, _id, olds, news):
        changes = _changed(olds, news, ["commit", "root", "releaseRoot", "service", *AUTH])
        if olds.get("liveVersion") != news["version"]:
            changes.append("version")
        return DiffResult(changes=bool(changes), replaces=[])

    def update(self, _id, olds, news):
        return UpdateResult(outs=self._apply({**news, "switchedAt": olds.get("switchedAt")}))

    def read(self, id_, props):
        live, previous = _live_links(_conn(props), _node_paths(props))
        return ReadResult(id_=id_, outs={**props, "liveVersion": live, "previousVersion": previous})


class Pointer(_NodeResource):
    _provider_class, _output_names = PointerProvider, ("liveVersion", "previousVersion", "switchedAt", "health")
    liveVersion: pulumi.Output[str]
    previousVersion: pulumi.Output[str]
    switchedAt: pulumi.Output[str]  # ISO 8601, UTC
    health: pulumi.Output[str]


def _public(props: dict) -> dict[str, Any]:
    """Props minus the dynamic-provider bookkeeping key."""
    return {k: v for k, v in props.items() if k != "__provider"}
