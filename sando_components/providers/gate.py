"""The migration gate (design doc item 9), as the first steps of a node's switch script: which of
the release's migrations the live database has not applied, their dry run on a consistent scratch
copy, the refusal of destructive ones, and the backup before the release first starts. Nothing
user-visible happens before it passed: no warning, no restart, `current` unchanged."""

from __future__ import annotations

import posixpath

from .. import commands, paths


def steps(gate: dict, release_root: str, service: str, version: str) -> tuple[str | None, str | None]:
    """(gate step, backup step) of the switch script; (None, None) when the gate is off or the
    release has no migrations."""
    if not gate or not gate.get("enabled") or not gate.get("migrations"):
        return None, None
    release = posixpath.join(release_root, "releases", version)
    dry_run = gate["dryRunCommand"].format(release=commands.q(release), scratch='"$SCRATCH"', database='"$DB"')
    env_file = gate.get("envFile") or paths.for_service(paths.DEFAULT_ENV_FILE, service)
    return (
        commands.gate(version, list(gate["migrations"]), list(gate.get("destructive") or []), gate.get("database"), env_file,
                      paths.for_service(paths.DEFAULT_DATABASE, service), dry_run, bool(gate.get("allowDestructive"))),
        commands.backup(gate.get("backupDir") or paths.for_service(paths.DEFAULT_BACKUP_DIR, service), version),
    )


def verdict(report: list[tuple[str, str]], names: dict[str, str] | None = None) -> dict:
    """The gate's findings for the stack outputs: pending and destructive migrations, the dry run's
    last line, the backup taken (None: none needed)."""
    get = dict(report)
    dry = [v for k, v in report if k == "dryrun"]
    pending = get.get("pending", "").split() if "pending" in get else []
    flagged = {line.split()[1] for line in dry if line.startswith("pending ") and line.endswith("[destructive]")}
    names = names or {}
    destructive = [f"{v} {names[v]}" if v in names else v
                   for v in sorted({v for k, v in report if k == "destructive"} | flagged, key=_num)]
    return {
        "database": get.get("database"),
        "pending": pending,
        "destructive": destructive,
        "dryRun": (dry[-1] if dry else ("not needed" if "pending" in get else "not run")),
        "backup": get.get("backup"),
        **({"note": get["gate-note"]} if "gate-note" in get else {}),  # issue 20.7 hook: e.g. an empty database
    }


def failure_line(report: list[tuple[str, str]]) -> str:
    dry = [v for k, v in report if k == "dryrun"]
    failed = [line for line in dry if line.startswith("dry-run failed")]
    return (failed or dry or ["no output"])[-1]


def _num(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (1 << 62, v)
