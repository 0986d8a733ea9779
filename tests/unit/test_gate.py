"""The migration gate and the backup (sh/gate.sh, sh/backup.sh, parameterised by
providers.gate.params) run for real with sqlite3 against a database holding sqlx's
_sqlx_migrations table; the release's dry run is a stand-in `mnw-admin` in the release dir that
records what it was given and exits as told. Also gate.verdict and gate.failure_line."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sando_components import commands, paths, scripts
from sando_components.providers import gate
from sando_components.providers.base import parse_state
from sando_components.providers.pointer import PointerProvider
from sando_components.scripts import Report

from fakenode import FakeNode, connection

SERVICE = "sando-unit-svc"  # its default paths (/var/lib/sando-unit-svc/...) do not exist here

# the release's admin CLI, standing in for `mnw-admin migrate --dry-run --database PATH`
MNW_ADMIN = r"""#!/bin/sh
log="$FAKE_STATE/dryrun"
printf '%s\n' "$*" > "$log.args"
db=
while [ $# -gt 0 ]; do [ "$1" = --database ] && db=$2; shift; done
printf '%s\n' "$db" > "$log.db"
stat -c %a "$db" > "$log.mode" 2>/dev/null
if [ -f "$db" ]; then sqlite3 "$db" 'SELECT body FROM notes' > "$log.rows"; fi
echo "pending 3 drop_old_column [destructive]"
echo "dry-run says hello"
exit $(cat "$FAKE_STATE/dryrun-exit" 2>/dev/null || echo 0)
"""


@pytest.fixture
def node(tmp_path) -> FakeNode:
    n = FakeNode(tmp_path)
    for v in ("v1", "v2"):
        d = n.release(v)
        (d / "mnw-admin").write_text(MNW_ADMIN)
        (d / "mnw-admin").chmod(0o755)
    return n


def make_db(path: Path, applied=("1", "2"), failed=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);
        CREATE TABLE notes (body TEXT);
        INSERT INTO notes VALUES ('live row');
    """)
    for v in applied:
        con.execute("INSERT INTO _sqlx_migrations VALUES (?, 'm', CURRENT_TIMESTAMP, 1, x'00', 1)", (int(v),))
    for v in failed:
        con.execute("INSERT INTO _sqlx_migrations VALUES (?, 'm', CURRENT_TIMESTAMP, 0, x'00', 1)", (int(v),))
    con.commit()
    con.close()
    return path


def gate_props(node: FakeNode, db: Path | None, migrations=("1", "2", "3"), destructive=("3",), allow=False,
               env_file: Path | None = None, backup_dir: Path | None = None) -> dict:
    return {"enabled": True, "migrations": list(migrations), "destructive": list(destructive),
            "names": {"3": "drop_old_column"},
            "dryRunCommand": "{release}/mnw-admin migrate --dry-run --database {scratch}",
            "database": str(db) if db else None, "envFile": str(env_file or node.base / "no.env"),
            "backupDir": str(backup_dir or node.base / "backups"), "allowDestructive": allow}


def gate_script(node: FakeNode, values: dict, backup: bool = True) -> str:
    """The gate (and the backup) on their own, in the release root, then `passed` when both passed."""
    return scripts.render_inline(
        scripts.params(**values, RELEASE_ROOT=str(node.root)),
        "\n".join([scripts.source("gate.sh"), scripts.source("backup.sh"),
                   'cd "$RELEASE_ROOT" || exit', "gate", "backup" if backup else "", "report passed ''"]))


def run_gate(node: FakeNode, g: dict, version: str = "v2", **env):
    return node.run(gate_script(node, gate.params(g, str(node.root), SERVICE, version)), **env)


def dry_run_exit(node: FakeNode, code: int) -> None:
    (node.state / "dryrun-exit").write_text(str(code))


def dry_run_ran(node: FakeNode) -> bool:
    return (node.state / "dryrun.args").exists()


# --- which migrations are pending -----------------------------------------------------------------


def test_nothing_pending_no_dry_run_no_backup(node):
    db = make_db(node.base / "data" / "live.db", applied=("1", "2", "3"))
    res = run_gate(node, gate_props(node, db))
    assert res.rc == 0, res.out + res.err
    assert res.report == [("database", str(db)), ("pending", ""), ("passed", "")]
    assert res.rc == scripts.code("EX_OK")
    assert not dry_run_ran(node)
    assert not (node.base / "backups").exists()


