"""Secrets (the SSH private key, the service token) never appear in a repr or in an exception's
text: not in ssh.Conn, not in the config models, not in the errors sando raises when a key cannot
be used (paramiko's own text is not passed on: it may quote the key). The end-to-end check, a
forced failure through the real engine with SANDO_DEBUG=1, is tests/e2e/test_secrets.py."""

from __future__ import annotations

import subprocess
import traceback

import pytest

from sando_components import ssh
from sando_components.config import load
from sando_components.errors import ConfigError
from sando_components.providers.base import conn_of

TOKEN = "tok-" + "5ecre7" * 6


def body_lines(private: str) -> list[str]:
    """The base64 lines of a private key (what a leak would show)."""
    return [line for line in private.splitlines() if line and not line.startswith("-----")]


def leaks(text: str, private: str) -> list[str]:
    return [line for line in body_lines(private) if line in text]


def test_conn_repr_and_pool_key_hold_no_key(ed25519_key):
    public, private = ed25519_key
    conn = conn_of({"connection": {"host": "10.0.0.1", "port": 22, "user": "root", "hostKey": public},
                    "privateKey": private, "node": "node1"})
    assert conn.private_key == private  # kept in memory for the connection
    for text in (repr(conn), str(conn), repr(ssh._key(conn)), repr([conn]), repr({"c": conn})):
        assert leaks(text, private) == [], text
    assert "node1" in repr(conn) and "10.0.0.1" in repr(conn)


def test_config_models_hold_secrets_as_secret_str(node_raw):
    raw, private = node_raw
    cfg = load({**raw, "sando:cliServiceToken": TOKEN, "sando:restartWarningSeconds": "30"},
               {"sando:sshPrivateKey", "sando:cliServiceToken"})
    assert cfg.cli_service_token.get_secret_value() == TOKEN
    for text in (repr(cfg), str(cfg), repr(cfg.model_dump()), cfg.model_dump_json()):
        assert TOKEN not in text and leaks(text, private) == []


def test_a_badly_typed_secret_is_not_quoted_in_the_error(node_raw):
    raw, _ = node_raw
    with pytest.raises(ConfigError) as exc:
        load({**raw, "sando:cliServiceToken": {"token": TOKEN}}, {"sando:sshPrivateKey", "sando:cliServiceToken"})
    assert str(exc.value) == "sando:cliServiceToken: must be text"


@pytest.fixture
def node_raw(ed25519_key):
    public, private = ed25519_key
    raw = {"sando:nodes": '[{"name": "node1", "host": "10.0.0.1", "hostKey": "%s"}]' % public,
           "sando:version": "v1", "sando:source": '{"repo": "/srv/repo"}', "sando:sshPrivateKey": private,
           "sando:bootstrap": '{"ref": "main"}'}
    return raw, private


def _passphrase_key(tmp_path) -> str:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(key)], check=True)
    return key.read_text()


@pytest.mark.parametrize("kind", ["truncated", "passphrase", "garbage"])
def test_an_unusable_key_is_refused_without_quoting_it(kind, ed25519_key, tmp_path):
    _, private = ed25519_key
    text = {"truncated": "\n".join(private.splitlines()[:3] + private.splitlines()[-1:]) + "\n",
            "passphrase": _passphrase_key(tmp_path) if kind == "passphrase" else "",
            "garbage": "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n"
                       "-----END OPENSSH PRIVATE KEY-----\n"}[kind]
    with pytest.raises(ssh.RemoteError) as exc:
        ssh._load_private_key(text)
    shown = "".join(traceback.format_exception(exc.value))  # what SANDO_DEBUG=1 would print
    assert str(exc.value).startswith("sando:sshPrivateKey is not a private key sando can read")
    assert leaks(shown, text) == [] and exc.value.__context__ is None and exc.value.__cause__ is None
