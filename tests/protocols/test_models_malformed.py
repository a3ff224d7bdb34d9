"""Malformed model files: every refusal names the field (and never leaks values)."""

from __future__ import annotations

import copy
import io
import json
import re
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from cleanroom.errors import DatasetError
from protocols.models import (
    InputSchema,
    LinearParameters,
    ModelAsset,
    ModelCard,
    PolyMLPParameters,
    dump_model,
    load_model,
)
from protocols.models.codec import MAX_DOCUMENT_BYTES

Doc = dict[str, Any]


def linear_doc() -> Doc:
    asset = ModelAsset(
        kind="logistic_regression",
        model_id="m",
        version="1",
        schema=InputSchema(("a", "b", "c"), np.zeros(3), np.ones(3)),
        card=ModelCard.of("m", metrics={"auc": 0.9}),
        parameters=LinearParameters(np.array([0.5, -1.25, 2.0]), 0.125),
        link="logistic",
    )
    return json.loads(dump_model(asset)[0])


def mlp_doc() -> Doc:
    asset = ModelAsset(
        kind="poly_mlp",
        model_id="m",
        version="1",
        schema=InputSchema(("a", "b")),
        card=ModelCard.of("m"),
        parameters=PolyMLPParameters(
            np.ones((3, 2)), np.zeros(3), (0.0, 0.0, 1.0), np.ones(3), 0.0
        ),
    )
    return json.loads(dump_model(asset)[0])


def encode(doc: Doc) -> bytes:
    doc = copy.deepcopy(doc)
    doc.pop("content_hash", None)  # most edits would also break the hash
    return json.dumps(doc).encode()


def edit(doc: Doc, change: Callable[[Doc], object]) -> bytes:
    doc = copy.deepcopy(doc)
    change(doc)
    return encode(doc)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(extra=1), "model field extra: is not a known field"),
        (lambda d: d["input"].update(order="x"), "input.order: is not a known field"),
        (lambda d: d["card"].update(owner="x"), "card.owner: is not a known field"),
        (lambda d: d["parameters"].update(w=1), "parameters.w: is not a known field"),
        (lambda d: d.pop("kind"), "model field kind: is required"),
        (
            lambda d: d["parameters"].pop("intercept"),
            "parameters.intercept: is required",
        ),
        (lambda d: d.update(format="x/v2"), "model field format"),
        (lambda d: d.update(kind="svm"), "model field kind"),
        (lambda d: d.update(link="probit"), "model field link"),
        (
            lambda d: d.update(link="identity"),
            "model field link: a logistic_regression",
        ),
        (
            lambda d: d["parameters"].update(coef=[1.0, 2.0]),
            "parameters.coef: has shape (2,)",
        ),
        (
            lambda d: d["parameters"].update(coef=[[1.0, 2.0, 3.0]]),
            "parameters.coef: has shape",
        ),
        (
            lambda d: d["parameters"].update(coef=[1.0, "2", 3.0]),
            "parameters.coef: must hold",
        ),
        (
            lambda d: d["parameters"].update(coef=[1.0, True, 3.0]),
            "parameters.coef: must hold",
        ),
        (
            lambda d: d["parameters"].update(intercept="0"),
            "parameters.intercept: must be",
        ),
        (lambda d: d["input"].update(mean=[0.0, 0.0]), "input.mean: has shape"),
        (lambda d: d["input"].pop("scale"), "input: mean and scale"),
        (
            lambda d: d["input"].update(scale=[1.0, 0.0, 1.0]),
            "input.scale: every scale",
        ),
        (
            lambda d: d["input"].update(features=["a", "a", "b"]),
            "input.features: names",
        ),
        (lambda d: d["input"].update(features=[]), "input.features: must list"),
        (lambda d: d["card"].update(name=""), "card.name: must not be empty"),
        (lambda d: d["card"].update(metrics={"auc": "high"}), "card.metrics.auc"),
        (lambda d: d.update(id=7), "model field id: must be a string"),
        (lambda d: d.update(version="v" * 300), "model field version: is longer"),
    ],
)
def test_linear_document_refusals_name_the_field(
    change: Callable[[Doc], object], field: str
) -> None:
    pattern = re.escape(field)
    with pytest.raises(
        DatasetError, match=f"^{pattern}" if field.startswith("model") else pattern
    ):
        load_model(edit(linear_doc(), change))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda d: d["parameters"].update(hidden_weights=[[1.0, 2.0, 3.0]] * 3),
            "hidden_weights: has shape",
        ),
        (lambda d: d["parameters"].update(hidden_bias=[0.0]), "hidden_bias: has shape"),
        (
            lambda d: d["parameters"].update(output_weights=[1.0, 1.0]),
            "output_weights: has shape",
        ),
        (
            lambda d: d["parameters"]["activation"].update(type="relu"),
            "activation.type",
        ),
        (
            lambda d: d["parameters"]["activation"].update(coefficients=[0, 0, 0, 1]),
            "activation.coefficients: must hold",
        ),
        (
            lambda d: d["parameters"]["activation"].update(coefficients=[]),
            "activation.coefficients: must hold",
        ),
        (
            lambda d: d["parameters"]["activation"].update(extra=1),
            "activation.extra: is not a known",
        ),
        (
            lambda d: d["parameters"].update(hidden_weights=[[1.0], [1.0, 2.0]]),
            "hidden_weights: is ragged",
        ),
    ],
)
def test_mlp_document_refusals_name_the_field(
    change: Callable[[Doc], object], field: str
) -> None:
    with pytest.raises(DatasetError, match=field):
        load_model(edit(mlp_doc(), change))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_refused(literal: str) -> None:
    text = encode(linear_doc()).replace(b"0.125", literal.encode())
    with pytest.raises(DatasetError, match=literal):
        load_model(text)


