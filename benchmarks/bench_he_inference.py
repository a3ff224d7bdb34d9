"""CKKS private inference: rows x 30 features scored by a logistic model, in
process (the protocol) and as an ``he_inference`` job over gRPC (the product)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from benchmarks.federation import DATASET, LocalFederation, job_spec, local_federation
from benchmarks.registry import Context, Goal, Measurement, benchmark
from benchmarks.stats import Stats
from cleanroom import wire
from cleanroom.client import Client, protocol_keys_path
from cleanroom.keys import NodeKeys, make_key_bundle
from cleanroom.links import GrpcAnalystLink
from protocols.ckks import CkksBuyer, CkksOwner, InferenceConfig, plan_inference
from protocols.models import (
    InputSchema,
    LinearParameters,
    ModelAsset,
    ModelCard,
    predict,
)
from protocols.party import Inbound, Outbound

FEATURES: Final = 30
RAW_ROW_BYTES: Final = FEATURES * 8
BYTES_GOAL: Final = Goal(
    "<=",
    3072 / RAW_ROW_BYTES,
    "CKKS inference issue: at most 3 KB per scored row "
    f"(3072 B over the raw float64 row of {RAW_ROW_BYTES} B)",
    at="10,000 rows x 30 features",
)
TOLERANCE: Final = 1e-3
_SEED: Final = 20_240_611
_NOTE: Final = (
    "all protocol payloads, before envelopes and gRPC framing; the issue measured "
    "TenSEAL's own compute for this layout at about 0.4 s on this machine, and its "
    "1.5 s goal is for the whole job over gRPC (the integrator's benchmark)"
)


def workload(rows: int) -> tuple[ModelAsset, npt.NDArray[np.float64]]:
    """A public synthetic logistic model and raw rows whose standardised values are
    N(0, 1) clipped to +-6 (numpy's seeded generator: nothing here is secret)."""
    rng = np.random.default_rng(_SEED)
    mean = rng.normal(50.0, 20.0, FEATURES)
    scale = rng.uniform(0.5, 10.0, FEATURES)
    model = ModelAsset(
        kind="logistic_regression",
        model_id="bench-logistic",
        version="1",
        schema=InputSchema(tuple(f"x{i}" for i in range(FEATURES)), mean, scale),
        card=ModelCard.of("benchmark model", provenance="random weights, seeded"),
        parameters=LinearParameters(rng.normal(0.0, 0.3, FEATURES), 0.1),
        link="logistic",
    )
    z = np.clip(rng.normal(size=(rows, FEATURES)), -6.0, 6.0)
    return model, z * scale + mean


def run_once(
    config: InferenceConfig, model: ModelAsset, rows: npt.NDArray[np.float64]
) -> tuple[list[float], float, int, dict[str, int], npt.NDArray[np.float64]]:
    """One run: wall time of each phase, CPU, bytes sent, bytes by stage, scores."""
    sizes: dict[str, int] = {}

    def count(messages: list[Outbound]) -> list[Outbound]:
        for m in messages:
            sizes[m.stage] = sizes.get(m.stage, 0) + len(m.payload)
        return messages

    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    buyer = CkksBuyer(config.buyer, config, rows)
    owner = CkksOwner(config.owner, config, model)
    owner.start()
    sent = count(buyer.start())
    w1 = time.perf_counter()
    replies = count(
        [
            r
            for m in sent
            for r in owner.receive(Inbound(config.buyer, m.stage, m.payload))
        ]
    )
    w2 = time.perf_counter()
    for reply in replies:
        buyer.receive(Inbound(config.owner, reply.stage, reply.payload))
    w3, c1 = time.perf_counter(), time.process_time()
    return (
        [w1 - w0, w2 - w1, w3 - w2, w3 - w0],
        c1 - c0,
        sum(sizes.values()),
        sizes,
        buyer.scores,
    )


@benchmark("he_inference", "ckks")
def he_inference(ctx: Context) -> Iterator[Measurement]:
    """CKKS logistic scoring in process (keys, encrypt, serialise, evaluate with
    re-randomising and flooding, serialise, decrypt) vs plaintext numpy scoring.

    Wall and CPU time, rows per second, each party's phase, and payload bytes per
    scored row against the issue's 3 KB goal (which is stated at 10,000 rows: at
    1,000 rows one slot block of 4,096 rows is mostly empty).
    """
    rows = ctx.pick(quick=1_000, full=10_000)
    model, x = workload(rows)
    config = plan_inference(
        model, session_id="bench", buyer="buyer", owner="owner", row_count=rows
    )
    reference = predict(model, x)
    phases: list[list[float]] = [[], [], [], []]
    cpu: list[float] = []
    plain: list[float] = []
    sizes: dict[str, int] = {}
    total = 0
    worst = 0.0
    for attempt in range(ctx.repeat + 1):  # the first is a warm-up
        walls, used, total, sizes, scores = run_once(config, model, x)
        error = float(np.abs(scores - reference).max())
        if error > TOLERANCE:
            raise AssertionError(f"encrypted scores are {error:.2g} off plaintext")
        worst = max(worst, error)
        gc.collect()
        p0 = time.perf_counter()
        predict(model, x)
        p1 = time.perf_counter()
        if attempt:
            for phase, wall in zip(phases, walls, strict=True):
                phase.append(wall)
            cpu.append(used)
            plain.append(p1 - p0)
    per_row = total / rows
    ctx.log(
        f"  {config.params.name}: {config.blocks} block(s) of {config.params.slots} "
        f"rows; bytes {sizes} = {per_row:.0f} B per row"
    )
    params = {"rows": rows, "features": FEATURES}
    details = {
        "parameter_set": config.params.name,
        "blocks": config.blocks,
        "rows_per_s": round(rows / float(np.median(phases[3]))),
        "bytes_per_row": round(per_row),
        "context_bytes": sizes.get("ckks/context", 0),
        "feature_bytes": sizes.get("ckks/features", 0),
        "score_bytes": sizes.get("ckks/scores", 0),
        "max_abs_error_vs_plaintext": float(f"{worst:.3g}"),
    }
    baseline = Stats.of(plain, "s")
    for metric, samples in (("wall", phases[3]), ("cpu", cpu)):
        yield ctx.measurement(
            case="ckks logistic end to end in process vs plaintext numpy",
            params=params,
            details=details,
            metric=metric,
            measured=Stats.of(samples, "s"),
            baseline=baseline,
            baseline_name="numpy: standardise, dot, sigmoid",
            x=("rows",),
            note=_NOTE,
        )
    yield ctx.measurement(
        case="ckks logistic throughput",
        params=params,
        details=details,
        metric="rows_per_s",
        measured=Stats.of([rows / t for t in phases[3]], "rows/s"),
        x=("rows",),
    )
    for name, samples in (
        ("buyer: keys, standardise, encrypt, serialise", phases[0]),
        ("owner: validate, evaluate, re-randomise, flood, serialise", phases[1]),
        ("buyer: validate, decrypt, sigmoid", phases[2]),
    ):
        yield ctx.measurement(
            case=name,
            params=params,
            details=details,
            metric="wall",
            measured=Stats.of(samples, "s"),
            x=("rows",),
        )
    yield ctx.measurement(
        case="payload bytes per scored row vs the raw row",
        params=params,
        details=details,
        metric="bytes_per_row",
        measured=Stats.of([per_row], "bytes"),
        baseline=Stats.of([RAW_ROW_BYTES], "bytes"),
        baseline_name=f"raw float64 row ({FEATURES} x 8 B)",
        goal=BYTES_GOAL,
        goal_applies=rows == 10_000,
        x=("rows",),
        note=_NOTE,
    )


WALL_GOAL_S: Final = 1.5
"""The CKKS inference issue's goal for 10,000 rows x 30 features end to end over
gRPC on a local federation, in seconds (an absolute time, so not a ratio goal)."""


class _CountingLink(GrpcAnalystLink):
    """The analyst's gRPC link, counting the protocol envelopes it moves."""

    sent = 0
    received = 0

    def push(self, msg: wire.ProtocolMessage) -> None:
        self.sent += len(msg.body)
        super().push(msg)

    def pull(self, req: wire.PullRequest) -> wire.WorkBatch:
        batch = super().pull(req)
        self.received += sum(
            len(item.work.body)
            for item in batch.items
            if isinstance(item.work, wire.ProtocolMessage)
        )
        return batch


def _counting_client(fed: LocalFederation) -> tuple[Client, _CountingLink]:
    """An analyst client like ``Client.from_federation``, on a counting link."""
    f = fed.fed
    identity = f.analyst_identity()
    keys = NodeKeys.load_or_create(protocol_keys_path(f.analyst_key))
    link = _CountingLink(
        f.coordinator_address, identity, server_name=f.coordinator_name
    )
    client = Client(
        link,
        analyst=identity.principal.name,
        keys=keys,
        bundle=make_key_bundle(identity.principal.name, keys, identity, role="analyst"),
        ca_pem=identity.ca_pem,
        state_dir=f.analyst_key.parent / "analyst-state-bench",
    )
    return client, link


@benchmark("he_inference_job", "ckks")
def he_inference_job(ctx: Context) -> Iterator[Measurement]:
    """The ``he_inference`` job end to end over gRPC on a local federation (one
    model owner node, mutual TLS, separate processes): submit, plan, encrypt,
    relay, evaluate, return, decrypt, release — vs plaintext numpy scoring."""
    from protocols.models.codec import dump_model

    rows = ctx.pick(quick=1_000, full=10_000)
    model, x = workload(rows)
    frame = pd.DataFrame(x, columns=list(model.schema.features))
    document, _ = dump_model(model)
    model_file = ctx.workdir / "bench-logistic.json"
    model_file.write_bytes(document)
    settings = {
        "node-0": {
            "he_inference": {
                "models": {"bench": {"path": str(model_file), "dataset": DATASET}}
            }
        }
    }
    reference = predict(model, x)
    spec = job_spec("he_inference", ["node-0"], {"model": "bench", "rows": rows})
    walls: list[float] = []
    plain: list[float] = []
    parameter_set = ""
    with local_federation(
        ctx.workdir / "federation-he",
        nodes=1,
        rows=10,
        job_types=["he_inference"],
        node_settings=settings,
    ) as fed:
        client, link = _counting_client(fed)
        fed.client = client
        envelope_bytes: list[int] = []
        for attempt in range(ctx.repeat + 1):  # the first is a warm-up
            before = link.sent + link.received
            run = fed.run(spec, local_inputs={"rows": frame})
            envelope_bytes.append(link.sent + link.received - before)
            error = float(np.abs(np.asarray(run.result["scores"]) - reference).max())
            if error > TOLERANCE:
                raise AssertionError(f"job scores are {error:.2g} off plaintext")
            parameter_set = str(run.result["parameter_set"])
            p0 = time.perf_counter()
            predict(model, x)
            p1 = time.perf_counter()
            if attempt:
                walls.append(run.wall)
                plain.append(p1 - p0)
    params = {"rows": rows, "features": FEATURES}
    details = {
        "parameter_set": parameter_set,
        "rows_per_s": round(rows / float(np.median(walls))),
        "envelope_bytes_per_row": round(envelope_bytes[-1] / rows),
        "goal_wall_s": WALL_GOAL_S if rows == 10_000 else None,
        "goal_met": bool(np.median(walls) <= WALL_GOAL_S) if rows == 10_000 else None,
    }
    ctx.log(f"  he_inference job: {details}")
    yield ctx.measurement(
        case="he_inference job over gRPC vs plaintext numpy",
        params=params,
        details=details,
        metric="wall",
        measured=Stats.of(walls, "s"),
        baseline=Stats.of(plain, "s"),
        baseline_name="numpy: standardise, dot, sigmoid",
        x=("rows",),
        note="submit to decrypted scores: plan, keys, encrypt, envelopes, relay, "
        "evaluate, flood, release signed by the owner; goal 1.5 s at 10,000 rows",
    )
    yield ctx.measurement(
        case="he_inference job: envelope bytes per scored row over gRPC",
        params=params,
        details=details,
        metric="bytes_per_row",
        measured=Stats.of([b / rows for b in envelope_bytes[1:]], "bytes"),
        baseline=Stats.of([RAW_ROW_BYTES], "bytes"),
        baseline_name=f"raw float64 row ({FEATURES} x 8 B)",
        goal=BYTES_GOAL,
        goal_applies=rows == 10_000,
        x=("rows",),
        note="every envelope the analyst pushed and pulled (plan, context, "
        "features, scores), sealed, before gRPC framing",
    )
    yield ctx.measurement(
        case="he_inference job throughput over gRPC",
        params=params,
        details=details,
        metric="rows_per_s",
        measured=Stats.of([rows / w for w in walls], "rows/s"),
        x=("rows",),
    )
