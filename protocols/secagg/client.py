"""The SecAgg+ node: masks its vector so that the coordinator learns only the sum."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.party import (
    COORDINATOR,
    SYSTEM_RANDOM,
    Inbound,
    NodeParty,
    Outbound,
    RandomSource,
)
from protocols.prg import masked_copy
from protocols.secagg import keys
from protocols.secagg.config import SecAggConfig
from protocols.secagg.graph import NeighbourGraph, build_graph
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
from protocols.shamir import SHARE_BYTES, Share, split

_Handler = Callable[[bytes], list[Outbound]]
_Input = npt.NDArray[np.unsignedinteger[Any]]


class SecAggClient(NodeParty):
    """One data holder's side of SecAgg+ (Bonawitz et al. 2017, Bell et al. 2020).

    Built with the node's identity key, the identity keys of the other parties
    (so the coordinator cannot substitute anyone's session keys) and the node's
    already fixed-point-encoded vector. The client keeps a reference to that
    vector (no copy) until it masks it, so the caller hands it over and must not
    change it during the session. The client fails closed: after refusing one
    message it refuses everything that follows. A job running many sessions may
    pass one ``keys.ChannelKeys`` to all of them (its share-bundle key pair and
    agreements are then reused; see there why that stays sound); a configuration
    with a ``key_scope`` requires one of that scope, and then no signature is made
    or checked per session (``keys``' module docstring says what replaces it).
    """

    def __init__(
        self,
        name: str,
        config: SecAggConfig,
        vector: npt.ArrayLike,
        *,
        signing_key: Ed25519PrivateKey,
        peer_signing_keys: Mapping[str, Ed25519PublicKey],
        random: RandomSource = SYSTEM_RANDOM,
        approve_survivors: Callable[[frozenset[str]], None] | None = None,
        channel: keys.ChannelKeys | None = None,
    ) -> None:
        if name not in config.parties:
            raise ConfigError(f"{name!r} is not a party of session {config.session_id}")
        if config.key_scope is not None and (
            channel is None or channel.scope != config.key_scope
        ):
            raise ConfigError(
                f"session {config.session_id} authenticates keys under scope "
                f"{config.key_scope!r}; the client needs channel keys of that scope"
            )
        self.name = name
        self._approve_survivors = approve_survivors
        self._channel = channel
        self._config = config
        self._graph: NeighbourGraph = build_graph(config)
        self._closed = self._graph.closed_of(name)
        self._identities = _identities_of(
            name, self._closed, signing_key, peer_signing_keys
        )
        self._signing_key = signing_key
        self._random = random
        self._vector: _Input | None = checked_input(vector, config)
        self._expect: str | None = None
        self._started = False
        self._finished = False
        self._refused: str | None = None
        self._secrets: keys.SessionKeys | None = None
        self._advert: KeyAdvertisement | None = None
        self._peer_adverts: dict[str, KeyAdvertisement] = {}
        self._open_keys: dict[str, bytes] = {}
        self._own_shares: tuple[Share, Share] | None = None
        self._held: dict[str, tuple[Share, Share]] = {}
        self._shared_with: frozenset[str] = frozenset()

    @property
    def finished(self) -> bool:
        """True once the unmasking shares have been sent."""
        return self._finished

    def start(self) -> list[Outbound]:
        """ADVERTISE_KEYS: draw the session secrets and send the signed public keys."""
        if self._started:
            raise ProtocolError(f"{self.name} has already started")
        self._started = True
        self._secrets = keys.SessionKeys.generate(self._random, self._channel)
        if self._config.key_scope is not None and self._channel is not None:
            self._advert = KeyAdvertisement(
                self.name,
                self._channel.c_pk,
                keys.public_key(self._secrets.s_sk),
                self._channel.certificate(self.name, self._signing_key),
            )
        else:
            self._advert = self._secrets.advertise(
                self.name, self._signing_key, self._config.digest
            )
        self._expect = SHARE_KEYS
        return [self._send(ADVERTISE_KEYS, self._advert.encode(self._config.digest))]

    def receive(self, message: Inbound) -> list[Outbound]:
        """Handle the coordinator's message for the stage this client is waiting for."""
        if self._refused is not None:
            raise ProtocolAbort(f"{self.name} already refused: {self._refused}")
        if message.sender != COORDINATOR:
            raise ProtocolError(
                f"{self.name} only accepts messages from the coordinator"
            )
        if self._expect is None:
            state = "finished" if self._finished else "not started"
            raise ProtocolError(f"{self.name} is {state}; refusing {message.stage}")
        if message.stage != self._expect:
            raise ProtocolError(
                f"{self.name} expected a {self._expect} message, got {message.stage}"
            )
        handlers: dict[str, _Handler] = {
            SHARE_KEYS: self._on_key_set,
            MASKED_INPUT: self._on_forwarded_shares,
            UNMASK: self._on_unmask_request,
        }
        try:
            return handlers[message.stage](message.payload)
        except ProtocolError as exc:
            self._refused = str(exc)
            self._expect = None
            raise

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        """Peers dropping out is the coordinator's business; losing it is fatal."""
        if COORDINATOR in parties:
            self._expect = None
            raise ProtocolAbort("the coordinator went away")
        return []

    def _on_key_set(self, payload: bytes) -> list[Outbound]:
        digest, t = self._config.digest, self._config.threshold
        adverts = {a.party: a for a in KeySet.decode(payload, digest).adverts}
        for party in adverts:
            if party not in self._closed:
                raise ProtocolError(f"{party!r} is not a neighbour of {self.name!r}")
        if adverts.get(self.name) != self._advert:
            raise ProtocolError(f"the key set does not carry {self.name}'s own keys")
        if len(adverts) < t:
            raise ProtocolAbort(
                f"the key set has {len(adverts)} parties; threshold is {t}"
            )
        public_keys = [k for a in adverts.values() for k in (a.c_pk, a.s_pk)]
        if len(set(public_keys)) != len(public_keys):
            raise ProtocolError("a public key appears more than once in the key set")
        scoped = self._channel if self._config.key_scope is not None else None
        for party, advert in adverts.items():
            if party == self.name:
                continue
            if scoped is not None:
                scoped.check_certificate(advert, self._identities[party])
            else:
                keys.verify_advertisement(advert, self._identities[party], digest)
        # Everything is validated; only now does any secret-dependent work start.
        secrets = self._require_secrets()
        m = len(self._closed)
        b_shares = split(secrets.self_mask_seed, t, m, self._random)
        s_shares = split(secrets.s_sk, t, m, self._random)
        own = self._graph.share_index(self.name, self.name) - 1
        self._own_shares = (b_shares[own], s_shares[own])
        bundles = []
        for party, advert in sorted(adverts.items()):
            if party == self.name:
                continue
            shared = (
                self._channel.agree(advert.c_pk, party)
                if self._channel is not None
                else keys.agree(secrets.c_sk, advert.c_pk, party)
            )
            seal_key, open_key = keys.bundle_keys(shared, digest, self.name, party)
            i = self._graph.share_index(self.name, party) - 1
            plaintext = b_shares[i].to_bytes() + s_shares[i].to_bytes()
            sealed = keys.seal_bundle(
                seal_key, digest, self.name, party, plaintext,
                (self._require_advert().s_pk, advert.s_pk),
            )  # fmt: skip
            bundles.append((party, sealed))
            self._open_keys[party] = open_key
        self._peer_adverts = {p: a for p, a in adverts.items() if p != self.name}
        self._expect = MASKED_INPUT
        return [self._send(SHARE_KEYS, ShareBundles(tuple(bundles)).encode(digest))]

    def _on_forwarded_shares(self, payload: bytes) -> list[Outbound]:
        digest, t = self._config.digest, self._config.threshold
        forwarded = ForwardedShares.decode(payload, digest).by_sender
        for sender, _ in forwarded:
            if sender not in self._peer_adverts:
                raise ProtocolError(f"{sender!r} was not in {self.name}'s key set")
        if len(forwarded) + 1 < t:
            raise ProtocolAbort(
                f"only {len(forwarded) + 1} parties shared keys with {self.name}; "
                f"threshold is {t}"
            )
        for sender, ciphertext in forwarded:
            plaintext = keys.open_bundle(
                self._open_keys[sender], digest, sender, self.name, ciphertext,
                (self._peer_adverts[sender].s_pk, self._require_advert().s_pk),
            )  # fmt: skip
            self._held[sender] = self._checked_shares(sender, plaintext)
        secrets = self._require_secrets()
        add: list[bytes] = [secrets.self_mask_seed]
        subtract: list[bytes] = []
        for peer in self._held:
            shared = keys.agree(secrets.s_sk, self._peer_adverts[peer].s_pk, peer)
            seed = keys.pair_mask_seed(shared, digest, self.name, peer)
            (add if keys.adds_pair_mask(self.name, peer) else subtract).append(seed)
        if self._vector is None:
            raise ProtocolError(f"{self.name} has no input left to mask")
        # The first mask is expanded straight into the outgoing vector, so no
        # unmasked copy of the input is ever made; the reference is dropped here.
        vector, self._vector = self._vector, None
        masked = masked_copy(
            vector, self._config.modulus_bits, add=add, subtract=subtract
        )
        self._shared_with = frozenset(self._held) | {self.name}
        self._expect = UNMASK
        return [self._send(MASKED_INPUT, MaskedInput(masked).encode(digest))]

    def _on_unmask_request(self, payload: bytes) -> list[Outbound]:
        digest, t = self._config.digest, self._config.threshold
        request = UnmaskRequest.decode(payload, digest)
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise ProtocolError(
                f"the coordinator reports {sorted(both)} as both dropped and surviving"
            )
        strangers = (survivors | dropped) - self._shared_with
        if strangers:
            raise ProtocolError(
                f"{sorted(strangers)} did not share keys with {self.name}"
            )
        unaccounted = self._shared_with - survivors - dropped
        if unaccounted:
            raise ProtocolError(
                f"the coordinator does not account for {sorted(unaccounted)}"
            )
        if self.name not in survivors:
            raise ProtocolError(
                f"{self.name} sent its masked input but is reported dropped"
            )
        if len(survivors) < t:
            # Unmasking fewer than t inputs could expose an individual contribution.
            raise ProtocolAbort(
                f"only {len(survivors)} survivors among {self.name}'s neighbours; "
                f"threshold is {t}"
            )
        if self._approve_survivors is not None:
            # The holder's own rule on whom its input may be summed with.
            self._approve_survivors(frozenset(survivors))
        own = self._require_own_shares()
        held = {**self._held, self.name: own}
        response = UnmaskResponse(
            self_mask_shares=tuple((p, held[p][0]) for p in sorted(survivors)),
            mask_key_shares=tuple((p, held[p][1]) for p in sorted(dropped)),
        )
        self._expect = None
        self._finished = True
        return [self._send(UNMASK, response.encode(digest))]

    def _checked_shares(self, sender: str, plaintext: bytes) -> tuple[Share, Share]:
        if len(plaintext) != 2 * SHARE_BYTES:
            raise ProtocolError(f"the share bundle from {sender!r} has the wrong size")
        b_share = Share.from_bytes(plaintext[:SHARE_BYTES])
        s_share = Share.from_bytes(plaintext[SHARE_BYTES:])
        index = self._graph.share_index(sender, self.name)
        for share in (b_share, s_share):
            if share.index != index or share.threshold != self._config.threshold:
                raise ProtocolError(f"{sender!r} sent shares at the wrong point")
        return b_share, s_share

    def _require_secrets(self) -> keys.SessionKeys:
        if self._secrets is None:
            raise ProtocolError(f"{self.name} has not started")
        return self._secrets

    def _require_advert(self) -> KeyAdvertisement:
        if self._advert is None:
            raise ProtocolError(f"{self.name} has not started")
        return self._advert

    def _require_own_shares(self) -> tuple[Share, Share]:
        if self._own_shares is None:
            raise ProtocolError(f"{self.name} has not shared its secrets")
        return self._own_shares

    def _send(self, stage: str, payload: bytes) -> Outbound:
        return Outbound(recipient=COORDINATOR, stage=stage, payload=payload)


def _identities_of(
    name: str,
    closed: tuple[str, ...],
    signing_key: Ed25519PrivateKey,
    peer_signing_keys: Mapping[str, Ed25519PublicKey],
) -> dict[str, Ed25519PublicKey]:
    missing = [p for p in closed if p != name and p not in peer_signing_keys]
    if missing:
        raise ConfigError(f"no identity key for neighbours {missing}")
    own = peer_signing_keys.get(name)
    if own is not None and own != signing_key.public_key():
        raise ConfigError(f"the identity key listed for {name!r} is not its own")
    return {p: peer_signing_keys[p] for p in closed if p != name}


def checked_input(vector: npt.ArrayLike, config: SecAggConfig) -> _Input:
    """``vector`` as the session's input: 1-D, its length, unsigned, in the ring and
    within a declared bound; ProtocolError naming what is wrong (never a value)."""
    values = np.asarray(vector)
    if values.ndim != 1 or values.size != config.vector_length:
        raise ProtocolError(
            f"input has shape {values.shape}; the session expects "
            f"({config.vector_length},)"
        )
    if not np.issubdtype(values.dtype, np.unsignedinteger):
        raise ProtocolError(
            f"input must be an unsigned integer (fixed-point encoded) vector, "
            f"not {values.dtype}"
        )
    bound = config.max_input
    if values.dtype.itemsize > config.element_bytes or bound is not None:
        top = int(values.max())
        if top >> config.modulus_bits:
            raise ProtocolError(
                f"input values exceed the {config.modulus_bits}-bit ring"
            )
        if bound is not None and top > bound:
            raise ProtocolError(
                f"input values exceed the session's declared bound {bound}"
            )
    return values
