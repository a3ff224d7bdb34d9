"""The SecAgg+ coordinator: relays keys and shares, then unmasks the survivors' sum."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.party import Outbound
from protocols.prg import add_masks
from protocols.secagg import keys
from protocols.secagg.config import SecAggConfig
from protocols.secagg.graph import build_graph
from protocols.secagg.messages import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    ForwardedShares,
    KeyAdvertisement,
    KeySet,
    MaskedInput,
    ShareBundles,
    UnmaskRequest,
    UnmaskResponse,
)
from protocols.secagg.staged import StagedServer
from protocols.shamir import Share, combine

_Handler = Callable[[str, bytes], None]


class SecAggServer(StagedServer):
    """Drives the four SecAgg+ stages and releases the sum of the survivors' inputs.

    It never sees an unmasked individual vector: it holds only the running sum of
    masked vectors, and for each party it reconstructs either the self-mask seed
    (the party survived) or the mask key (it dropped), never both. A stage ends
    once every live expected party has answered; ``dropped`` may be called at any
    time and aborts as soon as too few parties remain to finish.
    """

    def __init__(
        self, config: SecAggConfig, signing_keys: Mapping[str, Ed25519PublicKey]
    ) -> None:
        missing = [p for p in config.parties if p not in signing_keys]
        if missing:
            raise ConfigError(f"no identity key for parties {missing}")
        super().__init__(config, ADVERTISE_KEYS)
        self._graph = build_graph(config)
        self._identities = dict(signing_keys)
        self._adverts: dict[str, KeyAdvertisement] = {}
        # Every public key advertised so far, so a repeat is refused in O(1).
        self._advertised_keys: set[bytes] = set()
        self._key_sets: dict[str, frozenset[str]] = {}
        self._bundles: dict[str, dict[str, bytes]] = {}
        self._shared: frozenset[str] = frozenset()
        self._requests: dict[str, UnmaskRequest] = {}
        self._self_mask_shares: dict[str, list[Share]] = {}
        self._mask_key_shares: dict[str, list[Share]] = {}

    def _handle(self, stage: str, sender: str, payload: bytes) -> None:
        handlers: dict[str, _Handler] = {
            ADVERTISE_KEYS: self._on_advertisement,
            SHARE_KEYS: self._on_share_bundles,
            MASKED_INPUT: self._on_masked_input,
            UNMASK: self._on_unmask_response,
        }
        handlers[stage](sender, payload)

    @property
    def survivors(self) -> frozenset[str]:
        """The parties whose inputs are in the sum (empty before unmasking)."""
        return self._survivors

    def _on_advertisement(self, sender: str, payload: bytes) -> None:
        advert = KeyAdvertisement.decode(payload, self._config.digest)
        if advert.party != sender:
            raise ProtocolError(
                f"{sender!r} advertised keys in the name of {advert.party!r}"
            )
        pair = {advert.c_pk, advert.s_pk}
        if len(pair) != 2 or pair & self._advertised_keys:
            raise ProtocolError(f"{sender!r} advertised a public key already in use")
        if self._config.key_scope is None:
            # Under a key scope the certificates are the neighbours' to check (each
            # once per job); the coordinator's own check would add nothing.
            keys.verify_advertisement(
                advert, self._identities[sender], self._config.digest
            )
        self._adverts[sender] = advert
        self._advertised_keys |= pair

    def _on_share_bundles(self, sender: str, payload: bytes) -> None:
        bundles = dict(ShareBundles.decode(payload, self._config.digest).by_recipient)
        expected = self._key_sets[sender] - {sender}
        if set(bundles) != expected:
            raise ProtocolError(
                f"{sender!r} must send bundles to exactly {sorted(expected)}, "
                f"sent {sorted(bundles)}"
            )
        self._bundles[sender] = bundles

    def _on_masked_input(self, sender: str, payload: bytes) -> None:
        masked = MaskedInput.decode(
            payload,
            self._config.digest,
            length=self._config.vector_length,
            dtype=self._config.dtype,
        )
        np.add(self._sum, masked.vector, out=self._sum)

    def _on_unmask_response(self, sender: str, payload: bytes) -> None:
        response = UnmaskResponse.decode(payload, self._config.digest)
        request = self._requests[sender]
        self_mask = dict(response.self_mask_shares)
        mask_key = dict(response.mask_key_shares)
        if set(self_mask) != set(request.survivors) or set(mask_key) != set(
            request.dropped
        ):
            raise ProtocolError(f"{sender!r} did not answer the unmask request it got")
        for owner, share in [*self_mask.items(), *mask_key.items()]:
            if share.index != self._graph.share_index(owner, sender):
                raise ProtocolError(
                    f"{sender!r} sent a share of {owner!r} at a wrong point"
                )
            if share.threshold != self._config.threshold:
                raise ProtocolError(f"{sender!r} sent a share with a wrong threshold")
        for owner, share in self_mask.items():
            self._self_mask_shares.setdefault(owner, []).append(share)
        for owner, share in mask_key.items():
            self._mask_key_shares.setdefault(owner, []).append(share)

    def _advance_if_complete(self) -> list[Outbound]:
        if self._expected - self._gone - self._received:
            return []
        self._check_threshold()
        if self._stage == ADVERTISE_KEYS:
            return self._send_key_sets()
        if self._stage == SHARE_KEYS:
            return self._forward_share_bundles()
        if self._stage == MASKED_INPUT:
            return self._send_unmask_requests()
        self._unmask()
        return []

    def _send_key_sets(self) -> list[Outbound]:
        advertised = frozenset(self._received - self._gone)
        out = []
        for party in sorted(advertised):
            members = frozenset(self._graph.closed_of(party)) & advertised
            self._key_sets[party] = members
            key_set = KeySet(tuple(self._adverts[p] for p in sorted(members)))
            out.append(Outbound(party, SHARE_KEYS, key_set.encode(self._config.digest)))
        self._begin(SHARE_KEYS, advertised)
        return out

    def _forward_share_bundles(self) -> list[Outbound]:
        self._shared = frozenset(self._received - self._gone)
        out = []
        for party in sorted(self._shared):
            senders = (self._key_sets[party] & self._shared) - {party}
            forwarded = tuple((s, self._bundles[s][party]) for s in sorted(senders))
            payload = ForwardedShares(forwarded).encode(self._config.digest)
            out.append(Outbound(party, MASKED_INPUT, payload))
        self._bundles.clear()
        self._begin(MASKED_INPUT, self._shared)
        return out

    def _send_unmask_requests(self) -> list[Outbound]:
        # A party that sent its masked input and then vanished still survives: its
        # vector is in the sum, so its self-mask must be removed.
        self._survivors = frozenset(self._received)
        live = self._survivors - self._gone
        out = []
        for party in sorted(live):
            group = frozenset(self._graph.closed_of(party)) & self._shared
            request = UnmaskRequest(
                survivors=tuple(sorted(group & self._survivors)),
                dropped=tuple(sorted(group - self._survivors)),
            )
            self._requests[party] = request
            out.append(Outbound(party, UNMASK, request.encode(self._config.digest)))
        self._begin(UNMASK, live)
        return out

    def _unmask(self) -> None:
        digest = self._config.digest
        add: list[bytes] = []
        subtract: list[bytes] = []
        for party in sorted(self._survivors):
            subtract.append(self._reconstruct(party, self._self_mask_shares))
        for party in sorted(self._shared - self._survivors):
            s_sk = self._reconstruct_mask_key(party)
            for peer in self._graph.neighbours(party):
                if peer not in self._survivors:
                    continue
                shared = keys.agree(s_sk, self._adverts[peer].s_pk, peer)
                seed = keys.pair_mask_seed(shared, digest, party, peer)
                # Undo what the surviving peer applied for this pair.
                (subtract if keys.adds_pair_mask(peer, party) else add).append(seed)
        add_masks(self._sum, add=add, subtract=subtract)
        self._result = self._sum
        self._begin(None, frozenset())

    def _reconstruct(self, owner: str, shares: Mapping[str, list[Share]]) -> bytes:
        try:
            return combine(shares.get(owner, []))
        except ProtocolAbort as exc:
            raise ProtocolAbort(
                f"cannot recover the secrets of {owner!r}: {exc}"
            ) from None
        except ProtocolError as exc:
            raise ProtocolError(f"the shares of {owner!r} are corrupt: {exc}") from None

    def _reconstruct_mask_key(self, owner: str) -> bytes:
        raw = self._reconstruct(owner, self._mask_key_shares)
        if len(raw) != keys.KEY_BYTES:
            raise ProtocolError(
                f"the recovered mask key of {owner!r} has the wrong size"
            )
        if keys.public_key(raw) != self._adverts[owner].s_pk:
            raise ProtocolError(f"the recovered mask key of {owner!r} does not match")
        return raw

    def _check_threshold(self) -> None:
        t, n = self._config.threshold, self._config.n
        live = self._expected - self._gone
        if self._stage == UNMASK:
            live |= self._received
        if len(live) < t:
            raise ProtocolAbort(
                f"only {len(live)} of {n} parties remain; threshold is {t}"
            )
        # Early stages: every continuing party needs t live share holders. From the
        # masked input on: every party that shared needs t holders to unmask it.
        owners = live if self._stage in (ADVERTISE_KEYS, SHARE_KEYS) else self._shared
        m = self._config.neighbourhood_size
        # The graph is symmetric: the neighbourhoods a gone party leaves short are
        # exactly those in its own neighbourhood, so count losses from its side.
        lost: dict[str, int] = {}
        for party in set(self._config.parties) - live:
            for owner in self._graph.closed_of(party):
                lost[owner] = lost.get(owner, 0) + 1
        for owner in sorted(owners):
            holders = m - lost.get(owner, 0)
            if holders < t:
                raise ProtocolAbort(
                    f"only {holders} of the {m} parties in {owner!r}'s neighbourhood "
                    f"remain; threshold is {t}"
                )
