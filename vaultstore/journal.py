"""The journal: a durable change log plus a view of every agent's current record.

On disk (``<vault>/journal.db``, mode 0600, in a 0700 directory) it is one
SQLite database in WAL mode with ``synchronous=FULL``, so a change is durable
once the call that made it returns. Format ``vaultstore-journal`` version 1
(meta keys ``format`` and ``version``; other versions are refused):

``events(lsn INTEGER PRIMARY KEY, time_ms, agent_id, kind, payload)``
    The log, append-only. ``kind`` is ``wallet`` | ``lifecycle`` | ``balances``
    | ``remove``; ``payload`` is msgpack of the validated legacy dict (wallet,
    lifecycle record), of the balance list, or nil for ``remove``.
``agents(tree_key, agent_id, lsn, rhash, record)``, ``WITHOUT ROWID``
    The projection: the agent's current record (``model.encode_record``), the
    LSN that last changed it, ``model.tree_key`` and ``model.record_hash`` of
    the record. ``record`` NULL is a tombstone (a removed agent), kept so that
    "changed since LSN" sees removals. Clustered on ``(tree_key, agent_id)``, so
    a full backup reads the projection in tree order as one sequential scan
    (through a secondary index it was a random lookup per row: 4x slower at 1M
    agents); lookups by agent compute the tree key. Indexed on ``lsn``.
``base(agent_id PRIMARY KEY, lsn, record)``
    The state the log starts from, kept copy-on-write: the base state of an
    agent is its ``base`` row if it has one, else its projection row when that
    row's LSN is at or below ``meta.base_lsn`` (unchanged since). The writer
    copies a base-era row into ``base`` just before the agent first changes.
    So a restore (:meth:`Journal.bulk_load`) writes each record once, not
    twice. Every event in ``events`` is above ``base_lsn``; projection = base +
    replay(events) — the check :meth:`Journal.verify_projection` makes. For
    agents unchanged since the base that check compares a row with itself; the
    record hashes, the stored digest and counts still cover those rows.
``journal.pending`` (beside the database)
    A marker holding the LSN before the transaction in progress, written
    (durably) when a write transaction starts and removed when it ends. Found
    on open with that LSN still current, it means a write was interrupted
    before it was acknowledged: SQLite drops such a torn tail silently, so the
    journal logs ``journal.torn-write-dropped`` instead.
``meta(key PRIMARY KEY, value BLOB)``
    ``last_lsn`` (the LSN counter: it only grows, even when the log is
    truncated), ``base_lsn``, ``digest`` (32-byte multiset state digest, kept
    current in O(1) per change), ``counts`` (JSON: live agents by lifecycle
    state, ``none`` for agents without a lifecycle record), plus keys other
    parts of vaultstore set with :meth:`Journal.set_meta`.

Every write (events, projection rows, digest, counts, LSN counter) happens in
one SQLite transaction, so the log and the view never disagree; a crash leaves
either all of it or none of it. An event that would not change the agent's
record is skipped and takes no LSN, so replaying the same input is a no-op.

Why a ``base`` table rather than one synthetic "restore" event per agent: the
restored agents must keep LSNs at or below the snapshot's LSN (so "changed
since the snapshot" is empty after a restore) while every event keeps a unique
LSN above ``base_lsn``; a base state satisfies both, and truncation reuses it.

A restore fills a new journal with :meth:`Journal.bulk_load`; large loads
run SQLite's inserts in a child process (``vaultstore.journal_loader``) so
that decoding and inserting use both cores. Records cross the pipe in chunks,
each one msgpack message ``[agent ids, record lengths, records
concatenated]``, scanned by the parent for agent ids and lifecycle states.
Either side inserts a chunk with one ``INSERT … SELECT`` over
``json_each`` (a JSON array of ``[tree key, agent id, offset, length]``),
cutting records and record hashes out of one bound blob each with
``substr``; SQLite builds without JSON functions get ``executemany``.

Writes go through :meth:`Journal.writer` (or :meth:`Journal.append`): events
are validated, applied to a per-batch cache of the touched agents and written
with ``executemany`` every ``FLUSH_EVENTS`` agents, all inside one
transaction. Iterators stream with ``fetchmany``; use :meth:`Journal.read_view`
when several reads must see one consistent state while others append.

``sqlite3`` is used only here: its exceptions become ``IntegrityError``
(corrupt or not a database), ``LockedError`` (busy) or ``LocalIOError``
(disk full, I/O error, cannot open).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgpack

from vaultstore import durable, faults
from vaultstore.errors import (
    InputError,
    IntegrityError,
    LocalIOError,
    LockedError,
    MisuseError,
    NotFoundError,
    UnsupportedVersionError,
    VaultstoreError,
)
from vaultstore.model import (
    EMPTY_DIGEST,
    LIFECYCLE_STATES,
    Record,
    check_transition,
    decode_record,
    digest_terms_sum,
    encode_record,
    record_hash,
    record_hashes,
    transition_allowed,
    tree_key,
    tree_keys,
    validate_agent_id,
    validate_balances,
    validate_lifecycle,
    validate_wallet,
)

log = logging.getLogger(__name__)

FORMAT = "vaultstore-journal"
VERSION = 1
DB_NAME = "journal.db"
PENDING_NAME = "journal.pending"  # marker of a write in progress
EVENT_KINDS = ("wallet", "lifecycle", "balances", "remove")
RESERVED_META = frozenset(
    {"format", "version", "last_lsn", "base_lsn", "digest", "counts"}
)

# Pending rows are written with executemany every FLUSH_EVENTS events, and the
# per-agent cache is dropped then: memory stays flat however long the run.
FLUSH_EVENTS = 20_000
# Page size of new journals: with 4 KiB pages a WITHOUT ROWID row above ~1 KB
# spills into an overflow page (records average ~0.7 KB, up to ~1.6 KB), which
# made bulk loads and tree-order scans slower. Existing files keep theirs.
PAGE_SIZE = 16384
FETCH_ROWS = 1_000
_MOD = 1 << 256

_SCHEMA = """
CREATE TABLE events (
    lsn INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE agents (
    tree_key INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    lsn INTEGER NOT NULL,
    rhash BLOB,
    record BLOB,
    PRIMARY KEY (tree_key, agent_id)
) WITHOUT ROWID;
CREATE INDEX agents_by_lsn ON agents(lsn);
CREATE TABLE base (
    agent_id TEXT PRIMARY KEY,
    lsn INTEGER NOT NULL,
    record BLOB
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

_UPSERT_AGENT = (
    "INSERT INTO agents(agent_id, lsn, tree_key, rhash, record) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT(tree_key, agent_id) DO UPDATE SET"
    " lsn = excluded.lsn, rhash = excluded.rhash, record = excluded.record"
)

T = TypeVar("T")


class Event(NamedTuple):
    """One change; ``payload`` is the legacy dict or list (None for ``remove``)."""

    kind: str
    agent_id: str
    payload: Any
    time_ms: int | None = None


def _translate(exc: sqlite3.Error, path: Path | str) -> VaultstoreError:
    """The VaultstoreError for a sqlite3 error on the journal at ``path``."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    detail = str(exc)
    if code in (11, 26) or "malformed" in detail or "not a database" in detail:
        return IntegrityError(f"journal {path} is corrupt: {detail}", path=str(path))
    if code in (5, 6) or "locked" in detail:
        return LockedError(f"journal {path} is busy (another writer?): {detail}")
    if code in (10, 13, 14, 8):
        return LocalIOError(f"journal {path}: {detail}", path=str(path))
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError | sqlite3.ProgrammingError
    ):
        return IntegrityError(
            f"journal {path} is inconsistent: {detail}", path=str(path)
        )
    return LocalIOError(f"journal {path}: {detail}", path=str(path))


def _guard(path: Path, func: Callable[[], T]) -> T:
    try:
        return func()
    except sqlite3.Error as exc:
        raise _translate(exc, path) from exc


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=FULL")
        # A bounded page cache: a long ingest spills to the WAL, not to RAM.
        conn.execute("PRAGMA cache_size=-32768")
        conn.execute("PRAGMA journal_size_limit=67108864")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _make_private_file(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _prepare_dir(vault_dir: Path) -> Path:
    vault_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(vault_dir, 0o700)
    db = vault_dir / DB_NAME
    if not db.exists():
        _make_private_file(db)
    elif not _is_blank(db):
        raise MisuseError(f"a journal already exists at {db}", path=str(db))
    return db


def _is_blank(db: Path) -> bool:
    """Whether ``db`` holds no table: left by a create that crashed early."""
    conn = _guard(db, lambda: sqlite3.connect(str(db), isolation_level=None))
    try:
        query = "SELECT count(*) FROM sqlite_master"
        return bool(_guard(db, lambda: conn.execute(query).fetchone()[0] == 0))
    finally:
        conn.close()


def _decode_stored(data: bytes, agent_id: str) -> Record:
    try:
        return decode_record(data)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(
            f"journal record of agent {agent_id!r} does not decode", agent_id=agent_id
        ) from exc


def _state_of(record: Record | None) -> str | None:
    if record is None:
        return None
    lifecycle = record.lifecycle
    if lifecycle is None:
        return "none"
    state = lifecycle.get("state") if isinstance(lifecycle, dict) else None
    if not isinstance(state, str):
        raise IntegrityError(
            f"record of agent {record.agent_id!r} has a malformed lifecycle",
            agent_id=record.agent_id,
        )
    return state


def apply_event(
    current: Record | None, kind: str, agent_id: str, payload: Any
) -> Record | None:
    """The record after an event (no validation, no transition check)."""
    if kind == "remove":
        return None
    base = current if current is not None else Record(agent_id, None, None, None)
    if kind == "wallet":
        return base._replace(wallet=payload)
    if kind == "lifecycle":
        return base._replace(lifecycle=payload)
    if kind == "balances":
        return base._replace(balances=payload)
    raise IntegrityError(f"journal event of unknown kind {kind!r}", kind=kind)


def validate_event(event: Event) -> None:
    """Check an event's kind, agent and payload; raises InputError naming the field."""
    kind, agent_id, payload = event.kind, event.agent_id, event.payload
    time_ms = event.time_ms
    if time_ms is not None and (type(time_ms) is not int or time_ms < 0):
        raise InputError("time: must be a non-negative integer (ms)", field="time")
    if kind == "wallet":
        validate_wallet(payload)
        other = payload["agentId"]
    elif kind == "lifecycle":
        validate_lifecycle(payload)
        other = payload["agentId"]
    elif kind == "balances":
        validate_agent_id(agent_id)
        validate_balances(agent_id, payload)
        other = agent_id
    elif kind == "remove":
        validate_agent_id(agent_id)
        other = agent_id
    else:
        expected = ", ".join(EVENT_KINDS)
        raise InputError(
            f"kind: unknown event kind {kind!r} (expected one of {expected})",
            field="kind",
        )
    if other != agent_id:
        raise InputError(
            "agentId: event agent and payload agent differ", field="agentId"
        )


class _Reader:
    """Queries shared by the journal and its read views."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    def _q(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return _guard(self.path, lambda: self._conn.execute(sql, params).fetchall())

    def _meta_raw(self, key: str) -> bytes | None:
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def get_meta(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None."""
        return self._meta_raw(key)

    def last_lsn(self) -> int:
        """The LSN of the newest event ever appended (0 for an empty journal)."""
        return int(self._meta_raw("last_lsn") or b"0")

    def base_lsn(self) -> int:
        """The LSN the log starts above (bulk load or truncation point)."""
        return int(self._meta_raw("base_lsn") or b"0")

    def state_digest(self) -> bytes:
        """The 32-byte multiset digest of every live record."""
        return self._meta_raw("digest") or EMPTY_DIGEST

    def counts(self) -> dict[str, Any]:
        """Live agents in total (``agents``) and by lifecycle state (``byState``)."""
        by_state = _load_counts(self._meta_raw("counts"))
        shown = {state: by_state.get(state, 0) for state in LIFECYCLE_STATES}
        if by_state.get("none"):
            shown["none"] = by_state["none"]
        return {"agents": sum(by_state.values()), "byState": shown}

    def get(self, agent_id: str) -> Record | None:
        """The agent's current record, or None if unknown or removed."""
        rows = self._q(
            "SELECT record FROM agents WHERE tree_key = ? AND agent_id = ?",
            (tree_key(agent_id), agent_id),
        )
        if not rows or rows[0][0] is None:
            return None
        return _decode_stored(rows[0][0], agent_id)

    def _stream(self, sql: str, params: tuple[Any, ...]) -> Iterator[Any]:
        cursor = _guard(self.path, lambda: self._conn.execute(sql, params))
        while True:
            rows = _guard(self.path, lambda: cursor.fetchmany(FETCH_ROWS))
            if not rows:
                return
            yield from rows

    def iter_changed_since(
        self, lsn: int, upto: int | None = None
    ) -> Iterator[tuple[str, int, bytes | None]]:
        """(agent_id, lsn, record bytes or None) of agents changed in (lsn, upto]."""
        if upto is None:
            sql = "SELECT agent_id, lsn, record FROM agents WHERE lsn > ? ORDER BY lsn"
            return self._stream(sql, (lsn,))
        sql = (
            "SELECT agent_id, lsn, record FROM agents WHERE lsn > ? AND lsn <= ?"
            " ORDER BY lsn"
        )
        return self._stream(sql, (lsn, upto))

    def iter_by_tree_key(
        self, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, str, int, bytes | None]]:
        """(tree_key, agent_id, lsn, record bytes or None) in tree order, of
        the agents whose tree key is in [start, stop)."""
        if start == 0 and stop is None:
            sql = (
                "SELECT tree_key, agent_id, lsn, record FROM agents"
                " ORDER BY tree_key, agent_id"
            )
            return self._stream(sql, ())
        if stop is None:
            sql = (
                "SELECT tree_key, agent_id, lsn, record FROM agents"
                " WHERE tree_key >= ? ORDER BY tree_key, agent_id"
            )
            return self._stream(sql, (start,))
        sql = (
            "SELECT tree_key, agent_id, lsn, record FROM agents"
            " WHERE tree_key >= ? AND tree_key < ? ORDER BY tree_key, agent_id"
        )
        return self._stream(sql, (start, stop))

    def iter_events(self, after: int = 0) -> Iterator[tuple[int, int, str, str, bytes]]:
        """(lsn, time_ms, agent_id, kind, payload) of events above ``after``."""
        sql = (
            "SELECT lsn, time_ms, agent_id, kind, payload FROM events"
            " WHERE lsn > ? ORDER BY lsn"
        )
        return self._stream(sql, (after,))


@contextmanager
def read_view(path: Path) -> Iterator[_Reader]:
    """A consistent snapshot of the journal at ``path`` on a connection of its
    own (another process may hold one too), unaffected by concurrent appends."""
    conn = _guard(path, lambda: sqlite3.connect(str(path), isolation_level=None))
    try:
        _guard(path, lambda: conn.execute("BEGIN").fetchall())
        # The read transaction takes its snapshot at its first read.
        _guard(path, lambda: conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall())
        yield _Reader(conn, path)
    finally:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        conn.close()


def _load_counts(raw: bytes | None) -> dict[str, int]:
    if not raw:
        return {}
    value = json.loads(raw)
    return {str(k): int(v) for k, v in value.items()}


class Journal(_Reader):
    """An open journal. Not thread-safe; one writer at a time per vault."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__(conn, path)
        self.vault_dir = path.parent

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def create(cls, vault_dir: Path | str) -> Journal:
        """Create an empty journal in ``vault_dir`` (created 0700 if missing).

        Raises:
            MisuseError: a journal already exists there.
            LocalIOError: the directory or database cannot be written.
        """
        vault_dir = Path(vault_dir)
        try:
            db = _prepare_dir(vault_dir)
        except OSError as exc:
            raise LocalIOError(f"cannot create journal in {vault_dir}: {exc}") from exc
        conn = _guard(db, lambda: _connect(db))
        journal = cls(conn, db)
        journal._init_schema({"last_lsn": b"0", "base_lsn": b"0"})
        journal._fix_modes()
        log.info("created journal %s", db, extra={"event": "journal.create"})
        return journal

    @classmethod
    def open(cls, vault_dir: Path | str) -> Journal:
        """Open the journal of an existing vault.

        Raises:
            NotFoundError: there is no journal in ``vault_dir``.
            IntegrityError: the file is not a vaultstore journal or is corrupt.
            UnsupportedVersionError: the journal has another format version.
        """
        db = Path(vault_dir) / DB_NAME
        if not db.is_file():
            raise NotFoundError(
                f"no vault at {Path(vault_dir)}: run `vaultstore init` first",
                path=str(vault_dir),
            )
        conn = _guard(db, lambda: _connect(db))
        journal = cls(conn, db)
        try:
            journal._check_format()
            journal._notice_torn_write()
        except BaseException:
            conn.close()
            raise
        return journal

    def _notice_torn_write(self) -> None:
        """Warn about a write that was interrupted before it was acknowledged.

        SQLite drops an uncommitted (torn) tail of the log silently when it
        opens; the writer's marker file tells us it happened. A marker whose
        LSN is below the current one belongs to a write that did commit (the
        process died before removing it). A live writer holds the write lock,
        so its marker is left alone.
        """
        pending = self.path.with_name(PENDING_NAME)
        if not pending.exists():
            return
        try:
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return  # another process is writing right now
        finally:
            self._conn.execute("PRAGMA busy_timeout = 10000")
        try:
            raw = pending.read_bytes().strip()
            started = int(raw) if raw.isdigit() else -1
            if started == self.last_lsn():
                log.warning(
                    "the last write to journal %s was interrupted before it was "
                    "acknowledged; its events were dropped (rerun that ingest)",
                    self.path,
                    extra={"event": "journal.torn-write-dropped", "lastLsn": started},
                )
            pending.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(
                "cannot read or remove %s: %s",
                pending,
                exc.strerror,
                extra={"event": "journal.pending-unreadable"},
            )
        finally:
            self._conn.execute("ROLLBACK")

    def _init_schema(self, meta: dict[str, bytes]) -> None:
        def run() -> None:
            # executescript commits a pending transaction first: begin inside it.
            self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA)
            rows = {"format": FORMAT.encode(), "version": str(VERSION).encode(), **meta}
            self._conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)", list(rows.items())
            )
            self._conn.execute("COMMIT")

        _guard(self.path, run)

    def _check_format(self) -> None:
        try:
            fmt = self._meta_raw("format")
        except IntegrityError:
            raise
        except VaultstoreError as exc:
            raise IntegrityError(
                f"{self.path} is not a vaultstore journal: {exc}"
            ) from exc
        if fmt != FORMAT.encode():
            raise IntegrityError(f"{self.path} is not a vaultstore journal")
        version = self._meta_raw("version")
        if version != str(VERSION).encode():
            raise UnsupportedVersionError(
                f"journal {self.path} has format version {version!r}; "
                f"this build reads version {VERSION}"
            )

    def _fix_modes(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)

    def close(self) -> None:
        """Close the database (idempotent)."""
        _guard(self.path, self._conn.close)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------

    def read_view(self) -> AbstractContextManager[_Reader]:
        """A consistent snapshot of the journal, unaffected by concurrent appends."""
        return read_view(self.path)

    # -- writing -------------------------------------------------------------

    def set_meta(self, key: str, value: bytes | str) -> None:
        """Store ``value`` under ``key`` (durable on return).

        Raises:
            MisuseError: ``key`` is one the journal keeps itself.
        """
        if key in RESERVED_META:
            raise MisuseError(f"meta key {key!r} is maintained by the journal")
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        sql = "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)"
        _guard(self.path, lambda: self._conn.execute(sql, (key, data)))

    @contextmanager
    def writer(self, *, legacy: bool = False) -> Iterator[Writer]:
        """One transaction: events added to the yielded Writer commit together.

        Leaving the block normally commits (durable on return); an exception
        rolls everything back and propagates.
        """
        _guard(self.path, lambda: self._conn.execute("BEGIN IMMEDIATE"))
        writer = Writer(self, legacy)
        pending = self.path.with_name(PENDING_NAME)
        try:
            # With the write lock held: a marker that outlives this block
            # means the write was interrupted (see _notice_torn_write).
            durable.write_atomic(pending, str(writer.lsn).encode())
            yield writer
            writer._finish()
            faults.point("journal.commit.before")
            _guard(self.path, lambda: self._conn.execute("COMMIT"))
        except BaseException:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("rollback failed", extra={"event": "journal.rollback"})
            pending.unlink(missing_ok=True)
            raise
        faults.point("journal.commit.after")
        pending.unlink(missing_ok=True)
        self._fix_modes()
        if writer.applied:
            log.info(
                "appended %d events up to LSN %d",
                writer.applied,
                writer.lsn,
                extra={
                    "event": "journal.append",
                    "applied": writer.applied,
                    "skipped": writer.skipped,
                    "lastLsn": writer.lsn,
                },
            )

    def append(self, events: Iterable[Event], *, legacy: bool = False) -> int:
        """Validate and append ``events`` in one transaction; returns the last LSN.

        Events that would not change their agent's record are skipped. With
        ``legacy`` lifecycle records are applied as recorded, without the
        transition check (a warning is logged for jumps it would refuse).

        Raises:
            InputError: an event is malformed; nothing is written.
            TransitionError: a lifecycle change is not allowed; nothing is written.
        """
        with self.writer(legacy=legacy) as writer:
            for event in events:
                writer.add(event)
        return writer.lsn

    def truncate_below(self, lsn: int) -> int:
        """Fold the events at or below ``lsn`` into the base state and drop them.

        Only call this with an LSN a durable full backup covers (the caller
        checks). Returns the number of events removed.
        """
        if lsn > self.last_lsn():
            raise MisuseError(
                f"cannot truncate at LSN {lsn}: the journal ends at {self.last_lsn()}"
            )
        start = self.base_lsn()
        if lsn <= start:
            return 0

        def run() -> int:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT OR IGNORE INTO base(agent_id, lsn, record)"
                " SELECT agent_id, lsn, record FROM agents WHERE lsn <= ?",
                (start,),
            )
            _replay_into(self._conn, "base", start, lsn, self.path)
            # Agents unchanged since ``lsn`` are their own base (copy-on-write).
            self._conn.execute(
                "DELETE FROM base WHERE agent_id IN"
                " (SELECT agent_id FROM agents WHERE lsn <= ?)",
                (lsn,),
            )
            removed = self._conn.execute(
                "DELETE FROM events WHERE lsn <= ?", (lsn,)
            ).rowcount
            self._conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'base_lsn'", (str(lsn).encode(),)
            )
            faults.point("journal.commit.before")
            self._conn.execute("COMMIT")
            return int(removed)

        try:
            removed = _guard(self.path, run)
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        faults.point("journal.commit.after")
        log.info(
            "truncated %d events at or below LSN %d",
            removed,
            lsn,
            extra={"event": "journal.truncate", "lsn": lsn, "removed": removed},
        )
        return removed

    @classmethod
    def bulk_load(
        cls,
        vault_dir: Path | str,
        records: Iterable[bytes | Record],
        lsn: int,
        *,
        expected: int = 0,
    ) -> Journal:
        """Create a journal whose state is ``records`` as of ``lsn`` (for restore).

        The records become both the projection and the base the log starts
        from; the LSN counter continues above ``lsn``. ``vault_dir`` may exist
        but must hold no journal. With ``expected`` (the number of records the
        caller will pass) at or above :data:`LOADER_PROCESS_MIN`, SQLite's
        inserts run in a second process (see :func:`serve_bulk_load`).

        Raises:
            IntegrityError: a record does not decode or an agent appears twice.
        """
        counts: Counter[str] = Counter()
        wires = _wire_chunks(_record_chunks(records), counts)
        return cls._load(Path(vault_dir), wires, counts, lsn, expected)

    @classmethod
    def bulk_load_columns(
        cls,
        vault_dir: Path | str,
        columns: Iterable[tuple[list[str], list[bytes]]],
        lsn: int,
        states: dict[str, int],
        *,
        expected: int = 0,
    ) -> Journal:
        """:meth:`bulk_load` of records whose agent ids and counts are known.

        A restore knows each record's agent id from the snapshot's tree and
        the counts by lifecycle state from its manifest, so no record is
        scanned here: each is only checked to begin with its own agent id
        (a C-level ``startswith`` per record).

        Raises:
            IntegrityError: a record is not its agent's, or an agent appears
                twice.
        """
        wires = _column_wires(columns)
        return cls._load(Path(vault_dir), wires, dict(states), lsn, expected)

    @classmethod
    def _load(
        cls,
        vault_dir: Path,
        wires: Iterator[_Wire],
        counts: dict[str, int],
        lsn: int,
        expected: int,
    ) -> Journal:
        journal = cls.create(vault_dir)
        try:
            if expected >= _loader_process_min():
                journal._bulk_insert_elsewhere(wires, counts, lsn)
            else:
                journal._bulk_insert(wires, counts, lsn)
        except BaseException as exc:
            journal.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(journal.path) + suffix).unlink(missing_ok=True)
            if isinstance(exc, IntegrityError) and "UNIQUE" in exc.message:
                raise IntegrityError("bulk load: an agent appears twice") from exc
            raise
        return journal

    def _bulk_insert(
        self, wires: Iterator[_Wire], counts: dict[str, int], lsn: int
    ) -> None:
        """Insert ``wires`` here; ``counts`` is read once they are consumed."""

        def run() -> None:
            conn = self._conn
            _begin_load(conn)
            digest = _insert_chunks(conn, wires, lsn)
            _end_load(conn, lsn, digest, counts)

        _guard(self.path, run)
        _fsync_file(self.path)
        faults.point("journal.commit.after")
        self._fix_modes()

    def _bulk_insert_elsewhere(
        self, wires: Iterator[_Wire], counts: dict[str, int], lsn: int
    ) -> None:
        """:meth:`_bulk_insert` with SQLite in a child process.

        One core cannot both produce a million records (decrypting,
        decompressing, scanning) and insert them: under one GIL each waits for
        the other. Here this process learns each chunk's agent ids and
        lifecycle states (from the caller, or by scanning the records), adds
        the tree keys and streams ``[agents, tree keys, lengths, records]``
        over a pipe (:data:`_Wire`); the child (``python -m
        vaultstore.journal_loader``) hashes, inserts and commits, all in the
        one transaction :meth:`_bulk_insert` would use.
        If either side dies, the transaction is not committed and
        :meth:`bulk_load` removes the files. Nothing secret crosses the pipe.
        """
        self._conn.close()  # the child switches journal modes: it must be alone
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vaultstore.journal_loader",
                str(self.path),
                str(lsn),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=helper_env(),
        )
        assert child.stdin is not None and child.stdout is not None
        _widen_pipe(child.stdin.fileno())
        pack = msgpack.Packer().pack
        try:
            try:
                for wire in wires:
                    child.stdin.write(pack(wire))
                faults.point("journal.commit.before")
                child.stdin.write(msgpack.packb(["commit", dict(counts)]))
                child.stdin.close()
            except BrokenPipeError:
                pass  # the child stopped early: its answer says why
            answer = child.stdout.read()
            code = child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        finally:
            for pipe in (child.stdin, child.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass  # a broken pipe has nothing left to flush
            self._conn = _guard(self.path, lambda: _connect(self.path))
        _raise_loader_failure(answer, code, self.path)
        _fsync_file(self.path)
        faults.point("journal.commit.after")
        self._fix_modes()

    # -- checking ------------------------------------------------------------

    def integrity_problems(self, limit: int = 20) -> list[str]:
        """SQLite's page-level check of the whole file (``PRAGMA quick_check``).

        Reads every page, so a damaged page anywhere — in the event log, which
        backups never read, included — is found. Costs a full read of the
        file (about 9 s per million agents here), so it runs in ``check``,
        not on every open.
        """

        def run() -> list[str]:
            rows = self._conn.execute(f"PRAGMA quick_check({int(limit)})").fetchall()
            return [str(r[0]) for r in rows if r and r[0] != "ok"]

        try:
            return _guard(self.path, run)
        except IntegrityError as exc:
            return [exc.message]

    def verify_projection(self, limit: int = 100) -> list[str]:
        """Rebuild the projection from base + log and list every difference.

        Also checks each row's tree_key and rhash, the stored state digest and
        counts. An empty list means the view matches the log. At most
        ``limit`` differences are listed, then a count of the rest.
        """
        return _guard(self.path, lambda: _verify(self, limit))


class _Live(NamedTuple):
    """A live agent as the writer caches it: the record's encoded parts."""

    parts: tuple[bytes, bytes, bytes, bytes]  # msgpack of agentId, wallet, lc, bal
    data: bytes  # the stored record bytes
    rhash: bytes
    state: str | None  # lifecycle state, None without a lifecycle record


_ABSENT = _Live((b"", b"", b"", b""), b"", b"", None)  # unknown or removed agent
_SLOT = {"wallet": 1, "lifecycle": 2, "balances": 3}
_NIL = msgpack.packb(None)
_ARRAY4 = b"\x94"  # msgpack fixarray of 4: a record is the concatenation of parts


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


class Writer:
    """Adds events inside one :meth:`Journal.writer` transaction.

    A record is built from the msgpack of its four parts, so applying an event
    costs one msgpack call (the event's payload, stored as-is) and one BLAKE3.
    """

    def __init__(self, journal: Journal, legacy: bool) -> None:
        self._journal = journal
        self._conn = journal._conn
        self._legacy = legacy
        self.lsn = journal.last_lsn()
        self._digest = int.from_bytes(journal.state_digest(), "big")
        self._base_lsn = journal.base_lsn()
        self._counts = _load_counts(journal._meta_raw("counts"))
        # Agents touched since the last flush; dropped at each flush.
        self._cache: dict[str, _Live] = {}
        self._dirty: dict[str, int] = {}
        self._events: list[tuple[int, int, str, str, bytes]] = []
        self._lookup = self._conn.cursor()
        self._now = int(time.time() * 1000)
        self.applied = 0
        self.skipped = 0

    def _load(self, agent_id: str) -> _Live:
        try:
            row = self._lookup.execute(
                "SELECT record, rhash FROM agents WHERE tree_key = ? AND agent_id = ?",
                (tree_key(agent_id), agent_id),
            ).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, self._journal.path) from exc
        if row is None or row[0] is None:
            entry = _ABSENT
        else:
            data = bytes(row[0])
            record = _decode_stored(data, agent_id)
            parts = (
                _pack(agent_id),
                _pack(record[1]),
                _pack(record[2]),
                _pack(record[3]),
            )
            state = None if record.lifecycle is None else record.lifecycle["state"]
            entry = _Live(parts, data, bytes(row[1]), state)
        self._cache[agent_id] = entry
        return entry

    def add(self, event: Event, *, validated: bool = False) -> int | None:
        """Validate and apply one event; returns its LSN, or None if it was a no-op.

        ``validated``: the caller has already run the model's checks on this
        payload for this agent (the legacy reader does, on every record), so
        only the agent id is checked again.

        Raises:
            InputError: the event is malformed.
            TransitionError: the lifecycle change is not allowed.
        """
        if validated:
            validate_agent_id(event.agent_id)
        else:
            validate_event(event)
        agent_id, kind = event.agent_id, event.kind
        old = self._cache.get(agent_id) or self._load(agent_id)
        if kind == "remove":
            if old is _ABSENT:
                self._skip()
                return None
            new, payload = _ABSENT, _NIL
        else:
            payload = _pack(event.payload)
            slot = _SLOT[kind]
            parts = (
                list(old.parts)
                if old is not _ABSENT
                else [_pack(agent_id)] + [_NIL] * 3
            )
            if parts[slot] == payload:
                self._skip()
                return None
            state = old.state
            if kind == "lifecycle":
                state = event.payload["state"]
                self._check_lifecycle(agent_id, old.state, state)
            parts[slot] = payload
            data = _ARRAY4 + b"".join(parts)
            new = _Live(
                (parts[0], parts[1], parts[2], parts[3]), data, record_hash(data), state
            )
        self._account(old, new)
        self.lsn += 1
        time_ms = event.time_ms if event.time_ms is not None else self._now
        self._events.append((self.lsn, time_ms, agent_id, kind, payload))
        self._cache[agent_id] = new
        self._dirty[agent_id] = self.lsn
        self.applied += 1
        if len(self._cache) >= FLUSH_EVENTS or len(self._events) >= FLUSH_EVENTS:
            self._flush_guarded()
        return self.lsn

    def _skip(self) -> None:
        self.skipped += 1
        if len(self._cache) >= FLUSH_EVENTS:
            self._flush_guarded()

    def _check_lifecycle(
        self, agent_id: str, old_state: str | None, new_state: str
    ) -> None:
        if not self._legacy:
            check_transition(agent_id, old_state, new_state)
        elif not transition_allowed(old_state, new_state):
            note_legacy_jump(agent_id, old_state, new_state)

    def _account(self, old: _Live, new: _Live) -> None:
        counts = self._counts
        if old is not _ABSENT:
            self._digest -= int.from_bytes(old.rhash, "big")
            state = old.state or "none"
            counts[state] = counts.get(state, 0) - 1
        if new is not _ABSENT:
            self._digest += int.from_bytes(new.rhash, "big")
            state = new.state or "none"
            counts[state] = counts.get(state, 0) + 1

    def _flush(self) -> None:
        conn = self._conn
        if self._events:
            conn.executemany(
                "INSERT INTO events(lsn, time_ms, agent_id, kind, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                self._events,
            )
        if self._base_lsn:
            # Copy-on-write base: keep an agent's base-era row before its first
            # change, so base + replay(log) still rebuilds the projection.
            conn.executemany(
                "INSERT OR IGNORE INTO base(agent_id, lsn, record)"
                " SELECT agent_id, lsn, record FROM agents"
                " WHERE tree_key = ? AND agent_id = ? AND lsn <= ?",
                [(tree_key(a), a, self._base_lsn) for a in self._dirty],
            )
        rows: list[tuple[str, int, int, bytes | None, bytes | None]] = []
        for agent_id, lsn in self._dirty.items():
            live = self._cache[agent_id]
            if live is _ABSENT:
                rows.append((agent_id, lsn, tree_key(agent_id), None, None))
            else:
                rows.append((agent_id, lsn, tree_key(agent_id), live.rhash, live.data))
        conn.executemany(_UPSERT_AGENT, rows)
        self._events.clear()
        self._dirty.clear()
        self._cache.clear()
        self._now = int(time.time() * 1000)

    def _flush_guarded(self) -> None:
        _guard(self._journal.path, self._flush)

    def _finish(self) -> None:
        def run() -> None:
            self._flush()
            digest = (self._digest % _MOD).to_bytes(32, "big")
            _write_state_meta(self._conn, self.lsn, digest, self._counts)

        _guard(self._journal.path, run)


