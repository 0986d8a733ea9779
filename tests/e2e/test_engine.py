"""The real engine (built by make setup) runs sando end to end against a real-systemd node;
destroy stops managing the node without taking anything the live service needs."""

from __future__ import annotations

import json
import os
import subprocess
import time

from tests.support import TOOLS, run_preview, run_up


def test_up_no_change_then_destroy_leaves_the_service_running(make_nodes, make_deploy):
    (node,) = make_nodes(1)
    d = make_deploy([node])
    version = d.stack.workspace.pulumi_command.version
    assert str(version) == "3.274.1"  # our stamped CLI, not some other pulumi on PATH
    assert d.stack.workspace.pulumi_command.command.startswith(str(TOOLS))

    _, planned = run_preview(d)
    assert planned.get("node1-host") == "create"
    assert not (node.release_root / "releases").exists()  # preview changes nothing

    res, changed = run_up(d)
    assert res.summary.result == "succeeded" and changed["node1-current-switch"] == "create"
    assert node.served()["version"] == "v1"
    res, changed = run_up(d)
    assert set(res.summary.resource_changes) == {"same"} and changed == {}

    log = []
    d.stack.destroy(color="never", on_output=log.append)
    said = "".join(log)
    # nothing the live service needs is removed, and sando says what it left
    for path in ("/etc/caddy/Caddyfile", "/etc/systemd/system/makenotwork.service", "/etc/cron.d/makenotwork-backup"):
        assert node.path(path).exists(), path
        assert path in said.split("node1: left ", 1)[1].split(" in place", 1)[0]
    assert "releases under /opt/makenotwork/releases left in place" in said
    assert os.readlink(node.release_root / "current") == "releases/v1"
    assert node.served()["version"] == "v1"
    node.exec("systemctl", "restart", "makenotwork")
    assert node.exec("systemctl", "is-enabled", "makenotwork").stdout.strip() == "enabled"  # survives a reboot
    deadline = time.monotonic() + 10
    while True:
        try:
            assert node.served()["version"] == "v1"
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    d.stack.workspace.remove_stack(d.name)
    assert d.name not in [s.name for s in d.stack.workspace.list_stacks()]


def test_ssh_agent_instead_of_a_key_in_config(make_nodes, make_deploy, tmp_path):
    (node,) = make_nodes(1)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if sock.exists():
                break
            time.sleep(0.05)
        subprocess.run(["ssh-add", node.privateKeyPath], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                       check=True, capture_output=True)
        d = make_deploy([node])
        d.stack.workspace.env_vars["SSH_AUTH_SOCK"] = str(sock)
        d.stack.remove_config("sando:sshPrivateKey")
        d.set(sshAgent=True)
        res, _ = run_up(d)
        assert res.summary.result == "succeeded" and node.served()["version"] == "v1"
        assert "sando:sshPrivateKey" not in d.cli(["config"]).stdout  # no key in config at all
        key_body = open(node.privateKeyPath).read().splitlines()[1]
        assert key_body not in d.cli(["stack", "export", "--show-secrets"]).stdout
    finally:
        agent.terminate()
        agent.wait()


def test_insecure_skip_host_key_check_end_to_end(make_nodes, make_deploy):
    (node,) = make_nodes(1)
    d = make_deploy([node])
    d.set(nodes=[{k: v for k, v in node.config().items() if k != "hostKey"}])
    (error,) = d.errors(d.up_fails())
    assert error.startswith("sando:nodes[0].hostKey: is required")
    d.set(insecureSkipHostKeyCheck=True)
    run_up(d)
    assert node.served()["version"] == "v1"


def test_language_host_finds_plugins_without_starting_pip(tmp_path):
    """The language host is built with engine/python/language-host.patch: it lists the venv's
    distributions with importlib.metadata instead of `python -m pip list` (0.4 s per program
    run). Plugin discovery must still work: a venv without pip (the unpatched host fails there)
    holding a package that declares a resource plugin in pulumi-plugin.json."""
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python3*/site-packages")
    (site / "pulumi_fakecloud").mkdir()
    (site / "pulumi_fakecloud" / "__init__.py").write_text("")
    (site / "pulumi_fakecloud" / "pulumi-plugin.json").write_text(
        '{"resource": true, "name": "fakecloud", "version": "1.2.3"}')
    dist = site / "pulumi_fakecloud-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pulumi-fakecloud\nVersion: 1.2.3\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: plugins\nruntime: python\n")
    (project / "__main__.py").write_text("")
    # listed only if installed: a stand-in plugin in the private PULUMI_HOME (never started)
    plugin = tmp_path / "home" / "plugins" / "resource-fakecloud-v1.2.3" / "pulumi-resource-fakecloud"
    plugin.parent.mkdir(parents=True)
    plugin.write_text("#!/bin/sh\nexit 1\n")
    plugin.chmod(0o755)
    env = {**os.environ, "PATH": f"{TOOLS / 'bin'}:{os.environ['PATH']}", "SANDO_VENV": str(venv),
           "PULUMI_HOME": str(tmp_path / "home"), "PULUMI_SKIP_UPDATE_CHECK": "true"}
    res = subprocess.run([str(TOOLS / "bin" / "pulumi"), "plugin", "ls", "--project", "--json"], cwd=project,
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert any(p["name"] == "fakecloud" and p["version"] == "1.2.3" for p in json.loads(res.stdout)), res.stdout
