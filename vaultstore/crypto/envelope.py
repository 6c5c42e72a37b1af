"""The manifest-grade seed envelope: the mnemonic under a strong KDF.

Format ``vaultstore-seed-envelope``, version 1 (the only accepted version). A
JSON-able dict, copied into every manifest so that one manifest plus the
password recovers the seed::

    {
      "format": "vaultstore-seed-envelope",
      "version": 1,
      "kdf": {"name": "argon2id", "salt": "...", "params": {...}},
      "nonce": "<base64, 12 bytes>",
      "ciphertext": "<base64: AES-256-GCM ciphertext ‖ tag (16)>",
      "checksum": "<hex SHA-256 of the canonical bytes of the other fields>"
    }

Key: ``HKDF(Argon2id(password, kdf), "seed-envelope")`` with the envelope's own
salt (never shared with a key file). Associated data: the canonical bytes of
``{"format", "version", "kdf"}``, so a lowered parameter or swapped salt fails
authentication; parameters below the caller's floor are refused before the
KDF runs. The unkeyed ``checksum`` separates accidental damage from a wrong
password; deliberate tampering is caught by the manifest's MAC around it.
Plaintext: the mnemonic, UTF-8.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultstore.crypto import kdf
from vaultstore.crypto.kdf import KdfSpec, canonical_json, decode_b64
from vaultstore.crypto.password import check_password
from vaultstore.crypto.purpose import derive_key
from vaultstore.errors import (
    IntegrityError,
    UnsupportedVersionError,
    WrongPasswordError,
)

FORMAT = "vaultstore-seed-envelope"
VERSION = 1
ACCEPTED_VERSIONS = (1,)
NONCE_SIZE = 12
_FIELDS = {"format", "version", "kdf", "nonce", "ciphertext", "checksum"}
_MAX_CIPHERTEXT = 4096


def seal_seed(mnemonic: str, password: str, profile: str) -> dict[str, Any]:
    """A new envelope holding ``mnemonic`` under ``password``.

    Raises:
        WeakPasswordError: the password fails the password rule.
    """
    check_password(password)
    spec = kdf.new_spec(profile)
    key = derive_key(kdf.derive(spec, password), "seed-envelope")

    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kdf": spec.to_dict(),
    }
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(
        nonce, mnemonic.encode("utf-8"), canonical_json(header)
    )
    body = {
        **header,
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "ciphertext": base64.b64encode(sealed).decode("ascii"),
    }
    body["checksum"] = hashlib.sha256(canonical_json(body)).hexdigest()
    return body


def open_seed(envelope: Any, password: str, floor_profile: str) -> str:
    """The mnemonic inside ``envelope``.

    Raises:
        IntegrityError: a damaged envelope, or KDF parameters below the floor.
        UnsupportedVersionError: an unknown envelope version or KDF.
        WrongPasswordError: the password does not open the envelope.
    """
    _check_structure(envelope)
    spec = KdfSpec.from_dict(envelope["kdf"], "seed envelope")
    spec.check_floor(floor_profile, "seed envelope")
    nonce = decode_b64(envelope["nonce"], "seed envelope: nonce")
    sealed = decode_b64(envelope["ciphertext"], "seed envelope: ciphertext")
    if len(nonce) != NONCE_SIZE or not 16 < len(sealed) <= _MAX_CIPHERTEXT:
        raise IntegrityError("seed envelope: nonce or ciphertext has a wrong length")

    key = derive_key(kdf.derive(spec, password), "seed-envelope")
    header = {k: envelope[k] for k in ("format", "version", "kdf")}
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, canonical_json(header))
    except InvalidTag as exc:
        raise WrongPasswordError(
            "wrong password: the seed envelope does not open with it"
        ) from exc
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntegrityError("seed envelope holds no text mnemonic") from exc


def envelope_info(envelope: Any) -> dict[str, Any]:
    """Public facts about an envelope (KDF name and parameters)."""
    _check_structure(envelope)
    spec = KdfSpec.from_dict(envelope["kdf"], "seed envelope")
    return {"kdf": spec.name, **spec.to_dict()["params"]}


def _check_structure(envelope: Any) -> None:
    if not isinstance(envelope, dict) or set(envelope) != _FIELDS:
        raise IntegrityError("seed envelope is damaged (unexpected structure)")
    if envelope["format"] != FORMAT:
        raise IntegrityError("not a vaultstore seed envelope")
    version = envelope["version"]
    if isinstance(version, bool) or version not in ACCEPTED_VERSIONS:
        raise UnsupportedVersionError(
            f"seed envelope version {version!r} is not supported (accepted: 1)"
        )
    rest = {k: v for k, v in envelope.items() if k != "checksum"}
    expected = hashlib.sha256(canonical_json(rest)).hexdigest().encode("ascii")
    stored = envelope["checksum"]
    if not isinstance(stored, str) or not hmac.compare_digest(
        expected, stored.encode("utf-8")
    ):
        raise IntegrityError("seed envelope is damaged (checksum mismatch)")
