"""The model owner's registry: models a holder offers, loaded from its node config.

    [jobtypes.he_inference.models.churn]
    path = "models/churn.json"    # the documented JSON format (protocols.models)
    arrays = "models/churn.npz"   # optional companion NPZ
    dataset = "customers"         # whose policy governs queries of this model
    consent_of = ["h2", "h3"]     # required for a federated model: see below

A model is served only on its dataset, so that dataset's policy decides who may
query it, for which purposes and how many rows (quota meter ``scored_rows``).

Consent. A model a federated job trained (``cleanroom model export --format
he-asset``) carries its ``origin``: the training job and every input it learned
from. Registering it is this holder's consent; the node refuses to start with it
unless ``consent_of`` names every *other* holder in the origin — the holder's
statement that they agreed (e.g. in writing) before anyone serves a model made
from their data. If this node is not among the inputs, that is every holder.
The origin is declared by whoever exported the file, not proven: the rule stops
a holder serving such a model by mistake and records whose consent it claimed
(in the catalog card), it cannot stop a holder who strips the origin.

The catalog shows its name, kind, input features and model card; the weights
never leave the node. Every scoring run is logged with the model, the buyer, the
purpose and the row count — never which rows, which the owner never sees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.catalog import AssetInfo
from cleanroom.errors import ConfigError, DatasetError
from cleanroom.jobtypes.hooks import NodeEnvironment
from protocols.models.asset import ModelAsset
from protocols.models.codec import content_hash, load_model

KIND = "model"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    dataset: str
    asset: ModelAsset
    digest: str
    consent_of: tuple[str, ...] = ()
    """The other holders whose consent the node config states (federated models)."""


class ModelRegistry:
    """The node's models by name, each bound to one of its datasets."""

    def __init__(self, env: NodeEnvironment) -> None:
        self._env = env
        self.models: dict[str, RegisteredModel] = {}
        raw = env.settings.get("models", {})
        if not isinstance(raw, Mapping):
            raise ConfigError("[jobtypes.he_inference.models] must be a table")
        for name, entry in raw.items():
            self.models[name] = self._load(str(name), entry)

    def _load(self, name: str, entry: Any) -> RegisteredModel:
        where = f"[jobtypes.he_inference.models.{name}]"
        if not isinstance(entry, Mapping) or set(entry) - {
            "path",
            "arrays",
            "dataset",
            "consent_of",
        }:
            raise ConfigError(
                f"{where}: expected path, dataset and optional arrays, consent_of"
            )
        dataset = entry.get("dataset")
        if not isinstance(dataset, str) or dataset not in self._env.datasets.names():
            raise ConfigError(f"{where}: dataset must name one of this node's datasets")
        try:
            document = _read(entry.get("path"), where, self._env.data_dir)
            arrays = entry.get("arrays")
            npz = None if arrays is None else _read(arrays, where, self._env.data_dir)
            asset = load_model(document, npz)
        except DatasetError as exc:
            raise ConfigError(
                f"{where}: not a model in the documented format: {exc}"
            ) from None
        consent = _consent(entry.get("consent_of", []), where)
        _check_consent(asset, self._env.node, consent, where)
        return RegisteredModel(name, dataset, asset, content_hash(asset), consent)

    def get(self, name: str, dataset: str) -> RegisteredModel | None:
        found = self.models.get(name)
        return found if found is not None and found.dataset == dataset else None

    def catalog_assets(self) -> list[AssetInfo]:
        return [
            AssetInfo(
                name,
                KIND,
                model.asset.card.description,
                json.dumps(model_card(model), sort_keys=True),
            )
            for name, model in sorted(self.models.items())
        ]

    def record_scoring(
        self,
        job_id: str,
        *,
        model: RegisteredModel,
        buyer: str,
        purpose: str,
        rows: int,
        parameter_set: str,
    ) -> None:
        """What was scored — never which rows."""
        self._env.audit.append(
            "he_inference.scored",
            job_id=job_id,
            data={
                "model": model.name,
                "model_version": model.asset.version,
                "dataset": model.dataset,
                "buyer": buyer,
                "purpose": purpose,
                "rows": rows,
                "parameter_set": parameter_set,
            },
        )


def model_card(model: RegisteredModel) -> dict[str, Any]:
    """The catalog's description of a model: schema and card, no weights."""
    asset = model.asset
    card: dict[str, Any] = {
        "id": asset.model_id,
        "version": asset.version,
        "kind": asset.kind,
        "link": asset.link,
        "dataset": model.dataset,
        "features": list(asset.schema.features),
        "standardised": asset.schema.mean is not None,
        "card": {
            "name": asset.card.name,
            "description": asset.card.description,
            "provenance": asset.card.provenance,
            "metrics": dict(asset.card.metrics),
        },
        "content_hash": model.digest,
    }
    if asset.origin is not None:
        card["origin"] = {
            "job_type": asset.origin.job_type,
            "job_id": asset.origin.job_id,
            "holders": list(asset.origin.holders),
            "consent_of": list(model.consent_of),
        }
    return card


def _consent(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise ConfigError(f"{where}: consent_of must be a list of node names")
    return tuple(dict.fromkeys(value))


def _check_consent(
    asset: ModelAsset, node: str, consent: tuple[str, ...], where: str
) -> None:
    """A federated model needs every other holder's consent named in the config."""
    if asset.origin is None:
        if consent:
            raise ConfigError(
                f"{where}: consent_of is for models a federated job trained; this "
                "model names no origin"
            )
        return
    others = [h for h in asset.origin.holders if h != node]
    missing = [h for h in others if h not in consent]
    if missing:
        raise ConfigError(
            f"{where}: the model was trained on the data of "
            f"{', '.join(asset.origin.holders)} ({asset.origin.job_type} job "
            f"{asset.origin.job_id}); serving it needs their consent: once "
            f"{', '.join(missing)} agreed, name them in consent_of"
        )


def _read(path: Any, where: str, base: Path) -> bytes:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: path must be a file name")
    file = Path(path)
    if not file.is_absolute():
        file = base / file
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {file}: {exc.strerror}") from None
