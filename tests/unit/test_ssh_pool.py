"""ssh.py's connection pool: handshakes of different nodes run at once; one node connects once."""

import threading

from sando_components import ssh


class _Client:
    def get_transport(self):
        return self

    def is_active(self):
        return True


def _conn(host):
    return ssh.Conn(host=host, port=22, user="root", host_key=None, insecure=True, private_key=None, node=host)


def test_two_nodes_connect_at_the_same_time_and_each_once(monkeypatch):
    both_inside = threading.Barrier(2, timeout=5)  # broken unless both handshakes are under way together
    calls = []

    def connect(conn):
        calls.append(conn.host)
        both_inside.wait()
        return _Client()

    monkeypatch.setattr(ssh, "_connect", connect)
    monkeypatch.setattr(ssh, "_pool", {})
    errors = []

    def use(host):
        try:
            ssh._pooled(_conn(host))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(h,)) for h in ("10.0.0.1", "10.0.0.2", "10.0.0.1")]
    for t in threads[:2]:
        t.start()
    for t in threads[:2]:
        t.join()
    threads[2].start()
    threads[2].join()
    assert errors == []
    assert sorted(calls) == ["10.0.0.1", "10.0.0.2"]  # the third use found node 1's pooled connection
