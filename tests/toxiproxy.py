"""Toxiproxy on loopback: a WAN-like TCP link (latency, bandwidth) and injected faults. stdlib only.

    from tests.toxiproxy import wan_proxy
    with wan_proxy(("127.0.0.1", node.port)) as link:   # 20 ms + 2.5 MB/s each way
        ssh -p link.port link.host ...                  # link.listen == "127.0.0.1:PORT"
        link.add_toxic("reset_peer", stream="upstream", timeout=0)   # a fault, mid-test
    # the toxiproxy-server process is gone here (killed by its PID)

Or with more control (several proxies on one server, own profiles):

    with Toxiproxy() as tp:
        p = tp.proxy("node1", "127.0.0.1:2201")        # listen on a free loopback port
        p.wan(latency_ms=50, rate_kbps=1000)
        n = p.limit_data(64_000)                       # close after 64 kB downstream
        p.remove_toxic(n)

The server binary is `toxiproxy-server` built by `make setup` into .tools/bin (pinned in
engine/toxiproxy/go.mod); env SANDO_TOXIPROXY_SERVER overrides the path. The toxiproxy
API (v2.5.0) used here: POST /proxies, DELETE /proxies/NAME, POST /proxies/NAME (enable/
disable), POST /proxies/NAME/toxics, DELETE /proxies/NAME/toxics/TOXIC, POST /reset.

Toxic semantics worth knowing (toxiproxy's, not ours):
  * "upstream" is client -> server (what an uploader sends), "downstream" server -> client.
  * toxics on one stream apply in the order they were added; the WAN profile adds latency
    before bandwidth, so a chunk sees the 20 ms propagation delay plus its serialization time.
  * latency is per chunk, measured from when the proxy read it: a round trip through both
    streams costs 2 x latency; bandwidth "rate" is in KB/s with KB = 1000 bytes.
  * toxics also act on connections already open through the proxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO / ".tools" / "bin" / "toxiproxy-server"

# The WAN profile: 20 ms each way (40 ms round trip), 2.5 MB/s each way.
WAN_LATENCY_MS = 20
WAN_RATE_KBPS = 2500  # toxiproxy's bandwidth toxic takes KB/s (1 KB = 1000 bytes)


class ToxiproxyError(RuntimeError):
    pass


def find_binary() -> str:
    """toxiproxy-server: $SANDO_TOXIPROXY_SERVER, else .tools/bin (make setup), else PATH."""
    env = os.environ.get("SANDO_TOXIPROXY_SERVER")
    if env:
        return env
    if os.access(DEFAULT_BINARY, os.X_OK):
        return str(DEFAULT_BINARY)
    found = shutil.which("toxiproxy-server")
    if found:
        return found
    raise ToxiproxyError(f"toxiproxy-server not found: run `make setup` (builds {DEFAULT_BINARY}) "
                         "or set SANDO_TOXIPROXY_SERVER")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _split_addr(addr: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(addr, tuple):
        return addr[0], int(addr[1])
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _kill(proc: subprocess.Popen) -> None:
    """End the server by its PID: SIGTERM (it exits 0 on it), then SIGKILL; reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


