"""Mask expansion per element: AES-256-CTR (protocols.prg) vs Flower's generator."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final

import numpy as np

from benchmarks.registry import Context, Goal, Measurement, benchmark
from benchmarks.stats import Stats
from protocols.prg import expand_mask, expand_mask_into, mask_dtype

FLOWER_MODULUS: Final = 2**32
"""Flower's SecAgg+ default ``modulus_range``."""
GOAL: Final = Goal(
    ">=",
    5.0,
    "SecAgg+ issue: mask expansion >= 5x faster than "
    "the Flower-style generator, per element",
)
_TARGET_ELEMENTS: Final = 2_000_000
"""Each sample expands at least this many elements so small sizes rise above noise."""


def flower_style_mask(seed: bytes, length: int, modulus: int = FLOWER_MODULUS) -> Any:
    """The peer baseline: the mask generator of Flower's SecAgg+ (flwr, not installed).

    Flower folds the shared secret into 32 bits by XOR of its 4-byte little-endian
    words, seeds numpy's legacy Mersenne Twister (``RandomState``) with it and draws
    ``randint(0, modulus - 1, shape)`` (default int64; the upper bound is exclusive,
    so modulus - 1 itself is never drawn). Reproduced here so it runs in the same
    process and run; only 2^32 seeds are possible, which is why cleanroom keys
    AES-256-CTR with the whole secret instead.
    """
    if len(seed) % 4:
        raise ValueError("the seed length must be a multiple of 4 bytes")
    seed32 = 0
    for i in range(0, len(seed), 4):
        seed32 ^= int.from_bytes(seed[i : i + 4], "little")
    generator = np.random.RandomState(seed32)
    return generator.randint(0, modulus - 1, (length,))


def _per_element(samples: tuple[float, ...], elements: int) -> Stats:
    return Stats.of([s / elements for s in samples], "s")


def _repeated(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


@benchmark("mask_expansion", "secagg")
def mask_expansion(ctx: Context) -> Iterator[Measurement]:
    """Mask expansion per element: AES-256-CTR vs Flower-style MT19937, same sizes.

    cleanroom expands masks into buffers it already holds (``expand_mask_into``, as
    ``masked_copy`` and ``add_masks`` do), which carries the goal on Flower's own ring
    2^32 (the 2^64 ring is reported beside it, without a verdict); Flower's generator
    can only return a new int64 array, so its allocation is part of its cost. The
    cost of a fresh output array on cleanroom's side (``expand_mask``) is reported
    too, without a verdict: at 10^7 elements the kernel's zeroing of 40-80 MB of new
    pages is a large share of it.
    """
    sizes = ctx.pick(quick=(10**5, 10**6), full=(10**5, 10**6, 10**7))
    seed = hashlib.sha256(b"benchmark mask seed").digest()
    for length in sizes:
        calls = max(1, _TARGET_ELEMENTS // length)
        elements = calls * length
        buffers = {bits: np.empty(length, dtype=mask_dtype(bits)) for bits in (32, 64)}
        flower, into32, into64, fresh32, fresh64 = ctx.time_interleaved(
            _repeated(partial(flower_style_mask, seed, length), calls),
            _repeated(partial(expand_mask_into, seed, buffers[32]), calls),
            _repeated(partial(expand_mask_into, seed, buffers[64]), calls),
            _repeated(partial(expand_mask, seed, length, 32), calls),
            _repeated(partial(expand_mask, seed, length, 64), calls),
            repeat=max(ctx.repeat, 7),
        )
        rows = (
            # The goal compares like with like: Flower's ring is 2^32.
            ("into a reused buffer", 32, into32, GOAL),
            ("into a reused buffer", 64, into64, None),
            ("as a fresh array", 32, fresh32, None),
            ("as a fresh array", 64, fresh64, None),
        )
        for how, bits, ours, goal in rows:
            for metric, mine, theirs in (
                ("cpu_per_element", ours.cpu, flower.cpu),
                ("wall_per_element", ours.wall, flower.wall),
            ):
                notes = (
                    ["ring 2^64 is cleanroom's default for floats"]
                    if bits == 64
                    else []
                )
                if how == "as a fresh array":
                    notes.append("includes allocating and faulting in the output")
                yield ctx.measurement(
                    case=f"aes-ctr ring 2^{bits} {how} vs flower-style ring 2^32",
                    params={"d": length, "modulus_bits": bits},
                    details={"calls_per_sample": calls},
                    metric=metric,
                    measured=_per_element(mine.samples, elements),
                    baseline=_per_element(theirs.samples, elements),
                    baseline_name="flower-style RandomState (new int64 array)",
                    ratio_kind="speedup",
                    goal=goal,
                    x=("d",),
                    note="; ".join(notes),
                )
