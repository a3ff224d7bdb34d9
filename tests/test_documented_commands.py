"""Every ``cleanroom ...`` command the README and docs/ show exists, with the
options they show: a command group can no longer fall out of the CLI unnoticed."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from cleanroom.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.DOTALL)
_INLINE = re.compile(r"`(cleanroom [^`]+)`")


def _commands(text: str) -> Iterator[str]:
    for block in _FENCE.findall(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ").removeprefix("sudo ")
            if line.startswith("cleanroom "):
                yield line.split(" #", 1)[0]
    for inline in _INLINE.findall(text):
        yield inline


def _documented() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for command in _commands(doc.read_text()):
            found.append((doc.name, command))
    return found


def _resolve(line: str) -> tuple[click.Command, list[str]]:
    """The command a documented line names, and the options it passes."""
    try:
        words = shlex.split(line)[1:]
    except ValueError:
        words = line.split()[1:]
    command: click.Command = cli
    options = []
    for i, word in enumerate(words):
        if word in ("|", ">", ">>", "&&", ";"):
            break
        if word.startswith("--"):
            options.append(word.split("=", 1)[0])
            continue
        if isinstance(command, click.Group) and not options:
            sub = command.commands.get(word)
            if sub is None:
                if word.isupper() or word.startswith("<") or "…" in word:
                    continue
                raise AssertionError(f"no command '{word}' under '{command.name}'")
            command = sub
    return command, options


def test_the_docs_show_commands() -> None:
    assert len(_documented()) > 20


@pytest.mark.parametrize(("doc", "line"), _documented())
def test_documented_command_exists(doc: str, line: str) -> None:
    command, options = _resolve(line)
    assert not isinstance(command, click.Group) or line.rstrip().endswith(
        ("--help", "-h")
    ), f"{doc}: '{line}' names a group, not a command"
    known = {o for p in command.params for o in getattr(p, "opts", [])}
    known |= {"--help", "-h"}
    unknown = [o for o in options if o not in known]
    assert not unknown, f"{doc}: '{line}': no option {unknown} on '{command.name}'"
