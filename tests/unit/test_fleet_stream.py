"""fleet.stream (`sando logs`) against a paramiko server on loopback: the node's stdout and stderr
reach the operator's stdout and stderr apart, whole lines after the node's prefix, whatever order
the two streams arrive in (sshd forwards them apart: the CI failure of stop 31 was the header
written first to stderr arriving after journalctl's first lines)."""

from __future__ import annotations

import io
import socket
import threading

import paramiko
import pytest

from sando_components import fleet, keeper, ssh


class _Writes(paramiko.ServerInterface):
    """An exec answers with stdout first, then stderr (the order a loaded sshd may forward them in),
    lines split across packets, then the exit status 3. It answers once the client sent "go": the
    client sends its stdin after the exec was accepted (answering at once could close the channel
    before paramiko sent that acceptance)."""

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        def answer():
            assert channel.recv(2) == b"go"
            channel.sendall(b"journal line 1\njournal li")
            channel.sendall_stderr(b"sando: the header\n")
            channel.sendall(b"ne 2\nno newline at the end")
            channel.send_exit_status(3)
            channel.close()
        threading.Thread(target=answer, daemon=True).start()
        return True


@pytest.fixture
def conn(monkeypatch):
    monkeypatch.setenv(keeper.PERSIST_ENV, "0")
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
            t.start_server(server=_Writes())
            transports.append(t)

    threading.Thread(target=serve, daemon=True).start()
    client_key = io.StringIO()
    paramiko.RSAKey.generate(2048).write_private_key(client_key)
    yield ssh.Conn(host="127.0.0.1", port=listener.getsockname()[1], user="root",
                   host_key=f"{host_key.get_name()} {host_key.get_base64()}", insecure=False,
                   private_key=client_key.getvalue(), node="node9")
    listener.close()
    for t in transports:
        t.close()


def test_stdout_and_stderr_reach_their_own_streams_in_whole_lines(conn):
    out, err = io.StringIO(), io.StringIO()
    assert fleet.stream(conn, "journalctl", out, err, "node9 | ", stdin=b"go") == 3
    assert out.getvalue() == "node9 | journal line 1\nnode9 | journal line 2\nnode9 | no newline at the end\n"
    assert err.getvalue() == "node9 | sando: the header\n"


def test_without_a_stderr_both_go_to_the_one_stream(conn):
    out = io.StringIO()
    assert fleet.stream(conn, "journalctl", out, stdin=b"go") == 3
    assert sorted(out.getvalue().splitlines()) == ["journal line 1", "journal line 2", "no newline at the end",
                                                   "sando: the header"]
