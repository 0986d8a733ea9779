"""Issue 6 #6: `make demo` (scripts/demo.py) runs end to end on the embedded default."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.support import REPO, TOOLS


def test_demo_deploys_previews_and_rolls_back():
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{REPO / '.pulumi-state'}",
           "PULUMI_CONFIG_PASSPHRASE": "sando-local"}
    try:
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
        out = res.stdout
        assert res.returncode == 0, out + res.stderr
        served = re.findall(r"served: \{'name': 'makenotwork', 'version': '(v\d)'", out)
        assert served == ["v1", "v2", "v1"]
        rollback = out.split("rollback: pulumi config set sando:version v1 && pulumi preview")[1].split("took")[0]
        assert rollback.split() == ["update", "node1-current-switch"]  # the preview shows only the pointer
        assert "live v1, previous v2, releases ['v1', 'v2']" in out
        assert "scripts/testnodes stop" in out  # tells how to stop the node
    finally:
        subprocess.run([str(REPO / "scripts" / "testnodes"), "stop"], capture_output=True)
        subprocess.run([str(TOOLS / "bin" / "pulumi"), "stack", "rm", "--yes", "--force", "--stack", "demo",
                        "--non-interactive"], cwd=REPO, env={**env, "PATH": f"{TOOLS / 'bin'}:{env['PATH']}",
                                                             "PULUMI_HOME": str(TOOLS / "pulumi-home")},
                       capture_output=True)
        (REPO / "Pulumi.demo.yaml").unlink(missing_ok=True)
