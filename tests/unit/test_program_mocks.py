"""__main__.py run under pulumi.runtime.set_mocks: which components and dynamic children the
program declares, their names, parents, secrets and dependencies, and how it uses its own
previous outputs (the release history). No engine, no SSH: dynamic providers are only
serialized (dill) and registered; the mock monitor never runs their create/diff.
"""

from __future__ import annotations

import json
import runpy
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pytest
from pulumi.runtime import mocks as pm
from pulumi.runtime import rpc, settings

from unit_helpers import commit_all, git, init_repo

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "__main__.py"
DEPLOY = REPO / "examples" / "makenotwork" / "server" / "deploy"
DYNAMIC = "pulumi-python:dynamic:Resource"
STACK_URN = "urn:pulumi:t::sando::pulumi:pulumi:Stack::sando-t"
NODE_CHILDREN = ["layout", "caddyfile", "caddy-reload", "unit", "daemon-reload", "sshdGit", "fail2ban", "firewall",
                 "backup", "cron"]


# --- the mock engine ------------------------------------------------------------------------------


class RecordingMonitor(pm.MockMonitor):
    """The SDK's mock monitor, keeping every raw request (parent, dependencies, secret outputs)."""

    def __init__(self, mocks):
        super().__init__(mocks)
        self.registrations = []
        self.outputs = []

    def RegisterResource(self, request):
        self.registrations.append(request)
        return super().RegisterResource(request)

    def RegisterResourceOutputs(self, request):
        self.outputs.append(request)
        return super().RegisterResourceOutputs(request)


class SandoMocks(pm.Mocks):
    """Answers readStackOutputs with an injected previous state; dynamic resources echo their
    inputs plus what their provider would compute."""

    def __init__(self, previous_outputs: dict):
        self.previous_outputs = previous_outputs
        self.resources: dict[str, pm.MockResourceArgs] = {}
        self.calls: list[pm.MockCallArgs] = []

    def call(self, args):
        self.calls.append(args)
        if args.token == "pulumi:pulumi:readStackOutputs":
            return {"outputs": self.previous_outputs}
        return {}

    def new_resource(self, args):
        self.resources[args.name] = args
        state = dict(args.inputs)
        if args.name.endswith("-files"):
            state.update(path=f"/releases/{args.inputs['version']}", sha256={"makenotwork": "0" * 64},
                         uploadedBytes=123)
        elif args.name.endswith("-switch"):
            state.update(liveVersion=args.inputs["version"], previousVersion="v0", switchedAt=1.5, health="ok")
        elif args.name.endswith("-warning"):
            state.update(status="sent", sentAt=1.0)
        return f"{args.name}-id", state


@dataclass
class Run:
    monitor: RecordingMonitor
    mocks: SandoMocks
    exports: dict = field(default_factory=dict)

    @property
    def regs(self) -> dict:
        return {r.name: r for r in self.monitor.registrations}

    def names(self, typ: str) -> set[str]:
        return {r.name for r in self.monitor.registrations if r.type == typ}


def run_program(config: dict[str, str], secret_keys: list[str], previous_outputs: dict | None = None,
                mocks: SandoMocks | None = None) -> Run:
    mocks = mocks or SandoMocks(previous_outputs or {})
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_all_config(config, secret_keys)
    settings.ROOT.set(None)  # a fresh root Stack per run
    pulumi.runtime.set_mocks(mocks, project="sando", stack="t", preview=False, monitor=monitor,
                             organization="organization")
    run = Run(monitor, mocks)

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(MAIN), run_name="__sando_main__")
        outs = settings.get_root_resource().outputs
        return pulumi.Output.from_input(outs).apply(run.exports.update)

    program()
    return run


@pytest.fixture(autouse=True)
def _reset_pulumi():
    yield
    pulumi.runtime.set_all_config({}, [])
    settings.ROOT.set(None)


# --- the program's inputs --------------------------------------------------------------------------


@pytest.fixture
def server_repo(tmp_path) -> dict:
    """The server repo as sando sees it: deploy files from the example, tag v1."""
    repo = init_repo(tmp_path / "makenotwork")
    shutil.copytree(DEPLOY, repo / "server" / "deploy")
    commit = commit_all(repo, "server v1")
    git(repo, "tag", "v1")
    return {"path": repo, "commit": commit}


