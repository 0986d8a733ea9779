"""Pulumi.testnot.yaml and Pulumi.prod.yaml carry each tier's real settings (issue 10), and
their placeholders must be filled in before a deploy: the config check says which key.
testnot is the operator's own machine, a local node (issue 21); prod is reached over SSH."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sando_components.config import ConfigError, load

REPO = Path(__file__).resolve().parents[2]
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcoUnW1v6mHmCtsxmOzuNN9n0i3Zvmgj7MA/TxNhpm4"


def as_pulumi_passes_it(stack: str, **extra) -> tuple[dict, set]:
    """The stack file's `config:` as Pulumi hands it to the program: structured values as JSON,
    scalars as strings; plus the secrets an operator sets with --secret."""
    config = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    raw.update(extra)
    raw["sando:sshPrivateKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n"
    secrets = {"sando:sshPrivateKey"}
    if "sando:restartWarningSeconds" in raw:
        raw["sando:cliServiceToken"] = "token"
        secrets.add("sando:cliServiceToken")
    return raw, secrets


def with_host_key(stack: str) -> tuple[dict, set]:
    config = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())["config"]
    nodes = [dict(n, hostKey=HOST_KEY) for n in config["sando:nodes"]]
    return as_pulumi_passes_it(stack, **{"sando:nodes": json.dumps(nodes)})


def test_prod_warns_users_and_refuses_destructive_migrations():
    cfg = load(*with_host_key("prod"))
    assert cfg.restart_warning_seconds == 30 and cfg.restart_warning_on_failure == "warn"
    assert cfg.migrations.refuse_destructive is True and cfg.migrations.allow_destructive == ()
    assert cfg.health_check.expect_version is True and cfg.health_check.timeout_seconds == 60
    assert cfg.bin_names == ("makenotwork", "mnw-admin")


def test_testnot_neither_warns_nor_refuses():
    cfg = load(*as_pulumi_passes_it("testnot"))
    assert cfg.restart_warning_seconds == 0
    assert cfg.migrations.refuse_destructive is False
    assert cfg.bin_names == ("makenotwork", "mnw-admin")


def test_testnot_is_a_local_node_with_no_ssh_and_no_secret():
    config = yaml.safe_load((REPO / "Pulumi.testnot.yaml").read_text())["config"]
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    cfg = load(raw, set())  # no sando:sshPrivateKey: none is needed
    (node,) = cfg.nodes
    assert node.local and node.host is None and cfg.private_key(node) is None
    # the app's own pieces only: no sshd, fail2ban or firewall config on the operator's machine
    assert cfg.bootstrap.manage == ("caddyfile", "unit", "backup")


def test_prod_stays_ssh():
    (node,) = load(*with_host_key("prod")).nodes
    assert not node.local and node.host == "makenotwork.com"


def test_the_host_key_placeholder_must_be_filled_in():
    with pytest.raises(ConfigError, match=r"^sando:nodes\[0\]\.hostKey: is required"):
        load(*as_pulumi_passes_it("prod"))
