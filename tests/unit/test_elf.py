"""elf.py on real binaries of this machine, and on copies whose headers are changed to look foreign."""

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sando_components import elf


def _this_machine() -> str:
    return subprocess.run(["uname", "-m"], capture_output=True, text=True, check=True).stdout.strip()


def _this_glibc():
    return elf.node_glibc(subprocess.run(["getconf", "GNU_LIBC_VERSION"], capture_output=True, text=True).stdout)


def test_a_system_binary_fits_this_machine():
    need = elf.needs("/bin/ls")
    assert _this_machine() in need.machines and need.dynamic
    assert need.glibc is not None and need.glibc <= _this_glibc()
    assert elf.misfit("ls", need, _this_machine(), _this_glibc()) is None


@pytest.fixture(scope="module")
def static_binary(tmp_path_factory) -> Path:
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed (make setup's machine has it)")
    d = tmp_path_factory.mktemp("static")
    (d / "a.c").write_text("int main(void){return 0;}\n")
    res = subprocess.run(["gcc", "-static", "-o", str(d / "a"), str(d / "a.c")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return d / "a"


def test_a_static_binary_needs_no_glibc(static_binary):
    need = elf.needs(str(static_binary))
    assert not need.dynamic and need.glibc is None
    assert elf.misfit("a", need, _this_machine(), None) is None  # e.g. an Alpine (musl) node


def test_another_machine_is_named(tmp_path):
    data = bytearray(Path("/bin/ls").read_bytes())
    struct.pack_into("<H", data, 18, 183)  # aarch64
    need = elf.parse(bytes(data))
    assert need.machine == "aarch64"
    assert elf.misfit("makenotwork", need, "x86_64", (2, 36)) == "makenotwork is built for aarch64, the node is x86_64"


def test_a_newer_glibc_than_the_node_has_is_named():
    data = Path("/bin/ls").read_bytes()
    need = elf.parse(data)
    old = (need.glibc[0], need.glibc[1] - 1)
    msg = elf.misfit("makenotwork", need, _this_machine(), old)
    assert msg == f"makenotwork needs {need.glibc_text}, the node has glibc {old[0]}.{old[1]}"
    assert "no glibc" in elf.misfit("makenotwork", need, _this_machine(), None)


def test_node_glibc_reads_getconf():
    assert elf.node_glibc("glibc 2.36\n") == (2, 36)
    assert elf.node_glibc("") is None and elf.node_glibc("musl") is None


@pytest.mark.parametrize("data", [b"", b"#!/bin/sh\necho hi\n" * 10, b"\x7fELF" + b"\x09" * 60])
def test_not_an_elf_file_is_said_so(data):
    with pytest.raises(elf.NotElf):
        elf.parse(data)


def test_python_itself_parses():  # another real binary (the venv's interpreter)
    need = elf.needs(str(Path(sys.executable).resolve()))
    assert _this_machine() in need.machines
