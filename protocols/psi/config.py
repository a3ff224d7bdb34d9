"""PSI job parameters: parties, output mode and receivers, key columns, size caps."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Final, Literal

from cleanroom.errors import ConfigError
from protocols.party import COORDINATOR
from protocols.psi.normalize import ColumnRule, encode_field

OutputMode = Literal["intersection", "cardinality", "aligned"]
MAX_PARTIES: Final = 16
MAX_ITEMS_LIMIT: Final = 2**28
DEFAULT_MAX_ITEMS: Final = 2**24
DEFAULT_CHUNK_ITEMS: Final = 2**15
"""32,768 elements: 1 MiB of points per message, well under any relay's limit."""
_DIGEST_DOMAIN: Final = b"cleanroom/psi/v2/config\x00"


@dataclass(frozen=True)
class PsiConfig:
    """Validated parameters every party of one PSI run must share.

    ``receivers`` are the parties that get an output; in ``aligned`` mode every
    party is one. ``max_items`` caps each party's distinct keys: a party refuses
    its own larger set before any work and a peer's declared larger set before
    decoding it. Build with :meth:`create`.
    """

    session_id: str
    parties: tuple[str, ...]
    output: OutputMode
    receivers: tuple[str, ...]
    columns: tuple[ColumnRule, ...]
    max_items: int = DEFAULT_MAX_ITEMS
    chunk_items: int = DEFAULT_CHUNK_ITEMS

    @classmethod
    def create(
        cls,
        *,
        session_id: str,
        parties: Iterable[str],
        output: OutputMode,
        receivers: Iterable[str] | None = None,
        columns: Iterable[ColumnRule] = (ColumnRule("key"),),
        max_items: int = DEFAULT_MAX_ITEMS,
        chunk_items: int = DEFAULT_CHUNK_ITEMS,
    ) -> PsiConfig:
        """Sort parties and receivers; receivers default to every party."""
        names = list(parties)
        if len(set(names)) != len(names):
            raise ConfigError("party names must be unique")
        chosen = names if receivers is None else list(receivers)
        if len(set(chosen)) != len(chosen):
            raise ConfigError("receivers must be unique")
        return cls(
            session_id=session_id,
            parties=tuple(sorted(names)),
            output=output,
            receivers=tuple(sorted(chosen)),
            columns=tuple(columns),
            max_items=max_items,
            chunk_items=chunk_items,
        )

    def __post_init__(self) -> None:
        if (
            not isinstance(self.session_id, str)
            or not 0 < len(self.session_id.encode()) <= 255
        ):
            raise ConfigError("session_id must be a string of 1..255 bytes")
        if not isinstance(self.parties, tuple) or list(self.parties) != sorted(
            set(self.parties)
        ):
            raise ConfigError("parties must be a sorted tuple of unique names")
        if not 2 <= len(self.parties) <= MAX_PARTIES:
            raise ConfigError(f"PSI needs 2..{MAX_PARTIES} parties")
        for name in self.parties:
            if not isinstance(name, str) or not 0 < len(name.encode()) <= 255:
                raise ConfigError("party names must be strings of 1..255 bytes")
            if name == COORDINATOR:
                raise ConfigError(f"{COORDINATOR!r} names the coordinator, not a party")
        if self.output not in ("intersection", "cardinality", "aligned"):
            raise ConfigError(f"unknown PSI output mode {self.output!r}")
        if not self.receivers or not set(self.receivers) <= set(self.parties):
            raise ConfigError("receivers must be a non-empty subset of the parties")
        if self.output == "aligned" and self.receivers != self.parties:
            raise ConfigError("aligned output goes to every party")
        if not self.columns or not all(isinstance(c, ColumnRule) for c in self.columns):
            raise ConfigError("at least one key column rule is required")
        if len({c.name for c in self.columns}) != len(self.columns):
            raise ConfigError("key column names must be unique")
        _check_int("max_items", self.max_items, 1, MAX_ITEMS_LIMIT)
        _check_int("chunk_items", self.chunk_items, 1, 2**20)

    @property
    def n(self) -> int:
        """Number of parties."""
        return len(self.parties)

    def index(self, party: str) -> int:
        """The party's position in the sorted party list (its ring position)."""
        return self.parties.index(party)

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of every parameter; bound into every payload and every hash."""
        h = hashlib.sha256(_DIGEST_DOMAIN)
        h.update(encode_field(self.session_id) + encode_field(self.output))
        for group in (self.parties, self.receivers):
            h.update(len(group).to_bytes(2, "big"))
            for name in group:
                h.update(encode_field(name))
        h.update(len(self.columns).to_bytes(2, "big"))
        for column in self.columns:
            h.update(column.describe())
        h.update(
            self.max_items.to_bytes(8, "big") + self.chunk_items.to_bytes(8, "big")
        )
        return h.digest()


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise ConfigError(f"{name} must be an int in {low}..{high}")
