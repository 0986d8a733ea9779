"""Shared fixtures of sando's fast unit tests (no network, no SSH, no pulumi CLI).

Run: .venv/bin/python -m pytest -q tests/unit
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for p in (REPO, HERE):  # sando_components, and this dir's unit_helpers
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from unit_helpers import GIT_ENV  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Keep git, the build cache and Pulumi's env config away from the developer's own."""
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)
    # a tmp dir that is not a repo must not be found inside some enclosing repo
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("SANDO_CACHE_DIR", str(tmp_path / "sando-cache-env"))
    for k in ("PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="session")
def ed25519_key():
    """A real ed25519 key pair: (OpenSSH public key line, OpenSSH private key text)."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH).decode()
    private = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()).decode()
    return public, private


@pytest.fixture
def provider_node(tmp_path, monkeypatch):
    """A FakeNode that sando's providers reach through ssh.run, run locally (no SSH); the
    providers' per-process cache of what nodes hold starts empty."""
    from fakenode import FakeNode

    from sando_components import ssh
    from sando_components.providers import base

    node = FakeNode(tmp_path / "node")
    monkeypatch.setattr(ssh, "run", node.ssh_run)
    monkeypatch.setattr(base, "_states", {})
    monkeypatch.setattr(base, "_read_failed", {})
    return node
