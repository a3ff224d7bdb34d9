"""Tests for the federation CA, leaf issuance, certificate checks and mTLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cleanroom.errors import AuthError, ConfigError
from cleanroom.pki import (
    IssuedIdentity,
    Principal,
    TlsIdentity,
    init_ca,
    issue,
    principal_from_cert,
    verify_cert,
)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "ca"
    init_ca(directory, federation="acme-fed")
    return directory


@pytest.fixture(scope="module")
def other_ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki-other") / "ca"
    init_ca(directory, federation="acme-fed")  # same name, different key
    return directory


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_ca_writes_a_p256_ca_with_private_key_0600(ca_dir: Path) -> None:
    cert = _cert(ca_dir / "ca.crt")
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert _mode(ca_dir / "ca.key") == 0o600


def test_init_ca_refuses_to_overwrite(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="refusing"):
        init_ca(ca_dir)
    assert (ca_dir / "ca.key").read_bytes() == before


def test_issue_and_verify_round_trip(ca_dir: Path, tmp_path: Path) -> None:
    ident = issue(
        ca_dir,
        "node",
        "hospital-a",
        out_dir=tmp_path,
        dns=["node-a.example.org"],
        ips=["10.0.0.7", "::1"],
    )
    assert ident == IssuedIdentity(
        tmp_path / "hospital-a.crt", tmp_path / "hospital-a.key", ca_dir / "ca.crt"
    )
    assert _mode(ident.key_path) == 0o600
    cert_pem = ident.cert_path.read_bytes()
    ca_pem = ident.ca_path.read_bytes()
    assert verify_cert(cert_pem, ca_pem) == Principal("node", "hospital-a")

    cert = _cert(ident.cert_path)
    attrs = {a.oid: a.value for a in cert.subject}
    assert attrs == {
        NameOID.COMMON_NAME: "hospital-a",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "node",
        NameOID.ORGANIZATION_NAME: "acme-fed",
    }
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "hospital-a",
        "localhost",
        "node-a.example.org",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc <= _cert(ca_dir / "ca.crt").not_valid_after_utc


def test_tls_identity_load_and_principal(ca_dir: Path, tmp_path: Path) -> None:
    ident = issue(ca_dir, "analyst", "alice", out_dir=tmp_path)
    tls = TlsIdentity.load(ident.cert_path, ident.key_path, ident.ca_path)
    assert tls.principal == Principal("analyst", "alice")
    assert b"PRIVATE KEY" not in repr(tls).encode()


def test_tls_identity_load_names_the_missing_file(ca_dir: Path, tmp_path: Path) -> None:
    ident = issue(ca_dir, "analyst", "bob", out_dir=tmp_path)
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match=r"nope\.key"):
        TlsIdentity.load(ident.cert_path, missing, ident.ca_path)


def test_tls_identity_load_refuses_a_key_of_another_cert(
    ca_dir: Path, tmp_path: Path
) -> None:
    a = issue(ca_dir, "node", "a", out_dir=tmp_path)
    b = issue(ca_dir, "node", "b", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="not the private key"):
        TlsIdentity.load(a.cert_path, b.key_path, a.ca_path)


def test_cert_from_another_ca_is_rejected(
    ca_dir: Path, other_ca_dir: Path, tmp_path: Path
) -> None:
    foreign = issue(other_ca_dir, "node", "hospital-a", out_dir=tmp_path)
    with pytest.raises(AuthError):
        verify_cert(foreign.cert_path.read_bytes(), (ca_dir / "ca.crt").read_bytes())


def test_ca_cert_cannot_pose_as_a_party(ca_dir: Path) -> None:
    ca_pem = (ca_dir / "ca.crt").read_bytes()
    with pytest.raises(AuthError):
        verify_cert(ca_pem, ca_pem)


def test_expired_and_not_yet_valid_are_rejected(ca_dir: Path, tmp_path: Path) -> None:
    ident = issue(ca_dir, "node", "n1", out_dir=tmp_path, validity_days=1)
    cert_pem, ca_pem = ident.cert_path.read_bytes(), ident.ca_path.read_bytes()
    now = dt.datetime.now(dt.UTC)
    assert verify_cert(cert_pem, ca_pem, now=now).name == "n1"
    with pytest.raises(AuthError, match="expired"):
        verify_cert(cert_pem, ca_pem, now=now + dt.timedelta(days=2))
    with pytest.raises(AuthError, match="not yet valid"):
        verify_cert(cert_pem, ca_pem, now=now - dt.timedelta(days=1))


@pytest.mark.parametrize(
    "garbage", [b"", b"not a cert", b"-----BEGIN CERTIFICATE-----"]
)
def test_garbage_certificates_raise_auth_error(ca_dir: Path, garbage: bytes) -> None:
    with pytest.raises(AuthError):
        verify_cert(garbage, (ca_dir / "ca.crt").read_bytes())
    with pytest.raises(AuthError):
        principal_from_cert(garbage)


def test_wrong_role_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown role"):
        issue(ca_dir, "admin", "eve", out_dir=tmp_path)
    assert not (tmp_path / "eve.key").exists()


def _self_signed(subject: list[x509.NameAttribute]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(subject)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def test_principal_from_cert_needs_known_role_and_name() -> None:
    cn, ou = NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME
    unknown_role = _self_signed(
        [x509.NameAttribute(cn, "x"), x509.NameAttribute(ou, "root")]
    )
    no_role = _self_signed([x509.NameAttribute(cn, "x")])
    bad_name = _self_signed(
        [x509.NameAttribute(cn, "@coordinator"), x509.NameAttribute(ou, "node")]
    )
    for pem in (unknown_role, no_role, bad_name):
        with pytest.raises(AuthError):
            principal_from_cert(pem)


@pytest.mark.parametrize(
    "name", ["", "@coordinator", "a" * 65, "a b", "a/b", "../x", "ca", "CA", "é", ".."]
)
def test_bad_names_are_refused(ca_dir: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid name"):
        issue(ca_dir, "node", name, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["a", "node-1.example_x", "a" * 64])
def test_good_names_are_accepted(ca_dir: Path, tmp_path: Path, name: str) -> None:
    ident = issue(ca_dir, "node", name, out_dir=tmp_path)
    assert principal_from_cert(ident.cert_path.read_bytes()).name == name


@pytest.mark.parametrize(
    ("dns", "ips"), [(["bad host"], []), ([], ["999.1.1.1"]), ("host", [])]
)
def test_bad_sans_are_refused(
    ca_dir: Path, tmp_path: Path, dns: list[str], ips: list[str]
) -> None:
    with pytest.raises(ConfigError):
        issue(ca_dir, "node", "n", out_dir=tmp_path, dns=dns, ips=ips)


def test_issue_without_a_ca_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ca\.crt"):
        issue(tmp_path, "node", "n")


def test_reissue_replaces_the_key(ca_dir: Path, tmp_path: Path) -> None:
    first = issue(ca_dir, "node", "n", out_dir=tmp_path).key_path.read_bytes()
    second = issue(ca_dir, "node", "n", out_dir=tmp_path).key_path.read_bytes()
    assert first != second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.crt", "n.key"]


# --- mutual TLS through gRPC ------------------------------------------------


def _client_creds(ident: IssuedIdentity | None, ca: bytes) -> grpc.ChannelCredentials:
    if ident is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=ident.key_path.read_bytes(),
        certificate_chain=ident.cert_path.read_bytes(),
    )


def _check(port: int, creds: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
        return int(reply.status)


def test_mutual_tls_with_grpc(ca_dir: Path, other_ca_dir: Path, tmp_path: Path) -> None:
    ca_pem = (ca_dir / "ca.crt").read_bytes()
    server_id = issue(ca_dir, "coordinator", "coordinator", out_dir=tmp_path)
    client_id = issue(ca_dir, "node", "hospital-a", out_dir=tmp_path)
    foreign_id = issue(other_ca_dir, "node", "hospital-a", out_dir=tmp_path / "x")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server_creds = grpc.ssl_server_credentials(
        [(server_id.key_path.read_bytes(), server_id.cert_path.read_bytes())],
        root_certificates=ca_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", server_creds)
    server.start()
    try:
        serving = health_pb2.HealthCheckResponse.SERVING
        assert _check(port, _client_creds(client_id, ca_pem)) == serving
        with pytest.raises(grpc.RpcError):
            _check(port, _client_creds(foreign_id, ca_pem))
        with pytest.raises(grpc.RpcError):
            _check(port, _client_creds(None, ca_pem))
    finally:
        server.stop(grace=None)
