"""The model file format: strict JSON (+ optional NPZ for big arrays), never pickle.

A model is one JSON document (UTF-8, at most ``MAX_DOCUMENT_BYTES``)::

    {
      "format": "cleanroom.model/v1",
      "kind": "logistic_regression",            # or linear_regression, poly_mlp
      "id": "credit-risk", "version": "2024.06",
      "link": "logistic",                        # identity | logistic
      "input": {"features": ["age", ...],        # order the buyer must follow
                "mean": [...], "scale": [...]},  # optional, together: (x-mean)/scale
      "card": {"name": "...", "description": "...", "provenance": "...",
               "metrics": {"auc": 0.97}},        # description..metrics optional
      "parameters": {"coef": [...], "intercept": -0.3},
      "origin": {"job_type": "fedavg", "job_id": "job-...",   # optional: the
                 "inputs": [{"node": "h1", "dataset": "d"}]}, # training job
      "content_hash": "sha256:..."               # optional on load, always written
    }

An MLP's ``parameters`` are ``hidden_weights`` (hidden x features),
``hidden_bias``, ``activation`` = ``{"type": "polynomial", "coefficients":
[a0, a1, a2]}``, ``output_weights`` and ``output_bias``. Any array may be written
inline (nested lists) or as ``{"npz": "<name>"}``, naming a member of the companion
NPZ archive (float32/float64 ``.npy`` members only; headers are checked before any
data is read, and every member must be referenced exactly once).

The loader refuses unknown keys, missing keys, wrong types and shapes, NaN and
infinity (also as JSON literals), duplicate keys, oversized inputs and a
``content_hash`` that does not match. The hash covers the canonical content with
each array replaced by its shape and the SHA-256 of its float64 little-endian
bytes, so moving an array between inline and NPZ keeps the hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

import numpy as np

from cleanroom.errors import DatasetError
from protocols.models.asset import (
    KINDS,
    LINKS,
    MAX_FEATURES,
    MAX_HIDDEN,
    MAX_ORIGIN_INPUTS,
    Array,
    InputSchema,
    LinearParameters,
    ModelAsset,
    ModelCard,
    Origin,
    Parameters,
    PolyMLPParameters,
    checked_float,
    fail,
)

FORMAT: Final = "cleanroom.model/v1"
MAX_DOCUMENT_BYTES: Final = 32 * 2**20
MAX_NPZ_BYTES: Final = 64 * 2**20
MAX_ARRAY_ELEMENTS: Final = MAX_FEATURES * MAX_HIDDEN
_HASH_DOMAIN: Final = b"cleanroom/model/v1/content\x00"
_NPZ_DTYPES: Final = (np.dtype("<f8"), np.dtype("<f4"))

_TOP: Final = ("format", "kind", "id", "version", "link", "input", "card")
_LINEAR: Final = ("coef", "intercept")
_MLP: Final = (
    "hidden_weights",
    "hidden_bias",
    "activation",
    "output_weights",
    "output_bias",
)


def load_model(document: bytes, arrays: bytes | None = None) -> ModelAsset:
    """Parse and validate a model file (and its NPZ, if its arrays live there)."""
    if not isinstance(document, bytes) or len(document) > MAX_DOCUMENT_BYTES:
        raise DatasetError(f"a model document is bytes of at most {MAX_DOCUMENT_BYTES}")
    try:
        doc = json.loads(
            document.decode("utf-8"),
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"a model document is not valid UTF-8 JSON: {exc}") from None
    store = _NpzStore(arrays)
    top = _object(
        doc, "", required=(*_TOP, "parameters"), optional=("content_hash", "origin")
    )
    if top["format"] != FORMAT:
        raise fail("format", f"must be {FORMAT!r}")
    kind = top["kind"]
    if kind not in KINDS:
        raise fail("kind", f"must be one of {', '.join(KINDS)}")
    if top["link"] not in LINKS:
        raise fail("link", f"must be one of {', '.join(LINKS)}")
    schema = _schema(top["input"], store)
    features = schema.feature_count
    asset = ModelAsset(
        kind=kind,
        model_id=_string(top["id"], "id"),
        version=_string(top["version"], "version"),
        schema=schema,
        card=_card(top["card"]),
        parameters=(
            _mlp(top["parameters"], store, features)
            if kind == "poly_mlp"
            else _linear(top["parameters"], store, features)
        ),
        link=top["link"],
        origin=None if "origin" not in top else _origin(top["origin"]),
    )
    store.finish()
    claimed = top.get("content_hash")
    if claimed is not None and claimed != content_hash(asset):
        raise fail("content_hash", "does not match the model's content")
    return asset


def dump_model(
    asset: ModelAsset, *, npz_min_elements: int | None = None
) -> tuple[bytes, bytes | None]:
    """The JSON document and, if any array has ``npz_min_elements`` or more, the NPZ.

    Without ``npz_min_elements`` every array is written inline.
    """
    members: dict[str, Array] = {}

    def put(name: str, array: Array) -> object:
        if npz_min_elements is not None and array.size >= npz_min_elements:
            members[name] = array
            return {"npz": name}
        return array.tolist()

    doc = _document(asset, put)
    doc["content_hash"] = content_hash(asset)
    text = json.dumps(doc, indent=1, allow_nan=False, ensure_ascii=False)
    if not members:
        return text.encode(), None
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {n: np.ascontiguousarray(a) for n, a in members.items()}
    np.savez(buffer, allow_pickle=False, **arrays)
    return text.encode(), buffer.getvalue()


def content_hash(asset: ModelAsset) -> str:
    """``sha256:<hex>`` of the canonical content (arrays by shape and digest)."""

    def digest(_: str, array: Array) -> object:
        raw = np.ascontiguousarray(array, dtype="<f8").tobytes()
        return {"shape": list(array.shape), "sha256": hashlib.sha256(raw).hexdigest()}

    canonical = json.dumps(
        _document(asset, digest), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return "sha256:" + hashlib.sha256(_HASH_DOMAIN + canonical.encode()).hexdigest()


def _document(asset: ModelAsset, put: Callable[[str, Array], object]) -> dict[str, Any]:
    schema: dict[str, Any] = {"features": list(asset.schema.features)}
    if asset.schema.mean is not None and asset.schema.scale is not None:
        schema["mean"] = put("input_mean", asset.schema.mean)
        schema["scale"] = put("input_scale", asset.schema.scale)
    card = asset.card
    p = asset.parameters
    parameters: dict[str, Any]
    if isinstance(p, LinearParameters):
        parameters = {"coef": put("coef", p.coef), "intercept": p.intercept}
    else:
        parameters = {
            "hidden_weights": put("hidden_weights", p.hidden_weights),
            "hidden_bias": put("hidden_bias", p.hidden_bias),
            "activation": {"type": "polynomial", "coefficients": list(p.activation)},
            "output_weights": put("output_weights", p.output_weights),
            "output_bias": p.output_bias,
        }
    document: dict[str, Any] = {
        "format": FORMAT,
        "kind": asset.kind,
        "id": asset.model_id,
        "version": asset.version,
        "link": asset.link,
        "input": schema,
        "card": {
            "name": card.name,
            "description": card.description,
            "provenance": card.provenance,
            "metrics": dict(card.metrics),
        },
        "parameters": parameters,
    }
    origin = asset.origin
    if origin is not None:  # absent, it leaves the content hash as before
        document["origin"] = {
            "job_type": origin.job_type,
            "job_id": origin.job_id,
            "inputs": [{"node": n, "dataset": d} for n, d in origin.inputs],
        }
    return document


def _origin(value: object) -> Origin:
    raw = _object(value, "origin", required=("job_type", "job_id", "inputs"))
    inputs = raw["inputs"]
    if not isinstance(inputs, list) or len(inputs) > MAX_ORIGIN_INPUTS:
        raise fail("origin.inputs", f"must be a list of at most {MAX_ORIGIN_INPUTS}")
    pairs = []
    for i, item in enumerate(inputs):
        where = f"origin.inputs[{i}]"
        entry = _object(item, where, required=("node", "dataset"))
        pairs.append(
            (
                _string(entry["node"], f"{where}.node"),
                _string(entry["dataset"], f"{where}.dataset"),
            )
        )
    return Origin(
        _string(raw["job_type"], "origin.job_type"),
        _string(raw["job_id"], "origin.job_id"),
        tuple(pairs),
    )


def _refuse_constant(name: str) -> float:
    raise DatasetError(f"a model document may not contain {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DatasetError(f"a model document repeats the key {key!r}")
        result[key] = value
    return result


def _object(
    value: object,
    path: str,
    *,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
) -> Mapping[str, Any]:
    where = path or "document"
    if not isinstance(value, dict):
        raise fail(where, "must be a JSON object")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise fail(_join(path, unknown[0]), "is not a known field")
    missing = [key for key in required if key not in value]
    if missing:
        raise fail(_join(path, missing[0]), "is required")
    return cast(Mapping[str, Any], value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise fail(path, "must be a string")
    return value


def _schema(value: object, store: _NpzStore) -> InputSchema:
    raw = _object(value, "input", required=("features",), optional=("mean", "scale"))
    names = raw["features"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise fail("input.features", "must be a list of strings")
    if not 1 <= len(names) <= MAX_FEATURES:
        raise fail("input.features", f"must list 1..{MAX_FEATURES} feature names")
    shape = (len(names),)
    mean = raw.get("mean")
    scale = raw.get("scale")
    return InputSchema(
        tuple(names),
        None if mean is None else store.array(mean, "input.mean", shape),
        None if scale is None else store.array(scale, "input.scale", shape),
    )


def _card(value: object) -> ModelCard:
    raw = _object(
        value,
        "card",
        required=("name",),
        optional=("description", "provenance", "metrics"),
    )
    metrics = raw.get("metrics", {})
    if not isinstance(metrics, dict):
        raise fail("card.metrics", "must be an object of name: number")
    return ModelCard.of(
        _string(raw["name"], "card.name"),
        description=_string(raw.get("description", ""), "card.description"),
        provenance=_string(raw.get("provenance", ""), "card.provenance"),
        metrics={k: checked_float(v, f"card.metrics.{k}") for k, v in metrics.items()},
    )


def _linear(value: object, store: _NpzStore, features: int) -> Parameters:
    raw = _object(value, "parameters", required=_LINEAR)
    return LinearParameters(
        store.array(raw["coef"], "parameters.coef", (features,)),
        checked_float(raw["intercept"], "parameters.intercept"),
    )


def _mlp(value: object, store: _NpzStore, features: int) -> Parameters:
    raw = _object(value, "parameters", required=_MLP)
    weights = store.array(
        raw["hidden_weights"], "parameters.hidden_weights", (0, features)
    )
    hidden = weights.shape[0]
    act = _object(
        raw["activation"], "parameters.activation", required=("type", "coefficients")
    )
    if act["type"] != "polynomial":
        raise fail("parameters.activation.type", "must be 'polynomial'")
    coefficients = act["coefficients"]
    if not isinstance(coefficients, list):
        raise fail("parameters.activation.coefficients", "must be a list of numbers")
    return PolyMLPParameters(
        weights,
        store.array(raw["hidden_bias"], "parameters.hidden_bias", (hidden,)),
        tuple(coefficients),
        store.array(raw["output_weights"], "parameters.output_weights", (hidden,)),
        checked_float(raw["output_bias"], "parameters.output_bias"),
    )


class _NpzStore:
    """Arrays inline or in the NPZ; NPZ members are checked before being read.

    In an expected shape, 0 stands for "any length from 1 to MAX_HIDDEN" (the
    hidden width, which the document does not state elsewhere).
    """

    def __init__(self, data: bytes | None) -> None:
        self._zip: zipfile.ZipFile | None = None
        self._unused: set[str] = set()
        if data is None:
            return
        if not isinstance(data, bytes) or len(data) > MAX_NPZ_BYTES:
            raise DatasetError(f"a model's NPZ is bytes of at most {MAX_NPZ_BYTES}")
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            names = self._zip.namelist()
        except zipfile.BadZipFile:
            raise DatasetError("a model's NPZ is not a valid archive") from None
        if len(set(names)) != len(names) or not all(n.endswith(".npy") for n in names):
            raise DatasetError("a model's NPZ may only hold distinct .npy members")
        self._unused = {n[: -len(".npy")] for n in names}

    def array(self, value: object, path: str, shape: tuple[int, ...]) -> Array:
        if isinstance(value, dict):
            ref = _object(value, path, required=("npz",))
            return self._member(ref["npz"], path, shape)
        if not isinstance(value, list):
            raise fail(path, 'must be an array (nested lists) or {"npz": name}')
        array = _from_lists(value, path)
        _check_shape(array.shape, shape, path)
        return array

    def _member(self, name: object, path: str, shape: tuple[int, ...]) -> Array:
        if self._zip is None:
            raise fail(path, "refers to an NPZ member but no NPZ was given")
        if not isinstance(name, str) or name not in self._unused:
            raise fail(path, "refers to a missing or already used NPZ member")
        self._unused.discard(name)
        info = self._zip.getinfo(name + ".npy")
        if info.file_size > MAX_ARRAY_ELEMENTS * 8 + 4096:
            raise fail(path, "its NPZ member is too large")
        with self._zip.open(info) as member:
            try:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(member)
                elif version == (2, 0):
                    header = np.lib.format.read_array_header_2_0(member)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except ValueError as exc:
                raise fail(path, f"its NPZ member is not a plain .npy: {exc}") from None
            found, fortran, dtype = header
            if dtype not in _NPZ_DTYPES or fortran:
                raise fail(path, "its NPZ member must be little-endian float32/float64")
            _check_shape(found, shape, path)
            expected = int(np.prod(found)) * dtype.itemsize
            raw = member.read(expected + 1)
        if len(raw) != expected:
            raise fail(path, "its NPZ member's data does not match its header")
        array = np.frombuffer(raw, dtype=dtype).reshape(found)
        return np.asarray(array, dtype=np.float64)

    def finish(self) -> None:
        if self._unused:
            raise DatasetError(
                f"the model's NPZ holds unreferenced member {sorted(self._unused)[0]!r}"
            )


def _from_lists(value: list[Any], path: str) -> Array:
    count = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, int | float):
            raise fail(path, "must hold only numbers")
        else:
            count += 1
        if count > MAX_ARRAY_ELEMENTS:
            raise fail(path, f"holds more than {MAX_ARRAY_ELEMENTS} numbers")
    try:
        return np.array(value, dtype=np.float64)
    except ValueError:
        raise fail(path, "is ragged (rows of different lengths)") from None


def _check_shape(found: tuple[int, ...], shape: tuple[int, ...], path: str) -> None:
    ok = len(found) == len(shape) and all(
        (1 <= f <= MAX_HIDDEN) if s == 0 else f == s
        for f, s in zip(found, shape, strict=True)
    )
    if not ok:
        wanted = tuple("hidden" if s == 0 else s for s in shape)
        raise fail(path, f"has shape {tuple(found)}, expected {wanted}")
