"""The node parties of ``vertical_logreg``: the guest (label holder, key owner)
and the hosts (feature holders). Stages, all node to node through the relay
(sealed to the recipient) except the guest's epoch marks::

    guest -> host   vlr/key        public key (CKKS context or Paillier), seed
    (both ways)     vlr/psi/...    alignment (``alignment``)
    host -> guest   vlr/forward    u_h = X_h w_h on the batch   (e, b)
    guest -> host   vlr/residual   [[d]] under the guest's key   (e, b)
    host -> guest   vlr/masked     [[X_h^T d + r]]               (e, b)
    guest -> host   vlr/unmasked   X_h^T d + r (+ flood, CKKS)   (e, b)

``params.gradient`` picks the scheme: ``ckks`` (default,
:mod:`protocols.vertical.ckks_gradient`) or ``paillier``
(:mod:`protocols.vertical.gradient`); the messages are the same.
    host -> guest   vlr/epoch_fwd  u_h on every aligned row      (e)
    guest -> host   vlr/control    continue, or stop at the best epoch (e)
    guest -> coord  vlr/epoch      the epoch number only
    guest -> analyst vlr/progress  the epoch's training and validation loss
                                   (sealed; the same values as the released
                                   curve, shown while the job runs)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cleanroom.catalog import row_bucket
from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from cleanroom.jobtypes.base import NodeContext
from cleanroom.jobtypes.sealing import attest_commitment, seal_report
from cleanroom.jobtypes.vertical import codec
from cleanroom.jobtypes.vertical.alignment import Alignment
from cleanroom.jobtypes.vertical.params import TrainParams
from cleanroom.jobtypes.vertical.service import VerticalService
from protocols.paillier import (
    DEFAULT_BITS,
    Encryptor,
    KeyPair,
    PublicKey,
    generate_keypair,
    public_key_from_bytes,
    public_key_to_bytes,
)
from protocols.party import (
    ANALYST,
    COORDINATOR,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)
from protocols.vertical import (
    FEATURE_CLIP,
    GradientLayout,
    HostGradient,
    Standardizer,
    auc,
    batches,
    decrypt_masked,
    encrypt_residuals,
    log_loss,
    sigmoid,
)
from protocols.vertical import ckks_gradient as ckks
from protocols.vertical.gradient import encode_features

KEY, FORWARD, RESIDUAL = "vlr/key", "vlr/forward", "vlr/residual"
MASKED, UNMASKED, EPOCH_FWD = "vlr/masked", "vlr/unmasked", "vlr/epoch_fwd"
CONTROL, EPOCH_MARK, REPORT = "vlr/control", "vlr/epoch", "vlr/report"
PROGRESS = "vlr/progress"
Array = npt.NDArray[np.float64]
_SEED_BYTES: Final = 32


class _Node(NodeParty):
    """What guest and host share: the alignment phase, data, progress, release."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._params: TrainParams = ctx.params
        self._service: VerticalService = ctx.service
        id_column = self._service.id_column(ctx.dataset)
        self._align = Alignment(ctx, id_column, self._service.min_overlap(ctx.dataset))
        self._epoch = 0
        self._batch = 0
        self._batches: list[npt.NDArray[np.int64]] = []
        self._digest: str | None = None
        self._part: dict[str, Any] | None = None
        self._seed = b""
        self._layout: GradientLayout | None = None
        self.x: Array = np.zeros((0, 0))
        self.n_train = 0

    def _features(self) -> Array:
        """This node's aligned feature rows, standardised on the training rows."""
        assert self._align.rows is not None
        columns = list(self._params.features[self._ctx.node])
        raw = self._ctx.data[columns].to_numpy(dtype=np.float64)[self._align.rows]
        if not np.isfinite(raw).all():
            raise ProtocolAbort("a feature value is missing or not finite")
        rows = len(raw)
        self.n_train = rows - int(rows * self._params.validation_fraction)
        self._scaler = Standardizer.fit(raw[: self.n_train])
        scaled: Array = np.clip(self._scaler.apply(raw), -FEATURE_CLIP, FEATURE_CLIP)
        return scaled

    def _context(self, stage: str, host: str = "") -> bytes:
        return f"{self._ctx.job_id}|{stage}|{self._epoch}|{self._batch}|{host}".encode()

    def _new_epoch(self) -> None:
        self._batches = batches(
            self._seed, self._epoch, self.n_train, self._params.batch_size
        )
        self._batch = 0

    def _seal(self, statement: Mapping[str, Any]) -> list[Outbound]:
        ctx = self._ctx
        full = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "dataset_hash": ctx.dataset_hash,
            **statement,
        }
        out, self._digest = seal_report(ctx, REPORT, full)
        return out

    def _model_part(self, weights: Array, **extra: Any) -> dict[str, Any]:
        return {
            "job_id": self._ctx.job_id,
            "role": "guest" if self._ctx.node == self._params.guest else "host",
            "guest": self._params.guest,
            "parties": sorted(self._ctx.spec.nodes),
            "dataset": self._ctx.dataset,
            "dataset_hash": self._ctx.dataset_hash,
            "columns": list(self._params.features[self._ctx.node]),
            "mean": list(self._scaler.mean),
            "scale": list(self._scaler.scale),
            "weights": [float(v) for v in weights],
            **extra,
        }

    @property
    def finished(self) -> bool:
        return self._digest is not None

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=len(self._ctx.data))

    def progress(self) -> Progress:
        return Progress(
            stage="vlr/train" if self._align.rows is not None else "vlr/align",
            round=self._epoch,
            rounds=self._params.epochs,
            done=self._batch,
            total=len(self._batches),
            unit="batches",
        )

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        """Vouch for the own commitment; only then keep this node's model part."""
        assert self._digest is not None and self._part is not None
        vouched = attest_commitment(self._ctx.node, self._digest, result)
        self._service.save(self._ctx.job_id, self._part)
        return vouched

    def _refuse_stage(self, message: Inbound) -> None:
        raise ProtocolError(
            f"unexpected stage '{message.stage}' from '{message.sender}'"
        )


