"""Series rounds: a job's later SecAgg+ sessions in two stages, on the channel
keys its first, full, session certified — exact sums under every dropout the
threshold allows, no public-key operation, and a malicious coordinator refused."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pytest

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.party import COORDINATOR, Inbound, Outbound
from protocols.prg import expand_mask
from protocols.secagg import SecAggClient, SecAggConfig, SecAggServer, keys
from protocols.secagg.keys import ChannelKeys
from protocols.secagg.series import SeriesClient
from protocols.secagg.series_server import SeriesServer
from protocols.secagg.series_wire import (
    SERIES_INPUT,
    SERIES_UNMASK,
    SeriesInput,
    SeriesRequest,
    SeriesResponse,
    bundle_bytes,
    series_digest,
)
from protocols.secagg.simulate import drive, make_identities
from protocols.shamir import Share, combine

NAMES = ("p0", "p1", "p2", "p3", "p4")
SCOPE = "job-s/fedavg"
LENGTH = 12


def config(round_: int, parties: tuple[str, ...] = NAMES, **kw: Any) -> SecAggConfig:
    return SecAggConfig.create(
        session_id=f"job-s/fedavg/r{round_}", parties=parties, vector_length=LENGTH,
        threshold=kw.pop("threshold", 3), modulus_bits=64,
        key_scope=kw.pop("key_scope", SCOPE), **kw,
    )  # fmt: skip


class Job:
    """Five parties whose first session (round 0) was a full, scoped one."""

    def __init__(self) -> None:
        identities = make_identities(NAMES)
        public = {n: k.public_key() for n, k in identities.items()}
        self.channels = {n: ChannelKeys(os.urandom, SCOPE) for n in NAMES}
        self.inputs = {
            n: np.arange(LENGTH, dtype=np.uint64) * (i + 3) for i, n in enumerate(NAMES)
        }
        first = config(0)
        drive(
            SecAggServer(first, public),
            {n: SecAggClient(n, first, self.inputs[n], signing_key=identities[n],
                             peer_signing_keys=public, channel=self.channels[n])
             for n in NAMES},
        )  # fmt: skip

    def round(
        self, round_: int, parties: tuple[str, ...] = NAMES
    ) -> tuple[SeriesServer, dict[str, SeriesClient]]:
        cfg = config(round_, parties)
        clients = {
            n: SeriesClient(n, cfg, self.inputs[n], channel=self.channels[n])
            for n in parties
        }
        return SeriesServer(cfg), clients

    def expected(self, parties: set[str] | tuple[str, ...]) -> list[int]:
        return [int(v) for v in sum(self.inputs[n] for n in parties)]


@pytest.fixture(scope="module")
def job() -> Job:
    return Job()


def test_series_rounds_sum_exactly_with_no_public_key_operation(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"agree": 0, "verify": 0}
    agree, verify = keys.agree, keys._verify

    def counted_agree(*args: Any) -> bytes:
        calls["agree"] += 1
        return agree(*args)

    def counted_verify(*args: Any) -> None:
        calls["verify"] += 1
        verify(*args)

    monkeypatch.setattr(keys, "agree", counted_agree)
    monkeypatch.setattr(keys, "_verify", counted_verify)
    for round_ in (1, 2, 3):
        server, clients = job.round(round_)
        drive(server, clients)
        assert server.sum_vector().tolist() == job.expected(NAMES)
        assert server.result()["survivors"] == list(NAMES)
    # The agreements were made, and the certificates checked, in round 0.
    assert calls == {"agree": 0, "verify": 0}


@pytest.mark.parametrize(
    ("drops", "survivors"),
    [
        ({"p1": SERIES_INPUT}, ("p0", "p2", "p3", "p4")),
        ({"p2": SERIES_UNMASK}, NAMES),
        # p1 never sends; p3 sends and then leaves: p3's mask with p1 can only
        # come from p3's own dealing of that pair seed, held by the others.
        ({"p1": SERIES_INPUT, "p3": SERIES_UNMASK}, ("p0", "p2", "p3", "p4")),
        ({"p0": SERIES_INPUT, "p4": SERIES_INPUT}, ("p1", "p2", "p3")),
    ],
)
def test_dropouts_the_threshold_allows_leave_the_exact_sum(
    job: Job, drops: dict[str, str], survivors: tuple[str, ...]
) -> None:
    server, clients = job.round(10)
    drive(server, clients, drop_at=drops)
    assert server.result()["survivors"] == list(survivors)
    assert server.sum_vector().tolist() == job.expected(survivors)


def test_too_many_dropouts_abort_the_round(job: Job) -> None:
    server, clients = job.round(20)
    with pytest.raises(ProtocolAbort, match="threshold is 3"):
        drive(server, clients, drop_at={"p0": SERIES_INPUT, "p1": SERIES_INPUT,
                                        "p2": SERIES_UNMASK})  # fmt: skip
    assert not server.finished


def test_a_round_needs_every_partys_certified_channel_key(job: Job) -> None:
    fresh = ChannelKeys(os.urandom, SCOPE)
    with pytest.raises(ProtocolError, match=r"no certified channel key of \['p1'"):
        SeriesClient("p0", config(30), job.inputs["p0"], channel=fresh)


def test_a_series_configuration_is_complete_and_scoped(job: Job) -> None:
    with pytest.raises(ConfigError, match="complete graph only"):
        SeriesServer(config(31, graph="k-regular", degree=2, graph_seed=bytes(32)))
    with pytest.raises(ConfigError, match="key scope"):
        SeriesServer(config(31, key_scope=None))
    other = ChannelKeys(os.urandom, "job-t/fedavg")
    with pytest.raises(ConfigError, match="scope"):
        SeriesClient("p0", config(31), job.inputs["p0"], channel=other)
    assert series_digest(config(31)) != config(31).digest


# ------------------------------------------------ a malicious coordinator --
def inputs_of(
    job: Job, round_: int
) -> tuple[SecAggConfig, dict[str, SeriesClient], dict[str, SeriesInput]]:
    """Every client's SERIES_INPUT, as the coordinator receives them."""
    cfg = config(round_)
    clients = {
        n: SeriesClient(n, cfg, job.inputs[n], channel=job.channels[n]) for n in NAMES
    }
    sent = {}
    for name, client in clients.items():
        (out,) = client.start()
        sent[name] = SeriesInput.decode(
            out.payload, series_digest(cfg), length=LENGTH, dtype=cfg.dtype,
            bundle_size=bundle_bytes(cfg.n),
        )  # fmt: skip
    return cfg, clients, sent