# Records per executemany in bulk_load: large enough that per-call costs
# vanish, small enough that one chunk (a few MB) is all that is held.
BULK_ROWS = 4096
# Loads of at least this many records insert in a second process.
LOADER_PROCESS_MIN = 50_000


def _loader_process_min() -> int:
    """:data:`LOADER_PROCESS_MIN`, or ``VAULTSTORE_LOADER_MIN`` (tests, tuning)."""
    value = os.environ.get("VAULTSTORE_LOADER_MIN", "")
    return int(value) if value.isdigit() else LOADER_PROCESS_MIN


def _record_chunks(records: Iterable[bytes | Record]) -> Iterator[list[bytes]]:
    """``records`` as lists of at most :data:`BULK_ROWS` record byte strings."""
    items = iter(records)
    while chunk := list(itertools.islice(items, BULK_ROWS)):
        if set(map(type, chunk)) <= {bytes}:
            yield chunk  # type: ignore[misc]
        else:
            yield [
                encode_record(r) if isinstance(r, Record) else bytes(r) for r in chunk
            ]


def _begin_load(conn: sqlite3.Connection) -> None:
    # Durability: a bulk-loaded journal is new and nobody uses it before the
    # load returns (restore builds it in a staging directory that it fsyncs
    # again and renames into place only afterwards). So the load skips the
    # WAL and every fsync. A rollback journal still makes the one transaction
    # all-or-nothing if the process dies (pages added past the empty schema
    # are never journaled, so it stays tiny); a power loss mid-load can only
    # damage a journal never handed out. Back in WAL with synchronous=FULL,
    # one fsync of the file makes the result durable before it is returned.
    conn.execute("PRAGMA journal_mode=DELETE").fetchone()
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN IMMEDIATE")