class GuestTrainer(_Node):
    """The label holder: owns the Paillier key, the labels and the intercept."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self._hosts = self._params.hosts
        self._keys: KeyPair | None = None
        self._ckks: ckks.GuestKeys | None = None
        self._ckks_layouts: dict[str, ckks.CkksLayout] = {}
        self._forward: dict[tuple[str, int, int], Array] = {}
        self._pending: set[str] = set()
        self._curve: list[dict[str, float]] = []
        self._best = (float("inf"), -1)
        self._since_best = 0
        self._snapshot: tuple[Array, float] = (np.zeros(0), 0.0)
        self._stopped_early = False

    def start(self) -> list[Outbound]:
        self._seed = self._ctx.random(_SEED_BYTES)
        if self._params.gradient == "ckks":
            self._ckks = ckks.GuestKeys(random=self._ctx.random)
            key = codec.pack(
                {"seed": self._seed.hex(), "gradient": "ckks"},
                self._ckks.public_context(),
            )
            return self._align.start() + [Outbound(h, KEY, key) for h in self._hosts]
        settings = self._service.settings
        try:
            self._keys = generate_keypair(
                self._params.key_bits,
                allow_legacy_2048=settings.allow_legacy_2048,
                random=self._ctx.random,
            )
        except ConfigError:
            raise ProtocolAbort(
                f"{self._params.key_bits}-bit keys are refused by this node"
            ) from None
        self._encryptor = Encryptor(
            self._keys.public, private=self._keys.private, random=self._ctx.random
        )
        key = codec.pack(
            {"seed": self._seed.hex(), "gradient": "paillier"},
            public_key_to_bytes(self._keys.public),
        )
        return self._align.start() + [Outbound(h, KEY, key) for h in self._hosts]

    def receive(self, message: Inbound) -> list[Outbound]:
        if Alignment.handles(message.stage):
            out = self._align.receive(message)
            if self._align.rows is not None and not self.x.size:
                self._ready()
                out += self._advance()
            return out
        if message.sender not in self._hosts:
            self._refuse_stage(message)
        header, body = codec.unpack(message.payload, message.stage)
        if message.stage in (FORWARD, EPOCH_FWD):
            return self._on_forward(message.sender, message.stage, header, body)
        if message.stage == MASKED:
            return self._on_masked(message.sender, header, body)
        self._refuse_stage(message)
        return []

    # ---------------------------------------------------------------- steps --
    def _ready(self) -> None:
        assert self._align.rows is not None
        self.x = self._features()
        labels = self._ctx.data[self._params.label].to_numpy(dtype=np.float64)
        self.y = labels[self._align.rows]
        if not np.isin(self.y, (0.0, 1.0)).all():
            raise ProtocolAbort("the label column must hold 0 and 1 only")
        self.sw = np.ones(len(self.y))
        if self._params.class_weight == "balanced":
            train = self.y[: self.n_train]
            for value in (0.0, 1.0):
                count = max(1, int((train == value).sum()))
                self.sw[self.y == value] = len(train) / (2.0 * count)
        self.w = np.zeros(self.x.shape[1])
        self.b = 0.0
        if self._params.gradient == "ckks":
            self._ckks_layouts = {
                h: ckks.CkksLayout(
                    self._params.batch_size, len(self._params.features[h])
                )
                for h in self._hosts
            }
        else:
            self._layout = GradientLayout(
                self._params.key_bits, self._params.batch_size
            )
        self._new_epoch()

    def _on_forward(
        self, host: str, stage: str, header: dict[str, Any], body: bytes
    ) -> list[Outbound]:
        epoch, batch = header.get("e"), header.get("b")
        if not isinstance(epoch, int) or not isinstance(batch, int):
            raise ProtocolError(f"{stage}: malformed header")
        key = (host, epoch, -1 if stage == EPOCH_FWD else batch)
        if key in self._forward:
            raise ProtocolError(f"{stage}: '{host}' sent this batch twice")
        if self.x.size:
            codec.expect(header, e=self._epoch)
        elif (epoch, batch) != (0, 0):
            raise ProtocolError(f"{stage}: sent before the training started")
        self._forward[key] = np.frombuffer(body, dtype="<f8").astype(np.float64)
        return self._advance() if self.x.size else []

    def _take(self, batch: int, rows: int) -> Array | None:
        """Every host's u for (epoch, batch), summed; None until all arrived."""
        keys = [(h, self._epoch, batch) for h in self._hosts]
        if any(k not in self._forward for k in keys):
            return None
        total = np.zeros(rows)
        for k in keys:
            values = self._forward.pop(k)
            if len(values) != rows or not np.isfinite(values).all():
                raise ProtocolError(f"'{k[0]}' sent {len(values)} partial scores")
            total += values
        return total

    def _advance(self) -> list[Outbound]:
        if self._pending or self.finished:
            return []
        if self._batch < len(self._batches):
            rows = self._batches[self._batch]
            partial = self._take(self._batch, len(rows))
            return [] if partial is None else self._residual_step(rows, partial)
        partial = self._take(-1, len(self.y))
        return [] if partial is None else self._end_epoch(partial)

    def _residual_step(
        self, rows: npt.NDArray[np.int64], partial: Array
    ) -> list[Outbound]:
        params, x = self._params, self.x[rows]
        d = (sigmoid(x @ self.w + self.b + partial) - self.y[rows]) * self.sw[rows]
        if self._ckks is not None:
            layout = next(iter(self._ckks_layouts.values()))
            data = self._ckks.encrypt_residuals(
                layout, d, context=self._context(RESIDUAL)
            )
        else:
            assert self._layout is not None
            data = encrypt_residuals(
                self._encryptor, self._layout, d, context=self._context(RESIDUAL)
            )
        self.w = self.w - params.learning_rate * (
            x.T @ d / len(rows) + params.l2 * self.w
        )
        self.b -= params.learning_rate * float(d.mean())
        self._pending = set(self._hosts)
        header = codec.pack({"e": self._epoch, "b": self._batch})
        return [Outbound(h, RESIDUAL, header + data) for h in self._hosts]

    def _on_masked(
        self, host: str, header: dict[str, Any], body: bytes
    ) -> list[Outbound]:
        codec.expect(header, e=self._epoch, b=self._batch)
        if host not in self._pending:
            raise ProtocolError(f"{MASKED}: nothing outstanding from '{host}'")
        if self._ckks is not None:
            values = self._ckks.decrypt_masked(
                self._ckks_layouts[host], body, context=self._context(MASKED, host)
            )
        else:
            assert self._keys is not None and self._layout is not None
            values = decrypt_masked(
                self._keys.private,
                self._layout,
                body,
                features=len(self._params.features[host]),
                context=self._context(MASKED, host),
            )
        self._pending.discard(host)
        reply = codec.pack({"e": self._epoch, "b": self._batch}, codec.integers(values))
        out = [Outbound(host, UNMASKED, reply)]
        if not self._pending:
            self._batch += 1
            out += self._advance()
        return out

    def _end_epoch(self, partial: Array) -> list[Outbound]:
        params, n = self._params, self.n_train
        p = sigmoid(self.x @ self.w + self.b + partial)
        y = self.y
        val = slice(n, len(y)) if n < len(y) else slice(0, n)
        point = {
            "epoch": self._epoch + 1,
            "train_loss": log_loss(p[:n], y[:n]),
            "validation_loss": log_loss(p[val], y[val]),
            "train_auc": auc(p[:n], y[:n]),
            "validation_auc": auc(p[val], y[val]),
        }
        self._curve.append(point)
        if point["validation_loss"] < self._best[0] - params.min_delta:
            self._best = (point["validation_loss"], self._epoch)
            self._snapshot = (self.w.copy(), self.b)
            self._since_best = 0
        else:
            self._since_best += 1
        stop = self._since_best >= params.patience or self._epoch + 1 >= params.epochs
        self._stopped_early = stop and self._epoch + 1 < params.epochs
        control = codec.pack({"e": self._epoch, "stop": stop, "best": self._best[1]})
        out = [Outbound(h, CONTROL, control) for h in self._hosts]
        out.append(Outbound(COORDINATOR, EPOCH_MARK, codec.pack({"e": self._epoch})))
        out.append(self._loss_note(point))
        if stop:
            return out + self._finish()
        self._epoch += 1
        self._new_epoch()
        return out + self._advance()

    def _encryption(self) -> dict[str, Any]:
        """The parameter set the gradients were computed under (model card)."""
        if self._ckks_layouts:
            return {
                "scheme": "CKKS (RLWE), coefficient packing",
                **next(iter(self._ckks_layouts.values())).to_json(),
            }
        return {"scheme": "packed Paillier", "key_bits": self._params.key_bits}

    def _loss_note(self, point: Mapping[str, float]) -> Outbound:
        """The epoch's losses, sealed to the analyst (fixed size: the relay learns
        nothing from it but that an epoch ended, which the epoch mark says)."""
        losses = np.array([point["train_loss"], point["validation_loss"]])
        body = codec.pack({"e": self._epoch}, codec.floats(losses))
        return Outbound(ANALYST, PROGRESS, body)

    def _finish(self) -> list[Outbound]:
        params = self._params
        self.w, self.b = self._snapshot
        best = self._curve[self._best[1]]
        card = {
            "model": "logistic regression, split by columns",
            "training_job": self._ctx.job_id,
            "guest": params.guest,
            "label": params.label,
            "hosts": list(params.hosts),
            "features": {node: list(cols) for node, cols in params.features.items()},
            "aligned_rows": row_bucket(len(self.y)),
            "epochs_run": len(self._curve),
            "best_epoch": self._best[1] + 1,
            "stopped_early": self._stopped_early,
            "gradient": params.gradient,
            "encryption": self._encryption(),
            "hyperparameters": {
                "batch_size": params.batch_size,
                "learning_rate": params.learning_rate,
                "l2": params.l2,
                "class_weight": params.class_weight,
                "validation_fraction": params.validation_fraction,
                "patience": params.patience,
                "min_delta": params.min_delta,
            },
        }
        self._part = self._model_part(
            self.w, intercept=float(self.b), label=params.label
        )
        metrics = {k: best[k] for k in best if k != "epoch"}
        return self._seal(
            {
                "role": "guest",
                "model_card": card,
                "training_curve": self._curve,
                "metrics": metrics,
            }
        )


