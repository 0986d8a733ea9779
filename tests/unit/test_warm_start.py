"""The provider host's warm start (engine/bin/sando-provider-host.py): a zygote with the SDK loaded
forks each run's provider process, which takes the launcher's stdout (the port the engine reads),
directory and umask, and ends with the launcher: on the SIGINT the engine sends it, or when the
launcher is killed. Driven here as the engine starts a plugin; every e2e test then runs through it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import REPO, provider_host

HOST = REPO / "engine" / "bin" / "sando-provider-host.py"
ZYGOTE = REPO / "engine" / "bin" / "sando_zygote.py"
PYTHON = REPO / ".venv" / "bin" / "python"


def _env(warm: str, **extra: str) -> dict:
    # a keep-warm value of this test's own: its own zygote, not the e2e tests'
    return {"PATH": os.environ["PATH"], "SANDO_KEEP_WARM": warm, "SANDO_TEST_SECRET": "s3cret", **extra}


def _start(tmp_path: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """A launcher as the engine starts it (a pipe for stdout, its own process group); the port it says."""
    proc = subprocess.Popen([str(PYTHON), "-u", str(HOST), "127.0.0.1:1"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # SIGINT at its default, as the plugin launcher starts it (an xdist worker ignores it)
                            preexec_fn=lambda: (os.umask(0o027), os.setpgrp(),
                                                signal.signal(signal.SIGINT, signal.SIG_DFL)))
    line = proc.stdout.readline()
    assert line.strip().isdigit(), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, int(line)


def _listener(port: int) -> int:
    """The pid that listens on 127.0.0.1:port."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"pid=(\d+)", out).group(1))


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _gone(pid: int, within: float = 10) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def warm():
    value = f"{290 + os.getpid() % 9}.5"
    yield value
    for pid in _zygotes(value):
        os.kill(pid, signal.SIGTERM)


def _zygotes(warm: str) -> list[int]:
    return provider_host().zygotes(float(warm))


def test_a_run_s_provider_is_forked_by_the_zygote_and_ends_on_the_engine_s_sigint(tmp_path, warm):
    launcher, port = _start(tmp_path, _env(warm))
    provider = _listener(port)
    (zygote,) = _zygotes(warm)
    assert provider != launcher.pid and _ppid(provider) == zygote
    assert os.readlink(f"/proc/{provider}/cwd") == str(tmp_path)
    assert re.search(r"^Umask:\s+0027$", Path(f"/proc/{provider}/status").read_text(), re.M)
    zenv = Path(f"/proc/{zygote}/environ").read_bytes().split(b"\0")
    assert sorted(e.split(b"=")[0] for e in zenv if e) == [b"LANG", b"PATH"]  # no secret of any run
    launcher.send_signal(signal.SIGINT)  # as the engine stops a plugin
    assert launcher.wait(timeout=10) == 0
    assert _gone(provider)
    # the next run: the same zygote, a new child
    launcher2, port2 = _start(tmp_path, _env(warm))
    assert _ppid(_listener(port2)) == zygote and _zygotes(warm) == [zygote]
    launcher2.send_signal(signal.SIGINT)
    assert launcher2.wait(timeout=10) == 0


def test_a_killed_launcher_takes_its_provider_with_it(tmp_path, warm):
    launcher, port = _start(tmp_path, _env(warm))
    provider = _listener(port)
    assert provider != launcher.pid
    launcher.kill()
    launcher.wait(timeout=10)
    assert _gone(provider)


@pytest.mark.parametrize("env", [{"SANDO_KEEP_WARM": "0"}, {"TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}])
def test_no_warm_start_when_it_is_off_or_tracing_is_asked_for(tmp_path, warm, env):
    launcher, port = _start(tmp_path, {**_env(warm), **env})
    assert _listener(port) == launcher.pid  # the launcher runs the provider itself
    assert _zygotes(warm) == []
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(timeout=10) == 0


CHILD_END = r'''
import atexit, importlib.util, json, os, socket, sys, threading, time
spec = importlib.util.spec_from_file_location("sando_zygote", sys.argv[1])
zy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zy)
out = sys.argv[2]

def main():  # stands in for the provider: a worker thread still at work, an atexit call, output
    def work():
        time.sleep(0.3)
        open(out + ".thread", "w").write("joined")
    threading.Thread(target=work).start()
    atexit.register(lambda: open(out + ".atexit", "w").write("called"))
    sys.stdout.write("said last")  # no newline: flushed by the exit, not by a line
    sys.exit(7)

class Freed:  # freed only by the interpreter's last step
    def __init__(self):
        self.fd, self.write = os.open(out + ".freed", os.O_WRONLY | os.O_CREAT, 0o600), os.write

    def __del__(self):
        self.write(self.fd, b"freed")

kept = Freed()
conn, launcher = socket.socketpair()
fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
zy._child(conn, {"cwd": os.getcwd(), "umask": "18", "env": dict(os.environ), "argv": ["provider"]},
          [os.open(os.devnull, os.O_RDONLY), fd, os.dup(fd)], main)
'''


def test_a_forked_provider_ends_as_the_interpreter_would_but_for_freeing_its_modules(tmp_path):
    """The child's end: its threads joined, its atexit calls made, its output flushed, its exit status
    its process's (the launcher passes it on); the interpreter's last step, freeing every module, is
    skipped (~50 ms at the end of every run, which the engine waits for)."""
    out = tmp_path / "out"
    res = subprocess.run([str(PYTHON), "-c", CHILD_END, str(ZYGOTE), str(out)], cwd=tmp_path, timeout=30,
                         capture_output=True, text=True)
    assert res.returncode == 7, res.stderr
    assert out.read_text() == "said last"
    assert (tmp_path / "out.thread").read_text() == "joined" and (tmp_path / "out.atexit").read_text() == "called"
    assert (tmp_path / "out.freed").read_text() == ""  # the modules were not freed one by one


def test_setup_compiles_sandos_own_modules():
    """`make setup` compiles sando_components (scripts/setup.sh 4b), as pip compiles an installed
    package: the program and the provider process import them anew on every run, and where
    PYTHONDONTWRITEBYTECODE=1 (this machine's environment, many container images) Python would
    compile them on every run (~60 ms of a one-node no-op here). Each module's bytecode is there
    and valid for the source as it is (PEP 552: magic, flags 0, source mtime and size)."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    sources = [*sorted((root / "sando_components").rglob("*.py")), root / "__main__.py"]
    assert len(sources) > 20
    for src in sources:
        pyc = Path(importlib.util.cache_from_source(str(src)))
        assert pyc.exists(), f"{src}: no bytecode (run make setup)"
        head, st = pyc.read_bytes()[:16], src.stat()
        assert head[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(head[4:8], "little") == 0, src
        assert (int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:16], "little")) == (
            int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF), f"{src}: stale bytecode (run make setup)"