def test_overflowing_numbers_and_nan_arrays_are_refused() -> None:
    text = encode(linear_doc()).replace(b"0.125", b"1e400")
    with pytest.raises(DatasetError, match=r"parameters\.intercept: must be finite"):
        load_model(text)
    text = encode(linear_doc()).replace(b"-1.25", b"-1e999")
    with pytest.raises(DatasetError, match=r"parameters\.coef: contains NaN"):
        load_model(text)


def test_duplicate_keys_bad_json_and_oversize_are_refused() -> None:
    text = encode(linear_doc())
    with pytest.raises(DatasetError, match="repeats the key 'id'"):
        load_model(text.replace(b'"id": "m"', b'"id": "m", "id": "n"'))
    with pytest.raises(DatasetError, match="not valid UTF-8 JSON"):
        load_model(text[:-3])
    with pytest.raises(DatasetError, match="not valid UTF-8 JSON"):
        load_model(b"\xff" + text)
    with pytest.raises(DatasetError, match="at most"):
        load_model(b" " * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(DatasetError, match="document: must be a JSON object"):
        load_model(b"[1, 2]")


def test_content_hash_mismatch_is_refused() -> None:
    doc = linear_doc()
    doc["parameters"]["coef"][0] = 0.75
    with pytest.raises(DatasetError, match="content_hash: does not match"):
        load_model(json.dumps(doc).encode())


def test_oversized_arrays_are_refused_before_conversion() -> None:
    doc = linear_doc()
    doc["parameters"]["coef"] = [[0] * 4096] * 1025
    with pytest.raises(DatasetError, match=r"parameters\.coef: holds more than"):
        load_model(encode(doc))


def npz(**members: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **members)
    return buffer.getvalue()


def npz_doc() -> Doc:
    doc = linear_doc()
    doc["parameters"]["coef"] = {"npz": "coef"}
    return doc


def test_npz_round_trip_and_float32_members() -> None:
    asset = load_model(
        encode(npz_doc()), npz(coef=np.array([0.5, -1.25, 2.0], np.float32))
    )
    assert isinstance(asset.parameters, LinearParameters)
    assert asset.parameters.coef.dtype == np.float64
    assert asset.parameters.coef.tolist() == [0.5, -1.25, 2.0]


@pytest.mark.parametrize(
    ("archive", "problem"),
    [
        (None, "no NPZ was given"),
        (npz(other=np.ones(3)), "missing or already used NPZ member"),
        (npz(coef=np.ones(3), spare=np.ones(1)), "unreferenced member 'spare'"),
        (npz(coef=np.ones(4)), "coef: has shape \\(4,\\)"),
        (npz(coef=np.ones(3, np.int64)), "little-endian float32/float64"),
        (npz(coef=np.ones(3, ">f8")), "little-endian float32/float64"),
        (npz(coef=np.array([1.0, np.nan, 2.0])), "contains NaN"),
        (b"not a zip", "not a valid archive"),
    ],
)
def test_npz_refusals(archive: bytes | None, problem: str) -> None:
    with pytest.raises(DatasetError, match=problem):
        load_model(encode(npz_doc()), archive)


def test_npz_object_arrays_are_never_unpickled() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "x", None], dtype=object), allow_pickle=True)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("coef.npy", buffer.getvalue())
    with pytest.raises(DatasetError, match="float32/float64"):
        load_model(encode(npz_doc()), archive.getvalue())


def test_npz_truncated_member_and_foreign_member_names() -> None:
    good = io.BytesIO()
    np.save(good, np.ones(3))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("coef.npy", good.getvalue()[:-8])
    with pytest.raises(DatasetError, match="does not match its header"):
        load_model(encode(npz_doc()), archive.getvalue())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("coef.pkl", b"x")
    with pytest.raises(DatasetError, match=r"only hold distinct \.npy members"):
        load_model(encode(npz_doc()), archive.getvalue())


def test_errors_never_carry_weights() -> None:
    doc = linear_doc()
    doc["parameters"]["coef"] = [0.123456789, 0.987654321]
    with pytest.raises(DatasetError) as caught:
        load_model(encode(doc))
    assert "0.123" not in str(caught.value) and "0.987" not in str(caught.value)
