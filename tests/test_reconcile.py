"""Balance reconciliation against real JSON-RPC servers on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.rpc_servers import Node, running_nodes
from vaultstore.balances import (
    BalanceQuery,
    EvmRpcSource,
    JsonFileSource,
    Lookup,
    XrplRpcSource,
    parse_amount,
)
from vaultstore.errors import BalanceSourceError, InputError, IntegrityError
from vaultstore.model import Record, encode_record
from vaultstore.reconcile import MISMATCH_MESSAGE, live_records, reconcile

VECTOR = Path(__file__).resolve().parent / "data"  # copies of the golden vectors
TOKEN = "0x" + "ab" * 20
BIG = 2**64 + 12345  # survives only as an integer, never as a float


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    with running_nodes(tmp_path_factory.mktemp("nodes")) as started:
        yield started


@pytest.fixture
def fresh_nodes(nodes: dict[str, Node]) -> dict[str, Node]:
    """The shared nodes with empty state and no failure injected."""
    for node in nodes.values():
        node.reset()
    return nodes


@pytest.fixture
def evm(fresh_nodes: dict[str, Node]) -> Node:
    return fresh_nodes["evm"]


@pytest.fixture
def xrpl(fresh_nodes: dict[str, Node]) -> Node:
    return fresh_nodes["xrpl"]


@pytest.fixture
def mismatch_log() -> Iterator[list[logging.LogRecord]]:
    """Every mismatch record the reconcile module logs during the test."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("vaultstore.reconcile")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def fleet(n: int, archived_every: int = 0) -> list[Record]:
    """n agents, each with ETH, one ERC-20 token and XRP balances."""
    records = []
    for i in range(n):
        agent = f"agent-{i:05d}"
        wallet = {
            "agentId": agent,
            "derivationIndex": i,
            "evmAddress": "0x" + secrets.token_hex(20),
            "xrpAddress": "r" + secrets.token_hex(12),
            "createdAt": 1,
        }
        state = "archived" if archived_every and i % archived_every == 0 else "active"
        lifecycle = {"agentId": agent, "state": state, "createdAt": 1}
        amounts = [("evm", "ETH", 10**18 + i), ("evm", TOKEN, BIG + i)]
        amounts.append(("xrp", "XRP", 20_000_000 + i))
        balances = [
            {
                "agentId": agent,
                "chain": c,
                "token": t,
                "balance": str(v),
                "lastUpdated": 1,
            }
            for c, t, v in amounts
        ]
        records.append(Record(agent, wallet, lifecycle, balances))
    return records


