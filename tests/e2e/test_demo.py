"""`make demo` (scripts/demo.py) end to end: two nodes, deploy, delta, promote, rollback, status.
In its own node state dir, backend, stack names and work dir: an operator's demo is left alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from tests.support import REPO, TOOLS


def test_demo_deploys_promotes_and_rolls_back(tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    state, nodes = tmp_path / "state", tmp_path / "nodes"
    state.mkdir()
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{state}", "PULUMI_CONFIG_PASSPHRASE": "demo-test"}
    args = [sys.executable, str(REPO / "scripts" / "demo.py"), "--state-dir", str(nodes), "--stack-prefix", prefix,
            "--work", str(tmp_path / "work")]
    try:
        res = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        out = res.stdout
        assert res.returncode == 0, out + res.stderr
        served = re.findall(r"serve[sd]: \{'name': 'makenotwork', 'version': '(v\d)'", out)
        assert served == ["v1", "v2", "v2", "v1"], out  # testnot v1, v2, prod v2 (promoted), testnot v1
        rollback = out.split(f"rollback: pulumi config set sando:version v1 -s {prefix}testnot && pulumi preview")[1]
        assert rollback.split("took")[0].split() == ["update", "node1-release-files", "update", "node1-current-switch"]
        assert re.search(r"sent \d+ bytes \(2 binaries as deltas", out)
        assert "live v1, previous v2, releases ['v1', 'v2'], sent 0 bytes" in out
        assert f"{prefix}prod" in out.split("sando status")[-1] and "v2" in out.split("sando status")[-1]
        assert f"scripts/testnodes stop --state-dir {nodes}" in out  # tells how to stop the nodes
        # and how to look at them with sando (its own passphrase here: no SANDO_DEMO=1 needed)
        assert f"\n     sando logs -s {prefix}testnot -n 20        sando ssh -s {prefix}prod node2\n" in out, out
    finally:
        stop = subprocess.run([str(REPO / "scripts" / "testnodes"), "stop", "--state-dir", str(nodes)],
                              capture_output=True, text=True)
        for stack in (f"{prefix}testnot", f"{prefix}prod"):
            subprocess.run([str(TOOLS / "bin" / "pulumi"), "stack", "rm", "--yes", "--force", "--stack", stack,
                            "--non-interactive"], cwd=REPO, capture_output=True,
                           env={**env, "PATH": f"{TOOLS / 'bin'}:{env['PATH']}",
                                "PULUMI_HOME": str(TOOLS / "pulumi-home")})
            (REPO / f"Pulumi.{stack}.yaml").unlink(missing_ok=True)
        if stop.returncode != 0:
            pytest.fail(f"testnodes stop failed: {stop.stderr}")
