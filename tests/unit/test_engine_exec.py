"""sando's patch to the script the language host runs programs with (engine/python/exec.patch),
through the real engine (.tools/bin/pulumi, a file backend): a program that sets SANDO_EXIT_FAST=1
(sando's __main__.py does) ends as the interpreter would, but without freeing its modules; the
engine's SIGINT ends a program quietly; a program that asks for a warm start (`# sando-warm:`) runs
in a child of a zygote that has loaded what it names (engine/bin/sando_zygote.py); any other
program runs and exits as before. Skipped without `make setup`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unit_helpers import scratch_project

REPO = Path(__file__).resolve().parents[2]
PULUMI = REPO / ".tools" / "bin" / "pulumi"

pytestmark = pytest.mark.skipif(not PULUMI.exists() or not (REPO / ".venv" / "bin" / "python").exists(),
                                reason="needs the engine and venv of `make setup`")

PROGRAM = '''
import atexit, os, threading, time
import pulumi

out = os.environ["TEST_OUT"]
if os.environ.get("TEST_FAST") == "1":
    os.environ["SANDO_EXIT_FAST"] = "1"


class Freed:  # freed by the interpreter's last step, which clears every module
    def __init__(self):
        self.fd, self.write = os.open(out + ".freed", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), os.write

    def __del__(self):
        self.write(self.fd, b"freed")


pulumi.kept = Freed()
atexit.register(lambda: open(out + ".atexit", "w").write("called"))


def work():  # a thread still at work when the program's code is done
    time.sleep(0.3)
    open(out + ".thread", "w").write("joined")


threading.Thread(target=work).start()
pulumi.export("said", "hello")
if os.environ.get("TEST_WAIT") == "1":  # stopped by the engine's SIGINT while at work
    open(out + ".pid", "w").write(str(os.getpid()))
    time.sleep(60)
'''


@pytest.fixture
def project(tmp_path):
    work, engine_env = scratch_project(tmp_path, "exitfast", PROGRAM, PULUMI, REPO / ".venv")
    env = {**os.environ, **engine_env}
    subprocess.run([str(PULUMI), "stack", "init", "t", "--non-interactive"], cwd=work, env=env, check=True,
                   capture_output=True)
    return work, env


@pytest.mark.parametrize("fast", ["1", "0"])
def test_a_program_that_asks_ends_without_freeing_its_modules_and_loses_nothing(project, tmp_path, fast):
    work, env = project
    out = tmp_path / f"out-{fast}"
    res = subprocess.run([str(PULUMI), "up", "--yes", "--skip-preview", "--non-interactive", "-s", "t"], cwd=work,
                         env={**env, "TEST_OUT": str(out), "TEST_FAST": fast}, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert Path(f"{out}.thread").read_text() == "joined" and Path(f"{out}.atexit").read_text() == "called"
    assert Path(f"{out}.freed").read_text() == ("" if fast == "1" else "freed")


def test_the_engine_s_sigint_ends_a_program_at_once_and_quietly(project, tmp_path):
    """The engine ends the language host's process group (the program in it) with SIGINT when a
    resource failed or on Ctrl-C: the program ends then, without a KeyboardInterrupt traceback."""
    work, env = project
    out = tmp_path / "out"
    run = subprocess.Popen([str(PULUMI), "up", "--yes", "--skip-preview", "--non-interactive", "-s", "t"], cwd=work,
                           env={**env, "TEST_OUT": str(out), "TEST_WAIT": "1"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    pid = Path(f"{out}.pid")
    end = time.monotonic() + 60
    while not pid.exists() and time.monotonic() < end:
        time.sleep(0.05)
    os.kill(int(pid.read_text()), signal.SIGINT)
    said, _ = run.communicate(timeout=30)  # not the program's 60 s sleep
    assert run.returncode != 0, said
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said


WARM_PROGRAM = """# sando-warm: helper json
import os, sys
import pulumi
import helper

out = os.environ["TEST_OUT"]
with open(out, "a") as fh:
    fh.write(f"{os.getpid()} {os.getppid()} {helper.LOADED_BY} {sys.modules['helper'].__file__}\\n")
if os.environ.get("TEST_FAIL"):
    raise RuntimeError("the program's own error")
