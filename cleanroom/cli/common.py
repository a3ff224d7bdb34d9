"""Shared CLI pieces: output, error handling and exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console

from cleanroom import errors

F = TypeVar("F", bound=Callable[..., Any])

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_FAILED = 1
"""The command ran but its job did not succeed, or an operation failed."""
EXIT_USAGE = 2
"""The input was wrong: a bad spec, config or argument."""


def handle_errors(fn: F) -> F:
    """Print domain errors plainly and exit non-zero; never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.SpecError as exc:
            where = f" at {exc.path}" if exc.path else ""
            err.print(
                f"[red]error:[/] invalid job spec{where}: {exc.problem}",
                highlight=False,
            )
            sys.exit(EXIT_USAGE)
        except errors.ConfigError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            sys.exit(EXIT_USAGE)
        except errors.CleanroomError as exc:
            err.print(f"[red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
            sys.exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
