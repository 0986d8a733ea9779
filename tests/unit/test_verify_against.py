"""sando:verifyAgainst (issue 22.1, a manual pin): the key's validation, and which bytes a pin must
have given the source stack's outputs (stack.expected_build, a pure function of them)."""

from __future__ import annotations

import json

import pytest

from sando_components import stack
from sando_components.config import ConfigError, load
from unit_helpers import PRIVATE_KEY

C1, C2 = "1" * 40, "2" * 40
FILES = {"makenotwork": "a" * 64, "error-pages/404.html": "b" * 64}


def cfg_of(**extra):
    raw = {"sando:nodes": json.dumps([{"name": "n1", "host": "127.0.0.2", "hostKey": None}]),
           "sando:insecureSkipHostKeyCheck": "true", "sando:version": "v2", "sando:source": '{"repo": "/x"}',
           "sando:sshPrivateKey": PRIVATE_KEY, "sando:bootstrap": '{"ref": "main"}'}
    raw.update({f"sando:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return load(raw, frozenset({"sando:sshPrivateKey"}))


def outputs(**nodes) -> dict:
    return {"nodes": {name: {"liveVersion": v, "liveCommit": c, "liveFiles": f} for name, (v, c, f) in nodes.items()}}


@pytest.mark.parametrize("name", ["testnot", "organization/sando/testnot", "acme/testnot"])
def test_the_key_takes_a_stack_name(name):
    assert cfg_of(verifyAgainst=name).verify_against == name


@pytest.mark.parametrize("bad", ["", "test not", "a/b/c/d", "../x", "-x"])
def test_a_bad_stack_name_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError) as exc:
        cfg_of(verifyAgainst=bad)
    assert "sando:verifyAgainst: must name a stack of this backend" in str(exc.value)


def test_the_sums_of_the_nodes_running_the_pins_commit_are_the_expected_build():
    expect, refuse = stack.expected_build(cfg_of(verifyAgainst="testnot"), stack.Source("/x", C1),
                                          outputs(n1=("v2", C1, FILES), n2=("v1", C2, {})), "prod")
    assert refuse is None
    assert expect == {"from": "testnot", "to": "prod", "version": "v2", "commit": C1, "files": FILES}


def test_a_promotes_verified_build_of_the_pin_wins():
    verified = {"from": "staging", "version": "v2", "commit": C1, "files": {"makenotwork": "c" * 64}}
    expect, refuse = stack.expected_build(cfg_of(verifyAgainst="testnot", verifiedBuild=verified),
                                          stack.Source("/x", C1), outputs(n1=("v2", C1, FILES)), "prod")
    assert (expect, refuse) == (verified, None)


def test_a_commit_the_source_does_not_run_is_a_refusal_naming_both_keys():
    expect, refuse = stack.expected_build(cfg_of(verifyAgainst="testnot"), stack.Source("/x", C2),
                                          outputs(n1=("v1", C1, FILES), n2=("v1", C1, FILES)), "prod")
    assert expect is None
    assert refuse == {"version": "v2", "commit": C2, "message": (
        f"sando:version v2 ({C2[:12]}) is not what testnot runs (sando:verifyAgainst: testnot; testnot runs "
        f"v1 ({C1[:12]}) on n1, n2) and this node does not hold it; nothing was sent: deploy it to testnot first, "
        "then `sando promote --from testnot --to prod`")}


@pytest.mark.parametrize("said, words", [
    ({}, "sando:verifyAgainst: stack testnot records no deploy (no nodes in its outputs): run `pulumi up -s "
         "testnot` first, or unset the key"),
    (outputs(n1=("v2", C1, None)), "sando:verifyAgainst: stack testnot's outputs do not record the bytes n1 runs "
                                   "(deployed by an older sando): run `pulumi up -s testnot` once"),
    (outputs(n1=("v2", C1, FILES), n2=("v2", C1, {**FILES, "makenotwork": "d" * 64})),
     f"sando:verifyAgainst: testnot's nodes run {C1[:12]} with different bytes (n1 / n2): redeploy testnot from "
     "one build first"),
])
def test_what_cannot_be_verified_is_refused_naming_the_key(said, words):
    with pytest.raises(ConfigError) as exc:
        stack.expected_build(cfg_of(verifyAgainst="testnot"), stack.Source("/x", C1), said, "prod")
    assert str(exc.value) == words


def test_without_the_key_nothing_is_expected():
    assert stack.expected_build(cfg_of(), stack.Source("/x", C1), None, "prod") == (None, None)


def test_reach_refuses_the_pin_unless_the_node_holds_that_release(provider_node):
    """The refusal is the node's Reach check (providers/reach.py): before any other resource of the
    node, at preview too; a node holding the release (a rollback by pin) passes."""
    from fakenode import connection

    from sando_components.errors import OperatorError
    from sando_components.providers import base
    from sando_components.providers.base import NodeState
    from sando_components.providers.reach import ReachProvider
    from sando_components.transfer import NodeRelease

    refuse = {"version": "v1", "commit": C1, "message": "sando:version v1 is not what testnot runs"}
    props = {"node": "node1", "connection": connection(), "privateKey": None,
             "releaseRoot": str(provider_node.root), "service": "makenotwork", "refuse": refuse}
    for releases in ({}, {"v1": NodeRelease("v1", C2, 1.0, {})}):  # not held; v1 of another commit
        base.remember(props, NodeState(live=None, previous=None, free_kib=1, zstd=True, active=False,
                                       releases=releases))
        with pytest.raises(OperatorError) as exc:
            ReachProvider().check({}, props)
        assert str(exc.value) == "node1: sando:version v1 is not what testnot runs"
    base.remember(props, NodeState(live="v2", previous="v1", free_kib=1, zstd=True, active=True,
                                   releases={"v1": NodeRelease("v1", C1, 1.0, {})}))
    assert ReachProvider().check({}, props).inputs["refuse"] == refuse


def test_in_an_up_without_a_preview_the_refused_node_is_held_out_for_the_verdict(provider_node, monkeypatch):
    """An up that skips its preview (the Automation API, sando's commands): a raise in a check would end
    the run before the outputs are recorded (issue 19.3), so the node is held out of the run as an
    unreached node is, with the refusal for the verdict and its own words for its warnings."""
    from fakenode import connection

    from sando_components import diagnostics
    from sando_components.providers import base
    from sando_components.providers.base import NodeState
    from sando_components.providers.reach import ReachProvider

    monkeypatch.setattr(diagnostics, "skips_preview", lambda: True)
    said = []
    monkeypatch.setattr(diagnostics, "log", lambda level, text: said.append((level, text)))
    refuse = {"version": "v4", "commit": C1, "message": "sando:version v4 is not what testnot runs"}
    props = {"node": "node7", "connection": connection(), "privateKey": None,
             "releaseRoot": str(provider_node.root), "service": "makenotwork", "refuse": refuse}
    base.remember(props, NodeState(live="v2", previous=None, free_kib=1, zstd=True, active=True))
    ReachProvider().check({}, props)
    assert base.unreachable(props) == "node7: sando:version v4 is not what testnot runs"
    assert base.held_why(props) == "refused (sando:verifyAgainst)"
    assert said == [("warning", "node7: v4 refused here (the error at the end says why)")]
