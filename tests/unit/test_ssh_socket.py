"""The TCP side of sando's SSH connections (sando_components/ssh.py), on loopback."""

from __future__ import annotations

import socket

import pytest

from sando_components import ssh


def _conn(port: int) -> ssh.Conn:
    return ssh.Conn(host="127.0.0.1", port=port, user="deploy", host_key="ssh-ed25519 AAAA", insecure=False,
                    private_key=None, node="node1")


def test_the_socket_to_a_node_has_nagle_off():
    """Each step is a few small request/response messages; with Nagle on, every one after the
    first waited for the node's delayed ACK (40 ms per SSH channel, measured)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = ssh._socket(_conn(server.getsockname()[1]))
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            sock.close()


def test_the_socket_acknowledges_each_read_at_once():
    """sshd (Nagle on for a session without a terminal) held the second part of a reply until the
    first was ACKed, and the kernel delayed that ACK 40 ms: every connection's first session paid it
    (tcpdump). After each read the socket asks for the ACK now (TCP_QUICKACK, which Linux resets)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = ssh._socket(_conn(server.getsockname()[1]))
        peer, _ = server.accept()
        try:
            raw = sock._sock
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            peer.sendall(b"SSH-2.0-x\r\n")
            assert sock.recv(64) == b"SSH-2.0-x\r\n"
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
            assert sock.fileno() == raw.fileno() and sock._closed is False  # paramiko's uses, passed through
        finally:
            sock.close()
            peer.close()
        assert sock._closed is True


def test_a_refused_connection_names_the_node_and_its_keys_without_a_traceback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(ssh.RemoteError) as err:  # an OperatorError: shown as its message alone
        ssh._socket(_conn(port))
    assert str(err.value) == (f"node1 (deploy@127.0.0.1:{port}): cannot connect: Connection refused "
                              "(check the node's host and port in sando:nodes and that sshd runs there)")


def test_the_agent_without_ssh_auth_sock_is_named_not_the_connection(ed25519_key, monkeypatch):
    """sando:sshAgent with no agent: said as such before any connection (paramiko would report
    "No authentication methods available", read as a host/port problem)."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    conn = ssh.Conn(host="127.0.0.1", port=9, user="root", host_key=ed25519_key[0], insecure=False,
                    private_key=None, node="node1")
    with pytest.raises(ssh.RemoteError) as exc:
        ssh._connect(conn)
    assert str(exc.value) == ("node1 (root@127.0.0.1:9): sando:sshAgent is true but SSH_AUTH_SOCK is not set: no SSH "
                              "agent to ask for the key (start one and ssh-add the key, or set sando:sshPrivateKey)")


def test_a_host_that_does_not_resolve_is_named(monkeypatch):
    def no_such_name(*_a, **_k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_such_name)  # no DNS query leaves this machine
    with pytest.raises(ssh.RemoteError) as exc:
        ssh._socket(_conn(22))
    assert str(exc.value) == ("node1 (deploy@127.0.0.1:22): cannot connect: Name or service not known (check the "
                              "node's host and port in sando:nodes and that sshd runs there)")
