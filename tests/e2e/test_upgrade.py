"""Upgrading sando under a deployed stack (issue 18): a stack deployed by an older sando holds its
host files as one resource per file plus reload hooks; the first `pulumi up` with the current
code must end with one HostConfig per node without removing a host file from the node and without
reloading or restarting anything whose bytes did not change, and its preview must say so."""

from __future__ import annotations

import subprocess

from tests.support import REPO, AppRepo, run_preview, run_up

# the last main before host config became one resource per node (9c9a684 merged it): host files
# from the working tree, one RemoteFile per file, `caddy-reload` and `daemon-reload` hooks
OLD_SANDO = "531728a"
HOST_FILES = ["/etc/caddy/Caddyfile", "/etc/systemd/system/makenotwork.service", "/usr/local/sbin/setup-firewall.sh",
              "/usr/local/sbin/backup-db.sh", "/etc/cron.d/makenotwork-backup"]
# where the old sando put these two (under names their headers did not say: issue 18.6) -> where they go now
MOVED = {"/etc/ssh/sshd_config.d/sshd-git.conf": "/etc/ssh/sshd_config.d/makenotwork-git.conf",
         "/etc/fail2ban/jail.d/sshd.conf": "/etc/fail2ban/jail.d/makenotwork-sshd.conf"}


def old_project(dest) -> None:
    """The sando program as it was at OLD_SANDO (Pulumi.yaml, __main__.py, sando_components)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_SANDO, "Pulumi.yaml", "__main__.py",
                              "sando_components"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def current_project(dest) -> None:
    """The same project dir, now with the current sando."""
    subprocess.run(["rm", "-rf", str(dest / "sando_components"), str(dest / "__main__.py")], check=True)
    archive = subprocess.run(["tar", "-c", "-C", str(REPO), "--exclude=__pycache__", "Pulumi.yaml", "__main__.py",
                              "sando_components"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def pids(node) -> dict[str, str]:
    """MainPID and the time each unit last became active: a restart changes both."""
    out = {}
    for unit in ("caddy", "makenotwork", "ssh"):
        out[unit] = node.exec("systemctl", "show", "-p", "MainPID", "-p", "ActiveEnterTimestamp", unit,
                              check=True).stdout
    return out


def sums(node, files) -> dict[str, str]:
    res = node.exec("sha256sum", *files, check=True).stdout.split("\n")
    return {line.split()[1]: line.split()[0] for line in res if line.strip()}


def test_upgrading_from_per_file_host_resources_touches_nothing_on_the_node(make_nodes, make_deploy, tmp_path):
    repo = AppRepo(tmp_path / "app")
    (node,) = make_nodes(1)
    project = tmp_path / "project"
    old_project(project)
    d = make_deploy([node], repo=repo, project=project)
    d.unset("bootstrap")  # the old sando knew no sando:bootstrap.ref: host files came from the working tree
    run_up(d)
    old_names = {urn.split("::")[-1] for urn, _ in d.steps}
    assert {"node1-caddyfile", "node1-caddy-reload", "node1-unit", "node1-daemon-reload", "node1-sshdGit",
            "node1-cron"} <= old_names, old_names
    before_files = sums(node, HOST_FILES + list(MOVED))
    before_pids, before_events = pids(node), node.unit_events()

    # the operator upgrades sando and adds the new required key (README: host config)
    current_project(project)
    d.set(bootstrap={"ref": "main"})
    _, planned = run_preview(d)
    preview = "\n".join(d.log)
    assert planned["node1-host"] == "create"
    earlier = {f"node1-{r}" for r in ("layout", "caddyfile", "caddy-reload", "unit", "daemon-reload", "sshdGit",
                                      "fail2ban", "firewall", "backup", "cron")}
    assert planned == {"node1-host": "create", **dict.fromkeys(earlier, "delete")}, planned
    assert ("node1: host config: every host file is on the node as committed at sando:bootstrap.ref main; "
            "it is adopted as it is (nothing installed, reloaded or restarted)") in preview, preview
    assert ("moved to the names their headers say, same bytes, nothing reloaded: /etc/ssh/sshd_config.d/sshd-git.conf "
            "-> /etc/ssh/sshd_config.d/makenotwork-git.conf, /etc/fail2ban/jail.d/sshd.conf -> "
            "/etc/fail2ban/jail.d/makenotwork-sshd.conf") in preview, preview
    assert ("Deletes of the host-file resources of an earlier sando (node1-layout, node1-caddyfile, "
            "node1-caddy-reload, node1-unit, node1-daemon-reload, node1-sshdGit, node1-fail2ban, node1-firewall, "
            "node1-backup, node1-cron), where the preview lists them, only drop them from the state: no file is "
            "removed, nothing runs on the node") in preview, preview

    _, changed = run_up(d)
    assert changed == planned
    # nothing reloaded, restarted or re-read by systemd; every file as it was (the two moved ones
    # under the names their headers say, byte for byte)
    assert node.unit_events() == before_events
    assert pids(node) == before_pids
    after_files = sums(node, HOST_FILES + list(MOVED.values()))
    assert {path: after_files[MOVED.get(path, path)] for path in before_files} == before_files
    assert not any(node.path(old).exists() for old in MOVED)

    # one HostConfig per node in the state, none of the old per-file resources; the next up is a no-op
    state = d.stack.export_stack().deployment["resources"]
    names = [r["urn"].split("::")[-1] for r in state if r["type"] == "pulumi-python:dynamic:Resource"]
    assert names.count("node1-host") == 1 and not set(names) & earlier, names
    res, changed = run_up(d)
    assert changed == {} and node.unit_events() == before_events
