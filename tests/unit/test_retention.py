"""sando_components/release.py `retained_versions(history, pinned, live_before, previous_before, keep)`."""

from __future__ import annotations

from sando_components.release import retained_versions


def r(version: str, commit: str | None = None) -> dict:
    return {"version": version, "commit": commit or f"c-{version}"}


def versions(rs: list[dict]) -> list[str]:
    return [x["version"] for x in rs]


def deploy(history: list[dict], version: str, live: str | None, previous: str | None, keep: int) -> list[dict]:
    return retained_versions(history, r(version), live, previous, keep)


def test_first_deploy_empty_history():
    assert retained_versions([], r("v1"), None, None, 5) == [r("v1")]
    assert retained_versions([], r("v1"), None, None, 1) == [r("v1")]


def test_keep_two_after_four_deploys_keeps_the_two_newest():
    history, live, previous = [], None, None
    for v in ("v1", "v2", "v3", "v4"):
        history = deploy(history, v, live, previous, keep=2)
        live, previous = v, live
    assert history == [r("v3"), r("v4")]


def test_each_step_of_four_deploys():
    h1 = deploy([], "v1", None, None, 2)
    h2 = deploy(h1, "v2", "v1", None, 2)
    h3 = deploy(h2, "v3", "v2", "v1", 2)
    assert versions(h1) == ["v1"]
    assert versions(h2) == ["v1", "v2"]
    assert versions(h3) == ["v2", "v3"]


def test_rollback_target_kept_outside_window():
    """v1 is live (someone rolled back to it); deploying v4 with keep=2 must keep v1 to return to."""
    history = [r("v1"), r("v2"), r("v3")]
    kept = retained_versions(history, r("v4"), "v1", "v3", 2)
    assert versions(kept) == ["v1", "v3", "v4"]


def test_rollback_to_retained_version_keeps_order_and_what_it_must():
    history = [r("v1"), r("v2"), r("v3")]
    # roll back from v3 to v2: both stay, the order is still by first deployment
    assert versions(retained_versions(history, r("v2"), "v3", "v2", 3)) == ["v1", "v2", "v3"]
    assert versions(retained_versions(history, r("v2"), "v3", "v2", 2)) == ["v2", "v3"]
    assert versions(retained_versions(history, r("v2"), "v3", "v2", 1)) == ["v2", "v3"]


def test_live_pinned_version_kept_even_when_oldest():
    history = [r("v1"), r("v2"), r("v3")]
    # roll back to the oldest: it is pinned (will be live), v3 is the way forward again
    assert versions(retained_versions(history, r("v1"), "v3", "v2", 1)) == ["v1", "v3"]


def test_live_before_kept_even_when_oldest():
    history = [r("v1"), r("v2"), r("v3"), r("v4")]
    assert versions(retained_versions(history, r("v5"), "v1", "v4", 1)) == ["v1", "v5"]


def test_redeploying_live_version_keeps_previous_as_rollback_target():
    history = [r("v1"), r("v2"), r("v3")]
    assert versions(retained_versions(history, r("v3"), "v3", "v1", 1)) == ["v1", "v3"]


def test_pinned_already_in_history_is_not_duplicated():
    history = [r("v1"), r("v2")]
    kept = retained_versions(history, r("v2"), "v2", "v1", 5)
    assert kept == [r("v1"), r("v2")]
    assert versions(kept).count("v2") == 1


def test_pinned_in_history_with_new_commit_replaces_entry_in_place():
    history = [r("v1"), r("v2", "old"), r("v3")]
    kept = retained_versions(history, r("v2", "new"), "v3", "v2", 5)
    assert kept == [r("v1"), r("v2", "new"), r("v3")]


def test_never_keeps_what_sando_did_not_deploy():
    history = [r("v1"), r("v2")]
    kept = retained_versions(history, r("v3"), "hand-made", "also-not-ours", 1)
    assert versions(kept) == ["v3"]


def test_does_not_mutate_inputs():
    history = [r("v1"), r("v2")]
    pinned = r("v3")
    retained_versions(history, pinned, "v2", "v1", 1)
    assert history == [r("v1"), r("v2")] and pinned == r("v3")


def test_keep_larger_than_history_keeps_everything():
    history = [r(f"v{i}") for i in range(1, 6)]
    assert versions(retained_versions(history, r("v6"), "v5", "v4", 100)) == [f"v{i}" for i in range(1, 7)]
