"""sando's node-side scripts: real shell files in `sh/`, chosen and parameterised here.

A step is `sh/<step>.sh`. `render(step, NAME=value, ...)` is the text run on the node: `set -u`,
`umask 077`, the node paths (`P_RELEASES`... from paths.SCRIPT_PATHS), the parameters as shell
variables (each value shlex-quoted: no config value ever reaches the shell unquoted), the outcome
table (`sh/outcomes.sh`), the library (`sh/lib.sh`), the parts the step uses, then the step.
`command(...)` wraps it for one exec: `sh -c '<text>'` (POSIX sh, whatever the user's login shell
is). The scripts are checked by shellcheck in the tests.

A step file declares what it takes and which parts (function files) it uses, in its header:
    # params: RELEASE_ROOT SERVICE
    # uses: health warning
`render` refuses a missing or unknown parameter (a typo is an error, not an empty variable).

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

from . import paths
from .errors import OperatorError

SH_DIR = Path(__file__).parent / "sh"
PARAM_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
REPORT_PREFIX = '{"@":'
# seconds a restart outside a switch (`sando restart`, a changed unit in the host config step) waits
# for a switch or restart at work on its node (the node's switch lock, lib.sh switch_lock)
RESTART_LOCK_WAIT = 60


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


@cache
def header(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(params, uses) declared by sh/<name>.sh (`# params: A B`, `# uses: part other`; may repeat)."""
    declared: dict[str, list[str]] = {"params": [], "uses": []}
    for line in source(f"{name}.sh").splitlines():
        m = re.fullmatch(r"#\s*(params|uses):(.*)", line.strip())
        if m:
            declared[m.group(1)] += m.group(2).split()
    return tuple(declared["params"]), tuple(declared["uses"])


def parts(step: str) -> tuple[str, ...]:
    """The part files a step uses, each once, a part's own parts first."""
    seen: list[str] = []
    for part in header(step)[1]:
        for p in (*parts(part), part):
            if p not in seen:
                seen.append(p)
    return tuple(seen)


def declared_params(step: str) -> tuple[str, ...]:
    names: list[str] = []
    for name in (*parts(step), step):
        names += [p for p in header(name)[0] if p not in names]
    return tuple(names)


def path_assignments() -> str:
    """The node paths as shell variables (one command, so a directive covers it: not every step
    uses every path)."""
    return "# shellcheck disable=SC2034\n" + " \\\n  ".join(
        f"{name}={shlex.quote(value)}" for name, value in paths.SCRIPT_PATHS.items())


def params(**values: object) -> str:
    """Shell assignments, one per line, each value quoted (None -> empty)."""
    lines = []
    for name, value in values.items():
        if not PARAM_RE.fullmatch(name):
            raise ValueError(f"not a script parameter name: {name!r}")
        lines.append(f"{name}={shlex.quote('' if value is None else str(value))}")
    return "\n".join(lines)


def render_inline(assignments: str, body: str) -> str:
    """Shell text: the preamble (set -u, umask 077), node paths, assignments, outcome table
    (one block: a step uses some of its codes), library, body."""
    return "\n".join(["set -u", "umask 077", path_assignments(), assignments,
                      "# shellcheck disable=SC2034\n{\n" + source("outcomes.sh") + "}", source("lib.sh"), body])


def render(step: str, /, **values: object) -> str:
    """The text of one node-side step (sh/<step>.sh, after the parts it uses) with its parameters."""
    wanted = declared_params(step)
    missing, unknown = [p for p in wanted if p not in values], [p for p in values if p not in wanted]
    if missing or unknown:
        raise ValueError(f"sh/{step}.sh takes {' '.join(wanted) or 'no parameters'}; "
                         f"missing {missing}, unknown {unknown}")
    body = "\n".join([*(source(f"{p}.sh") for p in parts(step)), source(f"{step}.sh")])
    return render_inline(params(**values), body)


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

    def named(self, key: str) -> dict[str, str]:
        """{name: value} of a key reported with report_named (lib.sh): `NAME<tab>VALUE`, where a tab
        cannot occur in either (report turns them into spaces); a repeated name is an error."""
        out: dict[str, str] = {}
        for v in self.all(key):
            name, tab, value = v.partition("\t")
            if not tab or name in out:
                raise MalformedReport(f"a sando script reported {key!r} {'twice for ' + repr(name) if tab else 'without a name'}")
            out[name] = value
        return out

    def keys(self) -> list[str]:
        return [k for k, _ in self.entries]

    def before(self, key: str) -> "Report":
        """The entries before the first `key` (all of them when it was not reported)."""
        keys = self.keys()
        return Report(self.entries[:keys.index(key)]) if key in keys else self

    def after(self, key: str) -> "Report":
        """The entries after the first `key` (e.g. what happened after a switch back)."""
        keys = self.keys()
        return Report(self.entries[keys.index(key) + 1:]) if key in keys else Report(())
