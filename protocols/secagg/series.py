"""A series round: SecAgg+ for the second and later sessions of one job on the
complete graph, in two stages instead of four, with no public-key operation.

A job's first session (the full protocol under a ``key_scope``) leaves every
party holding each other party's certified channel key (``keys.ChannelKeys``)
and their X25519 agreement ``K_ij``. A later round of the same job, over parties
all certified there, derives everything else from those agreements:

* per pair and round, ``keys.round_pair_keys(K_ij, D_r)``, ``D_r`` the round's
  ``series_digest``: the pair's mask seed ``m_ij`` and the two bundle keys;
* per party and round, a fresh self-mask seed ``b_i``.

**SERIES_INPUT** (node -> coordinator). Party ``i`` Shamir-shares (threshold
``t``, one share per party, ``shamir.split_values``) ``b_i`` and every ``m_ij``
separately, sends each other party its shares encrypted under the pair's bundle
key (ChaCha20-Poly1305, associated data: digest and both names), and sends
``y_i = x_i + PRG(b_i) + sum_j +-PRG(m_ij)`` over **every** other party of the
round (the smaller name adds).

**SERIES_UNMASK**. The coordinator names the senders ``U`` (survivors) and the
rest ``D`` (dropped), and forwards to each survivor the bundles the other
survivors addressed to it. Each survivor checks that ``U`` and ``D`` partition the
round's parties, that it is in ``U``, that ``|U| >= t``, that its holder approves
``U``, and opens every bundle; only then does it answer with its share of each
``b_i`` (``i`` in ``U``) and of each ``m_ij`` (``i`` in ``U``, ``j`` in ``D``) as
``i`` dealt it. The coordinator recombines them and subtracts.

What each party learns, and why it is SecAgg+'s guarantee:

* **The coordinator** sees ``y_i``, masked by ``PRG(b_i)``; to remove a
  survivor's pair masks with other survivors it needs ``m_ij`` for a survivor
  ``j``, which an honest party reveals only with ``j`` reported dropped, while
  ``b_i`` is revealed only with ``i`` reported surviving. Those are the two
  secrets of the full protocol (``b_i`` and the mask key that yields a dropped
  party's pair seeds), kept apart by the same rule and threshold (``t`` above
  half the parties), with the same limit where the coordinator tells different
  parties different survivor sets (``graph``'s module docstring). Shares travel
  only under bundle keys from certified agreements it cannot compute, so it
  cannot read, alter or re-route one (the AEAD refuses), and it never chose a
  key: no key is sent in a series round at all.
* **A party** learns the shares addressed to it (below the threshold) and the
  pair seeds it shares anyway; never another party's input.
* **Coordinator and ``c`` colluding parties** learn no more than in the full
  protocol at the same threshold: the sum of the honest survivors, and inputs
  only if ``c`` reaches the bounds of ``config``/``bounds``.

Dropouts. Before SERIES_INPUT: its pair masks on the survivors' inputs are
removed from the survivors' own dealings of those seeds. During SERIES_UNMASK:
its input is in the sum, and ``t`` other survivors hold every share needed.
The round aborts below ``t``. Because pair seeds are shared separately, a party
that dropped before its input *and* a neighbour that dropped after still leave
a sum that unmasks (as in the full protocol).

Assumptions named: ``K_ij`` serves every round of the job (no forward secrecy
between rounds; the cost of a stolen ``c_sk`` is the job's bundles, as for
``ChannelKeys``); each round's digest must be fresh within the job (the session
id carries the round), or two rounds' pair masks would coincide — ``fedavg``
opens each round once, in order. Complete graph only: on a sparse graph a
holder could not check the dropped set around its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

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
from protocols.secagg.client import checked_input
from protocols.secagg.config import SecAggConfig
from protocols.secagg.messages import encode_name
from protocols.secagg.series_wire import (
    SERIES_INPUT,
    SERIES_UNMASK,
    SeriesInput,
    SeriesRequest,
    SeriesResponse,
    bundle_bytes,
    decode_values,
    encode_values,
    series_digest,
)
from protocols.shamir import split_values

_AD_DOMAIN = b"cleanroom/secagg/v1/series-bundle\x00"


def bundle_ad(digest: bytes, sender: str, recipient: str) -> bytes:
    """What a series bundle's AEAD binds: domain, round digest and both names."""
    return _AD_DOMAIN + digest + encode_name(sender) + encode_name(recipient)


def check_series_config(config: SecAggConfig) -> None:
    """ConfigError unless ``config`` can run as a series round."""
    if config.graph != "complete":
        raise ConfigError("a series round runs on the complete graph only")
    if config.key_scope is None:
        raise ConfigError("a series round needs the job's key scope")


