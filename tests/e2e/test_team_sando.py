"""Issue 12: two operators deploy one sando stack kept in PostgreSQL (Pulumi's postgres:// backend)
to a real-systemd node: each has a checkout, a PULUMI_HOME and the stack passphrase; the lock
refuses the second `pulumi up` while the first runs; both appear in the history; `sando status`
reads the shared stack; one's rollback is the other's "no change"; no secret is in clear in
any row of the database."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.pg import PgCluster
from tests.support import REPO, AppRepo, wait_for
from tests.team import Operator, make_origin

PASSPHRASE = "prod-passphrase-" + secrets.token_hex(4)
# each operator's HOME is their own; the machine's Rust toolchain is where it was installed
TOOLCHAIN = {"RUSTUP_HOME": os.environ.get("RUSTUP_HOME", str(Path.home() / ".rustup")),
             "CARGO_HOME": os.environ.get("CARGO_HOME", str(Path.home() / ".cargo"))}
STACK = "prod"
SANDO = REPO / ".venv" / "bin" / "sando"


@pytest.fixture(scope="module")
def pg():
    with PgCluster() as cluster:
        yield cluster


def sando(op: Operator, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SANDO), *args], cwd=op.checkout, env=op.env, capture_output=True, text=True,
                          timeout=300)


def test_two_operators_deploy_one_stack(pg, make_nodes, tmp_path):
    token = "tok-" + secrets.token_hex(8)
    (node,) = make_nodes(1, token=token)
    app = AppRepo(tmp_path / "app")
    app.version("v2")
    db = f"t_{uuid.uuid4().hex[:10]}"
    password = secrets.token_hex(12)
    url = pg.create_database(db, db, password)
    origin = make_origin(tmp_path / "origin.git", {
        "Pulumi.yaml": REPO / "Pulumi.yaml", "__main__.py": REPO / "__main__.py",
        "sando_components": REPO / "sando_components", ".gitignore": "__pycache__/\n"})
    alice = Operator.clone("alice", origin, tmp_path, backend_url=url, passphrase=PASSPHRASE,
                           extra_env={"SANDO_CACHE_DIR": str(tmp_path / "cache-alice"), "PULUMI_PARALLEL": "64", "PULUMI_SKIP_CHECKPOINTS": "true", **TOOLCHAIN})
    alice.pulumi("stack", "init", STACK, "--secrets-provider", "passphrase")
    config = {"nodes": [node.config()], "version": "v1", "source": {"repo": str(app.path)},
              "binNames": ["makenotwork", "mnw-admin"], "restartWarningSeconds": 1, "bootstrap": {"ref": "main"},
              "healthCheck": {"timeoutSeconds": 15, "intervalSeconds": 0.2, "expectVersion": True}}
    for key, value in config.items():
        alice.pulumi("config", "set", "-s", STACK, f"sando:{key}", value if isinstance(value, str) else json.dumps(value))
    key_text = Path(node.privateKeyPath).read_text()
    for key, value in (("sshPrivateKey", key_text), ("cliServiceToken", token)):
        subprocess.run(["pulumi", "--non-interactive", "config", "set", "--secret", "-s", STACK, f"sando:{key}"],
                       cwd=alice.checkout, env=alice.env, input=value, text=True, check=True, capture_output=True)
    alice.commit_push("prod stack: v1")
    bob = Operator.clone("bob", origin, tmp_path, backend_url=pg.url_for(db, None, db), login=False,
                         pgpass=pg.pgpass_line(db, password, db), passphrase=PASSPHRASE,
                         extra_env={"SANDO_CACHE_DIR": str(tmp_path / "cache-bob"), "PULUMI_PARALLEL": "64", "PULUMI_SKIP_CHECKPOINTS": "true", **TOOLCHAIN})

    alice.up("-s", STACK, message="v1")
    assert node.served()["version"] == "v1"

    # alice deploys v2 (its restart made slow on the node); bob's `pulumi up` meanwhile is refused
    node.unit_dropin("slow", "[Service]\nExecStartPost=/bin/sleep 6")
    alice.pulumi("config", "set", "-s", STACK, "sando:version", "v2")
    alice.commit_push("prod: v2")
    run = alice.start("up", "--yes", "--skip-preview", "-s", STACK, "-m", "alice: v2")
    try:
        pg.wait_for_lock(db)
        bob.pull()
        refused = bob.up("-s", STACK, message="v2 too", check=False)
        assert refused.returncode != 0 and "the stack is currently locked" in refused.stdout + refused.stderr
    finally:
        out, err = run.communicate(timeout=300)
    assert run.returncode == 0, out + err
    assert node.served()["version"] == "v2"

    # bob rolls back (his own commit of the pin); alice's preview then has nothing to do
    bob.pull()
    bob.pulumi("config", "set", "-s", STACK, "sando:version", "v1")
    bob.commit_push("prod: back to v1")
    bob.up("-s", STACK, message="rollback to v1")
    assert node.served()["version"] == "v1"
    alice.pull()
    alice.pulumi("preview", "-s", STACK, "--expect-no-changes")

    history = json.loads(alice.pulumi("stack", "history", "-s", STACK, "--json").stdout)
    seen = [(h["message"], h["environment"].get("git.author")) for h in history if h["kind"] == "update"]
    assert ("bob: rollback to v1", "Bob") in seen and ("alice: v2", "Alice") in seen, seen

    status = sando(alice, "status", STACK)  # the shared stack, read from the other checkout
    assert status.returncode == 0, status.stdout + status.stderr
    assert any(line.split()[:3] == [STACK, node.name, "v1"] for line in status.stdout.splitlines()), status.stdout

    # the database holds no secret in clear: not as stored, not after decoding the blobs
    key_body = key_text.splitlines()[1]
    rows = pg.dump_rows(db)
    blobs = b"\n".join(pg.state_blobs(db).values()).decode(errors="replace")
    for text in (rows, blobs):
        assert token not in text and key_body not in text and PASSPHRASE not in text
    assert base64.b64encode(token.encode()).decode() not in rows
    assert node.served()["version"] == "v1"
    wait_for(lambda: not pg.pulumi_locks(db))
    alice.pulumi("stack", "rm", "--yes", "--force", "-s", STACK)
