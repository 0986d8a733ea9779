"""The restart warning (design doc item 7, option A), as a step of a node's switch script: POST
/api/internal/restart-warning with the service token as bearer (read from stdin, never argv),
then wait out the notice. It is sent only by a run that then restarts the service, right before
the restart, after the migration gate passed; so users are warned if and only if a restart
follows, and a re-run after an interrupted deploy warns them afresh."""

from __future__ import annotations


from .. import commands, times
from ..scripts import Report


def params(warning: dict | None, token: str | None) -> dict[str, object] | None:
    """The warning's parameters of the switch script (sh/warning.sh); None: no warning."""
    if not warning or int(warning.get("seconds") or 0) <= 0 or not token:
        return None
    return commands.warning_params(warning["url"], int(warning["seconds"]), warning.get("onFailure") == "abort")


def stdin(warning: dict | None, token: str | None) -> bytes | None:
    """The bearer header line the step reads from stdin."""
    return f"Authorization: Bearer {token}\n".encode() if params(warning, token) else None


def status(warning: dict | None, report: Report, switched: bool) -> str:
    """What the outputs say about the warning of this run."""
    if not warning or int(warning.get("seconds") or 0) <= 0:
        return "disabled"
    value = report.one("warning")
    if value is None:
        return "not sent: nothing restarted" if not switched else "not sent"
    if value == "not-needed":
        return "not needed: service not running"
    # issue 20.9: one time format; "failed HTTP 500 ...", never with a stray space (issue 19.10)
    return times.warning_sent(value, int(warning["seconds"]))
