"""The `current` symlink of a node: one script, one round trip (sh/switch.sh, commands.switch).

It checks the pinned release against its SHA256SUMS, then, when `current` points elsewhere: the
migration gate (gate.py), the backup, the restart warning (warning.py), the atomic switch,
`systemctl reload-or-restart`, the health check; on failure it switches back, restarts and
checks again, and `pulumi up` fails saying so. Old releases are pruned at the end, from what
the node really holds (keepReleases newest, failed ones first to go, never the live release
or the rollback target, never a directory sando did not make).

A plain `pulumi up` / `pulumi preview` compares the node's `current` with the pin (diff reads
what the node holds: one round trip per node), so a hand-moved `current` is put back.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from .. import ahead, commands, diagnostics, history, paths, scripts, ssh, times
from ..errors import OperatorError
from ..scripts import Report
from ..transfer import NodeRelease
from . import bluegreen, gate, warning
from .base import (NodeProvider, AUTH, NodeResource, NodeState, changed, conn_of, node_of, node_state, public,
                   refresh_auth, releases_of, remember, say_auth_only, unreachable, held_why)

INPUTS = ["version", "commit", "releaseRoot", "service", "healthCheck", "warning", "gate", "keepReleases", "switch",
          *AUTH]
# the switch script's outcomes that are a node's outcome (reported by the Verdict), not a crash
OUTCOMES = ("EX_BUSY", "EX_MISSING", "EX_CHANGED", "EX_LIVE_UNHEALTHY", "EX_DRY_RUN_FAILED", "EX_DESTRUCTIVE", "EX_GATE_BROKEN",
            "EX_BACKUP_FAILED", "EX_WARNING_FAILED", "EX_NO_PREVIOUS", "EX_SWITCHED_BACK", *bluegreen.OUTCOMES)


def to_prune(releases: dict[str, NodeRelease], live: str | None, previous: str | None, keep: int) -> list[str]:
    """Which releases go: all but the `keep` newest (failed ones ranked last), the live one and
    the rollback target."""
    ranked = sorted(releases.values(), key=lambda r: (r.failed, -r.created_at, r.version))
    kept = {r.version for r in ranked[:keep]} | {live, previous}
    return sorted(v for v in releases if v not in kept)


def _version_of(target: str | None) -> str | None:
    return paths.NodePaths.version_of_target(target) if target else None


def _iso(epoch: str | None) -> str | None:
    return times.iso(epoch) if epoch else None  # issue 20.9: one time format


class PointerProvider(NodeProvider):
    def check(self, olds, news):
        result = super().check(olds, news)
        if (bluegreen.enabled(news) and isinstance(news.get("connection"), dict)
                and isinstance(news.get("releaseRoot"), str) and node_state(news).nft is False):
            raise OperatorError(f"{node_of(news)}: sando:switch.strategy is blueGreen, whose switch moves an nft rule, "
                                "but nft is not installed on the node: apt-get install nftables there, then run again")
        return result

    def diff(self, _id, olds, news):
        if unreachable(news):  # its update records that for the verdict (nothing runs on the node)
            return DiffResult(changes=True, replaces=[])
        changes = changed(olds, news, INPUTS)
        if "switch" in changes and "switch" not in olds and not bluegreen.enabled(news):
            changes.remove("switch")  # state of a sando before issue 23: a restart switch is what it did
        if "version" in changes:  # issue 20.5 hook: a pin onto a version the database is ahead of
            ahead.warn_at_preview(news, olds)
        state = node_state(news)
        if _host_failed(news):
            changes.append("hostConfig")  # its host config failed in this run: its update says so for the verdict
        elif not (olds.get("outcome") or {}).get("ok", True):
            changes.append("outcome")  # it failed last time: its update says where it stands now
        if not changes:
            if state.live != news["version"]:
                changes.append("version")  # `current` moved by hand: put it back
            elif not (state.instance_active if bluegreen.enabled(news) else state.active):
                changes.append("service")  # the service is down: start it
        elif set(changes) <= set(AUTH) and self._as_it_was(news):
            say_auth_only(news, changes)
        if state.live != news["version"]:
            self._say_why(news, olds, state, changes)
        return DiffResult(changes=bool(changes), replaces=[])

    @staticmethod
    def _say_why(news: dict, olds: dict, state: NodeState, changes: list[str]) -> None:
        """Why this node's `current` will move, on its line, when the diff alone does not say it
        (issue 19.7, 19.10): the pinned release already failed here, or `current` was moved by hand."""
        node, version = node_of(news), news["version"]
        failed = state.failures.get(version)
        held = state.releases.get(version)
        if failed is not None or (held is not None and held.failed):
            at, why = failed or (0.0, "")
            when = f" at {_iso(str(int(at)))}" if at else ""
            diagnostics.log("warning", f"{node}: {version} failed here{when}" + (f" ({why})" if why else "")
                            + "; this up tries it again")
        elif changes == ["version"] and state.live and state.live != olds.get("liveVersion"):
            diagnostics.log("warning", f"{node}: current is on {state.live} by hand; pin is {version}")

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:current", outs=self._apply(props, {}))

    def update(self, _id, olds, news):
        if not unreachable(news) and not _host_failed(news) and (olds.get("outcome") or {}).get("ok", True) \
                and set(changed(olds, news, INPUTS)) <= set(AUTH) and self._as_it_was(news):
            return UpdateResult(outs=refresh_auth(olds, news))  # only the credentials: nothing to do on the node
        return UpdateResult(outs=self._apply(news, olds))

    @staticmethod
    def _as_it_was(props: dict) -> bool:
        """The node serves the pin and its service runs: nothing for the switch to do."""
        state = node_state(props)
        return state.live == props["version"] and state.active

    def read(self, id_, props):
        state = node_state(props, fresh=True)
        return ReadResult(id_=id_, outs={**props, "liveVersion": state.live, "previousVersion": state.previous or ""})

    # ---------------------------------------------------------------------------------

    def _apply(self, props: dict, olds: dict) -> dict:
        conn, root, version, node = conn_of(props), props["releaseRoot"], props["version"], node_of(props)
        away = unreachable(props)
        if away:  # nothing known of the node in this run: its last recorded state stays, the verdict says why
            diagnostics.log("warning", f"{node}: {held_why(props)}, nothing changed here (the error at the end says why)")
            kept = public(olds) if olds else {**public(props), **dict.fromkeys(Pointer._output_names)}
            return {**kept, "outcome": {"ok": False, "node": node, "message": away}}
        state = node_state(props)
        sent = props.get("releaseOutcome") or {}
        if sent.get("ok") is False:  # the upload failed: nothing to switch to; the verdict quotes the upload's error
            diagnostics.log("warning", f"{node}: {version} did not go live here (the error at the end says why)")
            return self._outs(props, olds, state, health="not checked: the release was not sent",
                              outcome={"ok": False, "node": node, "message": sent.get("message") or "?"})
        if any(not o.get("ok") for o in props.get("after") or [] if o):
            return self._outs(props, olds, state, health="held back: an earlier rollout batch failed",
                              outcome={"ok": False, "node": node, "heldBack": True})
        host = props.get("hostOutcome") or {}
        if host.get("ok") is False:  # the last good host config and release stay live; the verdict quotes the host step
            diagnostics.log("warning", f"{node}: " + (f"{version} did not go live here" if state.live != version else
                                                      "its host config was not applied")
                            + " (the error at the end says why)")
            return self._outs(props, olds, state, health="not checked: its host config failed",
                              outcome={"ok": False, "node": node, "message": host.get("message") or "?"})
        rollout = props.get("rollout") or {}
        if state.live != version and rollout.get("batch") and rollout.get("pauseSeconds") and \
                any((o or {}).get("node") in _switched for o in props.get("after") or []):
            time.sleep(float(rollout["pauseSeconds"]))  # the previous batch switched, healthy: let it settle
        script, timeout = self._script(props, state)
        flight = _Flight(node, version, int((_warning(props) or {}).get("seconds") or 0),
                         (props.get("deploy") or {}).get("stack") or "")
        with _lock:
            _flights.add(flight)
        try:
            res = ssh.run(conn, script, stdin=warning.stdin(_warning(props), props.get("token")), timeout=timeout,
                          check=False, on_line=flight.heard)
        finally:
            with _lock:
                _flights.discard(flight)
        report = Report.parse(res.out, node)
        outcome = scripts.name_of(res.rc)
        if outcome != "EX_OK" and outcome not in OUTCOMES:  # the script itself broke: where the node stands is unknown
            raise OperatorError(self._failure(props, res, report, None))
        releases, foreign = releases_of(report, "final-", node, root)
        live_before = _version_of(report.one("live-before"))
        switched = report.has("switched")
        if switched:
            _switched.add(node)
        if outcome == "EX_OK":
            state = replace(state, live=version, previous=live_before if switched else state.previous)
        elif report.has("reverted") or not switched:  # back where it was, or never moved
            state = replace(state, live=live_before, previous=state.previous)
        else:  # unhealthy with nothing to switch back to
            state = replace(state, live=version)
        listed = report.has("final-release") or report.has("final-foreign")
        state = replace(state, releases=releases if listed else state.releases,
                        foreign=foreign if listed else state.foreign, active=outcome == "EX_OK" or state.active)
        remember(props, state)
        for note in bluegreen.notes(props, report):
            diagnostics.log("warning", note)
        status = warning.status(_warning(props), report, switched)
        if props.get("warning") and (props.get("deploy") or {}).get("now") and switched:  # issue 20.6 hook
            status = f"skipped (--now) by {props['deploy'].get('by')}"
        if status.startswith("failed") and outcome != "EX_WARNING_FAILED":
            diagnostics.log("warning", f"{node}: the restart warning was not delivered ({status}); "
                                       "restarted anyway (sando:restartWarningOnFailure=warn)")
        checks = [v.split()[0] for v in report.all("health") if v]
        health = {"ok": "ok", "fail": "failed"}.get(checks[-1] if checks else "", "not checked")
        if outcome != "EX_OK":  # this resource's line must not read as a success: say so there, briefly
            diagnostics.log("warning", f"{node}: {version} did not go live here (the error at the end says why)")
            return self._outs(props, olds, state, health=health,
                              outcome={"ok": False, "node": node, "message": self._failure(props, res, report,
                                                                                          live_before)},
                              report=report, status=status)
        switched_at = _iso(report.one("switched"))
        record = history.parse(report.one("history-last") or "")
        if not switched and record and record.get("version") == version and record.get("result") == "ok":
            # live already: switched by an earlier run that was interrupted (its outputs never recorded):
            # say what that switch did, from the node's own record of it (issue 19.9)
            switched_at = record.get("at")
            status = _warning_of(record, status)
            report = Report(report.entries + (("history", report.one("history-last")),))
        applied = gate.verdict(report, (props.get("gate") or {}).get("names"))
        if applied["destructive"] and "note" not in applied:  # issue 19.8: allowed here, but never silently
            diagnostics.log("warning", f"{node}: {version} applied the destructive migration"
                                       f"{'s' if len(applied['destructive']) > 1 else ''} "
                                       f"{', '.join(applied['destructive'])} (drops a table or column)"
                                       + (f"; the backup before it: {applied['backup']}" if applied["backup"] else ""))
        return self._outs(props, olds, state, health="ok", outcome={"ok": True, "node": node}, report=report,
                          status=status, switched_at=switched_at)

    @staticmethod
    def _outs(props: dict, olds: dict, state: NodeState, *, health: str, outcome: dict,
              report: Report | None = None, status: str | None = None, switched_at: str | None = None) -> dict:
        live = state.releases.get(state.live) if state.live else None
        return {
            **public(props),
            "liveVersion": state.live, "liveCommit": live.commit if live else None,
            "liveFiles": dict(live.files) if live else None,  # sha256 of what it runs (issue 22.5)
            # "" when none (a first deploy): a None output reads as [unknown] in every later preview,
            # so a preview that changes nothing showed `~ nodes` / `+ previousVersion: [unknown]`
            "previousVersion": state.previous or "",
            "switchedAt": switched_at or olds.get("switchedAt"),
            "health": health,
            "releases": [{"version": r.version, "commit": r.commit, "createdAt": times.iso(r.created_at), "failed": r.failed}
                         for r in sorted(state.releases.values(), key=lambda r: r.created_at)],
            "foreign": list(state.foreign),
            "pruned": report.all("pruned") if report else [],
            "restartWarning": status or olds.get("restartWarning") or "not sent: nothing restarted",
            # no switch ran (a failed upload or host config): what the last one found stands
            "migrations": gate.verdict(report or Report(()), (props.get("gate") or {}).get("names"))
            if report or not olds.get("migrations") else olds["migrations"],
            "outcome": outcome,
            # issue 20.2 hook: this run's switch record (sh/history.sh), else the last one's
            "lastDeploy": (history.last(report) if report else None) or olds.get("lastDeploy"),
        }

    def _script(self, props: dict, state: NodeState) -> tuple[str, float]:
        version, root, service = props["version"], props["releaseRoot"], props["service"]
        hc, keep = props["healthCheck"], int(props["keepReleases"])
        held = dict(state.releases)
        mine = held.get(version) or NodeRelease(version, props["commit"], time.time(), {})
        ok_live, ok_prev = version, (state.live if state.live != version else state.previous)
        prune_ok = to_prune({**held, version: replace(mine, failed=False)}, ok_live, ok_prev, keep)
        prune_failed = to_prune({**held, version: replace(mine, failed=True)}, state.live, state.previous, keep)
        script = commands.switch(
            release_root=root, version=version, service=service, expect=version if hc.get("expectVersion") else "",
            health=commands.health_params(hc["url"], float(hc["timeoutSeconds"]), float(hc["intervalSeconds"]),
                                          props["commit"], hc.get("caddyUrl")),
            gate=gate.params(props.get("gate") or {}, root, service, version),
            warning=warning.params(_warning(props), props.get("token")),
            prune_ok=prune_ok, prune_failed=prune_failed,
            history=history.params(props.get("deploy"), version, props["commit"],  # issue 20.2 hook
                                   int((props.get("warning") or {}).get("seconds") or 0)),
            blue_green=bluegreen.params(props))
        notice = int((props.get("warning") or {}).get("seconds") or 0)
        drain = float((props.get("switch") or {}).get("drainSeconds") or 0)
        return script, commands.SWITCH_LOCK_WAIT + notice + drain + 2 * (120 + float(hc["timeoutSeconds"]))

    @staticmethod
    def _failure(props: dict, res: ssh.Result, report: Report, live: str | None) -> str:
        """What an operator reads when this node's switch did not happen or did not hold."""
        node, version, outcome = node_of(props), props["version"], scripts.name_of(res.rc)
        stays = f"{live} stays live" if live else "nothing is live yet"
        journal = ""
        restart = (report.all("restart") or ["0 "])[0].split(" ", 1)
        failed_check = next((v.partition(" ")[2] for v in report.all("health") if v.startswith("fail")), "")
        why = f"restart failed: {restart[-1].strip()}" if restart[0] != "0" else failed_check
        if outcome == "EX_BUSY":
            msg = (f"{node}: another switch still runs on the node ({report.one('busy')} held for "
                   f"{commands.SWITCH_LOCK_WAIT} s); nothing was switched, {stays}. See `sando status`, then run "
                   "pulumi up again")
        elif outcome == "EX_MISSING":
            msg = (f"{node}: release {version} is not on the node; nothing was switched, {stays}. "
                   "Run `pulumi up --refresh` to send it again")
        elif outcome == "EX_CHANGED":
            msg = (f"{node}: files of releases/{version} no longer match its SHA256SUMS ({report.one('changed')}); "
                   f"it was changed on the node, so sando will not point at it and {stays}. Remove "
                   f"{props['releaseRoot']}/releases/{version} on the node and run `pulumi up --refresh`")
        elif outcome == "EX_LIVE_UNHEALTHY":
            msg = f"{node}: {version} is live but fails its health check ({why}) (sando:healthCheck)"
        elif outcome == "EX_DRY_RUN_FAILED":
            msg = (f"{node}: {version}'s migrations fail on a copy of the live database "
                   f"({gate.failure_line(report)}); nothing was restarted and {stays}. Fix the migration and "
                   "deploy a new version (sando:migrations)")
        elif outcome == "EX_DESTRUCTIVE":
            names = ", ".join(gate.verdict(report, (props.get("gate") or {}).get("names"))["destructive"]) or "?"
            msg = (f"{node}: {version} has destructive migrations pending ({names}), refused by "
                   f"sando:migrations.refuseDestructive; nothing was restarted and {stays}. To deploy it, add "
                   f"{version} to sando:migrations.allowDestructive")
        elif outcome in ("EX_GATE_BROKEN", "EX_BACKUP_FAILED"):
            msg = (f"{node}: the migration gate could not run ({gate.failure_line(report)}; {report.one('gate') or ''}); "
                   f"nothing was restarted and {stays} (sando:migrations.dryRunCommand, sando:migrations.database)")
        elif outcome == "EX_WARNING_FAILED":
            msg = (f"{node}: the restart warning failed ({report.one('warning') or '?'}) and "
                   f"sando:restartWarningOnFailure is abort; nothing was restarted and {stays}")
        elif outcome in ("EX_NO_PREVIOUS", "EX_SWITCHED_BACK") and report.before("reverted").has("crashed"):
            # the unit died while sando waited for it: said at once, with what it logged
            tried = report.before("reverted")
            state = tried.all("crashed")[0].split()[0]
            if outcome == "EX_NO_PREVIOUS":
                after = "there is no earlier release to switch back to"
            elif any(v.startswith("ok") for v in report.after("reverted").all("health")):
                after = f"{live} is live again"
            else:
                after = f"switched back to {live}, but it is not healthy either"
            msg = f"{node}: {version} exited at start ({props['service']}.service {state}); {after}"
            lines = tried.all("journal")
            journal = ("Last lines of its journal:\n" + "\n".join(f"  {line.strip()}" for line in lines) if lines
                       else f"Its journal says nothing more: `journalctl -u {props['service']}` on the node")
        elif outcome == "EX_NO_PREVIOUS":
            msg = f"{node}: {version} is not healthy ({why}) and there is no earlier release to switch back to"
        elif outcome == "EX_SWITCHED_BACK":
            back_ok = any(v.startswith("ok") for v in report.after("reverted").all("health"))
            again = (f"{live} is live again" if back_ok else
                     f"switched back to {live}, but it is not healthy either")
            msg = f"{node}: {version} failed its health check ({why}); {again}"
        else:
            msg = f"{node}: the switch to {version} failed (exit {res.rc}: {(res.err or res.out).strip()[-300:]})"
        msg = bluegreen.turned_off_failure(props, report, live, why, msg) or msg
        msg, journal = bluegreen.failure(props, res.rc, report, live) or (msg, journal)
        backup = report.one("backup")
        if backup and outcome in ("EX_NO_PREVIOUS", "EX_SWITCHED_BACK") + bluegreen.OUTCOMES[:1]:
            db = report.one("database") or "<database>"
            msg += (f". The database was backed up before {version}'s migrations: {backup}; to restore it: "
                    f"systemctl stop {props['service']} && sqlite3 {db} \".restore '{backup}'\" && "
                    f"systemctl start {props['service']}")
        if journal:  # what the service said, last: its lines follow the sentence
            msg += f". {journal}"
        return msg


