"""sando:switch.strategy blueGreen (issue 23) on real-systemd nodes through the real engine: the
new release starts beside the old one on the idle port, is checked there, and takes traffic only
when healthy (sando's nft rule moves Caddy's upstream port, the front, to it: Caddy is never
reloaded by a switch); users through Caddy see no failed request, also when the new release
crashes at start, hangs, or the one Caddy reload (an earlier sando's upstream file) fails."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.support import TOOLS, AppRepo, run_preview, run_up, wait_for

UPSTREAM = "/etc/caddy/sando-upstream.caddy"
PLAIN_LINE = "reverse_proxy {$MNW_UPSTREAM:127.0.0.1:3000}"
IMPORT_LINE = f"import {UPSTREAM}"
BLUE_GREEN = {"strategy": "blueGreen", "ports": [3001, 3002], "drainSeconds": 1}


def import_upstream(repo: AppRepo) -> None:
    """The Caddyfile change the preview asks for: the import in place of the reverse_proxy line."""
    caddyfile = repo.path / "server" / "deploy" / "Caddyfile"
    text = caddyfile.read_text()
    assert PLAIN_LINE in text
    caddyfile.write_text(text.replace(PLAIN_LINE, IMPORT_LINE))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    r = AppRepo(tmp_path_factory.mktemp("bgapp") / "makenotwork")
    import_upstream(r)
    r.commit_tag("v1")
    r.version("v2")
    r.version("v3", ("slow-start", "3000"))  # takes 3 s to start
    r.version("v4", ("fix",))
    r.version("v5", ("crash-at-start",))  # exits at start
    r.version("v6", ("fix",), ("slow-start", "600000"))  # never listens in time: hangs before healthy
    r.version("v7", ("fix",))
    r.version("v8", ("good-migration",))
    r.version("v9", ("destructive-migration",))
    r.version("v10")
    return r


class Poller(threading.Thread):
    """GET through Caddy every 10 ms (bounded: at most `limit` requests) until stopped; every
    answer that is not a 200 with the app's JSON is a failure."""

    def __init__(self, url: str, interval: float = 0.01, limit: int = 60000):
        super().__init__(daemon=True)
        self.url, self.interval, self.limit = url, interval, limit
        self.done = threading.Event()
        self.requests, self.failures, self.versions = 0, [], set()

    def run(self):
        while not self.done.is_set() and self.requests < self.limit:
            self.requests += 1
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    body = json.loads(resp.read())
                    self.versions.add(body["version"])
            except Exception as exc:  # noqa: BLE001 - any failure is what the test counts
                self.failures.append(f"{time.time():.3f} {exc!r}"[:200])
            time.sleep(self.interval)

    def stop(self) -> "Poller":
        self.done.set()
        self.join(timeout=30)
        return self


def polling(node) -> Poller:
    p = Poller(node.caddyUrl)
    p.start()
    wait_for(lambda: p.requests > 5, timeout=10)
    return p


def sh(node, cmd: str) -> str:
    return node.exec("sh", "-c", cmd).stdout.strip()


def active(node, unit: str) -> str:
    return sh(node, f"systemctl is-active {unit}")


def enabled(node, unit: str) -> str:
    return sh(node, f"systemctl is-enabled {unit} 2>/dev/null || true")


def live_port(node) -> str:
    """The port the front (Caddy's upstream, 127.0.0.1:3000) is redirected to, as the kernel has it;
    Caddy itself dials the front, through the upstream file."""
    assert "reverse_proxy 127.0.0.1:3000 {" in node.path(UPSTREAM).read_text()
    (port,) = re.findall(r"tcp dport 3000 redirect to :(\d+)", sh(node, "nft list table ip sando"))
    return port


def caddy_reloads(node) -> int:
    return sum(1 for e in node._pid1_entries() if e.get("UNIT") == "caddy.service"
               and (e.get("MESSAGE") or "").startswith("Reloading"))


