"""Fixtures for the attack tests: an in-process federation, and ``tamper`` to run
the coordinator's party of a job type inside modified code (helpers.malicious)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.malicious import Tampering, frames

from cleanroom import jobtypes
from cleanroom.jobtypes.base import CoordinatorContext
from cleanroom.testing import InProcessFederation
from protocols.party import CoordinatorParty


@pytest.fixture
def fed() -> Iterator[InProcessFederation]:
    with InProcessFederation(frames(), id_column="pid") as federation:
        yield federation


@pytest.fixture
def tamper(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., None]:
    """``tamper(job_type, hear=..., say=..., release=...)``: the coordinator runs
    that job type's party inside ``Tampering`` from now on."""

    def install(job_type: str, **hooks: Any) -> None:
        job = jobtypes.get(job_type)
        honest = job.coordinator_party

        def party(ctx: CoordinatorContext) -> CoordinatorParty:
            return Tampering(honest(ctx), **hooks)

        monkeypatch.setattr(job, "coordinator_party", party)

    return install
