"""Tests for node key files, signed key bundles and signed statements."""

from __future__ import annotations

import base64
import dataclasses
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.errors import (
    AuthError,
    ConfigError,
    CryptoError,
    InvalidSignature,
    ProtocolError,
)
from cleanroom.keys import (
    KeyBundle,
    NodeKeys,
    canonical_json,
    make_key_bundle,
    sign_statement,
    verify_key_bundle,
    verify_statement,
)
from cleanroom.pki import TlsIdentity, init_ca, issue


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsIdentity]:
    """Two nodes and an analyst of one CA, and a node of a foreign CA."""
    root = tmp_path_factory.mktemp("fed")
    init_ca(root / "ca")
    init_ca(root / "other")
    out: dict[str, TlsIdentity] = {}
    for label, ca, role, name in [
        ("a", "ca", "node", "node-a"),
        ("b", "ca", "node", "node-b"),
        ("analyst", "ca", "analyst", "alice"),
        ("foreign", "other", "node", "node-a"),
    ]:
        ident = issue(root / ca, role, name, out_dir=root / label)
        out[label] = TlsIdentity.load(ident.cert_path, ident.key_path, ident.ca_path)
    return out


@pytest.fixture(scope="module")
def ca_pem(federation: dict[str, TlsIdentity]) -> bytes:
    return federation["a"].ca_pem


@pytest.fixture(scope="module")
def bundle_a(federation: dict[str, TlsIdentity]) -> KeyBundle:
    return make_key_bundle("node-a", NodeKeys.generate(), federation["a"])


# --- key file ---------------------------------------------------------------


def test_load_or_create_makes_a_0600_file_and_reloads_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "node.keys"
    created = NodeKeys.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    assert len(data) == 75 and data.startswith(b"CRNODEKEY\x01\x00")
    loaded = NodeKeys.load_or_create(path)
    assert loaded.signing_public == created.signing_public
    assert loaded.exchange_public == created.exchange_public
    assert len(loaded.signing_public) == len(loaded.exchange_public) == 32
    assert repr(loaded) == "NodeKeys()"  # keys never reach logs via repr


def test_load_refuses_a_corrupt_key_file(tmp_path: Path) -> None:
    path = tmp_path / "node.keys"
    path.write_bytes(b"CRNODEKEY\x01\x00" + b"\x00" * 10)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not a cleanroom node key file"):
        NodeKeys.load_or_create(path)


def test_load_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "node.keys"
    NodeKeys.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        NodeKeys.load_or_create(path)


# --- key bundles ------------------------------------------------------------


def test_bundle_round_trip(bundle_a: KeyBundle, ca_pem: bytes) -> None:
    assert verify_key_bundle(bundle_a, ca_pem, expected_name="node-a") is bundle_a
    again = KeyBundle.from_bytes(bundle_a.to_bytes())
    assert again == bundle_a
    assert verify_key_bundle(again, ca_pem) == bundle_a


def test_relay_swapping_the_exchange_key_is_detected(
    bundle_a: KeyBundle, ca_pem: bytes
) -> None:
    relay_keys = NodeKeys.generate()
    for field in ("exchange_public", "signing_public"):
        forged = dataclasses.replace(bundle_a, **{field: getattr(relay_keys, field)})
        with pytest.raises(InvalidSignature):
            verify_key_bundle(forged, ca_pem)


def test_relay_swapping_the_certificate_is_detected(
    federation: dict[str, TlsIdentity], bundle_a: KeyBundle, ca_pem: bytes
) -> None:
    cert_b = federation["b"].cert_pem
    # Node b's cert under node a's name: the cert's CN does not match.
    with pytest.raises(AuthError):
        verify_key_bundle(dataclasses.replace(bundle_a, cert_pem=cert_b), ca_pem)
    # Node b's cert and name: the signature was made by node a's key.
    forged = dataclasses.replace(bundle_a, cert_pem=cert_b, node="node-b")
    with pytest.raises(InvalidSignature):
        verify_key_bundle(forged, ca_pem)
    # A genuine bundle of node b offered where node a's is expected.
    bundle_b = make_key_bundle("node-b", NodeKeys.generate(), federation["b"])
    with pytest.raises(AuthError):
        verify_key_bundle(bundle_b, ca_pem, expected_name="node-a")


