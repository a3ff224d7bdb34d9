"""Paillier baselines: phe one value at a time; where cleanroom's process pool pays."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from benchmarks.registry import Context, Measurement, benchmark
from protocols.paillier import (
    CryptoPool,
    Encryptor,
    KeyPair,
    PackingLayout,
    decrypt_vector,
    generate_keypair,
)


@benchmark("paillier_naive", "paillier")
def paillier_naive(ctx: Context) -> Iterator[Measurement]:
    """phe: encrypt N values one at a time, sum the ciphertexts, decrypt (per key size).

    The plain library cost per operation; ``he_sum`` compares packed Paillier
    against phe in its own run (no ratio or goal here).
    """
    from phe import paillier

    key_bits = ctx.pick(quick=(3072,), full=(2048, 3072))
    counts = ctx.pick(quick=(8,), full=(16, 64))
    repeat = ctx.pick(quick=ctx.repeat, full=min(ctx.repeat, 3))
    for bits in key_bits:
        # Key generation is a one-off per key and too variable to time usefully here.
        public, private = paillier.generate_paillier_keypair(n_length=bits)
        for count in counts:
            yield from _measure(ctx, (public, private), bits, count, repeat)


def _measure(
    ctx: Context, keys: tuple[Any, Any], bits: int, count: int, repeat: int
) -> Iterator[Measurement]:
    public, private = keys
    values = np.random.default_rng(bits + count).integers(0, 2**32, count)
    plain: list[int] = [int(v) for v in values]
    cipher: list[Any] = [public.encrypt(v) for v in plain]

    def encrypt_all(_: object) -> None:
        for v in plain:
            public.encrypt(v)

    def sum_and_decrypt(_: object) -> None:
        total = cipher[0]
        for c in cipher[1:]:
            total = total + c
        if private.decrypt(total) != sum(plain):
            raise AssertionError("phe decrypted a wrong sum")

    params = {"key_bits": bits, "values": count}
    for case, fn in (
        ("phe encrypt one at a time", encrypt_all),
        ("phe add ciphertexts + decrypt", sum_and_decrypt),
    ):
        timing = ctx.time(fn, repeat=repeat, warmup=0)
        yield ctx.measurement(
            case=case,
            params=params,
            metric="cpu",
            measured=timing.cpu,
            x=("values", "key_bits"),
            note="phe with gmpy2; he_sum measures the packed-Paillier ratios",
        )


class _AlwaysPool(CryptoPool):
    """Takes every batch, remembering what the real decision would have been."""

    predicted = False

    def worth_it(self, serial: float, parallel: float, modulus_bits: int) -> bool:
        self.predicted = super().worth_it(serial, parallel, modulus_bits)
        return True


Timed = tuple[Callable[[], object], Callable[[], object]]


def _threshold_cases(
    keys: KeyPair, layout: PackingLayout, pool: _AlwaysPool, count: int
) -> dict[str, Timed]:
    """Each case's (one process, pool) functions for a batch of ``count``."""
    public = keys.public
    built, built_pooled = Encryptor(public), Encryptor(public, pool=pool)
    vector = built.encrypt_integers([1] * count, layout, packed=False)
    built_pooled.encrypt_integers([1] * count, layout, packed=False)
    return {
        "encrypt, new encryptor": (
            lambda: Encryptor(public).obfuscators(count),
            lambda: Encryptor(public, pool=pool).obfuscators(count),
        ),
        "encrypt, table already built": (
            lambda: built.obfuscators(count),
            lambda: built_pooled.obfuscators(count),
        ),
        "decrypt (CRT)": (
            lambda: decrypt_vector(keys.private, vector),
            lambda: decrypt_vector(keys.private, vector, pool=pool),
        ),
    }


@benchmark("he_pool_threshold", "paillier")
def he_pool_threshold(ctx: Context) -> Iterator[Measurement]:
    """3072-bit batches in one process vs a 2-worker pool: where the pool pays.

    Encryption by a new encryptor (it builds its table, as a party does once per
    job), by one whose table is built, and CRT decryption. The pool is forced so
    that it is timed even where the cost model (``pool_predicted``: what
    ``CryptoPool.worth_it`` would decide) keeps the batch in this process.
    """
    keys = generate_keypair()
    public = keys.public
    layout = PackingLayout(public.bits, value_bits=64, additions=10)
    counts = ctx.pick(quick=(1, 4), full=(1, 2, 3, 4, 6, 8, 16, 32))
    repeat = ctx.pick(quick=ctx.repeat, full=min(ctx.repeat, 5))
    with _AlwaysPool(2) as pool:
        ctx.log(
            f"  pool: round trip {pool.round_trip_seconds * 1e3:.2f} ms, "
            f"measured parallelism {pool.parallelism:.2f} of 2"
        )
        for count in counts:
            cases = _threshold_cases(keys, layout, pool, count)
            for case, (serial_fn, pooled_fn) in cases.items():
                serial, pooled = ctx.time_interleaved(
                    serial_fn, pooled_fn, repeat=repeat
                )
                yield ctx.measurement(
                    case=f"{case}: pool vs one process",
                    params={"key_bits": public.bits, "ciphertexts": count},
                    details={"pool_predicted": pool.predicted},
                    metric="wall",
                    measured=pooled.wall,
                    baseline=serial.wall,
                    baseline_name="one process",
                    ratio_kind="speedup",
                    x=("ciphertexts",),
                    note="2 workers on 2 cores; a ratio above 1 means the pool pays",
                )
