"""fleet.stream (`sando logs`) and fleet.interactive (`sando ssh`) against a paramiko server on
loopback: the node's stdout and stderr reach the operator's stdout and stderr apart, whole lines
after the node's prefix, whatever order the two streams arrive in (sshd forwards them apart: the
CI failure of stop 31 was the header written first to stderr arriving after journalctl's first
lines); a session without an exit status is -1."""

from __future__ import annotations

import contextlib
import io
import os
import threading

import paramiko
import pytest

from sando_components import fleet, keeper, ssh
from unit_helpers import loopback_sshd


def answers(*steps: tuple[str, bytes], status: int | None = None):
    """An exec request that, once the client sent "go" (its stdin, sent after the exec was
    accepted: answering at once could close the channel before paramiko sent that acceptance),
    writes each (stream, data) in order, then the exit status (None: none) and closes."""
    def request(channel, command):
        def answer():
            assert channel.recv(2) == b"go"
            for stream, data in steps:
                (channel.sendall_stderr if stream == "err" else channel.sendall)(data)
            if status is not None:
                channel.send_exit_status(status)
            channel.close()
        threading.Thread(target=answer, daemon=True).start()
        return True
    return request


@pytest.fixture
def node(monkeypatch):
    """node(exec_request) -> an ssh.Conn to a loopback server answering each exec so."""
    monkeypatch.setenv(keeper.PERSIST_ENV, "0")
    client_key = io.StringIO()
    paramiko.RSAKey.generate(2048).write_private_key(client_key)
    with contextlib.ExitStack() as servers:
        def make(request) -> ssh.Conn:
            port, host_key = servers.enter_context(loopback_sshd(request))
            return ssh.Conn(host="127.0.0.1", port=port, user="root", host_key=host_key, insecure=False,
                            private_key=client_key.getvalue(), node="node9")
        yield make


# stdout first, then stderr (the order a loaded sshd may forward them in), lines split across packets
JOURNAL = answers(("out", b"journal line 1\njournal li"), ("err", b"sando: the header\n"),
                  ("out", b"ne 2\nno newline at the end"), status=3)


def test_stdout_and_stderr_reach_their_own_streams_in_whole_lines(node):
    out, err = io.StringIO(), io.StringIO()
    assert fleet.stream(node(JOURNAL), "journalctl", out, err, "node9 | ", stdin=b"go") == 3
    assert out.getvalue() == "node9 | journal line 1\nnode9 | journal line 2\nnode9 | no newline at the end\n"
    assert err.getvalue() == "node9 | sando: the header\n"


def test_without_a_stderr_both_go_to_the_one_stream(node):
    out = io.StringIO()
    assert fleet.stream(node(JOURNAL), "journalctl", out, stdin=b"go") == 3
    assert sorted(out.getvalue().splitlines()) == ["journal line 1", "journal line 2", "no newline at the end",
                                                   "sando: the header"]


def test_a_session_that_ends_without_an_exit_status_is_minus_one(node):
    """What `sando logs` reads as a dropped session (cli.cmd_logs says so): -1, after what came."""
    out = io.StringIO()
    assert fleet.stream(node(answers(("out", b"a line\n"))), "journalctl -f", out, stdin=b"go") == -1
    assert out.getvalue() == "a line\n"


def test_ssh_without_a_terminal_copies_the_commands_errors_to_stderr(node):
    """`sando ssh -s prod node1 -- CMD` in a script (no pty): CMD's stderr reaches the operator's
    stderr (it was dropped: only stdout was read), its stdout stdout, its exit status."""
    c = node(answers(("err", b"ls: cannot access '/x'\n"), ("out", b"out\n"), status=2))
    out, err = io.StringIO(), io.StringIO()
    r, w = os.pipe()  # stdin as a script's: a pipe (read as it comes), not a terminal
    os.write(w, b"go")
    os.close(w)
    with open(r, "rb") as stdin:
        assert fleet.interactive(c, "ls /x", stdin, out, err) == 2
    assert (out.getvalue(), err.getvalue()) == ("out\n", "ls: cannot access '/x'\n")
