"""__main__.py run under pulumi.runtime.set_mocks: the wiring only. Which components and dynamic
children the program declares per node, their names, parents and dependencies, the inputs it
computes for them, and that secrets only travel as secrets. No engine, no SSH: dynamic providers
are only serialized and registered; the mocks echo inputs and invent nothing, and no assertion
reads a value a mock made up.
"""

from __future__ import annotations

import json
import runpy
import shutil
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pytest
from pulumi.runtime import mocks as pm
from pulumi.runtime import rpc, settings
from pulumi.runtime.stack import Stack

from sando_components.providers import host

from unit_helpers import commit_all, git, init_repo

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "__main__.py"
DEPLOY = REPO / "examples" / "makenotwork" / "server" / "deploy"
DYNAMIC = "pulumi-python:dynamic:Resource"
STACK_URN = "urn:pulumi:t::sando::pulumi:pulumi:Stack::sando-t"
NODE_CHILDREN = ["host"]  # one host-config resource per node (issue 18: fewer resources, one script)


# --- the mock engine ------------------------------------------------------------------------------


class RecordingMonitor(pm.MockMonitor):
    """The SDK's mock monitor, keeping every raw request (parent, dependencies, secret outputs)."""

    def __init__(self, mocks):
        super().__init__(mocks)
        self.registrations = []
        self.outputs = []
        self.invokes = []
        self.order = []  # ("register" | "outputs", name) as the requests came

    def RegisterResource(self, request):
        self.registrations.append(request)
        self.order.append(("register", request.name))
        return super().RegisterResource(request)

    def RegisterResourceOutputs(self, request):
        self.outputs.append(request)
        self.order.append(("outputs", request.urn.rsplit("::", 1)[-1]))
        return super().RegisterResourceOutputs(request)

    def Invoke(self, request):
        self.invokes.append(request)
        return super().Invoke(request)


class EchoMocks(pm.Mocks):
    """Every resource's state is its inputs: nothing invented (outputs stay unknown)."""

    def __init__(self):
        self.resources: dict[str, pm.MockResourceArgs] = {}

    def call(self, args):
        return {}

    def new_resource(self, args):
        self.resources[args.name] = args
        return f"{args.name}-id", dict(args.inputs)


@dataclass
class Run:
    monitor: RecordingMonitor
    mocks: EchoMocks
    exports: dict

    @property
    def regs(self) -> dict:
        return {r.name: r for r in self.monitor.registrations}

    def names(self, typ: str) -> set[str]:
        return {r.name for r in self.monitor.registrations if r.type == typ}

    def urn(self, name: str) -> str:
        (urn,) = [u for u in self.monitor.resources if u.rsplit("::", 1)[-1] == name]
        return urn

    def inputs(self, name: str) -> dict:
        return self.mocks.resources[name].inputs


def run_program(config: dict[str, str], secret_keys: list[str], mocks: EchoMocks | None = None) -> Run:
    mocks = mocks or EchoMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_all_config(config, secret_keys)
    settings.ROOT.set(object())  # not None: set_mocks makes no root Stack of its own (see program)
    # A preview: what the mocks do not return (a provider's outputs) stays unknown, as in a real
    # preview, instead of becoming None (which would drop it, and its dependencies, from the inputs).
    pulumi.runtime.set_mocks(mocks, project="sando", stack="t", preview=True, monitor=monitor,
                             organization="organization")
    run = Run(monitor, mocks, {})

    @pulumi.runtime.test
    def program():
        # a fresh root Stack, as the SDK's run_in_stack makes it: its outputs sent at the end (one
        # that set_mocks made would have sent them, empty, at once)
        settings.ROOT.set(None)
        root = Stack()
        try:
            runpy.run_path(str(MAIN), run_name="__sando_main__")
        finally:
            root._finish()
        run.exports.update(root.outputs)  # what the program exported, as given

    program()
    return run


@pytest.fixture(autouse=True)
def _reset_pulumi():
    yield
    pulumi.runtime.set_all_config({}, [])
    settings.ROOT.set(None)


def declared() -> list[str]:
    return [r.name for r in settings.SETTINGS.monitor.registrations if r.type != "pulumi:pulumi:Stack"]


# --- the program's inputs --------------------------------------------------------------------------


