"""Join the sections of legacy files into one record per agent, in tree order.

A legacy file lists every wallet, then every lifecycle record, then every
balance list (``compat/FORMAT.md``); the journal wants one record per agent
(``model.encode_record``: ``[agentId, wallet|nil, lifecycle|nil,
balances|nil]``). :class:`RecordSpool` receives the sections' items as the
reader yields them (already validated) and hands back the joined records in
the projection's clustering order, ``(tree_key, agentId)``, so that
``Journal.bulk_load`` appends to its B-tree instead of inserting at random.

Spool files (in a private directory the caller owns, removed by
:meth:`RecordSpool.discard`; never durable, never read by anything else)::

    run-<slot>-<n>.bin    a msgpack stream of entries [key, slot, payload]
      key      bin: tree_key (8 bytes, big-endian) | agentId (UTF-8) | 0x00 |
               sequence number (8 bytes, big-endian)
      slot     1 wallet, 2 lifecycle, 3 balances (the record's array index)
      payload  bin: msgpack of the item as the journal stores it

Each run is sorted by ``key``. Bytes compare as ``(tree_key, agentId)``
compare (UTF-8 keeps code point order; an agent id holds no NUL), then by the
sequence number, which grows with every item of every file in import order.
Items are buffered per section (at most ``RUN_ENTRIES`` or ``RUN_BYTES``) and
sorted; a sorted buffer whose first key follows the run's last key extends the
run, so a section already in tree order (``export-json`` writes it so) makes
one run, and a section in any other order one run per buffer. The join is a
k-way merge of all runs: the entries of one agent arrive together, in import
order, and the last item per slot wins — the state a writer that applied
every item in order would reach (a legacy import only upserts). A lifecycle
record that replaces an earlier one with a jump the live state machine would
refuse is logged as the writer logs it (``journal.legacy-jump``).

Memory: one buffer (≤ ``RUN_BYTES`` of payloads) while spooling, one entry
and one read buffer per run while merging.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgpack

from vaultstore.errors import LocalIOError
from vaultstore.journal import note_legacy_jump
from vaultstore.model import transition_allowed, tree_key

__all__ = ["RecordSpool", "SLOTS"]

SLOTS = {"wallet": 1, "lifecycle": 2, "balances": 3}
RUN_ENTRIES = 50_000
RUN_BYTES = 16 << 20
READ_SIZE = 256 << 10
MAX_ENTRY = 1 << 31  # an item's strings are each below the reader's MAX_STRING
_NIL = msgpack.packb(None)
_ARRAY4 = b"\x94"  # msgpack fixarray of 4: a record is the concatenation of parts
_SEQ = 8  # bytes of the sequence number at the end of a key

Entry = tuple[bytes, int, bytes]


class _Run:
    """One sorted run file being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        self.file: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 20)
        self.last = b""

    def write(self, entries: list[Entry], pack: Any) -> None:
        self.file.write(b"".join(map(pack, entries)))
        self.last = entries[-1][0]

    def close(self) -> None:
        self.file.close()  # idempotent


class RecordSpool:
    """Items of legacy files in, one encoded record per agent out (see module)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._runs: list[_Run] = []
        self._open: dict[int, _Run] = {}
        self._buffer: list[Entry] = []
        self._buffered = 0
        self._slot = 0
        self._seq = 0
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self.agents = 0

    def add(self, slot: int, agent_id: str, payload: Any) -> None:
        """Spool one validated item: a wallet, lifecycle record or balance list."""
        if slot != self._slot:
            self.end_section()
            self._slot = slot
        self._seq += 1
        key = b"".join(
            (
                tree_key(agent_id).to_bytes(8, "big"),
                agent_id.encode("utf-8"),
                b"\x00",
                self._seq.to_bytes(_SEQ, "big"),
            )
        )
        data = self._pack(payload)
        self._buffer.append((key, slot, data))
        self._buffered += len(data)
        if len(self._buffer) >= RUN_ENTRIES or self._buffered >= RUN_BYTES:
            self._flush()

    def end_section(self) -> None:
        """Write what is buffered; the next item starts a new run (a new file)."""
        self._flush()
        for run in self._open.values():
            run.close()
        self._open.clear()

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._buffer.sort()  # linear when the section is already in tree order
        run = self._open.get(self._slot)
        if run is None or self._buffer[0][0] <= run.last:
            if run is not None:
                run.close()
            run = self._new_run()
            self._open[self._slot] = run
        try:
            run.write(self._buffer, self._pack)
        except OSError as exc:
            raise LocalIOError(f"cannot write the import spool: {exc}") from exc
        self._buffer = []
        self._buffered = 0

    def _new_run(self) -> _Run:
        path = self.directory / f"run-{self._slot}-{len(self._runs)}.bin"
        try:
            run = _Run(path)
        except OSError as exc:
            raise LocalIOError(f"cannot write the import spool: {exc}") from exc
        self._runs.append(run)
        return run

    def records(self) -> Iterator[bytes]:
        """Every agent's joined record (``encode_record`` bytes), in tree order."""
        self.end_section()
        handles = [open(run.path, "rb") for run in self._runs]
        try:
            streams = [
                msgpack.Unpacker(
                    h,
                    use_list=False,
                    raw=False,
                    read_size=READ_SIZE,
                    max_buffer_size=MAX_ENTRY,
                )
                for h in handles
            ]
            merged: Iterator[Entry] = (
                streams[0] if len(streams) == 1 else heapq.merge(*streams)
            )
            yield from self._join(merged)
        finally:
            for handle in handles:
                handle.close()

    def _join(self, entries: Iterator[Entry]) -> Iterator[bytes]:
        agent = b""
        parts = [_NIL, _NIL, _NIL, _NIL]
        for key, slot, data in entries:
            if key[:-_SEQ] != agent:
                if agent:
                    yield _record(agent, parts)
                agent = key[:-_SEQ]
                parts = [_NIL, _NIL, _NIL, _NIL]
            elif slot == 2 and parts[2] is not _NIL:
                _note_jump(agent, parts[2], data)
            parts[slot] = data
        if agent:
            yield _record(agent, parts)

    def discard(self) -> None:
        """Close and remove every run file."""
        for run in self._runs:
            run.close()
            run.path.unlink(missing_ok=True)
        self._runs.clear()
        self._open.clear()


def _agent_of(agent: bytes) -> str:
    return agent[8:-1].decode("utf-8")


def _record(agent: bytes, parts: list[bytes]) -> bytes:
    parts[0] = msgpack.packb(_agent_of(agent), use_bin_type=True)
    return _ARRAY4 + b"".join(parts)


def _note_jump(agent: bytes, old: bytes, new: bytes) -> None:
    """Log a replaced lifecycle record as the journal's legacy writer would."""
    old_state = msgpack.unpackb(old, raw=False)["state"]
    new_state = msgpack.unpackb(new, raw=False)["state"]
    if not transition_allowed(old_state, new_state):
        note_legacy_jump(_agent_of(agent), old_state, new_state)
