"""The layers hold: imports point down, node and coordinator never import each
other, importing ``protocols`` or ``cleanroom`` loads no gRPC, and node/,
coordinator/ and the CLI name no job type (each job type owns its behaviour)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleanroom import jobtypes

ROOT = Path(__file__).resolve().parent.parent
COMPOSITION_ROOTS = ("cleanroom/cli/", "cleanroom/testing.py")
"""The only places that may import both node and coordinator."""


def _modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def test_protocols_import_nothing_above_them() -> None:
    bad = []
    for path in _modules("protocols"):
        for name in _imports(path):
            top = _top(name)
            if top in ("node", "coordinator", "sandbox", "proto", "benchmarks"):
                bad.append((path.relative_to(ROOT), name))
            if top == "cleanroom" and name != "cleanroom.errors":
                bad.append((path.relative_to(ROOT), name))
    assert not bad, bad


@pytest.mark.parametrize(
    ("package", "forbidden"), [("node", "coordinator"), ("coordinator", "node")]
)
def test_node_and_coordinator_never_import_each_other(
    package: str, forbidden: str
) -> None:
    bad = [
        (path.relative_to(ROOT), name)
        for path in _modules(package)
        for name in _imports(path)
        if _top(name) == forbidden
    ]
    assert not bad, bad


def test_only_the_composition_roots_import_both() -> None:
    both = []
    for path in _modules("cleanroom"):
        tops = {_top(n) for n in _imports(path)}
        if {"node", "coordinator"} <= tops:
            both.append(path.relative_to(ROOT).as_posix())
    assert both, "the CLI composes node and coordinator somewhere"
    assert all(p.startswith(COMPOSITION_ROOTS) for p in both), both


def test_job_types_import_neither_node_nor_coordinator() -> None:
    bad = [
        (path.relative_to(ROOT), name)
        for path in _modules("cleanroom/jobtypes")
        for name in _imports(path)
        if _top(name) in ("node", "coordinator")
    ]
    assert not bad, bad


def test_importing_protocols_and_cleanroom_loads_no_grpc() -> None:
    code = (
        "import sys, cleanroom, protocols.party, protocols.compose, protocols.secagg, "
        "protocols.shamir, protocols.dp, protocols.prg, protocols.fixedpoint\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'proto', 'node', 'coordinator')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _words(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, kind, text) of every name, string and comment token in ``path``."""
    with open(path, encoding="utf-8") as source:
        for tok in tokenize.generate_tokens(source.readline):
            if tok.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT):
                yield tok.start[0], tokenize.tok_name[tok.type], tok.string


def test_node_coordinator_and_cli_name_no_job_type() -> None:
    names = jobtypes.names()
    assert {"count", "secure_stats", "sandbox"} <= set(names)
    # words in their own right: only a string naming them counts
    ordinary = {"count", "verify"}
    hits = []
    for package in ("node", "coordinator", "cleanroom/cli"):
        for path in _modules(package):
            lines = path.read_text(encoding="utf-8").splitlines()
            for line, kind, text in _words(path):
                # a CLI command may be called "verify" (``audit verify``)
                command = ".command(" in lines[line - 1]
                for name in names:
                    if name in ordinary:
                        literal = (
                            kind == "STRING"
                            and text.strip("'\"") == name
                            and not command
                        )
                        if literal or f"jobtypes.{name}" in text:
                            hits.append((path.relative_to(ROOT), line, text))
                    elif re.search(rf"\b{re.escape(name)}\b", text):
                        hits.append((path.relative_to(ROOT), line, text[:60]))
    assert not hits, hits


def test_every_job_type_registers_its_own_commands() -> None:
    from cleanroom.cli.main import cli, node_group

    for job_type in jobtypes.all_types():
        for command in job_type.cli_commands():
            assert cli.commands.get(command.name) is command, command.name
        for command in job_type.node_cli_commands():
            assert node_group.commands.get(command.name) is command, command.name
    assert "sandbox" in cli.commands  # the group that once fell out of the CLI
