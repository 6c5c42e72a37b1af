"""The legacy seed envelope (``encryptedMasterSeed``), exactly as the old
service writes it (``compat/FORMAT.md``).

Layout: standard padded base64 of ``IV (16) ‖ GCM tag (16) ‖ ciphertext``.
AES-256-GCM with a 16-byte IV and no associated data; the key is
PBKDF2-HMAC-SHA256(UTF-8 password, salt, 100,000 iterations, 32 bytes) with a
32-byte salt that is *not* in the envelope (the old service keeps it in a file
named ``encryption-salt``). Plaintext: the mnemonic, UTF-8.

This KDF is below current guidance; vaultstore writes this envelope only into
legacy JSON exports. A wrong password, a wrong salt and an altered byte all
fail the same GCM tag and cannot be told apart; they give the old service's
message. Only structural damage (not base64, too short) is reported as such.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultstore.crypto.password import check_password
from vaultstore.errors import InputError, IntegrityError, WrongPasswordError

ITERATIONS = 100_000
SALT_SIZE = 32
IV_SIZE = 16
TAG_SIZE = 16
WRONG_PASSWORD_MESSAGE = "Invalid password or corrupted data"


def new_salt() -> bytes:
    """A fresh 32-byte salt for an ``encryption-salt`` file."""
    return os.urandom(SALT_SIZE)


def encrypt_legacy_seed(mnemonic: str, password: str, salt: bytes) -> str:
    """The legacy ``encryptedMasterSeed`` string for ``mnemonic``.

    Raises:
        WeakPasswordError: the password fails the password rule.
    """
    check_password(password)
    iv = os.urandom(IV_SIZE)
    sealed = AESGCM(_key(password, salt)).encrypt(iv, mnemonic.encode("utf-8"), None)
    ciphertext, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
    return base64.b64encode(iv + tag + ciphertext).decode("ascii")


def decrypt_legacy_seed(envelope: str, password: str, salt: bytes) -> str:
    """The mnemonic inside a legacy ``encryptedMasterSeed``.

    Raises:
        IntegrityError: the envelope is not base64 or too short to be one.
        WrongPasswordError: wrong password, wrong salt, or an altered byte.
    """
    try:
        raw = base64.b64decode(envelope.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise IntegrityError("encryptedMasterSeed is not valid base64") from exc
    if len(raw) <= IV_SIZE + TAG_SIZE:
        raise IntegrityError(f"encryptedMasterSeed is truncated ({len(raw)} bytes)")

    iv, tag, ciphertext = raw[:IV_SIZE], raw[IV_SIZE : IV_SIZE + TAG_SIZE], raw[32:]
    try:
        plain = AESGCM(_key(password, salt)).decrypt(iv, ciphertext + tag, None)
    except InvalidTag as exc:
        raise WrongPasswordError(WRONG_PASSWORD_MESSAGE) from exc
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError("encryptedMasterSeed holds no text mnemonic") from exc


def _key(password: str, salt: bytes) -> bytes:
    if len(salt) != SALT_SIZE:
        raise InputError(
            f"the encryption salt must be {SALT_SIZE} bytes, not {len(salt)}"
        )
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, ITERATIONS, 32)
