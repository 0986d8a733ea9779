"""The host config of one node as one resource: every managed host file, checked, installed and
applied by one node-side script (sh/host.sh) in one round trip.

Diff compares the files the program read at sando:bootstrap.ref with the sums and modes the node
really has (read with the node's other state: base.node_state, no extra round trip), so a plain
`pulumi preview` names a file edited by hand and `pulumi up` puts it back; Caddy stopped or
disabled is a change too (Caddy must run when sando manages its Caddyfile). A changed file is
checked on the node by its own tool during the diff already (`caddy validate`, `systemd-analyze
verify`, `sh -n`: the preview fails quoting the tool), and again right before it is installed.

How sando connects (a rotated key, another user) is no change on the node: the diff ignores it
(this resource's delete touches nothing on the node, so old credentials are never needed).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from .. import diagnostics, paths, scripts, ssh, times
from ..errors import OperatorError
from . import warning as warning_step
from .base import (AUTH, NodeProvider, NodeResource, changed, conn_of, held_why, node_of, node_state, public,
                   node_key, say_auth_only, unreachable)

# the host step's outcomes that leave the node as it was (the live files and units unchanged or put
# back): recorded as the node's outcome for the verdict, not a crash of the run
OUTCOMES = ("EX_HOST_CHECK", "EX_HOST_RELOAD", "EX_HOST_HEALTH", "EX_HOST_INPUT", "EX_HOST_WARNING", "EX_BUSY")

TOOL = {"caddyfile": "caddy validate", "unit": "systemd-analyze verify", "sshdGit": "sshd -t",
        "fail2ban": "fail2ban-client -t", "firewall": "sh -n (bash -n by its #! line)",
        "backup": "sh -n (bash -n by its #! line)"}


# Each managed file is an input of its own, named by its item, so the preview's diff names the
# changed files (`[diff: ~caddyfile]`). The order host.sh applies them in (Pulumi hands a provider
# its inputs in key order): Caddy first, so a unit restart's health check can go through it.
ORDER = ["caddyfile", "unit", "sshdGit", "fail2ban", "firewall", "backup", "cron"]


def files_of(props: dict) -> dict[str, dict]:
    """{item: {path, mode, source, content[, legacy]}} of the managed files, in apply order."""
    return {item: props[item] for item in ORDER if isinstance(props.get(item), dict)}


def with_files(props: dict, files: dict[str, dict]) -> dict:
    """props with exactly these managed files."""
    return {**{k: v for k, v in props.items() if k not in ORDER}, **files}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def desired(props: dict) -> dict[str, tuple[str, int]]:
    """{path: (sha256, mode)} the node must have."""
    return {f["path"]: (_sha(f["content"]), int(f["mode"])) for f in files_of(props).values()}


def drift(props: dict, state) -> list[str]:
    """Items whose file on the node differs from the committed one (content or mode), or is missing,
    or still has an identical copy where an earlier sando version installed it."""
    have = state.host.files if state.host else {}
    out = []
    for item, f in files_of(props).items():
        want = (_sha(f["content"]), int(f["mode"]))
        legacy = have.get(f.get("legacy") or "")
        if have.get(f["path"]) != want or (legacy and legacy[0] == want[0]):
            out.append(item)
    return out


def caddy_down(props: dict, state) -> str | None:
    """Why Caddy needs starting or enabling (when the Caddyfile is managed), else None."""
    if "caddyfile" not in files_of(props) or not state.host:
        return None
    h = state.host
    if h.caddy_active not in ("active", "reloading"):
        return f"caddy is {h.caddy_active}"
    if h.caddy_enabled not in ("enabled", "static", "alias", "enabled-runtime"):
        return f"caddy is {h.caddy_enabled} (it would not start at boot)"
    return None


def plan(props: dict) -> str:
    return "\n".join(f"{item} {int(f['mode']):o} {f['path']} {f['source']} {f.get('legacy') or '-'}"
                     for item, f in files_of(props).items())


def payload(props: dict, token: str | None) -> bytes:
    """stdin of host.sh: the bearer header line (or an empty line), then a tar of the files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for item, f in files_of(props).items():
            data = f["content"].encode()
            info = tarfile.TarInfo(item)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    head = f"Authorization: Bearer {token}\n" if token else "\n"
    return head.encode() + buf.getvalue()


