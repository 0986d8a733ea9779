"""The pinned release on a node: releases/<version>/ (binaries + error-pages), built locally at the
pinned commit, sent as a compressed delta against what the node holds, sha256-checked there,
then renamed into place. Immutable: an existing release is reused, never rewritten.

A release is defined by its version and commit; its manifest (.sando/manifest.json) says
which files and binaries it holds. Changing how the node is reached, or binNames' order,
never touches a release. Delete never removes anything: old releases are pruned by the
pointer after a switch (pointer.py), from what the node really holds.
"""

from __future__ import annotations

import os
import secrets
import struct
import time

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from .. import build, commands, diagnostics, elf, paths, scripts, ssh, times, transfer
from ..errors import OperatorError
from ..transfer import NodeRelease
from .base import (NodeProvider, AUTH, NodeResource, changed, conn_of, mark_unreachable, node_of, node_state, public,
                   refresh_auth, remember, say_auth_only, unreachable)

MB = 1024


class NotTheTestedBytes(OperatorError):
    """The pin's bytes on this node would differ from what its source stack verified (issue 22.1):
    the node is refused, and changes nothing at all in this run."""


def _mb(kib: int) -> str:
    return f"{max(kib, 0) / MB:.0f} MB" if kib >= MB else f"{max(kib, 0)} KB"


