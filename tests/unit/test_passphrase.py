"""A real stack's secrets are not under the demo's public passphrase nor under none (issue 20.9)."""

from sando_components import passphrase


def test_public_or_missing_passphrase_is_refused_with_what_to_set(tmp_path):
    (tmp_path / "Pulumi.prod.yaml").write_text("encryptionsalt: v1:abc\nconfig:\n  sando:version: v1\n")
    said = passphrase.problem(tmp_path, "org/prod", {"PULUMI_CONFIG_PASSPHRASE": "sando-local"})
    assert said.startswith("stack prod: PULUMI_CONFIG_PASSPHRASE is 'sando-local', the demo's publicly known")
    assert "export PULUMI_CONFIG_PASSPHRASE='<your own>'" in said and "change-secrets-provider" in said
    assert passphrase.problem(tmp_path, "prod", {}).startswith("stack prod: no passphrase for its secrets")
    assert passphrase.problem(tmp_path, "prod", {"PULUMI_CONFIG_PASSPHRASE": ""}) is not None
    assert passphrase.problem(tmp_path, "prod", {"PULUMI_CONFIG_PASSPHRASE": "mine"}) is None
    assert passphrase.problem(tmp_path, "prod", {"PULUMI_CONFIG_PASSPHRASE_FILE": "/f"}) is None
    assert passphrase.problem(tmp_path, "prod", {"PULUMI_CONFIG_PASSPHRASE": "sando-local", "SANDO_DEMO": "1"}) is None


def test_a_kms_stack_needs_no_passphrase(tmp_path):
    (tmp_path / "Pulumi.prod.yaml").write_text("secretsprovider: awskms://alias/x\nencryptedkey: abc\n")
    assert passphrase.problem(tmp_path, "prod", {}) is None


def test_the_program_leaves_a_missing_passphrase_to_pulumi(tmp_path):
    """Pulumi prompts for it on a terminal, and then the program's environment has none."""
    assert passphrase.problem(tmp_path, "prod", {}, need=False) is None
    assert passphrase.problem(tmp_path, "prod", {"PULUMI_CONFIG_PASSPHRASE": "sando-local"}, need=False) is not None
