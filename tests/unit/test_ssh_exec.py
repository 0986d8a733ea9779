"""ssh.run's exec without waiting for the server's answer (ssh._exec), against a paramiko server on
loopback that refuses every exec: the command ends as a lost session, at once, not at its timeout."""

from __future__ import annotations

import io
import time

import paramiko
import pytest

from sando_components import keeper, ssh
from unit_helpers import loopback_sshd


@pytest.fixture
def server():
    with loopback_sshd(lambda channel, command: False) as answer:  # every exec refused
        yield answer


def test_a_refused_exec_ends_the_command_at_once(server, monkeypatch):
    monkeypatch.setenv(keeper.PERSIST_ENV, "0")
    port, host_key = server
    client_key = io.StringIO()
    paramiko.RSAKey.generate(2048).write_private_key(client_key)
    conn = ssh.Conn(host="127.0.0.1", port=port, user="root", host_key=host_key, insecure=False,
                    private_key=client_key.getvalue(), node="node9")
    started = time.monotonic()
    try:
        with pytest.raises(ssh.TransportError, match="node9 .*the session ended before the command finished"):
            ssh.run(conn, "cat", stdin=b"x" * 1000, timeout=60)
    finally:
        ssh.close_all()
    assert time.monotonic() - started < 20  # not the command's 60 s timeout
