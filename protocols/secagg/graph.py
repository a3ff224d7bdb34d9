"""The SecAgg+ neighbour graph: complete, or a k-regular graph drawn from a public seed.

Every party derives the same graph from the configuration alone, so the
coordinator cannot show different parties different neighbourhoods. The
k-regular graph is a Harary (circulant) graph on the parties in an order
shuffled by AES-CTR keyed with a hash of the configuration: each party's
neighbours are spread at random, as Bell et al. require, yet the degree is
exactly ``k`` and the graph is connected.

A party needs only its own neighbourhood and those of its neighbours, so
neighbourhoods are computed on first use (O(k) each) rather than all N up front.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from cleanroom.errors import ProtocolError
from protocols.prg import expand_mask
from protocols.secagg.config import SecAggConfig

_SEED_DOMAIN: Final = b"cleanroom/secagg/v1/graph\x00"


@dataclass(frozen=True)
class NeighbourGraph:
    """A circulant graph on ``order``: party i's closed neighbourhood is
    ``order[(i + o) % n]`` for every ``o`` in ``offsets`` (0 included)."""

    order: tuple[str, ...]
    offsets: tuple[int, ...]
    _position: dict[str, int] = field(init=False, repr=False, compare=False)
    _closed: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _index: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_position", {p: i for i, p in enumerate(self.order)})
        object.__setattr__(self, "_closed", {})
        object.__setattr__(self, "_index", {})

    def __contains__(self, party: object) -> bool:
        return party in self._position

    def neighbours(self, party: str) -> tuple[str, ...]:
        """The party's peers, without the party itself."""
        return tuple(p for p in self.closed_of(party) if p != party)

    def closed_of(self, party: str) -> tuple[str, ...]:
        """The party and its peers, sorted: the holders of the party's shares."""
        closed = self._closed.get(party)
        if closed is None:
            try:
                position = self._position[party]
            except KeyError:
                raise ProtocolError(
                    f"{party!r} is not a party of this session"
                ) from None
            # build_graph checked that the offsets are distinct mod n.
            order, n = self.order, len(self.order)
            closed = tuple(sorted([order[(position + o) % n] for o in self.offsets]))
            self._closed[party] = closed
        return closed

    def share_index(self, owner: str, holder: str) -> int:
        """The Shamir x-coordinate of ``owner``'s share held by ``holder`` (1-based).

        Fixed by the graph, so the coordinator can check that every share it is
        given sits at the point its holder was assigned.
        """
        index = self._index.get(owner)
        if index is None:
            index = {p: i for i, p in enumerate(self.closed_of(owner), start=1)}
            self._index[owner] = index
        try:
            return index[holder]
        except KeyError:
            raise ProtocolError(f"{holder!r} holds no share of {owner!r}") from None


def build_graph(config: SecAggConfig) -> NeighbourGraph:
    """Derive the neighbour graph of ``config`` (deterministic, no secrets involved)."""
    names = config.parties
    n = len(names)
    if config.degree == n - 1:
        # Complete: every offset, and no shuffle is needed (every order is the same).
        return NeighbourGraph(order=tuple(names), offsets=tuple(range(n)))
    order = _shuffled(names, config.digest)
    half = config.degree // 2
    offsets = list(range(-half, half + 1))
    if config.degree % 2:
        # An odd degree needs the "diameter" edge; config validation made n even.
        offsets.append(n // 2)
    if len({o % n for o in offsets}) != config.degree + 1:
        raise ProtocolError("internal error: neighbour graph is not regular")
    return NeighbourGraph(order=tuple(order), offsets=tuple(offsets))


def _shuffled(names: tuple[str, ...], digest: bytes) -> list[str]:
    # Sorting by 64-bit keystream words is a uniform shuffle up to ties, and ties
    # (probability < n^2 / 2^64) keep name order (``names`` is sorted and the sort
    # is stable), so the result is total.
    seed = hashlib.sha256(_SEED_DOMAIN + digest).digest()
    keys = expand_mask(seed, len(names), 64)
    return [names[i] for i in np.argsort(keys, kind="stable").tolist()]
