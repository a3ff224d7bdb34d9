"""A node's long-term protocol keys, its CA-anchored key bundle, and signed statements.

Key file format (``NodeKeys``), 75 bytes, mode 0600::

    b"CRNODEKEY" | 0x01 (version) | 0x00 (reserved)
    | Ed25519 private key (32 raw bytes) | X25519 private key (32 raw bytes)

Key bundle signature: ECDSA P-256/SHA-256 by the node's TLS key over
``b"cleanroom/key-bundle/v1\\0"`` followed by node name, signing public key and
exchange public key, each prefixed by its length as a 4-byte big-endian integer.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cleanroom.errors import (
    AuthError,
    ConfigError,
    CryptoError,
    InvalidSignature,
    ProtocolError,
)
from cleanroom.pki import (
    TlsIdentity,
    principal_from_cert,
    verify_cert,
    write_secret_file,
)

_KEY_FILE_MAGIC = b"CRNODEKEY\x01\x00"
_KEY_FILE_SIZE = len(_KEY_FILE_MAGIC) + 64
_BUNDLE_LABEL = b"cleanroom/key-bundle/v1\x00"
_STATEMENT_LABEL = b"cleanroom/statement/v1\x00"
_BUNDLE_VERSION = 1
_BUNDLE_FIELDS = (
    "v",
    "node",
    "signing_public",
    "exchange_public",
    "cert_pem",
    "signature",
)
_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


@dataclass(frozen=True)
class NodeKeys:
    """A node's Ed25519 signing key and X25519 key-agreement key."""

    signing: Ed25519PrivateKey = field(repr=False)
    exchange: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> NodeKeys:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKeys:
        """Load the key file at ``path``, creating it (mode 0600) if it is missing.

        Like ssh, refuses (ConfigError) a key file that group or others can read.
        """
        if not path.exists():
            keys = cls.generate()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                write_secret_file(path, keys._to_file_bytes(), exclusive=True)
                return keys
            except ConfigError:
                if not path.exists():
                    raise
                # Another process created it between our check and write: use theirs.
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> NodeKeys:
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read node key file {path}: {exc}") from None
        if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
            raise ConfigError(
                f"node key file {path} is accessible by other users; chmod 600 it"
            )
        if len(data) != _KEY_FILE_SIZE or not data.startswith(_KEY_FILE_MAGIC):
            raise ConfigError(f"{path} is not a cleanroom node key file")
        raw = data[len(_KEY_FILE_MAGIC) :]
        return cls(
            Ed25519PrivateKey.from_private_bytes(raw[:32]),
            X25519PrivateKey.from_private_bytes(raw[32:]),
        )

    def _to_file_bytes(self) -> bytes:
        fmt = serialization.PrivateFormat.Raw
        none = serialization.NoEncryption()
        return (
            _KEY_FILE_MAGIC
            + self.signing.private_bytes(_RAW, fmt, none)
            + self.exchange.private_bytes(_RAW, fmt, none)
        )

    @property
    def signing_public(self) -> bytes:
        return self.signing.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    @property
    def exchange_public(self) -> bytes:
        return self.exchange.public_key().public_bytes(_RAW, _RAW_PUBLIC)


@dataclass(frozen=True)
class KeyBundle:
    """A node's public protocol keys, signed by its CA-issued TLS certificate key.

    The coordinator relays bundles but cannot substitute a key: the signature
    binds both keys to the node name in a certificate only the CA can issue.
    """

    node: str
    signing_public: bytes
    exchange_public: bytes
    cert_pem: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "v": _BUNDLE_VERSION,
                "node": self.node,
                "signing_public": _b64(self.signing_public),
                "exchange_public": _b64(self.exchange_public),
                "cert_pem": self.cert_pem.decode("ascii"),
                "signature": _b64(self.signature),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyBundle:
        """Parse ``to_bytes`` output; CryptoError on anything malformed."""
        try:
            obj = json.loads(data)
            fields = _BUNDLE_FIELDS
            if (
                not isinstance(obj, dict)
                or set(obj) != set(fields)
                or obj["v"] != _BUNDLE_VERSION
                or not all(isinstance(obj[f], str) for f in fields[1:])
            ):
                raise ValueError("unexpected fields")
            return cls(
                node=obj["node"],
                signing_public=_unb64(obj["signing_public"]),
                exchange_public=_unb64(obj["exchange_public"]),
                cert_pem=obj["cert_pem"].encode("ascii"),
                signature=_unb64(obj["signature"]),
            )
        except (ValueError, TypeError, UnicodeError, binascii.Error):
            raise CryptoError("malformed key bundle") from None


