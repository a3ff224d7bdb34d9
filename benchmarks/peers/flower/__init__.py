"""Flower (``flwr`` from PyPI) as a benchmark peer: its own venv, run as a subprocess.

Installing flwr into cleanroom's venv would pull grpcio/protobuf versions that
conflict with ours, so :func:`ensure_venv` creates ``benchmarks/peers/flower/.venv``
(git-ignored; about 300 MB, under a minute from PyPI) on first use and
:func:`run_round` feeds ``driver.py`` a JSON job on stdin there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from benchmarks.registry import BenchmarkGap

FLWR_VERSION: Final = "1.42.0"
HERE: Final = Path(__file__).resolve().parent
VENV: Final = HERE / ".venv"
DRIVER: Final = HERE / "driver.py"
_INSTALL_SECONDS: Final = 1_800
_ROUND_SECONDS: Final = 3_600


def ensure_venv(log: Callable[[str], None] = print) -> Path:
    """The peer venv's python, creating the venv with pip on first use."""
    python = VENV / "bin" / "python"
    if _installed_version(python) == FLWR_VERSION:
        return python
    log(f"  creating {VENV} with flwr=={FLWR_VERSION} from PyPI (once)")
    steps = (
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "-q", f"flwr=={FLWR_VERSION}"],
    )
    for step in steps:
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, timeout=_INSTALL_SECONDS
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BenchmarkGap(f"cannot set up the Flower venv: {exc}") from None
        if done.returncode:
            raise BenchmarkGap(
                f"cannot set up the Flower venv ({' '.join(step[-3:])}): "
                f"{_tail(done.stderr)}"
            )
    if _installed_version(python) != FLWR_VERSION:
        raise BenchmarkGap(f"flwr=={FLWR_VERSION} did not import in {VENV}")
    return python


def run_round(job: Mapping[str, Any], log: Callable[[str], None] = print) -> Any:
    """Run ``driver.py`` on ``job``; its JSON answer (timings, survivors, error)."""
    python = ensure_venv(log)
    # Flower's telemetry would otherwise try to reach its servers from every run.
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    try:
        done = subprocess.run(
            [str(python), str(DRIVER)],
            input=json.dumps(dict(job)),
            capture_output=True,
            text=True,
            timeout=_ROUND_SECONDS,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkGap(
            f"Flower's round did not finish in {_ROUND_SECONDS} s"
        ) from None
    if done.returncode:
        raise BenchmarkGap(f"Flower's driver failed: {_tail(done.stderr)}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise BenchmarkGap("Flower's driver printed no result")
    return json.loads(lines[-1])


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"