def test_bundle_from_a_foreign_ca_is_rejected(
    federation: dict[str, TlsIdentity], ca_pem: bytes
) -> None:
    foreign = make_key_bundle("node-a", NodeKeys.generate(), federation["foreign"])
    with pytest.raises(AuthError):
        verify_key_bundle(foreign, ca_pem)


def test_bundle_must_come_from_a_node_certificate(
    federation: dict[str, TlsIdentity], ca_pem: bytes
) -> None:
    analyst = federation["analyst"]
    with pytest.raises(ConfigError):
        make_key_bundle("alice", NodeKeys.generate(), analyst)
    with pytest.raises(ConfigError):
        make_key_bundle("node-b", NodeKeys.generate(), federation["a"])
    # Hand-made bundle signed with a genuine analyst certificate key.
    keys = NodeKeys.generate()
    key = serialization.load_pem_private_key(analyst.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(b"anything", ec.ECDSA(hashes.SHA256()))
    bundle = KeyBundle(
        "alice", keys.signing_public, keys.exchange_public, analyst.cert_pem, signature
    )
    with pytest.raises(AuthError, match="not a node"):
        verify_key_bundle(bundle, ca_pem)


def test_bundle_with_wrong_key_sizes_is_rejected(
    bundle_a: KeyBundle, ca_pem: bytes
) -> None:
    for field in ("exchange_public", "signing_public"):
        for bad in (
            b"",
            getattr(bundle_a, field)[:31],
            getattr(bundle_a, field) + b"0",
        ):
            with pytest.raises(InvalidSignature):
                verify_key_bundle(dataclasses.replace(bundle_a, **{field: bad}), ca_pem)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xff\xfe", b"[]", b"{}", b'{"v":2}', b"null", b'{"v":1,"node":"x"}'],
)
def test_bundle_from_bytes_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(CryptoError):
        KeyBundle.from_bytes(garbage)


def test_bundle_from_bytes_rejects_bad_base64(bundle_a: KeyBundle) -> None:
    text = bundle_a.to_bytes().replace(b'"signature":"', b'"signature":"!')
    with pytest.raises(CryptoError):
        KeyBundle.from_bytes(text)


# --- statements -------------------------------------------------------------


def test_canonical_json_known_answer() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "é", 1.5]}) == (
        b'{"a":[true,null,"\xc3\xa9",1.5],"b":1}'
    )


@pytest.mark.parametrize(
    "bad", [{"x": float("nan")}, {"x": b"raw"}, {1: "int key"}, {"x": {1, 2}}]
)
def test_canonical_json_refuses_inexact_values(bad: object) -> None:
    with pytest.raises(ProtocolError):
        canonical_json(bad)


def test_statement_sign_and_verify() -> None:
    key = Ed25519PrivateKey.generate()
    public = NodeKeys(key, NodeKeys.generate().exchange).signing_public
    statement = {"job_id": "j1", "result": {"mean": 4.25, "count": 120}}
    signature = sign_statement(key, statement)
    verify_statement(public, statement, signature)
    # Key order does not matter: the encoding is canonical.
    verify_statement(
        public, {"result": {"count": 120, "mean": 4.25}, "job_id": "j1"}, signature
    )

    tampered = {"job_id": "j1", "result": {"mean": 4.26, "count": 120}}
    other = NodeKeys.generate().signing_public
    for pub, stmt, sig in [
        (public, tampered, signature),
        (other, statement, signature),
        (public, statement, "not base64!"),
        (public, statement, signature[:-4]),
        (public[:31], statement, signature),
        (public, {"x": float("inf")}, signature),
    ]:
        with pytest.raises(InvalidSignature):
            verify_statement(pub, stmt, sig)


def test_statement_signature_is_domain_separated() -> None:
    key = Ed25519PrivateKey.generate()
    public = NodeKeys(key, NodeKeys.generate().exchange).signing_public
    statement = {"job_id": "j1"}
    raw = base64.b64encode(key.sign(canonical_json(statement))).decode()
    with pytest.raises(InvalidSignature):
        verify_statement(public, statement, raw)
