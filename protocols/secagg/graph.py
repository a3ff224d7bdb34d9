"""The SecAgg+ neighbour graph: complete, or a k-regular graph drawn from a public seed.

Every party derives the same graph from the configuration alone, so the
coordinator cannot show different parties different neighbourhoods. The
k-regular graph is a Harary (circulant) graph on the parties in an order
shuffled by AES-CTR keyed with a hash of the configuration: each party's
neighbours are spread at random, as Bell et al. require, yet the degree is
exactly ``k`` and the graph is connected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cleanroom.errors import ProtocolError
from protocols.prg import expand_mask
from protocols.secagg.config import SecAggConfig

_SEED_DOMAIN: Final = b"cleanroom/secagg/v1/graph\x00"


@dataclass(frozen=True)
class NeighbourGraph:
    """Closed neighbourhoods (a party and its peers), each sorted by name."""

    closed: Mapping[str, tuple[str, ...]]

    def neighbours(self, party: str) -> tuple[str, ...]:
        """The party's peers, without the party itself."""
        return tuple(p for p in self.closed_of(party) if p != party)

    def closed_of(self, party: str) -> tuple[str, ...]:
        """The party and its peers, sorted: the holders of the party's shares."""
        try:
            return self.closed[party]
        except KeyError:
            raise ProtocolError(f"{party!r} is not a party of this session") from None

    def share_index(self, owner: str, holder: str) -> int:
        """The Shamir x-coordinate of ``owner``'s share held by ``holder`` (1-based).

        Fixed by the graph, so the coordinator can check that every share it is
        given sits at the point its holder was assigned.
        """
        closed = self.closed_of(owner)
        try:
            return closed.index(holder) + 1
        except ValueError:
            raise ProtocolError(f"{holder!r} holds no share of {owner!r}") from None


def build_graph(config: SecAggConfig) -> NeighbourGraph:
    """Derive the neighbour graph of ``config`` (deterministic, no secrets involved)."""
    names = config.parties
    n = len(names)
    if config.degree == n - 1:
        everyone = tuple(names)
        return NeighbourGraph(closed=dict.fromkeys(names, everyone))
    order = _shuffled(names, config.digest)
    half = config.degree // 2
    offsets = list(range(-half, half + 1))
    if config.degree % 2:
        # An odd degree needs the "diameter" edge; config validation made n even.
        offsets.append(n // 2)
    closed = {
        name: tuple(sorted({order[(position + o) % n] for o in offsets}))
        for position, name in enumerate(order)
    }
    if any(len(c) != config.degree + 1 for c in closed.values()):
        raise ProtocolError("internal error: neighbour graph is not regular")
    return NeighbourGraph(closed=closed)


def _shuffled(names: tuple[str, ...], digest: bytes) -> list[str]:
    # Sorting by 64-bit keystream words is a uniform shuffle up to ties, and ties
    # (probability < n^2 / 2^64) fall back to name order, so the result is total.
    seed = hashlib.sha256(_SEED_DOMAIN + digest).digest()
    keys = expand_mask(seed, len(names), 64).tolist()
    ranked = sorted(range(len(names)), key=lambda i: (keys[i], names[i]))
    return [names[i] for i in ranked]
