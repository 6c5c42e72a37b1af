"""The legacy PBKDF2 seed envelope against the golden vector."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from vaultstore.crypto.legacy import (
    WRONG_PASSWORD_MESSAGE,
    decrypt_legacy_seed,
    encrypt_legacy_seed,
    new_salt,
)
from vaultstore.errors import (
    InputError,
    IntegrityError,
    WeakPasswordError,
    WrongPasswordError,
)

DATA = Path(__file__).resolve().parent / "data"
PASSWORD = "Vector-Passw0rd!-2026"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)


@pytest.fixture(scope="module")
def golden() -> tuple[str, bytes]:
    backup = json.loads((DATA / "full-backup.json").read_text(encoding="utf-8"))
    salt = bytes.fromhex((DATA / "encryption-salt.hex").read_text().strip())
    return backup["encryptedMasterSeed"], salt


def test_golden_envelope_decrypts_to_its_mnemonic(golden: tuple[str, bytes]) -> None:
    envelope, salt = golden
    assert decrypt_legacy_seed(envelope, PASSWORD, salt) == MNEMONIC


def test_wrong_password_fails_with_the_legacy_message(
    golden: tuple[str, bytes],
) -> None:
    envelope, salt = golden
    with pytest.raises(WrongPasswordError) as caught:
        decrypt_legacy_seed(envelope, PASSWORD + "x", salt)
    assert str(caught.value) == WRONG_PASSWORD_MESSAGE
    assert caught.value.exit_code == 4


def test_wrong_salt_fails(golden: tuple[str, bytes]) -> None:
    envelope, salt = golden
    with pytest.raises(WrongPasswordError):
        decrypt_legacy_seed(envelope, PASSWORD, bytes([salt[0] ^ 1]) + salt[1:])


@pytest.mark.parametrize("position", [0, 20, 40, -1])
def test_a_flipped_byte_fails(golden: tuple[str, bytes], position: int) -> None:
    envelope, salt = golden
    raw = bytearray(base64.b64decode(envelope))
    raw[position] ^= 0x01
    flipped = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(WrongPasswordError):
        decrypt_legacy_seed(flipped, PASSWORD, salt)


def test_structural_damage_is_an_integrity_error(golden: tuple[str, bytes]) -> None:
    envelope, salt = golden
    with pytest.raises(IntegrityError):
        decrypt_legacy_seed(envelope[:-3] + "!!!", PASSWORD, salt)
    with pytest.raises(IntegrityError):
        decrypt_legacy_seed(base64.b64encode(b"x" * 32).decode(), PASSWORD, salt)


def test_round_trip_has_the_documented_layout() -> None:
    salt = new_salt()
    envelope = encrypt_legacy_seed(MNEMONIC, PASSWORD, salt)
    raw = base64.b64decode(envelope)
    assert len(raw) == 16 + 16 + len(MNEMONIC.encode())
    assert decrypt_legacy_seed(envelope, PASSWORD, salt) == MNEMONIC
    assert encrypt_legacy_seed(MNEMONIC, PASSWORD, salt) != envelope  # fresh IV


def test_a_weak_password_is_refused_when_encrypting() -> None:
    with pytest.raises(WeakPasswordError):
        encrypt_legacy_seed(MNEMONIC, "weak", new_salt())


def test_a_salt_of_the_wrong_size_is_refused(golden: tuple[str, bytes]) -> None:
    envelope, _ = golden
    with pytest.raises(InputError):
        decrypt_legacy_seed(envelope, PASSWORD, b"short")
