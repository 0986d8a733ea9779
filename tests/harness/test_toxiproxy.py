"""Tests for tests/toxiproxy.py against a local threaded TCP echo server (loopback only).

Run: python3 -m pytest -q tests/harness/test_toxiproxy.py   (a few seconds)
Needs toxiproxy-server from `make setup` (.tools/bin) or SANDO_TOXIPROXY_SERVER; skipped without.
"""
import os
import socket
import statistics
import threading
import time

import pytest

from tests import toxiproxy
from tests.toxiproxy import Toxiproxy, ToxiproxyError, wan_proxy

try:
    BINARY = toxiproxy.find_binary()
except ToxiproxyError as e:
    BINARY = None
    REASON = str(e)

pytestmark = pytest.mark.skipif(BINARY is None, reason=REASON if BINARY is None else "")

MB = 1_000_000


class EchoServer:
    """Threaded TCP server on a free loopback port. The client's first byte picks the mode:
    b"E" echoes everything back; b"S" reads a 10-digit ASCII length, swallows that many
    bytes and answers b"ok". (No half-close: toxiproxy closes both directions when one
    side sends EOF.)"""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = self.sock.getsockname()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c: socket.socket):
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = c.recv(1)
            if mode == b"S":
                want = int(recv_exact(c, 10))
                while want > 0:
                    data = c.recv(min(want, 65536))
                    if not data:
                        return
                    want -= len(data)
                c.sendall(b"ok")
            while mode == b"E":
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def echo():
    srv = EchoServer()
    yield srv
    srv.close()


def connect(addr, mode=b"E") -> socket.socket:
    s = socket.create_connection(addr, timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(mode)
    return s


def rtts(addr, n=5) -> list[float]:
    """Round-trip times of 1-byte echoes on one connection (the first, which may include
    the proxy's connection setup, is not counted)."""
    out = []
    with connect(addr) as s:
        for i in range(n + 1):
            t0 = time.monotonic()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            if i:
                out.append(time.monotonic() - t0)
    return out


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(min(n - len(buf), 65536))
        if not d:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


def recv_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        d = s.recv(65536)
        if not d:
            return b"".join(chunks)
        chunks.append(d)


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X", "x")
    except OSError:
        return True


def refused(addr) -> bool:
    try:
        socket.create_connection(addr, timeout=2).close()
        return False
    except OSError:
        return True


def test_wan_profile_latency_bandwidth_and_cleanup(echo):
    direct = statistics.median(rtts(echo.addr))
    assert direct < 0.005, f"direct RTT {direct * 1000:.1f} ms on loopback"
    with wan_proxy(echo.addr) as link:
        pid = link.server.pid
        assert link.host == "127.0.0.1" and link.listen == f"127.0.0.1:{link.port}"
        assert {t["name"] for t in link.toxics()} == {
            "wan_latency_up", "wan_latency_down", "wan_bandwidth_up", "wan_bandwidth_down"}
        via = rtts(link.addr)
        assert min(via) >= 0.040, f"RTT through the WAN profile {[round(x * 1000, 1) for x in via]} ms"
        assert statistics.median(via) < 0.5

        # bulk upload: 1 MB at 2.5 MB/s takes >= 0.4 s (plus 20 ms); allow generous slack above
        payload = os.urandom(MB)
        with connect(link.addr, b"S") as s:
            t0 = time.monotonic()
            s.sendall(b"%010d" % len(payload) + payload)
            assert recv_exact(s, 2) == b"ok"
            took = time.monotonic() - t0
        assert 0.3 <= took < 3.0, f"1 MB upload through the WAN profile took {took:.2f}s"

        # bulk both ways (echo): up and down are throttled independently, pipelined
        with connect(link.addr) as s:
            t0 = time.monotonic()
            sender = threading.Thread(target=s.sendall, args=(payload,))
            sender.start()
            got = recv_exact(s, len(payload))
            took = time.monotonic() - t0
            sender.join()
        assert got == payload
        assert 0.3 <= took < 4.0, f"1 MB echo through the WAN profile took {took:.2f}s"
    assert pid_gone(pid), "toxiproxy-server still running after the with block"
    assert refused(link.addr), "the proxy port still accepts connections"


def test_reset_peer_breaks_a_connection_and_can_be_removed(echo):
    with wan_proxy(echo.addr, latency_ms=1, rate_kbps=0) as link:
        with connect(link.addr) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
            name = link.reset_peer(timeout_ms=0, stream="upstream")
            assert name == "reset_peer_upstream"
            s.settimeout(3)
            with pytest.raises((ConnectionResetError, BrokenPipeError, EOFError)):
                s.sendall(b"again")
                if s.recv(5) == b"":  # reset at once; some kernels report it as EOF first
                    raise EOFError
        link.remove_toxic(name)
        with connect(link.addr) as s:
            s.sendall(b"back")
            assert s.recv(4) == b"back"


def test_timeout_and_limit_data_toxics(echo):
    with Toxiproxy() as tp:
        p = tp.proxy("faults", echo.addr)
        assert p.addr != echo.addr

        name = p.timeout(timeout_ms=0)  # data is dropped, the connection stays open
        with connect(p.addr) as s:
            s.settimeout(0.3)
            s.sendall(b"lost")
            with pytest.raises(socket.timeout):
                s.recv(4)
        p.remove_toxic(name)

        p.limit_data(100)  # downstream: closed after 100 bytes
        with connect(p.addr) as s:
            s.settimeout(3)
            s.sendall(b"y" * 1000)
            got = recv_all(s)
        assert got == b"y" * 100

        tp.reset()
        assert p.toxics() == []
        with connect(p.addr) as s:
            s.sendall(b"ok")
            assert s.recv(2) == b"ok"

        with pytest.raises(ToxiproxyError, match="HTTP 409"):
            tp.proxy("faults", echo.addr)  # name taken
        p.delete()
        assert refused(p.addr)
        pid = tp.pid
    assert pid_gone(pid)


def test_start_stop_leaves_no_process():
    tp = Toxiproxy()
    tp.start()
    pid, port, log = tp.pid, tp.port, tp.log_path
    assert tp.version == "v2.5.0"
    assert log.exists()
    tp.stop()
    assert pid_gone(pid)
    assert refused(("127.0.0.1", port))
    assert not log.exists()
    tp.stop()  # idempotent
    with pytest.raises(ToxiproxyError):
        tp.request("GET", "/proxies")
