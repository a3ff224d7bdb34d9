"""Peer libraries the benchmarks compare against, each in its own virtualenv.

``benchmarks/peers/<peer>/driver.py`` reads a JSON job on stdin and prints JSON
timings; :func:`peer_python` creates ``benchmarks/peers/<peer>/.venv`` (git-ignored)
with pip from PyPI on first use, and :func:`run_peer` runs the driver there.
Anything that fails becomes a BenchmarkGap saying why; no peer figure is invented.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks.registry import BenchmarkGap

PEERS_DIR: Final = Path(__file__).resolve().parent


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def peer_python(
    peer: str, requirements: Sequence[str], *, timeout: float = 3600
) -> Path:
    """The peer venv's interpreter, installing ``requirements`` there if needed."""
    venv = PEERS_DIR / peer / ".venv"
    python = venv / "bin" / "python"
    marker = venv / "cleanroom-requirements.txt"
    wanted = "\n".join(requirements)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", *requirements],
    ]
    for argv in steps:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkGap(f"installing {peer} took over {timeout:.0f} s") from None
        if done.returncode != 0:
            raise BenchmarkGap(
                f"could not install {' '.join(requirements)} for {peer}: "
                f"{_tail(done.stderr or done.stdout)}"
            )
    marker.write_text(wanted)
    return python


def run_peer(
    peer: str,
    python: Path,
    job: dict[str, Any],
    *,
    timeout: float = 3600,
    script: str = "driver.py",
) -> dict[str, Any]:
    """Run the peer's driver (or another ``script`` of it) on ``job`` and return
    its JSON answer."""
    driver = PEERS_DIR / peer / script
    try:
        done = subprocess.run(
            [str(python), str(driver)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkGap(f"{peer} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchmarkGap(f"{peer} failed: {_tail(done.stderr or done.stdout)}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer
