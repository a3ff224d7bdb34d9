"""Vertical logistic regression: one epoch of the encrypted-gradient protocol
(guest + one host, 10 + 20 features; CKKS as the job runs it by default, and packed
Paillier at 3072 bits) in one process, and the CKKS job end to end over gRPC,
against plaintext numpy training of the same model on the same batches, in the
same run; bytes each party sends per epoch."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from benchmarks.federation import DATASET, LocalFederation, job_spec, write_policy
from benchmarks.registry import Context, Measurement, benchmark
from benchmarks.stats import Stats
from cleanroom import local
from cleanroom.client import Client
from protocols.paillier import Encryptor, KeyPair, generate_keypair
from protocols.vertical import (
    GradientLayout,
    HostGradient,
    batches,
    decrypt_masked,
    encrypt_residuals,
    sigmoid,
    train_plaintext,
)
from protocols.vertical import ckks_gradient as ckks
from protocols.vertical.gradient import encode_features

GUEST_FEATURES, HOST_FEATURES = 10, 20
BATCH = 1024
SEED = b"bench-vertical".ljust(32, b"\0")


def _data(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, GUEST_FEATURES + HOST_FEATURES))
    w = rng.normal(size=x.shape[1]) / 3
    y = (rng.uniform(size=rows) < sigmoid(x @ w)).astype(np.float64)
    return x[:, :GUEST_FEATURES], x[:, GUEST_FEATURES:], y


def encrypted_epoch(
    keys: KeyPair, xg: np.ndarray, xh: np.ndarray, y: np.ndarray, lr: float = 0.3
) -> dict[str, int]:
    """One epoch of the protocol's arithmetic, both parties in this process (the
    same calls the job's parties make); returns the bytes each party sends."""
    layout = GradientLayout(keys.public.bits, BATCH)
    encryptor = Encryptor(keys.public, private=keys.private)
    encoded = encode_features(xh)
    wg, wh, b = np.zeros(xg.shape[1]), np.zeros(xh.shape[1]), 0.0
    sent = {"guest": 0, "host": 0}
    for k, rows in enumerate(batches(SEED, 0, len(y), BATCH)):
        u = xh[rows] @ wh
        sent["host"] += 8 * len(rows)
        d = sigmoid(xg[rows] @ wg + b + u) - y[rows]
        context = f"r{k}".encode()
        data = encrypt_residuals(encryptor, layout, d, context=context)
        sent["guest"] += len(data)
        wg -= lr * (xg[rows].T @ d / len(rows))
        b -= lr * float(d.mean())
        host = HostGradient(keys.public, layout, encoded[rows])
        masked = host.masked(data, context=context, reply=b"g" + context)
        sent["host"] += len(masked)
        values = decrypt_masked(
            keys.private, layout, masked, features=xh.shape[1], context=b"g" + context
        )
        sent["guest"] += sum(len(str(v)) + 4 for v in values)
        wh -= lr * host.unmask(values, len(rows))
    sent["host"] += 8 * len(y)  # the epoch-end partial scores
    return sent


@benchmark("vertical_epoch", "vertical")
def vertical_epoch(ctx: Context) -> Iterator[Measurement]:
    """One epoch, CKKS and packed Paillier (3072-bit), vs plaintext numpy on the
    same batches."""
    rows_list = ctx.pick(quick=(300,), full=(10_000,))
    repeat = ctx.pick(quick=1, full=1)
    keys = generate_keypair()
    for rows in rows_list:
        yield _measure_ckks(ctx, rows)
        yield _measure(ctx, keys, rows, repeat)


def ckks_epoch(
    keys: ckks.GuestKeys,
    host: ckks.HostContext,
    xg: np.ndarray,
    xh: np.ndarray,
    y: np.ndarray,
    lr: float = 0.3,
) -> dict[str, int]:
    """One epoch of the CKKS protocol's arithmetic (the calls the job's parties
    make), both parties in this process; returns the bytes each party sends."""
    layout = ckks.CkksLayout(BATCH, xh.shape[1])
    wg, wh, b = np.zeros(xg.shape[1]), np.zeros(xh.shape[1]), 0.0
    sent = {"guest": 0, "host": 0}
    for k, rows in enumerate(batches(SEED, 0, len(y), BATCH)):
        u = xh[rows] @ wh
        sent["host"] += 8 * len(rows)
        d = sigmoid(xg[rows] @ wg + b + u) - y[rows]
        context = f"r{k}".encode()
        data = keys.encrypt_residuals(layout, d, context=context)
        sent["guest"] += len(data)
        wg -= lr * (xg[rows].T @ d / len(rows))
        b -= lr * float(d.mean())
        step = ckks.HostGradient(host, layout, xh[rows])
        masked = step.masked(data, context=context, reply=b"g" + context)
        sent["host"] += len(masked)
        values = keys.decrypt_masked(layout, masked, context=b"g" + context)
        sent["guest"] += sum(len(str(v)) + 4 for v in values)
        wh -= lr * step.unmask(values, len(rows))
    sent["host"] += 8 * len(y)  # the epoch-end partial scores
    return sent