def test_pending_dry_run_gets_a_scratch_copy_that_is_removed(node):
    db = make_db(node.base / "data dir" / "live.db", applied=("1",), failed=("2",))
    before = db.read_bytes()
    res = run_gate(node, gate_props(node, db, allow=True))
    assert res.rc == 0, res.out + res.err
    assert res.get("pending") == "2 3"  # a failed row is not applied
    assert res.get("dryrun-exit") == "0"
    assert [v for k, v in res.report if k == "dryrun"] == ["pending 3 drop_old_column [destructive]",
                                                           "dry-run says hello"]
    scratch = (node.state / "dryrun.db").read_text().strip()
    assert scratch != str(db)
    assert os.path.dirname(scratch) == str(db.parent) and os.path.basename(scratch).startswith(".sando-scratch.")
    assert (node.state / "dryrun.rows").read_text() == "live row\n"  # a real, consistent copy
    assert (node.state / "dryrun.args").read_text() == f"migrate --dry-run --database {scratch}\n"
    assert (node.state / "dryrun.mode").read_text() == "600\n"  # the scratch copy is private
    assert not os.path.exists(scratch) and not os.path.exists(scratch + ".out")
    assert sorted(os.listdir(db.parent)) == ["live.db"]
    assert db.read_bytes() == before  # the live database was never touched


def test_no_database_yet_dry_run_on_an_empty_scratch(node):
    res = run_gate(node, gate_props(node, node.base / "data" / "absent.db", destructive=()))
    assert res.rc == 0, res.out + res.err
    assert res.get("pending") == "1 2 3"
    assert dry_run_ran(node) and (node.state / "dryrun.rows").read_text() == ""  # an empty database
    assert not os.path.exists((node.state / "dryrun.db").read_text().strip())
    assert "backup" not in res.keys()  # nothing to back up


@pytest.mark.parametrize("line, expected", [
    ("DATABASE_PATH=/srv/data/mnw.db", "/srv/data/mnw.db"),
    ('DATABASE_PATH="/srv/data/mnw.db"', "/srv/data/mnw.db"),
    ("DATABASE_PATH='/srv/data/mnw.db'", "/srv/data/mnw.db"),
    ("DATABASE_PATH=/old.db\nOTHER=1\nDATABASE_PATH=/srv/data/mnw.db", "/srv/data/mnw.db"),  # the last one wins
    ("# DATABASE_PATH=/commented.db\nRUST_LOG=info", f"/var/lib/{SERVICE}/{SERVICE}.db"),
])
def test_database_path_from_the_env_file(node, line, expected):
    env = node.base / "mnw.env"
    env.write_text(line + "\n")
    res = run_gate(node, gate_props(node, None, env_file=env))
    assert res.get("database") == expected


def test_database_default_without_env_file_and_explicit_database_wins(node):
    assert run_gate(node, gate_props(node, None)).get("database") == f"/var/lib/{SERVICE}/{SERVICE}.db"
    env = node.base / "mnw.env"
    env.write_text("DATABASE_PATH=/from/env.db\n")
    db = make_db(node.base / "explicit.db", applied=("1", "2", "3"))
    assert run_gate(node, gate_props(node, db, env_file=env)).get("database") == str(db)


def test_database_from_env_file_is_the_one_checked(node):
    db = make_db(node.base / "data" / "live.db", applied=("1", "2", "3"))
    env = node.base / "mnw.env"
    env.write_text(f'DATABASE_PATH="{db}"\n')
    res = run_gate(node, gate_props(node, None, env_file=env))
    assert res.get("pending") == "" and not dry_run_ran(node)


# --- the verdicts ---------------------------------------------------------------------------------


def test_failing_dry_run_exits_30_and_marks_the_release_failed(node):
    db = make_db(node.base / "live.db")
    dry_run_exit(node, 3)
    res = run_gate(node, gate_props(node, db, allow=True))
    assert res.rc == scripts.code("EX_DRY_RUN_FAILED") == 30
    assert (node.root / "releases" / "v2" / paths.FAILED).read_text() == "the migration dry run failed\n"
    assert res.get("failed") == "v2" and "passed" not in res.keys() and "backup" not in res.keys()
    assert not [n for n in os.listdir(db.parent) if n.startswith(".sando-scratch")]


@pytest.mark.parametrize("allow, rc", [(False, 31), (True, 0)])
def test_dry_run_exit_4_is_refused_unless_allowed(node, allow, rc):
    db = make_db(node.base / "live.db")
    dry_run_exit(node, 4)
    res = run_gate(node, gate_props(node, db, destructive=(), allow=allow))
    assert res.rc == rc
    assert ("passed" in res.keys()) is allow
    assert not (node.root / "releases" / "v2" / paths.FAILED).exists()


