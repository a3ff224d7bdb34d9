"""Key normalisation: trim, case folding, Unicode NFC per column; blanks; duplicates."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cleanroom.errors import ConfigError, DatasetError

BlankPolicy = Literal["refuse", "drop"]
MAX_KEY_BYTES: Final = 4096
"""A normalised key column longer than this is refused (it is hashed, never sent)."""


@dataclass(frozen=True)
class ColumnRule:
    """How one key column is normalised before hashing.

    ``nfc`` applies Unicode NFC (again after case folding, which can denormalise);
    ``casefold`` is full Unicode case folding (``"Straße"`` matches ``"STRASSE"``);
    ``trim`` strips leading and trailing Unicode whitespace. A value that is empty
    after normalisation is refused or its row dropped, as ``blank`` says.
    """

    name: str
    trim: bool = True
    casefold: bool = True
    nfc: bool = True
    blank: BlankPolicy = "refuse"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name.encode()) <= 255:
            raise ConfigError("a key column needs a name of 1..255 bytes")
        for flag in (self.trim, self.casefold, self.nfc):
            if not isinstance(flag, bool):
                raise ConfigError(f"key column {self.name!r}: flags must be booleans")
        if self.blank not in ("refuse", "drop"):
            raise ConfigError(f"key column {self.name!r}: blank must be refuse or drop")

    def apply(self, value: str) -> str:
        """The normalised value (may be empty)."""
        if self.nfc:
            value = unicodedata.normalize("NFC", value)
        if self.trim:
            value = value.strip()
        if self.casefold:
            value = value.casefold()
            if self.nfc:
                value = unicodedata.normalize("NFC", value)
        return value

    def describe(self) -> bytes:
        """The rule as bytes for the configuration digest."""
        flags = f"{int(self.trim)}{int(self.casefold)}{int(self.nfc)}{self.blank}"
        return encode_field(self.name) + encode_field(flags)


def encode_field(value: str) -> bytes:
    """u16 length then UTF-8: unambiguous concatenation of columns."""
    raw = value.encode()
    return len(raw).to_bytes(2, "big") + raw


@dataclass(frozen=True)
class NormalizedKeys:
    """A party's distinct normalised keys, in first-occurrence order.

    ``rows[i]`` is the input row where ``encoded[i]`` first appeared. ``duplicates``
    and ``dropped`` are counts for the owner only: they are never sent.
    """

    encoded: tuple[bytes, ...]
    rows: tuple[int, ...]
    duplicates: int
    dropped: int

    def __len__(self) -> int:
        return len(self.encoded)


def normalize_keys(
    rows: Iterable[str | Sequence[str]], columns: Sequence[ColumnRule]
) -> NormalizedKeys:
    """Normalise each row's key columns, drop or refuse blanks, remove duplicates.

    Raises DatasetError (naming the row and column, never the value) for a blank
    value under ``refuse``, a non-string value, a wrong column count or an
    over-long key.
    """
    first: dict[bytes, int] = {}
    duplicates = dropped = 0
    width = len(columns)
    for index, row in enumerate(rows):
        values = (row,) if isinstance(row, str) else tuple(row)
        if len(values) != width:
            raise DatasetError(
                f"row {index} has {len(values)} key columns, not {width}"
            )
        parts = []
        blank = False
        for rule, value in zip(columns, values, strict=True):
            if not isinstance(value, str):
                raise DatasetError(f"row {index}, column {rule.name!r}: not a string")
            normal = rule.apply(value)
            if not normal:
                if rule.blank == "refuse":
                    raise DatasetError(
                        f"row {index}, column {rule.name!r}: the key is blank"
                    )
                blank = True
            parts.append(encode_field(normal))
        if blank:
            dropped += 1
            continue
        key = b"".join(parts)
        if len(key) > MAX_KEY_BYTES:
            raise DatasetError(f"row {index}: the key is over {MAX_KEY_BYTES} bytes")
        if key in first:
            duplicates += 1
        else:
            first[key] = index
    return NormalizedKeys(tuple(first), tuple(first.values()), duplicates, dropped)
