"""Hand-written deploy baselines for make bench. stdlib only.

minimal_deploy: the floor an expert would hand-write, one `ssh` invocation per node
(OpenSSH client, host key pinned via a known_hosts file, BatchMode) that reads a tar of
the release on stdin and on the node runs, in one shell:

    cd <release_root>
    mkdir -p releases/<v>
    tar -x --no-same-owner -C releases/<v>
    ln -sfn releases/<v> current.tmp && mv -T current.tmp current || exit 1
    systemctl reload-or-restart <service>
    curl <health_url> until it answers 2xx (or the timeout)

No checksums, no manifest, no rollback, no restart warning: the lower bound to compare
sando against, not a deploy tool. The pieces (ssh_argv, remote_script, tar_release) are
separate so that tests/harness/test_baselines.py can check them without SSH.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import tarfile
import time
from pathlib import Path

VERSION_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
NAME_OK = re.compile(r"^[A-Za-z0-9._+-]+$")


class DeployError(RuntimeError):
    """The ssh invocation failed; `returncode` and the remote `stderr` are attached."""

    def __init__(self, msg: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(msg)
        self.returncode = returncode
        self.stderr = stderr


def ssh_argv(host: str, port: int, user: str, key_path: str | Path, known_hosts: str | Path,
             remote_command: str, host_key_alias: str | None = None, connect_timeout: int = 15) -> list[str]:
    """The OpenSSH client command line: no user/system config, only this key, host key
    checked strictly against `known_hosts` (entries `[host]:port key` for port != 22, or
    under `host_key_alias` when given, e.g. when connecting through a proxy port)."""
    argv = ["ssh", "-F", "/dev/null", "-T", "-i", str(key_path), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}"]
    if host_key_alias:
        argv += ["-o", f"HostKeyAlias={host_key_alias}"]
    return argv + ["-p", str(port), f"{user}@{host}", remote_command]


def remote_script(release_root: str, version: str, service: str, health_url: str,
                  health_timeout: float = 30.0, poll_interval: float = 0.1) -> str:
    """The one shell script run on the node (by the login shell, via ssh); it reads the
    release tar on stdin. Exits non-zero with a message on stderr when a step fails."""
    if not VERSION_OK.match(version):
        raise ValueError(f"bad version {version!r}")
    if not NAME_OK.match(service):
        raise ValueError(f"bad service name {service!r}")
    rel = shlex.quote(f"releases/{version}")
    url = shlex.quote(health_url)
    timeout = max(1, int(health_timeout + 0.999))
    failed = shlex.quote(f"health check failed: {health_url} not 2xx after {timeout}s")
    return (
        f"set -e; cd {shlex.quote(release_root)}; "
        f"mkdir -p {rel}; "
        f"tar -x --no-same-owner -C {rel}; "
        f"ln -sfn {rel} current.tmp && mv -T current.tmp current || exit 1; "
        f"systemctl reload-or-restart {service}; "
        f"end=$(($(date +%s) + {timeout})); "
        f"until curl -fsS -o /dev/null --max-time 2 {url} 2>/dev/null; do "
        f"if [ \"$(date +%s)\" -ge \"$end\" ]; then "
        f"echo {failed} >&2; exit 1; fi; "
        f"sleep {poll_interval}; done"
    )


def tar_release(files: dict[str, Path]) -> bytes:
    """An uncompressed tar of the release: each key is the name inside releases/<v>/, each
    value a local file or directory (added recursively; modes kept, owner set to 0)."""
    buf = io.BytesIO()

    def owner(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, path in files.items():
            if not name or name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"bad name in release {name!r}")
            path = Path(path)
            if not path.exists():
                raise FileNotFoundError(path)
            tar.add(str(path), arcname=name, recursive=True, filter=owner)
    return buf.getvalue()


def minimal_deploy(host: str, port: int, user: str, key_path: str | Path, known_hosts: str | Path,
                   release_root: str, version: str, files: dict[str, Path], service: str, health_url: str,
                   *, health_timeout: float = 30.0, ssh_timeout: float = 300.0,
                   host_key_alias: str | None = None) -> float:
    """Deploy `files` as releases/<version> under `release_root` on one node in one ssh
    invocation, switch `current`, restart `service`, wait for `health_url` (curl on the
    node). Returns the elapsed seconds (tar creation included); raises DeployError with
    the remote stderr on failure."""
    t0 = time.monotonic()
    payload = tar_release(files)
    argv = ssh_argv(host, port, user, key_path, known_hosts,
                    remote_script(release_root, version, service, health_url, health_timeout),
                    host_key_alias=host_key_alias)
    try:
        p = subprocess.run(argv, input=payload, capture_output=True, timeout=ssh_timeout)
    except subprocess.TimeoutExpired as e:
        raise DeployError(f"minimal deploy of {version} to {user}@{host}:{port}: ssh timed out after "
                          f"{ssh_timeout}s", None, (e.stderr or b"").decode(errors="replace")) from None
    took = time.monotonic() - t0
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip()
        raise DeployError(f"minimal deploy of {version} to {user}@{host}:{port} failed "
                          f"(exit {p.returncode}): {err}", p.returncode, err)
    return took
