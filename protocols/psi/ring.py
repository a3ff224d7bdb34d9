"""Multi-party PSI (three or more parties): commutative blinding round a ring.

Party i's set, blinded and shuffled by i, visits i+1, i+2, ... in ring order (the
sorted party list); each hop multiplies it by its own key and passes it on in the
same order (BLIND, then RELAY). The last hop (i-1) turns it into tags under every
key and sends it (FINAL) to the aggregator of each receiver R, the party after R:
R's own set in R's order, every other set in a fresh shuffle. The aggregator,
holding all n sets, tells R per own position whether (and, for ``aligned``, at
which common rank) it is in the n-way intersection, or only the count (RESULT).

A receiver thus never holds two fully blinded sets at once, so it learns only
the n-way intersection (or its size). The aggregator of R learns the sizes of the
intersections of any sub-family of the sets (not which keys: every set is under
all n keys and shuffled), including the final cardinality.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from cleanroom.errors import ProtocolError
from protocols.party import SYSTEM_RANDOM, Inbound, Outbound, RandomSource
from protocols.psi.base import PsiPartyBase, split_tags, tags_of
from protocols.psi.config import PsiConfig
from protocols.psi.group import SERIAL, BatchRunner, blind_keys, multiply_all
from protocols.psi.messages import (
    BLIND,
    FINAL,
    RELAY,
    RESULT,
    Chunk,
    ChunkStream,
    decode_chunk,
    encode_chunk,
    encode_chunks,
)

_ABSENT = 0


class RingPsi(PsiPartyBase):
    """One party of an n >= 3 ring; build with :func:`protocols.psi.psi_party`."""

    def __init__(
        self,
        config: PsiConfig,
        name: str,
        rows: Iterable[str | Sequence[str]],
        *,
        random: RandomSource = SYSTEM_RANDOM,
        runner: BatchRunner = SERIAL,
    ) -> None:
        if config.n < 3:
            raise ProtocolError("RingPsi needs three or more parties")
        super().__init__(config, name, rows, random=random, runner=runner)
        n = config.n
        self._me = config.index(name)
        self._prev = config.parties[(self._me - 1) % n]
        self._next = config.parties[(self._me + 1) % n]
        # The receiver this party aggregates for: its predecessor, if a receiver.
        self._serves = self._prev if self._prev in config.receivers else None
        self._final_tags = bytearray()
        self._result_sent = self._serves is None
        self._waiting = RELAY

    def start(self) -> list[Outbound]:
        """Blind and shuffle the own set; send it to the next party in the ring."""
        self._check_start()
        blinded = blind_keys(
            self._runner, self._scalar, self._prefix, self._own_encoded_in_order()
        )
        return self._send(self._next, BLIND, self._me, 1, blinded)

    def receive(self, message: Inbound) -> list[Outbound]:
        """Blind and pass on a set, collect sets to aggregate, or take the result."""
        allowed = [BLIND, RELAY]
        if self._serves is not None:
            allowed.append(FINAL)
        if self.is_receiver:
            allowed.append(RESULT)
        chunk = self._intake(message, allowed)
        n, stage, sender = self._config.n, message.stage, message.sender
        if stage in (BLIND, RELAY):
            hop_sender = (chunk.origin + chunk.hop - 1) % n
            if (
                (stage == BLIND) != (chunk.hop == 1)
                or chunk.hop >= n
                or self._config.parties[hop_sender] != sender
                or (hop_sender + 1) % n != self._me
            ):
                raise ProtocolError(f"{stage}: {sender} may not send this set here")
            out = self._on_relay(chunk)
        elif stage == FINAL:
            if chunk.hop != n or self._config.parties[(chunk.origin - 1) % n] != sender:
                raise ProtocolError(f"{FINAL}: {sender} is not that set's last hop")
            out = self._maybe_aggregate()
        else:
            if chunk.hop != n or chunk.origin != self._me or sender != self._next:
                raise ProtocolError(f"{RESULT}: only {self._next} sends our result")
            out = []
        self._maybe_finish()
        return out

    def _send(
        self, to: str, stage: str, origin: int, hop: int, data: bytes
    ) -> list[Outbound]:
        return [
            Outbound(to, stage, payload)
            for payload in encode_chunks(
                stage,
                origin=origin,
                hop=hop,
                data=data,
                digest=self._config.digest,
                chunk_items=self._config.chunk_items,
            )
        ]

    def _on_relay(self, chunk: Chunk) -> list[Outbound]:
        n, config = self._config.n, self._config
        origin, hop, index = chunk.origin, chunk.hop, chunk.index
        stage = BLIND if hop == 1 else RELAY
        stream = self._stream(stage, self._prev, origin)
        assert stream is not None
        items = stream.items
        self._peer_sizes[config.parties[origin]] = items
        data = multiply_all(self._runner, self._scalar, chunk.data)
        if hop + 1 < n:
            payload = encode_chunk(
                RELAY,
                origin=origin,
                hop=hop + 1,
                index=index,
                items=items,
                data=data,
                digest=config.digest,
                chunk_items=config.chunk_items,
            )
            return [Outbound(self._next, RELAY, payload)]
        # Last hop: deliver tags to every receiver's aggregator.
        tags = tags_of(data, config.digest)
        self._final_tags += tags
        out: list[Outbound] = []
        for receiver in config.receivers:
            r = config.index(receiver)
            aggregator = config.parties[(r + 1) % n]
            if origin == r:
                payload = encode_chunk(
                    FINAL,
                    origin=origin,
                    hop=n,
                    index=index,
                    items=items,
                    data=tags,
                    digest=config.digest,
                    chunk_items=config.chunk_items,
                )
                out.append(Outbound(aggregator, FINAL, payload))
            elif stream.complete:
                shuffled = self._shuffled(bytes(self._final_tags))
                out += self._send(aggregator, FINAL, origin, n, shuffled)
        return self._deliver_locally(out)

    def _deliver_locally(self, out: list[Outbound]) -> list[Outbound]:
        """FINAL chunks addressed to this party itself are taken in directly."""
        remote = [m for m in out if m.recipient != self._name]
        for message in out:
            if message.recipient == self._name:
                own = Inbound(self._name, message.stage, message.payload)
                self._take_own_final(own)
                remote += self._maybe_aggregate()
        return remote

    def _take_own_final(self, message: Inbound) -> None:
        chunk = decode_chunk(
            message.payload,
            FINAL,
            self._config.digest,
            max_items=self._config.max_items,
            chunk_items=self._config.chunk_items,
        )
        key = (FINAL, self._name, chunk.origin)
        self._streams.setdefault(key, ChunkStream(FINAL, self._name)).accept(chunk)

    def _final_stream(self, origin: int) -> bytes | None:
        n = self._config.n
        sender = self._config.parties[(origin - 1) % n]
        stream = self._stream(FINAL, sender, origin)
        return stream.data() if stream is not None and stream.complete else None

    def _maybe_aggregate(self) -> list[Outbound]:
        if self._serves is None or self._result_sent:
            return []
        r = self._config.index(self._serves)
        sets = {o: self._final_stream(o) for o in range(self._config.n)}
        if any(v is None for v in sets.values()):
            return []
        others: set[bytes] | None = None
        for origin, data in sets.items():
            if origin != r and data is not None:
                members = set(split_tags(data))
                others = members if others is None else others & members
        own = split_tags(sets[r] or b"")
        matched = [
            j for j, tag in enumerate(own) if others is not None and tag in others
        ]
        if self._config.output == "cardinality":
            column = np.array([len(matched)], dtype=">u4")
        else:
            column = np.full(len(own), _ABSENT, dtype=">u4")
            if self._config.output == "aligned":
                matched.sort(key=own.__getitem__)
                column[matched] = np.arange(1, len(matched) + 1)
            else:
                column[matched] = 1
        self._result_sent = True
        return self._send(self._serves, RESULT, r, self._config.n, column.tobytes())

    def _maybe_finish(self) -> None:
        n = self._config.n
        for origin in range(n):
            if origin == self._me:
                continue
            hop = (self._me - origin) % n
            stage = BLIND if hop == 1 else RELAY
            stream = self._stream(stage, self._prev, origin)
            if stream is None or not stream.complete:
                return
        self._waiting = FINAL if not self._result_sent else RESULT
        if not self._result_sent:
            return
        if not self.is_receiver:
            self._done = True
            return
        result = self._stream(RESULT, self._next, self._me)
        if result is None or not result.complete:
            self._waiting = RESULT
            return
        values = np.frombuffer(result.data(), dtype=">u4").astype(np.int64)
        self._finish_from_column(values)
        self._done = True

    def _finish_from_column(self, values: np.ndarray) -> None:
        mode = self._config.output
        if mode == "cardinality":
            if values.size != 1 or values[0] > len(self._keys):
                raise ProtocolError(f"{RESULT}: not a count for this set")
            self._finish(None, int(values[0]), ranks=False)
            return
        if values.size != len(self._keys):
            raise ProtocolError(
                f"{RESULT}: {values.size} entries for {len(self._keys)} keys"
            )
        positions = np.flatnonzero(values != _ABSENT)
        if mode == "intersection":
            if np.any(values[positions] != 1):
                raise ProtocolError(f"{RESULT}: membership entries must be 0 or 1")
            self._finish(positions.tolist(), positions.size, ranks=False)
            return
        ranks = values[positions]
        if not np.array_equal(np.sort(ranks), np.arange(1, positions.size + 1)):
            raise ProtocolError(f"{RESULT}: ranks are not 1..m")
        self._finish(positions[np.argsort(ranks)].tolist(), positions.size, ranks=True)
