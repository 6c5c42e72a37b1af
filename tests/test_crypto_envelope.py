"""The manifest-grade seed envelope."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from vaultstore.crypto import kdf
from vaultstore.crypto.envelope import envelope_info, open_seed, seal_seed
from vaultstore.crypto.kdf import canonical_json
from vaultstore.errors import (
    IntegrityError,
    UnsupportedVersionError,
    WeakPasswordError,
    WrongPasswordError,
)

PASSWORD = "Canary-Passw0rd!-Envelope"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)


@pytest.fixture
def envelope() -> dict[str, Any]:
    return seal_seed(MNEMONIC, PASSWORD, "test")


def _reseal(env: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in env.items() if k != "checksum"}
    env["checksum"] = hashlib.sha256(canonical_json(rest)).hexdigest()
    return env


def test_round_trip_through_json(envelope: dict[str, Any]) -> None:
    again = json.loads(json.dumps(envelope))
    assert open_seed(again, PASSWORD, "test") == MNEMONIC
    assert MNEMONIC.split()[0] not in json.dumps(envelope)
    assert envelope_info(envelope)["kdf"] == "argon2id"


def test_own_salt_each_time(envelope: dict[str, Any]) -> None:
    assert (
        seal_seed(MNEMONIC, PASSWORD, "test")["kdf"]["salt"] != envelope["kdf"]["salt"]
    )


def test_wrong_password(envelope: dict[str, Any]) -> None:
    with pytest.raises(WrongPasswordError) as caught:
        open_seed(envelope, "Wrong-Passw0rd!-Envelope", "test")
    assert "Wrong-Passw0rd" not in str(caught.value)


def test_weak_password_is_refused_when_sealing() -> None:
    with pytest.raises(WeakPasswordError):
        seal_seed(MNEMONIC, "weak", "test")


def test_lowered_parameters_are_refused_before_the_kdf(
    envelope: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    edited = copy.deepcopy(envelope)
    edited["kdf"]["params"]["iterations"] = 0
    monkeypatch.setattr(kdf, "derive", lambda *a: pytest.fail("KDF ran"))
    with pytest.raises(IntegrityError, match="below the accepted floor"):
        open_seed(_reseal(edited), PASSWORD, "test")
    with pytest.raises(IntegrityError, match="below the accepted floor"):
        open_seed(envelope, PASSWORD, "production")


def test_swapped_salt_fails_authentication(envelope: dict[str, Any]) -> None:
    edited = copy.deepcopy(envelope)
    edited["kdf"]["salt"] = seal_seed(MNEMONIC, PASSWORD, "test")["kdf"]["salt"]
    with pytest.raises(WrongPasswordError):
        open_seed(_reseal(edited), PASSWORD, "test")


@pytest.mark.parametrize("field", ["nonce", "ciphertext", "checksum"])
def test_a_flipped_character_is_damage(envelope: dict[str, Any], field: str) -> None:
    edited = copy.deepcopy(envelope)
    value = edited[field]
    edited[field] = ("A" if value[5] != "A" else "B").join((value[:5], value[6:]))
    with pytest.raises(IntegrityError, match="damaged"):
        open_seed(edited, PASSWORD, "test")


@pytest.mark.parametrize(
    "bad", [None, [], {}, {"format": "x"}, {"version": 1, "kdf": {}}]
)
def test_malformed_envelopes_are_refused(bad: Any) -> None:
    with pytest.raises(IntegrityError):
        open_seed(bad, PASSWORD, "test")


def test_unknown_version(envelope: dict[str, Any]) -> None:
    edited = copy.deepcopy(envelope)
    edited["version"] = 7
    with pytest.raises(UnsupportedVersionError):
        open_seed(_reseal(edited), PASSWORD, "test")
