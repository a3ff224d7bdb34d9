"""The data sandbox: container start-to-finish overhead, and a scikit-learn fit inside
the locked-down container vs the same fit outside it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.registry import Context, Measurement, benchmark
from benchmarks.stats import Stats
from cleanroom.errors import SandboxError

_TRIVIAL = "print('ok')\n"
_FIT = """\
import time, pandas as pd
from sklearn.linear_model import LogisticRegression
data = pd.read_csv('/data/data.csv')
started = time.process_time()
LogisticRegression(max_iter=200).fit(data.drop(columns=['y']), data['y'])
open('/output/fit.txt', 'w').write(str(time.process_time() - started))
"""


def _dataset(directory: Path, rows: int) -> Path:
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 20))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(20)])
    frame["y"] = (x[:, 0] + x[:, 1] + rng.normal(size=rows) > 0).astype(int)
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_csv(directory / "data.csv", index=False)
    return directory


def _script(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.py").write_text(text)
    return directory


@benchmark("sandbox", "sandbox")
def sandbox_costs(ctx: Context) -> Iterator[Measurement]:
    """Docker sandbox: trivial script start-to-finish, and an sklearn fit in vs out."""
    from sandbox import DockerSandbox, SandboxLimits, docker_client, ensure_image

    try:
        client = docker_client()
        image = ensure_image(client=client, progress=ctx.log)
    except SandboxError as exc:
        ctx.gap("sandbox overhead and fit ratio", f"no Docker engine: {exc}")
        return
    runner = DockerSandbox(client, image, SandboxLimits(memory_mb=1024, cpus=1.0))
    work = ctx.workdir
    data = _dataset(work / "data", ctx.pick(quick=20_000, full=100_000))
    trivial = _script(work / "trivial", _TRIVIAL)
    fit = _script(work / "fit", _FIT)
    repeat = ctx.pick(quick=2, full=5)

    def run(code: Path) -> float:
        out = work / f"out-{time.monotonic_ns()}"
        out.mkdir()
        started = time.perf_counter()
        runner.run(code, data, out, timeout_s=300)
        return time.perf_counter() - started

    host = [_host_seconds([sys.executable, "-c", _TRIVIAL]) for _ in range(repeat)]
    inside = [run(trivial) for _ in range(repeat)]
    yield ctx.measurement(
        case="trivial script, start to finish",
        params={"rows": 0},
        metric="wall",
        measured=Stats.of(inside, "s"),
        baseline=Stats.of(host, "s"),
        baseline_name="the same script as a host process",
        note="container create, exec, output copy-out and removal included",
    )
    fits_in, fits_out = [], []
    for _ in range(repeat):
        out = work / f"fit-{time.monotonic_ns()}"
        out.mkdir()
        runner.run(fit, data, out, timeout_s=300)
        fits_in.append(float((out / "fit.txt").read_text()))
        fits_out.append(_fit_outside(data / "data.csv"))
    yield ctx.measurement(
        case="LogisticRegression fit",
        params={"rows": len(pd.read_csv(data / "data.csv"))},
        metric="cpu",
        measured=Stats.of(fits_in, "s"),
        baseline=Stats.of(fits_out, "s"),
        baseline_name="same fit outside the sandbox",
        note="inside: Debian's scikit-learn in the image; outside: this venv's",
    )


def _host_seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def _fit_outside(path: Path) -> float:
    from sklearn.linear_model import LogisticRegression

    frame = pd.read_csv(path)
    started = time.process_time()
    LogisticRegression(max_iter=200).fit(frame.drop(columns=["y"]), frame["y"])
    return time.process_time() - started
