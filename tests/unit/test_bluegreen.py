"""blueGreen (sando:switch, issue 23): the config's checks, the Caddyfile import check, the
switch's parameters by exact value, and the template unit bluegreen.sh derives from the
installed unit (its awk run for real on a temp dir)."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from sando_components import commands, scripts
from sando_components.config import ConfigError, load
from sando_components.providers import bluegreen
from unit_helpers import PRIVATE_KEY

SECRETS = frozenset({"sando:sshPrivateKey"})


def raw(switch) -> dict[str, str]:
    return {"sando:nodes": json.dumps([{"name": "n1", "host": "127.0.0.2", "hostKey": None}]),
            "sando:insecureSkipHostKeyCheck": "true", "sando:version": "v1", "sando:source": '{"repo": "/x"}',
            "sando:sshPrivateKey": PRIVATE_KEY, "sando:bootstrap": '{"ref": "main"}',
            "sando:switch": json.dumps(switch)}


def error_of(switch) -> str:
    with pytest.raises(ConfigError) as exc:
        load(raw(switch), SECRETS)
    return str(exc.value)


def test_restart_stays_the_default():
    cfg = load({k: v for k, v in raw({}).items() if k != "sando:switch"}, SECRETS)
    assert cfg.switch.strategy == "restart" and not cfg.switch.blue_green


def test_blue_green_values():
    cfg = load(raw({"strategy": "blueGreen", "ports": [4001, 4002], "bindEnv": "APP_BIND", "drainSeconds": 5}),
               SECRETS)
    sw = cfg.switch
    assert (sw.blue_green, sw.ports, sw.bind_env, sw.bind_host, sw.drain_seconds) == \
        (True, (4001, 4002), "APP_BIND", "127.0.0.1", 5)
    assert cfg.health_path() == "/" and cfg.front(cfg.nodes[0]) == "127.0.0.1:3000"


@pytest.mark.parametrize("switch,said", [
    ({"strategy": "blue-green"}, "sando:switch.strategy: must be 'restart' or 'blueGreen'"),
    ({"ports": [3001, 3001]}, "sando:switch.ports: must be two different ports between 1024 and 65535"),
    ({"ports": [3001]}, "sando:switch.ports"),
    ({"bindEnv": "MNW BIND"}, "sando:switch.bindEnv: must be an environment variable name such as MNW_BIND"),
    ({"bindHost": "localhost"}, "sando:switch.bindHost: must be an IPv4 address"),
    ({"drainSeconds": -1}, "sando:switch.drainSeconds: must be between 0 and 3600"),
    ({"strategy": "blueGreen", "ports": [3000, 3002]},
     "sando:switch.ports: 3000 is the port the service's own unit listens on (http://127.0.0.1:3000/"),
    ({"strategy": "blueGreen", "drain": 1}, "sando:switch.drain: unknown key"),
])
def test_bad_switch_config_names_the_key(switch, said):
    assert said in error_of(switch)


STAND_IN = """{
\thandle {
\t\t# import /etc/caddy/sando-upstream.caddy  (a comment is not an import)
\t\treverse_proxy 127.0.0.1:3000
\t}
}
"""


def test_caddyfile_import_check():
    problem = bluegreen.caddyfile_problem(STAND_IN)
    assert problem == ("the Caddyfile does not import /etc/caddy/sando-upstream.caddy, the upstream sando moves "
                       "between the instances: put the line `import /etc/caddy/sando-upstream.caddy` in place of "
                       "the site's reverse_proxy line, commit, and point sando:bootstrap.ref at it")
    fixed = STAND_IN.replace("reverse_proxy 127.0.0.1:3000", "import /etc/caddy/sando-upstream.caddy")
    assert bluegreen.caddyfile_problem(fixed) is None
    assert bluegreen.caddyfile_problem(None) is None  # the Caddyfile is not sando's: the switch checks it


def test_switch_parameters_by_exact_value():
    props = {"switch": {"strategy": "blueGreen", "ports": [3001, 3002], "bindHost": "127.0.0.1",
                        "bindEnv": "MNW_BIND", "drainSeconds": 2.0, "healthPath": "/health?x=1",
                        "warnPath": "/api/internal/restart-warning"},
             "healthCheck": {"url": "http://localhost:3000/health?x=1"}}
    assert bluegreen.params(props) == {
        "BG": 1, "BG_PORTS": "3001 3002", "BG_HOST": "127.0.0.1", "BG_BIND_ENV": "MNW_BIND", "BG_DRAIN": "2",
        "BG_HEALTH_PATH": "/health?x=1", "BG_WARN_PATH": "/api/internal/restart-warning",
        "BG_UPSTREAM": "/etc/caddy/sando-upstream.caddy", "BG_UNIT_DIR": "/etc/systemd/system",
        "BG_ENV_DIR": "/var/lib/sando/instances", "BG_CADDYFILE": "/etc/caddy/Caddyfile", "BG_FRONT": "127.0.0.1:3000"}
    # the restart strategy: blueGreen off, its drainSeconds the drain of an instance left from it
    off = {**commands.BLUE_GREEN_OFF, "BG_DRAIN": "7.5"}
    assert bluegreen.params({"switch": {**props["switch"], "strategy": "restart", "drainSeconds": 7.5}}) == off
    assert bluegreen.params({}) == {**commands.BLUE_GREEN_OFF, "BG_DRAIN": "2"}  # a state before issue 23: the default
    # the restart switch renders with the part off
    text = commands.switch(release_root="/opt/makenotwork", version="v2", service="makenotwork", expect="",
                           health=commands.health_params("http://127.0.0.1:3000/", 5, 1, "c0ffee"))
    text = shlex.split(text)[2]  # the script itself (sh -c TEXT NAME)
    assert "\nBG=0\n" in text and "\nBG_PORTS=''\n" in text


def test_front_is_loopback_and_the_plain_units_port():
    assert commands.front("http://127.0.0.1:3000/") == "127.0.0.1:3000"
    assert commands.front("http://localhost:8080/health") == "127.0.0.1:8080"
    assert commands.front("http://user:pw@app.internal/x") == "127.0.0.1:80"
    assert commands.front("https://[::1]:8443/") == "127.0.0.1:8443"


UNIT = """[Unit]
Description=makenotwork server
Documentation=file:///opt/makenotwork/current/README.md

