"""README's "Host config" blocks run as written by bash on a terminal (issue 18.3 and 18.8):
pushing a host-config change to testnot then prod, and rotating sando's SSH key. Two test nodes
stand in for the testnot and prod hosts (set up as README's "Using it for real" does, with a
testnot host of its own); ../makenotwork is the stand-in app with a remote to push to; sando's
one question (promote) is answered `y`."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

from tests.support import PROJECT_FILES, REPO, AppRepo


def readme_block(title: str) -> str:
    """The first ```sh block after the bold paragraph title `title` in README's "Host config"."""
    section = (REPO / "README.md").read_text().split("## Host config", 1)[1]
    return section.split(f"**{title}**", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]


class Terminal:
    """bash scripts in the sando checkout, on a terminal, HOME and the backend private to the test."""

    def __init__(self, checkout: Path, env: dict[str, str]):
        self.checkout, self.env = checkout, env

    def run(self, script: str, timeout: float = 600) -> tuple[int, str, int]:
        """(exit code, what the terminal showed, how many [y/N] questions were answered y)."""
        path = self.checkout.parent / f"script-{time.monotonic_ns()}.sh"
        path.write_text("set -e\n. scripts/env.sh\n" + script)
        master, slave = pty.openpty()
        proc = subprocess.Popen(["bash", str(path)], cwd=self.checkout, env=self.env, stdin=slave, stdout=slave,
                                stderr=slave, start_new_session=True)
        os.close(slave)
        seen, answered, deadline = b"", 0, time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
            if seen.count(b"[y/N] ") > answered:
                os.write(master, b"y\n")
                answered += 1
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait(timeout=60)
        while select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        os.close(master)
        return proc.returncode, seen.decode(errors="replace"), answered


def test_pushing_a_host_config_change_and_rotating_the_key_run_as_written(make_nodes, tmp_path):
    token = "tok-" + os.urandom(8).hex()
    t, p = make_nodes(2, token=token)
    assert p.user == "root" and p.port == 22  # as the block's `ssh root@prod.example` reaches it
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    for tier, node in (("testnot", t), ("prod", p)):
        shutil.copy(node.privateKeyPath, home / ".ssh" / f"sando_{tier}")
        shutil.copy(node.privateKeyPath + ".pub", home / ".ssh" / f"sando_{tier}.pub")
    # ssh reads ~/.ssh of the passwd entry, not $HOME: a wrapper points it at the test's HOME (prod's
    # host key known, and a refused key fails at once instead of asking for a password)
    (home / ".ssh" / "known_hosts").write_text(f"{p.host} {p.hostKey}\n")
    (home / ".ssh" / "config").write_text(f"UserKnownHostsFile {home}/.ssh/known_hosts\nBatchMode yes\n")
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {home}/.ssh/config "$@"\n')
    (wrappers / "ssh").chmod(0o755)
    (home / "token").write_text(token)
    repo = AppRepo(tmp_path / "makenotwork")  # ../makenotwork of the checkout
    repo.git("commit", "-q", "--allow-empty", "-m", "host config")
    repo.git("tag", "host-1")
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], check=True)
    repo.git("remote", "add", "origin", str(tmp_path / "origin.git"))
    checkout = tmp_path / "sando"
    checkout.mkdir()
    for f in [*PROJECT_FILES, "Pulumi.testnot.yaml", "Pulumi.prod.yaml", "scripts/env.sh"]:
        (checkout / f).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / f).is_dir() else shutil.copy)(REPO / f, checkout / f)
    for d in (".tools", ".venv"):
        (checkout / d).symlink_to(REPO / d)
    git = ["git", "-c", "user.name=op", "-c", "user.email=op@example.org", "-C", str(checkout)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "Pulumi.testnot.yaml", "Pulumi.prod.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "tiers"], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "SANDO_"))}
    real_home = os.path.expanduser("~")
    env.setdefault("RUSTUP_HOME", os.path.join(real_home, ".rustup"))
    env.setdefault("CARGO_HOME", os.path.join(real_home, ".cargo"))
    env.update(PATH=f"{wrappers}:{env['PATH']}", HOME=str(home), SANDO_CACHE_DIR=str(tmp_path / "cache"), TERM="dumb",
               PULUMI_HOME=str(tmp_path / "pulumi-home"), PULUMI_CONFIG_PASSPHRASE="pp-" + os.urandom(8).hex(),
               GIT_AUTHOR_NAME="op", GIT_AUTHOR_EMAIL="op@example.org", GIT_COMMITTER_NAME="op",
               GIT_COMMITTER_EMAIL="op@example.org")
    term = Terminal(checkout, env)

    # both tiers deployed at host-1, each on a host of its own (README "Using it for real")
    setup = "".join(
        f"pulumi stack init {tier}\n"
        f"pulumi config set --path 'sando:source.repo' ../makenotwork -s {tier}\n"
        f"pulumi config set --path 'sando:bootstrap.ref' host-1 -s {tier}\n"
        + (f"pulumi config rm --path 'sando:nodes[0].local' -s {tier}\n" if tier == "testnot" else "")
        + f"pulumi config set --path 'sando:nodes[0].host' {node.host} -s {tier}\n"
        f"pulumi config set --path 'sando:nodes[0].hostKey' '{node.hostKey}' -s {tier}\n"
        f"pulumi config set --secret sando:sshPrivateKey -s {tier} < ~/.ssh/sando_{tier}\n"
        for tier, node in (("testnot", t), ("prod", p)))
    setup += ("pulumi config set --secret sando:cliServiceToken -s prod < ~/token\n"
              "pulumi up -s testnot --yes\npulumi up -s prod --yes\n")
    code, said, _ = term.run(setup)
    assert code == 0, said[-4000:]

    # an operator's edit of the Caddyfile in the server repo, then the block: testnot, then prod
    caddyfile = repo.path / "server" / "deploy" / "Caddyfile"
    caddyfile.write_text(caddyfile.read_text() + "# longer timeouts\n")
    code, said, answered = term.run(readme_block("Pushing a host-config change"))
    assert code == 0 and answered == 1, said[-4000:]  # promote asked
    assert "testnot-host update [diff: ~caddyfile,commit,ref]" in said, said[-4000:]
    host7 = repo.commit("host-7")
    assert subprocess.run(["git", "-C", str(tmp_path / "origin.git"), "rev-parse", "host-7^{commit}"],
                          capture_output=True, text=True).stdout.strip() == host7
    for node in (t, p):
        assert node.path("/etc/caddy/Caddyfile").read_text().endswith("# longer timeouts\n"), node.name
    assert f"ref: {host7}" in (checkout / "Pulumi.prod.yaml").read_text()  # prod runs testnot's commit
    log = subprocess.run([*git, "log", "-1", "--format=%s", "--name-only"], capture_output=True, text=True).stdout
    assert log.split()[:3] == ["host", "config", "host-7"] and "Pulumi.prod.yaml" in log, log

    # the key rotation block, on prod: nothing on the node changes; afterwards only the new key gets in
    old_pub = (home / ".ssh" / "sando_prod.pub").read_text().split()[1]
    events = p.unit_events()
    block = readme_block("Rotating sando's SSH key").replace("prod.example", p.host)
    code, said, _ = term.run(block)
    assert code == 0, said[-4000:]
    assert ("prod: only how sando connects changed (its SSH key); nothing on the node changes: its resources record "
            "the new credentials (for later refreshes and deletes)") in said, said[-4000:]
    keys = p.path("/root/.ssh/authorized_keys").read_text()
    new_pub = (home / ".ssh" / "sando_prod.pub").read_text().split()[1]
    assert old_pub not in keys and new_pub in keys and new_pub != old_pub
    assert p.unit_events() == events  # nothing reloaded or restarted
    assert p.served()["version"] == "v1"
