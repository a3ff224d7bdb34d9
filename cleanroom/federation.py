"""federation.json: where the coordinator is and which analyst identity to use."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanroom.errors import ConfigError
from cleanroom.pki import TlsIdentity


@dataclass(frozen=True)
class Federation:
    coordinator_address: str
    coordinator_name: str
    analyst_name: str
    analyst_cert: Path
    analyst_key: Path
    ca: Path
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    workdir: Path | None = None
    plugins: tuple[str, ...] = ()
    """Job-type plugins the analyst's client loads (it runs their analyst parties)."""

    def analyst_identity(self) -> TlsIdentity:
        return TlsIdentity.load(self.analyst_cert, self.analyst_key, self.ca)

    @classmethod
    def load(cls, path: Path) -> Federation:
        try:
            raw = json.loads(path.read_text())
            return cls(
                coordinator_address=raw["coordinator"]["address"],
                coordinator_name=raw["coordinator"]["name"],
                analyst_name=raw["analyst"]["name"],
                analyst_cert=Path(raw["analyst"]["cert"]),
                analyst_key=Path(raw["analyst"]["key"]),
                ca=Path(raw["analyst"]["ca"]),
                nodes=raw.get("nodes", {}),
                processes={k: int(v) for k, v in raw.get("processes", {}).items()},
                workdir=Path(raw["workdir"]) if raw.get("workdir") else None,
                plugins=tuple(str(p) for p in raw.get("plugins", [])),
            )
        except FileNotFoundError:
            raise ConfigError(
                f"no federation file at {path}; start one with 'cleanroom local up' "
                "or pass --federation"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a valid federation file ({exc})") from None

    def save(self, path: Path) -> None:
        doc = {
            "coordinator": {
                "address": self.coordinator_address,
                "name": self.coordinator_name,
            },
            "analyst": {
                "name": self.analyst_name,
                "cert": str(self.analyst_cert),
                "key": str(self.analyst_key),
                "ca": str(self.ca),
            },
            "nodes": self.nodes,
            "processes": self.processes,
            "workdir": str(self.workdir) if self.workdir else None,
            "plugins": list(self.plugins),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(path)