# A chunk of a bulk load as it crosses the pipe: the agent ids, their tree
# keys, the length of each record, and the records concatenated into one byte
# string. The tree keys are computed by the sending side, which has the
# spare time: the loader's inserts and record hashes are the longer half.
_Wire = tuple[list[str], list[int], list[int], bytes]

# One statement inserts a whole chunk: the records and their hashes are bound
# once each as one blob, cut with substr(); a JSON array of
# [tree key, agent id, offset, length] per row drives the rows. Binding five
# parameters per row from Python (executemany) cost more than SQLite's insert.
_INSERT_CHUNK = (
    "INSERT INTO agents(tree_key, agent_id, lsn, rhash, record)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?1,"
    " substr(?2, key * 32 + 1, 32),"
    " substr(?3, json_extract(value, '$[2]') + 1, json_extract(value, '$[3]'))"
    " FROM json_each(?4)"
)
_INSERT_ROWS = (
    "INSERT INTO agents(tree_key, agent_id, lsn, rhash, record) VALUES (?, ?, ?, ?, ?)"
)


def _wire_chunks(
    chunks: Iterable[list[bytes]], counts: Counter[str]
) -> Iterator[_Wire]:
    """Chunks scanned and in their :data:`_Wire` form; states go to ``counts``."""
    for datas in chunks:
        lens = list(map(len, datas))
        blob = b"".join(datas)
        agents, states = _agents_and_states(blob, lens)
        counts.update(states)
        yield agents, tree_keys(agents), lens, blob


