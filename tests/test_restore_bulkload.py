"""Journal.bulk_load as restore drives it: chunked scans, fallbacks, durability.

The loads run twice: with SQLite in this process, and with the loader child
process that large restores use (``LOADER_PROCESS_MIN`` set to 0).
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest

from vaultstore import journal as journal_mod
from vaultstore.errors import IntegrityError, LocalIOError
from vaultstore.journal import Journal
from vaultstore.model import (
    EMPTY_DIGEST,
    Record,
    digest_add,
    encode_record,
    record_hash,
)


def record(n: int, state: str | None = "active", **lifecycle: Any) -> Record:
    agent = f"agent-{n:05d}"
    wallet = {"agentId": agent, "derivationIndex": n, "evmAddress": "0x" + "a" * 40}
    life = None
    if state is not None:
        life = {"agentId": agent, "state": state, "createdAt": 1, **lifecycle}
    balances = [{"agentId": agent, "chain": "evm", "token": "ETH", "balance": "7"}]
    return Record(agent, wallet, life, balances)


def expected_digest(datas: list[bytes]) -> bytes:
    digest = EMPTY_DIGEST
    for data in datas:
        digest = digest_add(digest, record_hash(data))
    return digest


@pytest.fixture(params=["in-process", "loader-process"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "BULK_ROWS", 7)
    child = request.param == "loader-process"
    monkeypatch.setattr(journal_mod, "LOADER_PROCESS_MIN", 0 if child else 1 << 62)


@pytest.fixture
def child_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "BULK_ROWS", 7)
    monkeypatch.setattr(journal_mod, "LOADER_PROCESS_MIN", 0)


@pytest.mark.usefixtures("loader")
def test_bulk_load_counts_hashes_and_verifies(tmp_path: Path) -> None:
    states = ["active", "suspended", "pending", "archived", None]
    records = [record(n, states[n % 5]) for n in range(60)]
    # Key order inside the lifecycle must not matter, nor a "state" key elsewhere.
    records[3] = records[3]._replace(
        lifecycle={"state": "pending", "agentId": records[3].agent_id},
        wallet={**records[3].wallet, "metadata": {"state": "archived"}},
    )
    datas = [encode_record(r) for r in records]
    items: list[bytes | Record] = [*datas[:30], *records[30:]]
    with Journal.bulk_load(tmp_path / "v", items, 42) as j:
        assert j.state_digest() == expected_digest(datas)
        by_state = j.counts()["byState"]
        assert j.counts()["agents"] == 60
        assert by_state["pending"] == 12 + 1 and by_state["archived"] == 12 - 1
        assert by_state["active"] == by_state["suspended"] == by_state["none"] == 12
        assert j.verify_projection() == []
        assert j.get("agent-00003") == records[3]
        assert j.last_lsn() == 42 and j.base_lsn() == 42
        mode = j._conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = j._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)  # back to the journal's normal durability
    assert not (tmp_path / "v" / "journal.db-journal").exists()


@pytest.mark.usefixtures("loader")
@pytest.mark.parametrize(
    "bad",
    [
        b"\x93\xa1a\xc0\xc0",  # three fields, not four
        msgpack.packb([7, None, None, None]),  # agent id not a string
        encode_record(record(1)) + b"\x00",  # trailing bytes after a record
        encode_record(record(1, state=None))[:-1],  # truncated
        encode_record(record(2, "active")._replace(lifecycle={"state": 5})),
    ],
)
def test_a_bad_record_fails_the_load_and_leaves_no_journal(
    tmp_path: Path, bad: bytes
) -> None:
    datas = [encode_record(record(n + 10)) for n in range(9)]
    datas.insert(4, bad)
    with pytest.raises(IntegrityError):
        Journal.bulk_load(tmp_path / "v", datas, 5)
    assert not (tmp_path / "v" / "journal.db").exists()


def _columns(
    records: list[Record], size: int = 7
) -> list[tuple[list[str], list[bytes]]]:
    return [
        (
            [r.agent_id for r in records[i : i + size]],
            [encode_record(r) for r in records[i : i + size]],
        )
        for i in range(0, len(records), size)
    ]


def _states(records: list[Record]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        state = r.lifecycle["state"] if r.lifecycle else "none"
        counts[state] = counts.get(state, 0) + 1
    return counts


@pytest.mark.usefixtures("loader")
def test_a_column_load_writes_what_a_scanning_load_writes(tmp_path: Path) -> None:
    """Agent ids from the tree and counts from the manifest: the same journal."""
    states = ["active", "suspended", "pending", "archived", None]
    records = [record(n, states[n % 3]) for n in range(40)]
    datas = [encode_record(r) for r in records]
    with Journal.bulk_load(tmp_path / "scanned", datas, 42) as j:
        scanned = (
            j.counts(),
            j.state_digest(),
            j._conn.execute("SELECT * FROM agents").fetchall(),
        )
    with Journal.bulk_load_columns(
        tmp_path / "columns", _columns(records), 42, _states(records)
    ) as j:
        assert j.verify_projection() == []
        given = (
            j.counts(),
            j.state_digest(),
            j._conn.execute("SELECT * FROM agents").fetchall(),
        )
    assert given == scanned and len(scanned[2]) == 40


@pytest.mark.usefixtures("loader")
@pytest.mark.parametrize("where", [0, 5, 12])
def test_a_record_under_another_agents_id_fails_a_column_load(
    tmp_path: Path, where: int
) -> None:
    records = [record(n) for n in range(14)]
    columns = _columns(records)
    chunk, slot = divmod(where, 7)
    agents, datas = columns[chunk]
    # agent-00001 is a prefix of agent-000010: only an exact id passes.
    datas[slot] = (
        encode_record(record(where + 1))
        if where
        else encode_record(record(0)._replace(agent_id="agent-000000"))
    )
    with pytest.raises(IntegrityError, match=f"agent-{where:05d}"):
        Journal.bulk_load_columns(tmp_path / "v", columns, 5, _states(records))
    assert not (tmp_path / "v" / "journal.db").exists()


def test_a_column_chunk_with_more_ids_than_records_is_refused(tmp_path: Path) -> None:
    records = [record(n) for n in range(3)]
    agents, datas = _columns(records)[0]
    with pytest.raises(IntegrityError, match="more agent ids or more records"):
        Journal.bulk_load_columns(
            tmp_path / "v", [([*agents, "x"], datas)], 5, _states(records)
        )


def test_an_sqlite_without_json_loads_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executemany fallback writes what the one-statement insert writes."""
    monkeypatch.setattr(journal_mod, "BULK_ROWS", 7)
    monkeypatch.setattr(journal_mod, "LOADER_PROCESS_MIN", 1 << 62)
    datas = [encode_record(record(n, ["active", None][n % 2])) for n in range(30)]
    rows = []
    for name, has_json in (("json", True), ("plain", False)):
        monkeypatch.setattr(journal_mod, "_has_json", lambda conn, v=has_json: v)
        with Journal.bulk_load(tmp_path / name, datas, 8) as j:
            assert j.state_digest() == expected_digest(datas)
            assert j.verify_projection() == []
            rows.append(j._conn.execute("SELECT * FROM agents").fetchall())
    assert rows[0] == rows[1] and len(rows[0]) == 30


