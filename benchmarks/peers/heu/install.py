"""The sf-heu peer's virtualenv (made on first use) and a runner for its driver.

``benchmarks/peers/heu/.venv`` (git-ignored) gets ``sf-heu`` from PyPI with pip.
The pin is the newest sf-heu with an x86-64 Linux wheel for CPython 3.11:
0.6.0b1 ships only macOS arm64 and aarch64 wheels (cp310), 0.6.0b0 only cp310.
Anything that fails becomes a BenchmarkGap saying why; no peer figure is invented.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final, NoReturn

from benchmarks.registry import BenchmarkGap

REQUIREMENT: Final = "sf-heu==0.5.2b0"
PEER_DIR: Final = Path(__file__).resolve().parent
VENV: Final = PEER_DIR / ".venv"
THREADS: Final = 2
"""HEU's intra-op thread pool size (YACL_NUM_THREADS): the machine's 2 cores."""


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def heu_python(*, timeout: float = 900) -> Path:
    """The venv's interpreter, creating the venv and installing sf-heu if needed."""
    python = VENV / "bin" / "python"
    marker = VENV / "cleanroom-requirement.txt"
    if python.exists() and marker.exists() and marker.read_text() == REQUIREMENT:
        return python
    for argv in (
        [sys.executable, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "-q", REQUIREMENT],
    ):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkGap(
                f"installing {REQUIREMENT} took over {timeout:.0f} s"
            ) from None
        if done.returncode != 0:
            raise BenchmarkGap(
                f"could not install {REQUIREMENT}: {_tail(done.stderr or done.stdout)}"
            )
    marker.write_text(REQUIREMENT)
    return python


class HeuSession:
    """One driver process: a key and the parties' data, then one repeat per ``run``.

    Used as a context manager; every failure or timeout is a BenchmarkGap.
    """

    def __init__(self, job: dict[str, Any], *, timeout: float = 900) -> None:
        python = heu_python()
        env = os.environ | {"YACL_NUM_THREADS": str(THREADS)}
        self._timeout = timeout
        self._process = subprocess.Popen(
            [str(python), str(PEER_DIR / "driver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._setup: dict[str, Any] | None = None
        self._send(json.dumps(job))

    @property
    def setup(self) -> dict[str, Any]:
        """The driver's first answer: sf-heu version and key generation time.

        Read lazily, so that several sessions generate their keys concurrently.
        """
        if self._setup is None:
            self._setup = self._receive()
        return self._setup

    def run(self) -> dict[str, Any]:
        """One repeat: per-phase CPU and wall seconds of encrypt, add and decrypt."""
        _ = self.setup
        self._send("run")
        return self._receive()

    def _send(self, line: str) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            self._fail()

    def _receive(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        answer = self._process.stdout.readline()
        # HEU's logger writes to stdout too ("[date] [info] ..."): skip it.
        while answer.startswith("["):
            answer = self._process.stdout.readline()
        if not answer:
            self._fail()
        parsed: dict[str, Any] = json.loads(answer)
        return parsed

    def _fail(self) -> NoReturn:
        process = self._process
        try:
            _, err = process.communicate(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise BenchmarkGap("sf-heu driver hung after failing") from None
        raise BenchmarkGap(f"sf-heu failed: {_tail(err)}")

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> HeuSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
