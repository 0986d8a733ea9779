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


def test_a_refused_connection_names_the_node_and_its_keys_without_a_traceback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(ssh.RemoteError) as err:  # an OperatorError: shown as its message alone
        ssh._socket(_conn(port))
    assert str(err.value) == (f"node1 (deploy@127.0.0.1:{port}): cannot connect: Connection refused "
                              "(check the node's host and port in sando:nodes and that sshd runs there)")