def assert_only_live(node, port: str, version: str) -> None:
    """The instance on `port` serves `version` (through Caddy too) and is the only one that runs
    and starts at boot."""
    other = {"3001": "3002", "3002": "3001"}[port]
    assert live_port(node) == port
    assert active(node, f"makenotwork@{port}") == "active"
    assert active(node, f"makenotwork@{other}") != "active"
    assert active(node, "makenotwork") != "active"
    assert enabled(node, f"makenotwork@{port}") == "enabled"
    assert enabled(node, f"makenotwork@{other}") != "enabled"
    assert enabled(node, "makenotwork") != "enabled"
    assert json.loads(sh(node, f"curl -fsS http://127.0.0.1:{port}/"))["version"] == version  # on the node: 127.0.0.1
    assert node.served(node.caddyUrl)["version"] == version


@pytest.fixture
def bg_deploy(make_nodes, make_deploy, repo):
    def make(**config):
        (node,) = make_nodes(1)
        d = make_deploy([node], repo=repo, switch=BLUE_GREEN, **config)
        run_up(d)  # v1 on the first instance
        return node, d
    return make


def test_preview_names_the_missing_import(make_nodes, make_deploy, app):
    (node,) = make_nodes(1)
    d = make_deploy([node], switch=BLUE_GREEN)  # the stand-in's Caddyfile as shipped: no import
    with pytest.raises(Exception) as err:
        run_preview(d)
    text = str(err.value)
    assert "sando:switch.strategy: blueGreen, but server/deploy/Caddyfile" in text
    assert f"put the line `{IMPORT_LINE}` in place of the site's reverse_proxy line" in text
    assert not node.path(UPSTREAM).exists()  # nothing changed on the node


def test_preview_names_a_node_without_nft(make_nodes, make_deploy, repo):
    (node,) = make_nodes(1)
    node.exec("sh", "-c", "mv /usr/sbin/nft /usr/sbin/nft.hidden", check=True)
    d = make_deploy([node], repo=repo, switch=BLUE_GREEN)
    with pytest.raises(Exception) as err:
        run_preview(d)
    assert ("node1: sando:switch.strategy is blueGreen, whose switch moves an nft rule, but nft is not installed on "
            "the node: apt-get install nftables there, then run again") in str(err.value)
    assert not (node.release_root / "current").exists()


def test_bumps_through_caddy_fail_no_request(bg_deploy):
    """v1 -> v2 -> v3 (3 s to start) -> rollback by pin to v2, a poller through Caddy every 10 ms:
    not one failed request; the instances alternate, only the live one runs and starts at boot."""
    node, d = bg_deploy(healthCheck={"timeoutSeconds": 20, "intervalSeconds": 0.2, "expectVersion": True})
    assert_only_live(node, "3001", "v1")
    reloads = caddy_reloads(node)
    poller = polling(node)
    try:
        d.set(version="v2")
        run_up(d)
        assert_only_live(node, "3002", "v2")
        d.set(version="v3")
        run_up(d)
        assert_only_live(node, "3001", "v3")
        d.set(version="v2")  # rollback by pin: the same move in reverse
        run_up(d)
        assert_only_live(node, "3002", "v2")
    finally:
        poller.stop()
    assert poller.failures == [], poller.failures[:5]
    assert poller.requests > 100 and {"v1", "v2", "v3"} <= poller.versions
    assert caddy_reloads(node) == reloads  # a Caddy reload resets connections queued on its old listener
    assert os.readlink(node.release_root / "current") == "releases/v2"
    assert os.readlink(node.release_root / "previous") == "releases/v3"
    out = d.node_out(node)
    assert (out["liveVersion"], out["previousVersion"], out["health"]) == ("v2", "v3", "ok")
    _, changed = run_up(d)  # nothing left to do
    assert changed == {}


