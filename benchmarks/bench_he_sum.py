"""Encrypted sums (he_sum) per value: packed Paillier vs phe and sf-heu, same run."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import numpy as np

from benchmarks.peers.heu.install import THREADS, HeuSession
from benchmarks.registry import BenchmarkGap, Context, Goal, Measurement, benchmark
from benchmarks.stats import Stats
from protocols.paillier import (
    CryptoPool,
    Encryptor,
    KeyPair,
    PackingLayout,
    decrypt_vector,
    exponent_bits,
    generate_keypair,
    sum_vectors,
    vector_from_bytes,
)
from protocols.paillier.fixedbase import choose_window

KEY_BITS: Final = 3072
GOAL_AT: Final = "3072 bits, 10 parties x 10,000 values"
GOAL_PHE: Final = Goal(
    ">=",
    500,
    "packed-Paillier issue (14): >= 500x faster per value than phe with gmpy2 "
    "encrypting one value per ciphertext",
    at=GOAL_AT,
)
GOAL_HEU: Final = Goal(
    ">=",
    5,
    "packed-Paillier issue (14): >= 5x faster per value than sf-heu's batch "
    "ZPaillier encrypting one value per ciphertext",
    at=GOAL_AT,
)
_MAGNITUDE: Final = 2**59
"""Test values lie in [-2^59, 2^59) so that sf-heu's int64 sums cannot wrap."""

Sample = dict[str, tuple[float, float]]
"""Phase -> (CPU seconds of every process involved, wall seconds)."""


class _Clock:
    """CPU (this process plus pool workers' tasks) and wall time of a phase."""

    def __init__(self, pool: CryptoPool | None) -> None:
        self.pool = pool
        self.phases: Sample = {}

    def _cpu(self) -> float:
        return time.process_time() + (self.pool.cpu_seconds if self.pool else 0.0)

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        cpu, wall = self._cpu(), time.perf_counter()
        result = fn()
        self.phases[name] = (self._cpu() - cpu, time.perf_counter() - wall)
        return result


def _he_sum_job(
    keys: KeyPair,
    layout: PackingLayout,
    vectors: list[np.ndarray],
    expected: list[int],
    pool: CryptoPool | None,
) -> Sample:
    """One he_sum as the job runs it: parties encrypt and send (each with its own
    encryptor, so its own table), the coordinator checks, sums and re-randomises,
    the analyst checks and decrypts."""
    public, clock = keys.public, _Clock(pool)
    gc.collect()

    def parties() -> list[bytes]:
        payloads = []
        for vector in vectors:
            encryptor = Encryptor(public, pool=pool)
            encrypted = encryptor.encrypt_integers(vector, layout, path="values")
            payloads.append(encryptor.to_bytes(encrypted, context=b"he_sum/in"))
        return payloads

    def coordinator(payloads: list[bytes]) -> bytes:
        received = [
            vector_from_bytes(p, public, layout, context=b"he_sum/in") for p in payloads
        ]
        total = sum_vectors(received)
        return Encryptor(public, pool=pool).to_bytes(total, context=b"he_sum/out")

    def analyst(payload: bytes) -> list[int]:
        total = vector_from_bytes(payload, public, layout, context=b"he_sum/out")
        return decrypt_vector(keys.private, total, pool=pool)

    payloads = clock.phase("parties", parties)
    to_analyst = clock.phase("coordinator", lambda: coordinator(payloads))
    if clock.phase("analyst", lambda: analyst(to_analyst)) != expected:
        raise AssertionError("packed Paillier decrypted a wrong sum")
    return clock.phases


