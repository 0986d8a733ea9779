"""Shared by tests/e2e, `make demo` and `make bench`: test nodes, the stand-in app as a
git repo with real commits, and sando stacks driven through the real engine
(Automation API with the pulumi built by `make setup`)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pulumi import automation as auto

from sando_components.providers.pointer import FAILED_ON

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / ".tools"


def provider_host():
    """engine/bin/sando-provider-host.py as a module (its zygote's stop_all, its names)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sando_provider_host", REPO / "engine" / "bin" / "sando-provider-host.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
EXAMPLE = REPO / "examples" / "makenotwork"
PROJECT_FILES = ["Pulumi.yaml", "__main__.py", "sando_components"]
PASSPHRASE = "sando-test"


def engine_env(base: Path) -> dict[str, str]:
    """Environment for the engine: our .tools, a private PULUMI_HOME and file backend."""
    (base / "state").mkdir(parents=True, exist_ok=True)
    (base / "home").mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{TOOLS / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PULUMI_HOME": str(base / "home"),
        "PULUMI_BACKEND_URL": f"file://{base / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_PARALLEL": "64",  # as scripts/env.sh: every node at once
        "PULUMI_SKIP_CHECKPOINTS": "true",  # as scripts/env.sh: the state written once per run
        "SANDO_CACHE_DIR": str(base / "cache"),
    }


# --- test nodes ------------------------------------------------------------------

TESTNODES = REPO / "scripts" / "testnodes"
# systemd's catalog ids (sd-messages.h) of the job messages PID 1 logs for a unit
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"    # "Started X." / "Finished X."
UNIT_STOPPED = "9d1aaa27d60140bd96365438aad20286"    # "Stopped X." (JOB_TYPE stop or restart)
UNIT_RELOADING = "d34d037fff1847e6ae669a370e694725"  # "Reloading X..."
READY_TAG = "sando-testnodes"  # `scripts/testnodes start` logs "<node> ready" under it once the node is up
# units whose jobs unit_events() leaves out: the login machinery every ssh session starts/stops
LOGIN_UNITS = ("user@", "user-runtime-dir@")


@dataclass
class Node:
    name: str
    host: str
    port: int
    user: str
    privateKeyPath: str
    hostKey: str
    root: str
    appUrl: str
    caddyUrl: str
    serviceToken: str
    fsPath: str
    pid: int
    state_dir: str = ""  # set by TestNodes: `scripts/testnodes exec` needs it

    def config(self) -> dict:
        """The node as a sando stack lists it (root and appUrl: sando's prod defaults are right)."""
        return {"name": self.name, "host": self.host, "port": self.port, "user": self.user,
                "hostKey": self.hostKey}

    def path(self, logical: str) -> Path:
        """A node path as the host sees it (through the node's overlay)."""
        return Path(self.fsPath) / logical.lstrip("/")

    @property
    def release_root(self) -> Path:
        return self.path("/opt/makenotwork")

    # inside the node -----------------------------------------------------------------
    def exec(self, *cmd: str, input: str | None = None, timeout: float = 60,
             check: bool = False) -> subprocess.CompletedProcess:
        """Run cmd as root inside the node (scripts/testnodes exec)."""
        res = subprocess.run([str(TESTNODES), "exec", self.name, "--state-dir", self.state_dir, "--", *cmd],
                             input=input, capture_output=True, text=True, timeout=timeout,
                             stdin=None if input is not None else subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
        return res

    def journal(self, unit: str | None = None, after: str | None = None, output: str = "short-precise") -> str:
        """The node's journal (of one unit, or all of it; after a cursor from journal_cursor()) as text."""
        args = ["journalctl", "--no-pager", "-o", output] + (["-u", unit] if unit else []) + (
            [f"--after-cursor={after}"] if after else [])
        return self.exec(*args, check=True).stdout

    def journal_cursor(self) -> str:
        """Where the journal ends now (for journal(after=...))."""
        out = self.exec("sh", "-c", "journalctl --sync && journalctl --show-cursor -n 0 -q", check=True).stdout
        return out.strip().removeprefix("-- cursor: ")

    def _pid1_entries(self) -> list[dict]:
        """PID 1's journal entries since the node was ready (everything before is the boot)."""
        out = self.exec("sh", "-c", "journalctl --sync && journalctl -o json --no-pager "
                        f"_PID=1 + SYSLOG_IDENTIFIER={READY_TAG}", check=True).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        ready = [k for k, e in enumerate(entries) if e.get("SYSLOG_IDENTIFIER") == READY_TAG]
        return [e for e in entries[ready[-1] + 1 if ready else 0:] if e.get("_PID") == "1"]

    def unit_events(self) -> list[tuple[str, str]]:
        """What systemd did since the node was ready, in order, from PID 1's journal:
        ("daemon-reload", "-") per "Reloading."; ("reload", u) per "Reloading u.service...";
        ("restart", u) per "Stopped u.service." of a restart job (its "Started" is not
        counted again); ("start", u) per other "Started u.service."; ("stop", u) per
        "Stopped u.service." of a stop job. Service units only, named without ".service";
        the login machinery (user@0, user-runtime-dir@0) is left out."""
        events: list[tuple[str, str]] = []
        restarting: set[str] = set()
        for e in self._pid1_entries():
            if e.get("MESSAGE") == "Reloading.":
                events.append(("daemon-reload", "-"))
                continue
            unit = e.get("UNIT", "")
            if not unit.endswith(".service") or unit.startswith(LOGIN_UNITS):
                continue
            name, msg, job = unit[: -len(".service")], e.get("MESSAGE_ID"), e.get("JOB_TYPE")
            if msg == UNIT_RELOADING:
                events.append(("reload", name))
            elif msg == UNIT_STOPPED and job == "restart":
                events.append(("restart", name))
                restarting.add(name)
            elif msg == UNIT_STOPPED:
                events.append(("stop", name))
            elif msg == UNIT_STARTED and e.get("JOB_RESULT") == "done":
                if name in restarting:
                    restarting.discard(name)
                else:
                    events.append(("start", name))
        return events

    def restart_times(self, unit: str = "makenotwork") -> list[float]:
        """Epoch seconds of every start of the unit since the node was ready ("Started ...")."""
        return [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in self._pid1_entries()
                if e.get("UNIT") == f"{unit}.service" and e.get("MESSAGE_ID") == UNIT_STARTED
                and e.get("JOB_RESULT") == "done"]

    def unit_dropin(self, name: str, text: str, unit: str = "makenotwork") -> None:
        """Add a drop-in to a unit on the node (e.g. "[Service]\\nExecStartPost=/bin/sleep 3") and
        daemon-reload; "" removes every drop-in of the unit."""
        d = f"/etc/systemd/system/{unit}.service.d"
        script = (f"rm -rf {d}" if not text else
                  f"mkdir -p {d} && printf '%s\\n' {shlex.quote(text)} > {d}/{name}.conf")
        self.exec("sh", "-c", f"{script} && systemctl daemon-reload", check=True)

    def sshd_config(self, name: str, text: str, ports: tuple[int, ...] = (22,)) -> None:
        """Add a drop-in to the node's sshd config, reload sshd, and wait until it accepts again."""
        self.exec("sh", "-c", f"printf '%s\\n' {shlex.quote(text)} > /etc/ssh/sshd_config.d/{name}.conf && "
                              "systemctl reload ssh", check=True)
        for port in ports:
            wait_for(lambda: socket.create_connection((self.host, port), timeout=1).close() or True, timeout=15)

    # from the host ---------------------------------------------------------------------
    def served(self, url: str | None = None, timeout: float = 5) -> dict:
        with urllib.request.urlopen(url or self.appUrl, timeout=timeout) as resp:
            return json.loads(resp.read())

    def fetch(self, url: str, timeout: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def first_offset(max_n: int, env: dict[str, str] | None = None) -> int:
    """Where this process's node sets start: $SANDO_TESTNODES_OFFSET, else 10; under pytest-xdist
    each worker starts at its own share of the range, so that workers rarely try the same subnets
    (a collision is still safe: testnodes refuses a busy subnet and TestNodes shifts)."""
    env = os.environ if env is None else env
    base = int(env.get("SANDO_TESTNODES_OFFSET", "10"))
    worker, count = env.get("PYTEST_XDIST_WORKER", ""), int(env.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return base
    return base + int(worker[2:]) % count * ((max_n - base) // count)


class TestNodes:
    """`scripts/testnodes start N` in a private state dir; stop() removes everything."""

    MAX_N = 250  # scripts/testnodes: node number offset+i <= 250
    _next_offset = first_offset(MAX_N)

    def __init__(self, count: int, state_dir: Path, token: str | None = None):
        self.state_dir = state_dir
        env = dict(os.environ)
        if token:
            env["SANDO_TESTNODES_SERVICE_TOKEN"] = token
        last = None
        for _ in range(self.MAX_N // count + 1):  # subnets of other sets (a demo, a bench, other tests) may be busy: shift
            if TestNodes._next_offset + count > self.MAX_N:
                TestNodes._next_offset = 10
            offset = TestNodes._next_offset
            TestNodes._next_offset += count
            res = subprocess.run([str(TESTNODES), "start", str(count), "--state-dir", str(state_dir),
                                  "--offset", str(offset)], capture_output=True, text=True, env=env)
            if res.returncode == 0:
                self.nodes = [Node(**n, state_dir=str(state_dir)) for n in json.loads(res.stdout)]
                return
            last = res.stderr
            if "already in use" not in res.stderr:
                break
        raise RuntimeError(f"testnodes start failed: {last}")

    def share_key(self) -> None:
        """Let node1's client key into every node: a stack has one sando:sshPrivateKey."""
        pub = Path(self.nodes[0].privateKeyPath + ".pub").read_text()
        for n in self.nodes[1:]:
            with open(n.path("/root/.ssh/authorized_keys"), "a") as fh:
                fh.write(pub)

    def stop(self) -> None:
        if os.environ.get("SANDO_TEST_KEEP_NODES"):  # debugging: leave them for a look
            return
        for n in self.nodes:  # keep each node's journal beside the state dir
            with contextlib.suppress(Exception):
                (self.state_dir.parent / f"{self.state_dir.name}-{n.name}-journal.log").write_text(n.journal())
        res = subprocess.run([str(TESTNODES), "stop", "--state-dir", str(self.state_dir)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"testnodes stop failed (exit {res.returncode}): {res.stderr.strip()}")


# --- the stand-in app as a git repository ------------------------------------------------


class AppRepo:
    """A copy of examples/makenotwork turned into a git repo; versions are tagged commits."""

    def __init__(self, path: Path):
        self.path = path
        shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("target"))
        self.git("init", "-q", "-b", "main")
        self.commit_tag("v1")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=sando-test", "-c", "user.email=test@sando.local",
                               "-C", str(self.path), *args], check=True, capture_output=True, text=True).stdout

    def mutate(self, *args: str) -> None:
        subprocess.run([str(self.path / "scripts" / "mutate"), *args], cwd=self.path, check=True,
                       capture_output=True, text=True)

    def commit_tag(self, tag: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", tag)
        self.git("tag", "-f", tag)
        return self.commit(tag)

    def commit(self, ref: str) -> str:
        return self.git("rev-parse", f"{ref}^{{commit}}").strip()

    def version(self, tag: str, *mutations: tuple[str, ...]) -> str:
        """Make a new tagged version: `bump <tag>` plus the given mutate commands."""
        self.mutate("bump", tag)
        for m in mutations:
            self.mutate(*m)
        return self.commit_tag(tag)


# --- sando stacks through the Automation API ------------------------------------------------


@dataclass
class Deploy:
    """One uuid-named stack of the sando project, against given nodes."""

    work: Path
    env: dict[str, str]
    nodes: list[Node]
    repo: AppRepo
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    project: Path | None = None  # share another Deploy's project dir (stacks side by side, like testnot/prod)

    def __post_init__(self):
        if self.project is None:
            self.project = self.work / f"project-{self.name}"
            self.project.mkdir(parents=True)
            for f in PROJECT_FILES:
                src = REPO / f
                (shutil.copytree if src.is_dir() else shutil.copy)(src, self.project / f)
        # its own copy: the workspace keeps the very dict it is given, so a test's
        # `stack.workspace.env_vars.update(...)` (operator B's RUSTFLAGS and cache) would otherwise change the
        # session's engine env for every later test of the worker (CI: a later test's operator A built with B's flags)
        self.env = dict(self.env)
        ws_opts = auto.LocalWorkspaceOptions(
            work_dir=str(self.project), pulumi_home=self.env["PULUMI_HOME"], env_vars=self.env,
            pulumi_command=auto.PulumiCommand(root=str(TOOLS)),
        )
        self.stack = auto.create_stack(self.name, work_dir=str(self.project), opts=ws_opts)
        self.configure()

    # config ------------------------------------------------------------------------
    def configure(self, **overrides) -> None:
        base = {
            "nodes": [n.config() for n in self.nodes],
            "version": "v1",
            "source": {"repo": str(self.repo.path)},
            "binNames": ["makenotwork", "mnw-admin"],
            "healthCheck": {"timeoutSeconds": 10, "intervalSeconds": 0.2, "expectVersion": True},
            "bootstrap": {"ref": "main"},  # the AppRepo's branch: host files as committed there
        }
        base.update(overrides)
        self.set(**base)
        key = Path(self.nodes[0].privateKeyPath).read_text()
        self.set_secret("sshPrivateKey", key)

    def set(self, **values) -> None:
        cfg = {f"sando:{k}": auto.ConfigValue(v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()}
        self.stack.set_all_config(cfg)

    def unset(self, *keys: str) -> None:
        for k in keys:
            self.stack.remove_config(f"sando:{k}")

    def set_secret(self, key: str, value: str) -> None:
        """Secrets go through stdin, never argv."""
        self.cli(["config", "set", "--secret", f"sando:{key}"], input=value)

    def set_raw_config(self, key: str, value: str) -> None:
        self.cli(["config", "set", key, value])

    # engine ------------------------------------------------------------------------
    def cli(self, args: list[str], input: str | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env, **(env or {})}
        res = subprocess.run([str(TOOLS / "bin" / "pulumi"), *args, "--stack", self.name, "--non-interactive"],
                             cwd=self.project, env=env, input=input, capture_output=True, text=True)
        if check and res.returncode != 0:
            raise RuntimeError(f"pulumi {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        return res

    def up_events(self):
        self.steps: list[tuple[str, str]] = []
        self.log = []

        def on_event(ev):
            if ev.resource_pre_event and ev.resource_pre_event.metadata:
                md = ev.resource_pre_event.metadata
                self.steps.append((md.urn, md.op.value if hasattr(md.op, "value") else str(md.op)))
        return on_event

    def outputs(self) -> dict:
        return {k: v.value for k, v in self.stack.outputs().items()}

    def node_out(self, node: Node) -> dict:
        return self.outputs()["nodes"][node.name]

    def up_fails(self, **kw) -> str:
        """A `pulumi up` that must fail: returns what the operator saw (the CLI's output)."""
        self.log = []
        try:
            self.stack.up(on_output=self.log.append, color="never", **kw)
        except auto.CommandError as err:
            return "\n".join(self.log) + "\n" + str(err)
        raise AssertionError("pulumi up succeeded but was expected to fail:\n" + "".join(self.log))

    def errors(self, text: str) -> list[str]:
        return operator_errors(text)

    def destroy(self) -> None:
        """Destroy and remove the stack; a failure is raised (a leaked stack must fail loudly).
        A stack the test already removed is fine."""
        if self.name not in [s.name for s in self.stack.workspace.list_stacks()]:
            return
        self.stack.destroy(color="never")
        self.stack.workspace.remove_stack(self.name)


def _changed_steps(d: Deploy) -> dict[str, str]:
    """{resource name: op} of the steps that change something. Provider registrations
    (pulumi:providers:*, the engine's own bookkeeping of the dynamic provider, which it
    re-registers when the stack config changes) are left out: they touch no node."""
    return {urn.split("::")[-1]: op for urn, op in d.steps
            if op not in ("same", "read", "refresh") and "::pulumi:providers:" not in urn}


def run_up(d: Deploy, **kw):
    """up with step events; returns (result, {resource name: op} of changed steps)."""
    on_event = d.up_events()
    res = d.stack.up(on_output=d.log.append, on_event=on_event, color="never", **kw)
    return res, _changed_steps(d)


def run_preview(d: Deploy, **kw):
    on_event = d.up_events()
    res = d.stack.preview(on_output=d.log.append, on_event=on_event, color="never", **kw)
    return res, _changed_steps(d)


def wait_for(fn, timeout: float = 10, interval: float = 0.1):
    """fn()'s first truthy value; raises (fn's error, or AssertionError) once `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {getattr(fn, '__name__', fn)}")
        time.sleep(interval)


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def operator_errors(text: str) -> list[str]:
    """The `error:` lines of the Diagnostics an operator reads, without Pulumi's own framing.
    The verdict's error is its first line ("the deploy failed on node1, node2:") followed by each
    node's own words, one line each: those lines are returned (the first line only names them)."""
    # the Diagnostics section of the console; without one (a --non-interactive run's stderr) the text
    diag = text.split("Diagnostics:", 1)[1].split("Resources:", 1)[0] if "Diagnostics:" in text else text
    entries: list[list[str]] = []
    current: list[str] | None = None
    for line in diag.splitlines():
        body = line.strip()
        if body.startswith("error: "):
            current = [body[len("error: "):]]
            entries.append(current)
        elif not body or body.startswith("warning: ") or not line.startswith("    "):
            current = None  # a blank line, a warning or the next resource's header ends an error
        elif current is not None:
            current.append(body)
    out = []
    for first, *rest in entries:
        if first.startswith(FAILED_ON):
            out += rest
        elif f"error: {first}" not in ("error: update failed", "error: preview failed",
                                       "error: Resource monitor has terminated, shutting down"):
            out.append(first)
    return out