[Service]
EnvironmentFile=-/etc/makenotwork/makenotwork.env
WorkingDirectory=/opt/makenotwork
ExecStart=/opt/makenotwork/current/makenotwork
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def test_template_unit_derived_from_the_installed_one(tmp_path):
    (tmp_path / "makenotwork.service").write_text(UNIT)
    script = scripts.render_inline(
        scripts.params(BG_UNIT_DIR=tmp_path, BG_BASE="makenotwork", RELEASE_ROOT="/opt/makenotwork",
                       BG_ENV_DIR="/var/lib/sando/instances"),
        scripts.source("bluegreen.sh") + "\nsystemctl() { echo \"systemctl $*\"; }\nbg_template\nbg_template\n")
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    # installed once (with one daemon-reload); the second run finds it identical
    assert res.stdout.count("systemctl daemon-reload") == 1 and res.stdout.count('"@":"bg-template"') == 1
    assert (tmp_path / "makenotwork@.service").read_text() == f"""\
# {tmp_path}/makenotwork.service as an instance of sando's blueGreen switch (written by sando at each switch)
[Unit]
Description=makenotwork server
Documentation=file:///opt/makenotwork/.sando/instances/%i/README.md

[Service]
EnvironmentFile=-/etc/makenotwork/makenotwork.env
WorkingDirectory=/opt/makenotwork
ExecStart=/opt/makenotwork/.sando/instances/%i/makenotwork
Restart=on-failure

# sando: the instance port (read after the unit's own env file, so it wins)
EnvironmentFile=/var/lib/sando/instances/makenotwork@%i.env
[Install]
WantedBy=multi-user.target
"""


