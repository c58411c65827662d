"""Keys, mask seeds and masks: X25519 agreement, HKDF-SHA256, a ChaCha20 keystream as the
pseudo-random generator, AES-256-GCM for the shares routed through the server.

- `agree(private, public, purpose)`: HKDF-SHA256 (no salt, info = purpose) of the X25519
  shared secret: 32 bytes. Purposes: MASK_INFO for the pairwise mask seed s_uv, SHARE_INFO
  for the key that encrypts u's shares for v. Both parties derive the same bytes.
- `prg(seed, n)`: n uint32, little-endian, from the ChaCha20 (RFC 7539) keystream under key
  `seed` with a zero 16-byte nonce (counter 0): keystream bytes [0, 4n).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

MASK_INFO = b"paramserver secagg mask"
SHARE_INFO = b"paramserver secagg share"
KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair, both halves as 32 raw bytes."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
                   key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def agree(private: bytes, public: bytes, purpose: bytes) -> bytes:
    """The 32-byte key both ends of (private, peer's public) derive for `purpose`."""
    if len(public) != KEY_BYTES:
        raise ValueError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(public)}")
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=purpose).derive(shared)


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` pseudo-random uint32 from `seed` (32 bytes)."""
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(4 * length)), dtype="<u4").astype(np.uint32)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """nonce (12 random bytes) || AES-256-GCM ciphertext and tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """Raises cryptography's InvalidTag if `sealed` was not made with `key` for `associated`."""
    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
