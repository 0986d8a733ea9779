"""sando_components/migrations.py: which SQL is destructive (drops a table or a column), and the
sqlx migrations of a release read from the server repo at the pinned commit."""

from __future__ import annotations

import pytest

from sando_components import migrations
from sando_components.migrations import Migration

from unit_helpers import commit_all, init_repo


@pytest.mark.parametrize("sql", [
    "DROP TABLE users;",
    "drop table users",
    "Drop Table \"Users\";",
    "DROP TABLE IF EXISTS users;",
    "DROP TABLE main.users;",
    "ALTER TABLE users DROP COLUMN email;",
    "alter table users drop column \"email\"",
    "ALTER TABLE users DROP email;",  # COLUMN is optional in SQLite
    "ALTER TABLE users\n  DROP\n  COLUMN email;",
    "-- tidy up\nDROP TABLE old; -- gone",
    "CREATE TABLE a (x INTEGER);\nINSERT INTO a VALUES (1);\nDROP TABLE b;",
    "BEGIN; ALTER TABLE q DROP COLUMN z; COMMIT;",
    "PRAGMA foreign_keys=off;\nCREATE TABLE n2 (id INTEGER);\nINSERT INTO n2 SELECT id FROM n;\nDROP TABLE n;\n"
    "ALTER TABLE n2 RENAME TO n;\nPRAGMA foreign_keys=on;",
    "CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; END;\nDROP TABLE q;",  # after what sqlglot cannot parse
    "CREATE VIRTUAL TABLE f USING fts5(x);\nALTER TABLE q DROP COLUMN z;",
])
def test_destructive(sql):
    assert migrations.is_destructive(sql) is True


@pytest.mark.parametrize("sql", [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);",
    "INSERT INTO users (email) VALUES ('a@b');",
    "DROP INDEX idx_users_email;",
    "DROP INDEX IF EXISTS idx_users_email;",
    "DROP VIEW v;",
    "ALTER TABLE users RENAME TO people;",
    "ALTER TABLE users RENAME COLUMN email TO mail;",
    "ALTER TABLE users RENAME COLUMN a TO drop_me;",
    "ALTER TABLE users ADD COLUMN age INTEGER;",
    "-- DROP TABLE users\nCREATE TABLE a (x);",
    "/* DROP TABLE users; */ CREATE TABLE a (x);",
    "CREATE TABLE a (x); -- we will drop table b later\n",
    "INSERT INTO notes (body) VALUES ('DROP TABLE users');",
    "CREATE TABLE t (note TEXT DEFAULT 'ALTER TABLE x DROP y');",
    "DELETE FROM users WHERE id = 1;",
    "",
])
def test_not_destructive(sql):
    assert migrations.is_destructive(sql) is False


@pytest.fixture
def repo(tmp_path):
    return init_repo(tmp_path / "server")


def write(repo, files: dict[str, str]) -> str:
    d = repo / "server" / "migrations"
    d.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (d / name).write_text(sql)
    return commit_all(repo, "migrations")


def test_of_release_reads_versions_in_numeric_order(repo):
    commit = write(repo, {
        "0010_drop_legacy.sql": "DROP TABLE legacy;",
        "0002_add_tags.sql": "CREATE TABLE tags (id INTEGER);",
        "0001_init.sql": "CREATE TABLE notes (id INTEGER);",
        "20240101120000_timestamped.up.sql": "ALTER TABLE notes DROP COLUMN x;",
        "README.md": "# not a migration",
        "0003_notes.txt": "DROP TABLE x;",
        "draft.sql": "DROP TABLE y;",
        "x_0004_bad.sql": "DROP TABLE z;",
    })
    assert migrations.of_release(str(repo), commit, "server/migrations") == [
        Migration("1", "init", False),
        Migration("2", "add_tags", False),
        Migration("10", "drop_legacy", True),
        Migration("20240101120000", "timestamped", True),
    ]


def test_of_release_reads_the_commit_not_the_working_tree(repo):
    c1 = write(repo, {"0001_init.sql": "CREATE TABLE a (x);"})
    c2 = write(repo, {"0002_drop.sql": "DROP TABLE a;"})
    (repo / "server" / "migrations" / "0003_uncommitted.sql").write_text("DROP TABLE b;")
    assert [m.version for m in migrations.of_release(str(repo), c1, "server/migrations")] == ["1"]
    assert [m.version for m in migrations.of_release(str(repo), c2, "server/migrations")] == ["1", "2"]


def test_of_release_without_migrations_dir(repo):
    (repo / "README").write_text("x")
    commit = commit_all(repo, "no migrations")
    assert migrations.of_release(str(repo), commit, "server/migrations") == []


def test_down_migrations_are_not_migrations(repo):
    commit = write(repo, {"0002_add_tags.up.sql": "CREATE TABLE tags (id INTEGER);",
                          "0002_add_tags.down.sql": "DROP TABLE tags;"})
    assert migrations.of_release(str(repo), commit, "server/migrations") == [Migration("2", "add_tags", False)]


def test_migration_name_with_a_space_is_read(repo):
    commit = write(repo, {"0001_init.sql": "CREATE TABLE a (x);", "0002_drop old.sql": "DROP TABLE a;"})
    assert migrations.of_release(str(repo), commit, "server/migrations") == [
        Migration("1", "init", False), Migration("2", "drop old", True)]