def test_the_node_read_names_the_live_instance(tmp_path):
    """sh/probe.sh reports .sando/instance and whether that instance runs; parse_state reads it. With
    the gate on, the database is the live instance's: DATABASE_PATH of that unit's env file."""
    from sando_components.providers.base import parse_state

    from test_gate import make_db

    root = tmp_path / "root"
    (root / ".sando").mkdir(parents=True)
    (root / "releases").mkdir()
    (root / ".sando" / "instance").write_text("3002\n")
    db = make_db(tmp_path / "live.db", applied=("1", "3"))
    (tmp_path / "instance.env").write_text(f"DATABASE_PATH={db}\n")
    script = scripts.render_inline(
        scripts.params(RELEASE_ROOT=root, SERVICE="makenotwork", DB_READ=1, DATABASE="", ENV_FILE="/nonexistent.env",
                       DEFAULT_DATABASE="/nonexistent.db", DB_PIN=""),
        'systemctl() { case "$*" in "is-active makenotwork@3002") echo active ;;\n'
        f'  "show -p EnvironmentFiles --value makenotwork@3002.service") echo "-{tmp_path}/instance.env (ignore_errors=yes)" ;;\n'
        '  *) echo inactive ;; esac; }\n'
        + scripts.source("db.sh") + scripts.source("probe.sh"))
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert '{"@":"instance","v":"3002 active"}' in res.stdout.splitlines()
    state = parse_state(res.stdout, res.returncode)
    assert (state.instance, state.instance_active, state.active) == ("3002", True, False)
    assert state.applied == ("1", "3"), res.stdout + res.stderr
    (root / ".sando" / "instance").write_text("junk\n")  # not a port: no instance
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    state = parse_state(res.stdout, res.returncode)
    assert (state.instance, state.instance_active) == (None, False)


def test_the_front_by_exact_text(tmp_path):
    """bg_front: the nft ruleset (front -> the instance's port; '' = no redirect: the plain unit),
    the boot unit that loads it, installed and enabled once; upstream_text: Caddy's one file."""
    root = tmp_path / "make notwork"
    (root / ".sando").mkdir(parents=True)
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "nft").write_text('#!/bin/sh\necho "nft $*" >> "$CALLS"\n')
    (bins / "nft").chmod(0o755)
    unit = tmp_path / "sando-front.service"
    script = scripts.render_inline(
        scripts.params(BG_UNIT_DIR=tmp_path, BG_BASE="makenotwork", RELEASE_ROOT=root, BG_FRONT="127.0.0.1:3000",
                       P_FRONT_UNIT=unit),
        scripts.source("bluegreen.sh")
        + '\nsystemctl() { echo "systemctl $*" >> "$CALLS"; case $1 in is-enabled) return 1 ;; esac; }\n'
        + 'cd "$RELEASE_ROOT" && bg_front 3002 && cat "$P_FRONT_NFT" && bg_front "" && cat "$P_FRONT_NFT"'
        + ' && upstream_text makenotwork "$BG_FRONT"')
    calls = tmp_path / "calls"
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                         env={"PATH": f"{bins}:/usr/bin:/bin", "CALLS": str(calls)})
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"""\
{{"@":"front","v":"127.0.0.1:3000 3002"}}
# written by sando (sando:switch.strategy blueGreen): 127.0.0.1:3000 -> the live instance of makenotwork
table ip sando
delete table ip sando
table ip sando {{
\tchain front {{
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr 127.0.0.1 tcp dport 3000 redirect to :3002
\t}}
}}
{{"@":"front","v":"127.0.0.1:3000 plain"}}
# written by sando (sando:switch.strategy blueGreen): 127.0.0.1:3000 -> the live instance of makenotwork
table ip sando
delete table ip sando
# written by sando (sando:switch.strategy blueGreen): where Caddy sends makenotwork requests.
# The Caddyfile imports it; do not edit. 127.0.0.1:3000 is pointed at the live instance by sando
# (nft table ip sando, loaded at boot by {unit}).
reverse_proxy 127.0.0.1:3000 {{
\ttransport http {{
\t\tkeepalive off
\t}}
}}
"""
    nft = f"{root}/.sando/front.nft"
    assert unit.read_text() == f"""\
[Unit]
Description=sando: 127.0.0.1:3000 to the live instance of makenotwork (sando:switch blueGreen)
Before=caddy.service
ConditionPathExists={nft}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={bins}/nft -f "{nft}"

[Install]
WantedBy=multi-user.target
"""
    assert calls.read_text().splitlines() == [
        "nft -f .sando/front.nft", "systemctl daemon-reload", "systemctl is-enabled --quiet sando-front.service",
        "systemctl enable --quiet sando-front.service",
        "nft -f .sando/front.nft", "systemctl is-enabled --quiet sando-front.service",
        "systemctl enable --quiet sando-front.service"]