class ReleaseProvider(NodeProvider):
    DEFINING = ["version", "commit", "releaseRoot"]

    def diff(self, _id, olds, news):
        if unreachable(news):  # said once, by the node's pointer, at the end
            return DiffResult(changes=False, replaces=[])
        changes = changed(olds, news, [*self.DEFINING, *AUTH])
        if sorted(olds.get("binNames") or []) != sorted(news.get("binNames") or []):
            changes.append("binNames")
        if (olds.get("expect") or None) != (news.get("expect") or None):
            changes.append("expect")  # a new promotion's bytes: the release is checked against them
        if not changes:  # drift: the release dir is gone, or another commit sits there
            held = node_state(news).releases.get(news["version"])
            if held is None or held.commit != news["commit"]:
                changes.append("version")
        elif set(changes) <= set(AUTH) and node_state(news).releases.get(news["version"]) is not None:
            say_auth_only(news, changes)
        return DiffResult(changes=bool(changes), replaces=[], delete_before_replace=False)

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:{props['releaseRoot']}", outs=self._sent(props, {}))

    def update(self, _id, olds, news):
        if not changed(olds, news, self.DEFINING) and sorted(olds["binNames"]) == sorted(news["binNames"]):
            held = node_state(news).releases.get(news["version"])
            if held is not None and held.commit == news["commit"] and olds.get("expect") == news.get("expect"):
                return UpdateResult(outs={**refresh_auth(olds, news), "outcome": {"ok": True, "node": node_of(news)}})
        return UpdateResult(outs=self._sent(news, olds))

    def _sent(self, props: dict, olds: dict) -> dict:
        """The release sent, or this node's failure recorded for the verdict (issue 19.3): the run
        goes on to record every node's outputs (a failed run's outputs must not look deleted) and
        the verdict says it once, at the end. A build failure is every node's: it fails here."""
        try:
            away = unreachable(props)
            if away:  # a first deploy of a node this run cannot reach: nothing built or sent for it
                raise OperatorError(away)
            return {**self._ensure(props), "outcome": {"ok": True, "node": node_of(props)}}
        except build.BuildError:
            raise
        except OperatorError as exc:
            node, version = node_of(props), props["version"]
            if isinstance(exc, NotTheTestedBytes):
                # what was tested is what ships: held out of the rest of this run as a node the pin's
                # refusal holds (providers/reach.py), so its host config step, which waits for this
                # verdict (stack.host_waits_for), changes nothing either
                mark_unreachable(props, str(exc), f"refused (not {props['expect']['from']}'s bytes)")
                diagnostics.log("warning", f"{node}: {version} refused here (the error at the end says why)")
            else:
                diagnostics.log("warning", f"{node}: {version} was not sent here (the error at the end says why)")
            return {**public(props), **{k: olds.get(k) for k in ("sha256", "path", "createdAt", "lastTransfer")},
                    "outcome": {"ok": False, "node": node, "message": str(exc)}}

    def delete(self, _id, props):
        diagnostics.log("info", f"{node_of(props)}: releases under {props['releaseRoot']}/releases left in place "
                                "(sando never deletes a release on destroy)")

    def read(self, id_, props):
        state = node_state(props, fresh=True)
        held = state.releases.get(props["version"])
        if held is None:
            return ReadResult(id_=None, outs={})
        return ReadResult(id_=id_, outs={**props, "commit": held.commit})

    # ---------------------------------------------------------------------------------

    def _ensure(self, props: dict) -> dict:
        conn, root, version, node = conn_of(props), props["releaseRoot"], props["version"], node_of(props)
        state = node_state(props)
        held = state.releases.get(version)
        if held is None and version in state.foreign:
            raise OperatorError(
                f"{node}: {root}/releases/{version} exists but sando did not make it (no {paths.MANIFEST}); "
                "move it away on the node or pin another version name (sando:version)")
        if held is not None:
            return self._reuse(props, held)
        progress = diagnostics.Progress()  # the build's own progress, then the bytes sent (issue 19.5)
        expect = props.get("expect")
        art = None
        if expect and expect.get("commit") == props["commit"]:  # promoted: the source's own bytes, when
            art = build.from_objects(props["commit"], expect["files"], list(props["binNames"]))  # fetched here
            if art is not None:
                diagnostics.log("info", f"{node}: {version} is {expect['from']}'s bytes (sando:verifiedBuild), "
                                        "not a local build")
        if art is None:
            art = build.ensure_built(props["build"]["repo"], props["commit"], props["build"]["command"],
                                     props["build"]["binDir"], props["build"]["errorPagesDir"], list(props["binNames"]),
                                     progress=lambda said: progress.say("build", f"building {version}: {said}"))
        self._fits(node, version, art, props["binNames"], state)
        self._same_bytes(props, {rel: digest for rel, digest, _ in art.files}, "built here",
                         f"; remove {os.path.dirname(art.root)} to build it again")
        manifest = {"sando": 2, "version": version, "commit": props["commit"], "createdAt": time.time(),
                    "bins": sorted(props["binNames"]), "files": {rel: digest for rel, digest, _ in art.files}}
        if conn.local:  # the machine that built it: no stream, files by hard link from the artifacts
            plan = transfer.plan_local(art, manifest, state.held())
        else:
            plan = transfer.plan(art, manifest, state.held(), state.zstd)
        if state.free_kib < plan.need_kib:
            raise self._no_space(node, state.free_kib, version, plan.need_kib)
        res = self._send(conn, root, version, plan, state.zstd, progress)
        # a delta did not rebuild the right bytes (e.g. a bad local cache): drop those deltas and send
        # the changed files whole
        if res.rc == scripts.code("EX_SUMS_FAILED") and plan.deltas:
            for delta in plan.deltas:
                delta.unlink(missing_ok=True)
            diagnostics.log("warning", f"{node}: a delta of {version} did not match its sha256; sent whole files")
            plan = transfer.plan(art, manifest, state.held(), state.zstd, patches=False)
            res = self._send(conn, root, version, plan, state.zstd, progress)
        report = scripts.Report.parse(res.out, node)
        outcome = scripts.name_of(res.rc)
        if outcome == "EX_NO_SPACE":
            raise self._no_space(node, int(report.one("free") or 0), version, plan.need_kib)
        if outcome == "EX_UNREADABLE":
            raise OperatorError(f"{node}: cannot read {report.one('unreadable')}; nothing was sent: fix it on the node "
                                "and run pulumi up again")
        if outcome == "EX_EXISTS":  # there now (e.g. a retried upload that had finished): reuse it if it is ours
            held = node_state(props, fresh=True).releases.get(version)
            if held is not None:
                return self._reuse(props, held)
        if outcome == "EX_SUMS_FAILED":
            raise OperatorError(f"{node}: {version} arrived with files that do not match their sha256 (the upload "
                                "was damaged on the way); nothing was kept or switched: run pulumi up again")
        if res.rc != 0:
            said = quote_lines(res.err or res.out)
            if "No space left on device" in (res.err or res.out):
                raise OperatorError(f"{node}: releases/ ran out of space (or inodes) while receiving {version} "
                                    f"({said}); nothing was switched and the partial upload was removed. Free space "
                                    "on the node (or lower sando:keepReleases) and run pulumi up again")
            raise OperatorError(f"{node}: the upload of {version} failed ({said}); "
                                "nothing was switched and the node keeps its releases: run pulumi up again")
        remember(props, node_state(props).with_release(
            NodeRelease(version, props["commit"], manifest["createdAt"], manifest["files"])))
        return self._outs(props, manifest["files"], manifest["createdAt"],
                          {"version": version, "bytesSent": res.sent, **plan.counts, "at": _now()})

    def _reuse(self, props: dict, held: NodeRelease) -> dict:
        node, version = node_of(props), props["version"]
        if held.commit != props["commit"]:
            raise OperatorError(
                f"{node}: release {version} on the node was built from commit {held.commit[:12]}, but "
                f"sando:version {version} now names {props['commit'][:12]}; releases are immutable: "
                "deploy the new commit under a new version name")
        missing = sorted(set(props["binNames"]) - set(held.files))
        if missing:
            raise OperatorError(
                f"{node}: release {version} on the node has no {', '.join(missing)} (sando:binNames asks for it); "
                "releases are immutable: pin a new version to ship it")
        self._same_bytes(props, held.files, f"on {node}")
        return self._outs(props, held.files, held.created_at,
                          {"version": version, "bytesSent": 0, "linked": len(held.files), "patched": 0, "full": 0,
                           "at": _now()})

    @staticmethod
    def _same_bytes(props: dict, files: dict[str, str], where: str, rebuild: str = "") -> None:
        """Issue 22.1: a promoted release is byte-identical to what its source stack runs (the sums
        sando promote read from the source's nodes, props["expect"]); otherwise this node fails
        before a byte is sent, naming each file that differs and both sums."""
        expect = props.get("expect")
        if not expect or expect.get("commit") != props["commit"]:
            return
        want, src = expect["files"], expect["from"]
        differ = [f for f in sorted(set(want) | set(files)) if want.get(f) != files.get(f)]
        if differ:
            said = "; ".join(f"{f}: {where} {files.get(f) or 'missing'}, on {src} {want.get(f) or 'missing'}"
                             for f in differ)
            if where.startswith("on "):  # held already: releases are immutable, it is never rewritten
                todo = (f"releases are immutable: move {props['releaseRoot']}/releases/{props['version']} away on the "
                        "node (when it is not live) and run pulumi up again")
            else:
                to = f" --to {expect['to']}" if expect.get("to") else ""
                todo = (f"Run `sando promote --from {src}{to}` (it fetches {src}'s bytes), or build with the toolchain "
                        f"that built {src}'s (same compiler, flags, paths{rebuild})")
            raise NotTheTestedBytes(
                f"{node_of(props)}: {props['version']} ({props['commit'][:12]}) {where} is not byte-identical to what "
                f"{src} runs: {said}; nothing was sent. {todo}")

    @staticmethod
    def _fits(node: str, version: str, art: build.Artifacts, bins: list[str], state) -> None:
        """Issue 22.2: each binary runs on the node (its ELF machine vs `uname -m`, the newest
        GLIBC_x.y it needs vs the node's glibc), checked before a byte is sent. A file that is not
        ELF (a script) is not checked; a static binary needs no glibc."""
        if not state.arch and not state.glibc:
            return  # a node read that does not say (cannot happen with this probe): nothing to compare
        why = []
        for b in sorted(bins):
            try:
                need = elf.needs(os.path.join(art.root, b))
            except (elf.NotElf, OSError, struct.error, ValueError):
                continue
            reason = elf.misfit(b, need, state.arch, elf.node_glibc(state.glibc))
            if reason:
                why.append(reason)
        if why:
            raise OperatorError(
                f"{node}: the build of {version} cannot run there: {'; '.join(why)}; nothing was sent. Build on a "
                "machine matching the node (or a static build) and run pulumi up again")

    @staticmethod
    def _send(conn: ssh.Conn, root: str, version: str, plan: transfer.Plan, zstd: bool,
              progress: diagnostics.Progress | None = None) -> ssh.Result:
        if conn.local:  # nothing is streamed: 0 bytes sent
            script = commands.receive_release(root, version, secrets.token_hex(4), plan.need_kib, plan.steps, "none")
            return ssh.run(conn, script, check=False)
        compression = "zstd" if zstd else "gzip"
        script = commands.receive_release(root, version, secrets.token_hex(4), plan.need_kib, plan.steps, compression)
        said = (lambda sent: progress.say("upload", f"sending {version}: {_sent(sent)} sent")) if progress else None
        return ssh.run(conn, script, stdin=transfer.stream(plan, compression), retry=True, check=False, on_sent=said)

    @staticmethod
    def _no_space(node: str, free_kib: int, version: str, need_kib: int) -> OperatorError:
        free, need = _mb(free_kib), _mb(need_kib)
        if free == need:  # "has 2 MB free, v2 needs 2 MB" says nothing: the exact numbers (issue 19.10)
            free, need = f"{max(free_kib, 0)} KB", f"{max(need_kib, 0)} KB"
        return OperatorError(f"{node}: releases/ has {free} free, {version} needs {need}; "
                             "nothing was sent. Free space on the node (or lower sando:keepReleases) and run "
                             "pulumi up again")

    @staticmethod
    def _recorded(props: dict, files: dict) -> dict:
        """The pin's recorded build (issue 22.5): the bytes promote verified on the source stack, else
        this machine's cached build of the commit (never built just for this), else what was sent."""
        expect = props.get("expect")
        if expect and expect.get("commit") == props["commit"]:
            return dict(expect["files"])
        return build.cached_files(props["commit"]) or dict(files)

    @classmethod
    def _outs(cls, props: dict, files: dict, created_at: float, transfer_: dict) -> dict:
        return {**public(props), "sha256": {b: files.get(b) for b in props["binNames"]},
                "recordedBuild": cls._recorded(props, files),
                "path": paths.NodePaths(props["releaseRoot"]).release(props["version"]),
                "createdAt": times.iso(created_at), "lastTransfer": transfer_}  # issue 20.9: ISO UTC


def _sent(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n // 1024} KB"


def quote_lines(text: str, most: int = 2) -> str:
    """A tool's output quoted intact on one line: its distinct lines whole (never cut mid-word), the
    first `most` of them, then how many more there were (issue 19.10: tar's ENOSPC lines)."""
    lines = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not lines:
        return "no output"
    more = len(lines) - most
    return "; ".join(lines[:most]) + (f"; and {more} more line{'s' if more > 1 else ''}" if more > 0 else "")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ReleaseFiles(NodeResource):
    _provider_class, _output_names = ReleaseProvider, ("sha256", "path", "createdAt", "lastTransfer", "outcome",
                                                       "recordedBuild")
    sha256: pulumi.Output[dict]
    path: pulumi.Output[str]
    commit: pulumi.Output[str]
    lastTransfer: pulumi.Output[dict]
    outcome: pulumi.Output[dict]  # {ok, node, message}: a failure goes to the verdict (pointer.py)
    recordedBuild: pulumi.Output[dict]  # the pin's recorded build: release-relative path -> sha256