def script(props: dict, mode: str, restart_unit: bool) -> str:
    hc, warn = props.get("healthCheck") or {}, props.get("warning") or {}
    return scripts.command(
        "host", MODE=mode, PLAN=plan(props), SERVICE=props["service"], RELEASE_ROOT=props["releaseRoot"],
        OWNER=props.get("owner") or "", CADDY=1 if "caddyfile" in files_of(props) else 0,
        RESTART_UNIT=1 if restart_unit else 0, HEALTH_URL=hc.get("url") or "", CADDY_URL=hc.get("caddyUrl") or "",
        HEALTH_TIMEOUT=f"{float(hc.get('timeoutSeconds') or 30):g}",
        HEALTH_INTERVAL=f"{float(hc.get('intervalSeconds') or 1):g}",
        WARN_URL=warn.get("url") or "", WARN_SECONDS=int(warn.get("seconds") or 0) if props.get("token") else 0,
        WARN_ABORT=1 if warn.get("onFailure") == "abort" else 0, PREV_DIR=paths.HOST_PREV_DIR,
        UPSTREAM=(props.get("upstream") or {}).get("file") or "",
        UPSTREAM_DEFAULT=(props.get("upstream") or {}).get("default") or "", LOCK_WAIT=scripts.RESTART_LOCK_WAIT)


def failure(props: dict, rc: int, report: scripts.Report, err: str) -> str:
    """One or two lines: what failed on which node, from which source at which ref, the tool's words."""
    node, files = node_of(props), files_of(props)
    at = f"sando:bootstrap.ref {props.get('ref')} ({str(props.get('commit'))[:12]})"

    def src(item: str) -> str:
        f = files.get(item) or {}
        return f"{f.get('source', item)} -> {f.get('path', '?')}"

    name = scripts.name_of(rc)
    if name == "EX_HOST_CHECK":
        item, _, msg = (report.all("check-failed") or ["? "])[0].partition(" ")
        return (f"{node}: {src(item)} at {at} fails {TOOL.get(item, 'its check')}: {msg.strip()}; "
                f"the live file is unchanged. Fix it in the server repo, commit, and point sando:bootstrap.ref at it")
    if name in ("EX_HOST_RELOAD", "EX_HOST_HEALTH"):
        failed = report.all("reload-failed")
        if failed:
            item, _, msg = failed[0].partition(" ")
            return f"{node}: {src(item)} at {at} was not taken: {msg.strip()}"
        why = "; ".join(report.all("restart-failed") + [h for h in report.all("health") if h.startswith("fail")])
        back = (report.all("unit-reverted") or ["the previous unit is back"])[0]
        return (f"{node}: {props['service']} failed after its unit changed ({src('unit')} at {at}): {why}; {back}. "
                "(sando:healthCheck)")
    if name == "EX_HOST_WARNING":
        return (f"{node}: the restart warning failed ({'; '.join(report.all('warning-failed'))}) and "
                "sando:restartWarningOnFailure is abort; the unit change was not applied, nothing restarted")
    if name == "EX_BUSY":
        return (f"{node}: {props['service']}'s unit changed ({src('unit')} at {at}), but a switch or restart still ran "
                f"there after {scripts.RESTART_LOCK_WAIT} s; the previous unit is back, nothing restarted: "
                "run pulumi up again once it is done")
    if name == "EX_HOST_INPUT":
        return f"{node}: the host files did not arrive whole ({'; '.join(report.all('error'))}); nothing changed"
    return f"{node}: the host config step failed (exit {rc}: {err.strip()[-300:]})"


