"""Models on numpy with every parameter in one flat float vector: GLMs and a small MLP.

One class covers the four models the ``fedavg`` job trains. With ``hidden == 0`` it
is a generalised linear model: logistic regression (``binary``), multinomial
(softmax) logistic regression (``multiclass``) or linear regression
(``regression``). With ``hidden > 0`` it is a one-hidden-layer perceptron (tanh or
ReLU) with the same output head.

Flat layout, row-major: ``W1 (p, h), b1 (h), W2 (h, o), b2 (o)`` for the MLP and
``W (p, o), b (o)`` for a GLM, where ``o`` is 1 (binary, regression) or the number
of classes. The loss is the mean per-row loss (log-loss, cross-entropy, or half the
squared error) plus ``l2 / 2 * ||weights||^2`` over the weight matrices only:
intercepts are not penalised, as in scikit-learn.

Labels are class indices ``0..K-1`` for classification and reals for regression.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError, ProtocolError
from protocols.fl.checks import check_int

Task = Literal["binary", "multiclass", "regression"]
Activation = Literal["tanh", "relu"]
Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]

MAX_FEATURES: Final = 4096
MAX_HIDDEN: Final = 1024
MAX_CLASSES: Final = 256


@dataclass(frozen=True)
class Layer:
    """One dense layer's slices of the flat parameter vector."""

    inputs: int
    outputs: int
    offset: int

    @property
    def size(self) -> int:
        return (self.inputs + 1) * self.outputs

    def unpack(self, w: Vector) -> tuple[Matrix, Vector]:
        weights_end = self.offset + self.inputs * self.outputs
        weights = w[self.offset : weights_end].reshape(self.inputs, self.outputs)
        return weights, w[weights_end : self.offset + self.size]


