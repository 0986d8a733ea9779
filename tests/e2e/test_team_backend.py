"""Pulumi's own PostgreSQL state backend as the team setup (README "Several operators").

Two operators = two processes with their own PULUMI_HOME, HOME and git checkout,
sharing one `postgres://` backend and the stack passphrase, drive a tiny
stand-alone Pulumi program (a dynamic resource that can be held inside its create
by a gate file) through sando's engine. No test nodes: the sando deploy over
SSH is exercised elsewhere; this pins down what the backend gives a team.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from pathlib import Path

import pytest

from tests.pg import PgCluster
from tests.support import wait_for
from tests.team import VENV, Operator, make_origin

PASSPHRASE = "team-stack-passphrase-" + secrets.token_hex(4)
SECRET = "tok-SECRET-" + secrets.token_hex(8)  # a secret config value (like sando:sshPrivateKey)
STACK = "team"
LOCKED = "the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end " \
         "or delete the lock file with `pulumi cancel`."

PULUMI_YAML = f"""\
name: teamcheck
runtime:
  name: python
  options:
    virtualenv: {VENV}
"""

PROGRAM = '''\
import os
import time

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult


def wait_for_gate():
    """$TEAMCHECK_GATE (set by a test for one run): touch GATE.started, then wait for GATE to exist."""
    gate = os.environ.get("TEAMCHECK_GATE")
    if gate:
        open(gate + ".started", "w").close()
        end = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.05)


class SlowProvider(ResourceProvider):
    def create(self, props):
        wait_for_gate()
        return CreateResult(id_="slow", outs=props)

    def diff(self, _id, olds, news):
        return DiffResult(changes=any(olds.get(k) != news.get(k) for k in ("label", "token")))

    def update(self, _id, olds, news):
        wait_for_gate()
        return UpdateResult(outs=news)


class Slow(Resource):
    def __init__(self, name, props, opts=None):
        super().__init__(SlowProvider(), name, props, opts)


cfg = pulumi.Config()
token = cfg.require_secret("token")
slow = Slow("slow", {"label": cfg.require("label"), "token": token})  # a secret input, as sando's SSH key
pulumi.export("label", cfg.require("label"))
pulumi.export("token", token)
pulumi.export("reversed", token.apply(lambda t: t[::-1]))  # a secret output computed by the program
'''


@pytest.fixture(scope="module")
def pg():
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def team(pg, tmp_path):
    """A fresh database (role + password) on the shared cluster, a git origin of the project,
    and alice, who creates the stack and pushes its Pulumi.team.yaml."""
    db = f"t_{uuid.uuid4().hex[:10]}"
    password = secrets.token_hex(12)
    url = pg.create_database(db, db, password)
    origin = make_origin(tmp_path / "origin.git", {
        "Pulumi.yaml": PULUMI_YAML, "__main__.py": PROGRAM, ".gitignore": "__pycache__/\n"})
    # alice: `pulumi login postgres://user:pass@…`
    alice = Operator.clone("alice", origin, tmp_path, backend_url=url, passphrase=PASSPHRASE)
    alice.pulumi("stack", "init", STACK, "--secrets-provider", "passphrase")
    alice.pulumi("config", "set", "-s", STACK, "label", "v1")
    alice.pulumi("config", "set", "-s", STACK, "--secret", "token", SECRET)
    alice.commit_push("team stack: label v1")
    # bob: PULUMI_BACKEND_URL without the password, which his ~/.pgpass supplies
    bob = Operator.clone("bob", origin, tmp_path, backend_url=pg.url_for(db, None, db), login=False,
                         pgpass=pg.pgpass_line(db, password, db), passphrase=PASSPHRASE)
    return pg, db, password, alice, bob


def test_two_operators_lock_history_and_encrypted_state(team, tmp_path):
    pg, db, password, alice, bob = team
    t0 = time.monotonic()

    # alice's first deploy is held inside its create; bob's concurrent `pulumi up` is refused by the lock
    gate = tmp_path / "gate"
    run = alice.start("up", "--yes", "--skip-preview", "-s", STACK, "-m", "alice: label v1",
                      env={"TEAMCHECK_GATE": str(gate)})
    try:
        (lock,) = pg.wait_for_lock(db).values()
        assert lock["pid"] == run.pid
        refused = bob.up("-s", STACK, message="label v1 too", check=False)
        assert refused.returncode != 0
        assert LOCKED in refused.stderr
        assert f"(pid {run.pid})" in refused.stderr
        assert "/.pulumi/locks/organization/teamcheck/team/" in refused.stderr
        assert password not in refused.stderr + refused.stdout  # the URL is shown as postgres://****:****@…
    finally:
        gate.touch()
        try:
            out, err = run.communicate(timeout=120)
        except BaseException:
            Operator.stop(run)
            raise
    assert run.returncode == 0, out + err
    assert pg.pulumi_locks(db) == {}

    # bob sees alice's deploy: on the same commit his preview has nothing to do
    bob.pulumi("preview", "-s", STACK, "--expect-no-changes")

    # bob changes the stack and pushes; alice pulls and sees no change either
    bob.pulumi("config", "set", "-s", STACK, "label", "v2")
    bob.commit_push("label v2")
    bob.up("-s", STACK, message="label v2")
    alice.pull()
    alice.pulumi("preview", "-s", STACK, "--expect-no-changes")
    outputs = json.loads(alice.pulumi("stack", "output", "-s", STACK, "--json", "--show-secrets").stdout)
    assert outputs == {"label": "v2", "token": SECRET, "reversed": SECRET[::-1]}

    # history: both updates, newest first; the refused one left no entry. The DIY backend records no
    # user of its own: who ran it is the message (-m) and the HEAD commit's author/committer.
    history = json.loads(bob.pulumi("stack", "history", "-s", STACK, "--json").stdout)
    assert [(h["kind"], h["result"], h["message"]) for h in history] == [
        ("update", "succeeded", "bob: label v2"), ("update", "succeeded", "alice: label v1")]
    assert [(h["environment"]["git.author"], h["environment"]["git.committer"]) for h in history] == [
        ("Bob", "Bob"), ("Alice", "Alice")]
    assert [h["config"]["teamcheck:token"] for h in history] == [{"secret": True}] * 2
    assert history[0]["environment"]["pulumi.env.PULUMI_CONFIG_PASSPHRASE"] == "set"  # a name, not a value

    # what the database holds: one table of files of the DIY layout, base64 in JSON
    assert pg.tables(db) == ["public.pulumi_state"]
    blobs = pg.state_blobs(db)
    keys = sorted(blobs)
    assert f"{db}/.pulumi/stacks/teamcheck/{STACK}.json" in keys
    assert f"{db}/.pulumi/meta.yaml" in keys
    assert len([k for k in keys if k.startswith(f"{db}/.pulumi/history/teamcheck/{STACK}/")
                and k.endswith(".history.json")]) == 2
    assert not [k for k in keys if "/.pulumi/locks/" in k]
    state = blobs[f"{db}/.pulumi/stacks/teamcheck/{STACK}.json"].decode()
    assert '"label":"v2"' in state and '"ciphertext"' in state  # the check sees clear text where there is some

    # secrets: not in any row of any table, neither as stored nor decoded; nor in the committed stack file
    rows = pg.dump_rows(db)
    decoded = "\n".join(b.decode("utf-8", "replace") for b in blobs.values())
    for needle in (SECRET, SECRET[::-1], PASSPHRASE, password):
        assert needle not in rows
        assert needle not in decoded
    # `pulumi login URL` keeps the URL with its password in PULUMI_HOME; bob's ~/.pgpass way keeps none there
    assert password in (alice.pulumi_home / "credentials.json").read_text()
    assert not [f for f in bob.pulumi_home.rglob("*") if f.is_file() and password in f.read_text("utf-8", "replace")]
    stack_file = (alice.checkout / f"Pulumi.{STACK}.yaml").read_text()
    assert SECRET not in stack_file and "secure: v1:" in stack_file
    print(f"two operators: {time.monotonic() - t0:.1f}s")


def test_stale_lock_of_a_killed_update_is_cleared_by_pulumi_cancel(team, tmp_path):
    pg, db, _password, alice, bob = team
    gate = tmp_path / "never"
    run = alice.start("up", "--yes", "--skip-preview", "-s", STACK, env={"TEAMCHECK_GATE": str(gate)})
    try:
        started = Path(str(gate) + ".started")
        end = time.monotonic() + 60
        while not started.exists() and run.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert started.exists(), "alice's create never started"
    finally:
        killed = Operator.stop(run)  # SIGKILL to the CLI and its plugins: no chance to unlock
    assert len(killed) >= 3  # the CLI, the language host and program, the dynamic provider
    # SIGKILL is sure but not instant: on a loaded machine a killed process can take a moment to exit
    wait_for(lambda: not [pid for pid in killed if _running(pid)], timeout=10)
    (lock,) = pg.pulumi_locks(db).values()
    assert lock["pid"] == run.pid

    refused = bob.up("-s", STACK, message="after a crash", check=False)
    assert refused.returncode != 0 and LOCKED in refused.stderr

    bob.pulumi("cancel", "--yes", "-s", STACK)
    assert pg.pulumi_locks(db) == {}
    done = bob.up("-s", STACK, message="after cancel")
    assert "pending operations from previous deployment" in done.stdout  # the create alice never finished
    outputs = json.loads(bob.pulumi("stack", "output", "-s", STACK, "--json").stdout)
    assert outputs["label"] == "v1" and outputs["token"] == "[secret]"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