# the resources an earlier sando (before one HostConfig per node) declared for a node's host files
EARLIER = ("layout", "caddyfile", "caddy-reload", "unit", "daemon-reload", "sshdGit", "fail2ban", "firewall", "backup",
           "cron")


def adoption(props: dict, state) -> str | None:
    """What creating this resource does when the node has host files already (an upgrade from an
    earlier sando, a node adopted again after `pulumi destroy`): said in the preview, because the
    engine shows an earlier sando's per-file resources as deletes. None when no file is there yet."""
    have = state.host.files if state and state.host else {}
    node, files = node_of(props), files_of(props)
    there, moved, install = [], [], []
    for f in files.values():
        want = (_sha(f["content"]), int(f["mode"]))
        legacy = have.get(f.get("legacy") or "")
        if legacy and legacy[0] == want[0] and have.get(f["path"]) in (None, want):
            moved.append(f"{f['legacy']} -> {f['path']}")
        elif have.get(f["path"]) == want:
            there.append(f["path"])
        else:
            install.append(f["path"])
    if not there and not moved:
        return None
    at = f"sando:bootstrap.ref {props.get('ref')}"
    if install:
        msg = (f"{node}: host config: {len(there) + len(moved)} of {len(files)} host files are on the node as committed "
               f"at {at}, adopted as they are; installs {', '.join(install)}")
    else:
        msg = (f"{node}: host config: every host file is on the node as committed at {at}; it is adopted as it is "
               "(nothing installed, reloaded or restarted)")
    if moved:
        msg += f"; moved to the names their headers say, same bytes, nothing reloaded: {', '.join(moved)}"
    return (msg + f". Deletes of the host-file resources of an earlier sando ({', '.join(f'{node}-{r}' for r in EARLIER)}"
            "), where the preview lists them, only drop them from the state: no file is removed, nothing runs on "
            "the node")