def request(
    cfg: SecAggConfig, to: str, survivors: set[str], sent: dict[str, SeriesInput]
) -> Inbound:
    bundles = {s: sent[s].bundles[to] for s in survivors if s != to}
    dropped = tuple(sorted(set(cfg.parties) - survivors))
    body = SeriesRequest(tuple(sorted(survivors)), dropped, bundles)
    return Inbound(COORDINATOR, SERIES_UNMASK, body.encode(series_digest(cfg)))


def test_a_swapped_bundle_is_refused_and_nothing_revealed(job: Job) -> None:
    cfg, clients, sent = inputs_of(job, 40)
    message = request(cfg, "p0", set(NAMES), sent)
    body = SeriesRequest.decode(
        message.payload, series_digest(cfg), bundle_size=bundle_bytes(cfg.n)
    )
    swapped = dict(body.bundles)
    swapped["p1"], swapped["p2"] = swapped["p2"], swapped["p1"]
    forged = dataclasses.replace(body, bundles=swapped).encode(series_digest(cfg))
    with pytest.raises(ProtocolError, match="failed authentication"):
        clients["p0"].receive(dataclasses.replace(message, payload=forged))
    assert not clients["p0"].finished
    with pytest.raises(ProtocolAbort, match="already refused"):
        clients["p0"].receive(message)  # fails closed: not even the honest one


