"""sando's resource providers: Pulumi dynamic providers that act on a node over SSH, one module
per resource kind (reach, files, commands, release, pointer; the pointer's steps gate and warning).

pulumi-command's provider binary cannot be built here (see README "Engine"), so these small
providers do the remote work; being ours, they also give what pulumi-command lacks: drift seen
by a plain `pulumi up`, verified delta uploads, one SSH connection and few round trips per node.

The names below stay importable from `sando_components.providers`: stacks deployed by earlier
versions of sando hold providers serialized under these names in their state.
"""

from pulumi.dynamic import ResourceProvider

from . import base
from .commands import RemoteCommand, RemoteCommandProvider
from .files import RemoteFile, RemoteFileProvider
from .host import HostConfig, HostConfigProvider
from .pointer import Pointer, PointerProvider, Verdict, VerdictProvider
from .reach import Reach, ReachProvider
from .release import ReleaseFiles, ReleaseProvider


class RestartWarningProvider(ResourceProvider):
    """The restart warning used to be a resource of its own; it is a step of the pointer now. Kept
    so that a stack still holding one can drop it (its delete does nothing)."""

    def delete(self, _id, _props):
        pass


__all__ = ["HostConfig", "HostConfigProvider", "Pointer", "PointerProvider", "Reach", "ReachProvider", "ReleaseFiles",
           "ReleaseProvider", "RemoteCommand", "RemoteCommandProvider",
           "RemoteFile", "RemoteFileProvider", "RestartWarningProvider", "Verdict", "VerdictProvider", "base"]