class HostConfigProvider(NodeProvider):
    def check(self, olds, news):
        result = super().check(olds, news)
        if not olds and files_of(news) and isinstance(news.get("connection"), dict) and not unreachable(news):
            # a create: say what it adopts (not of a node held out of this run: it adopts nothing now)
            try:
                said = adoption(news, node_state(news))
            except Exception:  # noqa: BLE001 - an unreachable node is said once, by its Reach resource
                said = None
            if said:
                diagnostics.log("info", said)
        return result

    def diff(self, _id, olds, news):
        if unreachable(news):  # said once, by the node's pointer, at the end
            return DiffResult(changes=False, replaces=[])
        state = node_state(news)
        node, files, old_files = node_of(news), files_of(news), files_of(olds)
        items = drift(news, state)
        changes = bool(items) or olds.get("owner") != news.get("owner")
        repo_changed = [i for i in items if old_files.get(i, {}).get("content") != files[i]["content"]
                        or old_files.get(i, {}).get("mode") != files[i]["mode"]]
        by_hand = [i for i in items if i not in repo_changed and i in old_files]
        if repo_changed:
            diagnostics.log("info", f"{node}: " + ", ".join(f"{files[i]['source']} -> {files[i]['path']}"
                                                              for i in repo_changed)
                            + f" changed at sando:bootstrap.ref {news.get('ref')} ({str(news.get('commit'))[:12]})")
        if by_hand:
            diagnostics.log("warning", f"{node}: " + ", ".join(files[i]["path"] for i in by_hand)
                            + " changed on the node (not as committed at sando:bootstrap.ref "
                              f"{news.get('ref')}); `pulumi up` puts the committed "
                            + ("copy" if len(by_hand) == 1 else "copies") + " back")
        if not (olds.get("outcome") or {}).get("ok", True):
            changes = True  # it failed last time: its update says where it stands now (the pointer reads it)
        down = caddy_down(news, state)
        if down:
            changes = True
            diagnostics.log("warning", f"{node}: {down}; `pulumi up` starts and enables it")
        if items:
            try:
                self._check(news, items)
            except OperatorError as exc:
                if not diagnostics.skips_preview():
                    raise  # a preview (or a plain up's) stops here, quoting the tool
                with _lock:  # the update's own diff: the apply records it for the verdict
                    _refused[node_key(news)] = str(exc)
        auth = changed(olds, news, AUTH)
        if auth and not changes:  # the outputs must carry the new credentials (refresh, delete)
            say_auth_only(news, auth)
            return DiffResult(changes=True, replaces=[])
        return DiffResult(changes=changes, replaces=[])

    def _check(self, props: dict, items: list[str]) -> None:
        """The changed files, checked on the node by their own tools (the preview fails here)."""
        checkable = {"caddyfile", "unit", "firewall", "backup"} & set(items)
        if not checkable:
            return
        sub = with_files(props, {i: f for i, f in files_of(props).items() if i in checkable})
        res = ssh.run(conn_of(props), script(sub, "check", False), stdin=payload(sub, None), check=False)
        report = scripts.Report.parse(res.out, node_of(props))
        if res.rc != 0:
            raise OperatorError(failure(props, res.rc, report, res.err))

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:host", outs=self._apply(props, {}))

    def update(self, _id, olds, news):
        state = node_state(news)
        if not drift(news, state) and not caddy_down(news, state) and olds.get("owner") == news.get("owner") \
                and not any(o and not o.get("ok") for o in news.get("after") or []):
            failed_before = not (olds.get("outcome") or {}).get("ok", True)  # its failure is no longer the news
            return UpdateResult(outs={**public(news), "installed": olds.get("installed") or {},
                                      "actions": [] if failed_before else olds.get("actions") or [], "heldBack": False,
                                      "outcome": {"ok": True, "node": node_of(news)}})  # nothing to do
        return UpdateResult(outs=self._apply(news, olds))

    def delete(self, _id, props):
        paths_ = ", ".join(f["path"] for f in files_of(props).values())
        if paths_:
            diagnostics.log("info", f"{node_of(props)}: left {paths_} in place (no longer managed by sando: the "
                                    "live service needs them)")

    def read(self, id_, props):
        state = node_state(props, fresh=True)
        have = state.host.files if state.host else {}
        return ReadResult(id_=id_, outs={**props, "installed": {
            item: _installed(have.get(f["path"]), f["path"]) for item, f in files_of(props).items()}})

    def _apply(self, props: dict, olds: dict) -> dict:
        node = node_of(props)
        if any(o and not o.get("ok") for o in props.get("after") or []):
            diagnostics.log("warning", f"{node}: host config not applied: an earlier rollout batch failed")
            return {**public(olds or props), **{k: props.get(k) for k in ("connection", "privateKey")},
                    "installed": olds.get("installed") or {}, "actions": ["held back: an earlier rollout batch failed"],
                    "heldBack": True, "outcome": {"ok": True, "node": node, "heldBack": True}}
        away = unreachable(props)
        if away:  # held out of this run (not reached, or its release refused): nothing read or installed
            return self._failed(props, olds, away, read=False, action=f"not applied: {held_why(props)}")
        with _lock:
            refused = _refused.pop(node_key(props), None)
        if refused:  # its own tool refused a file in this run's diff: nothing was installed
            return self._failed(props, olds, refused)
        state = node_state(props)
        token = props.get("token") if warning_step.params(props.get("warning"), props.get("token")) else None
        restart_unit = state.live == props.get("version")  # else the switch that follows restarts it
        res = ssh.run(conn_of(props), script(props, "apply", restart_unit), stdin=payload(props, token),
                      timeout=900 + 2 * float((props.get("healthCheck") or {}).get("timeoutSeconds") or 30)
                      + float((props.get("warning") or {}).get("seconds") or 0), check=False)
        report = scripts.Report.parse(res.out, node)
        if res.rc != 0 and scripts.name_of(res.rc) in OUTCOMES:
            return self._failed(props, olds, failure(props, res.rc, report, res.err))
        if res.rc != 0:  # the step itself broke: where the node stands is unknown
            raise OperatorError(failure(props, res.rc, report, res.err))
        actions = _actions(props, report)
        for note in report.all("warning"):
            diagnostics.log("warning", f"{node}: {note}")
        for a in actions:
            if a.startswith(("started", "restarted")):
                diagnostics.log("info", f"{node}: {a}")
        want = desired(props)
        return {**public(props), "installed": {item: {"path": f["path"], "sha256": want[f["path"]][0],
                                                      "mode": int(f["mode"])} for item, f in files_of(props).items()},
                "actions": actions, "heldBack": False, "outcome": {"ok": True, "node": node}}

    @staticmethod
    def _failed(props: dict, olds: dict, message: str, read: bool = True, action: str | None = None) -> dict:
        """This node's host config failed, and the node is as it was (the tool refused the file, or
        the previous file is back): recorded instead of failing the run (issue 19.3), so every node's
        outputs are recorded (a failed run's outputs must not look deleted) and the node's pointer
        does not switch; the verdict says the message once, at the end. The outputs keep the files
        the node really has (read again), the previous inputs' files (so the next run tries again and
        its preview says what changed in the repo) and the failure in `actions` (`action`: what to
        say there instead, for a node held out of the run, whose message the verdict says)."""
        node = node_of(props)
        diagnostics.log("warning", f"{node}: host config not applied (the error at the end says why)")
        installed = olds.get("installed") or {}
        if read:
            try:
                have = node_state(props, fresh=True).host
                installed = {item: _installed((have.files if have else {}).get(f["path"]), f["path"])
                             for item, f in files_of(props).items()}
            except OperatorError:
                pass  # what the last run installed, then
        kept = with_files(public(props), files_of(olds))
        return {**kept, "owner": olds.get("owner") if olds else props.get("owner"), "installed": installed,
                "actions": [action or f"failed: {message}"], "heldBack": False,
                "outcome": {"ok": False, "node": node, "message": message}}


