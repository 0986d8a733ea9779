"""diagnostics.Progress: a resource's latest status on the interactive console (issue 19.5)."""

from sando_components import diagnostics


def said_by(monkeypatch, interactive: bool) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(diagnostics, "interactive", lambda: interactive)
    monkeypatch.setattr(diagnostics, "log", lambda level, message, urn=None, ephemeral=False: said.append(message))
    return said


def test_a_new_steps_first_status_shows_at_once_then_at_most_once_a_second(monkeypatch):
    said = said_by(monkeypatch, interactive=True)
    p = diagnostics.Progress(urn="urn:x")
    p.say("build", "building v5: Compiling a (1/2)")
    p.say("build", "building v5: Compiling b (2/2)")  # within the second: not said
    p.say("upload", "sending v5: 4 KB sent")  # the next step, right after: said
    p.say("upload", "sending v5: 8 KB sent")
    p.say("switch", "switched to v5", force=True)
    assert said == ["building v5: Compiling a (1/2)", "sending v5: 4 KB sent", "switched to v5"]


def test_a_log_gets_the_first_status_of_each_step_only(monkeypatch):
    said = said_by(monkeypatch, interactive=False)
    p = diagnostics.Progress(urn="urn:x")
    for step, message in [("build", "b1"), ("build", "b2"), ("upload", "u1"), ("upload", "u2")]:
        p.say(step, message)
    assert said == ["b1", "u1"]


def test_build_progress_reads_cargos_bar_and_its_plain_lines():
    from sando_components.build import build_progress
    assert build_progress("    Building [=====>    ] 12/57: serde, tokio") == "Compiling serde (12/57)"
    assert build_progress("   Compiling makenotwork v0.1.0 (/src/server)") == "Compiling makenotwork"
    assert build_progress("    Finished release [optimized] target(s) in 0.31s") is None
    assert build_progress("warning: unused variable") is None


def test_skips_preview_reads_the_pulumi_command_line():
    """Issue 19.3: a node's failure in an up's own diff is recorded only when that up skips its preview."""
    def argv(*args: str) -> list[bytes]:
        return [b"/x/.tools/bin/pulumi", *(a.encode() for a in args), b""]

    assert diagnostics.skips_preview(argv("up", "--yes", "--skip-preview", "--stack", "t1"))
    assert diagnostics.skips_preview(argv("up", "-yf"))
    assert diagnostics.skips_preview(argv("update", "--skip-preview=true"))
    assert not diagnostics.skips_preview(argv("up", "--yes", "--stack", "t1"))  # it previews first
    assert not diagnostics.skips_preview(argv("preview", "--stack", "t1"))
    assert not diagnostics.skips_preview(argv("up", "--yes", "--skip-preview=false"))
    assert not diagnostics.skips_preview([])  # no pulumi above this process: say everything at once


def test_the_pulumi_cli_is_found_from_the_launcher_of_a_warm_provider(tmp_path, monkeypatch):
    """A provider forked by the warm start's zygote is not the CLI's grandchild: it looks from its
    launcher (SANDO_PLUGIN_PID, set by engine/bin/sando-provider-host.py) instead of its parent."""
    import subprocess
    import time

    fake = tmp_path / "pulumi"
    fake.symlink_to("/bin/sh")  # a process whose argv[0] is .../pulumi, with a child (the launcher)
    proc = subprocess.Popen([str(fake), "-c", "sleep 30 & echo $!; wait", "up", "--skip-preview"],
                            stdout=subprocess.PIPE, text=True)
    try:
        launcher = int(proc.stdout.readline())
        for _ in range(500):  # until the background child is sleep, no longer a copy of the shell
            if open(f"/proc/{launcher}/cmdline", "rb").read().startswith(b"sleep"):
                break
            time.sleep(0.01)
        monkeypatch.delenv("SANDO_PLUGIN_PID", raising=False)
        assert diagnostics._pulumi_process() is None  # this test's own parents: no pulumi
        monkeypatch.setenv("SANDO_PLUGIN_PID", str(launcher))
        found = diagnostics._pulumi_process()
        assert found is not None and found[0] == proc.pid and diagnostics.skips_preview()
    finally:
        proc.kill()
        subprocess.run(["pkill", "-P", str(proc.pid)], check=False)
        proc.wait()
