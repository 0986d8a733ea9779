"""ssh.run's exec without waiting for the server's answer (ssh._exec), against a paramiko server on
loopback that refuses every exec: the command ends as a lost session, at once, not at its timeout."""

from __future__ import annotations

import io
import socket
import threading
import time

import paramiko
import pytest

from sando_components import keeper, ssh


class _RefusesExec(paramiko.ServerInterface):
    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        return False


@pytest.fixture
def server():
    host_key = paramiko.RSAKey.generate(2048)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    transports = []

    def serve():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            t = paramiko.Transport(sock)
            t.add_server_key(host_key)
            t.start_server(server=_RefusesExec())
            transports.append(t)

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], f"{host_key.get_name()} {host_key.get_base64()}"
    listener.close()
    for t in transports:
        t.close()


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