@dataclass(frozen=True)
class Model:
    """A model's public shape; every method takes the flat parameters ``w``."""

    task: Task
    n_features: int
    n_classes: int = 0
    """Classes for classification (2 for ``binary``); 0 for regression."""
    hidden: int = 0
    activation: Activation = "tanh"

    def __post_init__(self) -> None:
        check_int("n_features", self.n_features, 1, MAX_FEATURES)
        check_int("hidden", self.hidden, 0, MAX_HIDDEN)
        if self.task == "binary":
            if self.n_classes != 2:
                raise ConfigError("a binary model has exactly 2 classes")
        elif self.task == "multiclass":
            check_int("n_classes", self.n_classes, 3, MAX_CLASSES)
        elif self.task == "regression":
            if self.n_classes != 0:
                raise ConfigError("a regression model has no classes (n_classes=0)")
        else:
            raise ConfigError(f"unknown task {self.task!r}")
        if self.activation not in ("tanh", "relu"):
            raise ConfigError(f"activation must be tanh or relu, not {self.activation}")

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.task == "multiclass" else 1

    @property
    def layers(self) -> tuple[Layer, ...]:
        widths = [self.n_features, *([self.hidden] if self.hidden else [])]
        widths.append(self.n_outputs)
        out, offset = [], 0
        for a, b in itertools.pairwise(widths):
            out.append(Layer(a, b, offset))
            offset += out[-1].size
        return tuple(out)

    @property
    def n_params(self) -> int:
        return sum(layer.size for layer in self.layers)

    def penalty_mask(self) -> Vector:
        """1.0 on weights, 0.0 on intercepts: which parameters the L2 term covers."""
        mask = np.zeros(self.n_params)
        for layer in self.layers:
            mask[layer.offset : layer.offset + layer.inputs * layer.outputs] = 1.0
        return mask

    def init(self, seed: int) -> Vector:
        """Zeros for a GLM (convex: any start will do); Glorot-uniform weights for the
        MLP, from a public seed every party shares, since zeros would keep every
        hidden unit identical."""
        w = np.zeros(self.n_params)
        if self.hidden:
            rng = np.random.default_rng(seed)
            for layer in self.layers:
                limit = np.sqrt(6.0 / (layer.inputs + layer.outputs))
                count = layer.inputs * layer.outputs
                w[layer.offset : layer.offset + count] = rng.uniform(
                    -limit, limit, count
                )
        return w

    def check(self, w: Vector, x: Matrix) -> None:
        if w.shape != (self.n_params,):
            raise ProtocolError(f"expected {self.n_params} parameters, got {w.shape}")
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ProtocolError(f"expected rows of {self.n_features} features")

    def outputs(self, w: Vector, x: Matrix) -> Matrix:
        """Raw outputs (n, o): logits for classification, predictions for regression."""
        self.check(w, x)
        return self._forward(w, x)[-1]

    def row_losses(self, w: Vector, x: Matrix, y: Vector) -> Vector:
        """Each row's unpenalised loss: log-loss, cross-entropy, half squared error."""
        z = self.outputs(w, x)
        if self.task == "binary":
            return np.asarray(np.logaddexp(0.0, z[:, 0]) - y * z[:, 0])
        if self.task == "multiclass":
            top = z.max(axis=1, keepdims=True)
            log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
            return np.asarray(log_norm - z[np.arange(len(y)), y.astype(np.intp)])
        return np.asarray(0.5 * (z[:, 0] - y) ** 2)

    def objective(self, w: Vector, x: Matrix, y: Vector, l2: float) -> float:
        """Mean row loss plus ``l2 / 2 * ||weights||^2``."""
        penalty = 0.5 * l2 * float(np.sum(self.penalty_mask() * w * w))
        return float(np.mean(self.row_losses(w, x, y))) + penalty

    def gradient(self, w: Vector, x: Matrix, y: Vector, l2: float = 0.0) -> Vector:
        """Gradient of ``objective`` (the mean over rows plus the penalty)."""
        pieces = self._backward(w, x, y)
        grad = np.concatenate([p.sum(axis=0).ravel() for p in _flat_pieces(pieces)])
        return np.asarray(grad / max(len(y), 1) + l2 * self.penalty_mask() * w)

    def example_gradients(self, w: Vector, x: Matrix, y: Vector) -> Matrix:
        """Each row's loss gradient (n, n_params), no penalty: for per-example clipping.

        Materialises n * n_params floats; callers pass rows in chunks.
        """
        pieces = self._backward(w, x, y)
        return np.concatenate(
            [p.reshape(len(y), -1) for p in _flat_pieces(pieces)], axis=1
        )

    def predict(self, w: Vector, x: Matrix) -> Vector:
        """Class indices (as floats) for classification, values for regression."""
        z = self.outputs(w, x)
        if self.task == "binary":
            return np.asarray(z[:, 0] > 0, dtype=np.float64)
        if self.task == "multiclass":
            return np.asarray(z.argmax(axis=1), dtype=np.float64)
        return np.asarray(z[:, 0])

    def class_log_odds(self, w: Vector, x: Matrix) -> Matrix:
        """log(p_c / (1 - p_c)) per row and scored class: one column (class 1) for a
        binary model, one per class for a multiclass one (one-vs-rest AUC)."""
        z = self.outputs(w, x)
        if self.task == "binary":
            return z
        if self.task == "multiclass":
            out = np.empty_like(z)
            for c in range(z.shape[1]):
                rest = np.delete(z, c, axis=1)
                top = rest.max(axis=1)
                out[:, c] = z[:, c] - (top + np.log(np.exp(rest - top[:, None]).sum(1)))
            return out
        raise ConfigError("a regression model has no class scores")

    def _forward(self, w: Vector, x: Matrix) -> list[Matrix]:
        """Activations: [input, (pre-activation, hidden), output]."""
        layers = self.layers
        if not self.hidden:
            weights, bias = layers[0].unpack(w)
            return [x, x @ weights + bias]
        (w1, b1), (w2, b2) = layers[0].unpack(w), layers[1].unpack(w)
        pre = x @ w1 + b1
        hidden = np.tanh(pre) if self.activation == "tanh" else np.maximum(pre, 0.0)
        return [x, pre, hidden, hidden @ w2 + b2]

    def _residual(self, z: Matrix, y: Vector) -> Matrix:
        """d(row loss) / d(output) for each row: prediction minus target."""
        if self.task == "binary":
            return np.asarray(_sigmoid(z) - y[:, None])
        if self.task == "multiclass":
            top = z.max(axis=1, keepdims=True)
            p = np.exp(z - top)
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(y)), y.astype(np.intp)] -= 1.0
            return np.asarray(p)
        return np.asarray(z - y[:, None])

    def _backward(self, w: Vector, x: Matrix, y: Vector) -> list[tuple[Matrix, Matrix]]:
        """Per layer, per row: (layer input, gradient at the layer's output)."""
        self.check(w, x)
        if len(y) != len(x):
            raise ProtocolError("features and labels have different row counts")
        acts = self._forward(w, x)
        residual = self._residual(acts[-1], y)
        if not self.hidden:
            return [(x, residual)]
        _, pre, hidden, _ = acts
        w2, _ = self.layers[1].unpack(w)
        slope = 1.0 - hidden * hidden if self.activation == "tanh" else pre > 0
        return [(x, (residual @ w2.T) * slope), (hidden, residual)]


def _flat_pieces(pieces: list[tuple[Matrix, Matrix]]) -> Iterator[Matrix]:
    """Per-row weight and bias gradients of each layer, in flat-vector order."""
    for inputs, delta in pieces:
        yield np.einsum("ni,nk->nik", inputs, delta)
        yield delta


def _sigmoid(z: Matrix) -> Matrix:
    # exp of a non-positive argument only: no overflow for any finite z.
    e = np.exp(-np.abs(z))
    return np.asarray(np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)))


def logistic_regression(n_features: int) -> Model:
    """Binary logistic regression."""
    return Model("binary", n_features, 2)


def softmax_regression(n_features: int, n_classes: int) -> Model:
    """Multinomial (softmax) logistic regression."""
    return Model("multiclass", n_features, n_classes)


def linear_regression(n_features: int) -> Model:
    """Least-squares linear regression."""
    return Model("regression", n_features)


def mlp(
    task: Task,
    n_features: int,
    hidden: int,
    *,
    n_classes: int = 0,
    activation: Activation = "tanh",
) -> Model:
    """A one-hidden-layer perceptron with ``hidden`` units."""
    classes = 2 if task == "binary" else n_classes
    if hidden < 1:
        raise ConfigError("an MLP needs at least one hidden unit")
    return Model(task, n_features, classes, hidden, activation)