pulumi.export("said", helper.WORD)
"""


def _zygotes(warm: str) -> list[int]:
    from tests.support import provider_host

    return provider_host().zy.zygotes("program", float(warm))


@pytest.fixture
def warm():
    value = f"{280 + os.getpid() % 9}.25"
    yield value
    from tests.support import provider_host

    provider_host().zy.stop_all("program", float(value))


def test_a_program_that_asks_starts_warm_and_an_edit_of_its_modules_gets_a_new_zygote(project, tmp_path, warm):
    work, env = project
    (work / "__main__.py").write_text(WARM_PROGRAM)
    (work / "helper.py").write_text("import os\nLOADED_BY = os.getpid()\nWORD = 'one'\n")
    out = tmp_path / "runs"
    env = {**env, "TEST_OUT": str(out), "SANDO_KEEP_WARM": warm}

    def up(**extra):
        return subprocess.run([str(PULUMI), "up", "--yes", "--skip-preview", "--non-interactive", "-s", "t"], cwd=work,
                              env={**env, **extra}, capture_output=True, text=True, timeout=120)

    for _ in range(2):
        res = up()
        assert res.returncode == 0, res.stdout + res.stderr
    (zygote,) = _zygotes(warm)
    runs = [line.split() for line in out.read_text().splitlines()]
    # each run: a child of the zygote, which had loaded the program's module (not the run)
    assert [(int(ppid), int(loaded)) for _, ppid, loaded, _ in runs] == [(zygote, zygote)] * 2
    assert runs[0][3] == str(work / "helper.py") and runs[0][0] != runs[1][0]
    assert Path(f"/proc/{runs[0][0]}").exists() is False  # the run's process is gone
    # the program's own failure: said as before, and the run fails
    res = up(TEST_FAIL="1")
    assert res.returncode != 0 and "RuntimeError: the program's own error" in res.stdout + res.stderr
    # an edited module: a new zygote loads it
    time.sleep(0.01)
    (work / "helper.py").write_text("import os\nLOADED_BY = os.getpid()\nWORD = 'two'\n")
    res = up()
    assert res.returncode == 0 and "two" in res.stdout, res.stdout + res.stderr
    last = out.read_text().splitlines()[-1].split()
    assert int(last[1]) == int(last[2]) != zygote and int(last[1]) in _zygotes(warm)


def test_a_program_that_does_not_ask_or_a_cold_start_runs_in_the_language_host_s_child(project, tmp_path, warm):
    work, env = project
    out = tmp_path / "runs"
    (work / "helper.py").write_text("import os\nLOADED_BY = os.getpid()\nWORD = 'one'\n")
    for program, extra in ((WARM_PROGRAM.split("\n", 1)[1], {}), (WARM_PROGRAM, {"SANDO_KEEP_WARM": "0"})):
        (work / "__main__.py").write_text(program)
        res = subprocess.run([str(PULUMI), "up", "--yes", "--skip-preview", "--non-interactive", "-s", "t"], cwd=work,
                             env={**env, "TEST_OUT": str(out), "SANDO_KEEP_WARM": warm, **extra}, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        pid, _, loaded, _ = out.read_text().splitlines()[-1].split()
        assert pid == loaded  # the program's own process loaded its module
    assert _zygotes(warm) == []


def test_only_the_newest_program_zygotes_are_kept(warm):
    """Each project directory (a test makes hundreds) gets a zygote of its own: a user keeps the 4
    newest (~65 MB each); what an ended one forked runs on."""
    from tests.support import provider_host

    zy = provider_host().zy
    fakes = []
    for i in range(5):  # started a few clock ticks apart: newest is by start time (pids wrap at 32768 here)
        fakes.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--zygote",
                                       f"sando-program-{os.geteuid()}-{i:016x}-{warm}"]))
        time.sleep(0.05)
    child = subprocess.Popen([sys.executable, "-c", "open('/proc/self/comm', 'w').write('sando-child'); "
                              "import time; time.sleep(60)", "--zygote", f"sando-program-{os.geteuid()}-{9:016x}-{warm}"])
    try:
        time.sleep(0.3)
        assert sorted(zy.zygotes("program", float(warm))) == sorted(p.pid for p in fakes)
        zy._trim("program", float(warm), 3)
        assert [p.wait(timeout=10) for p in fakes[:2]] == [-15, -15]
        assert all(p.poll() is None for p in fakes[2:]) and child.poll() is None
    finally:
        for p in [*fakes, child]:
            p.kill()
