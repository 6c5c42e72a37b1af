"""``vaultstore reconcile`` over a real vault journal and real JSON-RPC nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.rpc_servers import Node, running_nodes
from vaultstore.cli.common import Settings
from vaultstore.cli.reconcile_cmds import reconcile_command
from vaultstore.errors import MisuseError, NotFoundError, ReconcileMismatchError
from vaultstore.journal import Journal
from vaultstore.model import Record

EVM_TOKEN = "0x" + "cd" * 20
BIG = 2**70 + 3


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    with running_nodes(tmp_path_factory.mktemp("nodes")) as started:
        yield started


def agent(i: int, state: str = "active") -> Record:
    agent_id = f"cli-agent-{i}"
    wallet = {
        "agentId": agent_id,
        "derivationIndex": i,
        "evmAddress": f"0x{i:040x}",
        "xrpAddress": f"rCliAgent{i:024d}",
        "createdAt": 1,
    }
    balances = [
        {"agentId": agent_id, "chain": "evm", "token": "ETH", "balance": str(10**18)},
        {"agentId": agent_id, "chain": "evm", "token": EVM_TOKEN, "balance": str(BIG)},
        {"agentId": agent_id, "chain": "xrp", "token": "XRP", "balance": "25000000"},
    ]
    return Record(agent_id, wallet, {"agentId": agent_id, "state": state}, balances)


@pytest.fixture
def vault(tmp_path: Path, nodes: dict[str, Node]) -> Path:
    """A vault of 6 agents (one archived, one removed) and nodes that agree."""
    records = [agent(i, "archived" if i == 0 else "active") for i in range(6)]
    directory = tmp_path / "vault"
    Journal.bulk_load(directory, records, lsn=6).close()
    eth = {r.wallet["evmAddress"]: str(10**18) for r in records if r.wallet}
    token = {r.wallet["evmAddress"]: str(BIG) for r in records if r.wallet}
    drops = {r.wallet["xrpAddress"]: "25000000" for r in records if r.wallet}
    for node in nodes.values():
        node.reset()
    nodes["evm"].control("test_setState", {"eth": eth, "erc20": {EVM_TOKEN: token}})
    nodes["xrpl"].control("test_setState", {"accounts": drops})
    return directory


def invoke(vault: Path, *args: str) -> tuple[int, str, BaseException | None]:
    settings = Settings(vault, None, None, None, None)
    result = CliRunner().invoke(
        reconcile_command, list(args), obj=settings, standalone_mode=False
    )
    return result.exit_code, result.output, result.exception


def rpc_args(nodes: dict[str, Node]) -> list[str]:
    return ["--evm-rpc", nodes["evm"].url, "--xrpl-rpc", nodes["xrpl"].url]


def test_clean_vault_reports_all_matched(vault: Path, nodes: dict[str, Node]) -> None:
    code, output, error = invoke(vault, *rpc_args(nodes), "--json", "--strict")

    assert error is None and code == 0
    summary = json.loads(output)
    assert (summary["agents"], summary["checked"], summary["matched"]) == (6, 18, 18)
    assert summary["mismatched"] == 0 and summary["mismatches"] == []


def test_strict_fails_on_a_mismatch(vault: Path, nodes: dict[str, Node]) -> None:
    nodes["xrpl"].control("test_setState", {"accounts": {}})  # every account gone

    code, output, error = invoke(vault, *rpc_args(nodes), "--strict")

    assert isinstance(error, ReconcileMismatchError) and error.exit_code == 13
    assert "mismatched:   6" in output
    assert "expected 25000000, actual 0" in output


def test_without_strict_a_mismatch_is_reported_not_failed(
    vault: Path, nodes: dict[str, Node]
) -> None:
    # No ETH anywhere, and the token contract does not exist (eth_call -> "0x").
    nodes["evm"].control("test_setState", {})

    code, output, error = invoke(vault, *rpc_args(nodes), "--json")

    assert error is None and code == 0
    summary = json.loads(output)
    assert (summary["mismatched"], summary["unavailable"], summary["matched"]) == (
        6,
        6,
        6,
    )
    assert {(m["token"], m["actual"]) for m in summary["mismatches"]} == {("ETH", "0")}
    assert {m["expected"] for m in summary["mismatches"]} == {str(10**18)}


def test_balances_file_source(vault: Path, tmp_path: Path) -> None:
    actual = {
        f"cli-agent-{i}": [{"chain": "xrp", "token": "XRP", "balance": 25000000}]
        for i in range(6)
    }
    path = tmp_path / "actual.json"
    path.write_text(json.dumps(actual))

    code, output, error = invoke(vault, "--balances-file", str(path), "--json")

    summary = json.loads(output)
    assert error is None and code == 0
    assert (summary["matched"], summary["unavailable"]) == (6, 12)


def test_no_source_is_a_usage_error(vault: Path) -> None:
    _code, _output, error = invoke(vault, "--json")

    assert isinstance(error, MisuseError)


def test_missing_vault_is_not_found(tmp_path: Path, nodes: dict[str, Node]) -> None:
    _code, _output, error = invoke(tmp_path / "nowhere", *rpc_args(nodes))

    assert isinstance(error, NotFoundError)


def test_entry_point_exit_code_and_json_log(
    vault: Path, nodes: dict[str, Node]
) -> None:
    nodes["evm"].control("test_setState", {"eth": {}, "erc20": {EVM_TOKEN: {}}})
    vaultstore = Path(sys.executable).with_name("vaultstore")
    done = subprocess.run(
        [
            str(vaultstore),
            "--vault",
            str(vault),
            "reconcile",
            *rpc_args(nodes),
            "--strict",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 13, done.stderr
    lines = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    mismatches = [x for x in lines if x["msg"] == "Balance mismatch detected"]
    assert len(mismatches) == 12
    assert {(x["chain"], x["expected"], x["actual"]) for x in mismatches} == {
        ("evm", str(10**18), "0"),
        ("evm", str(BIG), "0"),
    }
    assert all(x["level"] == "warning" and x["agentId"] for x in mismatches)
