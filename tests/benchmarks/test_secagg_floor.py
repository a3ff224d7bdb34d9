"""The crypto-floor benchmark counts exactly the operations a real round performs."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.bench_secagg import _setup, mandated_work
from protocols import prg
from protocols.secagg import keys, simulate
from protocols.secagg.graph import build_graph


@pytest.mark.parametrize(("n", "d"), [(10, 50), (20, 30)])
def test_mandated_work_matches_an_instrumented_round(
    n: int, d: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, inputs, drops = _setup(n, d)
    work = mandated_work(config, build_graph(config), drops)
    seen = {"agreements": 0, "verifications": 0, "keystream_bytes": 0}
    agree, verify, keystream, short = (
        keys.agree,
        keys.verify_advertisement,
        prg._keystream,
        prg._short_mask,
    )

    def counted_agree(*args: Any) -> bytes:
        seen["agreements"] += 1
        return agree(*args)

    def counted_verify(*args: Any) -> None:
        seen["verifications"] += 1
        verify(*args)

    def counted_keystream(seed: bytes) -> Any:
        # Every mask of this size is one keystream of d elements.
        seen["keystream_bytes"] += d * config.element_bytes
        return keystream(seed)

    monkeypatch.setattr(keys, "agree", counted_agree)
    monkeypatch.setattr(keys, "verify_advertisement", counted_verify)
    def counted_short(seed: bytes, like: Any) -> Any:
        # Short masks (these are) are drawn in one call: the same keystream.
        seen["keystream_bytes"] += d * config.element_bytes
        return short(seed, like)

    monkeypatch.setattr(prg, "_keystream", counted_keystream)
    monkeypatch.setattr(prg, "_short_mask", counted_short)
    ids = simulate.make_identities(config.parties)
    server, clients = simulate.build_session(inputs, config, identities=ids)
    simulate.drive(server, clients, drop_at=drops)
    assert drops
    assert seen == {k: work[k] for k in seen}
