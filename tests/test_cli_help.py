"""Every ``x402-meter`` help text is plain text: it is read in a terminal, not rendered.

reStructuredText markup (double backticks, ``::`` literal blocks, Sphinx roles) in a
docstring shown as a description is what the first ``x402-meter --help`` showed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Final

import pytest

from x402_meter.cli import build_parser

RESTRUCTUREDTEXT: Final = re.compile(r"``|::\s*$|:(?:class|func|meth|attr|mod|data):`", re.M)


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command path and its parser: (), ("dev",), ..., ("ledger", "list"), ..."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


COMMANDS: Final = dict(commands(build_parser()))


def test_every_command_and_ledger_action_is_checked() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {
        "",
        "dev",
        "facilitator",
        "gateway",
        "demo",
        "ledger",
        "ledger list",
        "ledger retry",
    } <= names


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(path) or "x402-meter")
def test_help_has_no_restructuredtext(path: tuple[str, ...]) -> None:
    text = COMMANDS[path].format_help()
    assert text.startswith("usage: x402-meter")
    assert not RESTRUCTUREDTEXT.search(text), text


def test_the_installed_command_prints_the_same_plain_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "x402_meter", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Charge per token for LLM APIs" in result.stdout
    assert not RESTRUCTUREDTEXT.search(result.stdout), result.stdout