# Every stored record is the msgpack array [agentId, wallet, lifecycle,
# balances]: its bytes begin with this header, then the agent id.
_RECORD_HEAD = b"\x94"
_PACK_ID = msgpack.Packer().pack  # one id per call; C code under the GIL throughout


def _column_wires(columns: Iterable[tuple[list[str], list[bytes]]]) -> Iterator[_Wire]:
    """Chunks of records with known agent ids, checked and in :data:`_Wire` form.

    Raises:
        IntegrityError: a record does not begin with its own agent id.
    """
    for agents, datas in columns:
        check_record_owners(agents, datas)
        yield agents, tree_keys(agents), list(map(len, datas)), b"".join(datas)


def check_record_owners(agents: list[str], datas: list[bytes]) -> None:
    """Check that each record begins with its agent id (C-level, no decoding).

    Raises:
        IntegrityError: a record is not its agent's, or the lists differ in
            length.
    """
    heads = map(_RECORD_HEAD.__add__, map(_PACK_ID, agents))
    if len(agents) != len(datas) or not all(map(bytes.startswith, datas, heads)):
        raise IntegrityError(f"bulk load: {_stray_record(agents, datas)}")


def _stray_record(agents: list[str], datas: list[bytes]) -> str:
    if len(agents) != len(datas):
        return "a chunk has more agent ids or more records than the other"
    for agent, data in zip(agents, datas, strict=True):
        if not data.startswith(_RECORD_HEAD + _PACK_ID(agent)):
            return f"the record filed under agent {agent!r} is not that agent's"
    return "internal: no stray record found"


