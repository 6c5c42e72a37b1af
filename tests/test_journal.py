"""The journal: append, projection, change tracking, digest, checks, bulk load."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import msgpack
import pytest

from tests.journal_data import agent, balances, lifecycle, wallet
from vaultstore import faults
from vaultstore import journal as journal_mod
from vaultstore.errors import (
    InputError,
    IntegrityError,
    MisuseError,
    NotFoundError,
    TransitionError,
    UnsupportedVersionError,
)
from vaultstore.journal import Event, Journal
from vaultstore.model import (
    EMPTY_DIGEST,
    Record,
    decode_record,
    digest_add,
    encode_record,
    record_hash,
    tree_key,
)


def agent_events(i: int, state: str = "active") -> list[Event]:
    return [
        Event("wallet", agent(i), wallet(i)),
        Event("lifecycle", agent(i), lifecycle(i, state)),
        Event("balances", agent(i), balances(i)),
    ]


def many(n: int, state: str = "active") -> list[Event]:
    return [e for i in range(n) for e in agent_events(i, state)]


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    return tmp_path / "vault"


@pytest.fixture
def jr(vault: Path) -> Journal:
    j = Journal.create(vault)
    yield j
    j.close()


def recomputed_digest(j: Journal) -> bytes:
    digest = EMPTY_DIGEST
    for _key, _agent, _lsn, data in j.iter_by_tree_key():
        if data is not None:
            digest = digest_add(digest, record_hash(data))
    return digest


def raw(vault: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(vault / "journal.db"), isolation_level=None)


def test_create_sets_private_modes(jr: Journal, vault: Path) -> None:
    jr.append(many(2))
    assert stat.S_IMODE(vault.stat().st_mode) == 0o700
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        assert stat.S_IMODE((vault / name).stat().st_mode) == 0o600, name


def test_create_refuses_an_existing_journal(jr: Journal, vault: Path) -> None:
    with pytest.raises(MisuseError):
        Journal.create(vault)


def test_open_missing_vault_tells_to_init(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="vaultstore init"):
        Journal.open(tmp_path / "nope")


def test_open_garbage_is_an_integrity_error(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "journal.db").write_bytes(b"not a database at all" * 300)
    with pytest.raises(IntegrityError):
        Journal.open(tmp_path / "v")


def test_open_foreign_sqlite_and_wrong_version(tmp_path: Path, vault: Path) -> None:
    (tmp_path / "f").mkdir()
    sqlite3.connect(str(tmp_path / "f" / "journal.db")).execute("CREATE TABLE x(a)")
    with pytest.raises(IntegrityError, match="not a vaultstore journal"):
        Journal.open(tmp_path / "f")
    Journal.create(vault).close()
    raw(vault).execute("UPDATE meta SET value = x'39' WHERE key = 'version'")
    with pytest.raises(UnsupportedVersionError):
        Journal.open(vault)


def test_append_get_and_reopen(jr: Journal, vault: Path) -> None:
    assert jr.append(many(3)) == 9
    record = jr.get(agent(1))
    assert record == Record(agent(1), wallet(1), lifecycle(1), balances(1))
    assert jr.get("nobody") is None
    jr.close()
    with Journal.open(vault) as again:
        assert again.last_lsn() == 9
        assert again.get(agent(2)) == Record(
            agent(2), wallet(2), lifecycle(2), balances(2)
        )


def test_noop_events_take_no_lsn(jr: Journal) -> None:
    jr.append(many(2))
    digest = jr.state_digest()
    assert jr.append(many(2)) == 6
    assert jr.state_digest() == digest
    assert len(list(jr.iter_events())) == 6
    assert jr.append([Event("remove", "ghost", None)]) == 6


def test_events_are_logged_with_time_kind_and_payload(jr: Journal) -> None:
    jr.append([Event("wallet", agent(0), wallet(0), time_ms=1234)])
    [(lsn, time_ms, agent_id, kind, payload)] = list(jr.iter_events())
    assert (lsn, time_ms, agent_id, kind) == (1, 1234, agent(0), "wallet")
    assert msgpack.unpackb(payload) == wallet(0)


def test_invalid_transition_writes_nothing_of_the_batch(jr: Journal) -> None:
    jr.append([Event("lifecycle", agent(0), lifecycle(0, "pending"))])
    before = (jr.last_lsn(), jr.state_digest())
    batch = many(3)[3:] + [Event("lifecycle", agent(0), lifecycle(0, "suspended"))]
    with pytest.raises(TransitionError, match="from pending to suspended"):
        jr.append(batch)
    assert (jr.last_lsn(), jr.state_digest()) == before
    assert jr.get(agent(1)) is None
    assert jr.verify_projection() == []


def test_transitions_follow_the_machine(jr: Journal) -> None:
    steps = ["pending", "active", "suspended", "active", "active", "archived"]
    for state in steps:
        jr.append(
            [Event("lifecycle", agent(0), lifecycle(0, state, lastActivity=len(state)))]
        )
    with pytest.raises(TransitionError, match="archived is final"):
        jr.append([Event("lifecycle", agent(0), lifecycle(0, "active"))])
    record = jr.get(agent(0))
    assert record is not None and record.lifecycle is not None
    assert record.lifecycle["state"] == "archived"


def test_legacy_mode_applies_jumps_with_a_warning(
    jr: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    jr.append([Event("lifecycle", agent(0), lifecycle(0, "archived"))])
    with caplog.at_level(logging.WARNING, logger="vaultstore.journal"):
        jr.append([Event("lifecycle", agent(0), lifecycle(0, "pending"))], legacy=True)
    record = jr.get(agent(0))
    assert record is not None and record.lifecycle["state"] == "pending"  # type: ignore[index]
    assert any(getattr(r, "event", "") == "journal.legacy-jump" for r in caplog.records)


def test_invalid_payload_is_refused(jr: Journal) -> None:
    with pytest.raises(InputError, match="wallets.derivationIndex"):
        jr.append([Event("wallet", agent(0), {**wallet(0), "derivationIndex": -1})])
    with pytest.raises(InputError, match="^kind"):
        jr.append([Event("archive", agent(0), None)])
    with pytest.raises(InputError, match="agentId"):
        jr.append([Event("wallet", agent(1), wallet(0))])
    assert jr.last_lsn() == 0


def test_changed_since_sees_updates_and_removals(jr: Journal) -> None:
    jr.append(many(4))
    mark = jr.last_lsn()
    jr.append([Event("balances", agent(1), balances(1, wei="5"))])
    jr.append([Event("remove", agent(2), None)])
    changed = list(jr.iter_changed_since(mark))
    assert [(a, lsn) for a, lsn, _ in changed] == [(agent(1), 13), (agent(2), 14)]
    assert changed[1][2] is None
    assert decode_record(changed[0][2]).balances == balances(1, wei="5")  # type: ignore[arg-type]
    assert [a for a, _, _ in jr.iter_changed_since(mark, upto=13)] == [agent(1)]
    assert list(jr.iter_changed_since(jr.last_lsn())) == []
    assert jr.get(agent(2)) is None
    assert jr.counts()["agents"] == 3


def test_changed_since_and_tree_order_use_indexes(jr: Journal, vault: Path) -> None:
    jr.append(many(3))
    conn = raw(vault)
    plan = " ".join(
        str(row)
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT agent_id, lsn, record FROM agents"
            " WHERE lsn > 1 ORDER BY lsn"
        )
    )
    assert "agents_by_lsn" in plan
    plan = " ".join(
        str(row)
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT tree_key, agent_id, lsn, record FROM agents"
            " ORDER BY tree_key, agent_id"
        )
    )
    # Clustered on (tree_key, agent_id): one sequential scan, no sort.
    assert "SCAN agents" in plan and "TEMP B-TREE" not in plan
    assert "INDEX" not in plan


def test_tree_order_streams_every_agent(
    jr: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_mod, "FETCH_ROWS", 7)
    jr.append(many(40))
    rows = list(jr.iter_by_tree_key())
    assert len(rows) == 40
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert all(key == tree_key(agent_id) for key, agent_id, _, _ in rows)


def test_digest_and_counts_track_changes(jr: Journal) -> None:
    jr.append(many(5))
    jr.append([Event("lifecycle", agent(0), lifecycle(0, "suspended"))])
    jr.append([Event("lifecycle", agent(1), lifecycle(1, "archived"))])
    jr.append([Event("remove", agent(2), None)])
    jr.append([Event("wallet", agent(9), wallet(9))])
    assert jr.state_digest() == recomputed_digest(jr)
    assert jr.state_digest() != EMPTY_DIGEST
    assert jr.counts() == {
        "agents": 5,
        "byState": {
            "pending": 0,
            "active": 2,
            "suspended": 1,
            "archived": 1,
            "none": 1,
        },
    }


def test_remove_then_recreate_starts_fresh(jr: Journal) -> None:
    jr.append(agent_events(0, "archived"))
    jr.append([Event("remove", agent(0), None)])
    jr.append([Event("lifecycle", agent(0), lifecycle(0, "pending"))])
    assert jr.get(agent(0)) == Record(agent(0), None, lifecycle(0, "pending"), None)
    assert jr.verify_projection() == []


def test_flushes_inside_one_transaction(
    jr: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_mod, "FLUSH_EVENTS", 4)
    events = many(10) + [
        Event("balances", agent(i), balances(i, "9")) for i in range(10)
    ]
    assert jr.append(events) == 40
    assert jr.verify_projection() == []
    assert jr.state_digest() == recomputed_digest(jr)
    assert jr.append(events[30:]) == 40


def test_verify_projection_clean_and_detects_tampering(
    jr: Journal, vault: Path
) -> None:
    jr.append(many(6))
    jr.append([Event("remove", agent(5), None)])
    assert jr.verify_projection() == []
    conn = raw(vault)
    forged = encode_record(
        Record(agent(1), {**wallet(1), "evmAddress": "0x" + "9" * 40}, None, None)
    )
    conn.execute(
        "UPDATE agents SET record = ?, rhash = ? WHERE agent_id = ?",
        (forged, record_hash(forged), agent(1)),
    )
    conn.execute("UPDATE agents SET lsn = 1 WHERE agent_id = ?", (agent(3),))
    conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent(4),))
    problems = jr.verify_projection()
    text = "\n".join(problems)
    assert f"agent {agent(1)!r}: projection record differs" in text
    assert f"agent {agent(3)!r}: projection LSN 1" in text
    assert f"agent {agent(4)!r}: in the log but not in the projection" in text
    assert "digest" in text


def test_verify_projection_detects_a_bad_digest_or_hash(
    jr: Journal, vault: Path
) -> None:
    jr.append(many(2))
    raw(vault).execute("UPDATE meta SET value = zeroblob(32) WHERE key = 'digest'")
    assert any("digest" in p for p in jr.verify_projection())
    raw(vault).execute(
        "UPDATE agents SET rhash = zeroblob(32) WHERE agent_id = ?", (agent(0),)
    )
    assert any("record hash" in p for p in jr.verify_projection())


def test_read_view_is_a_stable_snapshot(jr: Journal) -> None:
    jr.append(many(2))
    with jr.read_view() as view:
        jr.append(many(4)[6:])
        jr.append([Event("remove", agent(0), None)])
        assert view.last_lsn() == 6
        assert view.get(agent(0)) is not None
        assert view.get(agent(3)) is None
        assert len(list(view.iter_by_tree_key())) == 2
        assert view.counts()["agents"] == 2
    assert jr.last_lsn() == 13 and jr.counts()["agents"] == 3


def test_meta_round_trip_and_reserved_keys(jr: Journal) -> None:
    assert jr.get_meta("last_backup") is None
    jr.set_meta("last_backup", '{"id": "abc"}')
    jr.set_meta("blob", b"\x00\x01")
    assert jr.get_meta("last_backup") == b'{"id": "abc"}'
    assert jr.get_meta("blob") == b"\x00\x01"
    for key in ("digest", "last_lsn", "counts"):
        with pytest.raises(MisuseError):
            jr.set_meta(key, b"x")


def test_bulk_load_continues_above_the_lsn(tmp_path: Path) -> None:
    records = [
        encode_record(Record(agent(i), wallet(i), lifecycle(i), balances(i)))
        for i in range(25)
    ]
    records.append(Record(agent(99), wallet(99), None, None))
    target = tmp_path / "restored"
    target.mkdir(mode=0o700)
    with Journal.bulk_load(target, iter(records), 5000) as j:
        assert j.last_lsn() == 5000
        assert j.get(agent(3)) == Record(agent(3), wallet(3), lifecycle(3), balances(3))
        assert list(j.iter_changed_since(5000)) == []
        assert j.counts()["agents"] == 26
        assert j.state_digest() == recomputed_digest(j)
        assert j.verify_projection() == []
        assert j.append([Event("remove", agent(3), None)]) == 5001
        assert [a for a, _, _ in j.iter_changed_since(5000)] == [agent(3)]
        assert j.verify_projection() == []


def test_bulk_load_refuses_duplicates_and_leaves_no_journal(tmp_path: Path) -> None:
    record = Record(agent(1), wallet(1), None, None)
    with pytest.raises(IntegrityError, match="twice"):
        Journal.bulk_load(tmp_path / "v", [record, record], 10)
    assert not (tmp_path / "v" / "journal.db").exists()


def test_bulk_load_then_tampered_base_is_detected(tmp_path: Path) -> None:
    records = [Record(agent(i), wallet(i), None, None) for i in range(3)]
    Journal.bulk_load(tmp_path / "v", records, 10).close()
    conn = raw(tmp_path / "v")
    conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent(2),))
    with Journal.open(tmp_path / "v") as j:
        problems = j.verify_projection()
    # The base is copy-on-write: a row unchanged since the restore has no
    # second copy, so its loss shows as a digest and count mismatch.
    assert any("digest" in p for p in problems)
    assert any("counts" in p for p in problems)


def test_bulk_load_then_changes_keep_the_base_copy_on_write(tmp_path: Path) -> None:
    records = [Record(agent(i), wallet(i), None, None) for i in range(4)]
    with Journal.bulk_load(tmp_path / "v", records, 10) as j:
        assert raw(tmp_path / "v").execute("SELECT count(*) FROM base").fetchone() == (
            0,
        )
        j.append([Event("remove", agent(1), None)])
        j.append([Event("wallet", agent(2), {**wallet(2), "createdAt": 99})])
        assert j.verify_projection() == []
        base = raw(tmp_path / "v").execute("SELECT agent_id FROM base ORDER BY 1")
        assert [row[0] for row in base] == [agent(1), agent(2)]
        assert j.truncate_below(j.last_lsn()) == 2
        assert j.verify_projection() == []
        leftover = raw(tmp_path / "v").execute("SELECT count(*) FROM base").fetchone()
        assert leftover == (0,)  # every agent is again its own base


def test_truncate_below_folds_the_log(jr: Journal) -> None:
    jr.append(many(5))
    jr.append([Event("lifecycle", agent(0), lifecycle(0, "suspended"))])
    cut = jr.last_lsn()
    jr.append([Event("remove", agent(1), None)])
    digest = jr.state_digest()
    assert jr.truncate_below(cut) == cut
    assert [e[0] for e in jr.iter_events()] == [cut + 1]
    assert jr.state_digest() == digest
    assert jr.verify_projection() == []
    assert jr.truncate_below(cut) == 0
    assert jr.append([Event("lifecycle", agent(0), lifecycle(0, "active"))]) == cut + 2
    assert jr.verify_projection() == []
    with pytest.raises(MisuseError):
        jr.truncate_below(jr.last_lsn() + 1)


def test_commit_fault_points_bracket_the_commit(jr: Journal, vault: Path) -> None:
    seen: list[str] = []

    def fail_before(name: str) -> None:
        seen.append(name)
        if name == "journal.commit.before":
            raise OSError("injected")

    faults.set_hook(fail_before)
    try:
        with pytest.raises(OSError, match="injected"):
            jr.append(many(2))
    finally:
        faults.set_hook(None)
    assert seen == ["journal.commit.before"]
    assert jr.last_lsn() == 0 and jr.get(agent(0)) is None

    faults.set_hook(seen.append)
    try:
        jr.append(many(1))
    finally:
        faults.set_hook(None)
    assert seen[1:] == ["journal.commit.before", "journal.commit.after"]
    with Journal.open(vault) as other:
        assert other.last_lsn() == 3


def test_corrupt_page_is_reported_as_integrity(tmp_path: Path) -> None:
    vault = tmp_path / "v"
    with Journal.create(vault) as j:
        j.append(many(300))
    data = bytearray((vault / "journal.db").read_bytes())
    for offset in range(4096 * 2, len(data), 4096):
        data[offset : offset + 64] = os.urandom(64)
    (vault / "journal.db").write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        with Journal.open(vault) as j:
            list(j.iter_by_tree_key())
            j.verify_projection()


def test_torn_wal_tail_drops_only_the_unfinished_commit(tmp_path: Path) -> None:
    vault = tmp_path / "v"
    j = Journal.create(vault)
    j.append(many(3))
    first = (j.last_lsn(), j.state_digest())
    j.append(many(6)[9:])
    # Copy the files as a crash would leave them: the WAL is not checkpointed.
    crashed = tmp_path / "crashed"
    crashed.mkdir(mode=0o700)
    for name in ("journal.db", "journal.db-wal"):
        (crashed / name).write_bytes((vault / name).read_bytes())
    j.close()
    wal = crashed / "journal.db-wal"
    wal.write_bytes(wal.read_bytes()[:-100])  # tear the last commit's frame
    with Journal.open(crashed) as torn:
        assert (torn.last_lsn(), torn.state_digest()) == first
        assert torn.verify_projection() == []
        assert torn.append(many(6)[9:]) == 18


def test_create_recovers_from_an_empty_file_left_by_a_crash(vault: Path) -> None:
    vault.mkdir(mode=0o700)
    (vault / "journal.db").touch(mode=0o600)
    with pytest.raises(IntegrityError):
        Journal.open(vault)
    with Journal.create(vault) as j:
        assert j.last_lsn() == 0


def test_an_interrupted_write_is_reported_when_the_journal_opens(
    jr: Journal, vault: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jr.append(many(3))
    assert not (vault / "journal.pending").exists()  # removed after commit
    last = jr.last_lsn()
    jr.close()
    # What a writer killed before its commit leaves behind.
    (vault / "journal.pending").write_text(str(last))
    with caplog.at_level("WARNING", logger="vaultstore.journal"):
        Journal.open(vault).close()
    assert any(r.event == "journal.torn-write-dropped" for r in caplog.records)
    assert not (vault / "journal.pending").exists()

    # A marker left by a write that did commit is not a dropped write.
    (vault / "journal.pending").write_text(str(last - 1))
    caplog.clear()
    with caplog.at_level("WARNING", logger="vaultstore.journal"):
        Journal.open(vault).close()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("agent_id", ["../x", "", "a" * 4000, "bad\x00id"])
def test_prevalidated_events_still_have_their_agent_id_checked(
    tmp_path: Path, agent_id: str
) -> None:
    """``validated=True`` skips the payload checks, never the agent id."""
    with Journal.create(tmp_path / "v") as j:
        with pytest.raises(InputError), j.writer(legacy=True) as writer:
            writer.add(Event("balances", agent_id, [], None), validated=True)
        assert j.last_lsn() == 0