@pytest.mark.parametrize(
    ("survivors", "error"),
    [
        ({"p1", "p2", "p3", "p4"}, "reported dropped"),
        ({"p0", "p1"}, "threshold is 3"),
    ],
)
def test_a_false_account_of_the_survivors_is_refused(
    job: Job, survivors: set[str], error: str
) -> None:
    cfg, clients, sent = inputs_of(job, 41)
    with pytest.raises((ProtocolError, ProtocolAbort), match=error):
        clients["p0"].receive(request(cfg, "p0", survivors, sent))
    assert not clients["p0"].finished


def test_bundles_from_a_party_reported_dropped_are_refused(job: Job) -> None:
    cfg, clients, sent = inputs_of(job, 42)
    message = request(cfg, "p0", {"p0", "p2", "p3", "p4"}, sent)
    body = SeriesRequest.decode(
        message.payload, series_digest(cfg), bundle_size=bundle_bytes(cfg.n)
    )
    extra = {**body.bundles, "p1": sent["p1"].bundles["p0"]}
    forged = dataclasses.replace(body, bundles=extra).encode(series_digest(cfg))
    with pytest.raises(ProtocolError, match="other parties than the survivors"):
        clients["p0"].receive(dataclasses.replace(message, payload=forged))


def test_another_rounds_request_is_refused(job: Job) -> None:
    _, clients, _ = inputs_of(job, 43)
    other, _, other_sent = inputs_of(job, 44)
    with pytest.raises(ProtocolError, match="not a secagg/series-unmask message"):
        clients["p0"].receive(request(other, "p0", set(NAMES), other_sent))


def test_calling_a_sender_dropped_to_some_and_alive_to_others_keeps_its_input(
    job: Job,
) -> None:
    # p0 sent its input. The coordinator tells p1 and p2 that p0 dropped (so they
    # reveal their shares of the survivors' pair seeds with p0) and tells p0, p3
    # and p4 that everyone survived (so they reveal p0's self-mask shares).
    cfg, clients, sent = inputs_of(job, 45)
    responses = {}
    for name in NAMES:
        view = set(NAMES) - {"p0"} if name in ("p1", "p2") else set(NAMES)
        (out,) = clients[name].receive(request(cfg, name, view, sent))
        responses[name] = SeriesResponse.decode(out.payload, series_digest(cfg))
    index = {n: i for i, n in enumerate(NAMES, start=1)}
    self_mask = [Share(index[h], 3, r.self_mask["p0"])
                 for h, r in responses.items() if "p0" in r.self_mask]  # fmt: skip
    b0 = combine(self_mask)  # the coordinator does get p0's self-mask seed ...
    for peer in NAMES[1:]:
        pair = [Share(index[h], 3, r.pair[(peer, "p0")])
                for h, r in responses.items() if (peer, "p0") in r.pair]  # fmt: skip
        # ... but no pair seed of p0 with a survivor: two shares, threshold 3.
        assert len(pair) == 2
        with pytest.raises(ProtocolAbort, match="threshold is 3"):
            combine(pair)
    # So p0's vector stays masked by its pair masks, once its self-mask is gone.
    exposed = sent["p0"].vector - expand_mask(b0, LENGTH, 64)
    assert exposed.tolist() != job.inputs["p0"].tolist()


def test_a_node_answering_another_request_is_refused_by_the_coordinator(
    job: Job,
) -> None:
    cfg, _, sent = inputs_of(job, 46)
    server = SeriesServer(cfg)
    server.start()
    out: list[Outbound] = []
    for name in NAMES:
        payload = SeriesInput(sent[name].vector, sent[name].bundles).encode(
            series_digest(cfg)
        )
        out += server.receive(Inbound(name, SERIES_INPUT, payload))
    assert {o.recipient for o in out} == set(NAMES)
    forged = SeriesResponse({"p0": 1}, {}).encode(series_digest(cfg))
    with pytest.raises(ProtocolError, match="did not answer the unmask request"):
        server.receive(Inbound("p1", SERIES_UNMASK, forged))
