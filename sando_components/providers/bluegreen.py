"""The blueGreen switch's part of the pointer (sando:switch.strategy blueGreen, sh/bluegreen.sh):
its parameters and what an operator reads when it did not happen. The restart path stays
pointer.py's; this module only speaks when the switch's props say blueGreen."""

from __future__ import annotations

from .. import commands, config, paths, scripts
from ..scripts import Report

OUTCOMES = ("EX_BG_UNHEALTHY", "EX_BG_CADDY", "EX_BG_NO_IMPORT", "EX_BG_SETUP", "EX_BG_FRONT")
IMPORT_LINE = f"import {paths.UPSTREAM_FILE}"


def enabled(props: dict) -> bool:
    return (props.get("switch") or {}).get("strategy") == "blueGreen"


def params(props: dict) -> dict[str, object]:
    """sh/bluegreen.sh's parameters: blueGreen's, or the restart strategy's (blueGreen off: the
    drain for an instance left from it, sando:switch.drainSeconds; its default in a state without it)."""
    sw = props.get("switch") or {}
    if not enabled(props):
        return commands.blue_green_off(float(sw.get("drainSeconds", config.SwitchConfig().drain_seconds)))
    return commands.blue_green_params(sw["ports"], sw["bindHost"], sw["bindEnv"], float(sw["drainSeconds"]),
                                      sw["healthPath"], sw["warnPath"], commands.front(props["healthCheck"]["url"]))


def failure(props: dict, rc: int, report: Report, live: str | None) -> tuple[str, str] | None:
    """(one or two lines, the new instance's journal lines to follow them) for a blueGreen
    outcome; None: not one of them."""
    outcome = scripts.name_of(rc)
    if outcome not in OUTCOMES:
        return None
    node, version, service = props["node"], props["version"], props["service"]
    serves = f"{live} still serves" if live else "nothing served before either"
    new = report.one("bg-new") or "?"
    unit = f"{service}@{new}.service"
    if outcome == "EX_BG_UNHEALTHY":
        crashed = report.all("crashed")
        why = (report.all("bg-failed") or ["?"])[-1]
        if crashed:
            head = f"{node}: {version} exited at start ({unit} {crashed[0].split()[0]}, port {new})"
        else:
            head = f"{node}: {version} did not become healthy on its own port {new} ({why})"
        msg = f"{head}; it was stopped before any user request reached it and {serves}"
        if report.has("reverted"):  # the restart path (a destructive migration) had stopped the old one
            msg = (f"{head}; it was stopped and {live} was started again (a destructive migration made this "
                   "deploy take the restart path)")
        lines = report.all("journal")
        journal = ("Last lines of its journal:\n" + "\n".join(f"  {line.strip()}" for line in lines) if lines
                   else f"Its journal says nothing more: `journalctl -u {unit}` on the node")
        return msg, journal
    if outcome == "EX_BG_CADDY":
        why = (report.all("caddy-failed") or ["?"])[-1]
        return (f"{node}: Caddy did not take the new upstream ({why}); {paths.UPSTREAM_FILE} is back, {version} "
                f"({unit}) was stopped and {serves} (sando:switch)"), ""
    if outcome == "EX_BG_FRONT":
        why = (report.all("front-failed") or ["?"])[-1]
        return (f"{node}: the front could not be moved to the new instance ({why}); {version} ({unit}) was "
                f"stopped and {serves} (sando:switch)"), ""
    if outcome == "EX_BG_NO_IMPORT":
        return (f"{node}: {paths.CADDYFILE} does not import {paths.UPSTREAM_FILE}, so Caddy cannot be moved to the "
                f"new instance; nothing changed for users and {serves}. Put the line `{IMPORT_LINE}` in place of "
                "the site's reverse_proxy line (sando:switch.strategy blueGreen)"), ""
    return f"{node}: the blueGreen switch could not start ({'; '.join(report.all('bg-error')) or '?'}); {serves}", ""


def turned_off_failure(props: dict, report: Report, live: str | None, why: str, msg: str) -> str | None:
    """The message when blueGreen was turned off (sando:switch.strategy restart) and the plain unit
    failed: nothing was stopped, the front is back on the live instance (sh/bluegreen.sh's
    bg_off_undo); None: not that case."""
    if not report.has("bg-off-undone"):
        return None
    node, service = props["node"], props["service"]
    port = report.one("bg-off-undone")
    inst = f"{service}@{port}" if port else "blueGreen's instance"
    back = any(v.startswith("ok") for v in report.after("bg-off-undone").all("health"))
    serves = (f"{inst} still serves{f' {live}' if live else ''} (the front is back on it)" if back else
              f"the front is back on {inst}, but it is not healthy either")
    if report.has("switched"):  # a new release too: it was switched back, the instance runs the old one
        return f"{msg}; nothing was stopped: {serves}; sando:switch.strategy restart takes effect at the next healthy switch"
    # the same release, only the strategy changed: the plain unit itself is what fails
    return (f"{node}: {service}.service, the plain unit sando:switch.strategy restart goes back to, is not healthy "
            f"({why}); nothing was stopped: {serves}. sando:switch.strategy restart takes effect once "
            f"{service}.service is healthy: fix it and run again")


def notes(props: dict, report: Report) -> list[str]:
    """What the operator is told about how this blueGreen switch went (a fallback to the restart path;
    blueGreen turned off, but users could not be kept on the instance while the plain unit started)."""
    if report.has("front-not-held"):
        return [f"{props['node']}: blueGreen off: the front could not keep users on the live instance while "
                f"{props['service']}.service started ({report.all('front-not-held')[-1]}), so they reached it as it "
                "started; see the node's nft ruleset"]
    strategy = report.one("strategy") or ""
    if strategy.startswith("restart"):
        return [f"{props['node']}: {props['version']} has a destructive migration pending, so this deploy took the "
                "restart path: the old instance stopped (after the restart warning, if any) before the new one "
                "started and migrated; users saw the gap"]
    return []


def caddyfile_problem(caddyfile: str | None) -> str | None:
    """Why a committed Caddyfile cannot serve blueGreen (it does not import sando's upstream file)."""
    if caddyfile is None:
        return None
    for line in caddyfile.splitlines():
        if line.split("#", 1)[0].split() == ["import", paths.UPSTREAM_FILE]:
            return None
    return (f"the Caddyfile does not import {paths.UPSTREAM_FILE}, the upstream sando moves between the "
            f"instances: put the line `{IMPORT_LINE}` in place of the site's reverse_proxy line, commit, "
            "and point sando:bootstrap.ref at it")
