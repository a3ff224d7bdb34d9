"""SecAgg+ key material: signed X25519 keys, pairwise mask seeds, share-bundle AEAD.

Each party has two X25519 key pairs. ``c`` keys encrypt share bundles between
neighbours; ``s`` keys agree the pairwise mask seeds. They are separate because
the coordinator learns a dropped party's ``s`` secret key (to cancel its masks)
and must not thereby learn the ``c`` key that protects the shares it exchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from cleanroom.errors import ProtocolError
from protocols.party import RandomSource
from protocols.secagg.messages import SHARE_KEYS, KeyAdvertisement, encode_name

KEY_BYTES: Final = 32
_MASK_INFO: Final = b"cleanroom/secagg/v1/pair-mask\x00"
_BUNDLE_INFO: Final = b"cleanroom/secagg/v1/share-bundle\x00"
_BUNDLE_AD: Final = b"cleanroom/secagg/v1/share-bundle-ad\x00"
# The bundle key is derived per session, per *ordered* (sender, recipient) pair, and
# each sender seals exactly one bundle per recipient, so each key encrypts a single
# message and a constant nonce cannot repeat under one key.
_BUNDLE_NONCE: Final = bytes(12)


@dataclass(frozen=True)
class SessionKeys:
    """A party's fresh per-session secrets: both X25519 keys and the self-mask seed."""

    c_sk: X25519PrivateKey
    s_sk: X25519PrivateKey
    self_mask_seed: bytes

    @classmethod
    def generate(cls, random: RandomSource) -> SessionKeys:
        """Draw every secret from the injected randomness source."""
        return cls(
            c_sk=X25519PrivateKey.from_private_bytes(_draw(random, KEY_BYTES)),
            s_sk=X25519PrivateKey.from_private_bytes(_draw(random, KEY_BYTES)),
            self_mask_seed=_draw(random, KEY_BYTES),
        )

    def advertise(
        self, party: str, signing_key: Ed25519PrivateKey, digest: bytes
    ) -> KeyAdvertisement:
        """Sign both public keys under this configuration."""
        c_pk, s_pk = public_bytes(self.c_sk), public_bytes(self.s_sk)
        signed = KeyAdvertisement.signed_bytes(digest, party, c_pk, s_pk)
        return KeyAdvertisement(party, c_pk, s_pk, signing_key.sign(signed))


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte secret key: only ever Shamir-shared, never sent whole."""
    return key.private_bytes_raw()


def identity_keys(raw: Mapping[str, bytes]) -> dict[str, Ed25519PublicKey]:
    """Raw 32-byte Ed25519 identity keys as key objects; ProtocolError if bad."""
    try:
        return {n: Ed25519PublicKey.from_public_bytes(k) for n, k in raw.items()}
    except ValueError as exc:
        raise ProtocolError(f"a party's signing key is malformed: {exc}") from None


def verify_advertisement(
    advert: KeyAdvertisement, identity: Ed25519PublicKey, digest: bytes
) -> None:
    """Raise ProtocolError unless ``identity`` signed these keys for this session."""
    signed = KeyAdvertisement.signed_bytes(
        digest, advert.party, advert.c_pk, advert.s_pk
    )
    # libsodium verifies Ed25519 about twice as fast as this OpenSSL build, and every
    # client checks every neighbour's advertisement: the protocol's hottest signature.
    raw = identity.public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        VerifyKey(raw).verify(signed, advert.signature)
    except (BadSignatureError, ValueError, TypeError):
        raise ProtocolError(
            f"the keys advertised for {advert.party!r} are not signed by it"
        ) from None


def agree(secret: X25519PrivateKey, peer_public: bytes, peer: str) -> bytes:
    """X25519 with a neighbour's advertised key; refuses low-order points."""
    try:
        return secret.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise ProtocolError(f"the public key of {peer!r} is not usable") from None


def pair_mask_seed(shared: bytes, digest: bytes, a: str, b: str) -> bytes:
    """The full 32-byte mask seed of the unordered pair {a, b} in this session."""
    low, high = sorted((a, b))
    info = _MASK_INFO + encode_name(low) + encode_name(high)
    return _hkdf(shared, digest, info)


def adds_pair_mask(party: str, peer: str) -> bool:
    """The party with the smaller name adds the pair's mask and the other subtracts."""
    return party < peer


def seal_bundle(
    shared: bytes, digest: bytes, sender: str, recipient: str, plaintext: bytes
) -> bytes:
    """Encrypt a share bundle; the key and associated data bind both names."""
    aead = ChaCha20Poly1305(_bundle_key(shared, digest, sender, recipient))
    ad = _bundle_ad(digest, sender, recipient)
    return aead.encrypt(_BUNDLE_NONCE, plaintext, ad)


def open_bundle(
    shared: bytes, digest: bytes, sender: str, recipient: str, ciphertext: bytes
) -> bytes:
    """Decrypt a share bundle; raises ProtocolError if it was altered or misrouted."""
    aead = ChaCha20Poly1305(_bundle_key(shared, digest, sender, recipient))
    ad = _bundle_ad(digest, sender, recipient)
    try:
        return aead.decrypt(_BUNDLE_NONCE, ciphertext, ad)
    except InvalidTag:
        raise ProtocolError(
            f"the share bundle from {sender!r} failed authentication"
        ) from None


def _bundle_key(shared: bytes, digest: bytes, sender: str, recipient: str) -> bytes:
    return _hkdf(
        shared, digest, _BUNDLE_INFO + encode_name(sender) + encode_name(recipient)
    )


def _bundle_ad(digest: bytes, sender: str, recipient: str) -> bytes:
    stage = encode_name(SHARE_KEYS)
    return _BUNDLE_AD + stage + digest + encode_name(sender) + encode_name(recipient)


def _hkdf(shared: bytes, digest: bytes, info: bytes) -> bytes:
    kdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=digest, info=info)
    return kdf.derive(shared)


def _draw(random: RandomSource, n: int) -> bytes:
    data = random(n)
    if not isinstance(data, bytes) or len(data) != n:
        raise ProtocolError("the random source returned the wrong number of bytes")
    return data