class _Flight:
    """A switch under way on a node: what its script has said so far, shown as the switch's status
    (issue 19.5), and what a Ctrl-C now means for that node (issue 19.6)."""

    def __init__(self, node: str, version: str, notice: int, stack: str):
        self.node, self.version, self.notice, self.stack = node, version, notice, stack
        self.progress = diagnostics.Progress()
        self.restart_at: float | None = None  # when the service restarts (the warning is out)
        self.switched = False

    def heard(self, line: str) -> None:
        for key, value in Report.parse(line).entries:
            if key == "warning" and value.startswith("sent ") and value.split()[1].isdigit():
                self.restart_at = float(value.split()[1]) + self.notice
                self.progress.say("warning", f"restart warning sent; restarting at {_hms(self.restart_at)}", force=True)
            elif key == "switched":
                self.switched = True
                if diagnostics.interactive():  # in a log the warning's line is this step's one line
                    self.progress.say("switch", f"switched to {self.version}; waiting for its health check", force=True)

    def cancelled(self) -> None:
        """Ctrl-C: pulumi stops starting anything, but this switch goes on on the node."""
        status = f"`sando status {self.stack}`" if self.stack else "`sando status`"
        if self.restart_at is not None and not self.switched:
            what = (f"the restart warning is out, so it switches to {self.version} at {_hms(self.restart_at)} "
                    "and checks its health on its own, whatever happens to this run")
        elif self.switched:
            what = f"it switched to {self.version} and finishes its health check (and a switch back if that fails) on its own"
        else:
            what = (f"its switch to {self.version} goes on (this run waits for it; a second Ctrl-C leaves it to "
                    "the node, which stops before its restart warning)")
        diagnostics.log("warning", f"{self.node}: Ctrl-C does not stop this node: {what}. See the result with "
                                   f"{status}; after a second Ctrl-C, `pulumi up --refresh` picks up where each node "
                                   "stands", urn=self.progress.urn)


