"""Every command's ``--help``: flags read ``--overwrite``, never ``--overwrite <bool>``; options
that take a value keep their type; every flag's help text is still printed."""

from __future__ import annotations

import re

import pytest
import typer

from harness.cli.base import FlagCommand, HarnessTyper
from harness.cli.main import app, main

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOX = re.compile(r"[│╭╮╰╯─]")


def _commands(command, path=()):
    """(path, click command) of the root, every group and every command under it."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def _help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    assert main([*path, "--help"]) == 0
    out = ANSI.sub("", capsys.readouterr().out)
    return " ".join(BOX.sub(" ", out).split())  # one line: the help text as plain words


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_the_walk_reaches_every_command_module():
    paths = {" ".join(p) for p, _ in COMMANDS}
    # one command of each registering module, the nested group and its three commands
    for expected in ("", "synth", "demo", "evaluate", "tune", "leaderboard", "report", "audit"):
        assert expected in paths
    assert {"cohort", "cohort build", "cohort show", "cohort diff", "list"} <= paths
    assert len(paths) >= 16


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "harness" for p, _ in COMMANDS]
)
def test_no_help_shows_a_bool_type(path, command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # nothing wraps: each help text stays on one line
    text = _help(path, capsys)
    assert "<bool>" not in text and "bool" not in text.replace("boolean", "")
    flags = [p for p in command.params if getattr(p, "is_flag", False) and not p.hidden]
    for flag in flags:
        for opt in (*flag.opts, *flag.secondary_opts):
            assert opt in text, (path, opt)
        if flag.help:
            assert " ".join(flag.help.split()) in text, (path, flag.help)
    assert "Show this message and exit." in text  # the --help flag's own help


def test_options_with_a_value_keep_their_type(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    text = _help(("synth",), capsys)
    assert re.search(r"--n-patients <int> Number of patients\.", text)
    assert re.search(r"--out <path> ", text)
    assert re.search(r"--overwrite --no-overwrite Replace an existing", text)
    text = _help(("cohort", "build"), capsys)
    assert re.search(r"--threads <int range> \[x>=1\]", text)


def test_a_command_class_must_keep_the_flag_rule():
    sub = HarnessTyper()
    with pytest.raises(TypeError, match="must subclass FlagCommand"):
        sub.command("x", cls=typer.core.TyperCommand)

    class Own(FlagCommand):
        pass

    @sub.command("y", cls=Own)
    def y(fast: bool = typer.Option(False, help="Go fast.")) -> None:
        pass

    @sub.command("z")
    def z(slow: bool = typer.Option(False, help="Go slow.")) -> None:
        pass

    group = typer.main.get_command(sub)
    assert isinstance(group.commands["y"], Own)
    flag = next(p for p in group.commands["z"].params if p.name == "slow")
    assert flag.metavar == ""
