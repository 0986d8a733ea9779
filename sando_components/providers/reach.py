"""Reach: the first resource of a node, which every other one of the node waits for. Its check reads
what the node holds (the one round trip every run makes anyway, then kept for the node's other
resources), so a node that does not resolve or answer, a host key that no longer matches, or a key
the node refuses fails `pulumi preview` and `pulumi up` at once, said once for the node, before
any other resource of it is even looked at (a first deploy included, whose creates are otherwise
planned without asking the node). A pin that sando:verifyAgainst refuses (a commit the source stack
does not run) fails here too, unless the node holds that release already (a rollback by pin)."""

from __future__ import annotations

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from ..errors import OperatorError
from .base import AUTH, NodeProvider, NodeResource, changed, node_of, node_state, public, say_auth_only


class ReachProvider(NodeProvider):
    def check(self, olds, news):
        result = super().check(olds, news)
        if isinstance(news.get("connection"), dict) and isinstance(news.get("releaseRoot"), str):
            state = node_state(news)  # raises the node's own error (RemoteError names the node and what to check)
            refuse = news.get("refuse")
            if isinstance(refuse, dict):  # a pin sando:verifyAgainst refuses (stack.expected_build, issue 22.1)
                held = state.releases.get(refuse["version"])
                if held is None or held.commit != refuse["commit"]:
                    raise OperatorError(f"{node_of(news)}: {refuse['message']}")
        return result

    def diff(self, _id, olds, news):
        changes = changed(olds, news, ["releaseRoot", "service", *AUTH])
        if changes and set(changes) <= set(AUTH):
            say_auth_only(news, changes)
        return DiffResult(changes=bool(changes), replaces=[])

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:reach", outs=public(props))

    def update(self, _id, _olds, news):
        return UpdateResult(outs=public(news))

    def read(self, id_, props):
        return ReadResult(id_=id_, outs=props)

    def delete(self, _id, _props):
        pass  # nothing on the node is its own


class Reach(NodeResource):
    _provider_class = ReachProvider
