"""A file on a node with given content and mode. No longer declared by the program (host files are
one HostConfig resource per node now: host.py); kept so stacks deployed by earlier versions can
drop their per-file resources (the delete leaves the file where it is)."""

from __future__ import annotations

import hashlib
import secrets

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from .. import commands, diagnostics, ssh
from .base import NodeProvider, AUTH, NodeResource, changed, conn_of, node_of, public, refresh_auth, target_of


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class RemoteFileProvider(NodeProvider):
    """Written atomically (temp file + rename) in one round trip, the content on stdin. Never
    removed: a file sando stops managing (destroy, an item dropped from sando:bootstrap.manage)
    stays on the node as it is, because the live service may need it; sando says so."""

    def _write(self, props: dict) -> dict:
        ssh.run(conn_of(props), commands.write_file(props["path"], int(props["mode"]), secrets.token_hex(4)),
                stdin=props["content"].encode(), retry=True)
        return {**public(props), "sha256": sha256_text(props["content"])}

    def create(self, props):
        return CreateResult(id_=f"{props['connection']['host']}:{props['path']}", outs=self._write(props))

    def diff(self, _id, olds, news):
        news = {**news, "sha256": sha256_text(news["content"])}
        changes = changed(olds, news, ["path", "sha256", "mode", *AUTH])
        return DiffResult(changes=bool(changes), replaces=["path"] if olds.get("path") != news["path"] else [],
                          delete_before_replace=False)

    def update(self, _id, olds, news):
        same = olds.get("sha256") == sha256_text(news["content"]) and olds.get("mode") == news["mode"]
        if same and target_of(olds) == target_of(news):  # another key or user: nothing to write
            return UpdateResult(outs=refresh_auth(olds, news))
        return UpdateResult(outs=self._write(news))  # changed, or the node is reached another way

    def delete(self, _id, props):
        diagnostics.log("info", f"{node_of(props)}: left {props['path']} in place (no longer managed by sando)")

    def read(self, id_, props):
        out = ssh.run(conn_of(props), commands.file_state(props["path"])).out
        if not out.strip():
            return ReadResult(id_=None, outs={})  # gone: refresh drops it, next up recreates it
        digest, mode = out.split()[0], int(out.split()[-1], 8)
        return ReadResult(id_=id_, outs={**props, "sha256": digest, "mode": mode})


class RemoteFile(NodeResource):
    _provider_class, _output_names = RemoteFileProvider, ("sha256",)
    sha256: pulumi.Output[str]
    path: pulumi.Output[str]

    def __init__(self, name: str, *, node: str, connection, private_key, release_root: str, service: str, path: str,
                 content: str, mode: int, opts: pulumi.ResourceOptions | None = None):
        super().__init__(name, {"node": node, "connection": connection, "privateKey": private_key,
                                "releaseRoot": release_root, "service": service,  # for base.prefetch
                                "path": path, "content": content, "mode": mode}, opts)