def test_a_chunk_whose_lengths_do_not_tile_its_records_is_refused(
    tmp_path: Path,
) -> None:
    journal = Journal.create(tmp_path / "v")
    data = encode_record(record(1))
    conn = journal._conn
    for bad in [
        (["agent-00001"], [1], [len(data) - 1], data),
        (["a", "b"], [1, 2], [len(data)], data),
        (["a", "b"], [1], [len(data), 0], data),
    ]:
        with pytest.raises(IntegrityError, match="malformed"):
            journal_mod._insert_chunks(conn, [bad], 5)
    journal.close()


@pytest.mark.usefixtures("loader")
def test_duplicates_across_chunks_are_refused(tmp_path: Path) -> None:
    datas = [encode_record(record(n)) for n in range(10)]
    with pytest.raises(IntegrityError, match="appears twice"):
        Journal.bulk_load(tmp_path / "v", [*datas, datas[2]], 5)


@pytest.mark.usefixtures("loader")
def test_a_crash_inside_the_load_leaves_no_visible_rows(tmp_path: Path) -> None:
    """The load runs in one transaction with a rollback journal: all or nothing."""

    def records() -> Any:
        for n in range(30):
            yield encode_record(record(n))
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError):
        Journal.bulk_load(tmp_path / "v", records(), 5)
    assert not (tmp_path / "v" / "journal.db").exists()


def test_scan_matches_full_decode() -> None:
    records = [
        record(n, "suspended", suspensionReason="¥state¦active") for n in range(5)
    ]
    datas = [encode_record(r) for r in records]
    agents, states = journal_mod._agents_and_states(
        b"".join(datas), list(map(len, datas))
    )
    assert agents == [r.agent_id for r in records]
    assert states == ["suspended"] * 5


class _Spy:
    """Wraps ``subprocess.Popen`` to remember the loader children started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        real = subprocess.Popen

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
            child = real(*args, **kwargs)
            self.children.append(child)
            return child

        monkeypatch.setattr(journal_mod.subprocess, "Popen", popen)


@pytest.mark.usefixtures("child_loader")
def test_a_killed_loader_fails_the_load_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)

    def records() -> Any:
        for n in range(40):
            if n == 20:
                spy.children[0].kill()
                spy.children[0].wait()
            yield encode_record(record(n))

    with pytest.raises(LocalIOError, match="loader process failed"):
        Journal.bulk_load(tmp_path / "v", records(), 5)
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == []


@pytest.mark.usefixtures("child_loader")
def test_a_failing_reader_stops_the_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent's error wins, the child is reaped, nothing is committed."""
    spy = _Spy(monkeypatch)

    def records() -> Any:
        for n in range(30):
            yield encode_record(record(n))
        raise IntegrityError("batch 1234 is corrupt")

    with pytest.raises(IntegrityError, match="batch 1234"):
        Journal.bulk_load(tmp_path / "v", records(), 5)
    assert spy.children and spy.children[0].returncode is not None
    assert not (tmp_path / "v" / "journal.db").exists()


def test_the_loader_exits_without_committing_when_its_input_ends_early(
    tmp_path: Path,
) -> None:
    """The parent died mid-stream: EOF before ``commit`` rolls everything back."""
    journal = Journal.create(tmp_path / "v")
    journal.close()
    data = encode_record(record(1))
    stream = io.BytesIO(msgpack.packb([["agent-00001"], [1], [len(data)], data]))
    answer = io.BytesIO()
    status = journal_mod.serve_bulk_load(journal.path, 9, _Buffered(stream), answer)
    assert status == 3 and answer.getvalue() == b""
    with Journal.open(tmp_path / "v") as reopened:
        assert reopened.counts()["agents"] == 0 and reopened.last_lsn() == 0


class _Buffered:
    def __init__(self, raw: io.BytesIO) -> None:
        self.read1 = raw.read
