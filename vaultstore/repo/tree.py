"""Snapshot trees, change sets and the record-batch writer.

A full snapshot's state is a two-level tree keyed by ``model.tree_key``:

    root (kind ROOT)   msgpack [bits, agents, table, base, changed, changed ids, depth]
                       whole root: ``table`` is 2**bits × 32 bytes, the leaf id of
                       bucket b at offset 32·b (32 zero bytes = empty bucket),
                       base nil. Delta root (a full after a small change): table
                       empty, ``base`` the parent full's root id, ``changed`` the
                       changed bucket numbers (u32 BE each), ``changed ids`` their
                       leaf ids; ``depth`` counts deltas down to a whole root
                       (at most 8), so a 1 % change does not rewrite the table
    leaf (kind LEAF)   msgpack [[batch id, ...], [[agentId, batch ref, slot], ...]]
                       entries sorted by (tree_key, agentId); ``batch ref`` indexes
                       the leaf's own batch table, ``slot`` the record in the batch

Bucket of an agent = top ``bits`` bits of its 63-bit tree key; ``bits`` is
chosen so leaves hold about 16 agents (11–22), and kept from the parent full while
it stays within a factor of four of that, so leaves can be shared by id.

A change set (kind CHANGES) has the leaf layout; a tombstone (agent removed)
has ``batch ref`` and ``slot`` nil. Incrementals may split their change set
into several objects of at most :data:`CHANGES_PER_OBJECT` entries.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import msgpack

from vaultstore.errors import IntegrityError
from vaultstore.repo.objects import (
    BATCH,
    LEAF,
    ObjectCodec,
    encode_batch,
    unpack_plain,
)
from vaultstore.repo.objects import (
    ID_SIZE as ID_SIZE,
)

log = logging.getLogger(__name__)

TARGET_LEAF = 16
MAX_BITS = 40
CHANGES_PER_OBJECT = 65536
EMPTY = bytes(ID_SIZE)

Location = tuple[bytes, int]  # batch object id, slot
Entry = tuple[str, bytes, int] | tuple[str, None, None]


def ideal_bits(agents: int) -> int:
    """Bucket bits so that leaves hold about TARGET_LEAF agents (log2, rounded)."""
    bits = 0
    while bits < MAX_BITS and agents * agents >= (TARGET_LEAF << bits) ** 2 * 2:
        bits += 1
    return bits


def choose_bits(agents: int, parent_bits: int | None) -> int:
    """Keep the parent's bits while within two bits of ideal (so leaves are shared)."""
    ideal = ideal_bits(agents)
    if parent_bits is not None and abs(parent_bits - ideal) <= 2:
        return parent_bits
    return ideal


def encode_entries(entries: list[Entry]) -> bytes:
    """Leaf / change-set plaintext from (agentId, batch id|None, slot|None)."""
    # The table lists batch ids in order of first use (so equal entries always
    # encode to the same bytes, and the leaf to the same id).
    table = list(dict.fromkeys(batch for _, batch, _ in entries if batch is not None))
    ref = {batch: n for n, batch in enumerate(table)}
    rows = [
        (agent_id, None, None) if batch is None else (agent_id, ref[batch], slot)
        for agent_id, batch, slot in entries
    ]
    return bytes(msgpack.packb([table, rows], use_bin_type=True))


def decode_entries(plaintext: bytes, what: str) -> list[Entry]:
    """Inverse of :func:`encode_entries`. Raises IntegrityError."""
    value = unpack_plain(plaintext, what)
    if not isinstance(value, list) or len(value) != 2:
        raise IntegrityError(f"{what} is malformed")
    table, rows = value
    if not isinstance(table, list) or not isinstance(rows, list):
        raise IntegrityError(f"{what} is malformed")
    out: list[Entry] = []
    try:
        for agent_id, ref, slot in rows:
            if not isinstance(agent_id, str):
                raise TypeError
            if ref is None:
                out.append((agent_id, None, None))
            else:
                batch = table[ref]
                if not isinstance(batch, bytes) or len(batch) != ID_SIZE:
                    raise TypeError
                if not isinstance(slot, int) or isinstance(slot, bool) or slot < 0:
                    raise TypeError
                out.append((agent_id, batch, slot))
    except (TypeError, ValueError, IndexError) as exc:
        raise IntegrityError(f"{what} has a malformed entry") from exc
    return out


