"""SecAgg+ key material: signed X25519 keys, pairwise mask seeds, share-bundle AEAD.

Each party has two X25519 key pairs. ``c`` keys encrypt share bundles between
neighbours; ``s`` keys agree the pairwise mask seeds. They are separate because
the coordinator learns a dropped party's ``s`` secret key (to cancel its masks)
and must not thereby learn the ``c`` key that protects the shares it exchanged.

Two ways to authenticate a session's keys, fixed by the configuration:

* **signed per session** (no ``key_scope``): each advertisement carries an
  Ed25519 signature over the configuration digest, the party and both keys;
* **certified channel keys** (``key_scope``, a job's series of sessions): the
  ``c`` key is drawn once per job (``ChannelKeys``) and signed once, over the
  scope, the party and ``c_pk`` (a certificate every neighbour verifies once per
  job); a session's fresh ``s_pk`` is authenticated pairwise instead, by binding
  the sender's and the recipient's ``s_pk`` into the associated data of every
  share bundle (``seal_bundle``). Bundle keys come from the certified ``c``
  agreement, which the coordinator cannot compute, so a bundle opens only if
  both ends saw the same two ``s`` keys; a client masks only with the peers
  whose bundles it opened, so a substituted ``s_pk`` is refused before any mask
  uses it. This removes every per-session Ed25519 signature and verification.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base, crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.exceptions import RuntimeError as SodiumRuntimeError

from cleanroom.errors import ProtocolError
from protocols.party import RandomSource
from protocols.secagg.messages import SHARE_KEYS, KeyAdvertisement, encode_name

KEY_BYTES: Final = 32
_MASK_INFO: Final = b"cleanroom/secagg/v1/pair-mask\x00"
_BUNDLE_INFO: Final = b"cleanroom/secagg/v1/share-bundle\x00"
_BUNDLE_AD: Final = b"cleanroom/secagg/v1/share-bundle-ad\x00"
_BUNDLE_NONCE: Final = bytes(12)
_ROUND_INFO: Final = b"cleanroom/secagg/v1/series-round\x00"
_CERTIFICATE_DOMAIN: Final = b"cleanroom/secagg/v1/channel-key\x00"


@dataclass(frozen=True)
class SessionKeys:
    """A party's fresh per-session secrets: both X25519 keys and the self-mask seed.

    X25519 keys are raw 32-byte scalars; libsodium clamps them as RFC 7748 says.
    """

    # Secrets stay out of reprs, so no log line or traceback can print them.
    c_sk: bytes = field(repr=False)
    s_sk: bytes = field(repr=False)
    self_mask_seed: bytes = field(repr=False)

    c_pk: bytes = b""
    """The public half of ``c_sk`` when a ``ChannelKeys`` already computed it."""

    @classmethod
    def generate(
        cls, random: RandomSource, channel: ChannelKeys | None = None
    ) -> SessionKeys:
        """Draw every secret from the injected randomness source; with ``channel``,
        its bundle-encryption key stands in for a fresh ``c`` key (the ``s`` key and
        the self-mask seed are always fresh)."""
        return cls(
            c_sk=channel.c_sk if channel is not None else draw(random, KEY_BYTES),
            s_sk=draw(random, KEY_BYTES),
            self_mask_seed=draw(random, KEY_BYTES),
            c_pk=channel.c_pk if channel is not None else b"",
        )

    def advertise(
        self, party: str, signing_key: Ed25519PrivateKey, digest: bytes
    ) -> KeyAdvertisement:
        """Sign both public keys under this configuration."""
        c_pk = self.c_pk or public_key(self.c_sk)
        s_pk = public_key(self.s_sk)
        signed = KeyAdvertisement.signed_bytes(digest, party, c_pk, s_pk)
        return KeyAdvertisement(party, c_pk, s_pk, signing_key.sign(signed))


class ChannelKeys:
    """One party's share-bundle (``c``) key pair for every SecAgg+ session of one
    job, and its X25519 agreements with the neighbours' advertised ``c`` keys.

    Sound to reuse where a fresh pair per session is not needed: ``c_sk`` is never
    shared (the coordinator only ever reconstructs ``s`` keys, of dropped parties),
    ``c_pk`` is signed (per session, or once per job under ``scope``: see the module
    docstring), and the bundle keys are HKDF'd with each session's configuration
    digest as salt, so every session has fresh bundle keys and each still seals
    one message. The cost: whoever later steals ``c_sk`` can open the bundles of
    all the job's sessions rather than one (no forward secrecy between a job's
    rounds). The pairwise mask keys (``s``) and self-mask seeds stay fresh per
    session.

    With ``scope`` (sessions whose configuration names that ``key_scope``) it also
    holds this party's certificate over ``c_pk``, signed once, and remembers every
    neighbour certificate it has verified, so each is checked once per job.
    """

    def __init__(self, random: RandomSource, scope: str | None = None) -> None:
        if scope is not None and not (isinstance(scope, str) and scope):
            raise ProtocolError("a channel key scope must be a non-empty string")
        self.c_sk = draw(random, KEY_BYTES)
        self.c_pk = public_key(self.c_sk)
        self.scope = scope
        self._agreed: dict[bytes, bytes] = {}
        self._certificate: tuple[str, bytes] | None = None
        self._certified: set[tuple[str, bytes, bytes]] = set()
        self._peers: dict[str, bytes] = {}

    def certificate(self, party: str, signing_key: Ed25519PrivateKey) -> bytes:
        """``party``'s signature over (scope, party, ``c_pk``), made once."""
        if self.scope is None:
            raise ProtocolError("these channel keys have no scope to certify")
        if self._certificate is None or self._certificate[0] != party:
            signed = certificate_bytes(self.scope, party, self.c_pk)
            self._certificate = (party, signing_key.sign(signed))
        return self._certificate[1]

    def check_certificate(
        self, advert: KeyAdvertisement, identity: Ed25519PublicKey | bytes
    ) -> None:
        """Raise ProtocolError unless ``identity`` certified ``advert.c_pk`` under
        this scope; a certificate verified once is not verified again."""
        if self.scope is None:
            raise ProtocolError("these channel keys have no scope to check against")
        entry = (advert.party, advert.c_pk, advert.signature)
        if entry in self._certified:
            return
        signed = certificate_bytes(self.scope, advert.party, advert.c_pk)
        _verify(advert.signature, signed, identity, advert.party)
        self._certified.add(entry)
        known = self._peers.get(advert.party, advert.c_pk)
        # Two certified keys for one party in one scope: neither is used by name.
        self._peers[advert.party] = advert.c_pk if known == advert.c_pk else b""

    def certified_key(self, party: str) -> bytes | None:
        """The channel key ``party`` certified under this scope, as checked here;
        None if none was checked, or if the party certified two."""
        return self._peers.get(party) or None

    def __repr__(self) -> str:
        return "ChannelKeys(...)"  # no secret in any log line or traceback

    def agree(self, peer_public: bytes, peer: str) -> bytes:
        """``agree(c_sk, peer_public)``, computed once per advertised peer key."""
        shared = self._agreed.get(peer_public)
        if shared is None:
            shared = agree(self.c_sk, peer_public, peer)
            self._agreed[peer_public] = shared
        return shared


