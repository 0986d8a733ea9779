"""What to send a node for a release, and the byte stream that carries it.

For each file of the new release, the cheapest way to get it onto the node:
  - `link`:  a release already on the node has the same bytes: hard-link it, send nothing;
  - `patch`: the live (or other retained) release has a file of that name whose bytes are
             in the local object store: send a zstd delta against it (`--patch-from`);
  - `full`:  send the file.
Everything travels as one tar, compressed as a whole (zstd, or gzip when the node has no
zstd), in one SSH exec; the node rebuilds the files, checks every sha256, then renames the
staging dir into place (sh/receive.sh, which reads the plan's steps: `link`, `patch`, `mode`).
"""

from __future__ import annotations

import io
import base64
import json
import os
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import build, paths

PATCH_LEVEL = 9  # measured on a 6.9 MB server binary: -19 gives 190 KB in 3.9 s, -9 223 KB in 0.13 s
STREAM_LEVEL = 3  # the outer stream is made per node: compress fast
PATCH_MIN_BYTES = 64 * 1024  # below this a delta is not worth a zstd run
MARGIN = 1.05


@dataclass(frozen=True)
class NodeRelease:
    """A release a node holds, as its manifest says."""

    version: str
    commit: str
    created_at: float
    files: dict[str, str]  # relative path -> sha256
    failed: bool = False

    @classmethod
    def from_manifest(cls, version: str, text: str, failed: bool) -> "NodeRelease":
        """The release its manifest describes; ValueError saying what is wrong with a broken one
        (a release with an unknown commit must not pass for a release of commit "")."""
        try:
            m = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(m, dict):
            raise ValueError("not a JSON object")
        commit, created, files = m.get("commit"), m.get("createdAt"), m.get("files")
        if not isinstance(commit, str) or not commit:
            raise ValueError("no commit")
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            raise ValueError("no createdAt")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError("no files")
        return cls(version, commit, float(created), dict(files), failed)


def step(kind: str, *fields: str | int) -> str:
    """One line of receive.sh's STEPS: the fields separated by tabs (a mode in octal)."""
    words = [kind, *(format(f, "04o") if isinstance(f, int) else f for f in fields)]
    bad = [w for w in words if not w or any(c in w for c in "\t\n\r")]
    if bad:
        raise build.BuildError(f"a release file name cannot hold a tab or a line break: {bad[0]!r}")
    return "\t".join(words)


@dataclass
class Plan:
    steps: list[str] = field(default_factory=list)  # receive.sh's steps (see step())
    members: list[tuple[str, str | bytes, int]] = field(default_factory=list)  # (name in the tar, source, mode)
    need_bytes: int = 0  # space the new files take on the node
    deltas: list[Path] = field(default_factory=list)  # cached patch files used
    counts: dict[str, int] = field(default_factory=lambda: {"linked": 0, "patched": 0, "full": 0})

    @property
    def need_kib(self) -> int:
        return int(self.need_bytes * MARGIN / 1024) + 1024


def plan(art: build.Artifacts, manifest: dict, held: list[NodeRelease], zstd: bool, patches: bool = True) -> Plan:
    """How to send `art` to a node holding `held` (most preferred base first: the live release).
    `patches=False` sends changed files whole (after a delta did not rebuild the right bytes)."""
    p = Plan()
    for i, (rel, digest, mode) in enumerate(art.files):
        same = next((r for r in held if r.files.get(rel) == digest), None)
        if same is not None:
            p.steps.append(step("link", same.version, rel))
            p.counts["linked"] += 1
            continue
        size = art.size(rel)
        base = next((r for r in held if rel in r.files and not r.failed
                     and build.object_path(r.files[rel]).exists()), None)
        if patches and zstd and base is not None and size >= PATCH_MIN_BYTES:
            delta = patch_file(base.files[rel], digest, os.path.join(art.root, rel))
            name = f"{paths.MANIFEST_DIR}/in/{i}.zst"
            p.members.append((name, str(delta), 0o600))
            p.steps.append(step("patch", base.version, rel, name, mode))
            p.deltas.append(delta)
            p.counts["patched"] += 1
            p.need_bytes += size + delta.stat().st_size
            continue
        p.members.append((rel, os.path.join(art.root, rel), mode))
        p.steps.append(step("mode", rel, mode))
        p.counts["full"] += 1
        p.need_bytes += size
    p.members.append((paths.SUMS, art.sums().encode(), 0o644))
    p.members.append((paths.MANIFEST, json.dumps(manifest, separators=(",", ":")).encode(), 0o644))
    p.steps += [step("mode", paths.SUMS, 0o644), step("mode", paths.MANIFEST, 0o644)]
    return p


