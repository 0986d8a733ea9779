"""engine/bin's plugin launchers: the plugins they start take SIGINT as the engine means it.

A job a shell starts in the background (a CI runner's step, `cmd &`, nohup) starts with SIGINT
ignored, and a launched plugin inherits that. The engine stops a plugin with SIGINT and kills it
only after 5 s: every pulumi command of such a job took 5 s longer (an empty program's up 0.7 s
in the foreground, 5.6 s in the background, measured)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHOW = "#!/bin/sh\ngrep '^SigIgn:' /proc/self/status\n"


def _ignored(launcher: str, tmp_path: Path) -> int:
    """The SigIgn mask of what `launcher` starts (a script standing in for the real plugin), the
    launcher itself started with SIGINT ignored."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(REPO / "engine" / "bin" / launcher, bin_dir / launcher)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for path in (bin_dir / "pulumi-language-python-host", venv / "bin" / "python"):
        path.write_text(SHOW)
        path.chmod(0o755)
    res = subprocess.run([str(bin_dir / launcher)], env={"SANDO_VENV": str(venv), "PATH": "/usr/bin:/bin"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                         capture_output=True, text=True, timeout=30, check=True)
    return int(res.stdout.split()[1], 16)


def test_the_language_host_starts_with_sigint_at_its_default(tmp_path):
    assert not _ignored("pulumi-language-python", tmp_path) & (1 << (signal.SIGINT - 1))


def test_the_provider_host_starts_with_sigint_at_its_default(tmp_path):
    assert not _ignored("pulumi-resource-pulumi-python", tmp_path) & (1 << (signal.SIGINT - 1))


def test_the_check_sees_an_ignored_sigint(tmp_path):
    """The test's own probe: without the launcher, the mask shows SIGINT ignored."""
    show = tmp_path / "show"
    show.write_text(SHOW)
    show.chmod(0o755)
    res = subprocess.run([str(show)], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                         capture_output=True, text=True, check=True)
    assert int(res.stdout.split()[1], 16) & (1 << (signal.SIGINT - 1))


def test_the_provider_host_loads_pulumi_automation_only_when_used():
    """The SDK's __init__ imports pulumi.automation (~30 ms of CPU each run), which a provider never
    uses: the host puts a stand-in in its place that loads it on first use (issue 24)."""
    import sys

    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('host', {str(REPO / 'engine' / 'bin' / 'sando-provider-host.py')!r})\n"
        "host = importlib.util.module_from_spec(spec); spec.loader.exec_module(host)\n"
        "import pulumi.dynamic, pulumi.runtime.proto.provider_pb2_grpc\n"
        "print('yaml' in sys.modules, 'pulumi.automation._local_workspace' in sys.modules)\n"
        "import pulumi\n"
        "print(pulumi.automation.LocalWorkspace.__name__, 'pulumi.automation._local_workspace' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.split("\n")[:2] == ["False False", "LocalWorkspace True"], res.stdout + res.stderr