@pytest.fixture
def server_repo(tmp_path) -> dict:
    """The server repo as sando sees it: deploy files from the example, two migrations, tag v1."""
    repo = init_repo(tmp_path / "makenotwork")
    shutil.copytree(DEPLOY, repo / "server" / "deploy")
    (repo / "server" / "migrations").mkdir()
    (repo / "server" / "migrations" / "0001_init.sql").write_text("CREATE TABLE notes (id INTEGER);")
    (repo / "server" / "migrations" / "0002_drop_tags.sql").write_text("DROP TABLE tags;")
    commit = commit_all(repo, "server v1")
    git(repo, "tag", "v1")
    return {"path": repo, "commit": commit}


@pytest.fixture
def config(server_repo, ed25519_key):
    public, private = ed25519_key

    def make(nodes=("n1", "n2"), **extra: str) -> tuple[dict, list[str]]:
        node_list = [{"name": "n1", "host": "127.0.0.2", "port": 2222, "user": "deploy", "hostKey": public}]
        if "n2" in nodes:
            node_list.append({"name": "n2", "host": "127.0.0.3", "port": 2223, "user": "deploy", "hostKey": public,
                              "appUrl": "http://127.0.0.1:41002"})
        if "n3" in nodes:
            node_list.append({"name": "n3", "host": "127.0.0.4", "hostKey": public})
        raw = {
            "sando:nodes": json.dumps(node_list),
            "sando:version": "v1",
            "sando:source": json.dumps({"repo": str(server_repo["path"])}),
            "sando:binNames": '["makenotwork", "mnw-admin"]',
            "sando:sshPrivateKey": private,
            "sando:bootstrap": '{"ref": "HEAD"}',  # the repo's newest commit
        }
        raw.update({f"sando:{k}": v for k, v in extra.items()})
        secrets = ["sando:sshPrivateKey"] + (["sando:cliServiceToken"] if "cliServiceToken" in extra else [])
        return raw, secrets

    return make


def urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def urn_type(urn: str) -> str:
    return urn.split("::")[2].split("$")[-1]


# --- which resources, named and parented how ---------------------------------------------------------


def test_components_per_node(config, server_repo):
    run = run_program(*config())
    assert run.names("sando:index:Node") == {"n1", "n2"}
    assert run.names("sando:index:Release") == {"n1-release", "n2-release"}
    assert run.names("sando:index:CurrentPointer") == {"n1-current", "n2-current"}
    for name in ("n1", "n1-release", "n1-current", "n2", "n2-release", "n2-current"):
        assert run.regs[name].parent == STACK_URN
    assert run.exports["version"] == "v1"
    assert run.exports["commit"] == server_repo["commit"]
    assert {n: (run.exports["nodes"][n]["host"], run.exports["nodes"][n]["batch"]) for n in ("n1", "n2")} == \
        {"n1": ("127.0.0.2", 0), "n2": ("127.0.0.3", 0)}


def test_dynamic_children_are_named_and_parented_by_their_component(config):
    run = run_program(*config())
    expected = set()
    for node in ("n1", "n2"):
        expected |= {f"{node}-{role}" for role in NODE_CHILDREN}
        expected |= {f"{node}-release-files", f"{node}-current-switch", f"{node}-reach"}
    assert run.names(DYNAMIC) == expected | {"verdict"}
    roles = {"sando:index:Node": set(NODE_CHILDREN), "sando:index:Release": {"files"},
             "sando:index:CurrentPointer": {"switch"}}
    for reg in run.monitor.registrations:
        if reg.type == DYNAMIC and reg.name.endswith("-reach"):
            assert reg.parent == STACK_URN, reg.name  # a node's first resource, of no component
        if reg.type != DYNAMIC or reg.name == "verdict" or reg.name.endswith("-reach"):
            continue
        parent, ptype = urn_name(reg.parent), urn_type(reg.parent)
        assert reg.name.startswith(parent + "-"), (reg.name, parent)
        assert reg.name[len(parent) + 1:] in roles[ptype], reg.name


def test_bootstrap_subset_declares_only_those_children(config):
    run = run_program(*config(nodes=("n1",), bootstrap='{"ref": "HEAD", "manage": ["caddyfile"]}'))
    assert {n for n in run.names(DYNAMIC)} == {"n1-host", "n1-release-files", "n1-current-switch", "n1-reach",
                                               "verdict"}
    assert list(host.files_of(run.inputs("n1-host"))) == ["caddyfile"]


