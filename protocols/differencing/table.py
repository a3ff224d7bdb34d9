"""Invertible Bloom lookup tables of cell items: built for many cells at once,
subtracted pairwise, and peeled for many pairs at once, all vectorised.

A table cell holds the number of items in it (int16), the sum of their 64-bit item
words and the sum of their 64-bit checksums (both mod 2^64). An item's cell in each
sub-table and its checksum come from AES-256 (keyed with the dataset secret) applied
to the item, so positions are pseudorandom and independent across sub-tables: the
assumption ``geometry`` bounds the decoding failure under. After subtracting two
tables a cell is *pure* when it holds exactly one item of sign s: its count is s, and
s times its word sum has checksum s times its checksum sum and lands in that cell. A
mixed cell passes that test with probability about 2^-64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols.differencing.geometry import Geometry
from protocols.differencing.rows import (
    BUCKET_BITS,
    COUNT_BITS,
    TAG_BITS,
    DifferencingKey,
    ItemArray,
)

_PAIRS_PER_PEEL = 4096
"""Pairs peeled together: bounds the temporary arrays to a few MB."""


@dataclass(frozen=True)
class Tables:
    """One table per row: ``count`` (n, cells) int16; ``words``, ``checks`` uint64."""

    count: npt.NDArray[np.int16]
    words: npt.NDArray[np.uint64]
    checks: npt.NDArray[np.uint64]


@dataclass(frozen=True)
class Decoded:
    """For each peeled pair: whether it decoded, and a lower bound on how many rows
    its two cells differ by (meaningful only where it decoded)."""

    complete: npt.NDArray[np.bool_]
    rows_apart: npt.NDArray[np.int64]


class TableCodec:
    """Builds and peels tables of one geometry under one dataset key."""

    def __init__(self, key: DifferencingKey, geometry: Geometry) -> None:
        self.geometry = geometry
        self._cipher = Cipher(
            algorithms.AES(key.derive("table-positions")),
            modes.ECB(),  # noqa: S305 - a PRF on distinct single blocks, see locate
        )
        # 32-bit words per item: two for the checksum, then one per sub-table.
        self._blocks = (geometry.hashes + 2 + 3) // 4
        self._counters = np.arange(self._blocks, dtype=np.uint64)
        self._scale = geometry.width / 2.0**32
        self._offsets = np.arange(geometry.hashes, dtype=np.intp) * geometry.width

    def locate(
        self, items: ItemArray
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint64]]:
        """Each item's cell in every sub-table (n, hashes), and its checksum.

        AES encrypts the blocks (item, j) for j = 0, 1, ...: distinct single blocks,
        so ECB is AES used as a PRF. The first 64 output bits are the checksum; sub-
        table j takes the next 32-bit word j and maps it to a cell by
        ``word * width / 2^32`` (exact in floats): uniform within 1 + 2^-26.
        """
        blocks = np.empty((items.size, self._blocks, 2), dtype="<u8")
        blocks[:, :, 0] = items[:, None]
        blocks[:, :, 1] = self._counters
        encryptor = self._cipher.encryptor()
        raw = encryptor.update(blocks.tobytes()) + encryptor.finalize()
        checksum = np.frombuffer(raw, dtype="<u8")[:: 2 * self._blocks].astype(
            np.uint64
        )
        words = np.frombuffer(raw, dtype="<u4").reshape(items.size, -1)
        cells = (words[:, 2 : 2 + self.geometry.hashes] * self._scale).astype(np.intp)
        return cells + self._offsets, checksum

    def build(self, cells: Sequence[ItemArray]) -> Tables:
        """The tables of ``cells`` (each an array of distinct items)."""
        m = self.geometry.cells
        words = np.zeros((len(cells), m), dtype=np.uint64)
        checks = np.zeros((len(cells), m), dtype=np.uint64)
        if not cells:
            return Tables(np.zeros((0, m), dtype=np.int16), words, checks)
        if len(cells) == 1:
            items = np.asarray(cells[0], dtype=np.uint64)
            positions, check = self.locate(items)
        else:
            items = np.concatenate([np.asarray(c, dtype=np.uint64) for c in cells])
            owner = np.repeat(np.arange(len(cells)), [len(c) for c in cells])
            positions, check = self.locate(items)
            positions += owner[:, None] * m
        flat = positions.ravel()
        hashes = self.geometry.hashes
        count = np.bincount(flat, minlength=words.size)
        # ufunc.at takes its fast path only for matching 1-d operands.
        np.add.at(words.ravel(), flat, np.repeat(items, hashes))
        np.add.at(checks.ravel(), flat, np.repeat(check, hashes))
        return Tables(count.astype(np.int16).reshape(words.shape), words, checks)

    def rows_apart(self, new: Tables, index: int, old: Tables) -> Decoded:
        """Peel ``new[index] - old[j]`` for every row j of ``old``."""
        complete: list[npt.NDArray[np.bool_]] = []
        apart: list[npt.NDArray[np.int64]] = []
        for start in range(0, old.count.shape[0], _PAIRS_PER_PEEL):
            part = slice(start, start + _PAIRS_PER_PEEL)
            result = self._peel(
                new.count[index].astype(np.int64) - old.count[part],
                new.words[index] - old.words[part],
                new.checks[index] - old.checks[part],
            )
            complete.append(result.complete)
            apart.append(result.rows_apart)
        if not complete:
            return Decoded(np.zeros(0, dtype=np.bool_), np.zeros(0, dtype=np.int64))
        return Decoded(np.concatenate(complete), np.concatenate(apart))

    def _peel(
        self,
        count: npt.NDArray[np.int64],
        words: npt.NDArray[np.uint64],
        checks: npt.NDArray[np.uint64],
    ) -> Decoded:
        pairs, m = count.shape
        width, hashes = self.geometry.width, self.geometry.hashes
        found_pair: list[npt.NDArray[np.intp]] = []
        found_item: list[npt.NDArray[np.uint64]] = []
        found_sign: list[npt.NDArray[np.int64]] = []
        zero = np.uint64(0)
        # A difference that decodes needs one round per item at most; one with more
        # than 4 m items is far beyond k - 1 buckets, so stopping early only says
        # "large" a little sooner.
        for _ in range(4 * m):
            pair, cell = np.nonzero(np.abs(count) == 1)
            if pair.size == 0:
                break
            sign = count[pair, cell]
            negative = sign < 0
            item = np.where(negative, zero - words[pair, cell], words[pair, cell])
            claimed = np.where(negative, zero - checks[pair, cell], checks[pair, cell])
            positions, check = self.locate(item)
            own = positions[np.arange(item.size), cell // width] == cell
            pure = (check == claimed) & own
            if not pure.any():
                break
            pair, item, sign = pair[pure], item[pure], sign[pure]
            positions, check = positions[pure], check[pure]
            # One item can be pure in several cells at once: peel it once.
            order = np.lexsort((item, pair))
            pair, item, sign = pair[order], item[order], sign[order]
            positions, check = positions[order], check[order]
            first = np.ones(pair.size, dtype=np.bool_)
            first[1:] = (pair[1:] != pair[:-1]) | (item[1:] != item[:-1])
            pair, item, sign = pair[first], item[first], sign[first]
            positions, check = positions[first], check[first]
            found_pair.append(pair)
            found_item.append(item)
            found_sign.append(sign)
            flat = (pair[:, None] * m + positions).ravel()
            back = sign < 0
            np.add.at(count.ravel(), flat, np.repeat(-sign, hashes))
            np.add.at(
                words.ravel(),
                flat,
                np.repeat(np.where(back, item, zero - item), hashes),
            )
            np.add.at(
                checks.ravel(),
                flat,
                np.repeat(np.where(back, check, zero - check), hashes),
            )
        complete = (
            (count == 0).all(axis=1)
            & (words == 0).all(axis=1)
            & (checks == 0).all(axis=1)
        )
        return Decoded(complete, _rows_apart(pairs, found_pair, found_item, found_sign))


def _rows_apart(
    pairs: int,
    found_pair: list[npt.NDArray[np.intp]],
    found_item: list[npt.NDArray[np.uint64]],
    found_sign: list[npt.NDArray[np.int64]],
) -> npt.NDArray[np.int64]:
    """Per pair, sum over differing buckets of a lower bound on the rows that differ
    there: |c_new - c_old| when the counts differ, else 2 (same count, other rows)."""
    out = np.zeros(pairs, dtype=np.int64)
    if not found_pair:
        return out
    pair = np.concatenate(found_pair).astype(np.int64)
    item = np.concatenate(found_item)
    sign = np.concatenate(found_sign)
    bucket = (item >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)
    rows = ((item >> np.uint64(TAG_BITS)) & np.uint64((1 << COUNT_BITS) - 1)).astype(
        np.int64
    )
    group = pair * (1 << BUCKET_BITS) + bucket
    order = np.argsort(group, kind="stable")
    group, signed = group[order], (sign * rows)[order]
    starts = np.flatnonzero(np.diff(group, prepend=-1))
    net = np.abs(np.add.reduceat(signed, starts))
    bound = np.where(net > 0, net, 2)
    np.add.at(out, group[starts] >> BUCKET_BITS, bound)
    return out
