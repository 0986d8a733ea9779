"""Pulumi.testnot.yaml and Pulumi.prod.yaml carry each tier's real settings (issue 10), and
their placeholders must be filled in before a deploy: the config check says which key.
testnot is the operator's own machine, a local node (issue 21); prod is reached over SSH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sando_components.config import ConfigError, load
from unit_helpers import PRIVATE_KEY

REPO = Path(__file__).resolve().parents[2]
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcoUnW1v6mHmCtsxmOzuNN9n0i3Zvmgj7MA/TxNhpm4"


def as_pulumi_passes_it(stack: str, secrets: bool = True, **extra) -> tuple[dict, set]:
    """The stack file's `config:` as Pulumi hands it to the program: structured values as JSON,
    scalars as strings; plus (secrets=True) the secrets an operator sets with --secret."""
    config = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    raw.update(extra)
    if not secrets:
        return raw, set()
    raw["sando:sshPrivateKey"] = PRIVATE_KEY
    keys = {"sando:sshPrivateKey"}
    if "sando:restartWarningSeconds" in raw:
        raw["sando:cliServiceToken"] = "token"
        keys.add("sando:cliServiceToken")
    return raw, keys


def filled_in(stack: str) -> tuple[dict, set]:
    """The tier file with its placeholders filled in, as an operator does."""
    config = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]
    nodes = [n if n.get("local") else dict(n, host="192.0.2.10", hostKey=HOST_KEY) for n in config["sando:nodes"]]
    bootstrap = {**config["sando:bootstrap"], "ref": "host-7"}  # prod: what sando promote sets
    return as_pulumi_passes_it(stack, **{"sando:nodes": json.dumps(nodes),
                                         "sando:source": json.dumps({**config["sando:source"], "repo": "/srv/mnw"}),
                                         "sando:bootstrap": json.dumps(bootstrap)})


def test_prod_warns_users_and_refuses_destructive_migrations():
    cfg = load(*filled_in("prod"))
    assert cfg.restart_warning_seconds == 30 and cfg.restart_warning_on_failure == "warn"
    assert cfg.migrations.refuse_destructive is True and cfg.migrations.allow_destructive == ()
    assert cfg.health_check.expect_version is True and cfg.health_check.timeout_seconds == 60
    assert cfg.bin_names == ("makenotwork", "mnw-admin")
    assert cfg.verify_against == "testnot"  # a manual pin runs testnot's bytes or is refused (issue 22.1)


def test_testnot_neither_warns_nor_refuses():
    cfg = load(*filled_in("testnot"))
    assert cfg.restart_warning_seconds == 0 and cfg.verify_against is None
    assert cfg.migrations.refuse_destructive is False
    assert cfg.bin_names == ("makenotwork", "mnw-admin")


@pytest.mark.parametrize("stack", ["testnot", "prod"])
def test_every_placeholder_and_missing_setting_is_said_at_once(stack):
    """A tier file as committed, no secret set: one error lists every setting still to make, each
    with its key and how to set it."""
    with pytest.raises(ConfigError) as exc:
        load(*as_pulumi_passes_it(stack, secrets=False))
    lines = str(exc.value).splitlines()
    expected = [
        f"sando:source.repo: still the tier file's placeholder <path of the makenotwork server checkout>: "
        "pulumi config set --path 'sando:source.repo' PATH-OF-THE-SERVER-CHECKOUT",
    ] + ([
        f"sando:nodes[0].host: still the tier file's placeholder <{stack} host address>: "
        "pulumi config set --path 'sando:nodes[0].host' ADDRESS",
        "sando:sshPrivateKey: is required (or sando:sshAgent: true): "
        "pulumi config set --secret sando:sshPrivateKey < KEYFILE",
        "sando:nodes[0].hostKey: is required: every connection pins the host key: pulumi config set --path "
        "'sando:nodes[0].hostKey' \"$(ssh-keyscan -t ed25519 HOST | cut -d' ' -f2-)\" "
        "(sando:insecureSkipHostKeyCheck=true is for throwaway local nodes only)",
        "sando:cliServiceToken: is required (as a secret) when sando:restartWarningSeconds > 0: "
          "pulumi config set --secret sando:cliServiceToken < TOKENFILE",
          "sando:bootstrap.ref: still the tier file's placeholder <host-config commit; sando promote sets it>: "
          "pulumi config set --path 'sando:bootstrap.ref' TAG-OR-COMMIT"] if stack == "prod" else [])
    if len(expected) == 1:  # testnot (a local node): only the checkout's path is left to say
        assert lines == expected
    else:
        assert lines[0] == f"{len(expected)} problems in the stack configuration:"
        assert sorted(line.strip() for line in lines[1:]) == sorted(expected)


def test_tiers_name_the_host_config_ref_and_check_health_through_caddy():
    config = {s: yaml.safe_load((REPO / f"Pulumi.{s}.yaml").read_text())["config"] for s in ("testnot", "prod")}
    assert config["testnot"]["sando:bootstrap"]["ref"] == "main"  # testnot follows the server repo's main
    assert config["prod"]["sando:bootstrap"]["ref"].startswith("<")  # prod: only what sando promote carries
    for s in ("testnot", "prod"):
        assert load(*filled_in(s)).health_check.caddy_url == "http://127.0.0.1/"


def test_testnot_is_a_local_node_with_no_ssh_and_no_secret():
    config = yaml.safe_load((REPO / "Pulumi.testnot.yaml").read_text())["config"]
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    raw["sando:source"] = json.dumps({"repo": "/srv/mnw"})
    cfg = load(raw, set())  # no sando:sshPrivateKey: none is needed
    (node,) = cfg.nodes
    assert node.local and node.host is None and cfg.private_key(node) is None
    # the app's own pieces only: no sshd, fail2ban or firewall config on the operator's machine
    assert cfg.bootstrap.manage == ("caddyfile", "unit", "backup")


def test_prod_stays_ssh():
    (node,) = load(*filled_in("prod")).nodes
    assert not node.local and node.host == "192.0.2.10"
