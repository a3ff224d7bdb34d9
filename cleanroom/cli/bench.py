"""``cleanroom bench``: run the benchmark suite (also ``python -m benchmarks``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cleanroom.cli.common import EXIT_FAILED, EXIT_USAGE


@click.command("bench")
@click.option(
    "--preset",
    type=click.Choice(["quick", "full"]),
    default="quick",
    show_default=True,
    help="quick: small sizes, < 2 min (CI); full: every protocol, goal sizes.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Directory for results.json, summary.md and the PNG plots.",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="NAME",
    help="Run only benchmarks whose name or group matches (glob; repeatable).",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=None,
    help="Repeats per measurement (default: 3 quick, 7 full).",
)
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="List the benchmarks of the preset and exit.",
)
def bench(
    preset: str, out: Path, only: tuple[str, ...], repeat: int | None, list_only: bool
) -> None:
    """Benchmark cleanroom against plaintext, naive and peer baselines in one run.

    Every ratio is computed from numbers measured in the same run; goals come
    from the issues (see benchmarks/README.md).
    """
    from benchmarks.runner import load_suite, run_suite

    registry = load_suite()
    if list_only:
        for item in registry.select(preset, only):
            click.echo(f"{item.name:28} {item.group:10} {item.doc}")
        return
    try:
        result = run_suite(
            preset=preset,
            out=out,
            only=only,
            repeat=repeat,
            registry=registry,
            log=click.echo,
        )
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if result.failures:
        click.echo(
            f"{len(result.failures)} benchmark(s) failed: {', '.join(result.failures)}",
            err=True,
        )
        sys.exit(EXIT_FAILED)
