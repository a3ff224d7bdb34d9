"""A model asset's optional ``origin`` (the federated job that trained it): round
trip, covered by the content hash, absent without changing old hashes, and
malformed origins refused naming the field."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cleanroom.errors import DatasetError
from protocols.models import (
    InputSchema,
    LinearParameters,
    ModelAsset,
    ModelCard,
    Origin,
    content_hash,
    dump_model,
    load_model,
)


def _asset(origin: Origin | None) -> ModelAsset:
    return ModelAsset(
        kind="logistic_regression",
        model_id="m",
        version="1",
        schema=InputSchema(("a", "b")),
        card=ModelCard.of("m"),
        parameters=LinearParameters(np.array([0.5, -1.0]), 0.25),
        link="logistic",
        origin=origin,
    )


ORIGIN = Origin("fedavg", "job-1", (("h1", "d1"), ("h2", "d2"), ("h1", "d3")))


def test_origin_round_trips_and_is_hashed() -> None:
    document, _ = dump_model(_asset(ORIGIN))
    loaded = load_model(document)
    assert loaded.origin == ORIGIN
    assert loaded.origin is not None and loaded.origin.holders == ("h1", "h2")
    assert content_hash(loaded) != content_hash(_asset(None))
    other = Origin("fedavg", "job-1", (("h1", "d1"),))
    assert content_hash(_asset(other)) != content_hash(loaded)


def test_no_origin_writes_no_field_and_keeps_the_hash() -> None:
    document, _ = dump_model(_asset(None))
    assert "origin" not in json.loads(document)
    assert load_model(document).origin is None


@pytest.mark.parametrize(
    ("origin", "field"),
    [
        ({"job_type": "fedavg", "job_id": "j"}, "origin.inputs"),
        ({"job_type": "fedavg", "job_id": "j", "inputs": []}, "origin.inputs"),
        ({"job_type": "", "job_id": "j", "inputs": [{"node": "h", "dataset": "d"}]},
         "origin"),
        ({"job_type": "f", "job_id": "j", "inputs": [{"node": "h"}]},
         "origin.inputs[0].dataset"),
        ({"job_type": "f", "job_id": "j", "inputs": [{"node": 3, "dataset": "d"}]},
         "origin.inputs[0].node"),
        ({"job_type": "f", "job_id": "j",
          "inputs": [{"node": "h", "dataset": "d"}, {"node": "h", "dataset": "d"}]},
         "origin.inputs"),
        ({"job_type": "f", "job_id": "j", "inputs": [], "extra": 1}, "origin.extra"),
    ],
)  # fmt: skip
def test_malformed_origins_are_refused(origin: object, field: str) -> None:
    doc = json.loads(dump_model(_asset(None))[0])
    doc.pop("content_hash")
    doc["origin"] = origin
    with pytest.raises(DatasetError, match=re.escape(f"model field {field}:")):
        load_model(json.dumps(doc).encode())
