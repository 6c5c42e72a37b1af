"""Repository key files through the Store protocol (a dict-backed store)."""

from __future__ import annotations

import pytest

from tests.memory_store import MemoryStore as DictStore
from vaultstore.crypto import repokeys
from vaultstore.crypto.keyfile import generate_master_key
from vaultstore.errors import (
    InputError,
    IntegrityError,
    MisuseError,
    NotFoundError,
    WeakPasswordError,
    WrongPasswordError,
)

FIRST = "First-Passw0rd!-Repository"
SECOND = "Second-Passw0rd!-Repository"


@pytest.fixture
def store() -> DictStore:
    return DictStore()


@pytest.fixture
def master() -> bytes:
    return generate_master_key()


def test_several_key_files_open_the_same_master_key(
    store: DictStore, master: bytes
) -> None:
    first = repokeys.add_key(store, master, FIRST, "test")
    second = repokeys.add_key(store, master, SECOND, "test")
    assert repokeys.unlock_repository(store, FIRST, "test") == (first, master)
    assert repokeys.unlock_repository(store, SECOND, "test") == (second, master)
    assert sorted(i["id"] for i in repokeys.list_keys(store)) == sorted([first, second])
    assert repokeys.key_id_of(store.get("keys/" + first)) == first
    assert len(first) == 16


def test_a_key_file_under_a_name_that_is_not_its_hash(
    store: DictStore, master: bytes
) -> None:
    key_id = repokeys.add_key(store, master, FIRST, "test")
    store.data["keys/" + "f" * 16] = store.data.pop("keys/" + key_id)
    with pytest.raises(IntegrityError, match="does not match its name"):
        repokeys.unlock_repository(store, FIRST, "test")


def test_wrong_password_and_no_keys(store: DictStore, master: bytes) -> None:
    with pytest.raises(NotFoundError):
        repokeys.unlock_repository(store, FIRST, "test")
    repokeys.add_key(store, master, FIRST, "test")
    with pytest.raises(WrongPasswordError):
        repokeys.unlock_repository(store, SECOND, "test")


def test_a_damaged_key_file_is_reported_not_used(
    store: DictStore, master: bytes
) -> None:
    key_id = repokeys.add_key(store, master, FIRST, "test")
    data = bytearray(store.data["keys/" + key_id])
    data[100] ^= 1
    store.data["keys/" + key_id] = bytes(data)
    with pytest.raises(IntegrityError):
        repokeys.unlock_repository(store, FIRST, "test")
    assert "error" in repokeys.list_keys(store)[0]


def test_a_production_floor_refuses_test_key_files(
    store: DictStore, master: bytes
) -> None:
    repokeys.add_key(store, master, FIRST, "test")
    with pytest.raises(IntegrityError, match="floor"):
        repokeys.unlock_repository(store, FIRST, "production")


def test_change_password_replaces_the_key_file(store: DictStore, master: bytes) -> None:
    old_id = repokeys.add_key(store, master, FIRST, "test")
    old, new = repokeys.change_key_password(store, FIRST, SECOND, "test")
    assert old == old_id and repokeys.key_ids(store) == [new]
    assert repokeys.unlock_repository(store, SECOND, "test") == (new, master)
    with pytest.raises(WrongPasswordError):
        repokeys.unlock_repository(store, FIRST, "test")


def test_change_password_refuses_a_weak_one_and_writes_nothing(
    store: DictStore, master: bytes
) -> None:
    repokeys.add_key(store, master, FIRST, "test")
    before = dict(store.data)
    with pytest.raises(WeakPasswordError):
        repokeys.change_key_password(store, FIRST, "weak", "test")
    with pytest.raises(WrongPasswordError):
        repokeys.change_key_password(store, SECOND, SECOND + "x", "test")
    assert store.data == before


def test_remove_rules(store: DictStore, master: bytes) -> None:
    first = repokeys.add_key(store, master, FIRST, "test")
    with pytest.raises(MisuseError, match="last key"):
        repokeys.remove_key(store, first, FIRST, "test")
    second = repokeys.add_key(store, master, SECOND, "test")
    with pytest.raises(MisuseError, match="this password opens"):
        repokeys.remove_key(store, first, FIRST, "test")
    with pytest.raises(InputError):
        repokeys.remove_key(store, "../config", SECOND, "test")
    with pytest.raises(NotFoundError):
        repokeys.remove_key(store, "0" * 16, SECOND, "test")
    repokeys.remove_key(store, first, SECOND, "test")
    assert repokeys.key_ids(store) == [second]
