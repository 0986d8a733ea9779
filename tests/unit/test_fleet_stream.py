"""fleet.stream (`sando logs`) against a paramiko server on loopback: the node's stdout and stderr
reach the operator's stdout and stderr apart, whole lines after the node's prefix, whatever order
the two streams arrive in (sshd forwards them apart: the CI failure of stop 31 was the header
written first to stderr arriving after journalctl's first lines)."""

from __future__ import annotations

import io
import os
import threading

import paramiko
import pytest

from sando_components import fleet, keeper, ssh
from unit_helpers import loopback_sshd


def _writes(channel, command):
    """An exec answers with stdout first, then stderr (the order a loaded sshd may forward them in),
    lines split across packets, then the exit status 3. It answers once the client sent "go": the
    client sends its stdin after the exec was accepted (answering at once could close the channel
    before paramiko sent that acceptance)."""
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
    client_key = io.StringIO()
    paramiko.RSAKey.generate(2048).write_private_key(client_key)
    with loopback_sshd(_writes) as (port, host_key):
        yield ssh.Conn(host="127.0.0.1", port=port, user="root", host_key=host_key, insecure=False,
                       private_key=client_key.getvalue(), node="node9")


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


def _errs(channel, command):
    """An exec without a pty: its error on stderr, a line on stdout, the exit status 2."""
    def answer():
        assert channel.recv(2) == b"go"
        channel.sendall_stderr(b"ls: cannot access '/x'\n")
        channel.sendall(b"out\n")
        channel.send_exit_status(2)
        channel.close()
    threading.Thread(target=answer, daemon=True).start()
    return True


def test_ssh_without_a_terminal_copies_the_commands_errors_to_stderr(monkeypatch):
    """`sando ssh -s prod node1 -- CMD` in a script (no pty): CMD's stderr reaches the operator's
    stderr (it was dropped: only stdout was read), its stdout stdout, its exit status."""
    monkeypatch.setenv(keeper.PERSIST_ENV, "0")
    client_key = io.StringIO()
    paramiko.RSAKey.generate(2048).write_private_key(client_key)
    with loopback_sshd(_errs) as (port, host_key):
        c = ssh.Conn(host="127.0.0.1", port=port, user="root", host_key=host_key, insecure=False,
                     private_key=client_key.getvalue(), node="node9")
        out, err = io.StringIO(), io.StringIO()
        r, w = os.pipe()  # stdin as a script's: a pipe (read as it comes), not a terminal
        os.write(w, b"go")
        os.close(w)
        with open(r, "rb") as stdin:
            assert fleet.interactive(c, "ls /x", stdin, out, err) == 2
    assert (out.getvalue(), err.getvalue()) == ("out\n", "ls: cannot access '/x'\n")