@pytest.fixture
def config(server_repo, ed25519_key):
    public, private = ed25519_key

    def make(nodes=("n1", "n2"), **extra: str) -> tuple[dict, list[str]]:
        node_list = [{"name": "n1", "host": "127.0.0.2", "port": 2222, "user": "deploy", "hostKey": public}]
        if "n2" in nodes:
            node_list.append({"name": "n2", "host": "127.0.0.3", "port": 2222, "user": "deploy", "hostKey": public,
                              "root": "/srv/testnodes/n2", "appUrl": "http://127.0.0.1:41002"})
        raw = {
            "sando:nodes": json.dumps(node_list),
            "sando:version": "v1",
            "sando:source": json.dumps({"repo": str(server_repo["path"])}),
            "sando:binNames": '["makenotwork", "mnw-admin"]',
            "sando:sshPrivateKey": private,
        }
        raw.update({f"sando:{k}": v for k, v in extra.items()})
        secrets = ["sando:sshPrivateKey"] + (["sando:cliServiceToken"] if "cliServiceToken" in extra else [])
        return raw, secrets

    return make


# --- tests ---------------------------------------------------------------------------------------


def urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def urn_type(urn: str) -> str:
    return urn.split("::")[2].split("$")[-1]


def test_components_per_node(config, server_repo):
    run = run_program(*config())
    assert run.names("sando:index:Node") == {"n1", "n2"}
    assert run.names("sando:index:Release") == {"n1-release-v1", "n2-release-v1"}
    assert run.names("sando:index:CurrentPointer") == {"n1-current", "n2-current"}
    for name in ("n1", "n1-release-v1", "n1-current", "n2", "n2-release-v1", "n2-current"):
        assert run.regs[name].parent == STACK_URN
    assert run.exports["version"] == "v1"
    assert run.exports["commit"] == server_repo["commit"]


def test_dynamic_children_are_named_and_parented_by_their_component(config):
    run = run_program(*config())
    expected = set()
    for node in ("n1", "n2"):
        expected |= {f"{node}-{role}" for role in NODE_CHILDREN}
        expected |= {f"{node}-release-v1-files", f"{node}-current-switch"}
    assert run.names(DYNAMIC) == expected
    roles = {"sando:index:Node": set(NODE_CHILDREN), "sando:index:Release": {"files"},
             "sando:index:CurrentPointer": {"switch"}}
    for reg in run.monitor.registrations:
        if reg.type != DYNAMIC:
            continue
        parent, ptype = urn_name(reg.parent), urn_type(reg.parent)
        assert ptype in roles, (reg.name, reg.parent)
        assert reg.name.startswith(parent + "-"), (reg.name, parent)
        assert reg.name[len(parent) + 1:] in roles[ptype], reg.name
    assert "n1-current-warning" not in run.regs and "n2-current-warning" not in run.regs


