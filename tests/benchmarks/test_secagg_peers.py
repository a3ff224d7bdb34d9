"""The Flower peer helper fails as a BenchmarkGap; per-node metering adds up."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from benchmarks import bench_flower, bench_secagg
from benchmarks.peers import flower
from benchmarks.registry import BenchmarkGap
from protocols.secagg.simulate import build_session, drive, make_identities


def _fake_python(tmp_path: Path, body: str) -> Path:
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\n{body}\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return venv


def test_a_failing_driver_is_a_gap_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "interpreter" reports the pinned flwr, then fails the round.
    body = (
        'case "$2" in *flwr*) echo ' + flower.FLWR_VERSION + ";; "
        "*) echo 'boom: no grid' >&2; exit 3;; esac"
    )
    monkeypatch.setattr(flower, "VENV", _fake_python(tmp_path, body))
    with pytest.raises(BenchmarkGap, match="driver failed: boom: no grid"):
        flower.run_round({"n": 3}, log=lambda _: None)


def test_a_venv_that_cannot_be_made_is_a_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flower, "VENV", tmp_path / "no" / "such" / ".venv")
    monkeypatch.setattr(flower.sys, "executable", str(tmp_path / "missing-python"))
    with pytest.raises(BenchmarkGap, match="cannot set up the Flower venv"):
        flower.ensure_venv(log=lambda _: None)


@pytest.mark.parametrize(
    ("peer", "message"),
    [
        ({"survivors": 89, "max_abs_error": 0.0}, "Flower kept 89"),
        ({"survivors": 90, "max_abs_error": 0.5}, "off by 0.5"),
    ],
)
def test_a_peer_round_that_went_wrong_is_refused(
    peer: dict[str, Any], message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        bench_flower._check_peer(peer, 90)


def test_metered_parties_account_for_the_round() -> None:
    config, inputs, drops = bench_secagg._setup(12, 64)
    server, clients = build_session(
        inputs, config, identities=make_identities(config.parties)
    )
    metered = {p: bench_secagg._Metered(c) for p, c in clients.items()}
    hub = bench_secagg._Metered(server)
    drive(hub, metered, drop_at=drops)
    assert hub.finished and server.finished
    assert all(m.cpu > 0 for p, m in metered.items() if p not in drops)
    assert all(m.finished for p, m in metered.items() if p not in drops)
