"""Sandbox test fixtures: a Docker engine, the sandbox image, job directories."""

from __future__ import annotations

import os
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sandbox.image import docker_client, ensure_image
from sandbox.runner import SandboxLimits
from sandbox.vetting import VettingRules

REPO = Path(__file__).resolve().parents[2]
# Set to 1 in CI so that a Docker engine that cannot run fails the run.
REQUIRE_DOCKER_ENV = "CLEANROOM_TEST_REQUIRE_DOCKER"
_SKIPPED: list[str] = []


def make_dataset(rows: int = 300, seed: int = 7) -> pd.DataFrame:
    """A synthetic patient table: identifier, quasi-identifiers, sensitive, label."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows)
    income = np.round(rng.normal(52_000, 9_000, rows), 2)
    sex = rng.choice(["F", "M"], rows)
    logit = 0.04 * (age - 50) + 0.0001 * (income - 52_000) + (sex == "F") * 0.5
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "patient_id": [f"P{100000 + i}" for i in range(rows)],
            "age": age,
            "sex": sex,
            "region": rng.choice(["north", "south", "east", "west"], rows),
            "income": np.round(income, 2),
            "diagnosis": [f"D{code:03d}" for code in rng.integers(0, 400, rows)],
            "label": label,
        }
    )


@pytest.fixture(scope="session")
def dataset() -> pd.DataFrame:
    return make_dataset()


@pytest.fixture
def rules() -> VettingRules:
    return VettingRules(
        min_cell_count=10,
        rounding=3,
        sensitive_columns=["diagnosis", "income"],
        identifier_columns=["patient_id"],
        count_columns=["count", "n"],
    )


@dataclass
class Job:
    code: Path
    data: Path
    out: Path
    dataset: pd.DataFrame


@pytest.fixture
def job(tmp_path: Path) -> Any:
    """``make(source) -> Job``: a bundle with main.py, data/data.csv, empty out/."""

    def make(source: str) -> Job:
        code, data, out = tmp_path / "code", tmp_path / "data", tmp_path / "out"
        for path in (code, data, out):
            path.mkdir()
        # The unshare fallback runs jobs as nobody when tests run as root.
        for path in (tmp_path, code, data):
            path.chmod(0o755)
        (code / "main.py").write_text(textwrap.dedent(source))
        dataset = make_dataset()
        dataset.to_csv(data / "data.csv", index=False)
        return Job(code, data, out, dataset)

    return make


def _loud_skip(reason: str) -> None:
    if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
        pytest.fail(f"{REQUIRE_DOCKER_ENV}=1 but {reason}")
    banner = "#" * 72
    _SKIPPED.append(reason)
    print(
        f"\n{banner}\n## DOCKER SANDBOX TESTS SKIPPED: {reason}\n{banner}", flush=True
    )
    pytest.skip(f"DOCKER SANDBOX TESTS SKIPPED: {reason}")


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    """A Docker client; starts dockerd with scripts/setup-docker.sh if needed."""
    if _SKIPPED:
        pytest.skip(_SKIPPED[0])
    try:
        return docker_client()
    except Exception as first:
        if os.geteuid() != 0:
            _loud_skip(f"no Docker engine and not root to start one ({first})")
        subprocess.run(["bash", str(REPO / "scripts/setup-docker.sh")], timeout=300)
        try:
            return docker_client()
        except Exception as exc:
            _loud_skip(f"dockerd cannot run on this machine ({exc})")


@pytest.fixture(scope="session")
def sandbox_image(docker_engine: Any) -> str:
    """The sandbox image tag, built from Debian packages on first use (~2 minutes)."""
    if _SKIPPED:
        pytest.skip(_SKIPPED[0])
    try:
        return ensure_image(client=docker_engine, progress=print)
    except Exception as exc:
        _loud_skip(f"the sandbox image could not be built ({exc})")
        raise


@pytest.fixture
def small_limits() -> SandboxLimits:
    return SandboxLimits(memory_mb=384, cpus=1.0, pids=64, tmp_mb=32, output_mb=50)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SKIPPED:
        terminalreporter.write_sep("#", "DOCKER SANDBOX TESTS WERE SKIPPED", red=True)
        terminalreporter.write_line(_SKIPPED[0], red=True)
