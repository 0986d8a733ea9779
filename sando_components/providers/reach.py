"""Reach: the first resource of a node, which every other one of the node waits for. Its check reads
what the node holds (the one round trip every run makes anyway, then kept for the node's other
resources), so a node that does not resolve or answer, a host key that no longer matches, or a key
the node refuses fails `pulumi preview` and `pulumi up` at once, said once for the node, before
any other resource of it is even looked at (a first deploy included, whose creates are otherwise
planned without asking the node). A pin that sando:verifyAgainst refuses (a commit the source stack
does not run) fails here too, unless the node holds that release already (a rollback by pin)."""

from __future__ import annotations

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from .. import diagnostics
from ..errors import OperatorError
from .base import (AUTH, NodeProvider, NodeResource, changed, mark_unreachable, node_of, node_state, public,
                   say_auth_only, unreachable)


class ReachProvider(NodeProvider):
    def check(self, olds, news):
        result = super().check(olds, news)
        if isinstance(news.get("connection"), dict) and isinstance(news.get("releaseRoot"), str):
            try:
                state = node_state(news)  # raises the node's own error (RemoteError names the node and what to check)
            except OperatorError as exc:
                if not diagnostics.skips_preview():
                    raise  # a preview (a plain up's too) stops here, said once for the node
                # an up without a preview: a raise here would end the run before the program's outputs are
                # recorded (they would show as deleted); the node's other resources change nothing, its
                # pointer carries this to the verdict, which says it once at the end (issue 19.3)
                mark_unreachable(news, str(exc))
                diagnostics.log("warning", f"{news.get('node')}: not reached (the error at the end says why)")
                return result
            refused = self.refused(news, state)
            if refused:
                if not diagnostics.skips_preview():
                    raise OperatorError(refused)  # a preview stops here: nothing built or sent
                # an up without a preview: held out of this run as an unreached node is, said at the end
                mark_unreachable(news, refused, "refused (sando:verifyAgainst)")
                diagnostics.log("warning", f"{node_of(news)}: {news['refuse']['version']} refused here "
                                           "(the error at the end says why)")
        return result

    @staticmethod
    def refused(props: dict, state) -> str | None:
        """A pin sando:verifyAgainst refuses (stack.expected_build, issue 22.1), unless the node holds
        that release already (a rollback by pin: its bytes were checked when they shipped)."""
        refuse = props.get("refuse")
        if not isinstance(refuse, dict):
            return None
        held = state.releases.get(refuse["version"])
        if held is not None and held.commit == refuse["commit"]:
            return None
        return f"{node_of(props)}: {refuse['message']}"

    def diff(self, _id, olds, news):
        changes = changed(olds, news, ["releaseRoot", "service", *AUTH])
        if changes and set(changes) <= set(AUTH) and not unreachable(news):
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
