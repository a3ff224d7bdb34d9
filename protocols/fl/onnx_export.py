"""A federated model as an ONNX graph, built by hand with ``onnx.helper`` (the
``onnx`` extra): no converter, so the graph is exactly the federated model.

The graph takes raw feature rows ``X`` (``tensor(double)``, shape ``[N,
features]``; the released standardisation is folded into the first layer, see
:func:`protocols.fl.export.raw_layers`) and computes in float64, so onnxruntime
reproduces the federated model to float rounding. Layers are ``MatMul + Add``,
the hidden activation ``Tanh`` or ``Relu``, and the head:

- binary: ``probabilities = [1 - p, p]`` with ``p = Sigmoid(logit)``;
- multiclass: ``probabilities = Softmax(logits)``;
- both: ``label`` = the declared class label of the largest probability
  (``ArgMax`` + ``Gather``; int64, double or string labels);
- regression: ``prediction`` ``[N, 1]``, de-standardised.

Like the scikit-learn export, the graph does not clip rows to the public
feature bounds the nodes clipped to before training: it predicts as the
federated model on rows inside the bounds. Opset 17, IR version 8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from cleanroom.errors import ConfigError
from protocols.fl.export import class_labels, raw_layers
from protocols.fl.models import Model, Vector
from protocols.fl.standardise import Standardisation

OPSET: Final = 17
IR_VERSION: Final = 8
INPUT: Final = "X"


def to_onnx(
    model: Model,
    w: Vector,
    std: Standardisation,
    classes: Sequence[Any] | None = None,
    *,
    name: str = "cleanroom-fedavg",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The serialised ONNX model (``ModelProto`` bytes) of the federated model."""
    try:
        from onnx import TensorProto, checker, helper, numpy_helper
    except ImportError as exc:
        raise ConfigError(
            "ONNX export needs onnx: pip install 'cleanroom[onnx]'"
        ) from exc

    labels = class_labels(model, classes)
    layers = raw_layers(model, w, std)
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(tensor_name: str, value: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), tensor_name))
        return tensor_name

    current = INPUT
    for i, (weights, bias) in enumerate(layers):
        w_name = const(f"W{i}", weights.astype(np.float64))
        b_name = const(f"B{i}", bias.astype(np.float64))
        nodes.append(helper.make_node("MatMul", [current, w_name], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", b_name], [f"z{i}"]))
        current = f"z{i}"
        if i < len(layers) - 1:
            op = "Tanh" if model.activation == "tanh" else "Relu"
            nodes.append(helper.make_node(op, [current], [f"h{i}"]))
            current = f"h{i}"

    rows = "N"
    double = TensorProto.DOUBLE
    outputs: list[Any]
    if model.task == "regression":
        nodes.append(helper.make_node("Identity", [current], ["prediction"]))
        outputs = [helper.make_tensor_value_info("prediction", double, [rows, 1])]
    else:
        if model.task == "binary":
            nodes.append(helper.make_node("Sigmoid", [current], ["p1"]))
            one = const("one", np.array(1.0, dtype=np.float64))
            nodes.append(helper.make_node("Sub", [one, "p1"], ["p0"]))
            nodes.append(
                helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)
            )
        else:
            nodes.append(
                helper.make_node("Softmax", [current], ["probabilities"], axis=1)
            )
        nodes.append(
            helper.make_node("ArgMax", ["probabilities"], ["index"], axis=1, keepdims=0)
        )
        table, label_type = _label_table(labels)
        const("classes", table)
        nodes.append(helper.make_node("Gather", ["classes", "index"], ["label"]))
        outputs = [
            helper.make_tensor_value_info("label", label_type, [rows]),
            helper.make_tensor_value_info(
                "probabilities", double, [rows, model.n_classes]
            ),
        ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, double, [rows, model.n_features])],
        outputs,
        initializer=inits,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cleanroom",
        ir_version=IR_VERSION,
        doc_string=(
            "Federated model on raw float64 rows X (standardisation folded in); "
            "rows outside the training's feature bounds were clipped in training."
        ),
    )
    helper.set_model_props(onnx_model, dict(metadata or {}))
    checker.check_model(onnx_model)
    data: bytes = onnx_model.SerializeToString()
    return data


def _label_table(labels: Any) -> tuple[Any, int]:
    """The class labels as a constant tensor and its ONNX element type."""
    from onnx import TensorProto

    values = labels.tolist()
    if all(isinstance(v, bool) for v in values):
        raise ConfigError("boolean class labels are not supported in ONNX export")
    if all(isinstance(v, int) for v in values):
        return np.array(values, dtype=np.int64), TensorProto.INT64
    if all(isinstance(v, int | float) for v in values):
        return np.array(values, dtype=np.float64), TensorProto.DOUBLE
    return np.array([str(v) for v in values], dtype=object), TensorProto.STRING