def _host_failed(props: dict) -> bool:
    """The node's host config failed in this run (unknown in a preview: not yet)."""
    host = props.get("hostOutcome")
    return isinstance(host, dict) and host.get("ok") is False


def _hms(epoch: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch))


_flights: set[_Flight] = set()
_lock = threading.Lock()


def _on_cancel() -> None:
    with _lock:
        flights = sorted(_flights, key=lambda f: f.node)
    for flight in flights:
        flight.cancelled()


_hooks = getattr(sys.modules.get("pulumi.dynamic"), "on_cancel", None)  # sando's provider host (engine/bin)
if isinstance(_hooks, list) and _on_cancel not in _hooks:
    _hooks.append(_on_cancel)


# nodes whose `current` this run moved (one provider process per run): a later rollout batch pauses
# only after an earlier one switched something (issue 19.9)
_switched: set[str] = set()


def _warning_of(record: dict, status: str) -> str:
    """The restart warning as the node's switch record says it went (sent 30s, failed HTTP 500, ...)."""
    said = (record.get("warning") or "").strip()
    if not said or status == "disabled":
        return status
    return f"{said} before the switch at {record.get('at')}" if said.startswith("sent ") else said


def _warning(props: dict) -> dict | None:
    """The restart warning of this run: none when the operator said --now (issue 20.6 hook;
    `deploy` is not a diff by itself, see history.deployer)."""
    return None if (props.get("deploy") or {}).get("now") else props.get("warning")


