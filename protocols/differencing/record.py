"""A node's record of the cells it released on one dataset to one analyst (or one
organisation), and the check that refuses a new cell too close to an earlier one.

A new cell is refused when its row set differs from a recorded cell's, or from an
earlier cell of the same batch, by 1..k-1 rows. Three filters run in turn, each a
lower bound on the difference d, so a pair stops at the first that proves d >= k:
the row counts (|n_a - n_b|), the 64 coarse group counts (sum of |g_a - g_b|), and
the tables (decode; sum over the differing buckets of |c_a - c_b|, or 2 where the
counts agree). A table that does not decode means a large difference and allows.

Size is bounded: a record holds at most ``capacity`` cells; when a release would
exceed it the node refuses the job (QuotaExceeded) and keeps every recorded cell.
Evicting the oldest (or least recently used) cell instead would let an analyst
flush a cell out and then release its neighbour, which is exactly differencing.
Identical row sets are allowed and not stored twice.

Bytes: ``to_bytes`` writes a versioned header (key id, scope, shape, capacity),
the arrays little-endian, and an HMAC-SHA256 under a key derived from the dataset
secret; ``from_bytes`` checks sizes, then the key id and MAC, then the scope.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError, CryptoError, ProtocolError, QuotaExceeded
from protocols.differencing.geometry import MAX_GROUP_SIZE, Geometry, geometry_for
from protocols.differencing.rows import GROUPS, CellSketch, DifferencingKey
from protocols.differencing.table import TableCodec, Tables

MAGIC: Final = b"CRDREC01"
MAX_CAPACITY: Final = 1_000_000
_HEADER: Final = struct.Struct("<8s16sHHHIIH")
_MAC_BYTES: Final = 32
_MAX_SCOPE_BYTES: Final = 1024
COARSE: Final = 8
"""Folded groups compared first (in memory only; stored records keep GROUPS)."""


class _Cells:
    """Recorded cells as growable arrays: rows, coarse groups, one table each."""

    def __init__(self, geometry: Geometry) -> None:
        m = geometry.cells
        self.size = 0
        self.rows = np.zeros(0, dtype=np.int64)
        self.groups = np.zeros((0, GROUPS), dtype=np.int32)
        self.coarse = np.zeros((0, COARSE), dtype=np.int32)
        self.tables = Tables(
            np.zeros((0, m), dtype=np.int16),
            np.zeros((0, m), dtype=np.uint64),
            np.zeros((0, m), dtype=np.uint64),
        )

    def append(self, sketch: CellSketch, tables: Tables, index: int) -> None:
        if self.size == self.rows.size:
            grow = max(8, 2 * self.size)
            self.rows = np.resize(self.rows, grow)
            self.groups = np.resize(self.groups, (grow, GROUPS))
            self.coarse = np.resize(self.coarse, (grow, COARSE))
            m = self.tables.count.shape[1]
            self.tables = Tables(
                np.resize(self.tables.count, (grow, m)),
                np.resize(self.tables.words, (grow, m)),
                np.resize(self.tables.checks, (grow, m)),
            )
        self.rows[self.size] = sketch.rows
        self.groups[self.size] = sketch.groups
        self.coarse[self.size] = _coarse(sketch.groups)
        for mine, theirs in zip(_arrays(self.tables), _arrays(tables), strict=True):
            mine[self.size] = theirs[index]
        self.size += 1

    def extend(self, other: _Cells) -> None:
        """Append every cell ``other`` holds (its arrays are at their size)."""
        n = self.size
        self.rows = np.concatenate([self.rows[:n], other.rows[: other.size]])
        self.groups = np.concatenate([self.groups[:n], other.groups[: other.size]])
        self.coarse = np.concatenate([self.coarse[:n], other.coarse[: other.size]])
        self.tables = Tables(
            *(
                np.concatenate([mine[:n], theirs[: other.size]])
                for mine, theirs in zip(
                    _arrays(self.tables), _arrays(other.tables), strict=True
                )
            )
        )
        self.size = n + other.size

    def close(
        self,
        codec: TableCodec,
        sketch: CellSketch,
        tables: Tables,
        index: int,
        k: int,
    ) -> tuple[bool, bool]:
        """(some cell is 1..k-1 rows away, some cell has the same rows)."""
        near = np.flatnonzero(np.abs(self.rows[: self.size] - sketch.rows) < k)
        # Each bound is exact (a row apart moves one group count by one), and
        # each level reads a fraction of the next: 8, then 64 groups.
        if near.size:
            apart = np.abs(self.coarse[near] - _coarse(sketch.groups)).sum(axis=1)
            near = near[apart < k]
        if near.size:
            apart = np.abs(self.groups[near] - sketch.groups).sum(axis=1)
            near = near[apart < k]
        if near.size == 0:
            return False, False
        t = self.tables
        old = Tables(t.count[near], t.words[near], t.checks[near])
        decoded = codec.rows_apart(tables, index, old)
        rows = decoded.rows_apart
        conflict = decoded.complete & (rows >= 1) & (rows < k)
        same = decoded.complete & (rows == 0)
        return bool(conflict.any()), bool(same.any())


def _coarse(groups: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.int32]:
    """Group counts folded to COARSE groups (group mod COARSE): a lower bound on
    the rows apart that is cheaper to compare than the full groups."""
    folded = groups.reshape(*groups.shape[:-1], GROUPS // COARSE, COARSE)
    out: npt.NDArray[np.int32] = folded.sum(axis=-2, dtype=np.int32)
    return out


def _transpose(bodies: Sequence[bytes], geometry: Geometry) -> list[bytes]:
    """Per-cell bodies (rows, groups, count, words, checks) as ``_load``'s layout:
    every cell's rows, then every cell's groups, and so on."""
    m = geometry.cells
    widths = (8, 4 * GROUPS, 2 * m, 8 * m, 8 * m)
    out = []
    start = 0
    for width in widths:
        out.append(b"".join(body[start : start + width] for body in bodies))
        start += width
    return out


def _arrays(tables: Tables) -> tuple[npt.NDArray[np.generic], ...]:
    return (tables.count, tables.words, tables.checks)


class ReleaseRecord:
    """The cells released on one dataset to one ``scope`` (an analyst, an
    organisation: the node chooses), for group sizes up to ``group_size``."""

    def __init__(
        self, key: DifferencingKey, scope: str, *, group_size: int, capacity: int
    ) -> None:
        if (
            not isinstance(scope, str)
            or not 0 < len(scope.encode()) <= _MAX_SCOPE_BYTES
        ):
            raise ConfigError(
                f"a record scope is a non-empty string of <= {_MAX_SCOPE_BYTES} bytes"
            )
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise ConfigError(f"the capacity must be an int, got {capacity!r}")
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ConfigError(f"the capacity must be in 1..{MAX_CAPACITY}")
        self._key = key
        self.scope: Final = scope
        self.capacity: Final = capacity
        self.geometry: Final = geometry_for(group_size)
        self.codec: Final = TableCodec(key, self.geometry)
        self._cells = _Cells(self.geometry)

    @property
    def key_id(self) -> bytes:
        return self._key.key_id

    @property
    def group_size(self) -> int:
        return self.geometry.group_size

    def __len__(self) -> int:
        return self._cells.size

    def __repr__(self) -> str:
        return f"ReleaseRecord({self.scope!r}, {len(self)}/{self.capacity} cells)"

    @staticmethod
    def bytes_per_cell(geometry: Geometry) -> int:
        """Serialised bytes per recorded cell (in memory, 4 x COARSE more)."""
        return 8 + 4 * GROUPS + geometry.cells * (2 + 8 + 8)

    def max_bytes(self) -> int:
        """The most ``to_bytes`` can ever write for this record."""
        return self._fixed_bytes() + self.capacity * self.bytes_per_cell(self.geometry)

    def to_bytes(self) -> bytes:
        cells, n = self._cells, self._cells.size
        scope = self.scope.encode()
        header = _HEADER.pack(
            MAGIC,
            self.key_id,
            self.geometry.group_size,
            self.geometry.hashes,
            self.geometry.width,
            self.capacity,
            n,
            len(scope),
        )
        parts: tuple[npt.NDArray[Any], ...] = (
            cells.rows,
            cells.groups,
            *_arrays(cells.tables),
        )
        body = b"".join(
            np.ascontiguousarray(a[:n]).astype(a.dtype.newbyteorder("<")).tobytes()
            for a in parts
        )
        content = header + scope + body
        return content + self._mac(content)

    @classmethod
    def from_bytes(cls, data: bytes, key: DifferencingKey, scope: str) -> ReleaseRecord:
        """Load a record written by ``to_bytes`` for ``scope`` under ``key``."""
        if not isinstance(data, bytes) or len(data) < _HEADER.size + _MAC_BYTES:
            raise ProtocolError("a differencing record is too short")
        magic, key_id, group_size, hashes, width, capacity, size, scope_bytes = (
            _HEADER.unpack_from(data)
        )
        if magic != MAGIC:
            raise ProtocolError("not a differencing record (or an unknown version)")
        if scope_bytes > _MAX_SCOPE_BYTES or not 1 <= capacity <= MAX_CAPACITY:
            raise ProtocolError("a differencing record has an invalid header")
        if not 2 <= group_size <= MAX_GROUP_SIZE or size > capacity:
            raise ProtocolError("a differencing record has an invalid header")
        geometry = geometry_for(group_size)
        if (geometry.hashes, geometry.width) != (hashes, width):
            raise ProtocolError("a differencing record has an unexpected table shape")
        start = _HEADER.size + scope_bytes
        expected = start + size * cls.bytes_per_cell(geometry) + _MAC_BYTES
        if len(data) != expected:
            raise ProtocolError(
                f"a differencing record of {size} cells is {expected} bytes, "
                f"got {len(data)}"
            )
        if key_id != key.key_id:
            raise ConfigError("the differencing record was written under another key")
        record = cls(key, scope, group_size=group_size, capacity=capacity)
        if not hmac.compare_digest(record._mac(data[:-_MAC_BYTES]), data[-_MAC_BYTES:]):
            raise CryptoError("the differencing record does not verify")
        if data[_HEADER.size : start] != scope.encode():
            raise ConfigError("the differencing record belongs to another scope")
        record._load(data[start:-_MAC_BYTES], size)
        return record

    def cell_bytes(self, start: int = 0) -> list[bytes]:
        """Each recorded cell from ``start`` on as bytes of its own, MACed with the
        record's scope and its position: a store appends only the new ones."""
        if not 0 <= start <= len(self):
            raise ConfigError(f"the record holds {len(self)} cells, not {start}")
        cells, out = self._cells, []
        for i in range(start, cells.size):
            parts: tuple[npt.NDArray[Any], ...] = (
                cells.rows[i : i + 1],
                cells.groups[i],
                *(a[i] for a in _arrays(cells.tables)),
            )
            body = b"".join(
                a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in parts
            )
            out.append(body + self._cell_mac(i, body))
        return out

    def append_cell_bytes(self, blobs: Sequence[bytes]) -> None:
        """Load cells written by ``cell_bytes``, in order, after those held."""
        size = self.bytes_per_cell(self.geometry)
        if len(self) + len(blobs) > self.capacity:
            raise ProtocolError("more recorded cells than the record's capacity")
        bodies = []
        for offset, blob in enumerate(blobs):
            if not isinstance(blob, bytes) or len(blob) != size + _MAC_BYTES:
                raise ProtocolError(f"a recorded cell is {size + _MAC_BYTES} bytes")
            body, mac = blob[:size], blob[size:]
            if not hmac.compare_digest(self._cell_mac(len(self) + offset, body), mac):
                raise CryptoError("a recorded differencing cell does not verify")
            bodies.append(body)
        if not bodies:
            return
        loaded = ReleaseRecord(
            self._key, self.scope, group_size=self.group_size, capacity=self.capacity
        )
        loaded._load(b"".join(_transpose(bodies, self.geometry)), len(bodies))
        self._cells.extend(loaded._cells)

    def _cell_mac(self, index: int, body: bytes) -> bytes:
        label = self.scope.encode() + struct.pack("<I", index)
        return hmac.new(
            self._key.derive("record-cell-mac"), label + body, hashlib.sha256
        ).digest()

    def _load(self, body: bytes, size: int) -> None:
        m = self.geometry.cells
        specs: list[tuple[str, tuple[int, ...]]] = [
            ("<i8", (size,)),
            ("<i4", (size, GROUPS)),
            ("<i2", (size, m)),
            ("<u8", (size, m)),
            ("<u8", (size, m)),
        ]
        arrays: list[npt.NDArray[Any]] = []
        offset = 0
        for dtype, shape in specs:
            count = int(np.prod(shape))
            arrays.append(
                np.frombuffer(body, dtype=dtype, count=count, offset=offset)
                .reshape(shape)
                .astype(np.dtype(dtype).newbyteorder("="))
            )
            offset += count * np.dtype(dtype).itemsize
        cells = self._cells
        cells.rows, cells.groups = arrays[0], arrays[1]
        cells.coarse = _coarse(arrays[1])
        cells.tables = Tables(arrays[2], arrays[3], arrays[4])
        cells.size = size

    def _fixed_bytes(self) -> int:
        return _HEADER.size + len(self.scope.encode()) + _MAC_BYTES

    def _mac(self, content: bytes) -> bytes:
        return hmac.new(
            self._key.derive("record-mac"), content, hashlib.sha256
        ).digest()


