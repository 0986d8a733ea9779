"""The node-side script framework: shellcheck on every script, the report format, the outcome table."""

import json
import shlex
import shutil
import subprocess

import pytest

from sando_components import scripts
from sando_components.scripts import MalformedReport, Report


def sh(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=30)


def test_shellcheck_every_script():
    assert shutil.which("shellcheck"), "make setup installs shellcheck"
    files = sorted(scripts.SH_DIR.glob("*.sh"))
    assert {f.name for f in files} >= {"lib.sh", "outcomes.sh"}
    # each step is checked as it runs: parameters, outcomes and library first
    res = subprocess.run(["shellcheck", "--shell=sh", "--severity=style", *map(str, files)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    for f in files:
        if f.name in ("lib.sh", "outcomes.sh"):
            continue
        text = scripts.render(f.stem, **dict.fromkeys(scripts.declared_params(f.stem), "x"))
        # SC2317 (a function "unreachable": called from a trap, or a library function the step does not
        # use) is checked on the file itself above, where its own directives apply
        res = subprocess.run(["shellcheck", "--shell=sh", "--exclude=SC2317", "-"], input=text, capture_output=True,
                             text=True)
        assert res.returncode == 0, f"{f.name}:\n{res.stdout}"


HOSTILE = ['plain', 'with "quotes"', "back\\slash", "new\nline\ttab\rcr", "ünïcödé ✓", "$(touch /tmp/x) `id` ;|&",
           "", "  lead and trail  ", "\x01\x1f control", '""\\\\"', 'ends with \\', '{"sando":2,"a":"b\\"c"}',
           "*[a]? ${x} %s %%"]


@pytest.mark.parametrize("value", HOSTILE)
def test_report_round_trips_any_value_through_real_sh(value):
    res = sh(scripts.render_inline(scripts.params(VALUE=value), 'report some-key "$VALUE"'))
    assert res.returncode == 0, res.stderr
    rep = Report.parse(res.stdout)
    expect = "".join(" " if c in "\n\r\t" else c for c in value)
    expect = "".join(c for c in expect if ord(c) >= 32 and ord(c) != 127)
    assert rep.entries == (("some-key", expect),)
    assert all(json.loads(line) for line in res.stdout.splitlines())


def test_report_joins_words_and_fail_exits_with_the_tables_code():
    res = sh(scripts.render_inline("", 'report a one two; fail "$EX_OK" b done'))
    assert res.returncode == scripts.code("EX_OK")
    assert Report.parse(res.stdout).entries == (("a", "one two"), ("b", "done"))


def test_steps_run_with_umask_077_and_set_u():
    res = sh(scripts.render_inline("", 'umask; echo "$UNSET_VARIABLE"'))
    assert res.stdout.splitlines()[0] == "0077"
    assert res.returncode != 0 and "UNSET_VARIABLE" in res.stderr


@pytest.mark.parametrize("line", ['{"@":"x"}', '{"@":"x","v":1}', '{"@":"X Y","v":"a"}', '{"@":"x","v":"a"',
                                  '{"@":"x","v":"a","extra":1}', '{"@": ["x"], "v": "a"}'])
def test_a_malformed_report_line_is_an_error_not_a_default(line):
    with pytest.raises(MalformedReport, match="cannot be read"):
        Report.parse(f'{{"@":"ok","v":"1"}}\n{line}\n', "node1")


def test_other_output_is_not_part_of_the_report():
    assert Report.parse('noise\n@old style\n{"@":"k","v":"v"}\n').entries == (("k", "v"),)


def test_a_key_expected_once_but_repeated_is_an_error():
    rep = Report.parse('{"@":"k","v":"1"}\n{"@":"k","v":"2"}\n{"@":"j","v":"3"}\n')
    assert rep.all("k") == ["1", "2"] and rep.one("j") == "3" and rep.one("missing", "d") == "d"
    with pytest.raises(MalformedReport, match="'k' 2 times"):
        rep.one("k")
    assert rep.after("k").entries == (("k", "2"), ("j", "3"))


def test_params_are_quoted_and_named_as_shell_variables():
    assert scripts.params(A="x y", B=None, C=3) == "A='x y'\nB=''\nC=3"
    with pytest.raises(ValueError):
        scripts.params(**{"a; rm -rf /": 1})


def test_outcome_table_is_read_from_the_shell_file():
    table = scripts.outcomes()
    assert table["EX_OK"] == (0, "done")
    assert len({c for c, _ in table.values()}) == len(table), "every code means one outcome"
    assert scripts.name_of(0) == "EX_OK" and scripts.name_of(255) is None


def test_report_named_keeps_name_and_value_apart():
    res = sh(scripts.render_inline(scripts.params(N="a b\tc", V="x\ty \\ \""), 'report_named rel "$N" "$V"'))
    rep = Report.parse(res.stdout)
    assert rep.named("rel") == {"a b c": 'x y \\ "'}
    with pytest.raises(MalformedReport, match="without a name"):
        Report.parse('{"@":"rel","v":"no tab"}\n').named("rel")
    with pytest.raises(MalformedReport, match="twice for 'a'"):
        Report.parse('{"@":"rel","v":"a\\t1"}\n{"@":"rel","v":"a\\t2"}\n').named("rel")


def test_render_takes_exactly_the_declared_parameters():
    assert scripts.header("backup") == (("VERSION", "BACKUP_DIR", "BACKUP_KEEP"), ("gate",))
    assert scripts.parts("switch") == ("health", "gate", "backup", "warning", "prune", "history", "bluegreen")
    values = dict.fromkeys(scripts.declared_params("probe"), "x")
    assert "RELEASE_ROOT=x\nSERVICE=x" in scripts.render("probe", **values)
    with pytest.raises(ValueError, match=r"missing \['SERVICE'\]"):
        scripts.render("probe", **{k: v for k, v in values.items() if k != "SERVICE"})
    with pytest.raises(ValueError, match=r"unknown \['SERVCE'\]"):
        scripts.render("probe", **values, SERVCE="typo")


def test_every_step_knows_the_node_paths():
    from sando_components import paths
    res = sh(scripts.render_inline("", 'printf "%s|" "$P_RELEASES" "$P_MANIFEST" "$P_FAILED"'))
    assert res.stdout == f"{paths.RELEASES}|{paths.MANIFEST}|{paths.FAILED}|"


def test_every_exit_code_the_python_names_is_in_the_table():
    """pointer.py and release.py decode outcomes by name: each name is one of outcomes.sh's."""
    import re
    from pathlib import Path
    src = "".join(Path(scripts.__file__).parent.joinpath(f).read_text()
                  for f in ("providers/pointer.py", "providers/release.py", "providers/base.py"))
    names = set(re.findall(r"EX_[A-Z_]+", src))
    assert names and names <= set(scripts.outcomes())
    used = set(re.findall(r"\$EX_[A-Z_]+|\$\{EX_[A-Z_]+", "".join(p.read_text() for p in scripts.SH_DIR.glob("*.sh"))))
    assert {u.strip("${") for u in used} <= set(scripts.outcomes())


def test_list_releases_reads_each_manifest_as_cat_would(tmp_path):
    """A one-line manifest is read without a subshell (_sando_one_line, issue 24); any other (more
    lines, none at the end, empty) as before: the reported text is the file's either way."""
    from sando_components import paths

    texts = {"v1": '{"sando":2,"version":"v1","q":"a\\"b"}\n', "v2": '{"a":\n 1}\n', "v3": '{"no":"newline"}',
             "v4": "", "v5": "one\n\n"}
    for v, text in texts.items():
        d = tmp_path / paths.RELEASES / v / paths.MANIFEST
        d.parent.mkdir(parents=True)
        d.write_text(text)
    res = sh(f"cd {tmp_path} && " + scripts.render_inline("", 'list_releases ""'))
    assert res.returncode == 0, res.stderr
    assert Report.parse(res.stdout).named("release") == {v: t.rstrip("\n").replace("\n", " ") for v, t in texts.items()}


def lib(body: str, *, cwd=None, health: bool = False) -> subprocess.CompletedProcess:
    """BODY run by real sh after the library (and health.sh)."""
    text = scripts.render_inline("SERVICE=makenotwork", (scripts.source("health.sh") if health else "") + "\n" + body)
    return subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=30, cwd=cwd)


@pytest.mark.parametrize("text, want", [
    ('PORT=3000\nDATABASE_PATH="/var/lib/a b.db"\n', "/var/lib/a b.db"),
    ("DATABASE_PATH='/one.db'\nDATABASE_PATH=/two.db\n", "/two.db"),  # the last one wins, as for the service
    ("DATABASE_PATH=/no/newline.db", "/no/newline.db"),
    ('#DATABASE_PATH=/commented.db\n DATABASE_PATH=/indented.db\nOTHER_DATABASE_PATH=/x\n', ""),
    ('DATABASE_PATH="/q\'u\"otes.db"\n', "/quotes.db"),  # every quote goes, as `tr -d` did
    ("DATABASE_PATH=\n", ""),
])
def test_env_database_reads_the_last_database_path_without_a_fork(tmp_path, text, want):
    """What the node read and the gate took from `sed | tail | tr` (three execs a read, issue 24)."""
    env = tmp_path / "mnw.env"
    env.write_text(text)
    res = lib(f"env_database {env}; printf '[%s]' \"$_sando_db\"")
    assert (res.returncode, res.stdout) == (0, f"[{want}]"), res.stderr
    # cross-check with the pipeline it replaces
    old = subprocess.run(["sh", "-c", f"sed -n 's/^DATABASE_PATH=//p' {env} | tail -n 1 | tr -d \"\\\"'\""],
                         capture_output=True, text=True).stdout.rstrip("\n")
    assert old == want


def test_env_database_of_a_missing_file_is_empty(tmp_path):
    res = lib(f"_sando_db=stale; env_database {tmp_path}/none.env; printf '[%s]' \"$_sando_db\"")
    assert (res.returncode, res.stdout, res.stderr) == (0, "[]", "")


def test_first_line_and_clip_without_a_fork(tmp_path):
    (tmp_path / "one").write_text("3001\n")
    (tmp_path / "bare").write_text("3002")
    res = lib(f"_sando_first {tmp_path}/one; a=$_sando_f; _sando_first {tmp_path}/bare; b=$_sando_f; "
              f"_sando_first {tmp_path}/none; c=$_sando_f; clip 5 abcdefgh; d=$_sando_c; clip 5 abc; "
              "printf '%s|%s|%s|%s|%s' \"$a\" \"$b\" \"$c\" \"$d\" \"$_sando_c\"")
    assert (res.returncode, res.stdout, res.stderr) == (0, "3001|3002||abcde|abc", "")


def test_free_kib_of_is_dfs_fourth_field(tmp_path):
    res = lib(f"free_kib_of {tmp_path}; printf '%s' \"$_sando_free\"")
    want = subprocess.run(["df", "-Pk", "--", str(tmp_path)], capture_output=True, text=True).stdout.splitlines()[1].split()[3]
    assert res.returncode == 0 and res.stdout.isdigit() and abs(int(res.stdout) - int(want)) < 10240, (res.stdout, want)
    res = lib(f"free_kib_of {tmp_path}/none; printf '[%s]' \"$_sando_free\"")
    assert (res.returncode, res.stdout) == (0, "[]")  # df failed: no number, the caller says what


@pytest.mark.parametrize("body, want", [
    ('{"version":"v1"}', "v1"),
    ('{"name":"version","version":"v2"}', "v2"),  # "version" as a value first
    ('{"version": 3, "db": {"version": "3.40"}}', "3.40"),  # as grep -o did: the first that is a string
    ('{"version"\n: "v1"}', ""),  # not on one line
    ('{"version": "v1\n"}', ""),
    ('{"versions":"x","version":"v4"}', "v4"),
    ('{"version":""}', ""),
    ("", ""),
])
def test_json_field_reads_as_grep_did(body, want):
    """health.sh's json_field (no fork since issue 24) against the grep | head | sed it replaces."""
    res = lib(f"json_field version {shlex.quote(body)}; printf '[%s]' \"$_jf\"", health=True)
    assert (res.returncode, res.stdout) == (0, f"[{want}]"), res.stderr
    old = subprocess.run(["sh", "-c", "grep -o '\"version\"[[:space:]]*:[[:space:]]*\"[^\"]*\"' | head -n 1 | "
                          "sed 's/.*\"\\([^\"]*\\)\"$/\\1/'"], input=body + "\n", capture_output=True, text=True)
    assert old.stdout.rstrip("\n") == want
