"""AES-256-GCM sealing with a random 96-bit nonce.

Sealed layout: ``nonce (12) ‖ ciphertext ‖ tag (16)``. The associated data is
the caller's: for repository objects it binds repository id, kind and object
id, so an object copied over another's name, or from another repository, fails
authentication instead of decrypting.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultstore.errors import IntegrityError

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


class Sealer:
    """Seals and opens byte strings under one 32-byte key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``associated``."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes, what: str = "object") -> bytes:
        """Decrypt ``sealed``.

        Raises:
            IntegrityError: too short, altered, or bound to other associated data.
        """
        if len(sealed) < OVERHEAD:
            raise IntegrityError(f"{what} is truncated ({len(sealed)} bytes)")
        try:
            return self._aead.decrypt(
                sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated
            )
        except InvalidTag as exc:
            raise IntegrityError(
                f"{what} failed authentication (corrupt or tampered)"
            ) from exc
