"""The benchmark generator makes valid, deterministic agent state and changes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from Crypto.Hash import keccak

N = 200
SEED = 7
GENERATOR = Path(__file__).resolve().parent.parent / "benchmarks" / "generate.py"
DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")
TOKEN_RANK = {"ETH": 0, "XRP": 2}
WALLET_KEYS = ["agentId", "derivationIndex", "evmAddress", "xrpAddress", "createdAt"]
LIFECYCLE_OPTIONAL = {
    "activatedAt",
    "suspendedAt",
    "archivedAt",
    "lastActivity",
    "suspensionReason",
}


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_generate"] = module
    spec.loader.exec_module(module)
    return module


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _by_agent(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["kind"] == "wallet":
            state.setdefault(event["wallet"]["agentId"], {})["wallet"] = event["wallet"]
        elif event["kind"] == "lifecycle":
            state.setdefault(event["record"]["agentId"], {})["lifecycle"] = event[
                "record"
            ]
        else:
            assert event["kind"] == "balances"
            state.setdefault(event["agentId"], {})["balances"] = event["balances"]
    return state


def _eip55_ok(address: str) -> bool:
    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
        return False
    body = address[2:]
    digest = keccak.new(digest_bits=256, data=body.lower().encode()).hexdigest()
    for char, nibble in zip(body, digest[:40], strict=True):
        if char.isalpha() and char.isupper() != (int(nibble, 16) >= 8):
            return False
    return True


def _xrp_decodes(address: str) -> bool:
    alphabet = "rpshnaf39wBUDNEGHJKLM4PQRST7VWXYZ2bcdeCg65jkm8oFqi1tuvAxyz"
    number = 0
    for char in address:
        number = number * 58 + alphabet.index(char)
    raw = number.to_bytes(25, "big")
    check = hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4]
    return address.startswith("r") and raw[0] == 0 and raw[21:] == check


def _check_agent(gen: ModuleType, agent: dict[str, Any]) -> None:
    wallet, life, balances = agent["wallet"], agent["lifecycle"], agent["balances"]
    assert list(wallet)[:5] == WALLET_KEYS
    assert set(wallet) - set(WALLET_KEYS) <= {"metadata"}
    assert _eip55_ok(wallet["evmAddress"]), wallet["evmAddress"]
    assert _xrp_decodes(wallet["xrpAddress"]), wallet["xrpAddress"]
    assert life["state"] in ("pending", "active", "suspended", "archived")
    assert (
        set(life)
        - {"agentId", "state", "createdAt", "totalTransactions"}
        - {"totalVolume"}
        <= LIFECYCLE_OPTIONAL
    )
    assert None not in life.values()
    assert all(DECIMAL.match(v) for v in life["totalVolume"].values())
    # Archival keeps a suspended agent's suspension fields; reactivation drops them.
    for key in ("suspendedAt", "suspensionReason"):
        if life["state"] in ("pending", "active", "suspended"):
            assert (key in life) == (life["state"] == "suspended"), (key, life)
    assert ("archivedAt" in life) == (life["state"] == "archived")
    assert ("activatedAt" in life) == (life["state"] != "pending")
    ranks = []
    for entry in balances:
        assert list(entry) == ["agentId", "chain", "token", "balance", "lastUpdated"]
        assert entry["agentId"] == wallet["agentId"]
        assert isinstance(entry["balance"], str) and DECIMAL.match(entry["balance"])
        assert entry["chain"] == ("xrp" if entry["token"] == "XRP" else "evm")
        if entry["token"] not in TOKEN_RANK:
            assert _eip55_ok(entry["token"])
        ranks.append(gen.TOKEN_ORDER[entry["token"]])
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)


def test_state_is_valid_and_realistic(gen: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "state.ndjson"
    gen.write_state(path, SEED, N)
    state = _by_agent(_events(path))

    assert len(state) == N
    for agent in state.values():
        _check_agent(gen, agent)
    states = [a["lifecycle"]["state"] for a in state.values()]
    assert set(states) == {"pending", "active", "suspended", "archived"}
    assert states.count("active") > N // 2
    assert any("metadata" in a["wallet"] for a in state.values())
    balances = [int(e["balance"]) for a in state.values() for e in a["balances"]]
    assert any(b >= 2**64 for b in balances)
    tokens = {e["token"] for a in state.values() for e in a["balances"]}
    assert len(tokens - {"ETH", "XRP"}) >= 3


def test_legacy_file_is_about_1kb_per_agent_with_valid_checksum(
    gen: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "backup.json"
    gen.write_legacy(path, gen.iter_agents(SEED, N), SEED, gen.round_time(1))
    text = path.read_text("utf-8")
    doc = json.loads(text)

    assert 700 <= len(text.encode()) / N <= 1400
    assert not text.endswith("\n") and '\n  "wallets": [\n    {\n' in text
    assert list(doc) == [
        "version",
        "timestamp",
        "type",
        "encryptedMasterSeed",
        "wallets",
        "lifecycleRecords",
        "balanceSnapshots",
        "checksum",
    ]
    assert len(doc["wallets"]) == len(doc["balanceSnapshots"]) == N
    checksum, doc["checksum"] = doc["checksum"], ""
    compact = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(compact.encode()).hexdigest() == checksum
    assert json.loads(text) == json.loads(json.dumps(doc | {"checksum": checksum}))
    assert text == json.dumps(
        doc | {"checksum": checksum}, indent=2, ensure_ascii=False
    )


def test_generation_is_deterministic(gen: ModuleType, tmp_path: Path) -> None:
    for name in ("a", "b"):
        gen.write_state(tmp_path / f"{name}.ndjson", SEED, N)
        gen.write_changes(tmp_path / f"{name}.changes", SEED, N, 10)
    gen.write_state(tmp_path / "other.ndjson", SEED + 1, N)

    assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()
    assert (tmp_path / "a.changes").read_bytes() == (
        tmp_path / "b.changes"
    ).read_bytes()
    assert (tmp_path / "a.ndjson").read_bytes() != (
        tmp_path / "other.ndjson"
    ).read_bytes()
    assert gen.make_agent(SEED, 42) == gen.make_agent(SEED, 42)


def test_changes_are_valid_transitions(gen: ModuleType, tmp_path: Path) -> None:
    before = tmp_path / "state.ndjson"
    changes = tmp_path / "changes.ndjson"
    gen.write_state(before, SEED, N * 5)
    counts = gen.write_changes(changes, SEED, N * 5, 10)
    state = _by_agent(_events(before))
    changed = _by_agent(_events(changes))

    new = [aid for aid in changed if aid not in state]
    assert len(new) == gen.new_agent_count(N * 5, 10) == counts["new-agent"]
    assert 0.05 * N * 5 <= len(changed) <= 0.15 * N * 5
    for kind in ("transaction", "suspension", "reactivation", "archival", "metadata"):
        assert counts.get(kind, 0) > 0, kind
    for agent_id, parts in changed.items():
        old = state.get(agent_id, {})
        merged = {**old, **parts}
        assert set(merged) == {"wallet", "lifecycle", "balances"}
        _check_agent(gen, merged)
        if "lifecycle" in parts and old:
            was, now = old["lifecycle"]["state"], parts["lifecycle"]["state"]
            assert now == was or now in gen.TRANSITIONS[was], (agent_id, was, now)
            assert was != "archived"
        if old and "wallet" in parts:
            assert parts["wallet"]["evmAddress"] == old["wallet"]["evmAddress"]


@pytest.mark.parametrize("rounds", [1, 2])
def test_state_after_changes_matches_the_change_events(
    gen: ModuleType, tmp_path: Path, rounds: int
) -> None:
    gen.write_state(tmp_path / "state.ndjson", SEED, N)
    state = _by_agent(_events(tmp_path / "state.ndjson"))
    for change_round in range(1, rounds + 1):
        path = tmp_path / f"changes-{change_round}.ndjson"
        gen.write_changes(path, SEED, N, 10, change_round)
        for agent_id, parts in _by_agent(_events(path)).items():
            old = state.get(agent_id)
            if old and "lifecycle" in parts:
                was, now = old["lifecycle"]["state"], parts["lifecycle"]["state"]
                assert now == was or now in gen.TRANSITIONS[was], (agent_id, was, now)
            state[agent_id] = {**(old or {}), **parts}

    after = {
        a.agent_id: {
            "wallet": a.wallet,
            "lifecycle": a.lifecycle,
            "balances": a.balances,
        }
        for a in gen.iter_agents(SEED, N, 10, rounds)
    }
    assert len(after) == gen.fleet_size(N, 10, rounds) > N
    assert after == state
