"""Key files: wrong password, lowered parameters, flipped bytes, rewrapping."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from vaultstore.crypto import kdf
from vaultstore.crypto.kdf import canonical_json
from vaultstore.crypto.keyfile import (
    create_keyfile,
    generate_master_key,
    keyfile_info,
    open_keyfile,
    rewrap,
)
from vaultstore.errors import (
    IntegrityError,
    UnsupportedVersionError,
    WeakPasswordError,
    WrongPasswordError,
)

PASSWORD = "Canary-Passw0rd!-KeyFile"
OTHER = "Another-Passw0rd!-2027"


@pytest.fixture
def kdf_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts KDF runs (each entry is one run)."""
    runs: list[int] = []
    real: Callable[[kdf.KdfSpec, str], bytes] = kdf.derive

    def counting(spec: kdf.KdfSpec, password: str) -> bytes:
        runs.append(1)
        return real(spec, password)

    monkeypatch.setattr(kdf, "derive", counting)
    return runs


@pytest.fixture
def master() -> bytes:
    return generate_master_key()


@pytest.fixture
def keyfile(master: bytes) -> bytes:
    return create_keyfile(master, PASSWORD, "test")


def _edit(data: bytes, change: Callable[[dict[str, Any]], None], reseal: bool) -> bytes:
    """Apply ``change``; with ``reseal`` recompute the checksum as an attacker could."""
    body = json.loads(data)
    change(body)
    if reseal:
        rest = {k: v for k, v in body.items() if k != "checksum"}
        body["checksum"] = hashlib.sha256(canonical_json(rest)).hexdigest()
    return json.dumps(body).encode()


def test_round_trip(master: bytes, keyfile: bytes) -> None:
    assert open_keyfile(keyfile, PASSWORD, "test") == master
    info = keyfile_info(keyfile)
    assert info["kdf"] == "argon2id" and info["memory_cost"] == 64
    assert master.hex() not in keyfile.decode()


def test_wrong_password_after_exactly_one_kdf_run(
    keyfile: bytes, kdf_runs: list[int]
) -> None:
    with pytest.raises(WrongPasswordError) as caught:
        open_keyfile(keyfile, OTHER, "test")
    assert len(kdf_runs) == 1
    assert caught.value.exit_code == 4
    assert OTHER not in str(caught.value) and PASSWORD not in str(caught.value)


def test_lowered_parameters_are_refused_before_any_kdf(
    keyfile: bytes, kdf_runs: list[int]
) -> None:
    def lower(body: dict[str, Any]) -> None:
        body["kdf"]["params"]["memory_cost"] = 4

    with pytest.raises(IntegrityError, match="below the accepted floor"):
        open_keyfile(_edit(keyfile, lower, reseal=True), PASSWORD, "test")
    assert kdf_runs == []


def test_test_profile_files_are_refused_under_the_production_floor(
    keyfile: bytes, kdf_runs: list[int]
) -> None:
    with pytest.raises(IntegrityError, match="memory_cost 64 < 65536"):
        open_keyfile(keyfile, PASSWORD, "production")
    assert kdf_runs == []


def test_a_parameter_edit_above_the_floor_fails_authentication(keyfile: bytes) -> None:
    def raise_cost(body: dict[str, Any]) -> None:
        body["kdf"]["params"]["memory_cost"] = 128

    with pytest.raises(WrongPasswordError):
        open_keyfile(_edit(keyfile, raise_cost, reseal=True), PASSWORD, "test")


def test_absurd_parameters_are_refused_before_any_kdf(
    keyfile: bytes, kdf_runs: list[int]
) -> None:
    def huge(body: dict[str, Any]) -> None:
        body["kdf"]["params"]["memory_cost"] = 2**40

    with pytest.raises(IntegrityError, match="outside the accepted range"):
        open_keyfile(_edit(keyfile, huge, reseal=True), PASSWORD, "test")
    assert kdf_runs == []


def test_every_single_bit_flip_is_refused_before_any_kdf(
    keyfile: bytes, kdf_runs: list[int]
) -> None:
    for position in range(len(keyfile)):
        for bit in (0x01, 0x40):
            damaged = bytearray(keyfile)
            damaged[position] ^= bit
            with pytest.raises((IntegrityError, UnsupportedVersionError)):
                open_keyfile(bytes(damaged), PASSWORD, "test")
    assert kdf_runs == []


def test_a_deliberate_edit_with_recomputed_checksum_does_not_open(
    keyfile: bytes,
) -> None:
    def swap_wrapped(body: dict[str, Any]) -> None:
        wrapped = body["wrapped"]
        body["wrapped"] = ("B" if wrapped[0] != "B" else "C") + wrapped[1:]

    with pytest.raises(WrongPasswordError):
        open_keyfile(_edit(keyfile, swap_wrapped, reseal=True), PASSWORD, "test")


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"format": "vaultstore-keyfile"}', b"\xff\xfe", b" " * 70000],
)
def test_structural_damage_is_an_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        open_keyfile(data, PASSWORD, "test")


def test_an_unknown_version_is_refused(keyfile: bytes) -> None:
    def bump(body: dict[str, Any]) -> None:
        body["version"] = 2

    with pytest.raises(UnsupportedVersionError):
        open_keyfile(_edit(keyfile, bump, reseal=True), PASSWORD, "test")


def test_rewrap_keeps_the_master_key(master: bytes, keyfile: bytes) -> None:
    new = rewrap(keyfile, PASSWORD, OTHER, "test")
    assert open_keyfile(new, OTHER, "test") == master
    with pytest.raises(WrongPasswordError):
        open_keyfile(new, PASSWORD, "test")


def test_rewrap_refuses_a_weak_password_before_any_kdf(
    keyfile: bytes, kdf_runs: list[int]
) -> None:
    with pytest.raises(WeakPasswordError):
        rewrap(keyfile, PASSWORD, "weakpassword", "test")
    assert kdf_runs == []


def test_create_refuses_a_weak_password(master: bytes) -> None:
    with pytest.raises(WeakPasswordError):
        create_keyfile(master, "Short1!", "test")


def test_production_profile_round_trip(master: bytes) -> None:
    data = create_keyfile(master, PASSWORD, "production")
    assert keyfile_info(data)["memory_cost"] == 65536
    assert open_keyfile(data, PASSWORD, "production") == master
