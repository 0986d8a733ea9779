"""sando's patch to the script the language host runs programs with (engine/python/exec.patch),
through the real engine (.tools/bin/pulumi, a file backend): a program that sets SANDO_EXIT_FAST=1
(sando's __main__.py does) ends as the interpreter would, but without freeing its modules; any
other program exits as before. Skipped without `make setup`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import textwrap
from pathlib import Path

import pytest

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
    work = tmp_path / "project"
    work.mkdir()
    (work / "Pulumi.yaml").write_text(textwrap.dedent(f"""\
        name: exitfast
        runtime:
          name: python
          options:
            virtualenv: {REPO / '.venv'}
        """))
    (work / "__main__.py").write_text(PROGRAM)
    (tmp_path / "state").mkdir()
    env = {**os.environ, "PATH": f"{PULUMI.parent}:{os.environ['PATH']}", "PULUMI_HOME": str(tmp_path / "home"),
           "PULUMI_BACKEND_URL": f"file://{tmp_path / 'state'}", "PULUMI_CONFIG_PASSPHRASE": "scratch",
           "PULUMI_SKIP_UPDATE_CHECK": "true", "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true"}
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