def _has_json(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
    except sqlite3.OperationalError:
        return False  # an SQLite built without JSON functions
    return True


def _insert_chunks(conn: sqlite3.Connection, chunks: Iterable[_Wire], lsn: int) -> int:
    """Insert projection rows; returns the sum of their state-digest terms.

    Record hashes are computed here, from the very bytes inserted (each
    record hashed once), with C-level maps only.

    Raises:
        IntegrityError: a chunk's lengths do not tile its records.
    """
    as_json = _has_json(conn)
    total = 0
    for agents, keys, lens, blob in chunks:
        ends = list(itertools.accumulate(lens))
        if not len(agents) == len(keys) == len(lens) or (
            ends[-1] if ends else 0
        ) != len(blob):
            raise IntegrityError("bulk load: a chunk of records is malformed")
        starts = [0, *ends[:-1]]
        view = memoryview(blob)
        terms = b"".join(record_hashes(map(view.__getitem__, map(slice, starts, ends))))
        total += digest_terms_sum(terms)  # big-endian, as digest_add
        if as_json:
            rows = json.dumps(list(zip(keys, agents, starts, lens, strict=True)))
            conn.execute(_INSERT_CHUNK, (lsn, terms, blob, rows))
        else:
            datas = [blob[a:b] for a, b in zip(starts, ends, strict=True)]
            hashes = [terms[i : i + 32] for i in range(0, len(terms), 32)]
            conn.executemany(
                _INSERT_ROWS,
                zip(keys, agents, itertools.repeat(lsn), hashes, datas, strict=False),
            )
    return total


def _end_load(
    conn: sqlite3.Connection, lsn: int, total: int, counts: dict[str, int]
) -> None:
    _write_state_meta(conn, lsn, (total % _MOD).to_bytes(32, "big"), counts)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'base_lsn'", (str(lsn).encode(),)
    )
    faults.point("journal.commit.before")
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute("PRAGMA synchronous=FULL")