_lock = threading.Lock()
_refused: dict[tuple, str] = {}  # node -> the tool's refusal found by this run's diff (an up that skips its preview)


def _installed(have, path: str) -> dict:
    return {"path": path, "sha256": have[0], "mode": have[1]} if have else {"path": path, "sha256": None, "mode": None}


def _actions(props: dict, report: scripts.Report) -> list[str]:
    """What the step did, in an operator's words, in order."""
    files, out = files_of(props), []
    for key, value in report.entries:
        if key == "installed":
            f = files.get(value, {})
            out.append(f"installed {f.get('path', value)} from {f.get('source', '?')}")
        elif key == "removed-legacy":
            item, _, where = value.partition(" ")
            out.append(f"removed {where}: an earlier sando's identical copy of {files.get(item, {}).get('path', item)}")
        elif key in ("reloaded", "daemon-reload", "enabled"):
            out.append(f"{key} {value}")
        elif key == "started":
            unit, _, why = value.partition(" ")
            out.append(f"started {unit} ({why})")
        elif key == "restarted":
            unit, _, why = value.partition(" ")
            out.append(f"restarted {unit}: {why}")
        elif key in ("unit-restart", "note", "warning"):
            out.append(value)
        elif key == "warning-sent":  # sando's one time format (issue 20.9), as the switch's warning says it
            out.append("restart warning " + times.warning_sent(f"sent {value}",
                                                               int((props.get("warning") or {}).get("seconds") or 0)))
        elif key == "warning-failed":
            out.append(f"restart warning failed: {value}")
    return out


class HostConfig(NodeResource):
    _provider_class, _output_names = HostConfigProvider, ("installed", "actions", "heldBack", "outcome")
    installed: pulumi.Output[dict]  # item -> {path, sha256, mode} as installed
    actions: pulumi.Output[list]  # what the last apply did (installed, reloaded, started, restarted ...)
    outcome: pulumi.Output[dict]  # {ok, node, message}: a failure is not switched over (pointer.py), said by the verdict

    def __init__(self, name: str, props: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, props, opts)
