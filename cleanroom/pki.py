"""Federation PKI: a built-in CA issuing every party's mutual-TLS identity."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cleanroom.errors import AuthError, CleanroomError, ConfigError

ROLES = ("coordinator", "node", "analyst")
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

# ECDSA over P-256 with SHA-256 gives 128-bit security, the federation's floor,
# and every gRPC/BoringSSL build supports it for both server and client auth.
_CURVE = ec.SECP256R1()
_HASH = hashes.SHA256()
# Certificates start slightly in the past so peers with a skewed clock accept them.
_BACKDATE = dt.timedelta(minutes=5)
_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# ``ca`` would make the leaf's files collide with the CA's own in the CA directory.
_RESERVED_NAMES = frozenset({"ca"})
_DNS_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)


@dataclass(frozen=True)
class Principal:
    """Who a certificate says its holder is: a role and a federation-unique name."""

    role: str
    name: str
    organisation: str = ""
    """An analyst's organisation (X.500 organizationIdentifier), for node policies."""


@dataclass(frozen=True)
class IssuedIdentity:
    """Where ``issue`` wrote a party's certificate and key, and the CA to trust."""

    cert_path: Path
    key_path: Path
    ca_path: Path


@dataclass(frozen=True)
class TlsIdentity:
    """A party's PEM certificate, private key and federation CA, as gRPC takes them."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)  # never shown in logs or tracebacks
    ca_pem: bytes

    @classmethod
    def load(cls, cert: Path, key: Path, ca: Path) -> TlsIdentity:
        """Read the three PEM files; the key must belong to the certificate."""
        cert_pem, key_pem, ca_pem = (_read(p) for p in (cert, key, ca))
        leaf = _parse_cert(cert_pem, ConfigError, f"{cert} is not a PEM certificate")
        _parse_cert(ca_pem, ConfigError, f"{ca} is not a PEM certificate")
        private = _parse_ec_key(key_pem, key)
        if private.public_key() != leaf.public_key():
            raise ConfigError(f"{key} is not the private key of {cert}")
        return cls(cert_pem=cert_pem, key_pem=key_pem, ca_pem=ca_pem)

    @property
    def principal(self) -> Principal:
        return principal_from_cert(self.cert_pem)


def init_ca(
    directory: Path, *, federation: str = "cleanroom", validity_days: int = 3650
) -> Path:
    """Create a federation CA in ``directory`` and return the path of ``ca.crt``."""
    _check_federation(federation)
    _check_days(validity_days)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    for path in (cert_path, key_path):
        if path.exists():
            raise ConfigError(f"{path} already exists; refusing to replace a CA")
    key = ec.generate_private_key(_CURVE)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, _HASH)
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret_file(key_path, _key_pem(key), exclusive=True)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(
    ca_dir: Path,
    role: str,
    name: str,
    *,
    out_dir: Path | None = None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    validity_days: int = 825,
    organisation: str = "",
) -> IssuedIdentity:
    """Issue ``role``/``name`` a leaf certificate for mutual TLS, signed by the CA.

    Re-issuing an existing name replaces its certificate and key atomically.
    """
    _check_role(role, ConfigError)
    _check_name(name, ConfigError)
    _check_days(validity_days)
    if organisation:
        _check_name(organisation, ConfigError)
    dns_names = _dns_sans(name, dns)
    ip_addrs = _ip_sans(ips)
    ca_path, ca_key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
    ca_cert = _parse_cert(_read(ca_path), ConfigError, f"{ca_path} is not a cert")
    ca_key = _parse_ec_key(_read(ca_key_path), ca_key_path)
    if ca_key.public_key() != ca_cert.public_key():
        raise ConfigError(f"{ca_key_path} is not the private key of {ca_path}")
    federation = _single_attr(ca_cert.subject, NameOID.ORGANIZATION_NAME)
    if federation is None:
        raise ConfigError(f"{ca_path} has no organization (federation) name")

    key = ec.generate_private_key(_CURVE)
    now = dt.datetime.now(dt.UTC)
    # A leaf must not outlive the CA that vouches for it.
    not_after = min(now + dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        ]
        + (
            [x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, organisation)]
            if organisation
            else []
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ip) for ip in ip_addrs]
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, _HASH)
    )
    target = out_dir if out_dir is not None else ca_dir
    target.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = target / f"{name}.crt", target / f"{name}.key"
    write_secret_file(key_path, _key_pem(key), exclusive=False)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return IssuedIdentity(cert_path=cert_path, key_path=key_path, ca_path=ca_path)


def principal_from_cert(cert_pem: bytes) -> Principal:
    """Read the role (OU) and name (CN) a certificate claims, without verifying it."""
    cert = _parse_cert(cert_pem, AuthError, "not a PEM certificate")
    name = _single_attr(cert.subject, NameOID.COMMON_NAME)
    role = _single_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if name is None or role is None:
        raise AuthError("certificate lacks a single CN (name) and OU (role)")
    _check_role(role, AuthError)
    _check_name(name, AuthError)
    organisation = _single_attr(cert.subject, NameOID.ORGANIZATION_IDENTIFIER) or ""
    return Principal(role=role, name=name, organisation=organisation)


def verify_cert(
    cert_pem: bytes, ca_pem: bytes, *, now: dt.datetime | None = None
) -> Principal:
    """Check ``cert_pem`` is a current leaf issued by this CA; return its principal."""
    cert = _parse_cert(cert_pem, AuthError, "not a PEM certificate")
    ca = _parse_cert(ca_pem, AuthError, "CA is not a PEM certificate")
    at = now if now is not None else dt.datetime.now(dt.UTC)
    if not _is_ca(ca):
        raise AuthError("the trusted certificate is not a CA")
    if _is_ca(cert):
        raise AuthError("a CA certificate cannot act as a party's identity")
    try:
        # Checks the issuer name matches the CA's subject, then the signature.
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, _CryptographyInvalidSignature):
        raise AuthError("certificate was not issued by this federation's CA") from None
    for c, what in ((cert, "certificate"), (ca, "CA certificate")):
        if not c.not_valid_before_utc <= at <= c.not_valid_after_utc:
            raise AuthError(f"{what} is expired or not yet valid")
    return principal_from_cert(cert_pem)


def write_secret_file(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write private key material readable by the owner only (mode 0600).

    With ``exclusive`` an existing file is an error (ConfigError); otherwise the
    file is replaced atomically so a reader never sees a half-written key.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    target = path if exclusive else tmp
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; not replacing it") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        _write_fd(fd, data)
        if not exclusive:
            os.replace(tmp, path)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_fd(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # whatever the umask, exactly owner read/write
        f.write(data)
        f.flush()
        os.fsync(fd)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"missing file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _parse_cert(
    pem: bytes, error: type[CleanroomError], message: str
) -> x509.Certificate:
    if not isinstance(pem, bytes):
        raise error(message)
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise error(message) from None


def _parse_ec_key(pem: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVE.name:
        raise ConfigError(f"{path} is not an ECDSA P-256 private key")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8 because gRPC cannot take a passphrase; the file is 0600.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _single_attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        return None
    return attrs[0].value


def _check_role(role: str, error: type[CleanroomError]) -> None:
    if role not in ROLES:
        raise error(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def _check_name(name: str, error: type[CleanroomError]) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise error(
            f"invalid name {name!r}: use 1-64 characters of A-Z a-z 0-9 _ . - "
            "(names starting with '@' are reserved)"
        )
    if name.lower() in _RESERVED_NAMES or name.strip(".") == "":
        raise error(f"invalid name {name!r}: reserved")


def _check_federation(federation: str) -> None:
    if not isinstance(federation, str) or not _NAME_RE.fullmatch(federation):
        raise ConfigError(
            f"invalid federation name {federation!r}: use 1-64 of A-Z a-z 0-9 _ . -"
        )


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"validity_days must be a positive integer, got {days!r}")


def _dns_sans(name: str, extra: Sequence[str]) -> list[str]:
    if isinstance(extra, str):
        raise ConfigError("dns must be a sequence of names, not a single string")
    # The party name is always a SAN so peers can dial it by name; it is ASCII by
    # construction, but not always a valid hostname (e.g. 64 characters).
    names: list[str] = [name]
    for d in ("localhost", *extra):
        if not isinstance(d, str) or len(d) > 253 or not _DNS_RE.fullmatch(d):
            raise ConfigError(f"invalid DNS name for a certificate: {d!r}")
        if d.lower() not in (n.lower() for n in names):
            names.append(d)
    return names


def _ip_sans(extra: Sequence[str]) -> list[_IpAddress]:
    if isinstance(extra, str):
        raise ConfigError("ips must be a sequence of addresses, not a single string")
    addrs: list[_IpAddress] = []
    for ip in ("127.0.0.1", *extra):
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"invalid IP address for a certificate: {ip!r}") from None
        if addr not in addrs:
            addrs.append(addr)
    return addrs
