"""Bugs the campaign found, each pinned by a test.

Fixed bugs keep their test as a regression test. A bug not fixed yet is
``xfail(strict=True)``: when it is fixed the test passes, the strict xfail
turns that into a failure, and the marker must be removed. Its reason names
the file, the function and the suggested fix.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import blake3
import msgpack
import pytest

from tests.campaign_support import (
    Source,
    agent_events,
    base_env,
    run_main,
)
from vaultstore.errors import IntegrityError, LocalIOError


@pytest.mark.reliability(15)
def test_export_salt_temporary_is_removed_when_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaultstore.ops import exportjson

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(LocalIOError):
        exportjson.salt_beside(tmp_path / "backup.json")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.reliability(23)
@pytest.mark.parametrize(
    "line",
    [
        {
            "kind": "lifecycle",
            "record": {
                "agentId": "a1",
                "state": "active",
                "createdAt": 1,
                "activatedAt": 2,
                "totalTransactions": 2**64,
                "totalVolume": {"ETH": "1"},
            },
        },
        {
            "kind": "balances",
            "agentId": "a1",
            "balances": [
                {
                    "agentId": "a1",
                    "chain": "evm",
                    "token": "ETH",
                    "balance": "5",
                    "lastUpdated": 10**23,
                }
            ],
        },
    ],
    ids=["totalTransactions-2^64", "lastUpdated-10^23"],
)
def test_integers_above_2_64_are_an_input_error(
    tmp_path: Path, line: dict[str, object]
) -> None:
    src = Source(tmp_path / "s")
    path = tmp_path / "in.ndjson"
    path.write_text(json.dumps(line) + "\n")
    done = run_main(src.env(), "ingest", str(path))
    assert done.code == 7, done.err[-300:]
    assert "Traceback" not in done.err


@pytest.mark.reliability(6, 22)
def test_a_malformed_index_with_a_valid_checksum_is_rebuilt(tmp_path: Path) -> None:
    from vaultstore.repo.index import Index

    path = tmp_path / "index"
    body = b"VSIDX\x01" + msgpack.packb(["", "0"])
    path.write_bytes(body + blake3.blake3(body).digest())
    assert Index(path).load() is False


@pytest.mark.reliability(22)
def test_tree_entries_with_an_infinite_slot_are_an_integrity_error() -> None:
    from vaultstore.repo import tree

    data = msgpack.packb([[b"\x01" * 32], [["agent", 0, float("inf")]]])
    with pytest.raises(IntegrityError):
        tree.decode_entries(data, "leaf x")


@pytest.mark.reliability(22)
def test_forget_with_a_malformed_duration_is_a_usage_error(tmp_path: Path) -> None:
    env = base_env(
        VAULTSTORE_VAULT=str(tmp_path / "v"), VAULTSTORE_REPOSITORY=str(tmp_path / "r")
    )
    assert run_main(env, "forget", "--keep-within", "3x").code == 2


@pytest.mark.reliability(4)
@pytest.mark.xfail(
    strict=True,
    reason="vaultstore/journal.py Journal.open(): a corrupt page in the middle of "
    "the events log (the journal's history) is not detected: open() only reads "
    "meta, backups read the projection, so `vaultstore status` and `backup` "
    "succeed on a damaged journal. RELIABILITY case 4 asks to refuse to open; "
    "run PRAGMA quick_check (or a cheaper check of the events b-tree) in open(), "
    "raise IntegrityError, and add the explicit repair that keeps what precedes "
    "the damage and reports what was lost",
)
def test_corrupt_event_log_page_is_refused_on_open(tmp_path: Path) -> None:
    from tests.test_campaign_damage import _corrupt_table_page

    src = Source(tmp_path / "s")
    src.append(agent_events(range(400)))
    _corrupt_table_page(src.vault_dir / "journal.db", "events")
    done = run_main(src.env(), "status", "--json")
    assert done.code == 3, done.out


@pytest.mark.reliability(4)
def test_corrupt_event_log_page_is_found_by_check(tmp_path: Path) -> None:
    """Not refused on open yet (above), but `check` reads every journal page."""
    from tests.test_campaign_damage import _corrupt_table_page

    src = Source(tmp_path / "s")
    src.append(agent_events(range(400)))
    assert run_main(src.env(), "backup", "--full").code == 0
    clean = run_main(src.env(), "check", "--json")
    assert clean.code == 0, clean.err
    assert json.loads(clean.out)["journal"]["problems"] == []
    _corrupt_table_page(src.vault_dir / "journal.db", "events")
    done = run_main(src.env(), "check", "--json")
    assert done.code == 3, done.out + done.err
    assert json.loads(done.out)["journal"]["problems"]
