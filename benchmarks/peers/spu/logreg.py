"""SPU's secret-shared logistic regression (spu 0.9.5, jax) on a JSON job; prints
wall time and AUC as JSON.

Job: {"data": an .npz with xg (guest features), xh (host features), y (labels),
order (the epoch's row order), "protocol": "SEMI2K" or "CHEETAH", "field":
"FM64", "batch_size", "learning_rate", "l2"}. Both parties' columns and the
labels are secret-shared between 2 SPU ranks (SPU's simulator: one thread per
rank, in-memory links, the real protocol's messages and arithmetic), and one
epoch of mini-batch SGD runs in the batches ``order`` cuts, the same update as
``protocols.vertical.train_plaintext``. The model is revealed at the end only to
score the training rows in the clear here.

Prints {"wall_s": compile + share + train + reveal, "train_s": the SPU run
alone, "compile_s", "auc", "weights", "intercept", "protocol"}.
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import spu.libspu as libspu
import spu.utils.frontend as spu_fe
from spu.utils.simulation import Simulator


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank AUC, ties counted one half (as ``protocols.vertical.auc``)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    sorted_scores = scores[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for s, c in zip(start, counts, strict=True):
        if c > 1:
            ranks[order[s : s + c]] = s + (c + 1) / 2.0
    truth = labels.astype(bool)
    pos, neg = int(truth.sum()), int((~truth).sum())
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def epoch_fn(batches, lr: float, l2: float):
    """One epoch of mini-batch SGD over the static ``batches`` (unrolled)."""

    def run(xg, xh, y):
        x = jnp.concatenate([xg, xh], axis=1)
        w = jnp.zeros(x.shape[1])
        b = jnp.zeros(())
        for rows in batches:
            xb, yb = x[rows], y[rows]
            d = jax.nn.sigmoid(xb @ w + b) - yb
            w = w - lr * (xb.T @ d / len(rows) + l2 * w)
            b = b - lr * jnp.mean(d)
        return w, b

    return run


def main() -> None:
    job = json.loads(sys.stdin.read())
    data = np.load(job["data"])
    xg, xh, y, order = data["xg"], data["xh"], data["y"], data["order"]
    size = int(job["batch_size"])
    batches = [order[k : k + size] for k in range(0, len(order), size)]
    protocol = getattr(libspu.ProtocolKind, job.get("protocol", "SEMI2K"))
    field = getattr(libspu.FieldType, job.get("field", "FM64"))
    config = libspu.RuntimeConfig(protocol=protocol, field=field)
    config.fxp_fraction_bits = 18 if field == libspu.FieldType.FM64 else 26
    sim = Simulator(2, config)
    fn = epoch_fn(batches, float(job["learning_rate"]), float(job["l2"]))

    start = time.perf_counter()
    executable, _ = spu_fe.compile(
        spu_fe.Kind.JAX,
        fn,
        (xg, xh, y),
        {},
        ["xg", "xh", "y"],
        [libspu.Visibility.VIS_SECRET] * 3,
        lambda outs: [f"out{i}" for i in range(len(outs))],
    )
    compiled = time.perf_counter()
    w, b = sim(executable, xg, xh, y)
    done = time.perf_counter()

    w, b = np.asarray(w, dtype=np.float64), float(np.asarray(b))
    scores = np.hstack([xg, xh]) @ w + b
    print(
        json.dumps(
            {
                "protocol": job.get("protocol", "SEMI2K"),
                "wall_s": done - start,
                "compile_s": compiled - start,
                "train_s": done - compiled,
                "auc": auc(scores, y),
                "weights": w.tolist(),
                "intercept": b,
            }
        )
    )


if __name__ == "__main__":
    main()