# Secrets a caller may keep in the environment: no helper process needs them.
_SECRET_ENV = ("VAULTSTORE_PASSWORD", "WALLET_BACKUP_PASSWORD")


def note_legacy_jump(agent_id: str, old_state: str | None, new_state: str) -> None:
    """Log a legacy lifecycle record that the live state machine would refuse
    (legacy incrementals skip steps: such records are applied as they are)."""
    log.warning(
        "legacy record of agent %r jumps from %s to %s",
        agent_id,
        old_state,
        new_state,
        extra={
            "event": "journal.legacy-jump",
            "agentId": agent_id,
            "from": old_state,
            "to": new_state,
        },
    )


def helper_env() -> dict[str, str]:
    """The environment of a vaultstore helper process (the loader, a full's
    helper): this one without secrets, this copy of vaultstore first on the
    path."""
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _widen_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (Linux): fewer wake-ups per chunk sent."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass  # the default buffer works, a little slower


_LOADER_ERRORS: dict[str, type[VaultstoreError]] = {
    "IntegrityError": IntegrityError,
    "LockedError": LockedError,
    "LocalIOError": LocalIOError,
}


def _raise_loader_failure(answer: bytes, code: int, path: Path) -> None:
    """Raise what the loader child reported, unless it committed."""
    try:
        reply = msgpack.unpackb(answer, raw=False) if answer else None
    except (ValueError, msgpack.UnpackException):
        reply = None
    if code == 0 and reply == ["ok"]:
        return
    if isinstance(reply, list) and len(reply) == 3 and reply[0] == "error":
        cls = _LOADER_ERRORS.get(str(reply[1]), LocalIOError)
        raise cls(str(reply[2]), path=str(path))
    raise LocalIOError(
        f"journal {path}: the loader process failed (exit status {code})",
        path=str(path),
    )


