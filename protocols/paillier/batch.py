"""A process pool for batch Paillier work, used only where it pays.

Workers are separate processes (``forkserver``, safe beside gRPC threads) that
receive plain integers: fixed-base products over a range of windows, or CRT
decryptions. Splitting the windows of one exponent between workers means each
builds only its share of the table, so the pool helps even for one-off batches.

Whether a batch goes to the pool is decided from measurements, not a constant.
At start the pool times its task round trip and its real parallelism (the same
work in this process and, at once, in every worker: on a loaded machine the
workers get less than a core each); on first use per modulus size it times a
multiplication mod m. A batch costing S multiplications here, or P split over
the workers (P includes the table shares they build), goes to the pool when
P * t_mul / parallelism + round trip < 0.8 * S * t_mul, i.e. when the pool is
predicted to save a fifth of the time. ``min_batch`` turns that into a batch
size; the ``he_pool_threshold`` benchmark measures the real crossover beside it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final, Self, TypeVar

import gmpy2
from gmpy2 import mpz

from cleanroom.errors import ConfigError, ProtocolAbort
from protocols.paillier.fixedbase import (
    Digits,
    Fraction,
    fixed_base_fractions,
    window_table,
)
from protocols.paillier.keys import CrtKey

log = logging.getLogger(__name__)

PAYOFF: Final = 0.8
"""The pool is used when predicted to take at most this share of the serial time."""
_ROUND_TRIPS: Final = 5
_TIMED_MULMODS: Final = 200
_MAX_REPORTED_BATCH: Final = 4096
_START_ATTEMPTS: Final = 5
_START_HOLD_SECONDS: Final = 0.05
_CALIBRATION_MULMODS: Final = 4000
"""About 20 ms of work, enough to see whether the workers really run at once."""

R = TypeVar("R")


class CryptoPool:
    """``workers`` processes for batch crypto; close it (or use ``with``) when done.

    ``cpu_seconds`` accumulates the CPU time the workers spent inside tasks, so
    callers can account for it (``time.process_time`` sees only this process).
    """

    def __init__(self, workers: int = 2) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 2:
            raise ConfigError("a crypto pool needs at least 2 workers")
        context = multiprocessing.get_context("forkserver")
        self.workers = workers
        self.cpu_seconds = 0.0
        self._executor = ProcessPoolExecutor(workers, mp_context=context)
        self._mulmod_seconds: dict[int, float] = {}
        self.worker_pids = self._start_workers()
        trips = []
        for _ in range(_ROUND_TRIPS):
            start = time.perf_counter()
            self.run(_noop, [()])
            trips.append(time.perf_counter() - start)
        self.round_trip_seconds = statistics.median(trips)
        self.parallelism = self._measure_parallelism()

    def _start_workers(self) -> frozenset[int]:
        """Make every worker process exist before anything is timed.

        The executor starts workers on demand and reuses an idle one, so quick
        tasks submitted together may all land on the first worker: parallelism
        would then be measured (and batches run) on one process. Tasks that
        hold their worker for a moment force a process per task.
        """
        pids: set[int] = set()
        for _ in range(_START_ATTEMPTS):
            pids |= set(self.run(_pid_after, [(_START_HOLD_SECONDS,)] * self.workers))
            if len(pids) >= self.workers:
                break
        return frozenset(pids)

    def _measure_parallelism(self) -> float:
        """How many workers' worth of work runs at once (1 to ``workers``)."""
        # Wall time on both sides: what matters is which finishes sooner here.
        start = time.perf_counter()
        _spin(_CALIBRATION_MULMODS)
        alone = time.perf_counter() - start
        start = time.perf_counter()
        self.run(_spin, [(_CALIBRATION_MULMODS,)] * self.workers)
        together = time.perf_counter() - start
        return min(float(self.workers), max(1.0, self.workers * alone / together))

    def run(self, fn: Callable[..., R], tasks: Sequence[tuple[Any, ...]]) -> list[R]:
        """Run ``fn(*task)`` for every task in the workers; results in task order."""
        try:
            futures = [self._executor.submit(_timed, fn, task) for task in tasks]
            outcomes = [future.result() for future in futures]
        except BrokenProcessPool:
            raise ProtocolAbort("a crypto pool worker died") from None
        self.cpu_seconds += sum(cpu for _, cpu in outcomes)
        return [result for result, _ in outcomes]

    def mulmod_seconds(self, modulus_bits: int) -> float:
        """Measured time of one multiplication mod a ``modulus_bits``-bit modulus."""
        if modulus_bits not in self._mulmod_seconds:
            modulus = (mpz(1) << modulus_bits) - 159
            a = mpz.from_bytes(os.urandom(modulus_bits // 8), "big") % modulus
            b, start = a + 1, time.perf_counter()
            for _ in range(_TIMED_MULMODS):
                b = a * b % modulus
            elapsed = time.perf_counter() - start
            self._mulmod_seconds[modulus_bits] = elapsed / _TIMED_MULMODS
        return self._mulmod_seconds[modulus_bits]

    def worth_it(self, serial: float, parallel: float, modulus_bits: int) -> bool:
        """True if ``parallel`` multiplications split over the workers (plus a
        round trip) beat ``serial`` ones here by the PAYOFF margin."""
        t_mul = self.mulmod_seconds(modulus_bits)
        split = parallel * t_mul / self.parallelism + self.round_trip_seconds
        return split < PAYOFF * serial * t_mul

    def min_batch(
        self, per_item: float, fixed: float, modulus_bits: int, *, cached: bool
    ) -> int | None:
        """The smallest batch ``worth_it`` sends to the pool (None: none up to
        4096), for items costing ``per_item`` multiplications plus ``fixed``
        table ones, the table already ``cached`` in this process or not."""
        for count in range(1, _MAX_REPORTED_BATCH + 1):
            serial = count * per_item + (0 if cached else fixed)
            if self.worth_it(serial, count * per_item + fixed, modulus_bits):
                return count
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CryptoPool(workers={self.workers}, parallelism={self.parallelism:.2f})"


def _timed(fn: Callable[..., R], task: tuple[Any, ...]) -> tuple[R, float]:
    start = time.process_time()
    result = fn(*task)
    return result, time.process_time() - start


def _noop() -> None:
    return None


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _spin(count: int) -> None:
    """Calibration work: ``count`` multiplications mod a 3072-bit number."""
    modulus = (mpz(1) << 3072) - 1103
    value = modulus // 3
    for _ in range(count):
        value = value * (value + 1) % modulus


def partial_fractions(
    base: mpz, modulus: mpz, window: int, first: int, last: int, signed: Digits
) -> list[Fraction]:
    """Worker task: the factors of base^e over windows [first, last) of each e."""
    return fixed_base_fractions(
        window_table(base, modulus, window, first, last), modulus, signed
    )


def crt_decrypt(crt: CrtKey, ciphertexts: Sequence[mpz]) -> list[mpz]:
    """Decrypt raw ciphertexts with the CRT key (also a worker task).

    m mod p = L_p(c^(p-1) mod p^2) * hp mod p, likewise mod q, then CRT.
    """
    cp = gmpy2.powmod_base_list(
        [c % crt.psquare for c in ciphertexts], crt.p - 1, crt.psquare
    )
    cq = gmpy2.powmod_base_list(
        [c % crt.qsquare for c in ciphertexts], crt.q - 1, crt.qsquare
    )
    return [
        crt.combine_plaintext(
            (xp - 1) // crt.p * crt.hp % crt.p, (xq - 1) // crt.q * crt.hq % crt.q
        )
        for xp, xq in zip(cp, cq, strict=True)
    ]


WORKERS_ENV: Final = "CLEANROOM_CRYPTO_WORKERS"
"""Worker processes of the shared pool: unset = one per core (at most 4); 0 or 1
turns it off."""
_MAX_SHARED_WORKERS: Final = 4
_shared: CryptoPool | None = None
_shared_lock = threading.Lock()
_shared_tried = False


def shared_pool() -> CryptoPool | None:
    """This process's pool for job parties (None on one core or when disabled).

    Created on first use and kept for the life of the process, so that jobs do
    not each pay for starting workers; whether a batch uses it is still decided
    per batch (``worth_it``). A pool that cannot start is not retried.
    """
    global _shared, _shared_tried
    with _shared_lock:
        if _shared is None and not _shared_tried:
            _shared_tried = True
            workers = _configured_workers()
            if workers >= 2:
                try:
                    _shared = CryptoPool(workers)
                except (OSError, ProtocolAbort) as exc:
                    log.warning("no crypto pool: %s", exc)
        return _shared


def _configured_workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return min(os.cpu_count() or 1, _MAX_SHARED_WORKERS)
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{WORKERS_ENV} must be a whole number, not {raw!r}"
        ) from None
