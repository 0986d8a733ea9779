"""A command run on a node when it is created and again when its triggers change (the
bootstrap hooks: `systemctl reload caddy` after the Caddyfile, `daemon-reload` after the unit)."""

from __future__ import annotations

import secrets

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, UpdateResult

from .. import ssh
from .base import NodeProvider, AUTH, NodeResource, changed, conn_of, public, refresh_auth, target_of


class RemoteCommandProvider(NodeProvider):
    """Runs `create` on create, `update` (or `create`) when its triggers change; nothing on delete."""

    def _run(self, props: dict, cmd: str) -> dict:
        return {**public(props), "stdout": ssh.run(conn_of(props), cmd).out[-4000:]}

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:{secrets.token_hex(4)}",
                            outs=self._run(props, props["create"]))

    def diff(self, _id, olds, news):
        changes = changed(olds, news, ["create", "update", "triggers", *AUTH])
        return DiffResult(changes=bool(changes), replaces=[])

    def update(self, _id, olds, news):
        if not changed(olds, news, ["create", "update", "triggers"]) and target_of(olds) == target_of(news):
            return UpdateResult(outs=refresh_auth(olds, news))
        return UpdateResult(outs=self._run(news, news.get("update") or news["create"]))

    def delete(self, _id, props):
        pass


class RemoteCommand(NodeResource):
    _provider_class, _output_names = RemoteCommandProvider, ("stdout",)
    stdout: pulumi.Output[str]

    def __init__(self, name: str, *, node: str, connection, private_key, release_root: str, service: str, create: str,
                 update: str | None = None, triggers: list | None = None, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, {"node": node, "connection": connection, "privateKey": private_key,
                                "releaseRoot": release_root, "service": service,  # for base.prefetch
                                "create": create, "update": update, "triggers": triggers or []}, opts)