@dataclass
class Root:
    """A decoded root: either the whole leaf table, or a delta over a base root."""

    bits: int
    agents: int
    table: bytes  # whole table (2**bits × 32), or b"" for a delta
    base: bytes | None = None  # base root id of a delta
    changed: bytes = b""  # bucket numbers, u32 BE each
    changed_ids: bytes = b""  # their leaf ids, 32 bytes each
    depth: int = 0  # deltas between this root and a whole one


def encode_root(root: Root) -> bytes:
    return bytes(
        msgpack.packb(
            [
                root.bits,
                root.agents,
                root.table,
                root.base,
                root.changed,
                root.changed_ids,
                root.depth,
            ],
            use_bin_type=True,
        )
    )


def decode_root(plaintext: bytes, what: str) -> Root:
    """Raises IntegrityError on a malformed root."""
    value = unpack_plain(plaintext, what)
    try:
        if not isinstance(value, list) or len(value) != 7:
            raise TypeError
        root = Root(*value)
        if not 0 <= root.bits <= MAX_BITS or not isinstance(root.table, bytes):
            raise TypeError
        if root.base is None:
            ok = len(root.table) == ID_SIZE << root.bits
        else:
            ok = (
                isinstance(root.base, bytes)
                and len(root.base) == ID_SIZE
                and len(root.changed) * 8 == len(root.changed_ids)
                and root.depth > 0
            )
        if not ok:
            raise TypeError
    except TypeError as exc:
        raise IntegrityError(f"{what} is malformed") from exc
    return root


def delta_root(
    bits: int,
    agents: int,
    table: bytearray,
    parent: Root | None,
    parent_id: bytes | None,
    parent_table: bytes,
    max_depth: int = 8,
) -> Root:
    """A delta over the parent root when few buckets changed, else a whole root."""
    whole = Root(bits, agents, bytes(table))
    if parent is None or parent_id is None or parent.bits != bits:
        return whole
    if parent.depth + 1 > max_depth:
        return whole
    changed = bytearray()
    ids = bytearray()
    limit = (1 << bits) // 4
    for b in range(1 << bits):
        at = b * ID_SIZE
        if table[at : at + ID_SIZE] != parent_table[at : at + ID_SIZE]:
            changed += b.to_bytes(4, "big")
            ids += table[at : at + ID_SIZE]
            if len(changed) // 4 > limit:
                return whole
    return Root(
        bits, agents, b"", parent_id, bytes(changed), bytes(ids), parent.depth + 1
    )