def screen(
    cells: Sequence[CellSketch],
    records: Sequence[ReleaseRecord],
    *,
    min_group_size: int,
) -> list[bool]:
    """Which ``cells`` may be released: each is checked against every record and
    against every earlier cell of ``cells``. Nothing is recorded."""
    return _screen(cells, records, min_group_size)[0]


def admit(
    cells: Sequence[CellSketch],
    records: Sequence[ReleaseRecord],
    *,
    min_group_size: int,
) -> list[bool]:
    """``screen``, then record every allowed cell in every record, all or nothing:
    QuotaExceeded (and nothing recorded) when some record lacks room."""
    allowed, fresh, tables = _screen(cells, records, min_group_size)
    for record, new in zip(records, fresh, strict=True):
        if len(record) + len(new) > record.capacity:
            raise QuotaExceeded(
                [
                    f"the differencing record of {record.scope} is full "
                    f"({record.capacity} cells): the holder must raise its capacity"
                ]
            )
    for record, new in zip(records, fresh, strict=True):
        table = tables[record.geometry]
        for i in new:
            record._cells.append(cells[i], table, i)
    return allowed


def _screen(
    cells: Sequence[CellSketch],
    records: Sequence[ReleaseRecord],
    k: int,
) -> tuple[list[bool], list[list[int]], dict[Geometry, Tables]]:
    """(allowed per cell, per record the allowed cells it does not hold yet, the
    cells' tables per table shape)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"the minimum group size must be a positive int, got {k!r}")
    for record in records:
        if k > record.group_size:
            raise ConfigError(
                f"the record of {record.scope} was sized for groups up to "
                f"{record.group_size}, not {k}"
            )
        if any(c.key_id != record.key_id for c in cells):
            raise ConfigError("a cell was hashed under another dataset key")
    codecs = {r.geometry: r.codec for r in records}
    tables = {g: codec.build([c.items for c in cells]) for g, codec in codecs.items()}
    fresh: list[list[int]] = [[] for _ in records]
    allowed: list[bool] = []
    # Cells of one batch are checked against each other with the first record's
    # tables; with no record the node keeps no history and everything passes.
    batch = _Cells(records[0].geometry) if records and len(cells) > 1 else None
    for i, cell in enumerate(cells):
        if not records or k == 1:  # no difference lies in 1..k-1 = 1..0
            allowed.append(True)
            for new in fresh:
                new.append(i)
            continue
        first = records[0]
        conflict, repeat = False, False
        if batch is not None:
            conflict, repeat = batch.close(
                first.codec, cell, tables[first.geometry], i, k
            )
        held: list[bool] = []
        for record in records:
            near, same = record._cells.close(
                record.codec, cell, tables[record.geometry], i, k
            )
            conflict |= near
            held.append(same)
        allowed.append(not conflict)
        if not conflict and not repeat:
            for new, same in zip(fresh, held, strict=True):
                if not same:
                    new.append(i)
        if batch is not None:
            batch.append(cell, tables[first.geometry], i)
    return allowed, fresh, tables