# --- the inputs the program computes -------------------------------------------------------------------


def test_node_children_inputs(config, server_repo):
    run = run_program(*config())
    deploy = server_repo["path"] / "server" / "deploy"
    for node in ("n1", "n2"):  # real paths on every node: no root prefix
        files = host.files_of(run.inputs(f"{node}-host"))
        assert set(files) == {"caddyfile", "unit", "sshdGit", "fail2ban", "firewall", "backup", "cron"}
        assert files["unit"]["path"] == "/etc/systemd/system/makenotwork.service"
    files = host.files_of(run.inputs("n1-host"))
    assert files["caddyfile"] == {"path": "/etc/caddy/Caddyfile", "mode": 0o644, "source": "server/deploy/Caddyfile",
                                  "content": (deploy / "Caddyfile").read_text()}
    assert files["firewall"]["mode"] == 0o755 and files["sshdGit"]["mode"] == 0o644
    assert files["cron"]["path"] == "/etc/cron.d/makenotwork-backup"
    assert files["cron"]["source"] == "sando:bootstrap.backupSchedule"
    assert files["cron"]["content"].endswith("17 3 * * * root /usr/local/sbin/backup-db.sh\n")
    inputs = run.inputs("n1-host")
    assert (inputs["ref"], inputs["commit"]) == ("HEAD", server_repo["commit"])
    assert inputs["healthCheck"] == {"url": "http://127.0.0.1:3000/", "timeoutSeconds": 30, "intervalSeconds": 1}
    assert run.inputs("n2-host")["connection"] == {"host": "127.0.0.3", "port": 2223, "user": "deploy",
                                                   "hostKey": json.loads(config()[0]["sando:nodes"])[1]["hostKey"],
                                                   "insecure": False}
    assert run.inputs("n1-host")["node"] == "n1"
    assert run.exports["hostConfig"] == {"ref": "HEAD", "commit": server_repo["commit"]}


def test_host_files_come_from_the_ref_not_the_working_tree(config, server_repo):
    caddyfile = server_repo["path"] / "server" / "deploy" / "Caddyfile"
    committed = caddyfile.read_text()
    caddyfile.write_text(committed + "# uncommitted\n")
    run = run_program(*config(nodes=("n1",)))
    assert run.inputs("n1-host")["caddyfile"]["content"] == committed


def test_release_inputs(config, server_repo):
    run = run_program(*config())
    files = run.inputs("n1-release-files")
    assert (files["version"], files["commit"]) == ("v1", server_repo["commit"])
    assert (files["releaseRoot"], files["service"], files["node"]) == ("/opt/makenotwork", "makenotwork", "n1")
    assert files["binNames"] == ["makenotwork", "mnw-admin"]
    assert files["build"] == {"repo": str(server_repo["path"]),
                              "command": "cargo build --release --manifest-path server/Cargo.toml",
                              "binDir": "server/target/release", "errorPagesDir": "server/deploy/error-pages"}


def test_pointer_inputs(config, server_repo):
    run = run_program(*config(keepReleases="3", migrations='{"refuseDestructive": true, "database": "/srv/d/mnw.db", '
                                                           '"backupDir": "/srv/backups"}'))
    s1, s2 = run.inputs("n1-current-switch"), run.inputs("n2-current-switch")
    assert (s1["version"], s1["commit"], s1["service"], s1["releaseRoot"]) == \
        ("v1", server_repo["commit"], "makenotwork", "/opt/makenotwork")
    assert s1["keepReleases"] == 3
    assert s1["healthCheck"] == {"url": "http://127.0.0.1:3000/", "timeoutSeconds": 30, "intervalSeconds": 1,
                                 "expectVersion": False}
    assert s2["healthCheck"]["url"] == "http://127.0.0.1:41002/"
    assert s1.get("warning") is None and s1.get("token") is None
    assert s1["gate"] == {"enabled": True, "migrations": ["1", "2"], "destructive": ["2"],
                          "names": {"1": "init", "2": "drop_tags"},
                          "dryRunCommand": "{release}/mnw-admin migrate --dry-run --database {scratch}",
                          "database": "/srv/d/mnw.db", "envFile": "/etc/makenotwork/makenotwork.env",  # the unit's
                          "backupDir": "/srv/backups", "allowDestructive": False}
    assert s1["rollout"] == {"batch": 0, "pauseSeconds": 0}


