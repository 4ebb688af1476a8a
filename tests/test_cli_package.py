"""The CLI package: help on every option, defaults in --help, --version, -v after the subcommand,
`vlmood methods`, and --label from `vlmood eval` to results.json and `vlmood report`."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys

import pytest

import vlmood
from vlmood.cli import build_parser, main
from vlmood.errors import VlmoodError


def _parsers(parser: argparse.ArgumentParser, path: str = "vlmood"):
    """(command path, parser) for the top-level parser and every (nested) subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


ALL = list(_parsers(build_parser()))
COMMANDS = [path for path, _ in ALL]


def test_every_command_is_reached():
    for cmd in (
        "eval",
        "cache",
        "fit",
        "study",
        "pretrain",
        "report",
        "demo",
        "models",
        "scores",
        "methods",
        "zoo",
        "attack",
    ):
        assert f"vlmood {cmd}" in COMMANDS
    for cmd in ("check", "list", "prepare", "sources", "example"):
        assert f"vlmood data {cmd}" in COMMANDS


@pytest.mark.parametrize("path,parser", ALL, ids=COMMANDS)
def test_every_option_has_help(path, parser):
    hidden = {"ood", "sets"} if path == "vlmood fit" else set()  # refused by fit, hidden from its help
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if action.dest in hidden:
            assert action.help == argparse.SUPPRESS
            continue
        assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, f"{path} {name}"


@pytest.mark.parametrize("path,parser", ALL, ids=COMMANDS)
def test_help_shows_defaults_and_no_empty_ones(path, parser):
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    for action in parser._actions:  # every option with a real default shows it
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._VersionAction):
                assert "default" in (action.help or "") or f"(default: {action.default})" in " ".join(
                    text.split()
                ), f"{path} {action.option_strings}"


def test_help_shows_some_known_defaults():
    helps = {path: " ".join(p.format_help().split()) for path, p in ALL}
    assert "(default: 64)" in helps["vlmood eval"]  # --batch-size
    assert "(default: stat)" in helps["vlmood eval"]  # --fingerprint
    assert "(default: 224)" in helps["vlmood pretrain"]  # --image-size
    assert "(15; 400 with --image-tower)" in helps["vlmood pretrain"]  # --epochs: per recipe
    assert "(default: runs/demo)" in helps["vlmood demo"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"vlmood {vlmood.__version__}"


def test_python_dash_m_runs_the_package():
    r = subprocess.run(
        [sys.executable, "-m", "vlmood.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.strip() == f"vlmood {vlmood.__version__}", r.stderr


@pytest.mark.parametrize(
    "argv,verbose",
    [
        (["models"], False),
        (["-v", "models"], True),
        (["models", "-v"], True),
        (["models", "--verbose"], True),
        (["-v", "models", "-v"], True),
        (["data", "list", "-v"], True),
        (["eval", "--out", "x", "-v"], True),
    ],
)
def test_verbose_before_or_after_the_subcommand(argv, verbose):
    args = build_parser().parse_args(argv)
    assert bool(getattr(args, "verbose", False)) is verbose


def test_verbose_after_the_subcommand_shows_the_traceback(capsys):
    assert main(["data", "check", "no-such-benchmark"]) == 2  # one line without -v
    assert "vlmood data: error:" in capsys.readouterr().err
    with pytest.raises(VlmoodError):  # -v after the subcommand: the exception itself
        main(["data", "check", "no-such-benchmark", "-v"])


def test_methods_lists_every_registered_method_with_a_description(capsys):
    from vlmood.methods import METHODS

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    firsts = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    assert set(firsts) == set(METHODS.list())
    for name, cls in METHODS.items():
        doc = inspect.cleandoc(cls.__doc__ or "").splitlines()
        assert doc and doc[0], f"method {name} has no docstring of its own"
        assert firsts[name].split(None, 1)[1] == doc[0]
    assert any("params:" in line and "n_ctx=16" in line for line in lines)  # coop's Params defaults


def test_methods_pattern(capsys):
    assert main(["methods", "*coop"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith(" ")]
    assert names == ["cocoop", "coop", "locoop"]


def test_empty_label_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--out", "x", "--label", "  "])
    assert e.value.code == 2
    assert "--label" in capsys.readouterr().err


def test_label_reaches_results_and_report(tmp_path, capsys, monkeypatch):
    from vlmood.data.example import write_example
    from vlmood.report.load import load_runs

    monkeypatch.setenv("VLMOOD_CACHE", str(tmp_path / "cache"))
    bench = write_example(tmp_path / "data", per_class=4, size=32)
    common = ["eval", "--model", "tiny-test", "--benchmark", str(bench), "--no-progress", "--workers", "0"]
    common += ["--score", "mcm"]
    assert main([*common, "--out", str(tmp_path / "a"), "--label", "my  run"]) == 0
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "a" / "results.json").read_text())["label"] == "my run"
    assert "label" not in json.loads((tmp_path / "b" / "results.json").read_text())
    runs = load_runs([tmp_path / "a", tmp_path / "b"])
    assert [r.label for r in runs] == ["my run", "tiny-test"]
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")]) == 0
    assert "my run" in (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
