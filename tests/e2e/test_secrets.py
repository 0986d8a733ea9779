"""Secrets through the real engine: forced failures (a switch that fails after the restart warning
was sent with the token, a wrong host key, a node that does not answer, an unreadable key) run
with SANDO_DEBUG=1 (Python tracebacks shown) show neither the SSH private key nor the service
token in anything `pulumi up` prints or leaves in its temp dir, and the state (`pulumi stack
export`, every file of the backend, base64 decoded too) holds them only encrypted."""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

import pytest

from tests.support import AppRepo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = AppRepo(tmp_path_factory.mktemp("secretapp") / "makenotwork")
    r.version("v2", ("crash-at-start",))  # a version that exits at start: the switch fails
    return r


def body_lines(private: str) -> list[str]:
    """The base64 lines of a private key: what a leak would show."""
    return [line for line in private.splitlines() if line and not line.startswith("-----")]


def decoded(text: str) -> str:
    """Every base64 run of a text, decoded (state stores some values base64-encoded)."""
    out = []
    for run in re.findall(r"[A-Za-z0-9+/=]{24,}", text):
        try:
            out.append(base64.b64decode(run + "=" * (-len(run) % 4)).decode("latin-1"))
        except (binascii.Error, ValueError):
            pass
    return "\n".join(out)


def test_forced_failures_with_debug_show_no_secret(make_nodes, make_deploy, repo, tmp_path):
    token = "tok-" + os.urandom(12).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, restartWarningSeconds=1)
    d.set_secret("cliServiceToken", token)
    key = Path(node.privateKeyPath).read_text()
    secrets = [token, *body_lines(key)]
    engine_tmp = tmp_path / "engine-tmp"  # whatever the engine and its plugins write to their temp dir
    engine_tmp.mkdir()
    env = {"SANDO_DEBUG": "1", "TMPDIR": str(engine_tmp)}
    seen: list[str] = []

    def up(expect_ok: bool) -> str:
        res = d.cli(["up", "--yes"], check=False, env=env)
        seen.append(res.stdout + res.stderr)
        assert (res.returncode == 0) == expect_ok, res.stdout + res.stderr
        return res.stdout + res.stderr

    up(True)  # v1 live (the warning found no service to warn: that is said, and the deploy goes on)
    d.set(version="v2")
    failed = up(False)  # the warning went out with the token, then v2 crashed: switched back
    assert "node1: v2 exited at start" in failed and "Traceback" in failed  # SANDO_DEBUG is on
    assert "restart-warning: received" in node.journal("makenotwork")
    d.set(version="v1")
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPcGKl1j3m9c0bq1pvS8Kq0jXaLm9j6sVn0x0ZB2vZyT"
    d.set(nodes=[node.config() | {"hostKey": other}])
    assert "host key does not match" in up(False)
    d.set(nodes=[node.config() | {"port": 2222}])  # nothing listens there
    assert "cannot connect" in up(False)
    d.set(nodes=[node.config()])
    lines = key.splitlines()
    d.set_secret("sshPrivateKey", "\n".join(lines[:3] + lines[-1:]) + "\n")  # truncated: unreadable
    assert "sando:sshPrivateKey: is not a private key sando can read" in up(False)  # at preview
    d.set_secret("sshPrivateKey", key)
    up(True)

    state = d.cli(["stack", "export"]).stdout
    backend = Path(d.env["PULUMI_BACKEND_URL"].removeprefix("file://"))
    stored = "\n".join(p.read_text(errors="replace") for p in backend.rglob("*") if p.is_file())
    project = (d.project / f"Pulumi.{d.name}.yaml").read_text()
    temp = "\n".join(p.read_text(errors="replace") for p in engine_tmp.rglob("*") if p.is_file())
    assert '"ciphertext"' in state and "secure:" in project  # the secrets are there, encrypted
    for where, text in {"output": "\n".join(seen), "state": state, "backend": stored, "project": project,
                        "engine temp files": temp}.items():
        for secret in secrets:
            assert secret not in text and secret not in decoded(text), f"a secret in the {where}"
    assert token not in node.journal()  # curl read it from stdin: not in the node's logs either
