"""The one time format of sando's outputs, history and status (issue 20.9): ISO 8601 in UTC to the
second, `2026-12-04T07:55:02Z`."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(epoch: float | int | str | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (None for none)."""
    if epoch is None or epoch == "" or float(epoch) == 0:
        return None
    return datetime.fromtimestamp(float(epoch), timezone.utc).strftime(FORMAT)


def from_systemd(value: str) -> str:
    """A systemd timestamp shown in UTC ("Sat 2026-12-05 22:12:37 UTC", `TZ=UTC systemctl show`) in
    sando's one format ("2026-12-05T22:12:37Z"); anything else ("": never) as it is."""
    m = re.fullmatch(r"\w+ (\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d) UTC", value.strip())
    return f"{m.group(1)}T{m.group(2)}Z" if m else value.strip()


def warning_sent(value: str, seconds: int) -> str:
    """A script's `warning` report said to the operator: "sent EPOCH" as "sent at ISO, Ns before
    the restart"; anything else ("failed HTTP 500 ...") as it is."""
    when = value.split()[1] if value.startswith("sent ") and len(value.split()) == 2 else ""
    return f"sent at {iso(when)}, {seconds}s before the restart" if when.isdigit() else value.strip()


def now() -> str:
    return time.strftime(FORMAT, time.gmtime())
