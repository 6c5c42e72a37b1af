"""Repository keys: one random master key, wrapped in one or more key files.

Each key file (``crypto/keyfile.py`` format) lives in the repository at
``keys/<key-id>``, where the key id is the first 16 hex digits of the SHA-256
of the file's bytes, so a key file's name also checks its content (ids of 16 to
64 hex digits are accepted when reading). Several
key files may wrap the same master key under different passwords (one per
operator, or a recovery password). Changing a password writes a new key file
and then deletes the old one: a crash in between leaves two valid key files,
never none. Purpose keys come from the master key through HKDF
(``crypto/purpose.py``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

from vaultstore.crypto.keyfile import create_keyfile, keyfile_info, open_keyfile
from vaultstore.crypto.password import check_password
from vaultstore.errors import (
    InputError,
    IntegrityError,
    MisuseError,
    NotFoundError,
    UnsupportedVersionError,
    VaultstoreError,
    WrongPasswordError,
)
from vaultstore.store.base import Store

log = logging.getLogger(__name__)

KEYS_PREFIX = "keys/"
KEY_ID_HEX = 16
_HEX = frozenset("0123456789abcdef")


def key_id_of(data: bytes) -> str:
    """The id of a key file: the first 16 hex digits of SHA-256(bytes)."""
    return _digest(data)[:KEY_ID_HEX]


def add_key(store: Store, master_key: bytes, password: str, profile: str) -> str:
    """Store a new key file wrapping ``master_key``; returns its key id.

    Raises:
        WeakPasswordError: the password fails the password rule.
        StoreError, LocalIOError: the key file could not be stored.
    """
    data = create_keyfile(master_key, password, profile)
    key_id = key_id_of(data)
    store.put(KEYS_PREFIX + key_id, data)
    log.info("added key %s", key_id, extra={"event": "key.add", "keyId": key_id})
    return key_id


def key_ids(store: Store) -> list[str]:
    """The ids of every key file in the repository, sorted."""
    return [name[len(KEYS_PREFIX) :] for name in store.list(KEYS_PREFIX)]


def list_keys(store: Store) -> list[dict[str, Any]]:
    """Public facts about every key file; a damaged one carries ``error``."""
    infos: list[dict[str, Any]] = []
    for key_id, data, problem in _read_all(store):
        if problem is not None:
            infos.append({"id": key_id, "error": problem.message})
            continue
        try:
            infos.append({"id": key_id, **keyfile_info(data)})
        except (IntegrityError, UnsupportedVersionError) as exc:
            infos.append({"id": key_id, "error": exc.message})
    return infos


def unlock_repository(
    store: Store, password: str, floor_profile: str, key_id: str | None = None
) -> tuple[str, bytes]:
    """(key id, master key) of the first key file ``password`` opens.

    Each key file tried costs one KDF run; ``key_id`` limits the search to one.

    Raises:
        NotFoundError: the repository has no key files (or not ``key_id``).
        WrongPasswordError: no key file opens with the password.
        IntegrityError: every key file is damaged or below the KDF floor.
    """
    if key_id is not None:
        _check_key_id(key_id)
    tried = 0
    damage: list[VaultstoreError] = []
    for candidate, data, problem in _read_all(store, key_id):
        tried += 1
        if problem is not None:
            damage.append(problem)
            continue
        try:
            return candidate, open_keyfile(data, password, floor_profile)
        except WrongPasswordError:
            continue
        except (IntegrityError, UnsupportedVersionError) as exc:
            log.warning(
                "key file %s is unusable: %s",
                candidate,
                exc.message,
                extra={"event": "key.damaged", "keyId": candidate},
            )
            damage.append(exc)
    if tried == 0:
        raise NotFoundError(
            f"no key file{' ' + key_id if key_id else 's'} in {store.url}"
        )
    if len(damage) == tried:
        raise damage[0]
    raise WrongPasswordError("wrong password: no key file of the repository opens")


def remove_key(store: Store, key_id: str, password: str, floor_profile: str) -> None:
    """Delete key file ``key_id``, authorised by a password that opens another.

    Raises:
        NotFoundError: there is no such key file.
        MisuseError: it is the last key file, or the one ``password`` opens.
        WrongPasswordError: the password opens no key file.
    """
    _check_key_id(key_id)
    ids = key_ids(store)
    if key_id not in ids:
        raise NotFoundError(f"no key file {key_id} in {store.url}")
    if len(ids) == 1:
        raise MisuseError(f"refusing to remove {key_id}: it is the last key file")
    used, _ = unlock_repository(store, password, floor_profile)
    if used == key_id:
        raise MisuseError(
            f"refusing to remove {key_id}: it is the key this password opens "
            "(use another key's password, or `key passwd` to change it)"
        )
    store.delete(KEYS_PREFIX + key_id)
    log.info("removed key %s", key_id, extra={"event": "key.remove", "keyId": key_id})


def change_key_password(
    store: Store, old: str, new: str, profile: str
) -> tuple[str, str]:
    """Replace the key file ``old`` opens by one under ``new``: (old id, new id).

    The new key file is stored before the old one is deleted.

    Raises:
        WeakPasswordError: ``new`` fails the rule (checked before any KDF).
        WrongPasswordError: ``old`` opens no key file.
    """
    check_password(new)
    old_id, master = unlock_repository(store, old, profile)
    new_id = add_key(store, master, new, profile)
    store.delete(KEYS_PREFIX + old_id)
    log.info(
        "changed key password: %s replaced by %s",
        old_id,
        new_id,
        extra={"event": "key.passwd", "oldKeyId": old_id, "keyId": new_id},
    )
    return old_id, new_id


def _valid_id(key_id: str) -> bool:
    return KEY_ID_HEX <= len(key_id) <= 64 and set(key_id) <= _HEX


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_key_id(key_id: str) -> None:
    if not _valid_id(key_id):
        raise InputError(f"{key_id!r} is not a key id (16 lowercase hex digits)")


def _read_all(
    store: Store, only: str | None = None
) -> Iterator[tuple[str, bytes, VaultstoreError | None]]:
    """(key id, bytes, problem or None) of each key file, checked against its name."""
    for key_id in key_ids(store) if only is None else [only]:
        name = KEYS_PREFIX + key_id
        if only is not None and not store.exists(name):
            return
        data = store.get(name)
        if not _valid_id(key_id) or not _digest(data).startswith(key_id):
            yield (
                key_id,
                data,
                IntegrityError(
                    f"key file {name} does not match its name (damaged or replaced)"
                ),
            )
            continue
        yield key_id, data, None