def _fails_unseen(node, d, version: str, legacy: bool = False, **config) -> list[str]:
    poller = polling(node)
    try:
        d.set(version=version, **config)
        errors = d.errors(d.up_fails())
    finally:
        poller.stop()
    assert poller.failures == [], poller.failures[:5]
    assert poller.versions == {"v1"}  # users never reached the new release
    if not legacy:
        assert_only_live(node, "3001", "v1")
    else:  # Caddy still dials 3001 itself; the front is back on it too
        assert re.findall(r"redirect to :(\d+)", sh(node, "nft list table ip sando")) == ["3001"]
        assert active(node, "makenotwork@3002") != "active" and node.served(node.caddyUrl)["version"] == "v1"
    assert os.readlink(node.release_root / "current") == "releases/v1"
    return errors


def test_new_instance_crashes_at_start(bg_deploy):
    node, d = bg_deploy()
    error, *quoted = _fails_unseen(node, d, "v5")
    assert error.startswith("node1: v5 exited at start (makenotwork@3002.service "), error
    assert error.endswith("; it was stopped before any user request reached it and v1 still serves. "
                          "Last lines of its journal:"), error
    assert "crash-at-start build: exiting" in quoted, quoted
    assert (node.release_root / "releases" / "v5" / ".sando" / "failed").exists()
    assert d.node_out(node)["liveVersion"] == "v1"


def test_new_instance_hangs_before_healthy(bg_deploy):
    node, d = bg_deploy()
    error, *quoted = _fails_unseen(node, d, "v6",
                                   healthCheck={"timeoutSeconds": 3, "intervalSeconds": 0.2, "expectVersion": True})
    assert error.startswith("node1: v6 did not become healthy on its own port 3002 ("), error
    assert "it was stopped before any user request reached it and v1 still serves" in error
    assert any("slow-start build: waiting 600000 ms" in q for q in quoted), quoted


def test_caddy_reload_fails(bg_deploy):
    """A switch does not need Caddy: with Caddy's reload broken, a bump goes through. The one reload
    left, an earlier sando's per-instance upstream file moved to the front, fails: the file is
    back, the front and the new instance undone, v1 still serves; fixed, the re-run converges."""
    node, d = bg_deploy()
    node.unit_dropin("broken-reload", "[Service]\nExecReload=\nExecReload=/bin/false", unit="caddy")
    d.set(version="v2")
    run_up(d)
    assert_only_live(node, "3002", "v2")
    d.set(version="v1")  # back to v1 (3001), as an earlier sando left it: Caddy dialing 3001 itself
    run_up(d)
    legacy = ("# written by sando (sando:switch.strategy blueGreen): where Caddy sends makenotwork requests.\n"
              "reverse_proxy 127.0.0.1:3001\n")
    node.path(UPSTREAM).write_text(legacy)
    node.unit_dropin("", "", unit="caddy")
    node.exec("systemctl", "reload", "caddy", check=True)
    node.unit_dropin("broken-reload", "[Service]\nExecReload=\nExecReload=/bin/false", unit="caddy")
    (error,) = _fails_unseen(node, d, "v2", legacy=True)
    assert error.startswith("node1: Caddy did not take the new upstream (systemctl reload caddy: "), error
    assert error.endswith(f"{UPSTREAM} is back, v2 (makenotwork@3002.service) was stopped and v1 still serves "
                          "(sando:switch)"), error
    assert node.path(UPSTREAM).read_text() == legacy
    node.unit_dropin("", "", unit="caddy")
    run_up(d)  # Caddy reloads again: the deploy goes through
    assert_only_live(node, "3002", "v2")