class SeriesClient(NodeParty):
    """One data holder's side of a series round (the module docstring).

    Built with the job's ``ChannelKeys``, which must hold a certified channel key
    of every other party of the round (the job's first, full, session checked
    them). Like ``SecAggClient`` it keeps a reference to the encoded vector until
    it masks it, and fails closed: after one refusal it refuses everything.
    """

    def __init__(
        self,
        name: str,
        config: SecAggConfig,
        vector: npt.ArrayLike,
        *,
        channel: keys.ChannelKeys,
        random: RandomSource = SYSTEM_RANDOM,
        approve_survivors: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        check_series_config(config)
        if name not in config.parties:
            raise ConfigError(f"{name!r} is not a party of session {config.session_id}")
        if channel.scope != config.key_scope:
            raise ConfigError(
                f"session {config.session_id} needs channel keys of scope "
                f"{config.key_scope!r}"
            )
        self.name = name
        self._config = config
        self._digest = series_digest(config)
        self._peers = tuple(p for p in config.parties if p != name)
        known = {p: channel.certified_key(p) for p in self._peers}
        missing = sorted(p for p, k in known.items() if k is None)
        if missing:
            raise ProtocolError(
                f"{name} holds no certified channel key of {missing}; a series "
                "round follows a full session of the job over the same parties"
            )
        self._channel = channel
        self._keys = {p: k for p, k in known.items() if k is not None}
        self._random = random
        self._approve = approve_survivors
        self._vector: npt.NDArray[np.unsignedinteger] | None = checked_input(
            vector, config
        )
        self._index = {p: i for i, p in enumerate(config.parties, start=1)}
        self._bundle_keys: dict[str, bytes] = {}
        self._own: list[int] = []
        self._started = False
        self._finished = False
        self._refused: str | None = None

    @property
    def finished(self) -> bool:
        """True once this party's unmasking shares have been sent."""
        return self._finished

    def start(self) -> list[Outbound]:
        """SERIES_INPUT: share the round's secrets and send the masked vector."""
        if self._started:
            raise ProtocolError(f"{self.name} has already started")
        self._started = True
        config, digest = self._config, self._digest
        b = keys.draw(self._random, keys.KEY_BYTES)
        seeds: list[bytes] = []
        add: list[bytes] = [b]
        subtract: list[bytes] = []
        for peer in self._peers:
            shared = self._channel.agree(self._keys[peer], peer)
            seed, self._bundle_keys[peer] = keys.round_pair_keys(
                shared, digest, self.name, peer
            )
            seeds.append(seed)
            (add if keys.adds_pair_mask(self.name, peer) else subtract).append(seed)
        values = split_values([b, *seeds], config.threshold, config.n, self._random)
        self._own = values[self._index[self.name] - 1]
        bundles = {
            peer: ChaCha20Poly1305(self._bundle_keys[peer]).encrypt(
                keys.bundle_nonce(self.name, peer),
                encode_values(values[self._index[peer] - 1]),
                bundle_ad(digest, self.name, peer),
            )
            for peer in self._peers
        }
        vector, self._vector = self._vector, None
        if vector is None:
            raise ProtocolError(f"{self.name} has no input left to mask")
        masked = masked_copy(vector, config.modulus_bits, add=add, subtract=subtract)
        payload = SeriesInput(masked, bundles).encode(digest)
        return [Outbound(COORDINATOR, SERIES_INPUT, payload)]

    def receive(self, message: Inbound) -> list[Outbound]:
        """SERIES_UNMASK: check the coordinator's account, then answer it."""
        if self._refused is not None:
            raise ProtocolAbort(f"{self.name} already refused: {self._refused}")
        if message.sender != COORDINATOR:
            raise ProtocolError(
                f"{self.name} only accepts messages from the coordinator"
            )
        if not self._started or self._finished:
            state = "finished" if self._finished else "not started"
            raise ProtocolError(f"{self.name} is {state}; refusing {message.stage}")
        if message.stage != SERIES_UNMASK:
            raise ProtocolError(
                f"{self.name} expected a {SERIES_UNMASK} message, got {message.stage}"
            )
        try:
            return self._on_request(message.payload)
        except ProtocolError as exc:
            self._refused = str(exc)
            raise

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        """Peers dropping out is the coordinator's business; losing it is fatal."""
        if COORDINATOR in parties:
            raise ProtocolAbort("the coordinator went away")
        return []

    def _on_request(self, payload: bytes) -> list[Outbound]:
        config, digest, t = self._config, self._digest, self._config.threshold
        request = SeriesRequest.decode(
            payload, digest, bundle_size=bundle_bytes(config.n)
        )
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise ProtocolError(
                f"the coordinator reports {sorted(survivors & dropped)} as both "
                "dropped and surviving"
            )
        if survivors | dropped != set(config.parties):
            raise ProtocolError("the coordinator does not account for every party")
        if self.name not in survivors:
            raise ProtocolError(f"{self.name} sent its input but is reported dropped")
        if len(survivors) < t:
            # Unmasking fewer than t inputs could expose an individual contribution.
            raise ProtocolAbort(f"only {len(survivors)} survivors; threshold is {t}")
        if set(request.bundles) != survivors - {self.name}:
            raise ProtocolError(
                "the coordinator forwards bundles from other parties than the "
                "survivors it names"
            )
        if self._approve is not None:
            self._approve(frozenset(survivors))  # the holder's own rule
        held = {self.name: self._own}
        for sender, ciphertext in request.bundles.items():
            try:
                plaintext = ChaCha20Poly1305(self._bundle_keys[sender]).decrypt(
                    keys.bundle_nonce(sender, self.name),
                    ciphertext,
                    bundle_ad(digest, sender, self.name),
                )
            except InvalidTag:
                raise ProtocolError(
                    f"the share bundle from {sender!r} failed authentication"
                ) from None
            held[sender] = decode_values(plaintext)
        index = self._index
        pair: dict[tuple[str, str], int] = {}
        for owner in survivors:
            values = held[owner]
            for peer in dropped:
                # The owner's bundle holds its self-mask share, then its peers'
                # seeds in party order (1-based positions, the owner's own skipped).
                k = index[peer] - (1 if index[peer] > index[owner] else 0)
                pair[(owner, peer)] = values[k]
        response = SeriesResponse({o: held[o][0] for o in survivors}, pair)
        self._finished = True
        return [Outbound(COORDINATOR, SERIES_UNMASK, response.encode(digest))]
