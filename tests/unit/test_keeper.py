"""keeper.py's wire and its caller's side, with a keeper served in a thread of this process and the
node's side (ssh.run_pooled) replaced: stdin arrives whole and in order, stdout lines are relayed as
they come, failures keep their kind, an upload is replayed once after a transport failure and a
command is not; with SANDO_SSH_PERSIST=0 nothing goes to a keeper. And ssh.py's own retry of a
session that could not be opened on a kept connection (nothing ran, so any command is retried)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import pytest

from sando_components import keeper, ssh


def _conn(**change) -> ssh.Conn:
    c = dict(host="10.9.9.9", port=22, user="root", host_key="ssh-ed25519 AAAA", insecure=False,
             private_key="-----BEGIN KEY-----\nsecret\n-----END KEY-----\n", node="n1")
    c.update(change)
    return ssh.Conn(**c)


@pytest.fixture
def served(monkeypatch):
    """A keeper served in this process, on a name of its own; returns what the node side saw."""
    name = f"\0sando-keeper-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(8)
    server = keeper._Server(listener, persist=3600)
    threading.Thread(target=server.loop, daemon=True).start()
    monkeypatch.setattr(keeper, "address", lambda _persist: name)
    monkeypatch.setattr(keeper, "_spawn", lambda *_: pytest.fail("a keeper was started"))
    monkeypatch.delenv(keeper.PERSIST_ENV, raising=False)
    seen: dict = {"calls": []}
    yield seen
    listener.close()


def fake_node(monkeypatch, seen: dict, behave):
    def run_pooled(conn, command, *, stdin, timeout, retry, on_line, on_sent):
        data = b"".join(stdin()) if stdin is not None else None
        seen["calls"].append({"conn": conn, "command": command, "stdin": data, "retry": retry, "timeout": timeout})
        return behave(len(seen["calls"]), data, on_line)

    monkeypatch.setattr(ssh, "run_pooled", run_pooled)


def test_a_command_its_stdin_and_its_lines_go_through_the_keeper(served, monkeypatch):
    def behave(_n, data, on_line):
        for line in ("step one", "step two") if on_line else ():
            on_line(line)
        return 3, b"step one\nstep two\n", b"oops", len(data or b"")

    fake_node(monkeypatch, served, behave)
    lines, sent = [], []
    chunks = [b"a" * 300_000, b"b" * 10, b"c" * (ssh.CHUNK + 1)]
    res = ssh.run(_conn(), "cat > /x", stdin=lambda: iter(chunks), check=False, on_line=lines.append, on_sent=sent.append)
    assert (res.rc, res.out, res.err, res.sent) == (3, "step one\nstep two\n", "oops", sum(map(len, chunks)))
    assert lines == ["step one", "step two"] and sent[-1] == res.sent
    (call,) = served["calls"]
    assert call["stdin"] == b"".join(chunks) and call["command"] == "cat > /x"
    assert call["conn"] == _conn() and call["conn"].private_key == _conn().private_key  # the key, to pool by
    with pytest.raises(ssh.RemoteError, match="a remote command exited 3: oops"):
        ssh.run(_conn(), "false")


def test_failures_keep_their_kind_and_message(served, monkeypatch):
    def behave(n, _data, _on_line):
        if n == 1:
            raise ssh.RemoteError("n1 (root@10.9.9.9:22): the SSH key was refused (sando:sshPrivateKey or sando:sshAgent)")
        raise ssh.TransportError("n1 (root@10.9.9.9:22): the connection failed during a remote command (EOF)")

    fake_node(monkeypatch, served, behave)
    with pytest.raises(ssh.RemoteError, match="the SSH key was refused") as refused:
        ssh.run(_conn(), "true")
    assert not isinstance(refused.value, ssh.TransportError)
    with pytest.raises(ssh.TransportError, match="the connection failed during a remote command"):
        ssh.run(_conn(), "true", stdin=b"x")  # not idempotent: once
    assert len(served["calls"]) == 2


def test_an_upload_is_replayed_once_after_a_transport_failure(served, monkeypatch):
    def behave(n, data, _on_line):
        if n == 1:
            raise ssh.TransportError("n1: the connection failed during a remote command (EOF)")
        return 0, b"ok", b"", len(data or b"")

    fake_node(monkeypatch, served, behave)
    replays = []

    def stream():
        replays.append(1)
        yield b"payload"

    assert ssh.run(_conn(), "wc -c", stdin=stream, retry=True).out == "ok"
    assert len(replays) == 2 and [c["stdin"] for c in served["calls"]] == [b"payload", b"payload"]
    # the keeper is never told to retry an upload itself (it cannot replay the stdin); a command
    # without stdin it may retry on its own
    assert [c["retry"] for c in served["calls"]] == [False, False]
    ssh.run(_conn(), "true", retry=True)
    assert served["calls"][-1]["retry"] is True


def test_without_a_key_or_with_persist_0_nothing_goes_to_a_keeper(monkeypatch):
    monkeypatch.setattr(keeper, "connect", lambda: pytest.fail("the keeper was asked"))
    monkeypatch.setattr(ssh, "run_pooled", lambda *a, **k: (0, b"here", b"", 0))
    monkeypatch.setenv(keeper.PERSIST_ENV, "0")
    assert ssh.run(_conn(), "true").out == "here"
    monkeypatch.setenv(keeper.PERSIST_ENV, "300")
    assert ssh.run(_conn(private_key=None), "true").out == "here"  # the agent's key: this process
    assert not keeper.wanted(_conn(local=True))


def test_persist_seconds_from_the_environment(monkeypatch):
    for raw, want in (("", 300.0), ("60", 60.0), ("0", 0.0), ("-5", 0.0), ("soon", 0.0)):
        monkeypatch.setenv(keeper.PERSIST_ENV, raw)
        assert keeper.persist_seconds() == want, raw
    assert keeper.address(300).startswith(f"\0sando-keeper-{os.geteuid()}-")


def test_a_keeper_without_a_caller_of_its_user_says_nothing(served, monkeypatch):
    monkeypatch.setattr(keeper, "peer_uid", lambda _sock: 12345)
    with pytest.raises(keeper.Unavailable, match="another user"):
        keeper.connect()


class _Chan:
    remote_chanid = 0  # ssh._exec sends the exec request itself, on the channel's transport

    class transport:  # noqa: N801 - paramiko's attribute
        @staticmethod
        def _send_user_message(_m):
            pass

    def settimeout(self, _t):
        pass

    def recv(self, _n):
        return b""

    recv_stderr = recv

    def recv_exit_status(self):
        return 0

    def close(self):
        pass


class _Kept:
    """A pooled connection that died since it was kept: its session cannot be opened."""

    def __init__(self, dead: bool):
        self.dead = dead
        self.closed = False

    def get_transport(self):
        return self

    def is_active(self):
        return True

    def open_session(self, timeout=None):
        if self.dead:
            raise EOFError()
        return _Chan()

    def close(self):
        self.closed = True


def test_a_session_that_cannot_be_opened_is_retried_on_a_fresh_connection_for_any_command(monkeypatch):
    clients = [_Kept(dead=True), _Kept(dead=False)]
    opened: list = []

    def connect(_conn):
        opened.append(1)
        return clients[len(opened) - 1]

    monkeypatch.setattr(ssh, "_connect", connect)
    monkeypatch.setattr(ssh, "_pool", {})
    rc, _out, _err, _sent = ssh.run_pooled(_conn(), "mv a b", stdin=None, timeout=5, retry=False, on_line=None, on_sent=None)
    assert rc == 0 and len(opened) == 2 and clients[0].closed  # not idempotent, and still retried: nothing ran


def test_an_idempotent_command_whose_keeper_went_away_is_sent_again(served, monkeypatch):
    fake_node(monkeypatch, served, lambda _n, _data, _on_line: (0, b"again", b"", 0))
    handle, taken = keeper._handle, []

    def ends_once(client, request):  # the first request taken, the keeper ends without a word
        taken.append(request["command"])
        if len(taken) == 1:
            client.shutdown(socket.SHUT_RDWR)
            return
        handle(client, request)

    monkeypatch.setattr(keeper, "_handle", ends_once)
    assert ssh.run(_conn(), "cat /x", retry=True).out == "again"
    assert taken == ["cat /x", "cat /x"]
    taken.clear()
    with pytest.raises(ssh.TransportError, match="sando's connection keeper went away"):
        ssh.run(_conn(), "mv a b")  # not idempotent: said, not sent again
    assert taken == ["mv a b"]


def test_stop_all_ends_this_sandos_keepers_only():
    import subprocess
    import sys

    # a made-up digest: the real keepers other tests use at the same time are left alone
    ours = subprocess.Popen([sys.executable, "-c", "import time  # keeper.serve('feedfacefeedface')\ntime.sleep(60)"])
    other = subprocess.Popen([sys.executable, "-c", "import time  # keeper.serve('0123456789abcdef')\ntime.sleep(60)"])
    # two persist settings of one sando (two test sessions): each is ended on its own
    p600 = subprocess.Popen([sys.executable, "-c", "import time  # keeper.serve('x-feedfacefeed-600', 600.0)\ntime.sleep(60)"])
    p700 = subprocess.Popen([sys.executable, "-c", "import time  # keeper.serve('x-feedfacefeed-700', 700.0)\ntime.sleep(60)"])
    try:
        time.sleep(0.2)  # all have their argv
        assert keeper.stop_all("feedfacefeedface") == 1
        assert ours.wait(timeout=10) == -15  # SIGTERM
        assert other.poll() is None  # another sando's keeper (another digest) goes on
        assert keeper.stop_all("feedfacefeed", persist=600) == 1
        assert p600.wait(timeout=10) == -15 and p700.poll() is None
    finally:
        for proc in (ours, other, p600, p700):
            proc.kill()
            proc.wait()


def test_a_request_that_a_keeper_never_took_goes_to_the_next_one(served, monkeypatch):
    """A keeper that ends (idle) as a caller connects closes without taking the request: nothing ran,
    so even a command that is not idempotent goes to the next keeper."""
    fake_node(monkeypatch, served, lambda _n, _data, _on_line: (0, b"moved", b"", 0))
    real, calls = keeper.connect, []

    def connect():
        calls.append(1)
        if len(calls) == 1:
            ours, ending = socket.socketpair()
            ending.close()
            return ours
        return real()

    monkeypatch.setattr(keeper, "connect", connect)
    assert ssh.run(_conn(), "mv a b").out == "moved"
    assert len(calls) == 2 and len(served["calls"]) == 1


def test_a_keeper_that_cannot_start_leaves_the_run_to_connect_on_its_own(monkeypatch):
    def cannot(*_a):
        raise OSError("no such file")

    monkeypatch.setattr(keeper, "address", lambda _p: f"\0sando-keeper-test-{uuid.uuid4().hex}")  # none listens
    monkeypatch.setattr(keeper, "_spawn", cannot)
    monkeypatch.setattr(keeper, "_broken", False)
    monkeypatch.setattr(ssh, "run_pooled", lambda *a, **k: (0, b"on its own", b"", 0))
    monkeypatch.delenv(keeper.PERSIST_ENV, raising=False)
    assert ssh.run(_conn(), "true").out == "on its own"
    assert keeper._broken and not keeper.wanted(_conn())  # not tried again in this process
