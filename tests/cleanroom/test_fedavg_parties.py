"""The ``fedavg`` parties driven in one process (``cleanroom.jobtypes.simulate``)
at a size the in-process federation is too slow for: 40 nodes on SecAgg+'s sparse
k-regular graph, with dropouts, against the same training without SecAgg+."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cleanroom import jobtypes
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.fedavg.parties import secagg_config
from cleanroom.jobtypes.simulate import drive
from protocols.secagg.messages import MASKED_INPUT
from protocols.secagg.series_wire import SERIES_INPUT, SERIES_UNMASK

NODES = tuple(f"n{i:02d}" for i in range(40))
KEYS = {n: Ed25519PrivateKey.generate() for n in NODES}
PUBLICS = {
    n: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    for n, k in KEYS.items()
}
SEED = hashlib.sha256(b"graph seed of a signed request").digest()


def _frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(3)
    out = {}
    for n in NODES:
        x = rng.normal(size=(40, 4))
        y = x @ np.array([1.0, -1.0, 0.5, 0.0]) + rng.normal(0, 0.3, 40) > 0
        out[n] = pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(y=y.astype(int))
    return out


def _spec(**params: Any) -> Any:
    doc = {
        "type": "fedavg",
        "inputs": [{"node": n, "dataset": "d"} for n in NODES],
        "purpose": "research",
        "params": {
            "features": ["a", "b", "c", "d"],
            "label": "y",
            "feature_bounds": {k: [-6.0, 6.0] for k in "abcd"},
            "rounds": 4,
            "max_rows": 100,
            "threshold": 20,
            "patience": None,
            **params,
        },
    }
    return parse_spec(json.dumps(doc))


def _run(spec: Any, drop_at: dict[str, str] | None = None) -> Any:
    job = jobtypes.get("fedavg")
    coordinator = job.coordinator_party(
        jobtypes.CoordinatorContext("job-1", spec, NODES, PUBLICS, graph_seed=SEED)
    )
    nodes = {
        n: job.node_party(
            jobtypes.NodeContext(
                "job-1",
                spec,
                n,
                "d",
                frame,
                "hash",
                5,
                KEYS[n],
                NODES,
                PUBLICS,
                random=random.Random(f"seed-{n}").randbytes,
                graph_seed=SEED,
                min_inputs=20,
            )
        )
        for n, frame in _frames().items()
    }
    analyst = job.analyst_party(
        jobtypes.AnalystContext(
            "job-1", spec, "alice", NODES, Ed25519PrivateKey.generate(), PUBLICS
        )
    )
    return drive(coordinator, nodes, analyst, drop_at=drop_at)


def test_forty_nodes_train_on_the_sparse_graph_with_dropouts() -> None:
    spec = _spec(graph="k-regular")
    config = secagg_config(jobtypes.get("fedavg").params(spec), "job-1", 1, NODES,
                           10, SEED)  # fmt: skip
    assert config.graph == "k-regular" and config.degree < len(NODES) - 1
    run = _run(spec, drop_at={"n07": f"r2/{MASKED_INPUT}", "n31": "r3/secagg/unmask"})
    assert run.opened is not None
    # n31 left after its round-3 input was in the sum: it is out from round 4 on.
    assert run.result["dropped"] == ["n07", "n31"]
    assert len(run.result["survivors"]) == 38
    assert run.result["rounds_run"] == 5
    # The same federation on the complete graph, where every training round is a
    # two-stage series round, with the same nodes dropping at the same points:
    # the same sums every round, so the same history and model — the sparse
    # graph costs no accuracy, and series rounds release what full sessions do.
    dense = _run(
        _spec(graph="complete"),
        drop_at={"n07": f"r2/{SERIES_INPUT}", "n31": f"r3/{SERIES_UNMASK}"},
    )
    assert dense.opened is not None
    assert dense.result["dropped"] == ["n07", "n31"]
    assert dense.result["history"] == run.result["history"]
    assert dense.opened["model"] == run.opened["model"]
    accuracy = run.result["history"][-1]["val_accuracy"]
    assert accuracy is not None and accuracy > 0.85


def _session(round_: int, names: tuple[str, ...]) -> Any:
    from protocols.secagg import SecAggConfig

    return SecAggConfig.create(session_id=f"job-1/fedavg/r{round_}", parties=names,
                               vector_length=8, modulus_bits=64)  # fmt: skip


def _until_forwarded(server: Any, clients: dict[str, Any], target: str) -> bytes:
    """Deliver messages in order until the coordinator forwards ``target`` its
    share bundles; return that (undelivered) payload."""
    from protocols.party import COORDINATOR, Inbound

    queue = [(COORDINATOR, o) for o in server.start()]
    queue += [(n, o) for n, c in clients.items() for o in c.start()]
    while queue:
        sender, out = queue.pop(0)
        message = Inbound(sender, out.stage, out.payload)
        if out.recipient == COORDINATOR:
            queue += [(COORDINATOR, o) for o in server.receive(message)]
        elif out.recipient == target and out.stage == MASKED_INPUT:
            return bytes(out.payload)
        else:
            queue += [(out.recipient, o) for o in
                      clients[out.recipient].receive(message)]  # fmt: skip
    raise AssertionError("the bundles were never forwarded")


def test_share_bundle_keys_kept_for_a_job_are_bound_to_each_session() -> None:
    """FedNode keeps one ``ChannelKeys`` for all its rounds: every round still
    sums right, and a coordinator that replays the share bundles a node got in
    round 1 into round 2 (re-framed for round 2) is refused: each session's
    bundle keys are its own."""
    import pytest

    from cleanroom.errors import ProtocolError
    from protocols.party import COORDINATOR, Inbound
    from protocols.secagg import SecAggClient, SecAggServer
    from protocols.secagg.keys import ChannelKeys
    from protocols.secagg.messages import ForwardedShares
    from protocols.secagg.simulate import drive, make_identities

    names = ("a", "b", "c", "d")
    ids = make_identities(names)
    public = {n: k.public_key() for n, k in ids.items()}
    channels = {n: ChannelKeys(random.Random(n).randbytes) for n in names}
    inputs = {n: np.arange(8, dtype=np.uint64) * (i + 1)
              for i, n in enumerate(names)}  # fmt: skip

    def session(round_: int) -> tuple[Any, Any, dict[str, SecAggClient]]:
        config = _session(round_, names)
        clients = {n: SecAggClient(n, config, inputs[n], signing_key=ids[n],
                                   peer_signing_keys=public, channel=channels[n])
                   for n in names}  # fmt: skip
        return config, SecAggServer(config, public), clients

    for round_ in (1, 2):
        _, server, clients = session(round_)
        drive(server, clients)
        assert list(server.sum_vector()) == [10 * k for k in range(8)]

    config1, server, clients = session(3)
    old = ForwardedShares.decode(_until_forwarded(server, clients, "b"),
                                 config1.digest).by_sender  # fmt: skip
    config2, server, clients = session(4)
    _until_forwarded(server, clients, "b")
    replay = ForwardedShares(old).encode(config2.digest)
    with pytest.raises(ProtocolError, match="failed authentication"):
        clients["b"].receive(Inbound(COORDINATOR, MASKED_INPUT, replay))
