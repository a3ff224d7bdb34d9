"""The node-side service of the vertical job types: the holder's settings and its
part of each split model, kept on the node (one JSON file per training job under
``<data_dir>/vertical/``, written only when the training job's release is signed)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cleanroom.catalog import AssetInfo
from cleanroom.errors import ConfigError, ProtocolError
from cleanroom.jobtypes.hooks import NodeEnvironment

DEFAULT_MIN_OVERLAP: Final = 100
_JOB_ID: Final = re.compile(r"^job-[0-9a-f]{24}$")


@dataclass(frozen=True)
class Settings:
    """``[jobtypes.vertical_logreg]`` / ``[jobtypes.vertical_predict]``."""

    min_overlap: int = DEFAULT_MIN_OVERLAP
    allow_legacy_2048: bool = False
    """Accept (and, as guest, make) 2048-bit Paillier keys: tests only."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Settings:
        extra = sorted(set(raw) - {"min_overlap", "allow_legacy_2048"})
        if extra:
            raise ConfigError(f"vertical settings: unknown key '{extra[0]}'")
        overlap = raw.get("min_overlap", DEFAULT_MIN_OVERLAP)
        legacy = raw.get("allow_legacy_2048", False)
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1:
            raise ConfigError("vertical settings: min_overlap must be an int >= 1")
        if not isinstance(legacy, bool):
            raise ConfigError("vertical settings: allow_legacy_2048 must be a bool")
        return cls(overlap, legacy)


class VerticalService:
    """Settings, id columns, permitted columns and the node's split-model parts."""

    def __init__(self, env: NodeEnvironment, *, lists_assets: bool) -> None:
        self._lists_assets = lists_assets
        self.settings = Settings.parse(env.settings)
        self.env = env
        self.directory: Path = env.data_dir / "vertical"

    def id_column(self, dataset: str) -> str:
        return self.env.datasets.info(dataset).id_column

    def min_overlap(self, dataset: str) -> int:
        return max(self.settings.min_overlap, self.env.policy.min_group_size(dataset))

    def permitted(self, dataset: str) -> set[str]:
        return set(self.env.policy.permitted_columns(dataset))

    def save(self, job_id: str, part: Mapping[str, Any]) -> None:
        path = self._path(job_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(part), sort_keys=True))
        os.replace(tmp, path)
        self.env.audit.append(
            "vertical.model_saved", job_id=job_id, data={"role": part["role"]}
        )

    def load(self, job_id: str) -> dict[str, Any]:
        path = self._path(job_id)
        if not path.exists():
            raise ProtocolError(f"this node holds no vertical model '{job_id}'")
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded

    def catalog_assets(self) -> list[AssetInfo]:
        if not self._lists_assets or not self.directory.exists():
            return []
        found = []
        for path in sorted(self.directory.glob("*.json")):
            part = json.loads(path.read_text())
            card = {
                "role": part["role"],
                "guest": part["guest"],
                "parties": part["parties"],
                "columns": part["columns"],
            }
            found.append(
                AssetInfo(
                    path.stem,
                    "vertical_model",
                    "split logistic regression part",
                    json.dumps(card, sort_keys=True),
                )
            )
        return found

    def _path(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise ProtocolError("a vertical model is named by its training job id")
        return self.directory / f"{job_id}.json"
