"""The benchmark-only sealed and delivered vector jobs (issue 12's end-to-end
sealing cost), their real parties driven in process: both give the analyst the
unsealed secure vector's sum; a sealed sum altered on the way is refused."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from benchmarks import sealed_jobs
from cleanroom.errors import ProtocolError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes import get, load_plugins
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from cleanroom.jobtypes.simulate import drive
from protocols.party import ANALYST, CoordinatorParty

NODES = ("n1", "n2", "n3")
LENGTH = 1000


@pytest.fixture(autouse=True)
def _plugins() -> None:
    load_plugins(
        ("bench_secure_vector", "bench_delivered_vector", "bench_sealed_vector")
    )


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _run(job_type: str, *, tamper: bool = False) -> Any:
    inputs = "".join(f"  - {{node: {n}, dataset: d}}\n" for n in NODES)
    spec = parse_spec(
        f"type: {job_type}\ninputs:\n{inputs}"
        f"params: {json.dumps({'column': 'a', 'length': LENGTH})}\npurpose: test\n"
    )
    job = get(spec.type)
    keys = {n: Ed25519PrivateKey.generate() for n in (*NODES, ANALYST)}
    publics = {n: _raw(k) for n, k in keys.items()}
    rng = np.random.default_rng(3)
    coordinator: CoordinatorParty = job.coordinator_party(
        CoordinatorContext("j1", spec, NODES, publics)
    )
    if tamper:
        coordinator = _Altering(coordinator)
    nodes = {
        n: job.node_party(
            NodeContext(
                "j1",
                spec,
                n,
                "d",
                pd.DataFrame({"a": rng.normal(0, 50, 40)}),
                "h",
                5,
                keys[n],
                NODES,
                publics,
            )
        )  # fmt: skip
        for n in NODES
    }
    analyst = (
        job.analyst_party(
            AnalystContext("j1", spec, "alice", NODES, keys[ANALYST], publics)
        )
        if job.has_analyst_party(spec)
        else None
    )
    return drive(coordinator, nodes, analyst)


class _Altering(CoordinatorParty):
    """A coordinator that adds one to the first element of the released sum."""

    def __init__(self, inner: CoordinatorParty) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def start(self) -> Any:
        return self._inner.start()

    def receive(self, message: Any) -> Any:
        return self._inner.receive(message)

    @property
    def finished(self) -> bool:
        return self._inner.finished

    def waiting_for(self) -> frozenset[str]:
        return self._inner.waiting_for()

    def result(self) -> Mapping[str, Any]:
        return self._inner.result()

    def attachments(self) -> Mapping[str, bytes]:
        raw = bytearray(self._inner.attachments()[sealed_jobs.ATTACHMENT])
        raw[0] ^= 1
        return {sealed_jobs.ATTACHMENT: bytes(raw)}


def test_sealed_and_delivered_sums_equal_the_unsealed_secure_vector() -> None:
    plain = _run("bench_secure_vector").result["sha256"]
    delivered, sealed = _run("bench_delivered_vector"), _run("bench_sealed_vector")
    assert delivered.opened["sha256"] == plain
    assert sealed.opened["sha256"] == plain
    # What the coordinator released of the sealed flow is not the sum.
    raw = sealed.attachments[sealed_jobs.ATTACHMENT]
    assert len(raw) > 8 * LENGTH
    assert raw[: 8 * 8] != np.array(sealed.opened["head"], dtype="<u8").tobytes()


def test_a_sealed_sum_altered_by_the_coordinator_is_refused() -> None:
    with pytest.raises(ProtocolError, match="does not verify"):
        _run("bench_sealed_vector", tamper=True)