class HostTrainer(_Node):
    """A feature holder: computes its gradient under the guest's key, masked."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self._guest = self._params.guest
        self._key: PublicKey | None = None
        self._ckks: ckks.HostContext | None = None
        self._step: HostGradient | ckks.HostGradient | None = None
        self._snapshots: dict[int, Array] = {}

    def start(self) -> list[Outbound]:
        return self._align.start()

    def receive(self, message: Inbound) -> list[Outbound]:
        if Alignment.handles(message.stage):
            return self._align.receive(message) + self._maybe_begin()
        if message.sender != self._guest:
            self._refuse_stage(message)
        header, body = codec.unpack(message.payload, message.stage)
        if message.stage == KEY:
            return self._on_key(header, body)
        if not self.x.size:
            raise ProtocolError(f"'{message.stage}' before the training started")
        if message.stage == RESIDUAL:
            return self._on_residual(header, body)
        if message.stage == UNMASKED:
            return self._on_unmasked(header, body)
        if message.stage == CONTROL:
            return self._on_control(header)
        self._refuse_stage(message)
        return []

    def _on_key(self, header: dict[str, Any], body: bytes) -> list[Outbound]:
        if self._key is not None or self._ckks is not None:
            raise ProtocolError(f"{KEY}: sent twice")
        if header.get("gradient") != self._params.gradient:
            raise ProtocolAbort("the guest's key is not for the scheme the spec names")
        seed = self._read_seed(header)
        if self._params.gradient == "ckks":
            self._ckks, self._seed = ckks.HostContext(body), seed
            return self._maybe_begin()
        # Parsed at the smallest size any node may allow, then held to this
        # node's own minimum (smaller keys are refused by the parser itself).
        key = public_key_from_bytes(body, allow_legacy_2048=True)
        if key.bits < DEFAULT_BITS and not self._service.settings.allow_legacy_2048:
            raise ProtocolAbort(
                "the guest's Paillier key is below this node's minimum size"
            )
        if key.bits != self._params.key_bits:
            raise ProtocolAbort(
                "the guest's Paillier key is not the size the spec names"
            )
        self._key, self._seed = key, seed
        return self._maybe_begin()

    @staticmethod
    def _read_seed(header: dict[str, Any]) -> bytes:
        try:
            seed = bytes.fromhex(str(header.get("seed")))
        except ValueError:
            raise ProtocolError(f"{KEY}: malformed seed") from None
        if len(seed) != _SEED_BYTES:
            raise ProtocolError(f"{KEY}: malformed seed")
        return seed

    def _maybe_begin(self) -> list[Outbound]:
        keyed = self._key is not None or self._ckks is not None
        if not keyed or self._align.rows is None or self.x.size:
            return []
        self.x = self._features()
        self.w = np.zeros(self.x.shape[1])
        if self._ckks is not None:
            self._ckks_layout = ckks.CkksLayout(
                self._params.batch_size, self.x.shape[1]
            )
        else:
            self._encoded = encode_features(self.x)
            self._layout = GradientLayout(
                self._params.key_bits, self._params.batch_size
            )
        self._new_epoch()
        return self._forward()

    def _forward(self) -> list[Outbound]:
        header = {"e": self._epoch, "b": self._batch}
        if self._batch < len(self._batches):
            rows = self._batches[self._batch]
            body = codec.floats(self.x[rows] @ self.w)
            return [Outbound(self._guest, FORWARD, codec.pack(header, body))]
        body = codec.floats(self.x @ self.w)
        return [Outbound(self._guest, EPOCH_FWD, codec.pack(header, body))]

    def _on_residual(self, header: dict[str, Any], body: bytes) -> list[Outbound]:
        codec.expect(header, e=self._epoch, b=self._batch)
        if self._step is not None or self._batch >= len(self._batches):
            raise ProtocolError(f"{RESIDUAL}: no batch is waiting for residuals")
        rows = self._batches[self._batch]
        step: HostGradient | ckks.HostGradient
        if self._ckks is not None:
            step = ckks.HostGradient(
                self._ckks, self._ckks_layout, self.x[rows], random=self._ctx.random
            )
        else:
            assert self._key is not None and self._layout is not None
            step = HostGradient(
                self._key, self._layout, self._encoded[rows], random=self._ctx.random
            )
        self._step = step
        masked = step.masked(
            body,
            context=self._context(RESIDUAL),
            reply=self._context(MASKED, self._ctx.node),
        )
        header_out = codec.pack({"e": self._epoch, "b": self._batch})
        return [Outbound(self._guest, MASKED, header_out + masked)]

    def _on_unmasked(self, header: dict[str, Any], body: bytes) -> list[Outbound]:
        codec.expect(header, e=self._epoch, b=self._batch)
        step = self._step
        if step is None:
            raise ProtocolError(f"{UNMASKED}: no masked gradient is outstanding")
        rows = len(self._batches[self._batch])
        values = codec.read_integers(body, self.x.shape[1], UNMASKED)
        gradient = step.unmask(values, rows)
        self._step = None
        params = self._params
        self.w = self.w - params.learning_rate * (gradient + params.l2 * self.w)
        self._batch += 1
        return self._forward()

    def _on_control(self, header: dict[str, Any]) -> list[Outbound]:
        codec.expect(header, e=self._epoch)
        if self._batch < len(self._batches) or self._step is not None:
            raise ProtocolError(f"{CONTROL}: the epoch has not ended")
        self._snapshots[self._epoch] = self.w.copy()
        best = header.get("best")
        if header.get("stop") is True:
            if not isinstance(best, int) or best not in self._snapshots:
                raise ProtocolError(f"{CONTROL}: the best epoch is unknown")
            self._part = self._model_part(self._snapshots[best])
            return self._seal(
                {
                    "role": "host",
                    "columns": list(self._params.features[self._ctx.node]),
                    "epochs_run": self._epoch + 1,
                }
            )
        self._epoch += 1
        self._new_epoch()
        return self._forward()