@pytest.mark.parametrize("allow, rc", [(False, 31), (True, 0)])
def test_destructive_by_sandos_list_is_refused_unless_allowed(node, allow, rc):
    db = make_db(node.base / "live.db")
    res = run_gate(node, gate_props(node, db, allow=allow))
    assert res.rc == rc
    assert res.get("destructive") == "3"
    assert res.get("dryrun-exit") == "0"


def test_destructive_migration_already_applied_is_not_refused(node):
    db = make_db(node.base / "live.db", applied=("1", "3"))
    res = run_gate(node, gate_props(node, db, destructive=("3",)))
    assert res.rc == 0 and res.get("pending") == "2" and "destructive" not in res.keys()


def test_dry_run_that_cannot_run_exits_32(node):
    db = make_db(node.base / "live.db")
    dry_run_exit(node, 2)
    res = run_gate(node, gate_props(node, db, allow=True))
    assert res.rc == 32 and res.get("dryrun-exit") == "2"
    assert not (node.root / "releases" / "v2" / paths.FAILED).exists()


def test_gate_off_or_no_migrations_adds_no_step(node):
    assert gate.params({}, "/r", SERVICE, "v1") is None
    assert gate.params({**gate_props(node, None), "enabled": False}, "/r", SERVICE, "v1") is None
    assert gate.params({**gate_props(node, None), "migrations": []}, "/r", SERVICE, "v1") is None


def test_gate_params_by_exact_value(node):
    g = {**gate_props(node, None, env_file=Path("/etc/m/m.env"), backup_dir=Path("/var/backups/m")),
         "dryRunCommand": "{release}/mnw-admin migrate --dry-run --database {scratch} # live: {database}"}
    assert gate.params(g, "/opt/m", SERVICE, "v2") == {
        "VERSION": "v2", "GATE_RELEASE": "/opt/m/releases/v2", "GATE_MIGRATIONS": "1\n2\n3",
        "GATE_DESTRUCTIVE": "3", "GATE_DATABASE": "", "GATE_ENV_FILE": "/etc/m/m.env",
        "GATE_DEFAULT_DATABASE": f"/var/lib/{SERVICE}/{SERVICE}.db",
        "GATE_DRY_RUN": '"$GATE_RELEASE"/mnw-admin migrate --dry-run --database "$SCRATCH" # live: "$DB"',
        "GATE_ALLOW_DESTRUCTIVE": 0, "BACKUP_DIR": "/var/backups/m", "BACKUP_KEEP": paths.BACKUPS_KEPT}


def test_a_briefly_locked_database_does_not_make_applied_migrations_pending(node):
    db = make_db(node.base / "live.db", applied=("1", "2"))
    locked, done = threading.Event(), threading.Event()

    def writer():
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(1.5)
        con.execute("COMMIT")
        con.close()
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    locked.wait()
    try:
        res = run_gate(node, gate_props(node, db, destructive=(), allow=True))
    finally:
        t.join()
    assert res.get("pending") == "3"


def test_database_in_a_directory_with_a_quote(node):
    db = make_db(node.base / "it's data" / "live.db")
    res = run_gate(node, gate_props(node, db, allow=True))
    assert res.rc == 0, res.out + res.err


# --- the backup -----------------------------------------------------------------------------------


FAKE_DATE = """#!/bin/sh
if [ "$1" = -u ]; then echo 20260102T0304Z; else exec /usr/bin/date "$@"; fi
"""


@pytest.fixture
def frozen_minute(node):
    d = node.base / "frozen"
    d.mkdir()
    (d / "date").write_text(FAKE_DATE)
    (d / "date").chmod(0o755)
    return f"{d}:{node.env()['PATH']}"


def test_backup_is_a_real_sqlite_copy_named_by_version_and_utc_minute(node):
    db = make_db(node.base / "live.db")
    before = datetime.now(timezone.utc).strftime("%Y%m%dT%H%MZ")
    res = run_gate(node, gate_props(node, db, allow=True))
    after = datetime.now(timezone.utc).strftime("%Y%m%dT%H%MZ")
    assert res.rc == 0, res.out + res.err
    backup = res.get("backup")
    m = re.fullmatch(re.escape(str(node.base / "backups" / "pre-v2-")) + r"(\d{8}T\d{4}Z)\.db", backup)
    assert m and before <= m.group(1) <= after
    con = sqlite3.connect(backup)
    assert con.execute("SELECT body FROM notes").fetchall() == [("live row",)]
    con.close()


