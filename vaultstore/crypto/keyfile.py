"""Key files: a random 32-byte master key wrapped under a password.

Format ``vaultstore-keyfile``, version 1 (the only accepted version). UTF-8
JSON, one object, at most 64 KiB::

    {
      "format": "vaultstore-keyfile",
      "version": 1,
      "kdf": {"name": "argon2id", "salt": "...", "params": {...}},
      "nonce": "<base64, 12 bytes>",
      "wrapped": "<base64, 48 bytes: AES-256-GCM ciphertext ‖ tag>",
      "mac": "<hex, HMAC-SHA256>",
      "checksum": "<hex, SHA-256>"
    }

Keys: ``P = Argon2id(password, kdf)``; ``KEK = HKDF(P, "keyfile-wrap")`` and
``MK = HKDF(P, "keyfile-mac")`` (``vaultstore.crypto.purpose``).

- ``wrapped`` = AES-256-GCM(KEK, nonce, master key), associated data = the
  canonical bytes of ``{"format", "version", "kdf"}``: a changed parameter,
  salt or version fails authentication.
- ``mac`` = HMAC-SHA256(MK, canonical bytes of every field but ``mac`` and
  ``checksum``). It is checked before unwrapping; a mismatch means the password
  is wrong (or a field was deliberately edited and ``checksum`` recomputed:
  the two are indistinguishable by design, and neither opens the key).
- ``checksum`` = SHA-256 of the canonical bytes of every other field. It is
  unkeyed and only tells accidental damage (a flipped byte, a truncated copy)
  apart from a wrong password, before any KDF runs.

Opening checks, in order: size, JSON, structure, format and version, checksum,
KDF floor and ceiling — all before the KDF — then exactly one KDF run, the MAC,
and the unwrap. Nothing is ever written while opening.

Threats: an attacker who can edit the file can neither lower the KDF cost (the
floor refuses it; the AD binds it) nor learn anything from the error: every
wrong password gives the same message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultstore.crypto import kdf
from vaultstore.crypto.kdf import KdfSpec, canonical_json, decode_b64
from vaultstore.crypto.password import check_password
from vaultstore.crypto.purpose import MASTER_KEY_SIZE, derive_key
from vaultstore.errors import (
    IntegrityError,
    UnsupportedVersionError,
    WrongPasswordError,
)

log = logging.getLogger(__name__)

FORMAT = "vaultstore-keyfile"
VERSION = 1
ACCEPTED_VERSIONS = (1,)
MAX_SIZE = 64 * 1024
NONCE_SIZE = 12
_FIELDS = {"format", "version", "kdf", "nonce", "wrapped", "mac", "checksum"}


def generate_master_key() -> bytes:
    """A fresh random 32-byte master key."""
    return os.urandom(MASTER_KEY_SIZE)


def create_keyfile(
    master_key: bytes, password: str, profile: str, *, check_rule: bool = True
) -> bytes:
    """Wrap ``master_key`` under ``password`` with the KDF of ``profile``.

    Raises:
        WeakPasswordError: the password fails the password rule.
    """
    if len(master_key) != MASTER_KEY_SIZE:
        raise ValueError("master key must be 32 bytes")
    if check_rule:
        check_password(password)
    spec = kdf.new_spec(profile)
    wrap_key, mac_key = _keys(kdf.derive(spec, password))

    header = {"format": FORMAT, "version": VERSION, "kdf": spec.to_dict()}
    nonce = os.urandom(NONCE_SIZE)
    wrapped = AESGCM(wrap_key).encrypt(nonce, master_key, canonical_json(header))
    body = {**header, "nonce": _b64(nonce), "wrapped": _b64(wrapped)}
    body["mac"] = _mac(mac_key, body)
    body["checksum"] = hashlib.sha256(canonical_json(body)).hexdigest()
    return (json.dumps(body, indent=2) + "\n").encode("utf-8")


def open_keyfile(data: bytes, password: str, floor_profile: str) -> bytes:
    """The master key wrapped in ``data``.

    Raises:
        IntegrityError: damaged file, or KDF parameters below the floor.
        UnsupportedVersionError: an unknown format version or KDF.
        WrongPasswordError: the password does not open this key file.
    """
    body = _parse(data)
    spec = KdfSpec.from_dict(body["kdf"], "key file")
    spec.check_floor(floor_profile, "key file")
    nonce = decode_b64(body["nonce"], "key file: nonce")
    wrapped = decode_b64(body["wrapped"], "key file: wrapped key")
    if len(nonce) != NONCE_SIZE or len(wrapped) != MASTER_KEY_SIZE + 16:
        raise IntegrityError("key file: nonce or wrapped key has the wrong length")

    wrap_key, mac_key = _keys(kdf.derive(spec, password))
    signed = {k: v for k, v in body.items() if k not in ("mac", "checksum")}
    if not _same(_mac(mac_key, signed), body["mac"]):
        log.info("key file did not open", extra={"event": "keyfile.wrong-password"})
        raise WrongPasswordError("wrong password: the key file does not open with it")

    header = {k: body[k] for k in ("format", "version", "kdf")}
    try:
        return AESGCM(wrap_key).decrypt(nonce, wrapped, canonical_json(header))
    except InvalidTag as exc:
        raise IntegrityError("key file: wrapped key failed authentication") from exc


def rewrap(data: bytes, old_password: str, new_password: str, profile: str) -> bytes:
    """The same master key in a new key file under ``new_password``.

    The new password is checked against the rule before any KDF runs.

    Raises:
        WeakPasswordError, WrongPasswordError, IntegrityError.
    """
    check_password(new_password)
    master_key = open_keyfile(data, old_password, profile)
    return create_keyfile(master_key, new_password, profile)


def keyfile_info(data: bytes) -> dict[str, Any]:
    """Public facts about a key file (KDF name and parameters), no password.

    Raises:
        IntegrityError, UnsupportedVersionError: as for :func:`open_keyfile`.
    """
    body = _parse(data)
    spec = KdfSpec.from_dict(body["kdf"], "key file")
    return {
        "version": body["version"],
        "kdf": spec.name,
        "memory_cost": spec.params.memory_cost,
        "iterations": spec.params.iterations,
        "lanes": spec.params.lanes,
    }


def _parse(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_SIZE:
        raise IntegrityError(f"key file is too large ({len(data)} bytes)")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError("key file is damaged (not valid JSON)") from exc
    if not isinstance(body, dict) or set(body) != _FIELDS:
        raise IntegrityError("key file is damaged (unexpected structure)")
    if body["format"] != FORMAT:
        raise IntegrityError("not a vaultstore key file")
    if body["version"] not in ACCEPTED_VERSIONS or isinstance(body["version"], bool):
        raise UnsupportedVersionError(
            f"key file version {body['version']!r} is not supported "
            f"(accepted: {', '.join(map(str, ACCEPTED_VERSIONS))})"
        )
    rest = {k: v for k, v in body.items() if k != "checksum"}
    if not _same(hashlib.sha256(canonical_json(rest)).hexdigest(), body["checksum"]):
        raise IntegrityError("key file is damaged (checksum mismatch)")
    return body


def _keys(password_key: bytes) -> tuple[bytes, bytes]:
    return derive_key(password_key, "keyfile-wrap"), derive_key(
        password_key, "keyfile-mac"
    )


def _mac(mac_key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(mac_key, canonical_json(body), hashlib.sha256).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _same(expected: str, stored: Any) -> bool:
    """Constant-time comparison of a computed hex string with a stored value."""
    if not isinstance(stored, str):
        return False
    return hmac.compare_digest(expected.encode("ascii"), stored.encode("utf-8"))