def _plain(xg: np.ndarray, xh: np.ndarray, y: np.ndarray) -> None:
    train_plaintext(
        np.hstack([xg, xh]),
        y,
        seed=SEED,
        epochs=1,
        batch_size=BATCH,
        learning_rate=0.3,
        l2=0.0,
    )


def _measure_ckks(ctx: Context, rows: int) -> Measurement:
    xg, xh, y = _data(rows)
    keys = ckks.GuestKeys()
    host = ckks.HostContext(keys.public_context())
    sent: dict[str, int] = {}

    def secure(_: object) -> None:
        sent.update(ckks_epoch(keys, host, xg, xh, y))

    measured = ctx.time(secure, repeat=max(1, ctx.repeat), warmup=0)
    baseline = ctx.time(lambda _: _plain(xg, xh, y), repeat=3, warmup=1)
    ctx.log(f"  CKKS bytes per epoch: guest {sent['guest']}, host {sent['host']}")
    return ctx.measurement(
        case="vertical LR epoch, CKKS gradient (guest + 1 host, one process)",
        params={"rows": rows, "features": "10+20", "gradient": "ckks"},
        details={
            "batch_size": BATCH,
            "parameter_set": ckks.PARAMETERS.name,
            "guest_bytes_per_epoch": sent["guest"],
            "host_bytes_per_epoch": sent["host"],
        },
        metric="wall",
        measured=measured.wall,
        baseline=baseline.wall,
        baseline_name="plaintext numpy, same batches",
        x=("rows",),
        note="what the job runs with gradient: ckks (coefficient packing, uniform "
        "mask mod q, re-randomised reply, guest flood); no relay",
    )


EPOCH_GOAL_S: Final = 3.0
"""Issue 16: one epoch at 10,000 rows x (10 + 20) features over gRPC, <= 3 s."""


def _write_split(directory: Path, rows: int) -> list[tuple[str, Path]]:
    xg, xh, y = _data(rows)
    ids = [f"C{i:06d}" for i in range(rows)]
    guest = pd.DataFrame(xg, columns=[f"g{j:02d}" for j in range(GUEST_FEATURES)])
    guest.insert(0, "customer_id", ids)
    guest["label"] = y
    host = pd.DataFrame(xh, columns=[f"h{j:02d}" for j in range(HOST_FEATURES)])
    host.insert(0, "customer_id", ids)
    made = []
    for name, frame in (("guest", guest), ("host", host)):
        path = directory / name / f"{DATASET}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        made.append((name, path))
    return made


def _declare_ids(fed: Any, workdir: Path, names: list[str]) -> None:
    """Restart each node with ``id_column`` on its dataset (``local.up`` writes
    none), as the sandbox federation test does."""
    for name in names:
        pid = fed.processes[f"node:{name}"]
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while local._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        config = workdir / "nodes" / name / "node.toml"
        config.write_text(config.read_text() + 'id_column = "customer_id"\n')
        fed.processes[f"node:{name}"] = local._spawn(
            ["node", "serve", "--config", str(config)],
            workdir / "logs" / f"{name}-ids.log",
        )
    fed.save(workdir / "federation.json")
    local.wait_connected(fed, names, deadline=time.monotonic() + 60)


