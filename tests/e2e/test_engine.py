"""Issue 2: the real engine (built by make setup) runs sando end to end against a real sshd."""

import os
import subprocess
import time

from tests.support import TOOLS, run_preview, run_up


def test_up_then_no_changes_then_destroy(make_nodes, make_deploy):
    (node,) = make_nodes(1)
    d = make_deploy([node])

    version = d.stack.workspace.pulumi_command.version
    assert str(version) == "3.274.1"  # our stamped CLI, not some other pulumi on PATH
    assert d.stack.workspace.pulumi_command.command.startswith(str(TOOLS))

    _, planned = run_preview(d)
    assert planned.get("node1-caddyfile") == "create"
    assert not node.path("/etc/caddy/Caddyfile").exists()  # preview changes nothing

    res, changed = run_up(d)
    assert res.summary.result == "succeeded"
    assert changed["node1-caddyfile"] == "create"
    assert node.path("/etc/caddy/Caddyfile").is_file()
    assert node.served()["version"] == "v1"

    res, changed = run_up(d)
    assert res.summary.resource_changes.get("same", 0) > 0
    assert set(res.summary.resource_changes) == {"same"}, res.summary.resource_changes
    assert changed == {}

    d.stack.destroy(color="never")
    assert not node.path("/etc/caddy/Caddyfile").exists()  # bootstrap files are uninstalled
    # releases and the live pointer are kept on destroy: nothing is ever lost
    assert (node.release_root / "current").is_symlink()
    d.stack.workspace.remove_stack(d.name)
    assert d.name not in [s.name for s in d.stack.workspace.list_stacks()]


def test_ssh_agent_instead_of_a_key_in_config(make_nodes, make_deploy, tmp_path, engine):
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
        engine_with_agent = {**engine, "SSH_AUTH_SOCK": str(sock)}
        d = make_deploy([node])
        d.stack.workspace.env_vars.update(engine_with_agent)
        d.stack.remove_config("sando:sshPrivateKey")
        d.set(sshAgent=True)
        res, changed = run_up(d)
        assert res.summary.result == "succeeded" and node.served()["version"] == "v1"
        assert "sando:sshPrivateKey" not in d.cli(["config"]).stdout  # no key in config at all
        key_body = open(node.privateKeyPath).read().splitlines()[1]
        assert key_body not in d.cli(["stack", "export", "--show-secrets"]).stdout
    finally:
        agent.terminate()
