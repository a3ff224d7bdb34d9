"""What both PSI party kinds share: inputs, keys, tags, chunk intake and the output."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.party import SYSTEM_RANDOM, Inbound, NodeParty, Outbound, RandomSource
from protocols.psi import _sodium
from protocols.psi.config import OutputMode, PsiConfig
from protocols.psi.group import SERIAL, BatchRunner, psi_scalar, random_permutation
from protocols.psi.messages import Chunk, ChunkStream, decode_chunk
from protocols.psi.normalize import NormalizedKeys, normalize_keys

TAG_BYTES: Final = 16
HASH_DOMAIN: Final = b"cleanroom/psi/v2/x25519-hash-to-group\x00"


@dataclass(frozen=True)
class PsiOutput:
    """What one receiver learns, plus counts about its own input (owner only).

    ``rows``: in ``intersection`` mode the party's own row numbers (first occurrence
    of each key) in the intersection, ascending; in ``aligned`` mode the same rows
    in the order common to every party; ``None`` in ``cardinality`` mode.
    """

    mode: OutputMode
    cardinality: int
    rows: tuple[int, ...] | None
    size: int
    peer_sizes: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    dropped: int = 0

    def __repr__(self) -> str:
        return (
            f"PsiOutput(mode={self.mode!r}, cardinality={self.cardinality}, "
            f"size={self.size})"
        )


def tags_of(points: bytes, digest: bytes) -> bytes:
    """16-byte tags of fully blinded points: BLAKE2b keyed with the job digest."""
    out = bytearray()
    for offset in range(0, len(points), _sodium.POINT_BYTES):
        out += hashlib.blake2b(
            points[offset : offset + _sodium.POINT_BYTES],
            digest_size=TAG_BYTES,
            key=digest,
        ).digest()
    return bytes(out)


def split_tags(tags: bytes) -> list[bytes]:
    """Packed tags as a list of 16-byte strings."""
    return [tags[i : i + TAG_BYTES] for i in range(0, len(tags), TAG_BYTES)]


class PsiPartyBase(NodeParty):
    """A party's normalised set, secret scalar, shuffle and stage bookkeeping.

    The constructor normalises, deduplicates and size-checks the input and draws
    the job's fresh scalar, but does no group operation: a set above ``max_items``
    is refused with ConfigError before any work.
    """

    def __init__(
        self,
        config: PsiConfig,
        name: str,
        rows: Iterable[str | Sequence[str]],
        *,
        random: RandomSource = SYSTEM_RANDOM,
        runner: BatchRunner = SERIAL,
    ) -> None:
        if name not in config.parties:
            raise ConfigError(f"{name!r} is not a party of this PSI session")
        _sodium.check_available()
        self._config = config
        self._name = name
        self._keys: NormalizedKeys = normalize_keys(rows, config.columns)
        if len(self._keys) > config.max_items:
            raise ConfigError(
                f"{len(self._keys)} distinct keys exceed this job's max_items "
                f"({config.max_items})"
            )
        self._random = random
        self._runner = runner
        self._scalar = psi_scalar(random)
        self._prefix = HASH_DOMAIN + config.digest
        # position j of everything this party sends holds key _order[j]
        self._order = random_permutation(len(self._keys), random)
        self._streams: dict[tuple[str, str, int], ChunkStream] = {}
        self._peer_sizes: dict[str, int] = {}
        self._started = False
        self._done = False
        self._waiting = "start"
        self._output: PsiOutput | None = None

    @property
    def finished(self) -> bool:
        """True once this party has sent everything and, if a receiver, has output."""
        return self._done

    @property
    def is_receiver(self) -> bool:
        """Whether this party gets an output."""
        return self._name in self._config.receivers

    def output(self) -> PsiOutput:
        """This receiver's output; only valid once finished."""
        if not self.is_receiver:
            raise ProtocolError(f"{self._name!r} receives no output in this job")
        if self._output is None:
            raise ProtocolError("the PSI output is not available before the end")
        return self._output

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        """A party this one still needs went away: abort, naming it and the stage."""
        unknown = sorted(p for p in parties if p not in self._config.parties)
        if unknown:
            raise ProtocolError(f"unknown parties reported dropped: {unknown}")
        if self._done or not parties - {self._name}:
            return []
        gone = ", ".join(sorted(parties))
        raise ProtocolAbort(
            f"PSI: {gone} dropped while {self._name} was in {self._waiting}"
        )

    def _check_start(self) -> None:
        if self._started:
            raise ProtocolError(f"{self._name} has already started")
        self._started = True

    def _intake(self, message: Inbound, allowed: Iterable[str]) -> Chunk:
        """Check sender and stage, decode one chunk and add it to its stream."""
        if not self._started or self._done:
            state = "finished" if self._done else "not started"
            raise ProtocolError(f"{self._name} is {state}; refusing {message.stage}")
        if message.sender not in self._config.parties or message.sender == self._name:
            raise ProtocolError(f"{message.sender!r} may not send to {self._name}")
        if message.stage not in allowed:
            raise ProtocolError(
                f"{self._name} does not expect {message.stage} from {message.sender}"
            )
        cap = self._config.max_items
        chunk = decode_chunk(
            message.payload,
            message.stage,
            self._config.digest,
            max_items=cap,
            chunk_items=self._config.chunk_items,
        )
        if chunk.origin >= self._config.n or not 1 <= chunk.hop <= self._config.n:
            raise ProtocolError(f"{message.stage}: origin or hop out of range")
        key = (message.stage, message.sender, chunk.origin)
        stream = self._streams.setdefault(key, ChunkStream(*key[:2]))
        stream.accept(chunk)
        return chunk

    def _stream(self, stage: str, sender: str, origin: int) -> ChunkStream | None:
        return self._streams.get((stage, sender, origin))

    def _finish(self, positions_in: list[int] | None, count: int, ranks: bool) -> None:
        """Record the output from matched own positions (None: cardinality only)."""
        rows: tuple[int, ...] | None = None
        if positions_in is not None:
            key_rows = np.asarray(self._keys.rows, dtype=np.int64)
            mapped = key_rows[self._order[np.asarray(positions_in, dtype=np.int64)]]
            rows = tuple(int(r) for r in (mapped if ranks else np.sort(mapped)))
        self._output = PsiOutput(
            mode=self._config.output,
            cardinality=count,
            rows=rows,
            size=len(self._keys),
            peer_sizes=dict(self._peer_sizes),
            duplicates=self._keys.duplicates,
            dropped=self._keys.dropped,
        )

    def _own_encoded_in_order(self) -> list[bytes]:
        encoded = self._keys.encoded
        return [encoded[i] for i in self._order]

    def _shuffled(self, tags: bytes) -> bytes:
        """The tags in a fresh random order (cardinality: positions mean nothing)."""
        items = split_tags(tags)
        return b"".join(items[i] for i in random_permutation(len(items), self._random))