def plan_local(art: build.Artifacts, manifest: dict, held: list[NodeRelease]) -> Plan:
    """A local node (the machine that built `art`): nothing travels. A file a held release has is
    linked from it, as for any node; every other one is hard-linked (copied across file systems)
    from the build's artifacts dir (`local` steps); the sums and the manifest are written by the
    step itself (`text`, base64). receive.sh checks every sha256 as for an upload."""
    p = Plan()
    p.counts["local"] = 0
    root = os.path.abspath(art.root)
    for rel, digest, mode in art.files:
        same = next((r for r in held if r.files.get(rel) == digest), None)
        if same is not None:
            p.steps.append(step("link", same.version, rel))
            p.counts["linked"] += 1
            continue
        p.steps.append(step("local", os.path.join(root, rel), rel, mode))
        p.counts["local"] += 1
        p.need_bytes += art.size(rel)  # nothing when linked; a copy (another file system) needs it
    for rel, text in ((paths.SUMS, art.sums()), (paths.MANIFEST, json.dumps(manifest, separators=(",", ":")))):
        p.steps += [step("text", rel, base64.b64encode(text.encode()).decode()), step("mode", rel, 0o644)]
    return p


_patch_lock = threading.Lock()
_patch_locks: dict[str, threading.Lock] = {}


def patch_file(base_digest: str, target_digest: str, target: str) -> Path:
    """zstd delta of target against the base bytes (from the object store), cached by the pair."""
    out = build.cache_root() / "patches" / f"{base_digest}-{target_digest}.zst"
    with _patch_lock:
        lock = _patch_locks.setdefault(out.name, threading.Lock())
    with lock:
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            base = build.object_path(base_digest)
            res = subprocess.run(["zstd", "-q", "-f", f"-{PATCH_LEVEL}", "--long=31", f"--patch-from={base}",
                                  target, "-o", str(tmp)], capture_output=True, text=True)
            if res.returncode != 0:
                raise build.BuildError(f"zstd --patch-from failed: {res.stderr.strip()}")
            os.replace(tmp, out)
    return out


def stream(p: Plan, compression: str) -> Callable[[], Iterator[bytes]]:
    """A replayable source of the compressed tar of the plan's members (for ssh.run's stdin)."""

    def chunks() -> Iterator[bytes]:
        with tempfile.TemporaryFile() as tar_file:
            with tarfile.open(fileobj=tar_file, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, source, mode in p.members:
                    _add(tar, name, source, mode)
            tar_file.seek(0)
            cmd = ["zstd", "-q", "-c", f"-{STREAM_LEVEL}", "-T0"] if compression == "zstd" else ["gzip", "-c", "-6"]
            proc = subprocess.Popen(cmd, stdin=tar_file, stdout=subprocess.PIPE)
            try:
                yield from iter(lambda: proc.stdout.read(256 * 1024), b"")
            finally:
                proc.stdout.close()
                if proc.wait() != 0:
                    raise build.BuildError(f"{cmd[0]} failed while packing the release")

    return chunks


def _add(tar: tarfile.TarFile, name: str, source: str | bytes, mode: int) -> None:
    if isinstance(source, bytes):
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(source), mode
        tar.addfile(info, io.BytesIO(source))
        return
    info = tar.gettarinfo(source, arcname=name)
    info.mode, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, "root", "root"
    with open(source, "rb") as fh:
        tar.addfile(info, fh)