def test_second_backup_in_the_same_minute_gets_2(node, frozen_minute):
    db = make_db(node.base / "live.db")
    first = run_gate(node, gate_props(node, db, allow=True), PATH=frozen_minute).get("backup")
    second = run_gate(node, gate_props(node, db, allow=True), PATH=frozen_minute).get("backup")
    assert first == str(node.base / "backups" / "pre-v2-20260102T0304Z.db")
    assert second == str(node.base / "backups" / "pre-v2-20260102T0304Z-2.db")
    assert sorted(os.listdir(node.base / "backups")) == ["pre-v2-20260102T0304Z-2.db", "pre-v2-20260102T0304Z.db"]


def test_third_backup_in_the_same_minute_does_not_overwrite_the_second(node, frozen_minute):
    db = make_db(node.base / "live.db")
    names = [run_gate(node, gate_props(node, db, allow=True), PATH=frozen_minute).get("backup") for _ in range(3)]
    assert len(set(names)) == 3


def test_no_backup_when_nothing_is_pending(node):
    db = make_db(node.base / "live.db", applied=("1", "2", "3"))
    res = run_gate(node, gate_props(node, db))
    assert "backup" not in res.keys() and not (node.base / "backups").exists()


# --- in the switch: nothing user-visible before the gate passed ---------------------------------------


def pointer_props(node: FakeNode, g: dict) -> dict:
    return {"node": "node1", "connection": connection(), "privateKey": None, "releaseRoot": str(node.root),
            "service": SERVICE, "version": "v2", "commit": "c-v2", "keepReleases": 5,
            "healthCheck": {"url": "http://127.0.0.1:3000/", "timeoutSeconds": 0, "intervalSeconds": 0.1,
                            "expectVersion": False},
            "warning": {"url": "http://127.0.0.1:3000/api/internal/restart-warning", "seconds": 1,
                        "onFailure": "warn"}, "token": "tok", "gate": g, "rollout": {}}


def run_switch(node: FakeNode, g: dict):
    p = pointer_props(node, g)
    state = parse_state(node.run(commands.probe(str(node.root), SERVICE)).out)
    script, _ = PointerProvider()._script(p, state)
    node.clear_calls()
    return node.run(script, stdin=b"Authorization: Bearer tok\n")


def test_refused_gate_in_the_switch_changes_nothing(node):
    node.point(current="v1")
    node.start("v1")
    db = make_db(node.base / "live.db")
    res = run_switch(node, gate_props(node, db))
    assert res.rc == 31
    assert node.readlink("current") == "releases/v1" and node.running() == "v1"
    assert node.calls("systemctl") == [] and node.calls("curl") == []  # no warning, no restart
    assert not (node.base / "backups").exists()


def test_passed_gate_backs_up_then_switches(node):
    node.point(current="v1")
    node.start("v1")
    db = make_db(node.base / "live.db")
    res = run_switch(node, gate_props(node, db, allow=True))
    assert res.rc == 0, res.out + res.err
    keys = res.keys()
    assert keys.index("dryrun-exit") < keys.index("backup") < keys.index("warning") < keys.index("switched")
    assert node.readlink("current") == "releases/v2"
    assert gate.verdict(res.parsed, {"3": "drop_old_column"}) == {
        "database": str(db), "pending": ["3"], "destructive": ["3 drop_old_column"],
        "dryRun": "dry-run says hello", "backup": res.get("backup")}


# --- verdict / failure_line -----------------------------------------------------------------------


def test_verdict_of_a_dry_run():
    report = [("database", "/var/lib/m/m.db"), ("pending", "2 10 3"), ("destructive", "10"),
              ("dryrun", "pending 2 add_tags"), ("dryrun", "pending 3 drop_x [destructive]"),
              ("dryrun", "dry-run ok"), ("dryrun-exit", "0"), ("backup", "/var/backups/m/pre-v3-x.db")]
    assert gate.verdict(Report(tuple(report)), {"3": "drop_x", "10": "drop_y"}) == {
        "database": "/var/lib/m/m.db", "pending": ["2", "10", "3"], "destructive": ["3 drop_x", "10 drop_y"],
        "dryRun": "dry-run ok", "backup": "/var/backups/m/pre-v3-x.db"}


def test_verdict_without_dry_run():
    assert gate.verdict(Report((("database", "/d"), ("pending", "")))) == {
        "database": "/d", "pending": [], "destructive": [], "dryRun": "not needed", "backup": None}
    assert gate.verdict(Report(())) == {"database": None, "pending": [], "destructive": [], "dryRun": "not run",
                                "backup": None}


