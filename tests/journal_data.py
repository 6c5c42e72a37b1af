"""Builders of legacy-format wallets, lifecycle records, balances and NDJSON
lines, shared by the journal, ingest and crash tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

XRP = "rHpbKweByKf4HaC3iAATyTagm87Zz3czXd"


def agent(i: int) -> str:
    return f"agent-{i:05d}"


def wallet(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "agentId": agent(i),
        "derivationIndex": i,
        "evmAddress": "0x" + f"{i:040x}",
        "xrpAddress": XRP,
        "createdAt": 1_700_000_000_000 + i,
        **extra,
    }


def lifecycle(i: int, state: str = "active", **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "agentId": agent(i),
        "state": state,
        "createdAt": 1_700_000_000_000 + i,
        "totalTransactions": 2,
        "totalVolume": {"ETH": "1000000000000000", "XRP": "250000"},
    }
    if state != "pending":
        record["activatedAt"] = 1_700_000_000_100 + i
    record.update(extra)
    return record


def balances(
    i: int, wei: str = "123456789012345678901234567890"
) -> list[dict[str, Any]]:
    return [
        {
            "agentId": agent(i),
            "chain": "evm",
            "token": "ETH",
            "balance": wei,
            "lastUpdated": 1_700_000_000_500,
        },
        {
            "agentId": agent(i),
            "chain": "xrp",
            "token": "XRP",
            "balance": "20000000",
            "lastUpdated": 1_700_000_000_500,
        },
    ]


def line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def agent_lines(i: int, state: str = "active") -> list[str]:
    return [
        line({"kind": "wallet", "wallet": wallet(i)}),
        line({"kind": "lifecycle", "record": lifecycle(i, state)}),
        line({"kind": "balances", "agentId": agent(i), "balances": balances(i)}),
    ]


def write_ndjson(path: Path, agents: range, state: str = "active") -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in agents:
            out.write("\n".join(agent_lines(i, state)) + "\n")
    return path