def _phe_sample(keys: KeyPair, sample: list[int], parties: int) -> Sample:
    """phe, one value per ciphertext, on ``sample`` positions: every party's
    encryption, the parties - 1 additions per position, one decryption each."""
    public, private, clock = keys.public.phe, keys.private.phe, _Clock(None)
    gc.collect()
    ciphertexts = clock.phase("encrypt", lambda: [public.encrypt(v) for v in sample])

    def add() -> list[Any]:
        totals = list(ciphertexts)
        for _ in range(parties - 1):
            totals = [a + b for a, b in zip(totals, ciphertexts, strict=True)]
        return totals

    totals = clock.phase("add", add)
    decrypted = clock.phase("decrypt", lambda: [private.decrypt(t) for t in totals])
    if decrypted != [parties * v for v in sample]:
        raise AssertionError("phe decrypted a wrong sum")
    return clock.phases


def _per_value(
    samples: list[Sample], index: int, weights: dict[str, float], unit: float
) -> Stats:
    """Per-value seconds: sum over phases of weight x phase time, divided by unit."""
    return Stats.of(
        [
            sum(w * s[phase][index] for phase, w in weights.items()) / unit
            for s in samples
        ],
        "s",
    )


def _phases_text(samples: list[Sample]) -> str:
    parts = []
    for phase in samples[0]:
        cpu = float(np.median([s[phase][0] for s in samples]))
        wall = float(np.median([s[phase][1] for s in samples]))
        parts.append(f"{phase} {cpu:.2f} s CPU / {wall:.2f} s wall")
    return "; ".join(parts)


@benchmark("he_sum", "paillier")
def he_sum(ctx: Context) -> Iterator[Measurement]:
    """he_sum per value: packed Paillier (1 process, 2-process pool) vs phe, sf-heu.

    Ours runs the whole job at the stated sizes. phe (one value per ciphertext) is
    measured on a sample of positions per repeat and scaled to the job: parties x
    values encryptions, (parties - 1) x values additions, values decryptions.
    sf-heu (batch numpy API, one value per ciphertext, ZPaillier and OU) runs the
    job on fewer values per party in its own venv and process, and is scaled
    linearly. All of them run interleaved, repeat by repeat, in this run.
    """
    parties = ctx.pick(quick=3, full=10)
    values = ctx.pick(quick=300, full=10_000)
    phe_positions = ctx.pick(quick=4, full=16)
    heu_values = ctx.pick(quick=30, full=200)
    repeat = ctx.pick(quick=ctx.repeat, full=min(ctx.repeat, 3))
    started = time.perf_counter()
    keys = generate_keypair(KEY_BITS)
    keygen_s = time.perf_counter() - started
    layout = PackingLayout(KEY_BITS, value_bits=64, additions=parties)
    rng = np.random.default_rng(14)
    vectors = [rng.integers(-_MAGNITUDE, _MAGNITUDE, values) for _ in range(parties)]
    expected = [int(v) for v in np.sum(vectors, axis=0)]
    phe_values = [int(v) for v in vectors[0][:phe_positions]]
    total_values = parties * values
    per_party = layout.ciphertexts_for(values)
    window = choose_window(exponent_bits(keys.public), per_party, 2 * KEY_BITS)
    params = {"key_bits": KEY_BITS, "parties": parties, "values": values}
    applies = (parties, values) == (10, 10_000)
    details: dict[str, Any] = {
        "slots": layout.slots,
        "slot_bits": layout.slot_bits,
        "ciphertexts_per_party": per_party,
        "exponent_bits": exponent_bits(keys.public),
        "window_bits": window,
    }
    ctx.log(
        f"  {parties} parties x {values} values, {layout.slots} slots of "
        f"{layout.slot_bits} bits, {per_party} ciphertexts per party"
    )
    # OU is reported beside ZPaillier at the goal sizes; quick runs the goal peer.
    schemas = ctx.pick(quick=("ZPaillier",), full=("ZPaillier", "OU"))
    peers = _open_heu(ctx, schemas, parties, heu_values)
    with CryptoPool(2) as pool:
        round_trip, parallelism = pool.round_trip_seconds, pool.parallelism
        serial: list[Sample] = []
        pooled: list[Sample] = []
        phe: list[Sample] = []
        heu: dict[str, list[Sample]] = {name: [] for name in peers}
        for _ in range(repeat):
            serial.append(_he_sum_job(keys, layout, vectors, expected, None))
            pooled.append(_he_sum_job(keys, layout, vectors, expected, pool))
            phe.append(_phe_sample(keys, phe_values, parties))
            for name, session in peers.items():
                answer = session.run()
                heu[name].append({k: (v["cpu"], v["wall"]) for k, v in answer.items()})
    for session in peers.values():
        session.close()
    for name, samples in (("1 process", serial), ("2-process pool", pooled)):
        ctx.log(f"  ours, {name}, median per phase: {_phases_text(samples)}")
    ctx.log(
        f"  key generation {keygen_s:.1f} s; pool round trip "
        f"{round_trip * 1e3:.2f} ms, measured parallelism {parallelism:.2f} of 2; "
        f"phe sampled on {phe_positions} positions"
    )
    everything = {"parties": 1.0, "coordinator": 1.0, "analyst": 1.0}
    ours = {
        "packed, 1 process": (serial, 0, "cpu_per_value"),
        "packed, 2-process pool": (pooled, 1, "wall_per_value"),
    }
    phe_weights = {
        "encrypt": total_values / phe_positions,
        "add": values / phe_positions,
        "decrypt": values / phe_positions,
    }
    baselines: dict[str, tuple[list[Sample], dict[str, float], Goal | None]] = {
        "phe one value per ciphertext (sampled, scaled)": (phe, phe_weights, GOAL_PHE),
    }
    for name, samples in heu.items():
        heu_weights = dict.fromkeys(("encrypt", "add", "decrypt"), 1.0)
        goal = GOAL_HEU if name == "ZPaillier" else None
        label = f"sf-heu {name} batch, one value per ciphertext"
        baselines[label] = (samples, heu_weights, goal)
    unit_heu = parties * heu_values
    for label, (samples, weights, goal) in baselines.items():
        unit = total_values if samples is phe else unit_heu
        for case, (mine, index, metric) in ours.items():
            yield ctx.measurement(
                case=f"{case} vs {label}",
                params=params,
                details=details
                if index == 0
                else details | {"pool_parallelism": round(parallelism, 2)},
                metric=metric,
                measured=_per_value(mine, index, everything, total_values),
                baseline=_per_value(samples, index, weights, unit),
                baseline_name=label,
                ratio_kind="speedup",
                goal=goal,
                goal_applies=applies,
                x=("values",),
                note=_note(label, index, heu_values, phe_positions),
            )


