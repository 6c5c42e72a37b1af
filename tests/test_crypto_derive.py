"""Wallet addresses re-derived from the seed: the golden vector's 20 wallets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vaultstore.crypto import derive
from vaultstore.crypto.derive import (
    WalletDeriver,
    derive_addresses,
    eip55,
    verify_wallets,
)
from vaultstore.crypto.seed import mnemonic_to_seed

DATA = Path(__file__).resolve().parent / "data"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
Wallet = tuple[str, object, object, object]


@pytest.fixture(scope="module")
def golden_wallets() -> list[Wallet]:
    backup = json.loads((DATA / "full-backup.json").read_text(encoding="utf-8"))
    return [
        (w["agentId"], w["derivationIndex"], w["evmAddress"], w["xrpAddress"])
        for w in backup["wallets"]
    ]


def test_all_twenty_golden_wallets_rederive(golden_wallets: list[Wallet]) -> None:
    seed = mnemonic_to_seed(MNEMONIC)
    assert len(golden_wallets) == 20
    for _agent, index, evm, xrp in golden_wallets:
        assert derive_addresses(seed, index) == (evm, xrp)  # type: ignore[arg-type]


def test_verify_finds_no_mismatch_in_the_golden_vector(
    golden_wallets: list[Wallet],
) -> None:
    assert verify_wallets(MNEMONIC, golden_wallets, workers=1) == []


def _tamper(
    wallets: list[Wallet], position: int, field: int, value: str
) -> list[Wallet]:
    changed = [list(w) for w in wallets]
    changed[position][field] = value
    return [tuple(w) for w in changed]  # type: ignore[misc]


def test_a_changed_evm_address_is_named(golden_wallets: list[Wallet]) -> None:
    evm = str(golden_wallets[4][2])
    other = evm[:10] + ("0" if evm[10] != "0" else "1") + evm[11:]
    wallets = _tamper(golden_wallets, 4, 2, other)
    assert verify_wallets(MNEMONIC, wallets, workers=1) == ["agent-004"]


def test_a_changed_xrp_address_is_named(golden_wallets: list[Wallet]) -> None:
    wallets = _tamper(golden_wallets, 7, 3, str(golden_wallets[8][3]))
    assert verify_wallets(MNEMONIC, wallets, workers=1) == ["agent-007"]


def test_evm_case_matters_because_the_format_is_eip55(
    golden_wallets: list[Wallet],
) -> None:
    wallets = _tamper(golden_wallets, 1, 2, str(golden_wallets[1][2]).lower())
    assert verify_wallets(MNEMONIC, wallets, workers=1) == ["agent-001"]


def test_a_swapped_index_and_bad_indexes_are_mismatches(
    golden_wallets: list[Wallet],
) -> None:
    wallets = _tamper(golden_wallets, 2, 1, 3)  # type: ignore[arg-type]
    wallets = _tamper(wallets, 5, 1, -1)  # type: ignore[arg-type]
    wallets = _tamper(wallets, 6, 1, "6")
    wallets = _tamper(wallets, 9, 1, 2**31)  # type: ignore[arg-type]
    bad = verify_wallets(MNEMONIC, wallets, workers=1)
    assert bad == ["agent-002", "agent-005", "agent-006", "agent-009"]


def test_another_seed_matches_nothing(golden_wallets: list[Wallet]) -> None:
    other = "abandon " * 11 + "about"
    assert len(verify_wallets(other, golden_wallets, workers=1)) == 20


def test_the_process_pool_path_gives_the_same_answer(
    golden_wallets: list[Wallet], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(derive, "CHUNK_SIZE", 3)  # 20 wallets → 7 chunks
    wallets = _tamper(golden_wallets, 13, 3, "rrrrrrrrrrrrrrrrrrrrrhoLvTp")
    wallets = _tamper(wallets, 19, 2, str(golden_wallets[0][2]))
    assert verify_wallets(MNEMONIC, iter(wallets), workers=2) == [
        "agent-013",
        "agent-019",
    ]


def test_many_chunks_in_one_process(
    golden_wallets: list[Wallet], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(derive, "CHUNK_SIZE", 4)
    wallets = _tamper(golden_wallets, 17, 2, str(golden_wallets[16][2]))
    assert verify_wallets(MNEMONIC, iter(wallets), workers=1) == ["agent-017"]
    assert verify_wallets(MNEMONIC, iter([]), workers=2) == []


def test_eip55_matches_the_eip_examples() -> None:
    for address in (
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ):
        assert eip55(address[2:].lower()) == address


def test_deriver_refuses_out_of_range_indexes() -> None:
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
    for bad in (-1, 2**31, True, "0"):
        with pytest.raises(ValueError):
            deriver.addresses(bad)  # type: ignore[arg-type]
