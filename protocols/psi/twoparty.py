"""Two-party ECDH-PSI: each blinds its own set, re-blinds the other's, and compares.

Stages: BLIND (both ways: own set as k * H(x), shuffled) then REBLIND (to each
receiver: its set under both keys, as tags, in its own order for ``intersection``
and ``aligned`` output, shuffled for ``cardinality``). A non-receiver finishes
after sending REBLIND; a receiver once it also has the other's set re-blinded
locally. Every received chunk is re-blinded as it arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cleanroom.errors import ProtocolError
from protocols.party import SYSTEM_RANDOM, Inbound, Outbound, RandomSource
from protocols.psi.base import PsiPartyBase, split_tags, tags_of
from protocols.psi.config import PsiConfig
from protocols.psi.group import SERIAL, BatchRunner, blind_keys, multiply_all
from protocols.psi.messages import BLIND, REBLIND, encode_chunk, encode_chunks


class TwoPartyPsi(PsiPartyBase):
    """One of the two parties; build with :func:`protocols.psi.psi_party`."""

    def __init__(
        self,
        config: PsiConfig,
        name: str,
        rows: Iterable[str | Sequence[str]],
        *,
        random: RandomSource = SYSTEM_RANDOM,
        runner: BatchRunner = SERIAL,
    ) -> None:
        if config.n != 2:
            raise ProtocolError("TwoPartyPsi runs exactly two parties")
        super().__init__(config, name, rows, random=random, runner=runner)
        self._peer = next(p for p in config.parties if p != name)
        self._me = config.index(name)
        self._peer_index = config.index(self._peer)
        self._peer_receives = self._peer in config.receivers
        self._positional = config.output != "cardinality"
        self._peer_tags = bytearray()

    def start(self) -> list[Outbound]:
        """Hash, blind and shuffle the own set; send it in chunks."""
        self._check_start()
        blinded = blind_keys(
            self._runner, self._scalar, self._prefix, self._own_encoded_in_order()
        )
        self._waiting = BLIND
        return [
            Outbound(self._peer, BLIND, payload)
            for payload in encode_chunks(
                BLIND,
                origin=self._me,
                hop=1,
                data=blinded,
                digest=self._config.digest,
                chunk_items=self._config.chunk_items,
            )
        ]

    def receive(self, message: Inbound) -> list[Outbound]:
        """Re-blind a chunk of the peer's set, or take a chunk of our own back."""
        stage = message.stage
        chunk = self._intake(
            message, (BLIND, REBLIND) if self.is_receiver else (BLIND,)
        )
        if stage == BLIND:
            expected = (self._peer_index, 1)
        else:
            expected = (self._me, 2)
        if (chunk.origin, chunk.hop) != expected:
            raise ProtocolError(f"{stage}: chunk carries the wrong origin or hop")
        out = (
            self._on_blind(chunk.index, chunk.items, chunk.data)
            if stage == BLIND
            else []
        )
        self._maybe_finish()
        return out

    def _on_blind(self, index: int, items: int, data: bytes) -> list[Outbound]:
        self._peer_sizes[self._peer] = items
        tags = tags_of(
            multiply_all(self._runner, self._scalar, data), self._config.digest
        )
        self._peer_tags += tags
        out = []
        if self._peer_receives and self._positional:
            payload = encode_chunk(
                REBLIND,
                origin=self._peer_index,
                hop=2,
                index=index,
                items=items,
                data=tags,
                digest=self._config.digest,
                chunk_items=self._config.chunk_items,
            )
            out.append(Outbound(self._peer, REBLIND, payload))
        stream = self._stream(BLIND, self._peer, self._peer_index)
        if stream is not None and stream.complete:
            self._waiting = REBLIND
            if self._peer_receives and not self._positional:
                out += [
                    Outbound(self._peer, REBLIND, payload)
                    for payload in encode_chunks(
                        REBLIND,
                        origin=self._peer_index,
                        hop=2,
                        data=self._shuffled(bytes(self._peer_tags)),
                        digest=self._config.digest,
                        chunk_items=self._config.chunk_items,
                    )
                ]
        return out

    def _maybe_finish(self) -> None:
        blind = self._stream(BLIND, self._peer, self._peer_index)
        if blind is None or not blind.complete:
            return
        if not self.is_receiver:
            self._done = True
            return
        mine = self._stream(REBLIND, self._peer, self._me)
        if mine is None or not mine.complete:
            return
        if mine.items != len(self._keys):
            raise ProtocolError(
                f"{REBLIND}: {mine.items} tags for {len(self._keys)} keys"
            )
        theirs = set(split_tags(bytes(self._peer_tags)))
        own = split_tags(mine.data())
        matched = [j for j, tag in enumerate(own) if tag in theirs]
        if self._config.output == "cardinality":
            self._finish(None, len(matched), ranks=False)
        elif self._config.output == "aligned":
            matched.sort(key=own.__getitem__)
            self._finish(matched, len(matched), ranks=True)
        else:
            self._finish(matched, len(matched), ranks=False)
        self._done = True
