"""Messages between the parties of a vertical job: a small JSON header (epoch,
batch, sizes) bound to the stage, then a binary body; sizes checked before use."""

from __future__ import annotations

import json
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ProtocolError

MAX_HEADER: Final = 1 << 16
MAX_MESSAGE: Final = 1 << 30


def pack(header: dict[str, Any], body: bytes = b"") -> bytes:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return len(text).to_bytes(4, "big") + text + body


def unpack(payload: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    if len(payload) < 4 or len(payload) > MAX_MESSAGE:
        raise ProtocolError(f"{what}: malformed message")
    size = int.from_bytes(payload[:4], "big")
    if size > MAX_HEADER or 4 + size > len(payload):
        raise ProtocolError(f"{what}: malformed header")
    try:
        header = json.loads(payload[4 : 4 + size])
    except ValueError:
        raise ProtocolError(f"{what}: malformed header") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"{what}: malformed header")
    return header, payload[4 + size :]


def floats(values: npt.NDArray[np.float64]) -> bytes:
    return np.ascontiguousarray(values, dtype="<f8").tobytes()


def read_floats(body: bytes, count: int, what: str) -> npt.NDArray[np.float64]:
    """Exactly ``count`` finite float64 values."""
    if len(body) != 8 * count:
        raise ProtocolError(f"{what}: expected {count} values")
    values = np.frombuffer(body, dtype="<f8").astype(np.float64)
    if not np.isfinite(values).all():
        raise ProtocolError(f"{what}: values must be finite")
    return values


def expect(header: dict[str, Any], **fields: int) -> None:
    """The header names exactly this epoch/batch (no replay, no reordering)."""
    for key, value in fields.items():
        got = header.get(key)
        if isinstance(got, bool) or got != value:
            raise ProtocolError(f"message for {key} {got!r}, expected {value}")


def integers(values: list[int]) -> bytes:
    return json.dumps([str(v) for v in values]).encode()


def read_integers(body: bytes, count: int, what: str) -> list[int]:
    try:
        raw = json.loads(body)
    except ValueError:
        raise ProtocolError(f"{what}: malformed values") from None
    if not isinstance(raw, list) or len(raw) != count:
        raise ProtocolError(f"{what}: expected {count} values")
    out = []
    for item in raw:
        if not isinstance(item, str) or len(item) > 400:
            raise ProtocolError(f"{what}: malformed values")
        try:
            out.append(int(item))
        except ValueError:
            raise ProtocolError(f"{what}: malformed values") from None
    return out