def public_key(secret: bytes) -> bytes:
    """The raw 32-byte X25519 public key of a raw secret key."""
    return crypto_scalarmult_base(secret)


def identity_keys(raw: Mapping[str, bytes]) -> dict[str, Ed25519PublicKey]:
    """Raw 32-byte Ed25519 identity keys as key objects; ProtocolError if bad."""
    try:
        return {n: Ed25519PublicKey.from_public_bytes(k) for n, k in raw.items()}
    except ValueError as exc:
        raise ProtocolError(f"a party's signing key is malformed: {exc}") from None


def verify_advertisement(
    advert: KeyAdvertisement, identity: Ed25519PublicKey | bytes, digest: bytes
) -> None:
    """Raise ProtocolError unless ``identity`` signed these keys for this session.

    ``identity`` may be given as its raw 32 bytes, which parties that check many
    advertisements keep to avoid re-serialising the key for every check.
    """
    signed = KeyAdvertisement.signed_bytes(
        digest, advert.party, advert.c_pk, advert.s_pk
    )
    _verify(advert.signature, signed, identity, advert.party)


def certificate_bytes(scope: str, party: str, c_pk: bytes) -> bytes:
    """What a channel-key certificate covers: domain, scope, party and ``c_pk``."""
    return _CERTIFICATE_DOMAIN + encode_name(scope) + encode_name(party) + c_pk


def _verify(
    signature: bytes, signed: bytes, identity: Ed25519PublicKey | bytes, party: str
) -> None:
    # libsodium verifies Ed25519 about twice as fast as this OpenSSL build, and every
    # client checks every neighbour's advertisement: the protocol's hottest signature.
    raw = identity if isinstance(identity, bytes) else identity.public_bytes_raw()
    try:
        crypto_sign_open(signature + signed, raw)
    except (BadSignatureError, ValueError, TypeError):
        raise ProtocolError(
            f"the keys advertised for {party!r} are not signed by it"
        ) from None


def agree(secret: bytes, peer_public: bytes, peer: str) -> bytes:
    """X25519 with a neighbour's advertised key; refuses low-order points.

    libsodium's ``crypto_scalarmult``: one C call on raw keys, and it fails on the
    all-zero output a low-order point would give.
    """
    try:
        return crypto_scalarmult(secret, peer_public)
    except (SodiumRuntimeError, ValueError, TypeError):
        raise ProtocolError(f"the public key of {peer!r} is not usable") from None


