"""The vault: creation, permissions, unlock, seed, envelope, password change."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from vaultstore import faults
from vaultstore.crypto.envelope import open_seed
from vaultstore.crypto.kdf import canonical_json
from vaultstore.errors import (
    InputError,
    IntegrityError,
    LocalIOError,
    MisuseError,
    NotFoundError,
    WeakPasswordError,
    WrongPasswordError,
)
from vaultstore.journal import Event, Journal
from vaultstore.vault import Vault

DATA = Path(__file__).resolve().parent / "data"
PASSWORD = "Canary-Passw0rd!-Vault"
NEW_PASSWORD = "Changed-Passw0rd!-Vault"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
OTHER_MNEMONIC = "abandon " * 11 + "about"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def golden_wallets() -> list[dict[str, Any]]:
    backup = json.loads((DATA / "full-backup.json").read_text(encoding="utf-8"))
    wallets: list[dict[str, Any]] = backup["wallets"]
    return wallets


def add_wallets(journal: Journal, wallets: list[dict[str, Any]]) -> None:
    journal.append(Event("wallet", w["agentId"], w) for w in wallets)


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def vault(vault_path: Path) -> Vault:
    Vault.create(vault_path, PASSWORD, MNEMONIC, "test").close()
    return Vault.open(vault_path, "test")


@pytest.fixture(autouse=True)
def no_fault_hook() -> Any:
    yield
    faults.set_hook(None)


def test_create_makes_a_private_vault(vault_path: Path, vault: Vault) -> None:
    assert _mode(vault_path) == 0o700
    assert _mode(vault_path / "keyfile") == 0o600
    assert _mode(vault_path / "journal.db") == 0o600
    assert not vault.unlocked
    vault.unlock(PASSWORD)
    assert vault.mnemonic() == MNEMONIC
    assert open_seed(vault.seed_envelope(), PASSWORD, "test") == MNEMONIC


def test_nothing_secret_is_stored_in_clear(vault_path: Path, vault: Vault) -> None:
    vault.close()
    for path in vault_path.iterdir():
        data = path.read_bytes()
        assert PASSWORD.encode() not in data
        assert b"carpet humor excuse" not in data


def test_create_refuses_an_existing_vault(vault_path: Path, vault: Vault) -> None:
    before = (vault_path / "keyfile").read_bytes()
    with pytest.raises(MisuseError, match="already exists"):
        Vault.create(vault_path, PASSWORD, OTHER_MNEMONIC, "test")
    assert (vault_path / "keyfile").read_bytes() == before


def test_create_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(MisuseError, match="not an empty directory"):
        Vault.create(tmp_path / "busy", PASSWORD, MNEMONIC, "test")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("password", "mnemonic", "error"),
    [
        ("weak-password", MNEMONIC, WeakPasswordError),
        (PASSWORD, MNEMONIC.rsplit(" ", 1)[0], InputError),
        (PASSWORD, MNEMONIC.replace("child", "bird", 1), InputError),
    ],
)
def test_invalid_input_writes_nothing(
    vault_path: Path, password: str, mnemonic: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        Vault.create(vault_path, password, mnemonic, "test")
    assert not vault_path.exists()


def _fail_at(point: str) -> None:
    def hook(name: str) -> None:
        if name == point:
            raise OSError(5, "injected I/O error")

    faults.set_hook(hook)


def test_a_failure_during_create_leaves_nothing(vault_path: Path) -> None:
    _fail_at("vault.keyfile.before-rename")
    with pytest.raises(LocalIOError):
        Vault.create(vault_path, PASSWORD, MNEMONIC, "test")
    assert not vault_path.exists()


def test_a_failure_in_an_existing_empty_directory_keeps_the_directory(
    vault_path: Path,
) -> None:
    vault_path.mkdir(mode=0o700)
    _fail_at("vault.keyfile.before-rename")
    with pytest.raises(LocalIOError):
        Vault.create(vault_path, PASSWORD, MNEMONIC, "test")
    assert vault_path.is_dir() and list(vault_path.iterdir()) == []


def test_open_without_a_vault(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Vault.open(tmp_path / "nowhere", "test")


def test_wrong_password(vault: Vault) -> None:
    with pytest.raises(WrongPasswordError):
        vault.unlock(NEW_PASSWORD)
    with pytest.raises(MisuseError, match="locked"):
        vault.mnemonic()


def _rewrite_keyfile(vault_path: Path, change: Any) -> None:
    import hashlib

    body = json.loads((vault_path / "keyfile").read_bytes())
    change(body)
    rest = {k: v for k, v in body.items() if k != "checksum"}
    body["checksum"] = hashlib.sha256(canonical_json(rest)).hexdigest()
    (vault_path / "keyfile").write_text(json.dumps(body))


def test_lowered_kdf_parameters_in_the_key_file(vault_path: Path, vault: Vault) -> None:
    def lower(body: dict[str, Any]) -> None:
        body["kdf"]["params"]["memory_cost"] = 4

    _rewrite_keyfile(vault_path, lower)
    with pytest.raises(IntegrityError, match="floor"):
        vault.unlock(PASSWORD)


def test_a_flipped_byte_in_the_key_file(vault_path: Path, vault: Vault) -> None:
    data = bytearray((vault_path / "keyfile").read_bytes())
    data[len(data) // 2] ^= 0x02
    (vault_path / "keyfile").write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        vault.unlock(PASSWORD)


def test_production_floor_refuses_a_test_vault(vault_path: Path, vault: Vault) -> None:
    vault.close()
    with Vault.open(vault_path, "production") as strict:
        with pytest.raises(IntegrityError, match="floor"):
            strict.unlock(PASSWORD)


def test_change_password(vault_path: Path, vault: Vault) -> None:
    vault.change_password(PASSWORD, NEW_PASSWORD)
    vault.close()
    with Vault.open(vault_path, "test") as again:
        with pytest.raises(WrongPasswordError):
            again.unlock(PASSWORD)
        again.unlock(NEW_PASSWORD)
        assert again.mnemonic() == MNEMONIC
        assert open_seed(again.seed_envelope(), NEW_PASSWORD, "test") == MNEMONIC
        with pytest.raises(WrongPasswordError):
            open_seed(again.seed_envelope(), PASSWORD, "test")
    assert _mode(vault_path / "keyfile") == 0o600


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (PASSWORD, "too-weak", WeakPasswordError),
        (NEW_PASSWORD, "Third-Passw0rd!-Vault!", WrongPasswordError),
    ],
)
def test_a_refused_password_change_writes_nothing(
    vault_path: Path, vault: Vault, old: str, new: str, error: type[Exception]
) -> None:
    keyfile = (vault_path / "keyfile").read_bytes()
    envelope = vault.seed_envelope()
    with pytest.raises(error):
        vault.change_password(old, new)
    assert (vault_path / "keyfile").read_bytes() == keyfile
    assert vault.seed_envelope() == envelope


def test_an_interrupted_password_change_is_detected_and_repaired(
    vault_path: Path, vault: Vault
) -> None:
    def crash(name: str) -> None:
        if name == "vault.passwd.before-keyfile":
            raise KeyboardInterrupt

    faults.set_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        vault.change_password(PASSWORD, NEW_PASSWORD)
    faults.set_hook(None)
    with pytest.raises(IntegrityError, match="interrupted"):
        vault.seed_envelope()
    vault.change_password(PASSWORD, NEW_PASSWORD)
    assert open_seed(vault.seed_envelope(), NEW_PASSWORD, "test") == MNEMONIC


def test_verify_wallets_of_the_golden_vector(vault: Vault) -> None:
    add_wallets(vault.journal, golden_wallets())
    vault.unlock(PASSWORD)
    assert vault.verify_wallets(workers=1) == (20, [])


def test_verify_names_a_tampered_wallet(vault: Vault) -> None:
    wallets = golden_wallets()
    wallets[4] = {**wallets[4], "evmAddress": wallets[5]["evmAddress"]}
    wallets[11] = {**wallets[11], "xrpAddress": wallets[3]["xrpAddress"]}
    add_wallets(vault.journal, wallets)
    vault.unlock(PASSWORD)
    assert vault.verify_wallets(workers=1) == (20, ["agent-004", "agent-011"])
    _, bad = vault.verify_wallets(workers=1, mnemonic=OTHER_MNEMONIC)
    assert len(bad) == 20


def test_replace_mnemonic(vault: Vault) -> None:
    vault.replace_mnemonic(OTHER_MNEMONIC, PASSWORD)
    assert vault.mnemonic() == OTHER_MNEMONIC.strip()
    assert open_seed(vault.seed_envelope(), PASSWORD, "test") == OTHER_MNEMONIC.strip()


def test_adopt_turns_a_bare_journal_into_a_vault(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    with Journal.create(staging) as journal:
        add_wallets(journal, golden_wallets())
    Vault.adopt(staging, PASSWORD, MNEMONIC, "test")
    assert _mode(staging / "keyfile") == 0o600
    with Vault.open(staging, "test") as vault:
        vault.unlock(PASSWORD)
        assert vault.verify_wallets(workers=1) == (20, [])
        assert open_seed(vault.seed_envelope(), PASSWORD, "test") == MNEMONIC
    with pytest.raises(MisuseError):
        Vault.adopt(staging, PASSWORD, MNEMONIC, "test")
    with pytest.raises(NotFoundError):
        Vault.adopt(tmp_path / "empty", PASSWORD, MNEMONIC, "test")


def test_loose_permissions_are_warned_about(
    vault_path: Path, vault: Vault, caplog: pytest.LogCaptureFixture
) -> None:
    vault.close()
    vault_path.chmod(0o755)
    (vault_path / "keyfile").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="vaultstore.vault"):
        Vault.open(vault_path, "test").close()
    loose = [
        r
        for r in caplog.records
        if getattr(r, "event", "") == "vault.loose-permissions"
    ]
    assert len(loose) == 2
