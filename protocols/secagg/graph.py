"""The SecAgg+ neighbour graph: complete, or a k-regular graph nobody can choose.

The k-regular graph is a Harary (circulant) graph: each party is linked to the
``k/2`` nearest positions on either side of a ring, so the degree is exactly
``k`` and the graph connected. Bell et al.'s bounds (bounds.py) hold only if the
ring order is random *and independent of who is corrupt*; a coordinator that
could try orders until one packs a victim's neighbourhood with its own nodes
would defeat them. So the graph is a function of three public inputs alone:

* ``config.graph_seed``, which the caller derives with :func:`graph_seed_from`
  from the analyst's signed job request (carrying the analyst's fresh nonce).
  Nodes verify that signature themselves; the coordinator cannot forge it, so it
  cannot pick a seed, and it cannot re-draw one by aborting and restarting: a
  new seed needs a new request signed by the analyst.
* the party names: each party's position is SHA-256(seed, name), so the order
  of any subset is the order of the whole restricted to it. The session id (the
  job id, which the coordinator picks) is deliberately not an input.
* the degree.

What the coordinator can still influence, and the bound on it:

* *Dropouts*, real or claimed, at any stage: they never move the graph, which
  is fixed before the first message; they only remove parties, which the
  dropout budget of bounds.py and the threshold checks of every stage cover.
* *The party list*: excluding a listed party before the session would shift
  its ring neighbours' windows. It changes the configuration digest, so the
  integrator must fix ``parties`` from the analyst-signed input list; a node
  that declines then counts as a dropout at ADVERTISE_KEYS, not an exclusion.
* *Which adverts it forwards*: only a dropout as above; adverts are not an
  input of the graph, because the coordinator sees the honest ones first and a
  corrupt node could then choose its own (unbounded grinding), and because
  every node would need all ``n`` of them.
* *Inconsistent seeds*: ``graph_seed`` is in the configuration digest, which
  every payload header and every signed key advert binds, so a party holding
  another seed (or a coordinator presenting one) fails at the first message,
  and a node's signed advert is its statement of the graph it runs.
* *An analyst colluding with the coordinator* can grind nonces offline before
  signing: ``2^g`` derivations raise the privacy failure bound to ``2^(g -
  sigma)``; plan with ``bounds.sound_parameters(..., sigma=40 + g)`` if that
  collusion is in scope. A commit-reveal among the nodes would remove it at the
  price of an extra round of O(n) messages per node; it is not implemented.
* *Different survivor sets for different holders* at UNMASK (there is no
  consistency round): each party still leaks at most one of its two secrets
  (bounds.py), but calling a party "dropped" to some holders and "survived" to
  others lets the coordinator cancel the masks around a set of honest parties
  and learn that set's sum. Each holder can call at most ``k + 1 - t`` of its
  neighbourhood dropped, which by counting keeps such a set at least
  ``|H| (1 - (n - t) / (t - c))`` honest parties in the complete graph and, on
  the ring, of the order of ``k`` consecutive ones. A consistency round
  (survivors sign the survivor set, as in Bonawitz et al.) would remove this;
  it changes the wire format and is left to a later version.

A party needs only its own neighbourhood and those of its neighbours, so
neighbourhoods are computed on first use (O(k) each) rather than all N up front.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cleanroom.errors import ConfigError, ProtocolError
from protocols.secagg.config import SecAggConfig
from protocols.secagg.messages import encode_name

_SEED_DOMAIN: Final = b"cleanroom/secagg/v2/graph-seed\x00"
_POSITION_DOMAIN: Final = b"cleanroom/secagg/v2/graph-position\x00"


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


def graph_seed_from(
    request: bytes, signature: bytes, analyst_key: Ed25519PublicKey
) -> bytes:
    """The graph seed of the job whose analyst-signed request is ``request``.

    ``request`` is the canonical bytes the analyst signed, including the fresh
    nonce it drew; the signature is checked here, so a seed never comes from
    bytes the analyst did not sign. Both go into the hash: the analyst's
    signature is unpredictable to anyone without the analyst's key.
    """
    if not isinstance(request, bytes) or not isinstance(signature, bytes):
        raise ConfigError("the signed request and its signature must be bytes")
    try:
        analyst_key.verify(signature, request)
    except InvalidSignature:
        raise ConfigError("the job request is not signed by the analyst") from None
    h = hashlib.sha256(_SEED_DOMAIN)
    h.update(len(request).to_bytes(8, "big") + request + signature)
    return h.digest()


def build_graph(config: SecAggConfig) -> NeighbourGraph:
    """Derive the neighbour graph of ``config`` (deterministic, no secrets involved)."""
    names = config.parties
    n = len(names)
    if config.degree == n - 1:
        # Complete: every offset, and no order is needed (every order is the same).
        return NeighbourGraph(order=tuple(names), offsets=tuple(range(n)))
    if config.graph_seed is None:
        raise ProtocolError("internal error: a sparse graph without a graph seed")
    order = _ring_order(names, config.graph_seed)
    half = config.degree // 2
    offsets = list(range(-half, half + 1))
    if config.degree % 2:
        # An odd degree needs the "diameter" edge; config validation made n even.
        offsets.append(n // 2)
    if len({o % n for o in offsets}) != config.degree + 1:
        raise ProtocolError("internal error: neighbour graph is not regular")
    return NeighbourGraph(order=tuple(order), offsets=tuple(offsets))


def _ring_order(names: tuple[str, ...], seed: bytes) -> list[str]:
    # A position per name, independent of the other names: the order is uniform
    # given the seed, and removing parties cannot reorder the rest. Ties (2^-256
    # per pair) fall back to the name, so the order is total.
    prefix = hashlib.sha256(_POSITION_DOMAIN + seed)

    def position(name: str) -> tuple[bytes, str]:
        h = prefix.copy()
        h.update(encode_name(name))
        return h.digest(), name

    return sorted(names, key=position)