def test_allow_destructive_for_the_pinned_version_and_gate_off(config):
    run = run_program(*config(nodes=("n1",), migrations='{"refuseDestructive": true, "allowDestructive": ["v1"]}'))
    assert run.inputs("n1-current-switch")["gate"]["allowDestructive"] is True
    run = run_program(*config(nodes=("n1",), migrations='{"gate": false}'))
    gate = run.inputs("n1-current-switch")["gate"]
    assert gate["enabled"] is False and gate["migrations"] == []


def test_restart_warning_inputs(config):
    run = run_program(*config(restartWarningSeconds="5", cliServiceToken="t0k", restartWarningOnFailure="abort"))
    assert run.inputs("n1-current-switch")["warning"] == {
        "url": "http://127.0.0.1:3000/api/internal/restart-warning", "seconds": 5, "onFailure": "abort"}
    assert run.inputs("n2-current-switch")["warning"]["url"] == "http://127.0.0.1:41002/api/internal/restart-warning"
    assert not {n for n in run.regs if n.endswith("-warning")}  # a step of the switch, not a resource


# --- dependencies ------------------------------------------------------------------------------------


def test_pointer_waits_for_its_bootstrap_and_its_release(config):
    run = run_program(*config())
    for node in ("n1", "n2"):
        reg = run.regs[f"{node}-current-switch"]
        deps = set(reg.dependencies)
        for role in NODE_CHILDREN:
            assert run.urn(f"{node}-{role}") in deps, role
        assert run.urn(f"{node}-release-files") in set(reg.propertyDependencies["release"].urns)
        other = "n2" if node == "n1" else "n1"
        assert not any(urn_name(d).startswith(other) for d in deps)


def test_the_verdict_waits_for_every_pointer(config):
    run = run_program(*config(nodes=("n1", "n2", "n3")))
    reg = run.regs["verdict"]
    assert reg.parent == STACK_URN
    assert {run.urn(f"{n}-current-switch") for n in ("n1", "n2", "n3")} <= set(reg.dependencies)
    assert set(reg.propertyDependencies["outcomes"].urns) == {run.urn(f"{n}-current-switch") for n in ("n1", "n2", "n3")}


def test_the_stack_outputs_reach_the_engine_once_and_before_the_verdict(config):
    """A failing verdict ends the run: the engine must have the stack's outputs by then, or they
    look deleted and keep the run before's word (CI saw a failed node's health still "ok")."""
    run = run_program(*config(nodes=("n1", "n2")))
    order = run.monitor.order
    stack_outputs = [i for i, (kind, name) in enumerate(order) if kind == "outputs" and name == "sando-t"]
    assert len(stack_outputs) == 1, order  # the SDK's own send at the end is skipped
    (at,) = stack_outputs
    assert order.index(("register", "verdict")) > at, order
    (sent,) = [r for r in run.monitor.outputs if r.urn == STACK_URN]
    assert set(sent.outputs.fields) == {"version", "commit", "hostConfig", "nodes"}
    assert sent.outputs.fields["version"].string_value == run.exports["version"]


def test_rollout_batches_chain_the_pointers(config):
    run = run_program(*config(nodes=("n1", "n2", "n3"), rollout='{"batchSize": 1, "pauseSeconds": 5}'))
    assert run.urn("n1-current-switch") in run.regs["n2-current-switch"].dependencies
    assert run.urn("n2-current-switch") in run.regs["n3-current-switch"].dependencies
    assert run.urn("n1-current-switch") not in run.regs["n3-current-switch"].dependencies
    assert not any("current" in urn_name(d) for d in run.regs["n1-current-switch"].dependencies)
    assert [run.inputs(f"{n}-current-switch")["rollout"] for n in ("n1", "n2", "n3")] == [
        {"batch": 0, "pauseSeconds": 5}, {"batch": 1, "pauseSeconds": 5}, {"batch": 2, "pauseSeconds": 5}]
    # a later batch is given the earlier batch's outcomes: held back when one failed
    assert set(run.regs["n2-current-switch"].propertyDependencies["after"].urns) == {run.urn("n1-current-switch")}
    assert set(run.regs["n3-current-switch"].propertyDependencies["after"].urns) == {run.urn("n2-current-switch")}
    assert [run.exports["nodes"][n]["batch"] for n in ("n1", "n2", "n3")] == [0, 1, 2]
    # host config follows the batches too: a node's host config waits for the previous batch's outcome
    assert not run.regs["n1-host"].propertyDependencies["after"].urns
    assert set(run.regs["n2-host"].propertyDependencies["after"].urns) == {run.urn("n1-current-switch")}
    assert set(run.regs["n3-host"].propertyDependencies["after"].urns) == {run.urn("n2-current-switch")}


