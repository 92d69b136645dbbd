"""Every command has --help with examples; the top level lists them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from synthrec.cli import COMMANDS, build_parser


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthrec.cli", *args], capture_output=True, text=True, check=False
    )


def test_top_level_help_lists_every_command() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name.replace("_", "-") in proc.stdout


@pytest.mark.parametrize("name", [c.replace("_", "-") for c in COMMANDS])
def test_each_command_has_help_with_examples(name: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    text = sub.format_help()
    assert "examples:" in text and f"synthrec {name}" in text


def test_no_command_prints_help_and_fails() -> None:
    proc = _run()
    assert proc.returncode == 2 and "COMMAND" in proc.stdout


def test_plan_shows_stages_and_runs() -> None:
    proc = _run("plan", "examples/quickstart.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "generate  shards=2" in proc.stdout
    assert "shots4-seed1-ct-syn" in proc.stdout
