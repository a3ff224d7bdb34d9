"""A table's download format: the header, then its columns at sizes the header fixes.

Decoding checks the total size against a cap and the header's own arithmetic before
it reads a column, so a truncated, padded or inflated download is refused.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from cleanroom.errors import ConfigError, ProtocolError
from protocols.oprf.table import _MAGIC, AEAD_BYTES, TAG_BYTES, OprfTable, TableHeader
from protocols.psi.normalize import ColumnRule

MAX_TABLE_BYTES: Final = 2**34


def encode_table(table: OprfTable) -> bytes:
    """Header length (u32), header, PIR tags, ciphertexts, field tags, all tags."""
    header = table.header.encode()
    parts = [len(header).to_bytes(4, "big"), header, table.pir_tags.tobytes()]
    parts.append(table.pir_ciphertexts)
    parts += [table.field_tags[n].tobytes() for n in table.field_tags]
    if table.all_tags is not None:
        parts.append(table.all_tags.tobytes())
    return b"".join(parts)


def decode_table(data: bytes, *, max_bytes: int = MAX_TABLE_BYTES) -> OprfTable:
    """Parse a download; ProtocolError for anything inconsistent."""
    if len(data) > max_bytes:
        raise ProtocolError(f"the table is over the {max_bytes}-byte cap")
    reader = _Reader(data)
    header = reader.header(reader.u32())
    n = header.records
    tags_len = n * TAG_BYTES
    sealed = n * (header.record_bytes + AEAD_BYTES) if header.pir_fields else 0
    per_field = header.verify_fields if header.per_field else ()
    columns = (1 if header.pir_fields else 0) + len(per_field) + int(header.all_fields)
    if reader.remaining != columns * tags_len + sealed:
        raise ProtocolError("the table's size does not match its header")
    dtype = f"S{TAG_BYTES}"
    pir_tags = np.frombuffer(reader.take(tags_len if header.pir_fields else 0), dtype)
    ciphertexts = reader.take(sealed)
    field_tags = {f: np.frombuffer(reader.take(tags_len), dtype) for f in per_field}
    all_tags = (
        np.frombuffer(reader.take(tags_len), dtype) if header.all_fields else None
    )
    for column in [pir_tags, *field_tags.values()] + (
        [] if all_tags is None else [all_tags]
    ):
        if column.size > 1 and not bool(np.all(column[:-1] <= column[1:])):
            raise ProtocolError("a table tag column is not sorted")
    return OprfTable(header, pir_tags, ciphertexts, field_tags, all_tags)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data, self._offset = data, 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise ProtocolError("the table is truncated")
        start, self._offset = self._offset, self._offset + n
        return self._data[start : self._offset]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def text(self) -> str:
        try:
            return self.take(self.u16()).decode()
        except UnicodeDecodeError:
            raise ProtocolError("a table name is not UTF-8") from None

    def header(self, size: int) -> TableHeader:
        end = self._offset + size
        if self.take(len(_MAGIC)) != _MAGIC:
            raise ProtocolError("not a cleanroom OPRF table")
        dataset = self.text()
        content_hash, key_id = self.take(32), self.take(32)
        id_column = self.text()
        pir = tuple(self.text() for _ in range(self.u16()))
        verify = tuple(self.text() for _ in range(self.u16()))
        flag = self.take(1)[0]
        records, record_bytes = self.u32(), self.u32()
        rules = tuple(self.rule() for _ in range(self.u16()))
        if flag > 3 or self._offset != end or (flag and not verify):
            raise ProtocolError("the table header is malformed")
        if [r.name for r in rules] != [id_column, *verify]:
            raise ProtocolError(
                "the table's normalisation rules do not match its columns"
            )
        if not pir and record_bytes:
            raise ProtocolError("a table without PIR fields has no records to pad")
        return TableHeader(
            dataset,
            content_hash,
            key_id,
            id_column,
            pir,
            verify,
            bool(flag & 1),
            bool(flag & 2),
            records,
            record_bytes,
            rules,
        )

    def rule(self) -> ColumnRule:
        name, flags = self.text(), self.text()
        if len(flags) < 4 or any(f not in "01" for f in flags[:3]):
            raise ProtocolError("a table normalisation rule is malformed")
        try:
            trim, casefold, nfc = (f == "1" for f in flags[:3])
            return ColumnRule(name, trim, casefold, nfc, flags[3:])  # type: ignore[arg-type]
        except ConfigError:
            raise ProtocolError("a table normalisation rule is malformed") from None
