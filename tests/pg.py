"""A throwaway PostgreSQL cluster for tests (stdlib only).

    with PgCluster() as pg:                  # initdb + start on a free 127.0.0.1 port
        env["PULUMI_BACKEND_URL"] = pg.url   # postgres://sando:…@127.0.0.1:PORT/pulumi?sslmode=disable
        pg.psql("SELECT count(*) FROM pulumi_state")
        other = pg.create_database("pulumi2")   # another role + database, its backend URL

The cluster lives in its own temp dir (data, unix socket, log) and listens on
127.0.0.1 only, on a port picked free (never 5432): the machine's own cluster, if
any, is not touched. initdb refuses to run as root, so as root the server runs as
the `postgres` system user (Debian's postgresql packages create it). The superuser
`postgres` is reached over the unix socket (trust); the roles made for Pulumi log
in over TCP with a password (scram-sha-256), as a real backend would. On exit the
server is stopped (pg_ctl stop, else SIGQUIT/SIGKILL by PID) and the dir removed.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import glob
import gzip
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "postgres"


def pg_bindir() -> Path:
    """Directory of initdb/pg_ctl/psql: $SANDO_PG_BINDIR, else the newest Debian one, else PATH."""
    if os.environ.get("SANDO_PG_BINDIR"):
        return Path(os.environ["SANDO_PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql, or set SANDO_PG_BINDIR)")


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 5432:
            return port


class PgError(RuntimeError):
    pass


class PgCluster:
    """A private PostgreSQL cluster: `url` is a Pulumi backend URL for role `user` on database `database`
    (made at start, with `password` or a random one). As root, initdb/postgres run as `os_user`
    (default $SANDO_PG_OS_USER or `postgres`); `tmpdir` (or $SANDO_PG_TMPDIR) is where the cluster's
    dir is made, and must be reachable by that user."""

    def __init__(self, user: str = "sando", database: str = "pulumi", password: str | None = None,
                 os_user: str | None = None, tmpdir: str | None = None):
        self.user = user
        self.database = database
        self.password = password or secrets.token_hex(12)
        # initdb/postgres refuse root: run them as `postgres` (or os_user) then.
        self.os_user = os_user or (os.environ.get("SANDO_PG_OS_USER", "postgres") if os.geteuid() == 0 else None)
        self.bindir = pg_bindir()
        self.dir: Path | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self._tmpdir = tmpdir or os.environ.get("SANDO_PG_TMPDIR")

    # --- life cycle -----------------------------------------------------------------
    def __enter__(self) -> "PgCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        # Not under pytest's tmp_path: that is 0700 root, and the server runs as another user.
        self.dir = Path(tempfile.mkdtemp(prefix="sando-pg-", dir=self._tmpdir))
        atexit.register(self.stop)
        if self.os_user:
            try:
                pw = pwd.getpwnam(self.os_user)
            except KeyError:
                raise PgError(f"no system user {self.os_user!r} to run postgres as (apt-get install postgresql)")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run_as("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "--auth-host=scram-sha-256",
                     "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")
        last = ""
        for _ in range(5):  # the free port may be taken between the probe and the bind: pick another
            self.port = free_port()
            self._write_conf()
            res = self._run_as("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start",
                               check=False)
            if res.returncode == 0:
                break
            last = res.stdout + res.stderr + self._log_tail()
        else:
            raise PgError(f"postgres did not start:\n{last}")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self.create_database(self.database, self.user, self.password)

    def stop(self) -> None:
        if self.dir is None:
            return
        if self.pid is None:  # a start that timed out may still have left a server running
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        if self.pid and _alive(self.pid):
            res = self._run_as("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "15", "stop", check=False)
            if res.returncode != 0 or _alive(self.pid):
                for sig, wait in ((signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
                    try:
                        os.kill(self.pid, sig)
                    except ProcessLookupError:
                        break
                    if _wait_gone(self.pid, wait):
                        break
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        atexit.unregister(self.stop)

    # --- paths and URLs ---------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir

    @property
    def log(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def url(self) -> str:
        return self.url_for(self.user, self.password, self.database)

    def url_for(self, user: str, password: str | None, database: str, **params: str) -> str:
        """Backend URL; password=None leaves it out (PGPASSWORD or a passfile then supplies it)."""
        auth = f"{user}:{password}" if password is not None else user
        query = "&".join(f"{k}={v}" for k, v in {"sslmode": "disable", **params}.items())
        return f"postgres://{auth}@127.0.0.1:{self.port}/{database}?{query}"

    def pgpass_line(self, user: str | None = None, password: str | None = None, database: str | None = None) -> str:
        """A ~/.pgpass line (host:port:db:user:password) for a URL without its password."""
        return f"127.0.0.1:{self.port}:{database or self.database}:{user or self.user}:{password or self.password}"

    # --- SQL ----------------------------------------------------------------------------
    def psql(self, sql: str, database: str | None = None, check: bool = True) -> str:
        """Run SQL as the superuser over the unix socket; unaligned tuples-only output."""
        res = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", database or self.database],
            input=sql, capture_output=True, text=True, env=self._env())
        if check and res.returncode != 0:
            raise PgError(f"psql failed ({res.returncode}): {res.stderr.strip()}\nSQL: {sql}")
        return res.stdout

    def create_database(self, database: str, user: str | None = None, password: str | None = None) -> str:
        """A role (LOGIN with a password; made if missing, else its password is set) owning a new database:
        all Pulumi needs (it creates its table itself). Returns the backend URL."""
        user = user or database
        password = password or secrets.token_hex(12)
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = {_lit(user)}", database="postgres").strip()
        verb = "ALTER" if exists else "CREATE"
        self.psql(f"{verb} ROLE {_ident(user)} LOGIN PASSWORD {_lit(password)}", database="postgres")
        self.psql(f"CREATE DATABASE {_ident(database)} OWNER {_ident(user)}", database="postgres")
        return self.url_for(user, password, database)

    def tables(self, database: str | None = None) -> list[str]:
        """Every user table of the database, schema-qualified."""
        out = self.psql("SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables"
                        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", database)
        return out.splitlines()

    def dump_rows(self, database: str | None = None) -> str:
        """Every row of every user table as JSON lines (what is stored, as stored)."""
        return "".join(self.psql(f"SELECT row_to_json(t)::text FROM {t} t", database)
                       for t in self.tables(database))

    def state_blobs(self, database: str | None = None, table: str = "pulumi_state") -> dict[str, bytes]:
        """Pulumi's postgres backend keeps each file of its DIY layout as a row {key, data: {"data": base64}}:
        return key -> decoded bytes (gunzipped when PULUMI_DIY_BACKEND_GZIP wrote them)."""
        blobs = {}
        for line in self.psql(f"SELECT json_build_object('key', key, 'data', data)::text FROM {table} ORDER BY key",
                              database).splitlines():
            row = json.loads(line)
            raw = base64.b64decode(row["data"]["data"])
            blobs[row["key"]] = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        return blobs

    def pulumi_locks(self, database: str | None = None, table: str = "pulumi_state") -> dict[str, dict]:
        """Stack locks held now: key (<db>/.pulumi/locks/<org>/<project>/<stack>/<uuid>.json) ->
        {pid, username, hostname, timestamp} of the pulumi process holding it."""
        if not self.psql(f"SELECT to_regclass({_lit(table)})", database).strip():
            return {}  # nobody has logged in yet: Pulumi creates the table on first use
        return {k: json.loads(v) for k, v in self.state_blobs(database, table).items()
                if "/.pulumi/locks/" in "/" + k}

    def wait_for_lock(self, database: str | None = None, timeout: float = 60, table: str = "pulumi_state") -> dict:
        """Wait until some pulumi holds a stack lock; return pulumi_locks()."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            locks = self.pulumi_locks(database, table)
            if locks:
                return locks
            time.sleep(0.1)
        raise TimeoutError(f"no pulumi stack lock appeared within {timeout}s")

    # --- internals ----------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return env

    def _run_as(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kw = {}
        env = self._env()
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.dir)
        res = subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True, env=env,
                             cwd=self.dir, stdin=subprocess.DEVNULL, **kw)
        if check and res.returncode != 0:
            raise PgError(f"{tool} failed ({res.returncode}): {res.stdout}{res.stderr}{self._log_tail()}")
        return res

    def _write_conf(self) -> None:
        conf = self.data / "postgresql.conf"
        text = conf.read_text().split("# --- sando tests ---\n")[0]
        conf.write_text(text + "# --- sando tests ---\n" + "".join(f"{k} = {v}\n" for k, v in {
            "listen_addresses": "'127.0.0.1'",
            "port": self.port,
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": 50,
            "shared_buffers": "'32MB'",
            "fsync": "off",  # a throwaway cluster: durability does not matter, speed does
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
        }.items()))

    def _log_tail(self) -> str:
        try:
            return "\n--- postgres.log ---\n" + self.log.read_text()[-3000:]
        except OSError:
            return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
