"""The holder's OPRF-keyed table per dataset version: PIR records and verify tags.

Every OPRF input starts with a domain and the dataset's content hash, so outputs
are bound to one version even under the same key. For an OPRF output y the table
holds BLAKE2b tags (16 bytes) derived from y, and for PIR a record encrypted with
ChaCha20-Poly1305 under a key derived from y. Each derived key encrypts exactly one
plaintext, so the all-zero nonce is never reused. Plaintexts are padded to one size
so every ciphertext is as long as every other; entries are sorted by tag, so the
table's order says nothing of the rows'. What the table reveals to anyone holding
it: its size (records, fields, record size) and nothing else without the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cleanroom.errors import ConfigError, CryptoError, DatasetError, ProtocolError
from protocols.oprf.core import OprfKey, evaluate_direct
from protocols.psi.group import SERIAL, BatchRunner
from protocols.psi.normalize import ColumnRule, encode_field

TAG_BYTES: Final = 16
AEAD_BYTES: Final = 16
_NONCE: Final = bytes(12)
_MAGIC: Final = b"OPRFTBL1"
_HEADER_DOMAIN: Final = b"cleanroom/oprf/v1/table\x00"


def pir_input(content_hash: bytes, record_id: str) -> bytes:
    """The OPRF input that locates a record for PIR."""
    return b"pir\x00" + content_hash + encode_field(record_id)


def field_input(content_hash: bytes, record_id: str, name: str, value: str) -> bytes:
    """The OPRF input for one (id, field, value) check."""
    return (
        b"field\x00"
        + content_hash
        + b"".join(map(encode_field, (record_id, name, value)))
    )


def all_fields_input(
    content_hash: bytes, record_id: str, values: Sequence[tuple[str, str]]
) -> bytes:
    """The OPRF input for one all-fields check: every configured field at once."""
    body = b"".join(encode_field(n) + encode_field(v) for n, v in values)
    return b"all\x00" + content_hash + encode_field(record_id) + body


def derive_tag(output: bytes) -> bytes:
    """The public index of an OPRF output in the table."""
    return hashlib.blake2b(
        output, digest_size=TAG_BYTES, person=b"cr-oprf-tag"
    ).digest()


def derive_record_key(output: bytes) -> bytes:
    """The AEAD key of a PIR record."""
    return hashlib.blake2b(output, digest_size=32, person=b"cr-oprf-key").digest()


@dataclass(frozen=True)
class TableHeader:
    """What names and sizes a table; all of it is public."""

    dataset: str
    content_hash: bytes
    key_id: bytes
    id_column: str
    pir_fields: tuple[str, ...]
    verify_fields: tuple[str, ...]
    per_field: bool
    all_fields: bool
    records: int
    record_bytes: int
    rules: tuple[ColumnRule, ...] = ()
    """How the id and each verify field are normalised, on both sides: part of
    the version, so a buyer cannot silently normalise differently."""

    def normalise(self, name: str, value: str) -> str:
        """``value`` of column ``name`` under this table's rule for it."""
        for rule in self.rules:
            if rule.name == name:
                return rule.apply(value)
        raise ProtocolError(f"the table has no normalisation rule for {name!r}")

    def encode(self) -> bytes:
        """Canonical bytes (what the digest and the AEAD's associated data cover)."""
        parts = [_MAGIC, encode_field(self.dataset), self.content_hash, self.key_id]
        parts.append(encode_field(self.id_column))
        for names in (self.pir_fields, self.verify_fields):
            parts.append(len(names).to_bytes(2, "big"))
            parts += [encode_field(n) for n in names]
        parts.append(bytes([int(self.per_field) | int(self.all_fields) << 1]))
        parts.append(
            self.records.to_bytes(4, "big") + self.record_bytes.to_bytes(4, "big")
        )
        parts.append(len(self.rules).to_bytes(2, "big"))
        parts += [rule.describe() for rule in self.rules]
        return b"".join(parts)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the header: the version a cache and a job refer to."""
        return hashlib.sha256(_HEADER_DOMAIN + self.encode()).digest()


@dataclass(frozen=True)
class OprfTable:
    """A downloaded (or freshly built) table; look tags up, decrypt records."""

    header: TableHeader
    pir_tags: np.ndarray
    pir_ciphertexts: bytes
    field_tags: Mapping[str, np.ndarray] = field(default_factory=dict)
    all_tags: np.ndarray | None = None

    @property
    def ciphertext_bytes(self) -> int:
        """Size of every record ciphertext (plaintext padding plus the AEAD tag)."""
        return self.header.record_bytes + AEAD_BYTES

    def size_bytes(self) -> int:
        """What a buyer downloads: public, proportional to records x fields."""
        arrays = [self.pir_tags, *self.field_tags.values()]
        if self.all_tags is not None:
            arrays.append(self.all_tags)
        return (
            4
            + len(self.header.encode())
            + len(self.pir_ciphertexts)
            + sum(a.size * TAG_BYTES for a in arrays)
        )

    def has_tag(self, tags: np.ndarray, tag: bytes) -> bool:
        """Binary search in a sorted tag column."""
        return _find(tags, tag) is not None

    def has_tags(self, tags: np.ndarray, probes: Sequence[bytes]) -> list[bool]:
        """:meth:`has_tag` for each probe, as one vectorised binary search."""
        if not probes:
            return []
        wanted = np.array(probes, dtype=f"S{TAG_BYTES}")
        if tags.size == 0:
            return [False] * len(probes)
        found = np.searchsorted(tags, wanted)
        hit = tags[np.minimum(found, tags.size - 1)] == wanted
        return [bool(h) for h in hit & (found < tags.size)]

    def record(self, output: bytes) -> dict[str, str] | None:
        """Decrypt the PIR record for an OPRF output, or None if no record has it."""
        index = _find(self.pir_tags, derive_tag(output))
        if index is None:
            return None
        size = self.ciphertext_bytes
        sealed = self.pir_ciphertexts[index * size : (index + 1) * size]
        aad = self.header.digest + derive_tag(output)
        try:
            padded = ChaCha20Poly1305(derive_record_key(output)).decrypt(
                _NONCE, sealed, aad
            )
        except InvalidTag:
            raise CryptoError("a table record does not decrypt") from None
        return _decode_record(padded, self.header.pir_fields)


def _find(tags: np.ndarray, tag: bytes) -> int | None:
    probe = np.array([tag], dtype=f"S{TAG_BYTES}")
    i = int(np.searchsorted(tags, probe[0]))
    return i if i < tags.size and tags[i] == probe[0] else None


def _sorted_tags(outputs: Sequence[bytes]) -> np.ndarray:
    return np.sort(np.array([derive_tag(y) for y in outputs], dtype=f"S{TAG_BYTES}"))


def _encode_record(values: Sequence[str]) -> bytes:
    return b"".join(encode_field(v) for v in values)


def _decode_record(padded: bytes, names: Sequence[str]) -> dict[str, str]:
    body_len = int.from_bytes(padded[:2], "big")
    body, offset, out = padded[2 : 2 + body_len], 0, {}
    for name in names:
        size = int.from_bytes(body[offset : offset + 2], "big")
        out[name] = body[offset + 2 : offset + 2 + size].decode()
        offset += 2 + size
    if offset != body_len:
        raise CryptoError("a table record is malformed")
    return out


def build_table(
    key: OprfKey,
    *,
    dataset: str,
    content_hash: bytes,
    rows: Sequence[Mapping[str, str]],
    id_column: str,
    pir_fields: Sequence[str] = (),
    verify_fields: Sequence[str] = (),
    per_field: bool = True,
    all_fields: bool = False,
    rules: Mapping[str, ColumnRule] | None = None,
    runner: BatchRunner = SERIAL,
) -> OprfTable:
    """Holder: evaluate F_k on every record's inputs and lay out the table.

    ``pir_fields`` are the fields a lookup may return (the policy's permitted
    columns); ``verify_fields`` get per-field tags (unless ``per_field`` is False,
    where the policy allows only all-fields checks), and with ``all_fields`` one
    tag per record covers them all. Raises DatasetError for a blank or repeated id.
    """
    if len(content_hash) != 32:
        raise ConfigError("content_hash must be 32 bytes")
    if not pir_fields and not verify_fields:
        raise ConfigError("a table needs PIR fields, verify fields or both")
    if verify_fields and not (per_field or all_fields):
        raise ConfigError("verify fields need per-field tags, all-fields tags or both")
    given = dict(rules or {})
    columns = (id_column, *verify_fields)
    header = TableHeader(
        dataset,
        content_hash,
        key.key_id,
        id_column,
        tuple(pir_fields),
        tuple(verify_fields),
        per_field and bool(verify_fields),
        all_fields and bool(verify_fields),
        len(rows),
        0,
        tuple(given.get(c, ColumnRule(c)) for c in columns),
    )
    norm = header.normalise
    ids: list[str] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        record_id = norm(id_column, row[id_column])
        if not record_id or record_id in seen:
            raise DatasetError(f"row {index}: the id is blank or repeated")
        seen.add(record_id)
        ids.append(record_id)
    bodies = [_encode_record([row[f] for f in pir_fields]) for row in rows]
    record_bytes = 2 + max((len(b) for b in bodies), default=0) if pir_fields else 0
    header = dataclasses.replace(header, record_bytes=record_bytes)
    pir_tags = np.zeros(0, dtype=f"S{TAG_BYTES}")
    ciphertexts = b""
    if pir_fields:
        outputs = evaluate_direct(
            key, [pir_input(content_hash, i) for i in ids], runner
        )
        pir_tags, ciphertexts = _seal_records(header, outputs, bodies)
    field_tags = {}
    for name in verify_fields if header.per_field else ():
        inputs = [
            field_input(content_hash, i, name, norm(name, row[name]))
            for i, row in zip(ids, rows, strict=True)
        ]
        field_tags[name] = _sorted_tags(evaluate_direct(key, inputs, runner))
    all_tags = None
    if header.all_fields:
        inputs = [
            all_fields_input(
                content_hash,
                i,
                [(n, norm(n, row[n])) for n in verify_fields],
            )
            for i, row in zip(ids, rows, strict=True)
        ]
        all_tags = _sorted_tags(evaluate_direct(key, inputs, runner))
    return OprfTable(header, pir_tags, ciphertexts, field_tags, all_tags)


def _seal_records(
    header: TableHeader, outputs: Sequence[bytes], bodies: Sequence[bytes]
) -> tuple[np.ndarray, bytes]:
    tags = [derive_tag(y) for y in outputs]
    order = sorted(range(len(tags)), key=tags.__getitem__)
    digest, width = header.digest, header.record_bytes
    sealed = bytearray()
    for i in order:
        body = bodies[i]
        padded = len(body).to_bytes(2, "big") + body + bytes(width - 2 - len(body))
        aead = ChaCha20Poly1305(derive_record_key(outputs[i]))
        sealed += aead.encrypt(_NONCE, padded, digest + tags[i])
    return np.array([tags[i] for i in order], dtype=f"S{TAG_BYTES}"), bytes(sealed)


class TableCache:
    """The buyer's tables, one per dataset: a newer version replaces the older.

    A table rebuilt under a new key (or over changed content) has another header
    digest, so queries bound to the old one are refused by the holder, and
    :meth:`get` refuses to answer for any version but the cached one.
    """

    def __init__(self) -> None:
        self._tables: dict[str, OprfTable] = {}

    def put(self, table: OprfTable) -> None:
        """Cache ``table``, evicting any other version of the same dataset."""
        self._tables[table.header.dataset] = table

    def get(self, dataset: str, content_hash: bytes, key_id: bytes) -> OprfTable:
        """The cached table of exactly that version; ProtocolError otherwise."""
        table = self._tables.get(dataset)
        if table is None:
            raise ProtocolError(f"no table cached for dataset {dataset!r}")
        header = table.header
        if (header.content_hash, header.key_id) != (content_hash, key_id):
            raise ProtocolError(
                f"the cached table of {dataset!r} is another version; download it again"
            )
        return table