def test_ctrl_c_between_start_and_switch(bg_deploy):
    """Ctrl-C while the new instance (3 s to start) is starting: the node's switch runs to its end
    (or the re-run waits for it), a re-run converges, no stray instance is left running."""
    node, d = bg_deploy()
    poller = polling(node)
    d.set(version="v3")
    env = {**os.environ, **d.env}
    proc = subprocess.Popen([str(TOOLS / "bin" / "pulumi"), "up", "--yes", "--skip-preview", "--stack", d.name,
                             "--non-interactive"], cwd=d.project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(lambda: "slow-start build: waiting" in node.journal("makenotwork@3002"), timeout=180)
    for _ in range(2):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
    proc.communicate(timeout=120)
    d.cli(["cancel", "--yes"], check=False)  # a hard stop may leave the stack's lock behind
    run_up(d)
    poller.stop()
    assert poller.failures == [], poller.failures[:5]
    assert_only_live(node, "3002", "v3")
    _, changed = run_up(d)
    assert changed == {}


def test_systemd_restarted_after_a_blue_green_deploy(bg_deploy):
    """The node's systemd re-executed, every unit stopped and started as at boot, the kernel's nft
    rules gone: the live instance comes back on its port, the front is pointed at it again before
    Caddy starts (the other instance and the plain unit stay down)."""
    node, d = bg_deploy()
    d.set(version="v2")
    run_up(d)
    assert_only_live(node, "3002", "v2")
    node.exec("sh", "-c", "printf '[Unit]\\nDescription=down\\nRequires=basic.target\\nAllowIsolate=yes\\n' "
                          "> /etc/systemd/system/sando-test-down.target && systemctl daemon-reexec && "
                          "systemctl isolate sando-test-down.target", check=True)
    assert active(node, "makenotwork@3002") != "active" and active(node, "caddy") != "active"
    node.exec("nft", "flush", "ruleset", check=True)  # as a reboot does: the kernel keeps no rule
    node.exec("systemctl", "isolate", "multi-user.target", check=True)
    wait_for(lambda: active(node, "makenotwork@3002") == "active" and active(node, "caddy") == "active", timeout=30)
    wait_for(lambda: node.fetch(node.caddyUrl)[0] == 200, timeout=30)
    assert_only_live(node, "3002", "v2")


def _stops_and_starts(node) -> list[tuple[float, str, str]]:
    """(time, 'start'|'stop', unit) of the makenotwork instances, from PID 1's journal."""
    out = []
    for e in node._pid1_entries():
        unit = e.get("UNIT") or ""
        if not unit.startswith("makenotwork"):
            continue
        msg = e.get("MESSAGE") or ""
        kind = "start" if msg.startswith("Started") else "stop" if msg.startswith("Stopped") else None
        if kind:
            out.append((int(e["__REALTIME_TIMESTAMP"]) / 1e6, kind, unit.removesuffix(".service")))
    return out


def test_restart_warning_then_destructive_migration_takes_the_restart_path(make_nodes, make_deploy, repo):
    """The restart warning reaches the old instance's users before it stops. A pending destructive
    migration (allowed) makes that deploy take the restart path: the old instance stops before the
    new one starts and migrates, and the run says so."""
    token = "tok-" + os.urandom(8).hex()
    (node,) = make_nodes(1, token=token)
    d = make_deploy([node], repo=repo, switch=BLUE_GREEN, version="v8", restartWarningSeconds=2)
    d.set_secret("cliServiceToken", token)
    run_up(d)  # v8: a new table; no users yet, no warning
    assert d.node_out(node)["restartWarning"] == "not needed: service not running"
    d.set(version="v9")  # a destructive migration, allowed (refuseDestructive is off)
    run_up(d)
    log = "".join(d.log)
    assert ("node1: v9 has a destructive migration pending, so this deploy took the restart path: the old instance "
            "stopped (after the restart warning, if any) before the new one started and migrated") in log
    assert "restart-warning: received" in node.journal("makenotwork@3001")
    events = _stops_and_starts(node)
    stop_old = max(t for t, k, u in events if (k, u) == ("stop", "makenotwork@3001"))
    start_new = max(t for t, k, u in events if (k, u) == ("start", "makenotwork@3002"))
    assert stop_old < start_new, events
    assert_only_live(node, "3002", "v9")
    assert d.node_out(node)["restartWarning"].startswith("sent at ")
    # and a plain bump after it is blueGreen again: the warning goes to v9's users before 3002 stops
    d.set(version="v10")
    poller = polling(node)
    run_up(d)
    poller.stop()
    assert poller.failures == []
    assert "restart-warning: received" in node.journal("makenotwork@3002")
    assert_only_live(node, "3001", "v10")


def test_turning_blue_green_on_for_a_running_node(make_nodes, make_deploy, tmp_path):
    """The README's steps on a node that runs the plain unit: the Caddyfile's import committed and
    the strategy set in one run; the poller through Caddy sees no failure, the plain unit ends
    stopped and disabled, the release unchanged now runs as the first instance."""
    r = AppRepo(tmp_path / "makenotwork")
    (node,) = make_nodes(1)
    d = make_deploy([node], repo=r)
    run_up(d)  # restart strategy: the plain unit serves v1
    assert active(node, "makenotwork") == "active"
    import_upstream(r)
    r.git("commit", "-qam", "Caddy: sando's upstream")
    d.set(switch=BLUE_GREEN)
    poller = polling(node)
    run_up(d)
    poller.stop()
    assert poller.failures == [], poller.failures[:5]
    assert_only_live(node, "3001", "v1")
    assert os.readlink(node.release_root / "current") == "releases/v1"
    _, changed = run_up(d)
    assert changed == {}
    d.set(switch={"strategy": "restart"})  # and off again: Caddy reaches the plain unit, no rule left
    poller = polling(node)
    run_up(d)
    poller.stop()
    assert poller.failures == [], poller.failures[:5]
    assert node.exec("nft", "list", "table", "ip", "sando").returncode != 0
    assert not node.path("/etc/systemd/system/sando-front.service").exists()
    assert active(node, "makenotwork") == "active" and node.served(node.caddyUrl)["version"] == "v1"


def test_sando_status_and_restart_see_the_live_instance(bg_deploy, sando):
    """`sando status` reads the live instance (its unit, its health on its own port); `sando
    restart` restarts it and checks it there; the plain unit is not started beside it."""
    node, d = bg_deploy()
    code, said = sando(d.project, "status", d.name, "--json")
    assert code == 0, said
    [na] = json.loads(sando.out)["stacks"][0]["nodes"]
    assert na["unit"] == "active running" and na["health"]["says"] == "ok (serves v1)", na
    assert na["caddy"] == "active" and na["caddyHealth"]["ok"], na
    starts = len(node.restart_times("makenotwork@3001"))
    code, said = sando(d.project, "restart", "-s", d.name, "--yes")
    assert code == 0, said
    assert len(node.restart_times("makenotwork@3001")) == starts + 1
    assert_only_live(node, "3001", "v1")


def test_sando_logs_reads_the_live_instance_from_the_node(bg_deploy, sando):
    """`sando logs` on a blueGreen node names the live instance, read from the node's record, and
    shows the journal of both instances, each line after its unit: after a failed switch the new
    instance's crash beside the live one's lines; after a good one, the other instance is live."""
    node, d = bg_deploy()
    d.set(version="v5")  # exits at start as makenotwork@3002: the switch fails, v1 on 3001 serves on
    d.up_fails()
    code, said = sando(d.project, "logs", "-s", d.name, node.name, "-n", "200")
    assert code == 0, said
    # the header on stderr (as the node script writes it), the journal on stdout
    assert sando.err == ("sando: makenotwork@3001.service is live (blueGreen, /opt/makenotwork/.sando/instance); "
                         "the journal of every makenotwork@ instance, each line after its unit\n"), said
    assert re.search(r" makenotwork@3001\.service\[\d+\]: makenotwork v1 ", sando.out), said
    assert re.search(r" makenotwork@3002\.service\[\d+\]: crash-at-start build: exiting", sando.out), said
    d.set(version="v2")
    run_up(d)
    code, said = sando(d.project, "logs", "-s", d.name, "-n", "200")  # every node (one here)
    assert code == 0, said
    assert sando.err.startswith("sando: makenotwork@3002.service is live (blueGreen, "), said
    assert re.search(r" makenotwork@3002\.service\[\d+\]: makenotwork v2 ", sando.out), said


def _reboot(node) -> None:
    """As test_systemd_restarted_after_a_blue_green_deploy: every unit stopped and started as at
    boot, the kernel's nft rules gone."""
    node.exec("sh", "-c", "printf '[Unit]\\nDescription=down\\nRequires=basic.target\\nAllowIsolate=yes\\n' "
                          "> /etc/systemd/system/sando-test-down.target && systemctl daemon-reexec && "
                          "systemctl isolate sando-test-down.target", check=True)
    assert active(node, "caddy") != "active"
    node.exec("nft", "flush", "ruleset", check=True)
    node.exec("systemctl", "isolate", "multi-user.target", check=True)
    wait_for(lambda: active(node, "caddy") == "active", timeout=30)


def test_turning_blue_green_off_stops_the_instances_once_the_plain_unit_is_healthy(bg_deploy):
    """sando:switch.strategy back to restart. The plain unit broken: the run fails and nothing is
    stopped (the front is back on the instance, which serves through Caddy and starts at boot).
    Fixed: the plain unit serves and starts at boot, every instance is stopped and disabled, no
    rule, boot unit or record is left; a reboot starts the plain unit alone."""
    node, d = bg_deploy()
    d.set(version="v2")
    run_up(d)  # v1 on 3001, then v2 on 3002: both instances have run
    assert_only_live(node, "3002", "v2")
    node.unit_dropin("broken", "[Service]\nExecStartPre=/bin/false")  # the plain unit's own, not the template's
    d.set(switch={"strategy": "restart"})
    poller = polling(node)  # through Caddy: not one failed request, the plain unit failing or not
    try:
        (error,) = d.errors(d.up_fails())
    finally:
        poller.stop()
    assert poller.failures == [], poller.failures[:5]
    assert_only_live(node, "3002", "v2")
    assert (node.release_root / ".sando" / "instance").read_text().strip() == "3002"
    assert error.startswith("node1: makenotwork.service, the plain unit sando:switch.strategy restart goes back to, "
                            "is not healthy (restart failed: "), error
    assert error.endswith("; nothing was stopped: makenotwork@3002 still serves v2 (the front is back on it). "
                          "sando:switch.strategy restart takes effect once makenotwork.service is healthy: fix it "
                          "and run again"), error

    node.unit_dropin("", "")
    poller = polling(node)
    try:
        run_up(d)
    finally:
        poller.stop()
    assert poller.failures == [], poller.failures[:5]
    assert active(node, "makenotwork") == "active" and enabled(node, "makenotwork") == "enabled"
    for port in ("3001", "3002"):
        assert active(node, f"makenotwork@{port}") != "active" and enabled(node, f"makenotwork@{port}") != "enabled"
    assert node.exec("nft", "list", "table", "ip", "sando").returncode != 0
    assert not node.path("/etc/systemd/system/sando-front.service").exists()
    assert not (node.release_root / ".sando" / "instance").exists()
    assert node.served(node.caddyUrl)["version"] == "v2"
    _, changed = run_up(d)
    assert changed == {}

    _reboot(node)
    wait_for(lambda: node.fetch(node.caddyUrl)[0] == 200, timeout=30)
    assert active(node, "makenotwork") == "active" and node.served(node.caddyUrl)["version"] == "v2"
    assert [u for u in ("makenotwork@3001", "makenotwork@3002", "sando-front") if active(node, u) == "active"] == []


def test_turning_blue_green_off_lets_the_instance_finish_the_requests_it_took(bg_deploy):
    """Requests in flight on the instance when the front is lifted (here each takes 3.5 s: the
    instance answers its restart-warning endpoint late) are answered: the redirect stays for them
    and the instance stops only after the drain, sando:switch.drainSeconds kept with the restart
    strategy (5 s here: the instance dies at SIGTERM, so a fixed 2 s drain cut every request it
    took in the last 1.5 s before the lift). (Deleting the nft table at the lift made such a
    request hang: the kernel drops the translation of connections made through a redirect once
    none is left.)"""
    node, d = bg_deploy()
    node.unit_dropin("slow", "[Service]\nEnvironment=MNW_RESTART_WARNING_DELAY_MS=3500", unit="makenotwork@")
    node.exec("systemctl", "restart", "makenotwork@3001", check=True)
    # restarted: it serves again before the first request (systemctl returns once it is started, not
    # listening: a request at once got Caddy's 502 before the turn-off began)
    wait_for(lambda: node.fetch(node.caddyUrl)[0] == 200, timeout=30)
    url = node.caddyUrl.rstrip("/") + "/api/internal/restart-warning"
    answers, done = [], threading.Event()

    def post():
        t0 = time.time()
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=8)
            answers.append(("200", t0, time.time()))
        except urllib.error.HTTPError as exc:  # the instance's (or the plain unit's) answer: 401, no token
            answers.append((str(exc.code), t0, time.time()))
        except Exception as exc:  # noqa: BLE001 - a hang or a reset is what the test counts
            answers.append((repr(exc)[:100], t0, time.time()))

    def fire():
        threads = []
        while not done.is_set():
            threads.append(threading.Thread(target=post, daemon=True))
            threads[-1].start()
            time.sleep(0.1)
        for t in threads:
            t.join(timeout=10)

    firing = threading.Thread(target=fire)
    firing.start()
    try:
        d.set(switch={"strategy": "restart", "drainSeconds": 5})
        run_up(d)
    finally:
        done.set()
        firing.join(timeout=30)
    assert len(answers) > 10 and {a for a, _, _ in answers} == {"401"}, [a for a in answers if a[0] != "401"][:5]
    assert max(end - start for _, start, end in answers) < 6.5, "an answer waited far longer than the instance's 3.5 s"
    assert active(node, "makenotwork") == "active" and active(node, "makenotwork@3001") != "active"
    assert node.exec("nft", "list", "table", "ip", "sando").returncode != 0


