"""What a built binary needs of the host that runs it, read from its ELF headers (no tools).

`needs(path)` gives the machine (as `uname -m` names it) and, for a dynamically linked glibc
binary, the newest GLIBC_x.y symbol version it requires (from .gnu.version_r); a static binary
(musl or glibc -static) needs no particular glibc. `fits(...)` compares that with a node.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# e_machine -> the names `uname -m` gives for it
MACHINES = {
    3: ("i386", "i486", "i586", "i686"),
    8: ("mips", "mips64"),
    20: ("ppc",),
    21: ("ppc64", "ppc64le"),
    22: ("s390x",),
    40: ("armv6l", "armv7l", "armv8l", "arm"),
    62: ("x86_64", "amd64"),
    183: ("aarch64", "arm64"),
    243: ("riscv64",),
}
PT_INTERP = 3
SHT_GNU_VERNEED = 0x6FFFFFFE
GLIBC_RE = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.(\d+))?$")


class NotElf(ValueError):
    pass


@dataclass(frozen=True)
class Needs:
    machine: str  # the first `uname -m` name of its e_machine, or "e_machine N"
    machines: tuple[str, ...]  # every `uname -m` name that runs it
    dynamic: bool  # has an interpreter (PT_INTERP)
    glibc: tuple[int, ...] | None  # newest GLIBC_x.y it needs; None = none (static, musl)

    @property
    def glibc_text(self) -> str | None:
        return "GLIBC_" + ".".join(map(str, self.glibc)) if self.glibc else None


def needs(path: str) -> Needs:
    with open(path, "rb") as fh:
        data = fh.read()
    return parse(data)


def parse(data: bytes) -> Needs:
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise NotElf("not an ELF file")
    cls, enc = data[4], data[5]
    if cls not in (1, 2) or enc not in (1, 2):
        raise NotElf("unknown ELF class or byte order")
    end = "<" if enc == 1 else ">"
    wide = cls == 2

    def u(fmt: str, off: int):
        return struct.unpack_from(end + fmt, data, off)

    (machine,) = u("H", 18)
    if wide:
        phoff, shoff = u("QQ", 32)
        phentsize, phnum, shentsize, shnum = u("HHHH", 54)
    else:
        phoff, shoff = u("II", 28)
        phentsize, phnum, shentsize, shnum = u("HHHH", 42)
    dynamic = any(u("I", phoff + i * phentsize)[0] == PT_INTERP for i in range(phnum))

    sections = []
    for i in range(shnum):
        off = shoff + i * shentsize
        if wide:
            _name, typ, _flags, _addr, offset, size, link, info = u("IIQQQQII", off)
        else:
            _name, typ, _flags, _addr, offset, size, link, info = u("IIIIIIII", off)
        sections.append((typ, offset, size, link, info))

    versions: list[tuple[int, ...]] = []
    for typ, offset, size, link, count in sections:
        if typ != SHT_GNU_VERNEED or link >= len(sections):
            continue
        str_off = sections[link][1]
        pos = offset
        for _ in range(count):  # Elf_Verneed entries
            _ver, cnt, _file, aux, nxt = u("HHIII", pos)
            apos = pos + aux
            for _ in range(cnt):  # Elf_Vernaux entries
                _hash, _flags, _other, name, anext = u("IHHII", apos)
                text = data[str_off + name:data.index(b"\0", str_off + name)].decode("ascii", "replace")
                m = GLIBC_RE.match(text)
                if m:
                    versions.append(tuple(int(x) for x in m.groups() if x is not None))
                if not anext:
                    break
                apos += anext
            if not nxt:
                break
            pos += nxt
    names = MACHINES.get(machine, (f"e_machine {machine}",))
    if machine == 21:  # ppc64: the byte order tells which
        names = ("ppc64le",) if enc == 1 else ("ppc64",)
    return Needs(names[0], names, dynamic, max(versions) if versions else None)


def node_glibc(text: str) -> tuple[int, ...] | None:
    """The node's glibc version from `getconf GNU_LIBC_VERSION` ("glibc 2.36"); None if none."""
    m = re.search(r"glibc\s+(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(x) for x in m.groups() if x is not None) if m else None


def misfit(name: str, need: Needs, node_machine: str, glibc: tuple[int, ...] | None) -> str | None:
    """Why binary `name` cannot run on a node (`uname -m`, its glibc), or None when it can."""
    if node_machine and node_machine not in need.machines:
        return f"{name} is built for {need.machine}, the node is {node_machine}"
    if need.glibc:
        if glibc is None:
            return f"{name} needs {need.glibc_text} (a glibc build), the node has no glibc"
        if glibc < need.glibc:
            have = ".".join(map(str, glibc))
            return f"{name} needs {need.glibc_text}, the node has glibc {have}"
    return None
