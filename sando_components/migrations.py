"""The release's database migrations, read from the server repo at the pinned commit.

sqlx's layout: `<dir>/<VERSION>_<DESCRIPTION>.sql` (reversible ones as `.up.sql`), applied
in version order and recorded in the `_sqlx_migrations` table. A migration is destructive
when a statement drops a table or a column (`DROP TABLE`, `ALTER TABLE ... DROP [COLUMN]`);
statements are parsed with sqlglot (SQLite dialect), and a statement it cannot parse is
checked by its words, so nothing destructive slips through as "unparsed".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass

from . import build

logging.getLogger("sqlglot").setLevel(logging.ERROR)
NAME_RE = re.compile(r"^(\d+)_(.+?)(\.up)?\.sql$")
DROP_WORDS = re.compile(r"\bDROP\s+TABLE\b|\bALTER\s+TABLE\b.*\bDROP\b", re.I | re.S)


@dataclass(frozen=True)
class Migration:
    version: str  # as sqlx records it (the number, without leading zeros)
    description: str
    destructive: bool


def _statement_drops(stmt) -> bool:
    from sqlglot import exp

    if isinstance(stmt, exp.Drop):
        return str(stmt.args.get("kind") or "").upper() == "TABLE"
    if isinstance(stmt, exp.Alter):
        return any(isinstance(a, exp.Drop) or (isinstance(a, exp.Command) and DROP_WORDS.search(f"ALTER TABLE {a}"))
                   for a in stmt.args.get("actions") or [])
    if isinstance(stmt, exp.Command):
        return bool(DROP_WORDS.search(stmt.sql()))
    return False


def is_destructive(sql: str) -> bool:
    """Whether the SQL drops a table or a column."""
    import sqlglot  # only programs whose release has migrations pay for the parser

    try:
        statements = sqlglot.parse(sql, read="sqlite")
    except sqlglot.errors.SqlglotError:
        return bool(DROP_WORDS.search(sql))
    return any(s is not None and _statement_drops(s) for s in statements)


def of_release(repo: str, commit: str, directory: str) -> list[Migration]:
    """The migrations of the release at `commit`, in the order sqlx applies them. Whether a file is
    destructive is kept per blob id in the local cache: a no-op run parses nothing."""
    names = {name: (m, blob) for name, blob in build.list_tree(repo, commit, directory).items()
             if (m := NAME_RE.match(name)) and not name.endswith(".down.sql")}  # a reversible one's undo half is not applied
    cache = build.cache_root() / "migrations.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    todo = [blob for _, blob in names.values() if blob not in known]
    if todo:
        known.update({blob: is_destructive(sql) for blob, sql in build.read_blobs(repo, todo).items()})
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"migrations.json.{os.getpid()}")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, cache)
    found = [Migration(str(int(m.group(1))), m.group(2), bool(known[blob])) for m, blob in names.values()]
    return sorted(found, key=lambda x: int(x.version))
