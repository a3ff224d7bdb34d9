"""Shared fixtures for the audit ledger tests: keys, a fake clock, a filled log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.audit import AuditLog


class FakeClock:
    """A clock that advances one second per reading, or stays where it is set."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start
        self.step = 1.0

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.fixture(scope="session")
def coord_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def node_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def make_clock() -> type[FakeClock]:
    return FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def coord_log(
    tmp_path: Path, coord_key: Ed25519PrivateKey, clock: FakeClock
) -> Iterator[AuditLog]:
    """The coordinator's log with 20 entries over jobs j1..j4."""
    log = AuditLog(
        tmp_path / "coord.db", owner="coordinator", signing_key=coord_key, now=clock
    )
    log.append("registration", data={"node": "bank-a"})
    for i in range(19):
        kind = ("job.approved", "job.step", "job.released")[i % 3]
        log.append(kind, job_id=f"j{i % 4 + 1}", data={"step": i, "rows": [i, i * 2]})
    yield log
    log.close()
