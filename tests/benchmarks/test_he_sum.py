"""he_sum benchmark machinery: per-value scaling and the sf-heu driver protocol.

No timing assertions, no peer install: the driver is replaced by small scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import bench_he_sum
from benchmarks.peers.heu import install
from benchmarks.registry import BenchmarkGap


def test_per_value_scales_sampled_phases_to_the_job() -> None:
    # 2 parties x 10 values, phe sampled on 2 positions: 20 encryptions, 10
    # position sums and 10 decryptions, over 20 values.
    sample = {"encrypt": (4.0, 8.0), "add": (0.2, 0.4), "decrypt": (1.0, 2.0)}
    weights = {"encrypt": 20 / 2, "add": 10 / 2, "decrypt": 10 / 2}
    cpu = bench_he_sum._per_value([sample], 0, weights, 20)
    wall = bench_he_sum._per_value([sample], 1, weights, 20)
    assert cpu.median == pytest.approx((40 + 1 + 5) / 20)
    assert wall.median == pytest.approx(2 * cpu.median)


def _fake_driver(tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "driver.py").write_text(body)
    monkeypatch.setattr(install, "PEER_DIR", tmp_path)
    monkeypatch.setattr(install, "heu_python", lambda: Path(sys.executable))


def test_session_skips_heu_log_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_driver(
        tmp_path,
        "import json, sys\n"
        "sys.stdin.readline()\n"
        "print('[2026-01-01] [info] thread pool', flush=True)\n"
        "print(json.dumps({'version': 'x', 'keygen': {'cpu': 1, 'wall': 2}}))\n"
        "sys.stdout.flush()\n"
        "for line in sys.stdin:\n"
        "    print(json.dumps({'run': line.strip()}), flush=True)\n",
        monkeypatch,
    )
    with install.HeuSession({"schema": "OU"}, timeout=30) as session:
        assert session.setup["version"] == "x"
        assert session.run() == {"run": "run"}


def test_a_failing_driver_is_a_benchmark_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_driver(tmp_path, "import sys\nsys.exit('no module named heu')\n", monkeypatch)
    session = install.HeuSession({"schema": "OU"}, timeout=30)
    with pytest.raises(BenchmarkGap, match="no module named heu"):
        session.run()
    session.close()