def test_turning_blue_green_off_with_a_bump_that_fails_then_one_that_passes(bg_deploy):
    """sando:switch.strategy back to restart in the same run as a bump: a release that exits at
    start as the plain unit is switched back and nothing is stopped (the instance, which never
    stopped, serves v1 through Caddy); the next good bump ends on the plain unit alone."""
    node, d = bg_deploy()
    d.set(version="v5", switch={"strategy": "restart"})
    poller = polling(node)
    try:
        error, *_ = d.errors(d.up_fails())
    finally:
        poller.stop()
    assert poller.failures == [] and poller.versions == {"v1"}, poller.failures[:5]
    assert_only_live(node, "3001", "v1")
    assert os.readlink(node.release_root / "current") == "releases/v1"
    assert error.startswith("node1: v5 exited at start (makenotwork.service "), error
    assert ("v1 is live again; nothing was stopped: makenotwork@3001 still serves v1 (the front is back on it); "
            "sando:switch.strategy restart takes effect at the next healthy switch") in error, error
    d.set(version="v2")
    poller = polling(node)
    try:
        run_up(d)
    finally:
        poller.stop()
    assert poller.failures == [] and poller.versions == {"v1", "v2"}, poller.failures[:5]
    assert active(node, "makenotwork") == "active" and enabled(node, "makenotwork") == "enabled"
    assert active(node, "makenotwork@3001") != "active" and enabled(node, "makenotwork@3001") != "enabled"
    assert node.exec("nft", "list", "table", "ip", "sando").returncode != 0
    assert node.served(node.caddyUrl)["version"] == "v2"
    assert os.readlink(node.release_root / "current") == "releases/v2"