def test_turning_blue_green_off_by_exact_commands(tmp_path):
    """blueGreen turned off (BG=0): bg_off_hold loads the front's own ruleset again with this
    script's user let through (users stay on the instance, the health check reaches the plain
    unit); bg_off_lift (the plain unit is healthy to the script) lifts the front and checks it
    again, as users now reach it (the redirect kept for connections already made); bg_off_done drains, stops and disables every instance (loaded, recorded
    or linked), enables the plain unit, removes the boot unit, ruleset, record and links;
    bg_off_undo (it is not healthy) stops the plain unit, loads the ruleset again and checks the
    live instance. A front that cannot be held is lifted at once, and said."""
    import os

    root = tmp_path / "root"
    (root / ".sando" / "instances").mkdir(parents=True)
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "nft").write_text('#!/bin/sh\necho "nft $*" >> "$CALLS"\n'
                              'if [ "$*" = "-f -" ]; then in=$(cat); printf "%s\\n" "$in" | sed "s/^/| /" >> "$CALLS"\n'
                              '  case $in in *"ct state established"*) [ -z "$NFT_FAIL" ] || { echo "$NFT_FAIL" >&2; exit 1; } ;; esac\n'
                              'fi\n')
    (bins / "nft").chmod(0o755)
    unit = tmp_path / "sando-front.service"
    calls = tmp_path / "calls"
    front = ("# written by sando (sando:switch.strategy blueGreen): 127.0.0.1:3000 -> the live instance of makenotwork\n"
             "table ip sando\ndelete table ip sando\ntable ip sando {\n\tchain front {\n"
             "\t\ttype nat hook output priority -100; policy accept;\n"
             "\t\tip daddr 127.0.0.1 tcp dport 3000 redirect to :3002\n\t}\n}\n")

    def run(steps: str, ruleset: str = front, nft_fail: str = "") -> tuple[str, list[str]]:
        (root / ".sando" / "instances").mkdir(exist_ok=True)
        (root / ".sando" / "instance").write_text("3002\n")
        (root / ".sando" / "front.nft").write_text(ruleset)
        (root / ".sando" / "instances" / "3002").unlink(missing_ok=True)
        (root / ".sando" / "instances" / "3002").symlink_to("../../releases/v1")
        (root / ".sando" / "instances" / "3005").unlink(missing_ok=True)
        (root / ".sando" / "instances" / "3005").symlink_to("../../releases/v0")
        unit.write_text("[Unit]\n")
        calls.write_text("")
        script = scripts.render_inline(
            scripts.params(BG=0, BG_DRAIN=7, SERVICE="makenotwork", RELEASE_ROOT=root, P_FRONT_UNIT=unit),
            scripts.source("bluegreen.sh")
            + '\nsystemctl() { echo "systemctl $*" >> "$CALLS"; case "$*" in'
            + ' "list-units"*) printf "makenotwork@3001.service loaded failed failed x\\n'
            + 'makenotwork@3002.service loaded active running x\\n" ;;'
            + ' "is-active --quiet makenotwork@3002.service") return 0 ;; is-active*) return 1 ;; esac; }\n'
            + 'unit_mark_for() { echo "unit_mark_for $*" >> "$CALLS"; SERVICE=$1; }\n'
            + 'health() { echo "health [$*] $SERVICE" >> "$CALLS"; report health "ok {}"; }\n'
            + 'sleep() { echo "sleep $*" >> "$CALLS"; }\n'
            + f'cd "$RELEASE_ROOT" && {steps}; echo "rc=$? SERVICE=$SERVICE ${{last:-}}"')
        res = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                             env={"PATH": f"{bins}:/usr/bin:/bin", "CALLS": str(calls), "NFT_FAIL": nft_fail})
        assert res.returncode == 0, res.stderr
        return res.stdout, calls.read_text().splitlines()

    lifted = [f"| {line}" for line in front.replace("\t\tip daddr", "\t\tct state established ip daddr").splitlines()]
    held = [f"| {line}" for line in front.replace("\t\tip daddr", f"\t\tmeta skuid {os.getuid()} accept\n\t\tip daddr")
            .splitlines()]
    out, said = run("bg_off_done")  # not turned off in this run: nothing to do
    assert (out, said) == ("rc=0 SERVICE=makenotwork \n", [])
    out, said = run("bg_off_hold && bg_off_lift v1 && bg_off_done")
    assert out == ('{"@":"front-held","v":"3002"}\n{"@":"front-lifted","v":"3002"}\n{"@":"health","v":"ok {}"}\n'
                   '{"@":"drain","v":"7"}\n{"@":"stopped","v":"makenotwork@3002.service"}\n'
                   f'{{"@":"front-off","v":".sando/front.nft"}}\nrc=0 SERVICE=makenotwork \n')
    assert said == [
        "systemctl cat makenotwork@3002.service",  # live_instance: the record names a unit systemd knows
        "nft -f -", *held,  # the front's ruleset with this script's user let through
        "nft -f -", *lifted,  # the redirect for the connections already sent to the instance only
        "systemctl cat makenotwork@3002.service",
        "health [v1] makenotwork",  # the plain unit again, as users now reach it
        "systemctl enable --quiet makenotwork",
        "sleep 7",  # the drain (sando:switch.drainSeconds): what the instance took before the lift finishes there
        "systemctl list-units --all --plain --no-legend --type=service makenotwork@*.service",
        "systemctl is-active --quiet makenotwork@3001.service",
        "systemctl disable --quiet makenotwork@3001.service",
        "systemctl reset-failed makenotwork@3001.service",
        "systemctl is-active --quiet makenotwork@3002.service",
        "systemctl stop makenotwork@3002.service",
        "systemctl disable --quiet makenotwork@3002.service",
        "systemctl reset-failed makenotwork@3002.service",
        "systemctl is-active --quiet makenotwork@3005.service",
        "systemctl disable --quiet makenotwork@3005.service",
        "systemctl reset-failed makenotwork@3005.service",
        "nft delete table ip sando",  # the lift's redirect, once the instances are stopped
        "systemctl disable --quiet sando-front.service",
        "systemctl stop sando-front.service",
        "systemctl daemon-reload",
    ]
    assert not unit.exists() and sorted(p.name for p in (root / ".sando").iterdir()) == []
    out, said = run("bg_off_hold && bg_off_undo")  # the plain unit failed: users were on the instance all along
    assert out == ('{"@":"front-held","v":"3002"}\n{"@":"bg-off-undone","v":"3002"}\n'
                   '{"@":"health","v":"ok {}"}\nrc=0 SERVICE=makenotwork \n')
    assert said == [
        "systemctl cat makenotwork@3002.service",
        "nft -f -", *held,
        "systemctl stop makenotwork",
        "systemctl reset-failed makenotwork",
        "nft -f .sando/front.nft",  # the ruleset as it was, without the script's way through
        "systemctl cat makenotwork@3002.service",
        "unit_mark_for makenotwork@3002",
        "health [] makenotwork@3002",  # any 2xx, watching the instance (SERVICE is back after it)
    ]
    assert unit.exists() and (root / ".sando" / "front.nft").exists() and (root / ".sando" / "instance").exists()
    # the front cannot be lifted: not healthy, said why (the switch then undoes: the instance serves)
    out, said = run("bg_off_hold && bg_off_lift v1", nft_fail="Error: Could not process rule")
    assert out == ('{"@":"front-held","v":"3002"}\nrc=1 SERVICE=makenotwork the front could not be lifted '
                   '(nft -f -: Error: Could not process rule)\n')
    # a ruleset without its one redirect cannot be held: lifted at once, said (pointer.py's note)
    out, said = run("bg_off_hold && bg_off_lift v1", ruleset="table ip sando\n")
    assert out == ('{"@":"front-not-held","v":".sando/front.nft has no one redirect"}\n'
                   '{"@":"front-lifted","v":"3002"}\nrc=0 SERVICE=makenotwork \n')
    assert said == ["systemctl cat makenotwork@3002.service", "nft delete table ip sando"]  # no second lift
    out, said = run("BG=1 && bg_off_hold && bg_off_lift v1 && bg_off_undo")  # blueGreen on: none of it
    assert (out, said) == ("rc=0 SERVICE=makenotwork \n", [])
    assert bluegreen.notes({"node": "n1", "service": "makenotwork", "version": "v2"},
                           scripts.Report.parse('{"@":"front-not-held","v":"nft: Error"}\n')) == [
        "n1: blueGreen off: the front could not keep users on the live instance while makenotwork.service started "
        "(nft: Error), so they reached it as it started; see the node's nft ruleset"]