class Toxiproxy:
    """One toxiproxy-server process with its API on a free loopback port.

    start()/stop() or a `with` block; stop() kills the process by its PID (also at
    interpreter exit if forgotten). `log_path` keeps the server's log (JSON lines);
    by default it goes to a temp file that is shown on errors and removed on stop()."""

    def __init__(self, binary: str | None = None, host: str = "127.0.0.1", log_path: str | Path | None = None,
                 log_level: str = "info"):
        self.binary = binary or find_binary()
        self.host = host
        self.log_level = log_level
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._finalizer = None

    # lifecycle --------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> Toxiproxy:
        if self.proc is not None:
            raise ToxiproxyError("already started")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="toxiproxy-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        env = {**os.environ, "LOG_LEVEL": self.log_level}
        last = ""
        for _ in range(5):  # the free port can be taken between our probe and the server's bind
            self.port = free_port(self.host)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [self.binary, "-host", self.host, "-port", str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
            self._finalizer = weakref.finalize(self, _kill, self.proc)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(self.api_url + "/version", timeout=1) as r:
                        if r.status == 200 and self.proc.poll() is None:
                            self.version = r.read().decode().strip()
                            return self
                except OSError:
                    time.sleep(0.02)
            last = self._log_tail()
            self._finalizer()  # exited (port taken?) or never answered: kill, try another port
            self.proc = None
        raise ToxiproxyError(f"toxiproxy-server did not start on {self.host}; log:\n{last}")

    def stop(self) -> None:
        if self.proc is not None:
            self._finalizer()  # kills and reaps the process; runs at most once
            self.proc = None
        if self._own_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def __enter__(self) -> Toxiproxy:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    # API ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None):
        if self.proc is None:
            raise ToxiproxyError("toxiproxy-server is not running")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise ToxiproxyError(f"{method} {path}: HTTP {e.code}: {e.read().decode(errors='replace').strip()}") \
                from None
        except OSError as e:
            raise ToxiproxyError(f"{method} {path}: {e}; server log:\n{self._log_tail()}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def proxy(self, name: str, upstream: str | tuple[str, int], listen: str = "127.0.0.1:0") -> Proxy:
        """Create a proxy `listen -> upstream` (default: a free loopback port, chosen by the
        server itself, so there is no race)."""
        host, port = _split_addr(upstream)
        up = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        info = self.request("POST", "/proxies", {"name": name, "listen": listen, "upstream": up, "enabled": True})
        return Proxy(self, info)

    def proxies(self) -> dict:
        return self.request("GET", "/proxies")

    def reset(self) -> None:
        """Enable every proxy and remove every toxic (WAN profiles included)."""
        self.request("POST", "/reset")


class Proxy:
    """One proxy of a Toxiproxy server: `listen` ("127.0.0.1:PORT"), `host`, `port`, `upstream`."""

    def __init__(self, server: Toxiproxy, info: dict):
        self.server = server
        self.name: str = info["name"]
        self.listen: str = info["listen"]
        self.upstream: str = info["upstream"]
        self.host, self.port = _split_addr(self.listen)

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    def __repr__(self) -> str:
        return f"Proxy({self.name!r}, {self.listen} -> {self.upstream})"

    # toxics -------------------------------------------------------------------------------
    def add_toxic(self, type: str, stream: str = "downstream", name: str | None = None,
                  toxicity: float = 1.0, **attributes) -> str:
        """Add a toxic (latency, bandwidth, slow_close, timeout, reset_peer, slicer,
        limit_data) with its attributes (e.g. latency=20, rate=2500, timeout=0, bytes=1000)
        to one stream; returns its name (default "<type>_<stream>", toxiproxy's own)."""
        if stream not in ("upstream", "downstream"):
            raise ValueError(f"stream must be 'upstream' or 'downstream', not {stream!r}")
        name = name or f"{type}_{stream}"
        self.server.request("POST", f"/proxies/{self.name}/toxics", {
            "name": name, "type": type, "stream": stream, "toxicity": toxicity, "attributes": attributes})
        return name

    def remove_toxic(self, name: str) -> None:
        self.server.request("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[dict]:
        return self.server.request("GET", f"/proxies/{self.name}/toxics")

    def clear_toxics(self) -> None:
        for t in self.toxics():
            self.remove_toxic(t["name"])

    def wan(self, latency_ms: int = WAN_LATENCY_MS, rate_kbps: int = WAN_RATE_KBPS, jitter_ms: int = 0) -> list[str]:
        """The WAN profile: latency then bandwidth on each stream (upstream and downstream).
        rate_kbps=0 leaves bandwidth unlimited. Returns the four (or two) toxic names."""
        names = []
        for stream, short in (("upstream", "up"), ("downstream", "down")):
            names.append(self.add_toxic("latency", stream, f"wan_latency_{short}", latency=latency_ms,
                                        jitter=jitter_ms))
            if rate_kbps:
                names.append(self.add_toxic("bandwidth", stream, f"wan_bandwidth_{short}", rate=rate_kbps))
        return names

    def reset_peer(self, timeout_ms: int = 0, stream: str = "downstream", name: str | None = None) -> str:
        """Reset (RST) connections when data next flows on `stream`, after timeout_ms."""
        return self.add_toxic("reset_peer", stream, name, timeout=timeout_ms)

    def timeout(self, timeout_ms: int = 0, stream: str = "downstream", name: str | None = None) -> str:
        """Drop all data on `stream`; close the connection after timeout_ms (0: never)."""
        return self.add_toxic("timeout", stream, name, timeout=timeout_ms)

    def limit_data(self, nbytes: int, stream: str = "downstream", name: str | None = None) -> str:
        """Close a connection once `nbytes` have passed on `stream`."""
        return self.add_toxic("limit_data", stream, name, bytes=nbytes)

    # the proxy itself ----------------------------------------------------------------------
    def disable(self) -> None:
        """Close all its connections and stop listening (enable() listens again)."""
        self.server.request("POST", f"/proxies/{self.name}", {"enabled": False})

    def enable(self) -> None:
        self.server.request("POST", f"/proxies/{self.name}", {"enabled": True})

    def delete(self) -> None:
        self.server.request("DELETE", f"/proxies/{self.name}")


@contextlib.contextmanager
def wan_proxy(upstream: str | tuple[str, int], *, latency_ms: int = WAN_LATENCY_MS,
              rate_kbps: int = WAN_RATE_KBPS, jitter_ms: int = 0, name: str = "wan",
              binary: str | None = None, log_path: str | Path | None = None):
    """Start a toxiproxy-server, proxy a free loopback port to `upstream` ("host:port" or
    (host, port)) with the WAN profile, yield the Proxy (`.listen`, `.host`, `.port`,
    `.add_toxic(...)`, `.server.pid`); on exit kill the server by its PID."""
    with Toxiproxy(binary=binary, log_path=log_path) as tp:
        p = tp.proxy(name, upstream)
        p.wan(latency_ms=latency_ms, rate_kbps=rate_kbps, jitter_ms=jitter_ms)
        yield p
