"""The naive Paillier baseline: python-paillier (phe) encrypting one value at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmarks.registry import Context, Measurement, benchmark


@benchmark("paillier_naive", "paillier")
def paillier_naive(ctx: Context) -> Iterator[Measurement]:
    """phe: encrypt N values one at a time, sum the ciphertexts, decrypt (per key size).

    Recorded as the library baseline the packed-Paillier issue will be compared
    against; there is no cleanroom Paillier yet, so no ratio or goal here.
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
            note="baseline for the packed-Paillier issue (no cleanroom Paillier yet)",
        )
