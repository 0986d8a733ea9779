"""The switch history (issue 20.2): sh/history.sh run by real sh, and the rollback's line."""

import json
import os
import stat
import subprocess

from sando_components import history, scripts


def run(tmp_path, deploy: dict, result: str, live: str = "releases/v1", code: str = "", keep: int | None = None):
    values = history.params(deploy, "v2", "c" * 40, 30)
    if keep:
        values["H_KEEP"] = keep
    script = scripts.render_inline(scripts.params(**values), scripts.source("history.sh")
                                   + f"\nlive={live}\ncode={code}\nsando_history {result}")
    return subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=30)


def test_a_line_per_switch_private_and_reported(tmp_path):
    res = run(tmp_path, {"by": 'ann "x"@box', "via": "sando promote"}, "ok", code="204")
    assert res.returncode == 0, res.stderr
    path = tmp_path / ".sando" / "history"
    [line] = path.read_text().splitlines()
    record = json.loads(line)
    assert record | {"at": None} == {"at": None, "version": "v2", "commit": "c" * 40, "from": "v1", "result": "ok",
                                     "by": 'ann "x"@box', "via": "sando promote", "warning": "sent 30s"}
    assert record["at"].endswith("Z") and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert history.last(res.stdout) == record


def test_now_and_a_switch_back_are_said_and_the_file_is_bounded(tmp_path):
    for i in range(5):
        res = run(tmp_path, {"by": "bob@desk", "via": "sando rollback", "now": True}, "'failed: switched back to v1'",
                  keep=3)
        assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in (tmp_path / ".sando" / "history").read_text().splitlines()]
    assert len(lines) == 3
    assert (lines[-1]["result"], lines[-1]["warning"]) == ("failed: switched back to v1", "skipped (--now) by bob@desk")


def test_good_line_walks_back():
    recs = [{"version": v, "result": r} for v, r in
            [("v1", "ok"), ("v2", "ok"), ("crash", "failed: switched back to v2"), ("v4", "ok"), ("v5", "ok"),
             ("v4", "ok")]]
    assert history.good_line(recs) == ["v1", "v2", "v4"]
    assert history.good_line(recs + [{"version": "v6", "result": "ok"}]) == ["v1", "v2", "v4", "v6"]
    assert history.good_line([{"version": "v1", "result": "restarted"}]) == []


def test_every_field_is_one_json_string_whatever_it_holds(tmp_path):
    """Backslashes and quotes escaped, tabs and newlines as spaces, other control characters dropped
    (the printable fields without a fork, the others through _sando_clean's pipeline)."""
    res = run(tmp_path, {"by": 'a\\b"c\td\ne\x01f@box', "via": "pulumi up"}, "ok")
    assert res.returncode == 0, res.stderr
    [line] = (tmp_path / ".sando" / "history").read_text().splitlines()
    assert json.loads(line)["by"] == 'a\\b"c d ef@box'
