"""README's "Using it for real" block, run as written by bash on a terminal (issue 20.9): two
test nodes stand in for testnot.example and prod.example; the files the block reads (~/.ssh/
sando_*, the token file, ../makenotwork with tags v41 and v42) are made where it looks; the
passphrase `...` is filled in; sando's questions are answered `y`."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import time

from tests.support import PROJECT_FILES, REPO, AppRepo


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Using it for real", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_using_it_for_real_runs_as_written(make_nodes, tmp_path):
    token = "tok-" + os.urandom(8).hex()
    t, p = make_nodes(2, token=token)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".config" / "makenotwork").mkdir(parents=True)
    for tier, node in (("testnot", t), ("prod", p)):
        shutil.copy(node.privateKeyPath, home / ".ssh" / f"sando_{tier}")
    (home / ".config" / "makenotwork" / "cli-service-token").write_text(token)
    repo = AppRepo(tmp_path / "makenotwork")  # ../makenotwork of the checkout
    repo.version("v41")
    repo.version("v42")
    repo.git("commit", "-q", "--allow-empty", "-m", "host config")  # the host config the block pins: a commit
    repo.git("tag", "host-1")  # of its own (a tag on v41 would be what `git describe` names v41's build)
    checkout = tmp_path / "sando"
    checkout.mkdir()
    for f in [*PROJECT_FILES, "Pulumi.testnot.yaml", "Pulumi.prod.yaml", "scripts/env.sh"]:
        (checkout / f).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / f).is_dir() else shutil.copy)(REPO / f, checkout / f)
    for d in (".tools", ".venv"):
        (checkout / d).symlink_to(REPO / d)

    passphrase = "pp-" + os.urandom(8).hex()
    block = (readme_block().replace("#REMOTE-TESTNOT ", "")
             .replace("testnot.example", t.host).replace("prod.example", p.host)
             .replace("PULUMI_CONFIG_PASSPHRASE=...", f"PULUMI_CONFIG_PASSPHRASE={passphrase}"))
    assert "..." not in block.split("#")[0]
    (tmp_path / "block.sh").write_text("set -e\n" + block)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "SANDO_"))}
    real_home = os.path.expanduser("~")  # the operator's toolchain stays where it is installed
    env.setdefault("RUSTUP_HOME", os.path.join(real_home, ".rustup"))
    env.setdefault("CARGO_HOME", os.path.join(real_home, ".cargo"))
    env.update(HOME=str(home), SANDO_CACHE_DIR=str(tmp_path / "cache"), TERM="dumb", PULUMI_SKIP_CONFIRMATIONS="true",
               PULUMI_HOME=str(tmp_path / "pulumi-home"))
    master, slave = pty.openpty()
    proc = subprocess.Popen(["bash", str(tmp_path / "block.sh")], cwd=checkout, env=env, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    seen, answered, deadline = b"", 0, time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
        if seen.count(b"[y/N] ") > answered:
            os.write(master, b"y\n")
            answered += 1
    proc.wait(timeout=60)
    os.close(master)
    said = seen.decode(errors="replace")
    assert proc.returncode == 0, said[-4000:]
    assert answered == 2, said[-4000:]  # promote and rollback asked
    assert "sando: prod runs v42" in said and "back from v42 to v41" in said, said[-4000:]
    assert p.served()["version"] == "v41" and t.served()["version"] == "v42"
    assert re.search(rf"prod\s+prod\s+v42", said), said[-4000:]  # sando status, before the rollback
    assert passphrase not in (checkout / "Pulumi.prod.yaml").read_text()
    assert token not in (checkout / "Pulumi.prod.yaml").read_text()