def _note(label: str, index: int, heu_values: int, phe_positions: int) -> str:
    what = (
        "CPU of this process (no pool)"
        if index == 0
        else "wall time with a 2-worker pool (it takes a batch only when its "
        "measured parallelism says it pays)"
    )
    if label.startswith("phe"):
        return f"{what}; phe measured on {phe_positions} positions and scaled"
    return (
        f"{what}; sf-heu run on {heu_values} values per party, scaled linearly, "
        f"YACL_NUM_THREADS={THREADS}"
    )


def _open_heu(
    ctx: Context, schemas: tuple[str, ...], parties: int, heu_values: int
) -> dict[str, HeuSession]:
    sessions = {}
    for schema in schemas:
        job = {
            "schema": schema,
            "key_bits": KEY_BITS,
            "parties": parties,
            "values": heu_values,
            "seed": 14,
        }
        try:
            sessions[schema] = HeuSession(job)
        except BenchmarkGap as gap:
            ctx.gap(f"sf-heu {schema}", str(gap))
    for schema, session in list(sessions.items()):
        try:
            setup = session.setup
        except BenchmarkGap as gap:
            ctx.gap(f"sf-heu {schema}", str(gap))
            del sessions[schema]
            continue
        ctx.log(
            f"  sf-heu {setup['version']} {schema}: key generation "
            f"{setup['keygen']['wall']:.1f} s (not timed)"
        )
    return sessions
