"""The k-regular graph comes from the analyst-signed seed alone; mismatches fail."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.errors import ConfigError, ProtocolError
from protocols.party import COORDINATOR, Inbound
from protocols.secagg import ADVERTISE_KEYS, SecAggConfig
from protocols.secagg.graph import build_graph, graph_seed_from
from protocols.secagg.messages import KeySet
from protocols.secagg.simulate import build_session, drive, plaintext_sum

NAMES = tuple(f"p{i:02d}" for i in range(24))  # the session identities' names
REQUEST = b'{"type":"secure_stats","nonce":"5b0c...","inputs":["p00","p01"]}'


@pytest.fixture(scope="module")
def analyst() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def config(
    seed: bytes,
    parties: tuple[str, ...] = NAMES,
    session_id: str = "job-1",
    **extra: object,
) -> SecAggConfig:
    return SecAggConfig.create(
        session_id=session_id,
        parties=parties,
        vector_length=8,
        graph="k-regular",
        graph_seed=seed,
        **extra,  # type: ignore[arg-type]
    )


def test_the_seed_is_the_analysts_signed_request(analyst: Ed25519PrivateKey) -> None:
    signature = analyst.sign(REQUEST)
    seed = graph_seed_from(REQUEST, signature, analyst.public_key())
    assert len(seed) == 32
    assert seed == graph_seed_from(REQUEST, signature, analyst.public_key())
    # The coordinator can neither alter the request (say, another nonce) nor sign
    # one of its own: both are refused, so it has no seed to choose from.
    altered = REQUEST.replace(b"5b0c", b"5b0d")
    with pytest.raises(ConfigError, match="not signed by the analyst"):
        graph_seed_from(altered, signature, analyst.public_key())
    forged = Ed25519PrivateKey.generate().sign(altered)
    with pytest.raises(ConfigError, match="not signed by the analyst"):
        graph_seed_from(altered, forged, analyst.public_key())
    other = graph_seed_from(altered, analyst.sign(altered), analyst.public_key())
    assert build_graph(config(other)) != build_graph(config(seed))


def test_every_party_derives_the_same_graph(
    secagg_identities: dict[str, Ed25519PrivateKey],
) -> None:
    seed = hashlib.sha256(b"seed").digest()
    reference = build_graph(config(seed))
    # Parties build their configs independently, from lists in any order.
    for shuffle in range(3):
        order = list(NAMES)
        np.random.default_rng(shuffle).shuffle(order)
        assert build_graph(config(seed, tuple(order))) == reference
    cfg = config(seed)
    assert 0 < cfg.degree < cfg.n - 1
    rng = np.random.default_rng(1)
    inputs = {p: rng.integers(0, 2**63, 8, dtype=np.uint64) for p in cfg.parties}
    server, clients = build_session(inputs, cfg, identities=secagg_identities)
    drive(server, clients)
    assert np.array_equal(server.sum_vector(), plaintext_sum(inputs, cfg, list(NAMES)))


def test_the_job_id_the_coordinator_picks_does_not_move_the_graph() -> None:
    seed = bytes(range(32))
    graphs = {build_graph(config(seed, session_id=f"job-{i}")) for i in range(20)}
    assert len(graphs) == 1


def test_dropping_parties_cannot_reorder_the_rest() -> None:
    seed = bytes(range(32))
    whole = build_graph(config(seed)).order
    subset = NAMES[:5] + NAMES[9:]
    part = build_graph(config(seed, subset, degree=6)).order
    assert part == tuple(p for p in whole if p in subset)


def test_a_party_list_changed_by_the_coordinator_is_detected(
    secagg_identities: dict[str, Ed25519PrivateKey],
) -> None:
    # The nodes hold the analyst-signed input list; a coordinator that drops one
    # name to shift its neighbours' windows runs another configuration, and the
    # nodes' first message is refused before any key is used.
    seed = bytes(range(32))
    honest = config(seed)
    shrunk = config(seed, NAMES[1:])
    assert build_graph(honest) != build_graph(shrunk)
    inputs = {p: np.zeros(8, dtype=np.uint64) for p in honest.parties}
    _, clients = build_session(inputs, honest, identities=secagg_identities)
    shrunk_inputs = {p: inputs[p] for p in shrunk.parties}
    server, _ = build_session(shrunk_inputs, shrunk, identities=secagg_identities)
    server.start()
    (advert,) = clients["p05"].start()
    with pytest.raises(ProtocolError, match="another session or configuration"):
        server.receive(Inbound("p05", advert.stage, advert.payload))


def test_a_mismatched_seed_is_refused_in_both_directions(
    secagg_identities: dict[str, Ed25519PrivateKey],
) -> None:
    mine, theirs = config(b"m" * 32), config(b"t" * 32)
    assert mine.digest != theirs.digest
    inputs = {p: np.zeros(8, dtype=np.uint64) for p in NAMES}
    server, _ = build_session(inputs, mine, identities=secagg_identities)
    _, strangers = build_session(inputs, theirs, identities=secagg_identities)
    server.start()
    (advert,) = strangers["p00"].start()
    assert advert.stage == ADVERTISE_KEYS
    with pytest.raises(ProtocolError, match="another session or configuration"):
        server.receive(Inbound("p00", advert.stage, advert.payload))
    # A coordinator on the other seed cannot feed this session's clients either.
    other_server, _ = build_session(inputs, theirs, identities=secagg_identities)
    _, clients = build_session(inputs, mine, identities=secagg_identities)
    other_server.start()
    out = []
    for name, client in strangers.items():
        for message in client.start() if name != "p00" else [advert]:
            out += other_server.receive(Inbound(name, message.stage, message.payload))
    key_set = next(m for m in out if m.recipient == "p01")
    clients["p01"].start()
    with pytest.raises(ProtocolError, match="another session or configuration"):
        clients["p01"].receive(Inbound(COORDINATOR, key_set.stage, key_set.payload))


def test_advert_signatures_commit_each_node_to_its_seed(
    secagg_identities: dict[str, Ed25519PrivateKey],
) -> None:
    # Re-headed for this session, an advert signed under another seed still fails:
    # the signature covers the configuration digest, and so the graph seed.
    mine, theirs = config(b"m" * 32), config(b"t" * 32)
    inputs = {p: np.zeros(8, dtype=np.uint64) for p in NAMES}
    server, _ = build_session(inputs, mine, identities=secagg_identities)
    _, strangers = build_session(inputs, theirs, identities=secagg_identities)
    server.start()
    (advert,) = strangers["p03"].start()
    reheaded = advert.payload[:4] + mine.digest + advert.payload[36:]
    with pytest.raises(ProtocolError, match="not signed by it"):
        server.receive(Inbound("p03", ADVERTISE_KEYS, reheaded))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"graph": "k-regular"}, "needs a graph_seed"),
        ({"graph": "k-regular", "graph_seed": b"short"}, "32 bytes"),
        ({"graph": "k-regular", "graph_seed": "x" * 32}, "32 bytes"),
        ({"graph_seed": bytes(32)}, "complete graph takes no graph_seed"),
    ],
)
def test_seed_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SecAggConfig.create(
            session_id="s",
            parties=NAMES,
            vector_length=4,
            **kwargs,  # type: ignore[arg-type]
        )


def test_a_dropout_before_the_key_sets_leaves_every_other_neighbourhood(
    secagg_identities: dict[str, Ed25519PrivateKey],
) -> None:
    # The coordinator learns of (or claims) a dropout before it sends the key
    # sets; each key set is still the neighbourhood fixed by the seed, less the
    # dropped party: nobody moves up into the gap.
    cfg = config(bytes(range(32)))
    graph = build_graph(cfg)
    inputs = {p: np.ones(8, dtype=np.uint64) for p in NAMES}
    server, clients = build_session(inputs, cfg, identities=secagg_identities)
    server.start()
    for name, client in clients.items():
        if name != "p07":
            (advert,) = client.start()
            server.receive(Inbound(name, advert.stage, advert.payload))
    key_sets = server.dropped(frozenset({"p07"}))
    assert len(key_sets) == len(NAMES) - 1
    for message in key_sets:
        members = {a.party for a in KeySet.decode(message.payload, cfg.digest).adverts}
        assert members == set(graph.closed_of(message.recipient)) - {"p07"}
    assert any("p07" in graph.closed_of(m.recipient) for m in key_sets)
