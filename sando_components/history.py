"""Who switched what (issue 20.2): each switch appends one JSON line to the node's
`<releaseRoot>/.sando/history` (sh/history.sh), with the version, commit, the operator's
`user@host`, the UTC time and how the run was started (`pulumi up`, `sando promote`,
`sando rollback`, ...). The program reads how from the environment (SANDO_VIA, set by the
sando CLI), and hands it to the pointer as an input that never causes a diff by itself.

The same lines let a rollback walk back through the versions that were good (`good_line`).
"""

from __future__ import annotations

import getpass
import json
import os
import socket

from . import paths, scripts

KEEP = 1000  # lines kept in the node's history file
VIA_DEFAULT = "pulumi up"


def operator() -> str:
    """`user@host` of whoever runs this (SANDO_BY overrides it, e.g. for a CI job naming its trigger)."""
    if os.environ.get("SANDO_BY"):
        return os.environ["SANDO_BY"]
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def deployer() -> dict:
    """How this run was started, for the pointer's `deploy` input (not a diff by itself):
    {by, via, now}; `now` (SANDO_NOW=1, `sando ... --now`) skips the restart warning."""
    return {"by": operator(), "via": os.environ.get("SANDO_VIA") or VIA_DEFAULT,
            "now": os.environ.get("SANDO_NOW", "") not in ("", "0", "false")}


def params(deploy: dict | None, version: str, commit: str, warning_seconds: int) -> dict[str, object]:
    """sh/history.sh's parameters (a part of the switch script: `sando_history RESULT`)."""
    deploy = deploy or {}
    return {"H_FILE": paths.HISTORY, "H_VERSION": version, "H_COMMIT": commit, "H_BY": deploy.get("by") or "unknown",
            "H_VIA": deploy.get("via") or VIA_DEFAULT, "H_NOW": "1" if deploy.get("now") else "",
            "H_WARN_SECONDS": int(warning_seconds or 0), "H_KEEP": KEEP}


HISTORY_OFF = {"H_FILE": "", "H_VERSION": "", "H_COMMIT": "", "H_BY": "", "H_VIA": "", "H_NOW": "",
               "H_WARN_SECONDS": 0, "H_KEEP": 0}


def parse(line: str) -> dict | None:
    """One history line as a dict (None when it is not one of sando's)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("version") else None


def last(report: "scripts.Report | str") -> dict | None:
    """The record a switch script reported (its last `history` report), for the outputs."""
    if isinstance(report, str):
        report = scripts.Report.parse(report)
    lines = report.all("history")
    return parse(lines[-1]) if lines else None


def good_line(records: list[dict]) -> list[str]:
    """The versions that were good, oldest first, as a rollback walks them back: a switch that
    held to a new version goes on top; a switch to a version already on the line (a rollback,
    or a pin back by hand) cuts the line back to it. So v1, v2, v4, v5 then a rollback to v4
    gives [v1, v2, v4], and the next rollback goes to v2, not forward to v5. Failed switches
    are not on the line."""
    line: list[str] = []
    for r in records:
        if r.get("result") != "ok":
            continue
        v = str(r["version"])
        if v in line:
            del line[line.index(v) + 1:]
        else:
            line.append(v)
    return line
