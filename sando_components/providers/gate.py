"""The migration gate (design doc item 9), as the first steps of a node's switch script: which of
the release's migrations the live database has not applied, their dry run on a consistent scratch
copy, the refusal of destructive ones, and the backup before the release first starts. Nothing
user-visible happens before it passed: no warning, no restart, `current` unchanged."""

from __future__ import annotations

import posixpath

from .. import commands, paths
from ..scripts import Report


def params(gate: dict, release_root: str, service: str, version: str) -> dict[str, object] | None:
    """The gate's and the backup's parameters of the switch script (sh/gate.sh, sh/backup.sh);
    None when the gate is off or the release has no migrations."""
    if not gate or not gate.get("enabled") or not gate.get("migrations"):
        return None
    release = posixpath.join(release_root, paths.RELEASES, version)
    dry_run = gate["dryRunCommand"].format(release='"$GATE_RELEASE"', scratch='"$SCRATCH"', database='"$DB"')
    env_file = gate.get("envFile") or paths.for_service(paths.DEFAULT_ENV_FILE, service)
    return {
        **commands.gate_params(version, release, list(gate["migrations"]), list(gate.get("destructive") or []),
                               gate.get("database"), env_file, paths.for_service(paths.DEFAULT_DATABASE, service),
                               dry_run, bool(gate.get("allowDestructive"))),
        **commands.backup_params(gate.get("backupDir") or paths.for_service(paths.DEFAULT_BACKUP_DIR, service)),
    }


def verdict(report: Report, names: dict[str, str] | None = None) -> dict:
    """The gate's findings for the stack outputs: pending and destructive migrations, the dry run's
    last line, the backup taken (None: none needed)."""
    dry = report.all("dryrun")
    pending = (report.one("pending") or "").split()
    flagged = {line.split()[1] for line in dry if line.startswith("pending ") and line.endswith("[destructive]")}
    names = names or {}
    destructive = [f"{v} {names[v]}" if v in names else v
                   for v in sorted(set(report.all("destructive")) | flagged, key=_num)]
    return {
        "database": report.one("database"),
        "pending": pending,
        "destructive": destructive,
        "dryRun": (dry[-1] if dry else ("not needed" if report.has("pending") else "not run")),
        "backup": report.one("backup"),
        **({"note": report.one("gate-note")} if report.has("gate-note") else {}),  # issue 20.7: an empty database
    }


def failure_line(report: Report) -> str:
    dry = report.all("dryrun")
    failed = [line for line in dry if line.startswith("dry-run failed")]
    return (failed or dry or ["no output"])[-1]


def _num(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (1 << 62, v)