def chain_state(records: list[Record]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Node states that hold exactly what the records expect."""
    eth: dict[str, str] = {}
    token: dict[str, str] = {}
    accounts: dict[str, str] = {}
    for record in records:
        assert record.wallet is not None and record.balances is not None
        for entry in record.balances:
            if entry["token"] == "ETH":
                eth[record.wallet["evmAddress"]] = entry["balance"]
            elif entry["chain"] == "evm":
                token[record.wallet["evmAddress"]] = entry["balance"]
            else:
                accounts[record.wallet["xrpAddress"]] = entry["balance"]
    return {"eth": eth, "erc20": {TOKEN: token}}, {"accounts": accounts}


def rpc_sources(evm: Node, xrpl: Node) -> list[Any]:
    return [EvmRpcSource(evm.url, backoff=0.01), XrplRpcSource(xrpl.url, backoff=0.01)]


def test_all_match_over_rpc_in_batches(
    evm: Node, xrpl: Node, mismatch_log: list[logging.LogRecord]
) -> None:
    records = fleet(250)
    evm_state, xrpl_state = chain_state(records)
    evm.control("test_setState", evm_state)
    xrpl.control("test_setState", xrpl_state)
    before = evm.control("test_stats")

    summary = reconcile(records, rpc_sources(evm, xrpl), batch_size=1000)

    assert (summary.agents, summary.checked, summary.matched) == (250, 750, 750)
    assert summary.mismatched == 0 and summary.clean
    assert mismatch_log == []
    after = evm.control("test_stats")
    assert after["calls"] - before["calls"] == 500
    assert after["httpRequests"] - before["httpRequests"] == 5  # 100 calls each


def test_injected_mismatches_are_logged_one_each(
    evm: Node, xrpl: Node, mismatch_log: list[logging.LogRecord]
) -> None:
    records = fleet(40)
    evm_state, xrpl_state = chain_state(records)
    wallets = [r.wallet for r in records]
    assert all(w is not None for w in wallets)
    evm_state["eth"][wallets[3]["evmAddress"]] = "7"  # type: ignore[index]
    evm_state["erc20"][TOKEN][wallets[5]["evmAddress"]] = str(BIG + 5 + 1)  # type: ignore[index]
    xrpl_state["accounts"][wallets[7]["xrpAddress"]] = "1"  # type: ignore[index]
    evm.control("test_setState", evm_state)
    xrpl.control("test_setState", xrpl_state)

    summary = reconcile(records, rpc_sources(evm, xrpl), batch_size=16)

    assert (summary.checked, summary.mismatched, summary.matched) == (120, 3, 117)
    got = sorted(
        (r.agentId, r.chain, r.token, r.expected, r.actual)  # type: ignore[attr-defined]
        for r in mismatch_log
    )
    assert got == [
        ("agent-00003", "evm", "ETH", str(10**18 + 3), "7"),
        ("agent-00005", "evm", TOKEN, str(BIG + 5), str(BIG + 6)),
        ("agent-00007", "xrp", "XRP", str(20_000_007), "1"),
    ]
    assert all(r.getMessage() == MISMATCH_MESSAGE for r in mismatch_log)
    assert all(r.levelno == logging.WARNING for r in mismatch_log)
    assert sorted(m.to_dict()["agentId"] for m in summary.mismatches) == [
        "agent-00003",
        "agent-00005",
        "agent-00007",
    ]


def test_amounts_compare_as_integers_not_strings(
    tmp_path: Path, mismatch_log: list[logging.LogRecord]
) -> None:
    # The legacy service compared "1000" with 1000 and flagged everything.
    records = fleet(3)
    file_state = {
        r.agent_id: [
            {"chain": e["chain"], "token": e["token"], "balance": int(e["balance"])}
            for e in r.balances or []
        ]
        for r in records
    }
    path = tmp_path / "actual.json"
    path.write_text(json.dumps(file_state))

    summary = reconcile(records, [JsonFileSource(path)])

    assert (summary.checked, summary.matched, summary.mismatched) == (9, 9, 0)
    assert mismatch_log == []


def test_amount_parsing_rejects_what_int_would_accept() -> None:
    assert parse_amount("18446744073709551617") == 2**64 + 1
    assert parse_amount(0) == 0
    assert parse_amount(10**96) is None and parse_amount("1" + "0" * 96) is None
    assert parse_amount(str(2**256 - 1)) == 2**256 - 1
    too_long = "9" * 5000  # int() would raise past Python's digit limit
    for bad in ("+1", " 1", "1_000", "1.5", "-3", "", "١٢", too_long, 1.0, True, -1):
        assert parse_amount(bad) is None, bad


def test_invalid_vault_amounts_are_counted_not_compared(
    tmp_path: Path, mismatch_log: list[logging.LogRecord]
) -> None:
    record = fleet(1)[0]
    assert record.balances is not None
    record.balances[0]["balance"] = "1.5e18"
    record.balances[1]["balance"] = 10**18  # an integer, as a careless writer might
    path = tmp_path / "actual.json"
    path.write_text(
        json.dumps(
            {
                record.agent_id: [
                    {"chain": "evm", "token": "ETH", "balance": "1500000000000000000"},
                    {"chain": "evm", "token": TOKEN, "balance": str(10**18)},
                ]
            }
        )
    )

    summary = reconcile([record], [JsonFileSource(path)])

    assert (summary.invalid, summary.matched, summary.unavailable) == (1, 1, 1)
    assert summary.mismatched == 0 and not summary.clean


def test_unknown_xrpl_account_counts_as_zero(
    xrpl: Node, mismatch_log: list[logging.LogRecord]
) -> None:
    records = fleet(2)
    for record in records:
        assert record.balances is not None
        record.balances[:] = [e for e in record.balances if e["chain"] == "xrp"]
    assert records[0].balances is not None
    records[0].balances[0]["balance"] = "0"

    summary = reconcile(records, [XrplRpcSource(xrpl.url)])

    assert (summary.accounts_not_found, summary.matched, summary.mismatched) == (
        2,
        1,
        1,
    )
    assert [(r.agentId, r.actual) for r in mismatch_log] == [("agent-00001", "0")]  # type: ignore[attr-defined]


def test_xrpl_batch_method_matches_per_account_requests(
    xrpl: Node, mismatch_log: list[logging.LogRecord]
) -> None:
    records = fleet(25)
    _, xrpl_state = chain_state(records)
    assert records[4].wallet is not None and records[9].wallet is not None
    xrpl_state["accounts"][records[4].wallet["xrpAddress"]] = "3"
    del xrpl_state["accounts"][records[9].wallet["xrpAddress"]]
    xrpl.control("test_setState", xrpl_state)
    before = xrpl.control("test_stats")

    summary = reconcile(records, [XrplRpcSource(xrpl.url, batch_size=10)])

    after = xrpl.control("test_stats")
    assert after["httpRequests"] - before["httpRequests"] == 3
    assert after["calls"] - before["calls"] == 25
    assert (summary.matched, summary.mismatched, summary.accounts_not_found) == (
        23,
        2,
        1,
    )
    assert sorted((r.agentId, r.actual) for r in mismatch_log) == [  # type: ignore[attr-defined]
        ("agent-00004", "3"),
        ("agent-00009", "0"),
    ]


def test_archived_agents_are_checked(evm: Node, xrpl: Node) -> None:
    records = fleet(10, archived_every=2)
    evm_state, xrpl_state = chain_state(records)
    evm.control("test_setState", evm_state)
    xrpl.control("test_setState", xrpl_state)

    summary = reconcile(records, rpc_sources(evm, xrpl))

    assert summary.checked == 30 and summary.matched == 30


def test_per_call_rpc_errors_make_entries_unavailable(
    evm: Node, mismatch_log: list[logging.LogRecord]
) -> None:
    records = fleet(5)
    evm_state, _ = chain_state(records)
    assert records[2].wallet is not None
    evm_state["errors"] = [records[2].wallet["evmAddress"]]
    evm.control("test_setState", evm_state)

    summary = reconcile(records, [EvmRpcSource(evm.url)])

    assert (summary.checked, summary.unavailable, summary.skipped) == (8, 2, 5)
    assert summary.mismatched == 0 and mismatch_log == []


def test_transient_503_is_retried(evm: Node) -> None:
    records = fleet(3)
    evm_state, _ = chain_state(records)
    evm.control("test_setState", evm_state)
    evm.control("test_failNext", 2)

    summary = reconcile(records, [EvmRpcSource(evm.url, attempts=3, backoff=0.01)])

    assert summary.matched == 6


def test_persistent_503_gives_a_clean_error(evm: Node) -> None:
    evm.control("test_failNext", 10)
    source = EvmRpcSource(evm.url, attempts=2, backoff=0.01)

    with pytest.raises(BalanceSourceError, match="unreachable after 2 attempts"):
        reconcile(fleet(1), [source])


def test_http_client_error_is_not_retried(evm: Node) -> None:
    evm.control("test_failNext", 5, 401)
    before = evm.control("test_stats")["httpRequests"]

    with pytest.raises(BalanceSourceError, match="refused the request: HTTP 401"):
        reconcile(fleet(1), [EvmRpcSource(evm.url, attempts=3, backoff=0.01)])

    assert evm.control("test_stats")["httpRequests"] - before == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("source_class", [EvmRpcSource, XrplRpcSource])
@pytest.mark.reliability(24)
def test_unreachable_source_is_one_clean_error_without_the_api_key(
    source_class: Any,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v3/SECRETAPIKEY"
    source = source_class(url, attempts=2, backoff=0.01, timeout=2)

    with pytest.raises(BalanceSourceError) as caught:
        reconcile(fleet(1), [source])

    assert caught.value.exit_code == 14
    assert "SECRETAPIKEY" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(InputError, match="http"):
        EvmRpcSource("ftp://example.invalid/")


@pytest.mark.parametrize("kind", ["evm", "xrpl"])
def test_an_answer_that_is_not_json_is_a_source_error(
    fresh_nodes: dict[str, Node], kind: str
) -> None:
    node = fresh_nodes[kind]
    node.control("test_garbageNext", 1)
    source = (EvmRpcSource if kind == "evm" else XrplRpcSource)(node.url)

    with pytest.raises(BalanceSourceError, match="not JSON"):
        reconcile(fleet(1), [source])


def test_legacy_backup_file_as_source_matches_its_own_records() -> None:
    backup = json.loads((VECTOR / "full-backup.json").read_text())
    wallets = {w["agentId"]: w for w in backup["wallets"]}
    records = [
        Record(agent, wallets.get(agent), None, entries)
        for agent, entries in backup["balanceSnapshots"].items()
    ]
    expected = sum(len(e) for e in backup["balanceSnapshots"].values())

    summary = reconcile(records, [JsonFileSource(VECTOR / "full-backup.json")])

    assert expected > 0
    assert (summary.checked, summary.matched, summary.mismatched) == (expected,) * 2 + (
        0,
    )


def test_rpc_sources_take_precedence_over_the_file(
    evm: Node, tmp_path: Path, mismatch_log: list[logging.LogRecord]
) -> None:
    records = fleet(2)
    evm_state, _ = chain_state(records)
    evm.control("test_setState", evm_state)
    path = tmp_path / "actual.json"
    path.write_text(json.dumps({r.agent_id: [] for r in records}))

    summary = reconcile(records, [EvmRpcSource(evm.url), JsonFileSource(path)])

    assert (summary.matched, summary.unavailable) == (4, 2)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        '{"a": {"chain": "evm"}}',
        '{"a": [{"chain": "evm", "token": "ETH", "balance": 1.5}]}',
        '{"a": [{"chain": "evm", "token": "ETH", "balance": "-1"}]}',
        '{"a": [{"token": "ETH", "balance": "1"}]}',
    ],
)
@pytest.mark.reliability(22)
def test_malformed_balances_file_is_an_input_error(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)

    with pytest.raises(InputError):
        JsonFileSource(path)


@pytest.mark.parametrize("digits", [5000, 1001])
@pytest.mark.parametrize("pad", [0, (1 << 20) - 700])  # a run across read chunks
@pytest.mark.reliability(22)
def test_overlong_numbers_are_refused_before_parsing(
    tmp_path: Path, digits: int, pad: int
) -> None:
    # ijson's C backend crashes the interpreter on integers over 4300 digits.
    path = tmp_path / "huge.json"
    prefix = '{"a": [{"chain": "evm", "token": "ETH", "balance": '
    prefix += " " * (pad - len(prefix)) if pad else ""
    path.write_text(prefix + "9" * digits + "}]}")

    with pytest.raises(InputError, match="more than 1000 digits"):
        JsonFileSource(path)


def test_amounts_up_to_96_digits_are_read_longer_ones_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.json"
    entry = '{"a": [{"chain": "xrp", "token": "XRP", "balance": %s}]}'
    path.write_text(entry % ("9" * 96))

    lookups = JsonFileSource(path).fetch([BalanceQuery("a", "xrp", "XRP", "r1")])

    assert lookups == [Lookup(10**96 - 1)]
    path.write_text(entry % ("1" + "0" * 96))
    with pytest.raises(InputError, match="non-negative integer"):
        JsonFileSource(path)


def test_file_source_answers_missing_entries_as_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "actual.json"
    path.write_text('{"a": [{"chain": "xrp", "token": "XRP", "balance": "5"}]}')
    source = JsonFileSource(path)

    lookups = source.fetch(
        [BalanceQuery("a", "xrp", "XRP", "r1"), BalanceQuery("b", "xrp", "XRP", "r2")]
    )

    assert lookups == [Lookup(5), Lookup(None, "not-in-file")]


def test_live_records_skips_tombstones_and_refuses_garbage() -> None:
    record = fleet(1)[0]
    rows = [(1, "gone", 3, None), (2, record.agent_id, 4, encode_record(record))]
    assert list(live_records(rows)) == [record]

    with pytest.raises(IntegrityError, match="bad"):
        list(live_records([(3, "bad", 5, b"\xc1")]))


amounts = st.integers(min_value=0, max_value=2**256 - 1)


@given(pairs=st.lists(st.tuples(amounts, amounts), min_size=1, max_size=20))
def test_mismatches_are_exactly_the_differing_integers(
    tmp_path_factory: pytest.TempPathFactory, pairs: list[tuple[int, int]]
) -> None:
    records, actual = [], {}
    for i, (want, have) in enumerate(pairs):
        agent = f"p{i}"
        entry = {"agentId": agent, "chain": "xrp", "token": "XRP", "balance": str(want)}
        records.append(Record(agent, {"xrpAddress": f"r{i}"}, None, [entry]))
        actual[agent] = [{"chain": "xrp", "token": "XRP", "balance": have}]
    path = tmp_path_factory.mktemp("prop") / "actual.json"
    path.write_text(json.dumps(actual))

    summary = reconcile(records, [JsonFileSource(path)], batch_size=7)

    differing = [(f"p{i}", w, h) for i, (w, h) in enumerate(pairs) if w != h]
    assert summary.mismatched == len(differing)
    assert summary.matched == len(pairs) - len(differing)
    assert [(m.agent_id, m.expected, m.actual) for m in summary.mismatches] == differing