def _wait_for_ids(client: Client, timeout: float = 60.0) -> None:
    """Until the coordinator's catalog shows both restarted nodes' id columns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        declared = {
            entry.node
            for entry in client.catalog()
            if entry.connected
            and entry.datasets
            and all(d.id_column == "customer_id" for d in entry.datasets)
        }
        if declared >= {"guest", "host"}:
            return
        time.sleep(0.2)
    raise TimeoutError("the nodes did not publish their id columns")


def _train_spec(epochs: int, gradient: str) -> str:
    return job_spec(
        "vertical_logreg",
        ["guest", "host"],
        {
            "guest": "guest",
            "label": "label",
            "features": {
                "guest": [f"g{j:02d}" for j in range(GUEST_FEATURES)],
                "host": [f"h{j:02d}" for j in range(HOST_FEATURES)],
            },
            "epochs": epochs,
            "batch_size": BATCH,
            "learning_rate": 0.3,
            "validation_fraction": 0.0,
            "early_stopping": {"patience": epochs, "min_delta": 0.0},
            "gradient": gradient,
        },
    )


@benchmark("vertical_epoch_grpc", "vertical")
def vertical_epoch_grpc(ctx: Context) -> Iterator[Measurement]:
    """``vertical_logreg`` with the CKKS gradient end to end over gRPC (guest and
    host nodes and the coordinator as separate processes, mutual TLS, sealed
    envelopes): the cost of one epoch, vs plaintext numpy training."""
    rows = ctx.pick(quick=1_000, full=10_000)
    extra = 2  # epochs beyond the first: their wall time over 2 is one epoch
    xg, xh, y = _data(rows)
    workdir = ctx.workdir / "federation-vertical"
    datasets = _write_split(workdir / "data", rows)
    policy = write_policy(workdir / "policy-in.yaml", ["vertical_logreg"])
    fed_dir = workdir / "federation"
    fed = local.up(workdir=fed_dir, nodes=datasets, policy=policy)
    epochs: list[float] = []
    whole: list[float] = []
    plain: list[float] = []
    try:
        _declare_ids(fed, fed_dir, [n for n, _ in datasets])
        with Client.from_federation(fed_dir / "federation.json") as client:
            _wait_for_ids(client)
            run = LocalFederation(fed, client, [n for n, _ in datasets])
            for _ in range(max(1, ctx.repeat)):
                one = run.run(_train_spec(1, "ckks"), timeout=900)
                more = run.run(_train_spec(1 + extra, "ckks"), timeout=900)
                auc_more = more.result["metrics"]["train_auc"]
                if not auc_more > 0.6:
                    raise AssertionError(f"the CKKS job trained to AUC {auc_more}")
                whole.append(one.wall)
                epochs.append((more.wall - one.wall) / extra)
                p0 = time.perf_counter()
                _plain(xg, xh, y)
                plain.append(time.perf_counter() - p0)
    finally:
        local.down(fed_dir)
    per_epoch = float(np.median(epochs))
    details = {
        "batch_size": BATCH,
        "parameter_set": ckks.PARAMETERS.name,
        "job_with_one_epoch_s": round(float(np.median(whole)), 2),
        "goal_epoch_s": EPOCH_GOAL_S if rows == 10_000 else None,
        "goal_met": per_epoch <= EPOCH_GOAL_S if rows == 10_000 else None,
    }
    ctx.log(f"  vertical over gRPC: epoch {per_epoch:.2f} s, {details}")
    yield ctx.measurement(
        case="vertical LR epoch over gRPC, CKKS gradient (guest + 1 host nodes)",
        params={"rows": rows, "features": "10+20", "gradient": "ckks"},
        details=details,
        metric="wall",
        measured=Stats.of(epochs, "s"),
        baseline=Stats.of(plain, "s"),
        baseline_name="plaintext numpy, same batches",
        x=("rows",),
        note="(wall of a 3-epoch job - wall of a 1-epoch job) / 2: forward scores, "
        "residual and gradient ciphertexts, masked values and the epoch-end "
        "scores through the coordinator's relay; goal <= 3 s at 10,000 rows",
    )


def _measure(ctx: Context, keys: KeyPair, rows: int, repeat: int) -> Measurement:
    xg, xh, y = _data(rows)
    sent: dict[str, Any] = {}

    def secure(_: object) -> None:
        sent.update(encrypted_epoch(keys, xg, xh, y))

    measured = ctx.time(secure, repeat=repeat, warmup=0)
    baseline = ctx.time(lambda _: _plain(xg, xh, y), repeat=max(3, repeat), warmup=1)
    measurement = ctx.measurement(
        case="vertical LR epoch (guest + 1 host, one process)",
        params={"rows": rows, "features": "10+20", "key_bits": keys.public.bits},
        details={
            "batch_size": BATCH,
            "guest_bytes_per_epoch": sent["guest"],
            "host_bytes_per_epoch": sent["host"],
        },
        metric="wall",
        measured=measured.wall,
        baseline=baseline.wall,
        baseline_name="plaintext numpy, same batches",
        x=("rows",),
        note="issue 16 asks <= 3 s per epoch at 10k rows over gRPC; this "
        "measures the protocol's compute in one process (no relay)",
    )
    ctx.log(f"  bytes per epoch: guest {sent['guest']}, host {sent['host']}")
    return measurement


__all__ = ["ckks_epoch", "encrypted_epoch", "vertical_epoch", "vertical_epoch_grpc"]