def apply_delta(root: Root, base_table: bytes) -> bytes:
    """The whole leaf table of a delta root over its base's table."""
    table = bytearray(base_table)
    if len(table) != ID_SIZE << root.bits:
        raise IntegrityError("a delta root and its base disagree on the bucket count")
    for i in range(len(root.changed) // 4):
        b = int.from_bytes(root.changed[4 * i : 4 * i + 4], "big")
        if b >= 1 << root.bits:
            raise IntegrityError("a delta root names a bucket out of range")
        table[b * ID_SIZE : (b + 1) * ID_SIZE] = root.changed_ids[
            i * ID_SIZE : (i + 1) * ID_SIZE
        ]
    return bytes(table)


def leaf_at(leaf_ids: bytes, bucket: int) -> bytes:
    return leaf_ids[bucket * ID_SIZE : (bucket + 1) * ID_SIZE]


Emit = Callable[[int, bytes, bytes], None]  # kind, oid, sealed
# Batches (or groups of leaves) handed to the sealing thread and not yet
# emitted: a memory bound.
SEALS_IN_FLIGHT = 4
# Leaves sealed per task on that thread.
LEAVES_PER_SEAL = 64


@dataclass
class BatchWriter:
    """Collects records into batches; a record's batch id is known once it is sealed.

    ``add`` returns a *pending* location ``(generation, slot)``. Without a
    :attr:`sealer`, ``ids[generation]`` is the batch's object id as soon as
    :meth:`close_batch` returns; with one, once the sealed batch is emitted
    (:meth:`drain`, :meth:`flush`; ``on_close`` runs after each close, when
    new ids may have arrived).
    """

    codec: ObjectCodec
    emit: Emit
    max_records: int = 256
    max_bytes: int = 256 * 1024
    generation: int = 0
    ids: dict[int, bytes] = field(default_factory=dict)
    records_written: int = 0
    _records: list[bytes] = field(default_factory=list)
    _size: int = 0
    on_close: Callable[[], None] | None = None
    sealer: Executor | None = None
    _in_flight: deque[tuple[int, Future[list[tuple[bytes, bytes]]]]] = field(
        default_factory=deque
    )

    def drain(self, wait: bool = True) -> None:
        """Emit the sealed batches that are done, oldest first, learning their
        ids; with ``wait``, first wait until at most :data:`SEALS_IN_FLIGHT`
        remain in flight."""
        queue = self._in_flight
        while queue and (wait or queue[0][1].done()):
            self._emit_sealed(*queue.popleft())
            wait = wait and len(queue) > SEALS_IN_FLIGHT

    def flush(self) -> None:
        """Emit every batch still being sealed: afterwards every closed batch
        has its id in :attr:`ids`."""
        while self._in_flight:
            self._emit_sealed(*self._in_flight.popleft())

    def _emit_sealed(
        self, generation: int, future: Future[list[tuple[bytes, bytes]]]
    ) -> None:
        [(oid, sealed)] = future.result()
        self.ids[generation] = oid
        self.emit(BATCH, oid, sealed)

    def add_many(self, records: list[bytes]) -> list[int]:
        """:meth:`add` for each record, in order; returns packed pending slots
        (:func:`pending_slot`). Batches close exactly where :meth:`add` would
        close them, but a whole run of records is placed per step."""
        out: list[int] = []
        start, total = 0, len(records)
        while start < total:
            room = self.max_records - len(self._records)
            take = records[start : start + room]
            sizes = list(itertools.accumulate(map(len, take), initial=self._size))
            if sizes[-1] >= self.max_bytes:
                # Close right after the record that reaches the byte limit.
                take = take[: bisect.bisect_left(sizes, self.max_bytes, 1)]
            slot = len(self._records)
            if slot + len(take) > 1 << 20:
                raise ValueError("batch slot out of range")
            self._records += take
            self._size = sizes[len(take)]
            first = (self.generation << 20) | slot
            out += range(first, first + len(take))
            start += len(take)
            if len(self._records) >= self.max_records or self._size >= self.max_bytes:
                self.close_batch()
        return out

    def add(self, record: bytes) -> tuple[int, int]:
        """Queue a record; returns its pending (generation, slot)."""
        slot = len(self._records)
        self._records.append(record)
        self._size += len(record)
        pending = (self.generation, slot)
        if len(self._records) >= self.max_records or self._size >= self.max_bytes:
            self.close_batch()
        return pending

    def close_batch(self) -> None:
        """Seal the open batch (no-op when empty).

        With a :attr:`sealer` pool, the batch's id, compression and
        encryption are all computed on the pool (hashing 170 KB here would
        hand the GIL to the sealing thread and then wait to get it back);
        sealed batches are emitted in order as they finish (:meth:`drain`),
        at most :data:`SEALS_IN_FLIGHT` waiting at a time.
        """
        if not self._records:
            return
        plaintext = encode_batch(self._records)
        if self.sealer is None:
            oid, sealed = self.codec.seal(BATCH, plaintext)
            self.ids[self.generation] = oid
            self.emit(BATCH, oid, sealed)
        else:
            future = self.sealer.submit(self.codec.seal_many, BATCH, [plaintext])
            self._in_flight.append((self.generation, future))
        self.records_written += len(self._records)
        self.generation += 1
        self._records = []
        self._size = 0
        if self.sealer is not None:
            self.drain(wait=len(self._in_flight) > SEALS_IN_FLIGHT)
        if self.on_close is not None:
            self.on_close()


@dataclass
class PendingLeaf:
    bucket: int
    # (agentId, batch id, slot) or (agentId, None, generation) for pending records
    entries: list[tuple[str, bytes | None, int]]


class LeafWriter:
    """Turns bucket entries into leaf objects once their batches are sealed.

    Leaves whose records are all stored already are written at once; the
    others wait for the open batch to close (at most one batch's worth of
    buckets). The root table is indexed by bucket, so write order is free.
    """

    def __init__(
        self, codec: ObjectCodec, batches: BatchWriter, emit: Emit, leaf_ids: bytearray
    ) -> None:
        self.codec = codec
        self.batches = batches
        self.emit = emit
        self.leaf_ids = leaf_ids
        # Leaves waiting for a batch, each with the newest generation it needs.
        self._waiting: list[tuple[int, PendingLeaf]] = []
        # With the batches' sealing thread: encoded leaves not yet handed to
        # it, and groups of leaves being sealed there (buckets, result).
        self._queued: list[tuple[int, bytes]] = []
        self._sealing: deque[tuple[list[int], Future[list[tuple[bytes, bytes]]]]] = (
            deque()
        )
        self.leaves_written = 0
        batches.on_close = self.resolve

    @property
    def pending(self) -> list[PendingLeaf]:
        """Leaves still waiting for a batch to close."""
        return [leaf for _, leaf in self._waiting]

    def add(self, leaf: PendingLeaf, has_pending: bool | None = None) -> None:
        """Write ``leaf`` now, or once the batch holding its new records closes."""
        if has_pending is None:
            has_pending = any(batch is None for _, batch, _ in leaf.entries)
        if has_pending:
            newest = max(s for _, b, s in leaf.entries if b is None) >> 20
            self._waiting.append((newest, leaf))
        else:
            self._write(leaf)

    def clear(self, bucket: int) -> None:
        """Mark ``bucket`` empty (its last agent was removed)."""
        self.flush()  # a leaf of this bucket still being sealed must not win
        self.leaf_ids[bucket * ID_SIZE : (bucket + 1) * ID_SIZE] = EMPTY

    def resolve(self) -> None:
        """Write every pending leaf whose records are all in sealed batches."""
        ids = self.batches.ids
        keep: list[tuple[int, PendingLeaf]] = []
        for waiting in self._waiting:
            if waiting[0] in ids:
                self._write(waiting[1])
            else:
                keep.append(waiting)
        self._waiting = keep

    def _write(self, leaf: PendingLeaf) -> None:
        ids = self.batches.ids
        entries: list[Entry] = [
            (agent_id, ids[slot >> 20], slot & _SLOT_MASK)
            if batch is None
            else (agent_id, batch, slot)
            for agent_id, batch, slot in leaf.entries
        ]
        plaintext = encode_entries(entries)
        self.leaves_written += 1
        if self.batches.sealer is None:
            self._store(leaf.bucket, *self.codec.seal(LEAF, plaintext))
            return
        # Leaves are small: sealed on the batches' thread in groups, so the
        # hand-off costs little and zstd's GIL release/re-acquire happens there.
        self._queued.append((leaf.bucket, plaintext))
        if len(self._queued) >= LEAVES_PER_SEAL:
            self._submit()

    def flush(self) -> None:
        """Store every leaf still queued or being sealed (before reading ids)."""
        self._submit()
        self._drain(wait=True)

    def _submit(self) -> None:
        if not self._queued or self.batches.sealer is None:
            return
        buckets = [bucket for bucket, _ in self._queued]
        plaintexts = [plaintext for _, plaintext in self._queued]
        self._queued = []
        future = self.batches.sealer.submit(self.codec.seal_many, LEAF, plaintexts)
        self._sealing.append((buckets, future))
        self._drain(wait=False)

    def _drain(self, wait: bool) -> None:
        sealing = self._sealing
        while sealing and (
            wait or sealing[0][1].done() or len(sealing) > SEALS_IN_FLIGHT
        ):
            buckets, future = sealing.popleft()
            for bucket, (oid, sealed) in zip(buckets, future.result(), strict=True):
                self._store(bucket, oid, sealed)

    def _store(self, bucket: int, oid: bytes, sealed: bytes) -> None:
        self.emit(LEAF, oid, sealed)
        self.leaf_ids[bucket * ID_SIZE : (bucket + 1) * ID_SIZE] = oid


_SLOT_MASK = (1 << 20) - 1


def pending_slot(generation: int, slot: int) -> int:
    """Pack a pending (generation, slot) into one int for a PendingLeaf entry."""
    if not 0 <= slot < 1 << 20:
        raise ValueError("batch slot out of range")
    return (generation << 20) | slot


JournalRow = tuple[int, str, int, bytes | None]  # tree key, agentId, lsn, record


def place_new(
    bucket: int, rows: list[JournalRow], batches: BatchWriter, leaves: LeafWriter
) -> int:
    """Store every live record of one bucket's journal rows anew and queue
    the bucket's leaf (nothing stored earlier is reused). Returns the number
    of live agents."""
    records = [r[3] for r in rows if r[3] is not None]
    if not records:
        return 0
    slots = batches.add_many(records)
    ids = [r[1] for r in rows if r[3] is not None]
    entries: list[tuple[str, bytes | None, int]] = list(
        zip(ids, itertools.repeat(None), slots)
    )
    leaves.add(PendingLeaf(bucket, entries), True)
    return len(records)


def finish(batches: BatchWriter, leaves: LeafWriter) -> None:
    """Close the last batch, then write every leaf still waiting for one.

    Raises:
        IntegrityError: a leaf is still waiting (a bug, never data).
    """
    batches.close_batch()
    batches.flush()
    leaves.resolve()
    leaves.flush()
    if leaves.pending:
        raise IntegrityError("internal: tree leaves left unresolved")