def pair_mask_seed(shared: bytes, digest: bytes, a: str, b: str) -> bytes:
    """The full 32-byte mask seed of the unordered pair {a, b} in this session."""
    low, high = sorted((a, b))
    info = _MASK_INFO + encode_name(low) + encode_name(high)
    return _hkdf(shared, digest, info)


def round_pair_keys(
    shared: bytes, digest: bytes, party: str, peer: str
) -> tuple[bytes, bytes]:
    """A series round's keys for one pair, from the pair's certified ``c``
    agreement (``series``): the pair's mask seed and its bundle key (one bundle
    each way, told apart by ``bundle_nonce``). One HKDF call, salted with the
    round's series digest and bound to the unordered pair, under a label no other
    derivation uses."""
    low, high = sorted((party, peer))
    info = _ROUND_INFO + encode_name(low) + encode_name(high)
    okm = _hkdf(shared, digest, info, 2 * KEY_BYTES)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


def bundle_nonce(sender: str, recipient: str) -> bytes:
    """The nonce of the one bundle ``sender`` seals to ``recipient`` under their
    round's bundle key: the two directions differ, nothing else repeats a key."""
    return bytes(11) + (b"\x00" if sender < recipient else b"\x01")


def adds_pair_mask(party: str, peer: str) -> bool:
    """The party with the smaller name adds the pair's mask and the other subtracts."""
    return party < peer


def bundle_keys(
    shared: bytes, digest: bytes, party: str, peer: str
) -> tuple[bytes, bytes]:
    """The share-bundle keys of one pair: (party -> peer, peer -> party).

    One HKDF call yields both directions' keys, each bound to the ordered pair.
    Each sender seals exactly one bundle per recipient, so each key encrypts a
    single message and the constant nonce cannot repeat under one key.
    """
    low, high = sorted((party, peer))
    info = _BUNDLE_INFO + encode_name(low) + encode_name(high)
    okm = _hkdf(shared, digest, info, 2 * KEY_BYTES)
    low_to_high, high_to_low = okm[:KEY_BYTES], okm[KEY_BYTES:]
    return (low_to_high, high_to_low) if party == low else (high_to_low, low_to_high)


def seal_bundle(
    key: bytes,
    digest: bytes,
    sender: str,
    recipient: str,
    plaintext: bytes,
    mask_keys: tuple[bytes, bytes],
) -> bytes:
    """Encrypt a share bundle under its ``bundle_keys`` key; the AD binds both names
    and ``mask_keys``, the sender's and the recipient's ``s_pk`` as the sender saw
    them (what authenticates them under a ``key_scope``)."""
    ad = _bundle_ad(digest, sender, recipient, mask_keys)
    return ChaCha20Poly1305(key).encrypt(_BUNDLE_NONCE, plaintext, ad)


def open_bundle(
    key: bytes,
    digest: bytes,
    sender: str,
    recipient: str,
    ciphertext: bytes,
    mask_keys: tuple[bytes, bytes],
) -> bytes:
    """Decrypt a share bundle; raises ProtocolError if it was altered, misrouted or
    sealed over other ``s`` keys than ``mask_keys`` (sender's, recipient's)."""
    ad = _bundle_ad(digest, sender, recipient, mask_keys)
    try:
        return ChaCha20Poly1305(key).decrypt(_BUNDLE_NONCE, ciphertext, ad)
    except InvalidTag:
        raise ProtocolError(
            f"the share bundle from {sender!r} failed authentication"
        ) from None


def _bundle_ad(
    digest: bytes, sender: str, recipient: str, mask_keys: tuple[bytes, bytes]
) -> bytes:
    stage = encode_name(SHARE_KEYS)
    names = encode_name(sender) + encode_name(recipient)
    return _BUNDLE_AD + stage + digest + names + mask_keys[0] + mask_keys[1]


def _hkdf(shared: bytes, digest: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 (RFC 5869) with ``digest`` as salt, written on one-shot HMACs:
    the same output as ``cryptography``'s HKDF at a fraction of its per-call cost
    (a session derives two keys per neighbour)."""
    if not 0 < length <= 255 * 32:
        raise ProtocolError("an HKDF output is 1..8160 bytes")
    prk = hmac.digest(digest, shared, "sha256")
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
    return out[:length]


def draw(random: RandomSource, n: int) -> bytes:
    """``n`` bytes from ``random``; ProtocolError if it returns anything else."""
    data = random(n)
    if not isinstance(data, bytes) or len(data) != n:
        raise ProtocolError("the random source returned the wrong number of bytes")
    return data