def test_failure_line():
    assert gate.failure_line(Report((("dryrun", "pending 2 x"), ("dryrun", "dry-run failed at 2: no such table"),
                                     ("dryrun", "bye")))) == "dry-run failed at 2: no such table"
    assert gate.failure_line(Report((("dryrun", "a"), ("dryrun", "b")))) == "b"
    assert gate.failure_line(Report((("pending", "2"),))) == "no output"


@pytest.mark.parametrize("evil", ["$(touch PWNED)", "x; touch PWNED", "x' ; touch PWNED ; '", "`touch PWNED`",
                                  'x" ; touch PWNED ; "', "-rf"])
def test_hostile_values_cannot_inject(node, evil):
    db = make_db(node.base / "live.db", applied=())
    env = node.base / evil / "env"
    env.parent.mkdir()
    env.write_text(f"DATABASE_PATH={db}\n")
    backup = commands.backup_params(str(node.base / evil / "backups"))
    values = commands.gate_params(evil, str(node.root / evil), [evil, "1"], [evil], None, str(env),
                                  str(node.base / evil / "default.db"), 'echo "dry run on $SCRATCH"', False)
    res = node.run(gate_script(node, {**values, **backup}))
    assert res.rc == 31 and res.get("pending") == f"{evil} 1" and res.get("destructive") == evil
    values = commands.gate_params(evil, str(node.root / evil), [evil], [evil], None, str(env), "/x.db",
                                  'echo "dry run on $SCRATCH"', True)
    res = node.run(gate_script(node, {**values, **backup}))
    assert res.rc == 0, res.out + res.err
    backup = Path(res.get("backup"))  # the backup is taken, under its own name, whatever the value
    assert backup.parent == node.base / evil / "backups" and backup.name.startswith(f"pre-{evil}-")
    assert sqlite3.connect(backup).execute("SELECT body FROM notes").fetchall() == [("live row",)]
    assert os.listdir(backup.parent) == [backup.name]  # no temp file left
    assert not list(node.base.rglob("PWNED"))


def test_backup_dir_with_a_quote(node):
    db = make_db(node.base / "live.db")
    res = run_gate(node, gate_props(node, db, allow=True, backup_dir=node.base / "it's backups"))
    assert res.rc == 0, res.out + res.err


# --- private copies and a bounded number of backups ------------------------------------------------


def test_backup_and_scratch_are_private_and_owned_like_the_database(node):
    db = make_db(node.base / "live.db")
    db.chmod(0o640)
    res = run_gate(node, gate_props(node, db, allow=True))
    assert res.rc == 0, res.out + res.err
    backup = Path(res.get("backup"))
    st, live = backup.stat(), db.stat()
    assert st.st_mode & 0o7777 == 0o600  # a copy of the whole database: never readable by others
    assert (st.st_uid, st.st_gid) == (live.st_uid, live.st_gid)
    assert (node.state / "dryrun.mode").read_text() == "600\n"
    assert sorted(os.listdir(node.base / "backups")) == [backup.name]  # no temp file left


def test_only_the_newest_backups_are_kept(node):
    db = make_db(node.base / "live.db")
    backups = node.base / "backups"
    backups.mkdir()
    old = []
    for i in range(12):  # older backups, oldest first
        b = backups / f"pre-v0-2025010{i // 10}T00{i % 10}0Z.db"
        b.write_text("old")
        os.utime(b, (1_700_000_000 + i, 1_700_000_000 + i))
        old.append(b.name)
    (backups / "operator-copy.db").write_text("not sando's: left alone")
    g = {**gate_props(node, db, allow=True)}
    values = {**gate.params(g, str(node.root), SERVICE, "v2"), "BACKUP_KEEP": 3}
    res = node.run(gate_script(node, values))
    assert res.rc == 0, res.out + res.err
    new = os.path.basename(res.get("backup"))
    assert sorted(os.listdir(backups)) == sorted([new, *old[-2:], "operator-copy.db"])
    assert sorted(os.path.basename(v) for v in res.parsed.all("backup-removed")) == sorted(old[:-2])


def test_a_failed_backup_leaves_no_temp_file(node, tmp_path):
    db = make_db(node.base / "live.db")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "mv").write_text("#!/bin/sh\necho 'mv: no space left on device' >&2\nexit 1\n")
    (tools / "mv").chmod(0o755)
    res = run_gate(node, gate_props(node, db, allow=True), PATH=f"{tools}:{node.env()['PATH']}")
    assert res.rc == scripts.code("EX_BACKUP_FAILED") and res.get("gate") == "cannot-backup"
    assert os.listdir(node.base / "backups") == []