def test_inputs_follow_config_and_root_prefix(config, server_repo):
    run = run_program(*config())
    res = run.mocks.resources
    assert res["n1-unit"].inputs["path"] == "/etc/systemd/system/makenotwork.service"
    assert res["n2-unit"].inputs["path"] == "/srv/testnodes/n2/etc/systemd/system/makenotwork.service"
    assert res["n1-cron"].inputs["path"] == "/etc/cron.d/makenotwork-backup"
    assert res["n1-caddyfile"].inputs["content"] == (DEPLOY / "Caddyfile").read_text()
    assert res["n1-firewall"].inputs["mode"] == 0o755 and res["n1-sshdGit"].inputs["mode"] == 0o644
    assert res["n1-layout"].inputs["create"] == "mkdir -p /opt/makenotwork/releases"
    assert res["n2-layout"].inputs["create"] == "mkdir -p /srv/testnodes/n2/opt/makenotwork/releases"
    assert res["n1-daemon-reload"].inputs["create"] == "systemctl daemon-reload"
    files = res["n1-release-v1-files"].inputs
    assert (files["version"], files["commit"]) == ("v1", server_repo["commit"])
    assert files["binNames"] == ["makenotwork", "mnw-admin"]
    assert files["build"]["repo"] == str(server_repo["path"])
    assert files["connection"] == {"host": "127.0.0.2", "port": 2222, "user": "deploy",
                                   "hostKey": json.loads(config()[0]["sando:nodes"])[0]["hostKey"],
                                   "insecure": False}
    switch1, switch2 = res["n1-current-switch"].inputs, res["n2-current-switch"].inputs
    assert (switch1["version"], switch1["commit"], switch1["service"]) == ("v1", server_repo["commit"], "makenotwork")
    assert switch1["healthUrl"] == "http://127.0.0.1:3000/"
    assert switch2["healthUrl"] == "http://127.0.0.1:41002/"
    assert switch2["root"] == "/srv/testnodes/n2"
    assert switch1["release"] == "/releases/v1"  # the Release's path output


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
    dynamic = [a for a in run.mocks.resources.values() if a.typ == DYNAMIC]
    assert len(dynamic) == 2 * (len(NODE_CHILDREN) + 3)
    for args in dynamic:
        assert rpc.is_rpc_secret(args.inputs["privateKey"]), args.name
        assert rpc.unwrap_rpc_secret(args.inputs["privateKey"]) == private
        for where, text in _walk_plain(args.inputs):
            assert key_body not in text and token not in text, (args.name, where)
    for reg in run.monitor.registrations:
        if reg.type == DYNAMIC:  # state keeps them encrypted too
            assert {"privateKey", "token"} <= set(reg.additionalSecretOutputs), reg.name
    warning = run.mocks.resources["n1-current-warning"].inputs
    assert rpc.is_rpc_secret(warning["token"]) and rpc.unwrap_rpc_secret(warning["token"]) == token
    # component outputs and stack exports carry neither
    for req in run.monitor.outputs:
        assert key_body not in str(req.outputs) and token not in str(req.outputs)
    assert key_body not in json.dumps(run.exports, default=str) and token not in json.dumps(run.exports, default=str)


def test_restart_warning_child_only_when_enabled(config):
    run = run_program(*config(restartWarningSeconds="5", cliServiceToken="t0k"))
    for node, url in (("n1", "http://127.0.0.1:3000"), ("n2", "http://127.0.0.1:41002")):
        reg = run.regs[f"{node}-current-warning"]
        assert reg.type == DYNAMIC and urn_name(reg.parent) == f"{node}-current"
        inputs = run.mocks.resources[f"{node}-current-warning"].inputs
        assert inputs["url"] == f"{url}/api/internal/restart-warning"
        assert inputs["seconds"] == 5 and inputs["onFailure"] == "warn" and inputs["version"] == "v1"
        switch = run.mocks.resources[f"{node}-current-switch"].inputs
        assert switch["warningSeconds"] == 5 and switch["warningSentAt"] == 1.0  # waits for the notice
        assert run.exports["nodes"][node]["restartWarning"] == "sent"
    run = run_program(*config(restartWarningSeconds="0"))
    assert not {n for n in run.regs if n.endswith("-warning")}
    assert run.exports["nodes"]["n1"]["restartWarning"] == "disabled"


def test_history_keeps_rollback_target(config, server_repo):
    previous = {"nodes": {"n1": {"releases": [{"version": "v0", "commit": "c0"}], "liveVersion": "v0",
                                 "previousVersion": None}}}
    run = run_program(*config(keepReleases="1"), previous_outputs=previous)
    assert [(c.token, c.args) for c in run.mocks.calls] == [
        ("pulumi:pulumi:readStackOutputs", {"name": "organization/sando/t"})]
    assert run.names("sando:index:Release") == {"n1-release-v0", "n1-release-v1", "n2-release-v1"}
    assert run.mocks.resources["n1-release-v0-files"].inputs["commit"] == "c0"
    assert urn_name(run.regs["n1-release-v0-files"].parent) == "n1-release-v0"
    assert run.exports["nodes"]["n1"]["releases"] == [{"version": "v0", "commit": "c0"},
                                                      {"version": "v1", "commit": server_repo["commit"]}]
    assert run.exports["nodes"]["n2"]["releases"] == [{"version": "v1", "commit": server_repo["commit"]}]
    # the pointer is given the pinned release, not the rollback target
    assert run.mocks.resources["n1-current-switch"].inputs["release"] == "/releases/v1"