class Pointer(NodeResource):
    _provider_class = PointerProvider
    _output_names = ("liveVersion", "liveCommit", "previousVersion", "switchedAt", "health", "releases", "foreign",
                     "pruned", "restartWarning", "migrations", "outcome", "lastDeploy", "liveFiles")
    liveVersion: pulumi.Output[str]
    liveCommit: pulumi.Output[str]
    previousVersion: pulumi.Output[str]
    switchedAt: pulumi.Output[str]  # ISO 8601, UTC
    health: pulumi.Output[str]
    releases: pulumi.Output[list]
    foreign: pulumi.Output[list]
    restartWarning: pulumi.Output[str]
    migrations: pulumi.Output[dict]
    outcome: pulumi.Output[dict]  # {ok, node, message | heldBack}: the Verdict fails the run on a bad one
    lastDeploy: pulumi.Output[dict]  # the node's last switch record: {at, version, commit, from, result, by, via, warning}
    liveFiles: pulumi.Output[dict]  # release-relative path -> sha256 of the live release, from its manifest


FAILED_ON = "the deploy failed on"  # the verdict's first line: "the deploy failed on node1, node2:"


class VerdictProvider(ResourceProvider):
    """Fails `pulumi up` when a node's switch failed or a rollout stopped, naming every such node
    and the nodes left on their version. The pointers record what really happened on each node
    instead of failing their own step, so the stack outputs say, after any run, which version
    each node serves (a half-finished rollout is plain in `pulumi stack output`)."""

    def create(self, props):
        self._check(props)
        return CreateResult(id_="verdict", outs=public(props))

    def diff(self, _id, olds, news):
        outcomes = news.get("outcomes")
        known = isinstance(outcomes, list) and all(isinstance(o, dict) for o in outcomes)  # preview: unknowns
        failing = known and any(not o.get("ok", True) for o in outcomes)
        # unknown in a preview: nothing to say yet (in an update the pointers' outcomes are known by now)
        return DiffResult(changes=known and (failing or olds.get("outcomes") != outcomes), replaces=[])

    def update(self, _id, olds, news):
        self._check(news)
        return UpdateResult(outs=public(news))

    @staticmethod
    def _check(props: dict) -> None:
        outcomes = [o for o in props.get("outcomes") or [] if o]
        failed = [o for o in outcomes if not o.get("ok") and not o.get("heldBack")]
        held = [o["node"] for o in outcomes if o.get("heldBack")]
        if failed or held:
            # a first line of its own: the engine repeats it on the verdict's progress lines, so each
            # node's own words below are said once, at the end of the run
            lines = [f"{FAILED_ON} {', '.join(o['node'] for o in failed) or 'a node of an earlier batch'}:"]
            lines += [o["message"] for o in failed]
            if held:
                lines.append(f"Rollout stopped: {', '.join(held)} not switched (they keep their version).")
            raise OperatorError("\n".join(lines))


class Verdict(NodeResource):
    _provider_class = VerdictProvider

    def __init__(self, name: str, outcomes: list, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, {"outcomes": outcomes}, opts)
