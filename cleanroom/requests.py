"""Signed job requests: the analyst's client signs every submission with its
protocol key, so a coordinator can neither invent a job nor replay one.

A signed request is canonical JSON ``{"request": {...}, "signature": "<b64>"}``::

    request = {"v": 1, "analyst": name, "spec_sha256": hex, "nonce": 32 hex bytes,
               "issued_at": unix seconds}

signed with Ed25519 (``cleanroom.keys.sign_statement``) by the key in the
analyst's CA-anchored key bundle. The job id is derived from the request's hash,
so the coordinator cannot choose it (nor grind anything seeded from it). Every
node verifies the request itself against the bundle it checks with the CA, takes
the analyst's name and organisation from the bundle's certificate, refuses a
request older than ``MAX_AGE_SECONDS`` or from the future, and refuses a nonce it
has seen before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from cleanroom.errors import AuthError, InvalidSignature
from cleanroom.keys import (
    KeyBundle,
    canonical_json,
    sign_statement,
    statement_bytes,
    verify_statement,
)
from protocols.party import SYSTEM_RANDOM, RandomSource
from protocols.secagg.graph import graph_seed_from

VERSION: Final = 1
MAX_AGE_SECONDS: Final = 600.0
"""How old a request may be when a node first sees it (and how far in the
future it may claim to be, for clock skew)."""
MAX_BYTES: Final = 4096
_FIELDS: Final = {"v", "analyst", "spec_sha256", "nonce", "issued_at"}


@dataclass(frozen=True)
class SignedRequest:
    """A parsed (not yet verified) signed request."""

    analyst: str
    spec_sha256: str
    nonce: str
    issued_at: float
    signature: str
    body: dict[str, Any]

    @property
    def job_id(self) -> str:
        """The job's id: a hash of the signed request body."""
        return "job-" + hashlib.sha256(canonical_json(self.body)).hexdigest()[:24]


def sign_request(
    spec_yaml: str,
    *,
    analyst: str,
    signing_key: Ed25519PrivateKey,
    now: float,
    random: RandomSource = SYSTEM_RANDOM,
) -> bytes:
    """The signed request for submitting ``spec_yaml`` at ``now``."""
    body = {
        "v": VERSION,
        "analyst": analyst,
        "spec_sha256": hashlib.sha256(spec_yaml.encode()).hexdigest(),
        "nonce": random(32).hex(),
        "issued_at": float(now),
    }
    return canonical_json(
        {"request": body, "signature": sign_statement(signing_key, body)}
    )


def parse_request(raw: bytes) -> SignedRequest:
    """Shape-check a signed request; AuthError if it is malformed."""
    if not isinstance(raw, bytes) or not 0 < len(raw) <= MAX_BYTES:
        raise AuthError("the job request is missing or too large")
    try:
        outer = json.loads(raw)
        body, signature = outer["request"], outer["signature"]
        if set(outer) != {"request", "signature"} or not isinstance(body, dict):
            raise ValueError("fields")
        if set(body) != _FIELDS or body["v"] != VERSION:
            raise ValueError("fields")
        analyst, spec, nonce, issued = (
            body["analyst"],
            body["spec_sha256"],
            body["nonce"],
            body["issued_at"],
        )
        if not (
            isinstance(analyst, str)
            and analyst
            and isinstance(spec, str)
            and len(spec) == 64
            and isinstance(nonce, str)
            and len(bytes.fromhex(nonce)) == 32
            and isinstance(issued, int | float)
            and not isinstance(issued, bool)
            and math.isfinite(issued)
            and isinstance(signature, str)
        ):
            raise ValueError("values")
        bytes.fromhex(spec)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise AuthError("the job request is malformed") from None
    return SignedRequest(analyst, spec, nonce, float(issued), signature, body)


def verify_request(
    raw: bytes,
    *,
    spec_yaml: str,
    bundle: KeyBundle,
    now: float,
    max_age: float = MAX_AGE_SECONDS,
) -> SignedRequest:
    """Check a signed request against an analyst bundle already verified with the
    CA: same analyst, this exact spec, a valid signature, and fresh. AuthError or
    InvalidSignature otherwise. The nonce's novelty is the caller's to check."""
    request = parse_request(raw)
    if request.analyst != bundle.node:
        raise AuthError("the job request is signed for another analyst")
    if request.spec_sha256 != hashlib.sha256(spec_yaml.encode()).hexdigest():
        raise AuthError("the job request was signed for another spec")
    try:
        verify_statement(bundle.signing_public, request.body, request.signature)
    except InvalidSignature:
        raise InvalidSignature("the job request's signature does not verify") from None
    if not -max_age <= now - request.issued_at <= max_age:
        raise AuthError(
            f"the job request was signed {now - request.issued_at:.0f}s ago; "
            f"requests are accepted within {max_age:.0f}s"
        )
    return request


def graph_seed(raw: bytes, analyst_signing_public: bytes) -> bytes:
    """The seed of a job's SecAgg+ neighbour graph: a hash of the analyst's signed
    request and its signature (``protocols.secagg.graph.graph_seed_from``). The
    operator cannot choose it (Ed25519 signatures are unpredictable without the
    analyst's key and the body holds the analyst's fresh nonce) and cannot grind
    job ids for it. Residual: an analyst colluding with the operator can re-sign
    fresh nonces until it likes the graph; the sound degree and threshold
    (``protocols.secagg.bounds``) are what bound that case."""
    request = parse_request(raw)
    try:
        signature = base64.b64decode(request.signature, validate=True)
        key = Ed25519PublicKey.from_public_bytes(analyst_signing_public)
    except (ValueError, binascii.Error):
        raise AuthError("the job request's signature is malformed") from None
    return graph_seed_from(statement_bytes(request.body), signature, key)