def test_history_prunes_outside_window(config, server_repo):
    previous = {"nodes": {"n1": {"releases": [{"version": v, "commit": f"c-{v}"} for v in ("v0", "vA", "vB")],
                                 "liveVersion": "vB", "previousVersion": "vA"}}}
    run = run_program(*config(nodes=("n1",), keepReleases="1"), previous_outputs=previous)
    assert run.names("sando:index:Release") == {"n1-release-vB", "n1-release-v1"}
    assert [r["version"] for r in run.exports["nodes"]["n1"]["releases"]] == ["vB", "v1"]


def test_pointer_waits_for_release_and_bootstrap(config):
    run = run_program(*config(nodes=("n1",)))
    urn = {urn_name(u): u for u in run.monitor.resources}
    pointer_deps = set(run.regs["n1-current-switch"].dependencies)  # the child that restarts
    for role in ("unit", "daemon-reload", "layout"):
        assert urn[f"n1-{role}"] in pointer_deps, role
    release_deps = set(run.regs["n1-current-switch"].propertyDependencies["release"].urns)
    assert urn["n1-release-v1-files"] in release_deps
    assert list(run.regs["n1-daemon-reload"].dependencies) == [urn["n1-unit"]]
    assert list(run.regs["n1-caddy-reload"].dependencies) == [urn["n1-caddyfile"]]


def test_config_error_exits_32_before_any_resource(config, capsys):
    raw, secrets = config(version="v9")
    with pytest.raises(SystemExit) as exc:
        run_program(raw, secrets)
    assert exc.value.code == 32
    assert "sando: sando:version: 'v9' is not a branch, tag or commit" in capsys.readouterr().err
    assert [r.name for r in settings.SETTINGS.monitor.registrations if r.type != "pulumi:pulumi:Stack"] == []


def test_unknown_key_exits_32(config, capsys):
    raw, secrets = config()
    with pytest.raises(SystemExit) as exc:
        run_program({**raw, "sando:bogus": "1"}, secrets)
    assert exc.value.code == 32
    assert "sando:bogus: unknown key" in capsys.readouterr().err
    assert [r.name for r in settings.SETTINGS.monitor.registrations if r.type != "pulumi:pulumi:Stack"] == []


def test_missing_bootstrap_file_exits_before_any_resource(config, server_repo, capsys):
    (server_repo["path"] / "server" / "deploy" / "fail2ban-sshd.conf").unlink()
    with pytest.raises(SystemExit) as exc:
        run_program(*config(nodes=("n1",)))
    assert exc.value.code == 32
    assert "sando:bootstrap.fail2ban" in capsys.readouterr().err
    # bootstrap_sources reads every file before anything is declared: no Node, no child
    assert [r.name for r in settings.SETTINGS.monitor.registrations if r.type != "pulumi:pulumi:Stack"] == []


def test_unit_not_under_release_root_exits_before_any_resource(config, server_repo, capsys):
    unit = server_repo["path"] / "server" / "deploy" / "makenotwork.service"
    unit.write_text(unit.read_text().replace("/opt/makenotwork/current/", "/usr/local/bin/"))
    with pytest.raises(SystemExit) as exc:
        run_program(*config(nodes=("n1",)))
    assert exc.value.code == 32
    assert "sando:bootstrap.unit" in capsys.readouterr().err
    assert [r.name for r in settings.SETTINGS.monitor.registrations if r.type != "pulumi:pulumi:Stack"] == []


def test_failed_read_of_previous_outputs_stops_the_program(config):
    """No fallback to {}: forgetting the release history would prune the retained releases."""

    class FailingRead(SandoMocks):
        def call(self, args):
            if args.token == "pulumi:pulumi:readStackOutputs":
                raise RuntimeError("checkpoint unreadable")
            return super().call(args)

    with pytest.raises(Exception, match="checkpoint unreadable"):
        run_program(*config(nodes=("n1",)), mocks=FailingRead({}))
    assert [r.name for r in settings.SETTINGS.monitor.registrations if r.type != "pulumi:pulumi:Stack"] == []
