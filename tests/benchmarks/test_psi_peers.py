"""The PSI benchmark's machinery: peer drivers' plumbing and the two-process run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import peers
from benchmarks.psi_processes import psi_items, run_psi_processes
from benchmarks.registry import BenchmarkGap


def test_run_peer_parses_the_drivers_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "driver.py").write_text(
        "import json, sys\njob = json.load(sys.stdin)\nprint('noise')\n"
        "print(json.dumps({'twice': job['n'] * 2}))\n"
    )
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path)
    assert peers.run_peer("fake", Path(sys.executable), {"n": 21}) == {"twice": 42}


def test_a_failing_driver_is_a_gap_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "driver.py").write_text(
        "raise SystemExit('no such library')\n"
    )
    monkeypatch.setattr(peers, "PEERS_DIR", tmp_path)
    with pytest.raises(BenchmarkGap, match="no such library"):
        peers.run_peer("broken", Path(sys.executable), {})


def test_two_process_psi_finds_the_overlap() -> None:
    run = run_psi_processes(300, 120)
    assert run.cardinality == 120
    assert run.messages == 3 and run.bytes_sent > 300 * 32
    assert psi_items(0, 2) == [
        "user-0000000000@example.org",
        "user-0000000001@example.org",
    ]


def test_two_process_psi_with_worker_pools_counts_their_cpu() -> None:
    serial = run_psi_processes(2_000, 500)
    pooled = run_psi_processes(2_000, 500, workers=2)
    assert pooled.cardinality == serial.cardinality == 500
    # the pool's workers do the group operations: their CPU must be counted
    assert pooled.cpu_s > 0.5 * serial.cpu_s
