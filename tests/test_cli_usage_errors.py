"""Typer's usage errors (a value an option cannot take, an unknown or another step's option, a
directory where a file is due) come out as every prunectl error does: one line, exit 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from prunectl.cli import app

runner = CliRunner()

CASES = {
    "directory as recipe": (["run", "-p", "proj", "-r", "folder"],
                            "error: prunectl run: Invalid value for '-r' / '--recipe': file "
                            "'folder' is a directory; `prunectl run --help` lists the options"),
    "file as project": (["status", "-p", "file.txt"],
                        "error: prunectl status: Invalid value for '-p' / '--project' (env var: "
                        "'PRUNECTL_PROJECT'): dir 'file.txt' is a file; `prunectl status --help` "
                        "lists the options"),
    "--blocks abc": (["apply", "-p", "proj", "--blocks", "abc"],
                     "error: prunectl apply: Invalid value for '--blocks': "),
    "--budget abc": (["apply", "-p", "proj", "--budget", "abc"],
                     "error: prunectl apply: Invalid value for '--budget': "),
    "unknown option": (["run", "-p", "proj", "--colour"],
                       "error: prunectl run: No such option: --colour"),
    "another step's option": (["eval", "-p", "proj", "--blocks", "3"],
                              "error: prunectl eval: No such option: --blocks (an option of "
                              "search, apply, run); `prunectl eval --help` lists the options"),
    "export -o an existing file": (["export", "-p", "proj", "-o", "file.txt"],
                                   "error: prunectl export: Invalid value for '--output' / '-o': "
                                   "dir 'file.txt' is a file"),
    "unknown root option": (["--colour"], "error: prunectl: No such option: --colour"),
    "missing argument": (["recipes", "show"],
                         "error: prunectl recipes show: Missing argument 'name'; "),
    "unknown command": (["prune"], "error: prunectl: No such command 'prune'"),
}


@pytest.mark.parametrize("case", CASES)
def test_usage_errors_are_one_line_and_exit_2(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    args, start = CASES[case]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(start), lines[0]
    assert "╭" not in result.stderr and "Usage:" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]  # nothing made


def test_help_and_no_arguments_still_print_the_help():
    for args in ([], ["--help"], ["recipes"]):
        result = runner.invoke(app, args)
        assert "Usage:" in result.output, args
