"""The SSH transport keeps within sshd's default MaxSessions (10) while a node's
resources work in parallel over one pooled connection (test nodes keep the default)."""

from __future__ import annotations

import threading
from pathlib import Path

from sando_components import ssh


def test_sixty_parallel_operations_share_one_connection_within_max_sessions(make_nodes):
    (node,) = make_nodes(1)
    conn = ssh.Conn(node.host, node.port, node.user, node.hostKey, False, Path(node.privateKeyPath).read_text())
    errors: list[str] = []

    def work(i: int) -> None:
        try:
            ssh.upload(conn, [(f"file {i}\n".encode(), f"{node.root}/var/tmp-{i}", 0o600)])
            rc, out, _ = ssh.run(conn, f"cat {node.root}/var/tmp-{i}")  # exits at once
            assert (rc, out) == (0, f"file {i}\n")
            ssh.run(conn, "true")
        except Exception as exc:  # collected: a thread's assert would be lost
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # and sshd never dropped the connection (e.g. for a message on a channel it had freed)
    sshd_log = (Path(node.privateKeyPath).parent / "sshd.log").read_text()
    assert "Disconnecting" not in sshd_log and "bad id" not in sshd_log
    assert len(ssh._pool) >= 1
    ssh._pool.clear()