class _Read1:
    """A stream whose ``read`` returns whatever is available (``read1``)."""

    def __init__(self, stream: Any) -> None:
        self.read = stream.read1


def serve_bulk_load(path: Path, lsn: int, source: Any, sink: Any) -> int:
    """The loader child: insert what ``source`` streams, answer on ``sink``.

    ``source`` carries msgpack messages ``[agents, tree keys, lengths, records]`` (see
    :func:`_wire_chunks`) and finally ``["commit", counts]``; the answer is
    ``["ok"]`` once committed or ``["error", class name, message]``. Input
    that ends without ``commit`` (the parent died) rolls the transaction
    back. Returns the exit status.
    """
    # read1: take what the pipe holds now. A plain read(n) would wait for n
    # bytes, so the end of one message would wait for the start of the next.
    unpacker = msgpack.Unpacker(
        _Read1(source), raw=False, max_buffer_size=1 << 31, read_size=1 << 20
    )
    done: dict[str, int] = {}

    def chunks() -> Iterator[_Wire]:
        for message in unpacker:
            if message[0] == "commit":
                done.update(message[1])
                return
            yield message[0], message[1], message[2], message[3]
        raise EOFError

    conn = None
    try:
        conn = _guard(path, lambda: sqlite3.connect(str(path), isolation_level=None))
        active = conn

        def run() -> None:
            active.execute("PRAGMA cache_size=-32768")
            _begin_load(active)
            total = _insert_chunks(active, chunks(), lsn)
            _end_load(active, lsn, total, done)

        _guard(path, run)
    except EOFError:
        return 3  # no commit: the parent is gone, nothing was committed
    except VaultstoreError as exc:
        sink.write(msgpack.packb(["error", type(exc).__name__, exc.message]))
        return 1
    finally:
        if conn is not None:
            conn.close()
    sink.write(msgpack.packb(["ok"]))
    return 0


def record_census(records: list[bytes]) -> tuple[list[str], list[str]]:
    """The agent id and lifecycle state (``none`` without one) of each record.

    What a bulk load learns from records it is not told about; ``check
    --read-data`` uses it to recompute a snapshot's counts.

    Raises:
        IntegrityError: a record does not decode.
    """
    return _agents_and_states(b"".join(records), list(map(len, records)))


def _agents_and_states(blob: bytes, lens: list[int]) -> tuple[list[str], list[str]]:
    """Agent id and lifecycle state (``none`` without one) of each record.

    ``blob`` is the records concatenated, ``lens`` the length of each.

    Raises:
        IntegrityError: a record does not decode or has a malformed lifecycle.
    """
    try:
        return _scan_records(blob, lens)
    except (ValueError, TypeError, msgpack.UnpackException):
        pass
    # Unusual records (no lifecycle, damage): decode them one by one, which
    # also names what is wrong.
    agents: list[str] = []
    states: list[str] = []
    ends = list(itertools.accumulate(lens))
    for start, end in zip([0, *ends[:-1]], ends, strict=True):
        data = blob[start:end]
        record = _decode_stored(data, "?")
        agents.append(record.agent_id)
        states.append(_state_of(record) or "none")
    return agents, states


def _scan_records(blob: bytes, lens: list[int]) -> tuple[list[str], list[str]]:
    """The fast path of :func:`_agents_and_states`: one streaming pass.

    The concatenated records are walked with one msgpack ``Unpacker``
    that skips wallets and balances in C and reads only the agent id and the
    lifecycle's ``state``: no record becomes Python objects. Each record must
    end exactly where its bytes end. Raises ValueError on anything unexpected
    (a missing lifecycle included); the caller then decodes record by record.
    """
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(blob), 1 << 20))
    unpacker.feed(blob)
    array, map_header, unpack, skip, tell = (
        unpacker.read_array_header,
        unpacker.read_map_header,
        unpacker.unpack,
        unpacker.skip,
        unpacker.tell,
    )
    agents: list[str] = []
    states: list[str] = []
    end = 0
    for size in lens:
        end += size
        if array() != 4:
            raise ValueError("not a record")
        agent = unpack()
        skip()  # wallet
        state = None
        for _ in range(map_header()):  # lifecycle; raises when it is nil
            if unpack() == "state":
                state = unpack()
            else:
                skip()
        skip()  # balances
        if type(agent) is not str or type(state) is not str or tell() != end:
            raise ValueError("unexpected record layout")
        agents.append(agent)
        states.append(state)
    return agents, states


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LocalIOError(f"journal {path}: cannot fsync: {exc.strerror}") from exc


