"""A fresh full backup built by two processes.

A full that reuses nothing from an earlier full (the first one, or one after
the bucket count changed) reads every agent of the journal and builds every
leaf. That walk is Python work on one core, with the compression and sealing
on a second thread; on two cores it leaves a core half idle. So the upper
half of the buckets goes to a helper process, ``python -m
vaultstore.full_worker JOURNAL``, which opens a read view of the journal of
its own and builds those leaves and their record batches exactly as the
backup would (:func:`build_range`), while the backup builds the lower half.

Protocol (parent → child, on stdin, one msgpack map, then EOF)::

    codec   ObjectCodec.worker_state(): repository id, the object-id,
            record-id and object-seal keys, zstd level (keys cross only
            this pipe, never argv, the environment or a file)
    bits    bucket bits of the tree;  first  first bucket of the child's half
    lsn     the LSN of the parent's read view
    batch   records per batch;  spool  file descriptor of the spool (below)

The child writes every object it builds to the spool, an unnamed temporary
file the parent created (0600, gone when closed; it holds only sealed bytes)::

    kind u8 ‖ object id (32) ‖ length u32 BE ‖ sealed object ‖ ...

and answers on stdout with one msgpack message: ``["ok", leaf ids, agents,
records]`` (the leaf ids of buckets ``first`` … ``2**bits - 1``, 32 bytes
each, all zero for an empty bucket), ``["moved", lsn]`` when its read view is
not at the parent's LSN (a write came in between; the parent then builds that
half itself), or ``["error", class name, message]``. The parent emits the
spooled objects into its own packs, so only the parent writes to the
repository, and the manifest is written last as always: a child that dies, or
a parent that dies, leaves nothing referenced.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, NamedTuple

import msgpack

from vaultstore.errors import IntegrityError, LocalIOError, VaultstoreError
from vaultstore.journal import helper_env, read_view
from vaultstore.repo import tree
from vaultstore.repo.objects import ID_SIZE, ObjectCodec

log = logging.getLogger(__name__)

# A fresh full of fewer agents is built in one process: starting the helper
# (~0.2 s) would cost more than it saves.
SPLIT_MIN = 50_000
SPOOL_HEADER = struct.Struct(">B32sI")


def split_min() -> int:
    """:data:`SPLIT_MIN`, or ``VAULTSTORE_SPLIT_MIN`` (tests, tuning)."""
    value = os.environ.get("VAULTSTORE_SPLIT_MIN", "")
    return int(value) if value.isdigit() else SPLIT_MIN


def build_range(
    rows: Iterator[tree.JournalRow],
    shift: int,
    batches: tree.BatchWriter,
    leaves: tree.LeafWriter,
) -> int:
    """Place every live record of ``rows`` (tree order) in new batches and
    queue one leaf per bucket; returns the number of live agents. The caller
    then calls :func:`tree.finish`."""
    agents = 0
    for bucket, group in itertools.groupby(rows, key=lambda r: r[0] >> shift):
        agents += tree.place_new(bucket, list(group), batches, leaves)
    return agents


class HalfResult(NamedTuple):
    leaf_ids: bytes  # of buckets first … 2**bits - 1
    agents: int
    records: int


class HalfBuilder:
    """The child process building the upper half of a fresh full."""

    def __init__(
        self,
        journal_path: Path,
        codec: ObjectCodec,
        *,
        bits: int,
        first: int,
        lsn: int,
        batch_records: int,
    ) -> None:
        self.bits, self.first = bits, first
        # Beside the journal: the same file system as the vault, private.
        self._spool = tempfile.TemporaryFile(dir=journal_path.parent)
        config = {
            "codec": codec.worker_state(),
            "bits": bits,
            "first": first,
            "lsn": lsn,
            "batch": batch_records,
            "spool": self._spool.fileno(),
        }
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "vaultstore.full_worker", str(journal_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(self._spool.fileno(),),
                env=helper_env(),
            )
        except OSError as exc:
            self._spool.close()
            raise LocalIOError(f"cannot start the full-backup helper: {exc}") from exc
        assert self._child.stdin is not None
        try:
            self._child.stdin.write(msgpack.packb(config, use_bin_type=True))
            self._child.stdin.close()
        except BrokenPipeError:
            pass  # the child is gone already: its answer (or none) says why

    def result(self) -> HalfResult | None:
        """Wait for the child; None if its view of the journal had moved on.

        Raises:
            IntegrityError, LocalIOError: the child failed or died.
        """
        assert self._child.stdout is not None
        answer = self._child.stdout.read()
        code = self._child.wait()
        try:
            reply: Any = msgpack.unpackb(answer, raw=False) if answer else None
        except (ValueError, msgpack.UnpackException):
            reply = None
        if code == 0 and isinstance(reply, list) and reply and reply[0] == "moved":
            return None
        if code == 0 and isinstance(reply, list) and len(reply) == 4:
            leaf_ids, agents, records = reply[1], reply[2], reply[3]
            if len(leaf_ids) == ID_SIZE * ((1 << self.bits) - self.first):
                return HalfResult(bytes(leaf_ids), int(agents), int(records))
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == "error":
            cls = IntegrityError if reply[1] == "IntegrityError" else LocalIOError
            raise cls(f"full-backup helper: {reply[2]}")
        raise LocalIOError(
            f"the full-backup helper process failed (exit status {code}); "
            "nothing was published: rerun the backup"
        )

    def objects(self) -> Iterator[tuple[int, bytes, bytes]]:
        """The spooled objects, ``(kind, object id, sealed)``, in order (read
        through a small buffer: memory does not grow with the spool)."""
        self._spool.seek(0)
        read = self._spool.read
        while header := read(SPOOL_HEADER.size):
            if len(header) != SPOOL_HEADER.size:
                raise IntegrityError("full-backup helper: truncated spool")
            kind, oid, length = SPOOL_HEADER.unpack(header)
            sealed = read(length)
            if len(sealed) != length:
                raise IntegrityError("full-backup helper: truncated spool")
            yield kind, oid, sealed

    def close(self) -> None:
        """Stop the child if it still runs; drop the spool."""
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait()
        for pipe in (self._child.stdin, self._child.stdout):
            if pipe is not None:
                pipe.close()
        self._spool.close()


def serve_half(journal_path: Path, source: IO[bytes], sink: IO[bytes]) -> int:
    """The child: build the buckets the parent names; answer on ``sink``.

    Returns the exit status (0 also for "moved": that is an answer).
    """
    try:
        config = msgpack.unpackb(source.read(), raw=False)
        codec = ObjectCodec.from_worker_state(config["codec"])
        bits, first = int(config["bits"]), int(config["first"])
        spool = os.fdopen(int(config["spool"]), "wb", buffering=1 << 20)
    except (ValueError, KeyError, TypeError, OSError, msgpack.UnpackException):
        sink.write(msgpack.packb(["error", "LocalIOError", "bad request"]))
        return 1
    try:
        with read_view(journal_path) as view:
            if view.last_lsn() != int(config["lsn"]):
                sink.write(msgpack.packb(["moved", view.last_lsn()]))
                return 0
            shift = 63 - bits
            result = _build(
                view.iter_by_tree_key(first << shift),
                codec,
                bits,
                first,
                int(config["batch"]),
                spool,
            )
        spool.flush()
    except VaultstoreError as exc:
        sink.write(msgpack.packb(["error", type(exc).__name__, exc.message]))
        return 1
    except OSError as exc:
        sink.write(msgpack.packb(["error", "LocalIOError", f"spool: {exc.strerror}"]))
        return 1
    sink.write(msgpack.packb(["ok", *result], use_bin_type=True))
    return 0


def _build(
    rows: Iterator[tree.JournalRow],
    codec: ObjectCodec,
    bits: int,
    first: int,
    batch_records: int,
    spool: IO[bytes],
) -> tuple[bytes, int, int]:
    def emit(kind: int, oid: bytes, sealed: bytes) -> None:
        spool.write(SPOOL_HEADER.pack(kind, oid, len(sealed)))
        spool.write(sealed)

    leaf_ids = bytearray(ID_SIZE << bits)
    with ThreadPoolExecutor(1, "vaultstore-seal") as sealer:
        batches = tree.BatchWriter(
            codec, emit, max_records=batch_records, sealer=sealer
        )
        leaves = tree.LeafWriter(codec, batches, emit, leaf_ids)
        agents = build_range(rows, 63 - bits, batches, leaves)
        tree.finish(batches, leaves)
    return bytes(leaf_ids[first * ID_SIZE :]), agents, batches.records_written
