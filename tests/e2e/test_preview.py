"""What `pulumi preview` says before anything is deployed (issue 19.4), through the real engine:
every missing or placeholder setting at once, each with its key and how to set it; credentials that
cannot work (an unreadable key, an agent that is not there); and a node that cannot be reached or
whose host key no longer matches, said once for the node, not once per resource."""

from __future__ import annotations

import subprocess
from pathlib import Path

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPcGKl1j3m9c0bq1pvS8Kq0jXaLm9j6sVn0x0ZB2vZyT"


def preview(d, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = d.cli(["preview"], check=False, env=env)
    return res.returncode, res.stdout + res.stderr


def test_every_missing_and_placeholder_setting_in_one_preview(make_nodes, make_deploy):
    (node,) = make_nodes(1)
    d = make_deploy([node])
    d.set(nodes=[{"name": "node1", "host": "<prod host address>"}, {"name": "node2", "host": node.host}],
          source={"repo": "<path of the makenotwork server checkout>"}, restartWarningSeconds=30)
    d.unset("sshPrivateKey")
    code, out = preview(d)
    assert code != 0
    (error,) = d.errors(out)
    assert error == "6 problems in the stack configuration:", out
    said = out.split("Diagnostics:", 1)[1].split("6 problems in the stack configuration:", 1)[1].split("\n\n", 1)[0]
    lines = sorted(line.strip() for line in said.strip().splitlines())
    assert lines == sorted([
        "sando:nodes[0].host: still the tier file's placeholder <prod host address>: "
        "pulumi config set --path 'sando:nodes[0].host' ADDRESS",
        "sando:source.repo: still the tier file's placeholder <path of the makenotwork server checkout>: "
        "pulumi config set --path 'sando:source.repo' PATH-OF-THE-SERVER-CHECKOUT",
        "sando:sshPrivateKey: is required (or sando:sshAgent: true): "
        "pulumi config set --secret sando:sshPrivateKey < KEYFILE",
        *[f"sando:nodes[{i}].hostKey: is required: every connection pins the host key: pulumi config set --path "
          f"'sando:nodes[{i}].hostKey' \"$(ssh-keyscan -t ed25519 HOST | cut -d' ' -f2-)\" "
          "(sando:insecureSkipHostKeyCheck=true is for throwaway local nodes only)" for i in (0, 1)],
        "sando:cliServiceToken: is required (as a secret) when sando:restartWarningSeconds > 0: "
        "pulumi config set --secret sando:cliServiceToken < TOKENFILE",
    ]), out


def test_an_unreadable_key_fails_preview(make_nodes, make_deploy, tmp_path):
    (node,) = make_nodes(1)
    d = make_deploy([node])
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(tmp_path / "k")], check=True)
    for text, words in (("not a key at all\n", "sando:sshPrivateKey: is not a private key sando can read"),
                        ((tmp_path / "k").read_text(), "sando:sshPrivateKey: is protected by a passphrase")):
        d.set_secret("sshPrivateKey", text)
        code, out = preview(d)
        (error,) = d.errors(out)
        assert code != 0 and error.startswith(words), out
    assert not (node.release_root / "releases").exists()


def test_ssh_agent_without_an_agent_fails_preview_saying_so(make_nodes, make_deploy):
    (node,) = make_nodes(1)
    d = make_deploy([node])
    d.unset("sshPrivateKey")
    d.set(sshAgent=True)
    code, out = preview(d, env={"SSH_AUTH_SOCK": ""})
    (error,) = d.errors(out)
    assert code != 0 and error.startswith("sando:sshAgent: is true but SSH_AUTH_SOCK is not set: no SSH agent"), out
    assert "host and port" not in out


def test_a_wrong_host_key_fails_the_first_preview_once(make_nodes, make_deploy):
    nodes = make_nodes(2)
    d = make_deploy(nodes)
    d.set(nodes=[nodes[0].config() | {"hostKey": OTHER_KEY}, nodes[1].config()])
    code, out = preview(d)
    assert code != 0
    assert d.errors(out) == [f"node1 ({nodes[0].user}@{nodes[0].host}:22): the host key does not match the one "
                             "pinned in sando:nodes[].hostKey (if the host was reinstalled, pin its new key: "
                             "ssh-keyscan -t ed25519 HOST)"], out
    assert "to create" not in out.split("Diagnostics:")[0] or "node1-release" not in out, out


def test_a_node_that_does_not_answer_fails_preview_once_and_up_before_any_change(make_nodes, make_deploy):
    (node,) = make_nodes(1)
    d = make_deploy([node])
    d.set(nodes=[node.config() | {"port": 2222}])  # nothing listens there
    msg = (f"node1 (root@{node.host}:2222): cannot connect: Connection refused (check the node's host and port in "
           "sando:nodes and that sshd runs there)")
    code, out = preview(d)
    assert code != 0 and d.errors(out) == [msg], out
    assert d.errors(d.up_fails()) == [msg]
    assert not (node.release_root / "releases").exists()
    assert not Path(node.path("/etc/systemd/system/makenotwork.service")).exists()