def _write_state_meta(
    conn: sqlite3.Connection, lsn: int, digest: bytes, counts: dict[str, int]
) -> None:
    counts_blob = json.dumps({k: v for k, v in sorted(counts.items()) if v}).encode()
    conn.executemany(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
        [("last_lsn", str(lsn).encode()), ("digest", digest), ("counts", counts_blob)],
    )


def _replay_into(
    conn: sqlite3.Connection, table: str, after: int, upto: int | None, path: Path
) -> None:
    """Apply events in (after, upto] to ``table`` (agent_id, lsn, record) in chunks."""
    cursor = after
    while True:
        sql = "SELECT lsn, agent_id, kind, payload FROM events WHERE lsn > ?"
        params: tuple[int, ...] = (cursor,)
        if upto is not None:
            sql += " AND lsn <= ?"
            params = (cursor, upto)
        chunk = conn.execute(
            sql + f" ORDER BY lsn LIMIT {FLUSH_EVENTS}", params
        ).fetchall()
        if not chunk:
            return
        state: dict[str, tuple[Record | None, int]] = {}
        agents = list({row[1] for row in chunk})
        for start in range(0, len(agents), 500):
            part = agents[start : start + 500]
            marks = ",".join("?" * len(part))
            for agent_id, lsn, data in conn.execute(
                f"SELECT agent_id, lsn, record FROM {table}"
                f" WHERE agent_id IN ({marks})",
                part,
            ):
                state[agent_id] = (
                    None if data is None else _decode_stored(data, agent_id),
                    lsn,
                )
        for lsn, agent_id, kind, payload in chunk:
            try:
                value = msgpack.unpackb(payload, raw=False)
            except (ValueError, msgpack.UnpackException) as exc:
                raise IntegrityError(
                    f"journal event at LSN {lsn} does not decode"
                ) from exc
            current = state.get(agent_id, (None, 0))[0]
            state[agent_id] = (apply_event(current, kind, agent_id, value), lsn)
        conn.executemany(
            f"INSERT OR REPLACE INTO {table}(agent_id, lsn, record) VALUES (?, ?, ?)",
            [
                (agent_id, lsn, None if rec is None else encode_record(rec))
                for agent_id, (rec, lsn) in state.items()
            ],
        )
        cursor = chunk[-1][0]


def _verify(journal: Journal, limit: int) -> list[str]:
    conn = journal._conn
    problems: list[str] = []
    conn.execute("BEGIN")
    try:
        conn.execute("DROP TABLE IF EXISTS temp.rebuilt")
        conn.execute(
            "CREATE TEMP TABLE rebuilt"
            " (agent_id TEXT PRIMARY KEY, lsn INTEGER, record BLOB)"
        )
        base_lsn = journal.base_lsn()
        conn.execute(
            "INSERT INTO temp.rebuilt SELECT agent_id, lsn, record FROM main.base"
        )
        conn.execute(
            "INSERT OR IGNORE INTO temp.rebuilt SELECT agent_id, lsn, record"
            " FROM main.agents WHERE lsn <= ?",
            (base_lsn,),
        )
        _replay_into(conn, "temp.rebuilt", base_lsn, None, journal.path)
        problems += _compare(conn, limit)
        problems += _check_rows(journal, limit)
        last = conn.execute("SELECT max(lsn), min(lsn) FROM events").fetchone()
        if last[0] is not None and last[0] > journal.last_lsn():
            problems.append(
                f"event LSN {last[0]} is above the LSN counter {journal.last_lsn()}"
            )
        if last[1] is not None and last[1] <= base_lsn:
            problems.append(f"event LSN {last[1]} is not above the base LSN {base_lsn}")
        conn.execute("DROP TABLE temp.rebuilt")
    finally:
        conn.execute("ROLLBACK")
    if problems:
        log.warning(
            "projection check found %d problems",
            len(problems),
            extra={"event": "journal.verify.failed", "problems": len(problems)},
        )
    return problems


def _compare(conn: sqlite3.Connection, limit: int) -> list[str]:
    # The projection is keyed (tree_key, agent_id): give SQLite the tree key so
    # the anti-join is a primary-key lookup per row, not a scan per row.
    conn.create_function("vs_tree_key", 1, tree_key, deterministic=True)
    problems: list[str] = []
    queries = (
        (
            "SELECT a.agent_id, a.lsn, r.lsn, a.record IS NULL, r.record IS NULL"
            " FROM main.agents a LEFT JOIN temp.rebuilt r ON r.agent_id = a.agent_id"
            " WHERE r.agent_id IS NULL OR a.lsn IS NOT r.lsn"
            " OR a.record IS NOT r.record"
        ),
        (
            "SELECT r.agent_id, NULL, r.lsn, NULL, r.record IS NULL"
            " FROM temp.rebuilt r LEFT JOIN main.agents a"
            " ON a.tree_key = vs_tree_key(r.agent_id) AND a.agent_id = r.agent_id"
            " WHERE a.agent_id IS NULL"
        ),
    )
    total = 0
    for sql in queries:
        for agent_id, lsn, rebuilt_lsn, _gone, _rebuilt_gone in conn.execute(sql):
            total += 1
            if total > limit:
                continue
            if rebuilt_lsn is None:
                problems.append(
                    f"agent {agent_id!r}: in the projection but not in the log"
                )
            elif lsn is None:
                problems.append(
                    f"agent {agent_id!r}: in the log but not in the projection"
                )
            elif lsn != rebuilt_lsn:
                problems.append(
                    f"agent {agent_id!r}: projection LSN {lsn}, log says {rebuilt_lsn}"
                )
            else:
                problems.append(
                    f"agent {agent_id!r}: projection record differs from the log"
                )
    if total > limit:
        problems.append(f"... and {total - limit} more differing agents")
    return problems


def _check_rows(journal: Journal, limit: int) -> list[str]:
    problems: list[str] = []
    digest = 0
    counts: dict[str, int] = {}
    rows = journal._conn.execute("SELECT agent_id, tree_key, rhash, record FROM agents")
    while batch := rows.fetchmany(FETCH_ROWS):
        for agent_id, key, rhash, data in batch:
            if key != tree_key(agent_id) and len(problems) < limit:
                problems.append(f"agent {agent_id!r}: wrong tree_key")
            if data is None:
                if rhash is not None and len(problems) < limit:
                    problems.append(f"agent {agent_id!r}: tombstone with a record hash")
                continue
            if rhash != record_hash(data) and len(problems) < limit:
                problems.append(f"agent {agent_id!r}: record hash does not match")
            digest += int.from_bytes(record_hash(data), "big")
            state = _state_of(_decode_stored(data, agent_id)) or "none"
            counts[state] = counts.get(state, 0) + 1
    if (digest % _MOD).to_bytes(32, "big") != journal.state_digest():
        problems.append("stored state digest differs from the records")
    stored = {k: v for k, v in _load_counts(journal._meta_raw("counts")).items() if v}
    if stored != counts:
        problems.append(f"stored counts {stored} differ from the records {counts}")
    return problems
