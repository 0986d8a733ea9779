"""sando's node-side scripts: real shell files in `sh/`, chosen and parameterised here.

A step is `sh/<step>.sh`. `render(step, NAME=value, ...)` is the text run on the node: `set -u`,
`umask 077`, the parameters as shell variables (each value shlex-quoted: no config value ever
reaches the shell unquoted), the outcome table (`sh/outcomes.sh`), the library (`sh/lib.sh`),
then the step. `command(...)` wraps it for one exec: `sh -c '<text>'` (POSIX sh, whatever the
user's login shell is). The scripts are checked by shellcheck in the tests.

Scripts report with `report KEY VALUE` (lib.sh): one JSON object per line, read back by
`Report.parse`, which refuses a malformed report line instead of guessing.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import OperatorError

SH_DIR = Path(__file__).parent / "sh"
PARAM_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
REPORT_PREFIX = '{"@":'


@cache
def source(name: str) -> str:
    """The text of sh/<name> (a file of the package)."""
    return (SH_DIR / name).read_text()


@cache
def outcomes() -> dict[str, tuple[int, str]]:
    """{NAME: (exit code, meaning)} from sh/outcomes.sh."""
    table: dict[str, tuple[int, str]] = {}
    for line in source("outcomes.sh").splitlines():
        m = re.fullmatch(r"(EX_[A-Z0-9_]+)=(\d+)\s*#\s*(.+)", line.strip())
        if m:
            table[m.group(1)] = (int(m.group(2)), m.group(3).strip())
    return table


def code(name: str) -> int:
    """The exit code of outcome NAME (e.g. "EX_OK")."""
    return outcomes()[name][0]


def name_of(rc: int) -> str | None:
    """The outcome NAME of exit code rc, or None when it is not one of the table's."""
    return next((n for n, (c, _) in outcomes().items() if c == rc), None)


def params(**values: object) -> str:
    """Shell assignments, one per line, each value quoted (None -> empty)."""
    lines = []
    for name, value in values.items():
        if not PARAM_RE.fullmatch(name):
            raise ValueError(f"not a script parameter name: {name!r}")
        lines.append(f"{name}={shlex.quote('' if value is None else str(value))}")
    return "\n".join(lines)


def render_inline(assignments: str, body: str) -> str:
    """Shell text: the preamble (set -u, umask 077), assignments, outcome table, library, body."""
    return "\n".join(["set -u", "umask 077", assignments, source("outcomes.sh"), source("lib.sh"), body])


def render(step: str, /, **values: object) -> str:
    """The text of one node-side step (sh/<step>.sh) with its parameters."""
    return render_inline(params(**values), source(f"{step}.sh"))


def command(step: str, /, **values: object) -> str:
    """The exec command line of one step: `sh -c '<render(...)>' sando-<step>`."""
    return shlex.join(["sh", "-c", render(step, **values), f"sando-{step}"])


class MalformedReport(OperatorError):
    pass


@dataclass(frozen=True)
class Report:
    """What a step reported, in order: [(key, value)]."""

    entries: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, out: str, where: str = "a node") -> "Report":
        entries = []
        for line in out.splitlines():
            if not line.startswith(REPORT_PREFIX):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not (isinstance(obj, dict) and set(obj) == {"@", "v"} and isinstance(obj["@"], str)
                    and KEY_RE.fullmatch(obj["@"]) and isinstance(obj["v"], str)):
                raise MalformedReport(f"{where}: a sando script printed a report line that cannot be read: "
                                      f"{line[:200]!r}")
            entries.append((obj["@"], obj["v"]))
        return cls(tuple(entries))

    def all(self, key: str) -> list[str]:
        return [v for k, v in self.entries if k == key]

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.entries)

    def one(self, key: str, default: str | None = None) -> str | None:
        """The value of a key reported at most once (a repeated one is an error, not the last wins)."""
        values = self.all(key)
        if len(values) > 1:
            raise MalformedReport(f"a sando script reported {key!r} {len(values)} times: {values[:3]!r}")
        return values[0] if values else default

    def keys(self) -> list[str]:
        return [k for k, _ in self.entries]

    def after(self, key: str) -> "Report":
        """The entries after the first `key` (e.g. what happened after a switch back)."""
        keys = self.keys()
        return Report(self.entries[keys.index(key) + 1:]) if key in keys else Report(())
