"""Row identities keyed with a per-dataset secret and spread over public-size buckets;
the per-bucket summary of one cell's row set, computed from a boolean row mask.

Each row's id goes through a pseudorandom function keyed with the dataset's secret
(AES-256 on one block for integer ids, keyed BLAKE2b for any other id). The output
gives the row a bucket (8 bits: 256 buckets) and a 16-bit tag. A cell's summary
is, for every bucket holding at least one of its rows, an *item*

    bucket (8 bits) | rows of the cell in that bucket (40 bits) | sum of their tags
    mod 2^16 (16 bits)

packed into 64 bits. Items depend only on which ids are in the cell, never on row
order or on rows outside it, so they compare across dataset versions: a row added
to or removed from a cell changes exactly its own bucket's item.

A count-preserving change inside one bucket (one row in, another out) shows only in
the tag sum, which misses it with probability 2^-16; a swap of two rows lands in one
bucket with probability 1/256, so it goes unseen with probability 2^-24.

Speed: once the frame is arranged by bucket (``RowIndex.order``), a cell costs one
packed popcount of its mask and one multiply-and-segment-sum of the 16-bit tags
(3 bytes read per row); unarranged indexes fall back to ``np.bincount``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cleanroom.errors import ConfigError
from protocols.party import SYSTEM_RANDOM, RandomSource

SECRET_BYTES: Final = 32
BUCKET_BITS: Final = 8
BUCKETS: Final = 1 << BUCKET_BITS
GROUPS: Final = 64
"""Coarse groups (bucket mod 64) whose row counts give a cheap lower bound on the
difference between two cells: sum_g |count_g(A) - count_g(B)| <= |A xor B|."""
TAG_BITS: Final = 16
COUNT_BITS: Final = 64 - BUCKET_BITS - TAG_BITS
MAX_BUCKET_ROWS: Final = 1 << 36
"""Keeps float sums of 16-bit tags per bucket exact (below 2^53)."""
_TAG_MASK: Final = (1 << TAG_BITS) - 1
_CHUNK_SLOTS: Final = 1 << 20
"""(cell, bucket) slots summed per ``np.bincount`` call when summarising many cells."""
_CHUNK_ROWS: Final = 1 << 16
"""Rows whose weighted tags are summed per step (128 KB of uint16: stays in L2)."""
_INT_DOMAIN: Final = int.from_bytes(b"cr-int64", "little")

IntArray = npt.NDArray[np.int64]
ItemArray = npt.NDArray[np.uint64]


class DifferencingKey:
    """A dataset's 32-byte secret: it keys row hashing, table positions and the MAC
    on stored records. Generate it once per dataset and keep it with the node's keys:
    a new key makes every earlier record unreadable (and so forgets it)."""

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
            raise ConfigError(f"a differencing key is {SECRET_BYTES} bytes")
        self._secret = secret
        self.key_id: Final = self.derive("key-id")[:16]
        """Public fingerprint: names the key in stored records without revealing it."""

    @classmethod
    def generate(cls, random: RandomSource = SYSTEM_RANDOM) -> DifferencingKey:
        return cls(random(SECRET_BYTES))

    @property
    def secret(self) -> bytes:
        """The raw secret, for the node to persist with its other secret keys."""
        return self._secret

    def derive(self, label: str) -> bytes:
        """A 32-byte subkey for one purpose, domain-separated by ``label``."""
        return hashlib.blake2b(
            label.encode(), key=self._secret, digest_size=32, person=b"cleanroom-diff"
        ).digest()

    def __repr__(self) -> str:
        return f"DifferencingKey(key_id={self.key_id.hex()})"


@dataclass(frozen=True, repr=False)
class CellSketch:
    """One cell's row set as bucket items (ascending bucket), its row count and its
    coarse group counts. Node-internal: it holds per-bucket counts of the data."""

    key_id: bytes
    rows: int
    groups: IntArray
    items: ItemArray

    def __repr__(self) -> str:
        return f"CellSketch(<{self.items.size} buckets>)"


def _chunk_plan(
    starts: npt.NDArray[np.intp], rows: int
) -> list[tuple[int, int, int, int, npt.NDArray[np.intp]]]:
    """Runs of consecutive buckets of about _CHUNK_ROWS rows: (first and last
    bucket segment, first and last row, segment starts relative to the run)."""
    bounds = np.append(starts, rows)
    plan = []
    first = 0
    while first < starts.size:
        last = first + 1
        while last < starts.size and bounds[last + 1] - bounds[first] <= _CHUNK_ROWS:
            last += 1
        lo, hi = int(bounds[first]), int(bounds[last])
        plan.append((first, last, lo, hi, starts[first:last] - lo))
        first = last
    return plan


def _prf_blocks(ids: npt.NDArray[Any], key: DifferencingKey) -> ItemArray:
    """Two 64-bit pseudorandom words per id, keyed with the dataset secret."""
    n = ids.size
    if ids.dtype.kind in "iu":
        blocks = np.empty((n, 2), dtype=np.uint64)
        blocks[:, 0] = ids.astype(
            np.int64 if ids.dtype.kind == "i" else np.uint64
        ).view(np.uint64)
        blocks[:, 1] = _INT_DOMAIN
        # ECB on distinct single blocks is AES used as a pseudorandom permutation,
        # i.e. a PRF on the ids; no block is ever a fragment of a longer message.
        encryptor = Cipher(
            algorithms.AES(key.derive("row-int")),
            modes.ECB(),  # noqa: S305
        ).encryptor()
        raw = encryptor.update(blocks.astype("<u8").tobytes()) + encryptor.finalize()
    else:
        subkey = key.derive("row-str")
        raw = b"".join(
            hashlib.blake2b(
                str(value).encode("utf-8"), key=subkey, digest_size=16
            ).digest()
            for value in ids.tolist()
        )
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64).reshape(n, 2)


class RowIndex:
    """Every row's bucket and tag, for one dataset in one row order."""

    def __init__(
        self, key_id: bytes, bucket: npt.NDArray[np.uint16], tag: npt.NDArray[np.uint16]
    ) -> None:
        self.key_id = key_id
        self._bucket = bucket
        self._tag = tag
        self._segments: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]] | None = None
        self._chunks: list[tuple[int, int, int, int, npt.NDArray[np.intp]]] = []
        self._bounds: tuple[
            npt.NDArray[np.intp], npt.NDArray[np.uint64], npt.NDArray[np.bool_]
        ] = (np.zeros(0, np.intp), np.zeros(0, np.uint64), np.zeros(0, np.bool_))
        if bucket.size and bool(np.all(bucket[1:] >= bucket[:-1])):
            starts = np.flatnonzero(np.diff(bucket.astype(np.int32), prepend=-1))
            self._segments = (bucket[starts].astype(np.intp), starts.astype(np.intp))
            self._chunks = _chunk_plan(starts.astype(np.intp), bucket.size)
            bounds = np.append(starts, bucket.size).astype(np.intp)
            word = bounds >> 6
            self._bounds = (
                word,
                (np.uint64(1) << (bounds & 63).astype(np.uint64)) - np.uint64(1),
                word[1:] == word[:-1],
            )
        self._chunk_rows = max((hi - lo for _, _, lo, hi, _ in self._chunks), default=0)

    @classmethod
    def build(cls, ids: npt.ArrayLike, key: DifferencingKey) -> RowIndex:
        """Hash a dataset's id column (one entry per row, in the frame's row order).

        Integer ids hash as integers and anything else as ``str(value)``, so a
        column must keep its type across versions. Repeated ids are one identity:
        the cell's row set is then a multiset of ids.
        """
        array = np.asarray(ids)
        if array.ndim != 1:
            raise ConfigError("row ids must be a one-dimensional array")
        words = _prf_blocks(array, key)
        bucket = (words[:, 0] >> np.uint64(64 - BUCKET_BITS)).astype(np.uint16)
        if array.size and int(np.bincount(bucket).max()) > MAX_BUCKET_ROWS:
            raise ConfigError(
                f"too many rows for the differencing index (at most about "
                f"{MAX_BUCKET_ROWS * BUCKETS // 2} rows)"
            )
        tag = (words[:, 1] & np.uint64(_TAG_MASK)).astype(np.uint16)
        return cls(key.key_id, bucket, tag)

    @property
    def rows(self) -> int:
        return int(self._bucket.size)

    @property
    def arranged(self) -> bool:
        """True when rows are grouped by bucket, so ``cell`` takes its fast path."""
        return self._segments is not None

    @property
    def nbytes(self) -> int:
        return int(self._bucket.nbytes + self._tag.nbytes)

    def order(self) -> npt.NDArray[np.intp]:
        """The row permutation that arranges the index (and the frame) by bucket."""
        return np.argsort(self._bucket, kind="stable")

    def take(self, order: npt.ArrayLike) -> RowIndex:
        """The index of the frame reordered by ``order`` (``frame.iloc[order]``)."""
        positions = np.asarray(order)
        if positions.shape != (self.rows,) or positions.dtype.kind not in "iu":
            raise ConfigError("the order must be a permutation of the rows")
        return RowIndex(self.key_id, self._bucket[positions], self._tag[positions])

    def cell(self, mask: npt.ArrayLike) -> CellSketch:
        """The sketch of the rows where ``mask`` (in this index's row order) is true."""
        selected = np.asarray(mask)
        if selected.shape != (self.rows,) or selected.dtype != np.bool_:
            raise ConfigError(f"the cell mask must be {self.rows} booleans")
        if self._segments is None:
            return self.cells(selected.astype(np.int8) - 1, 1)[0]
        buckets, starts = self._segments
        packed = np.packbits(selected, bitorder="little")
        # One spare zero word, so that the bound at row n (n % 64 == 0) is in range.
        words = np.zeros((self.rows + 63) // 64 + 1, dtype=np.uint64)
        words.view(np.uint8)[: packed.size] = packed
        word, below, shared = self._bounds
        # Rows of a segment: the bits of the words from its first bound's word up
        # to its last's, less those below each bound in its word (no prefix sum).
        whole = np.add.reduceat(np.bitwise_count(words), word, dtype=np.int64)[:-1]
        part = np.bitwise_count(words[word] & below).astype(np.int64)
        counts = np.where(shared, 0, whole) - part[:-1] + part[1:]
        tags = np.empty(starts.size, dtype=np.uint16)
        flags = selected.view(np.uint8)  # uint16 x uint8 is numpy's fast loop
        scratch = np.empty(self._chunk_rows, np.uint16)
        # Chunks of whole buckets keep the weighted tags in cache instead of
        # writing and re-reading a temporary as large as the tag column.
        for first, last, lo, hi, local in self._chunks:
            weighted = np.multiply(
                self._tag[lo:hi], flags[lo:hi], out=scratch[: hi - lo]
            )
            tags[first:last] = np.add.reduceat(weighted, local, dtype=np.uint16)
        return self._sketch(buckets, counts, tags)

    def cells(self, labels: npt.ArrayLike, count: int) -> list[CellSketch]:
        """Sketches of ``count`` cells at once: row i belongs to cell ``labels[i]``,
        or to none when it is -1 (e.g. the bins of one histogram)."""
        cell_of = np.asarray(labels)
        if cell_of.shape != (self.rows,) or cell_of.dtype.kind not in "iu":
            raise ConfigError(f"the cell labels must be {self.rows} integers")
        if cell_of.size and (cell_of.min() < -1 or cell_of.max() >= count):
            raise ConfigError(f"cell labels must lie in -1..{count - 1}")
        per_chunk = max(1, _CHUNK_SLOTS // BUCKETS)
        every = np.arange(BUCKETS, dtype=np.intp)
        out: list[CellSketch] = []
        for low in range(0, count, per_chunk):
            high = min(count, low + per_chunk)
            chosen = (cell_of >= low) & (cell_of < high)
            slot = (cell_of[chosen].astype(np.int64) - low) * BUCKETS + self._bucket[
                chosen
            ]
            size = (high - low) * BUCKETS
            counts = np.bincount(slot, minlength=size)
            sums = np.bincount(slot, weights=self._tag[chosen], minlength=size)
            tags = sums.astype(np.uint64) & np.uint64(_TAG_MASK)
            for j in range(high - low):
                part = slice(j * BUCKETS, (j + 1) * BUCKETS)
                out.append(self._sketch(every, counts[part], tags[part]))
        return out

    def _sketch(
        self,
        buckets: npt.NDArray[np.intp],
        counts: npt.NDArray[Any],
        tags: npt.NDArray[Any],
    ) -> CellSketch:
        present = counts > 0
        bucket = buckets[present]
        count = counts[present].astype(np.int64)
        items: ItemArray = np.bitwise_or(
            (bucket.astype(np.uint64) << np.uint64(64 - BUCKET_BITS))
            | (count.astype(np.uint64) << np.uint64(TAG_BITS)),
            tags[present].astype(np.uint64),
            dtype=np.uint64,
        )
        groups = np.bincount(bucket % GROUPS, weights=count, minlength=GROUPS)
        return CellSketch(self.key_id, int(count.sum()), groups.astype(np.int64), items)
