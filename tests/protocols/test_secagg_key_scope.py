"""SecAgg+ sessions under a key scope: channel keys certified once per job, each
round's mask keys authenticated pairwise by the share bundles, and what a
malicious coordinator can no longer do."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from helpers.secagg import Rewrite, TamperingCoordinator

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.party import CoordinatorParty, Inbound, Outbound, Party
from protocols.secagg import (
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)
from protocols.secagg import keys as secagg_keys
from protocols.secagg.keys import ChannelKeys
from protocols.secagg.messages import KeySet
from protocols.secagg.simulate import drive, make_identities

NAMES = ("p0", "p1", "p2", "p3", "p4")
SCOPE = "job-a/fedavg"


class CountingKey:
    """An identity key that counts its signatures (and signs for real)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key, self.signed = key, 0

    def sign(self, data: bytes) -> bytes:
        self.signed += 1
        return self.key.sign(data)

    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()


class Job:
    """Five parties running a series of sessions under one key scope, as FedNode."""

    def __init__(self, scope: str = SCOPE) -> None:
        self.scope = scope
        self.identities = {n: CountingKey(k) for n, k in make_identities(NAMES).items()}
        self.public = {n: k.public_key() for n, k in self.identities.items()}
        self.channels = {n: ChannelKeys(os.urandom, scope) for n in NAMES}
        self.inputs = {
            n: np.arange(12, dtype=np.uint64) * (i + 1) for i, n in enumerate(NAMES)
        }

    def session(
        self, round_: int
    ) -> tuple[SecAggConfig, SecAggServer, dict[str, SecAggClient]]:
        config = SecAggConfig.create(
            session_id=f"job-a/fedavg/r{round_}",
            parties=NAMES,
            vector_length=12,
            threshold=3,
            modulus_bits=64,
            key_scope=self.scope,
        )
        clients = {
            n: SecAggClient(
                n,
                config,
                self.inputs[n],
                signing_key=self.identities[n],  # type: ignore[arg-type]
                peer_signing_keys=self.public,
                channel=self.channels[n],
            )
            for n in NAMES
        }
        return config, SecAggServer(config, self.public), clients

    def expected(self, survivors: tuple[str, ...]) -> list[int]:
        return [int(v) for v in sum(self.inputs[n] for n in survivors)]


class Recorder(Party):
    """Test double around a real client: records what it sends and what it
    refuses, and goes quiet after a refusal instead of raising."""

    def __init__(self, inner: SecAggClient) -> None:
        self.inner = inner
        self.sent: list[str] = []
        self.refused: str | None = None

    def start(self) -> list[Outbound]:
        return self._record(self.inner.start())

    def receive(self, message: Inbound) -> list[Outbound]:
        try:
            return self._record(self.inner.receive(message))
        except ProtocolError as exc:
            self.refused = str(exc)
            return []

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def _record(self, out: list[Outbound]) -> list[Outbound]:
        self.sent += [o.stage for o in out]
        return out


def key_set_edit(
    recipient: str, config: SecAggConfig, edit: Callable[[Any], Any]
) -> Rewrite:
    """Rewrite the adverts in ``recipient``'s key set with ``edit``."""

    def rewrite(o: Outbound) -> list[Outbound]:
        if o.recipient != recipient or o.stage != SHARE_KEYS:
            return [o]
        received = KeySet.decode(o.payload, config.digest).adverts
        adverts = tuple(edit(a) for a in received)
        return [dataclasses.replace(o, payload=KeySet(adverts).encode(config.digest))]

    return rewrite


def run_recorded(
    server: CoordinatorParty, clients: Mapping[str, SecAggClient]
) -> dict[str, Recorder]:
    nodes = {n: Recorder(c) for n, c in clients.items()}
    with pytest.raises(ProtocolAbort, match="went quiet"):
        drive(server, nodes)
    return nodes


# ---- honest runs --------------------------------------------------------------------