def make_key_bundle(
    name: str, keys: NodeKeys, tls: TlsIdentity, *, role: str = "node"
) -> KeyBundle:
    """Sign ``keys``' public halves for ``role`` ``name`` with its TLS key."""
    principal = principal_from_cert(tls.cert_pem)
    if principal.role != role or principal.name != name:
        raise ConfigError(
            f"TLS certificate is for {principal.role} {principal.name!r}, "
            f"not {role} {name!r}"
        )
    try:
        tls_key = serialization.load_pem_private_key(tls.key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError("the TLS key is not an unencrypted PEM private key") from None
    cert_key = x509.load_pem_x509_certificate(tls.cert_pem).public_key()
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("a node's TLS key must be an ECDSA P-256 key")
    if tls_key.public_key() != cert_key:
        raise ConfigError("the TLS key does not belong to the TLS certificate")
    signing_public, exchange_public = keys.signing_public, keys.exchange_public
    message = _bundle_message(name, signing_public, exchange_public)
    signature = tls_key.sign(message, ec.ECDSA(hashes.SHA256()))
    return KeyBundle(name, signing_public, exchange_public, tls.cert_pem, signature)


def verify_key_bundle(
    bundle: KeyBundle,
    ca_pem: bytes,
    *,
    expected_name: str | None = None,
    role: str = "node",
) -> KeyBundle:
    """Return ``bundle`` if a CA-issued ``role`` certificate for its name signed it.

    Raises AuthError for a certificate that is not the right node's, and
    InvalidSignature for malformed keys or a signature that does not verify.
    """
    if not isinstance(bundle, KeyBundle):
        raise InvalidSignature("not a key bundle")
    principal = verify_cert(bundle.cert_pem, ca_pem)
    if principal.role != role:
        raise AuthError(
            f"key bundle certificate is for a {principal.role}, not a {role}"
        )
    if principal.name != bundle.node:
        raise AuthError("key bundle certificate does not belong to the bundle's node")
    if expected_name is not None and bundle.node != expected_name:
        raise AuthError(f"key bundle is for {bundle.node!r}, not {expected_name!r}")
    for key in (bundle.signing_public, bundle.exchange_public):
        if not isinstance(key, bytes) or len(key) != 32:
            raise InvalidSignature("key bundle is malformed")
    if not isinstance(bundle.signature, bytes):
        raise InvalidSignature("key bundle is malformed")
    cert_key = x509.load_pem_x509_certificate(bundle.cert_pem).public_key()
    if not isinstance(cert_key, ec.EllipticCurvePublicKey):
        raise AuthError("key bundle certificate does not hold an ECDSA key")
    message = _bundle_message(
        bundle.node, bundle.signing_public, bundle.exchange_public
    )
    try:
        cert_key.verify(bundle.signature, message, ec.ECDSA(hashes.SHA256()))
    except _CryptographyInvalidSignature:
        raise InvalidSignature("key bundle signature does not verify") from None
    return bundle


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8; only plain JSON values.

    Raises ProtocolError for anything JSON cannot represent exactly (non-string
    keys, NaN or infinite floats, bytes, arbitrary objects).
    """
    _check_json(obj)
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def statement_bytes(statement: Mapping[str, Any]) -> bytes:
    """The exact bytes ``sign_statement`` signs."""
    return _STATEMENT_LABEL + canonical_json(dict(statement))


def sign_statement(key: Ed25519PrivateKey, statement: Mapping[str, Any]) -> str:
    """Sign a statement (e.g. a released result); return the signature as base64."""
    return _b64(key.sign(_STATEMENT_LABEL + canonical_json(dict(statement))))


def verify_statement(
    public: bytes, statement: Mapping[str, Any], signature: str
) -> None:
    """Raise InvalidSignature unless ``signature`` is the holder of ``public``'s."""
    try:
        if not isinstance(public, bytes) or len(public) != 32:
            raise ValueError("bad public key")
        message = _STATEMENT_LABEL + canonical_json(dict(statement))
        Ed25519PublicKey.from_public_bytes(public).verify(_unb64(signature), message)
    except (
        ValueError,
        TypeError,
        binascii.Error,
        ProtocolError,
        _CryptographyInvalidSignature,
    ):
        raise InvalidSignature("statement signature does not verify") from None


def _bundle_message(node: str, signing_public: bytes, exchange_public: bytes) -> bytes:
    parts = (node.encode("utf-8"), signing_public, exchange_public)
    return _BUNDLE_LABEL + b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _check_json(obj: Any) -> None:
    if obj is None or isinstance(obj, bool | int | str):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ProtocolError("canonical JSON cannot hold NaN or infinity")
        return
    if isinstance(obj, list | tuple):
        for item in obj:
            _check_json(item)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ProtocolError("canonical JSON object keys must be strings")
            _check_json(v)
        return
    raise ProtocolError(f"canonical JSON cannot hold a {type(obj).__name__}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)
