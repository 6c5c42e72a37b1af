"""Validation of legacy wallets, lifecycle records and balances; transitions."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.journal_data import balances, lifecycle, wallet
from vaultstore.errors import InputError, TransitionError
from vaultstore.model import (
    LIFECYCLE_STATES,
    TRANSITIONS,
    Record,
    check_transition,
    decode_record,
    digest_terms_sum,
    encode_record,
    record_hash,
    record_hashes,
    records_digest_sum,
    tree_key,
    tree_keys,
    validate_agent_id,
    validate_balances,
    validate_lifecycle,
    validate_wallet,
)


def test_valid_wallet_is_returned_unchanged_with_key_order() -> None:
    value = wallet(3, metadata={"10": 1, "2": 0.1, "b": None, "a": [1.5, {"x": 2}]})
    before = copy.deepcopy(value)
    assert validate_wallet(value) is value
    assert value == before
    assert list(value) == list(before)
    assert list(value["metadata"]) == ["10", "2", "b", "a"]
    assert value["metadata"]["2"] == 0.1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"agentId": 7}, "wallets.agentId"),
        ({"agentId": ""}, "wallets.agentId"),
        ({"derivationIndex": -1}, "wallets.derivationIndex"),
        ({"derivationIndex": 2**31}, "wallets.derivationIndex"),
        ({"derivationIndex": 1.0}, "wallets.derivationIndex"),
        ({"derivationIndex": "1"}, "wallets.derivationIndex"),
        ({"derivationIndex": True}, "wallets.derivationIndex"),
        ({"evmAddress": "0x1234"}, "wallets.evmAddress"),
        ({"evmAddress": "0x" + "g" * 40}, "wallets.evmAddress"),
        ({"xrpAddress": "xHpbKweByKf4HaC3iAATyTagm87Zz3czXd"}, "wallets.xrpAddress"),
        ({"xrpAddress": 5}, "wallets.xrpAddress"),
        ({"createdAt": -5}, "wallets.createdAt"),
        ({"createdAt": 1.5}, "wallets.createdAt"),
        ({"metadata": None}, "wallets.metadata"),
        ({"metadata": [1, 2]}, "wallets.metadata"),
        ({"metadata": "x"}, "wallets.metadata"),
        ({"color": "red"}, "wallets.color"),
    ],
)
def test_bad_wallet_field_is_named(change: dict[str, Any], field: str) -> None:
    value = {**wallet(1), **change}
    with pytest.raises(InputError) as info:
        validate_wallet(value)
    assert info.value.message.startswith(field + ":")
    assert info.value.fields["field"] == field


@pytest.mark.parametrize(
    "missing", ["agentId", "derivationIndex", "evmAddress", "xrpAddress", "createdAt"]
)
def test_missing_wallet_field_is_named(missing: str) -> None:
    value = wallet(1)
    del value[missing]
    with pytest.raises(InputError, match=f"wallets.{missing}: is missing"):
        validate_wallet(value)


def test_wallet_must_be_an_object() -> None:
    with pytest.raises(InputError, match="^wallets: must be a JSON object"):
        validate_wallet([1])


def test_derivation_index_bounds_accepted() -> None:
    validate_wallet(wallet(0))
    validate_wallet({**wallet(0), "derivationIndex": 2**31 - 1})


@pytest.mark.parametrize(
    "agent_id",
    [
        "",
        "x" * 257,
        "a\x00b",
        "a\x1fb",
        "a\x7fb",
        "a\nb",
        "../etc",
        "a/b",
        "a\\b",
        " lead",
        "trail ",
        "\tlead",
        None,
        12,
    ],
)
def test_bad_agent_ids_refused(agent_id: Any) -> None:
    with pytest.raises(InputError, match="^agentId: "):
        validate_agent_id(agent_id)


@pytest.mark.parametrize("agent_id", ["a", "x" * 256, "agent 7", "Café-日本", "a.b:c"])
def test_good_agent_ids_accepted(agent_id: str) -> None:
    assert validate_agent_id(agent_id) == agent_id


def test_lifecycle_integer_amounts_become_strings() -> None:
    value = lifecycle(1, totalVolume={"ETH": 10**30, "XRP": 0, "0xabc": "17"})
    validate_lifecycle(value)
    assert value["totalVolume"] == {"ETH": str(10**30), "XRP": "0", "0xabc": "17"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"state": "deleted"}, "lifecycleRecords.state"),
        ({"state": None}, "lifecycleRecords.state"),
        ({"createdAt": "now"}, "lifecycleRecords.createdAt"),
        ({"totalTransactions": -1}, "lifecycleRecords.totalTransactions"),
        ({"totalTransactions": 2.0}, "lifecycleRecords.totalTransactions"),
        ({"totalVolume": []}, "lifecycleRecords.totalVolume"),
        ({"totalVolume": {"ETH": 1.5}}, "lifecycleRecords.totalVolume"),
        ({"totalVolume": {"ETH": -3}}, "lifecycleRecords.totalVolume"),
        ({"totalVolume": {"ETH": "007"}}, "lifecycleRecords.totalVolume"),
        ({"totalVolume": {"ETH": "1e5"}}, "lifecycleRecords.totalVolume"),
        ({"totalVolume": {"ETH": "\u0661"}}, "lifecycleRecords.totalVolume"),
        ({"totalVolume": {"": "1"}}, "lifecycleRecords.totalVolume"),
        ({"activatedAt": None}, "lifecycleRecords.activatedAt"),
        ({"suspendedAt": -1}, "lifecycleRecords.suspendedAt"),
        ({"archivedAt": "x"}, "lifecycleRecords.archivedAt"),
        ({"lastActivity": 0.5}, "lifecycleRecords.lastActivity"),
        ({"suspensionReason": None}, "lifecycleRecords.suspensionReason"),
        ({"suspensionReason": 5}, "lifecycleRecords.suspensionReason"),
        ({"agentId": "a/b"}, "lifecycleRecords.agentId"),
        ({"extra": 1}, "lifecycleRecords.extra"),
    ],
)
def test_bad_lifecycle_field_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as info:
        validate_lifecycle({**lifecycle(1), **change})
    assert info.value.message.startswith(field + ":")


@pytest.mark.parametrize(
    "missing", ["agentId", "state", "createdAt", "totalTransactions", "totalVolume"]
)
def test_missing_lifecycle_field_is_named(missing: str) -> None:
    value = lifecycle(1)
    del value[missing]
    with pytest.raises(InputError, match=f"lifecycleRecords.{missing}: is missing"):
        validate_lifecycle(value)


def test_balances_accept_big_strings_and_normalise_integers() -> None:
    entries = balances(1, wei=str(2**200))
    entries[1]["balance"] = 20_000_000
    assert validate_balances("agent-00001", entries) is entries
    assert entries[0]["balance"] == str(2**200)
    assert entries[1]["balance"] == "20000000"
    assert validate_balances("agent-00001", []) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"agentId": "agent-00002"}, "balanceSnapshots[1].agentId"),
        ({"chain": "btc"}, "balanceSnapshots[1].chain"),
        ({"token": ""}, "balanceSnapshots[1].token"),
        ({"token": 3}, "balanceSnapshots[1].token"),
        ({"balance": 1.5}, "balanceSnapshots[1].balance"),
        ({"balance": -1}, "balanceSnapshots[1].balance"),
        ({"balance": "-1"}, "balanceSnapshots[1].balance"),
        ({"balance": "01"}, "balanceSnapshots[1].balance"),
        ({"balance": " 1"}, "balanceSnapshots[1].balance"),
        ({"balance": True}, "balanceSnapshots[1].balance"),
        ({"balance": None}, "balanceSnapshots[1].balance"),
        ({"lastUpdated": "x"}, "balanceSnapshots[1].lastUpdated"),
        ({"memo": "x"}, "balanceSnapshots[1].memo"),
    ],
)
def test_bad_balance_field_is_named(change: dict[str, Any], field: str) -> None:
    entries = balances(1)
    entries[1].update(change)
    with pytest.raises(InputError) as info:
        validate_balances("agent-00001", entries)
    assert info.value.message.startswith(field + ":")


def test_balance_missing_key_and_wrong_container() -> None:
    entries = balances(1)
    del entries[0]["lastUpdated"]
    with pytest.raises(InputError, match=r"balanceSnapshots\[0\].lastUpdated"):
        validate_balances("agent-00001", entries)
    with pytest.raises(InputError, match="^balanceSnapshots: must be a JSON array"):
        validate_balances("agent-00001", {"a": 1})
    with pytest.raises(InputError, match=r"^balanceSnapshots\[0\]: must be"):
        validate_balances("agent-00001", ["x"])


ALLOWED = {
    ("pending", "active"),
    ("active", "suspended"),
    ("active", "archived"),
    ("suspended", "active"),
    ("suspended", "archived"),
}


@pytest.mark.parametrize("old", LIFECYCLE_STATES)
@pytest.mark.parametrize("new", LIFECYCLE_STATES)
def test_transition_table(old: str, new: str) -> None:
    if old == new or (old, new) in ALLOWED:
        check_transition("agent-1", old, new)
        return
    with pytest.raises(TransitionError) as info:
        check_transition("agent-1", old, new)
    message = info.value.message
    assert "'agent-1'" in message and f"from {old} to {new}" in message
    assert isinstance(info.value, InputError) and info.value.exit_code == 7


def test_transition_machine_matches_the_documented_table() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED


@pytest.mark.parametrize("state", LIFECYCLE_STATES)
def test_first_record_may_be_in_any_state(state: str) -> None:
    check_transition("agent-1", None, state)


def test_archived_is_final_and_says_so() -> None:
    with pytest.raises(TransitionError, match="archived is final"):
        check_transition("agent-9", "archived", "active")


def test_record_codec_round_trip_keeps_order() -> None:
    value = wallet(2, metadata={"z": 1, "a": 0.1})
    record = Record("agent-00002", value, lifecycle(2), balances(2))
    data = encode_record(record)
    assert decode_record(data) == record
    assert list(decode_record(data).wallet["metadata"]) == ["z", "a"]  # type: ignore[index]
    assert encode_record(decode_record(data)) == data


@given(st.lists(st.text(min_size=1, max_size=300)))
def test_tree_keys_match_tree_key_one_by_one(agents: list[str]) -> None:
    assert tree_keys(agents) == [tree_key(a) for a in agents]
    assert all(0 <= k < 1 << 63 for k in tree_keys(agents))


@given(st.lists(st.binary(max_size=2000)))
def test_record_hashes_and_their_sum_match_one_by_one(datas: list[bytes]) -> None:
    hashes = [record_hash(d) for d in datas]
    assert record_hashes(datas) == hashes
    assert record_hashes(map(memoryview, datas)) == hashes
    expected = sum(int.from_bytes(h, "big") for h in hashes)
    assert digest_terms_sum(b"".join(hashes)) == expected
    assert records_digest_sum(datas) == expected


def test_digest_terms_sum_carries_between_words_and_refuses_partial_terms() -> None:
    top = b"\xff" * 32
    assert digest_terms_sum(top * 3) == 3 * ((1 << 256) - 1)
    with pytest.raises(ValueError):
        digest_terms_sum(top[:31])