def test_a_job_signs_and_checks_each_channel_key_once_and_every_round_sums(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three rounds under one scope: exact sums (one with a party dropping before
    its masked input), one signature per party for the whole job, and each
    neighbour's certificate verified once per client, none by the coordinator."""
    verified: list[str] = []
    real = secagg_keys._verify

    def counting(signature: bytes, signed: bytes, identity: Any, party: str) -> None:
        verified.append(party)
        real(signature, signed, identity, party)

    monkeypatch.setattr(secagg_keys, "_verify", counting)
    job = Job()
    for round_, drop in ((1, None), (2, "p3"), (3, None)):
        _, server, clients = job.session(round_)
        drive(server, clients, drop_at={drop: MASKED_INPUT} if drop else None)
        survivors = tuple(n for n in NAMES if n != drop)
        assert list(server.sum_vector()) == job.expected(survivors)
        assert sorted(server.survivors) == list(survivors)
    assert [k.signed for k in job.identities.values()] == [1] * len(NAMES)
    # 5 clients x 4 neighbours, once each; three rounds would be 60 per-round checks.
    assert len(verified) == len(NAMES) * (len(NAMES) - 1)


def test_a_party_dropping_at_unmask_leaves_the_exact_sum() -> None:
    job = Job()
    _, server, clients = job.session(1)
    drive(server, clients, drop_at={"p2": UNMASK})
    assert list(server.sum_vector()) == job.expected(NAMES)


def test_the_fast_hkdf_is_rfc_5869_hkdf_sha256() -> None:
    for length in (1, 32, 64, 100):
        for _ in range(5):
            shared, salt, info = os.urandom(32), os.urandom(32), os.urandom(40)
            reference = HKDF(
                algorithm=hashes.SHA256(), length=length, salt=salt, info=info
            ).derive(shared)
            assert secagg_keys._hkdf(shared, salt, info, length) == reference


# ---- configuration ------------------------------------------------------------------


def test_a_scoped_session_needs_channel_keys_of_its_scope() -> None:
    job = Job()
    config, _, _ = job.session(1)
    ids = {n: k.key for n, k in job.identities.items()}
    wrong = (None, ChannelKeys(os.urandom, "job-b/fedavg"), ChannelKeys(os.urandom))
    for channel in wrong:
        with pytest.raises(ConfigError, match="scope 'job-a/fedavg'"):
            SecAggClient("p0", config, job.inputs["p0"], signing_key=ids["p0"],
                         peer_signing_keys=job.public, channel=channel)  # fmt: skip
    other = dataclasses.replace(config, key_scope="job-b/fedavg")
    unscoped = dataclasses.replace(config, key_scope=None)
    assert len({config.digest, other.digest, unscoped.digest}) == 3
    with pytest.raises(ConfigError, match="key_scope"):
        dataclasses.replace(config, key_scope="")


# ---- a malicious coordinator --------------------------------------------------------


def test_a_substituted_mask_key_is_refused_by_both_ends_before_any_masking() -> None:
    """The certificate covers only the channel key, so the coordinator can swap
    p1's fresh mask key in p0's key set for one it holds. The bundles' associated
    data carries both mask keys as each end saw them, so p0 and p1 each refuse the
    other's bundle, and neither sends a masked input: no mask is ever made with
    the coordinator's key."""
    job = Job()
    config, server, clients = job.session(1)
    own = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def swap(advert: Any) -> Any:
        return dataclasses.replace(advert, s_pk=own) if advert.party == "p1" else advert

    nodes = run_recorded(
        TamperingCoordinator(server, key_set_edit("p0", config, swap)), clients
    )
    for victim in ("p0", "p1"):
        assert nodes[victim].refused is not None
        assert "failed authentication" in nodes[victim].refused
        assert MASKED_INPUT not in nodes[victim].sent
    assert all(nodes[n].refused is None for n in ("p2", "p3", "p4"))


def test_a_certificate_over_another_channel_key_is_refused() -> None:
    job = Job()
    config, server, clients = job.session(1)
    own = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def swap(advert: Any) -> Any:
        return dataclasses.replace(advert, c_pk=own) if advert.party == "p1" else advert

    with pytest.raises(ProtocolError, match="advertised for 'p1' are not signed"):
        drive(TamperingCoordinator(server, key_set_edit("p0", config, swap)), clients)


def test_a_certificate_from_another_job_is_refused() -> None:
    """p1's genuine certificate and keys from job B, replayed into job A's key set."""
    job = Job()
    config, server, clients = job.session(1)
    other = Job(scope="job-b/fedavg")
    other.identities["p1"] = job.identities["p1"]  # the same node, another job
    other.public = {n: k.public_key() for n, k in other.identities.items()}
    config_b, _, clients_b = other.session(1)
    advert_b = _advertised(config_b, clients_b["p1"].start()[0].payload)

    def swap(advert: Any) -> Any:
        return advert_b if advert.party == "p1" else advert

    with pytest.raises(ProtocolError, match="advertised for 'p1' are not signed"):
        drive(TamperingCoordinator(server, key_set_edit("p0", config, swap)), clients)


def _advertised(config: SecAggConfig, payload: bytes) -> Any:
    from protocols.secagg.messages import KeyAdvertisement

    return KeyAdvertisement.decode(payload, config.digest)