def test_without_rollout_pointers_do_not_wait_for_each_other(config):
    run = run_program(*config(nodes=("n1", "n2", "n3")))
    for n in ("n1", "n2", "n3"):
        assert not any("current" in urn_name(d) for d in run.regs[f"{n}-current-switch"].dependencies)
        assert run.inputs(f"{n}-current-switch")["rollout"] == {"batch": 0, "pauseSeconds": 0}
        assert not run.regs[f"{n}-current-switch"].propertyDependencies["after"].urns


# --- secrets ---------------------------------------------------------------------------------------------


def _walk_plain(value, path=""):
    """Every plain (non-secret) string in a deserialized property value, with its path."""
    if rpc.is_rpc_secret(value):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_plain(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _walk_plain(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


def test_private_key_and_token_only_travel_as_secrets(config, ed25519_key):
    _, private = ed25519_key
    token = "cli-service-token-VALUE"
    run = run_program(*config(restartWarningSeconds="5", cliServiceToken=token))
    key_body = private.splitlines()[1]  # a line of the key's base64 body
    dynamic = [a for a in run.mocks.resources.values() if a.typ == DYNAMIC and a.name != "verdict"]
    assert len(dynamic) == 2 * (len(NODE_CHILDREN) + 3)
    for args in dynamic:
        assert rpc.is_rpc_secret(args.inputs["privateKey"]), args.name
        assert rpc.unwrap_rpc_secret(args.inputs["privateKey"]) == private
        for where, text in _walk_plain(args.inputs):
            assert key_body not in text and token not in text, (args.name, where)
    for node in ("n1", "n2"):
        for name in (f"{node}-current-switch", f"{node}-host"):  # the host config warns before a unit restart
            t = run.inputs(name)["token"]
            assert rpc.is_rpc_secret(t) and rpc.unwrap_rpc_secret(t) == token
    for reg in run.monitor.registrations:
        if reg.type == DYNAMIC:  # state keeps them encrypted too
            assert {"privateKey", "token"} <= set(reg.additionalSecretOutputs), reg.name
    for req in run.monitor.outputs:  # component outputs and stack exports carry neither
        assert key_body not in str(req.outputs) and token not in str(req.outputs)
    for where, text in _walk_plain(run.exports):  # the exports' plain values (resource outputs are unknown)
        assert key_body not in text and token not in text, where


def test_ssh_agent_sends_no_key(config, monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/an-agent.sock")  # the program checks there is an agent to ask
    raw, _ = config(nodes=("n1",), sshAgent="true")
    del raw["sando:sshPrivateKey"]
    run = run_program(raw, [])
    dynamic = [a for a in run.mocks.resources.values() if a.typ == DYNAMIC and a.name != "verdict"]
    assert len(dynamic) == len(NODE_CHILDREN) + 3
    assert all(a.inputs.get("privateKey") is None for a in dynamic)


# --- config errors: exit 32 before any resource -------------------------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"version": "v9"}, "sando:version: 'v9' is not a tag or commit"),
    ({"bogus": "1"}, "sando:bogus: unknown key"),
    ({"binNames": "makenotwork"}, "sando:binNames: must be a list of binary names"),
    ({"source": None}, "sando:source.errorPagesDir: 'nope' is not a directory at commit"),
    ({"nodeRoot": None}, "sando:nodes[0].root: unknown key"),
])
def test_config_error_exits_32_before_any_resource(config, server_repo, caplog, change, words):
    raw, secrets = config(nodes=("n1",))
    if "source" in change:
        raw["sando:source"] = json.dumps({"repo": str(server_repo["path"]), "errorPagesDir": "nope"})
    elif "nodeRoot" in change:
        nodes = json.loads(raw["sando:nodes"])
        nodes[0]["root"] = "/srv/testnodes/n1"
        raw["sando:nodes"] = json.dumps(nodes)
    else:
        raw.update({f"sando:{k}": v for k, v in change.items()})
    with pytest.raises(SystemExit) as exc:
        run_program(raw, secrets)
    assert exc.value.code == 32
    assert words in caplog.text  # pulumi.log.error, as the mocks show it
    assert declared() == []


def test_missing_bootstrap_file_exits_before_any_resource(config, server_repo, caplog):
    (server_repo["path"] / "server" / "deploy" / "fail2ban-sshd.conf").unlink()
    commit_all(server_repo["path"], "no jail")
    with pytest.raises(SystemExit) as exc:
        run_program(*config(nodes=("n1",)))
    assert exc.value.code == 32
    assert "sando:bootstrap.fail2ban: 'server/deploy/fail2ban-sshd.conf' is not a file" in caplog.text
    assert declared() == []


def test_unit_not_under_release_root_exits_before_any_resource(config, server_repo, caplog):
    unit = server_repo["path"] / "server" / "deploy" / "makenotwork.service"
    unit.write_text(unit.read_text().replace("/opt/makenotwork/current/", "/usr/local/bin/"))
    commit_all(server_repo["path"], "unit elsewhere")
    with pytest.raises(SystemExit) as exc:
        run_program(*config(nodes=("n1",)))
    assert exc.value.code == 32
    assert "sando:bootstrap.unit: server/deploy/makenotwork.service does not run a binary under" in caplog.text
    assert declared() == []


def test_env_file_is_the_units_environment_file(config, server_repo):
    unit = server_repo["path"] / "server" / "deploy" / "makenotwork.service"
    unit.write_text(unit.read_text().replace("EnvironmentFile=-/etc/makenotwork/makenotwork.env",
                                             "EnvironmentFile=/srv/mnw/settings.env"))
    commit_all(server_repo["path"], "another env file")  # host files are read at sando:bootstrap.ref
    run = run_program(*config(nodes=("n1",)))
    assert run.inputs("n1-current-switch")["gate"]["envFile"] == "/srv/mnw/settings.env"


def test_every_component_of_a_node_waits_for_its_reach(config):
    """A node that cannot be reached fails its Reach (providers/reach.py): nothing else of the node
    is registered before it passed, so the node's failure is said once."""
    run = run_program(*config())
    for node in ("n1", "n2"):
        for name in (node, f"{node}-release", f"{node}-current"):
            assert list(run.regs[name].dependencies) == [run.urn(f"{node}-reach")], name
        assert run.inputs(f"{node}-reach")["node"] == node


# --- sando:verifyAgainst (issue 22.1, a manual pin) ---------------------------------------------------


class SourceStack(EchoMocks):
    """The engine's readStackOutputs of the stack sando:verifyAgainst names: these outputs."""

    def __init__(self, outputs: dict):
        super().__init__()
        self.source, self.asked = outputs, []

    def call(self, args):
        if args.token == "pulumi-python:dynamic:start":  # the head start's (its own test below)
            return {}
        self.asked.append((args.token, dict(args.args)))
        return {"name": args.args["name"], "outputs": self.source, "secretOutputNames": []}


def test_a_pin_the_source_runs_expects_its_sums_and_one_it_does_not_run_goes_to_reach(config, server_repo):
    files = {"makenotwork": "a" * 64, "mnw-admin": "b" * 64}
    mocks = SourceStack({"nodes": {"t1": {"liveVersion": "v1", "liveCommit": server_repo["commit"],
                                          "liveFiles": files}}})
    run = run_program(*config(nodes=("n1",), verifyAgainst="testnot"), mocks=mocks)
    assert mocks.asked == [("pulumi:pulumi:readStackOutputs", {"name": "organization/sando/testnot"})]
    assert run.inputs("n1-release-files")["expect"] == {"from": "testnot", "to": "t", "version": "v1",
                                                        "commit": server_repo["commit"], "files": files}
    assert run.inputs("n1-reach").get("refuse") is None

    mocks = SourceStack({"nodes": {"t1": {"liveVersion": "v0", "liveCommit": "0" * 40, "liveFiles": files}}})
    run = run_program(*config(nodes=("n1",), verifyAgainst="testnot"), mocks=mocks)
    assert run.inputs("n1-release-files").get("expect") is None
    refuse = run.inputs("n1-reach")["refuse"]
    assert (refuse["version"], refuse["commit"]) == ("v1", server_repo["commit"])
    assert refuse["message"].startswith(f"sando:version v1 ({server_repo['commit'][:12]}) is not what testnot runs "
                                        f"(sando:verifyAgainst: testnot; testnot runs v0 (000000000000) on t1)")


def test_with_bytes_to_verify_the_host_step_waits_for_the_release_else_not(config, server_repo):
    """A node refused for other bytes changes nothing, its host config included (stack.host_waits_for):
    with an expected build the host step waits for the node's release (whose refusal holds the node out
    of the run); without one the two steps run side by side."""
    files = {"makenotwork": "a" * 64, "mnw-admin": "b" * 64}
    mocks = SourceStack({"nodes": {"t1": {"liveVersion": "v1", "liveCommit": server_repo["commit"],
                                          "liveFiles": files}}})
    run = run_program(*config(verifyAgainst="testnot"), mocks=mocks)
    for node in ("n1", "n2"):
        assert run.inputs(f"{node}-release-files")["expect"]["files"] == files
        assert set(run.regs[f"{node}-host"].dependencies) == {run.urn(f"{node}-release-files")}, node
    run = run_program(*config())
    for node in ("n1", "n2"):
        assert run.urn(f"{node}-release-files") not in set(run.regs[f"{node}-host"].dependencies)


def test_without_verify_against_the_source_is_not_read(config):
    mocks = SourceStack({})
    run_program(*config(nodes=("n1",)), mocks=mocks)
    assert mocks.asked == []


# --- the head start (issue 24) -----------------------------------------------------------------------


def test_the_head_start_starts_the_provider_the_reads_and_the_pointers_status_reads(config):
    """First thing, the program invokes the provider's start hook, then every node's read (its key
    marked secret), then the status read each pointer's diff makes when its node switches, with the
    very command the pointer would run (ahead.status_command of the Pointer's own inputs)."""
    import time

    from google.protobuf import json_format

    from sando_components import ahead, headstart

    raw, secrets = config()
    run = run_program(raw, secrets)
    deadline = time.monotonic() + 10
    while len(run.monitor.invokes) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # the invokes are sent from threads of their own
    calls = {json_format.MessageToDict(r.args)["hook"]: json_format.MessageToDict(r.args)
             for r in run.monitor.invokes if r.tok == headstart.START}
    assert sorted(calls) == sorted(["sando_components.providers.base:warm", headstart.READS, headstart.AHEAD])
    reads = calls[headstart.READS]["nodes"]
    assert [n["node"] for n in reads] == ["n1", "n2"]
    key = raw["sando:sshPrivateKey"]
    assert all(n["privateKey"] == {headstart.SECRET_SIG: headstart.SECRET, "value": key} for n in reads)
    for n in calls[headstart.AHEAD]["nodes"]:
        pointer = run.inputs(f"{n['node']}-current-switch")
        assert n["version"] == pointer["version"] == "v1"
        assert ahead.status_command(n) == ahead.status_command(pointer), n["node"]
        # the pin's migrations, as the pointer knows them: a database with none other needs no status read
        assert n["gate"]["migrations"] == pointer["gate"]["migrations"], n["node"]
    # with the gate on, each node's read takes its database's migrations too, from where the status
    # read would find the database (the unit's env file as the program reads it from git)
    for n in reads:
        pointer = run.inputs(f"{n['node']}-current-switch")
        assert n["dbRead"] == {"database": pointer["gate"].get("database") or "", "envFile": pointer["gate"]["envFile"],
                               "pin": pointer["version"]}, n
        # the Reach reads the same (whichever comes first makes the node's one read)
        assert run.inputs(f"{n['node']}-reach")["dbRead"] == n["dbRead"], n["node"]


def test_no_status_reads_ahead_when_the_gate_is_off(config):
    """The gate off: a pointer's diff warns of nothing, so nothing is read ahead for it."""
    from sando_components import stack
    from sando_components.config import load

    raw, secrets = config(migrations='{"gate": false}')
    assert stack.ahead_reads(load(raw, frozenset(secrets)), "/etc/x.env", []) == []
    assert len(stack.ahead_reads(load(config()[0], frozenset(secrets)), "/etc/x.env", [])) == 2
