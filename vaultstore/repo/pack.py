"""Packs: write-once files of sealed objects with their own sealed table of contents.

Store name: ``data/<first 2 hex of pack id>/<pack id: 32 hex>``; the pack id is
16 random bytes, so packs from concurrent hosts never collide.

Byte layout (version 1)::

    header   b"VSPACK" ‖ version u16 BE                      8 bytes
    objects  sealed object ‖ sealed object ‖ ...             (see objects.py)
    toc      sealed(zstd(msgpack [[oid, kind, offset, length], ...]))
             associated data = repository id ‖ b"toc" ‖ pack id
    trailer  toc offset u64 BE ‖ toc length u32 BE ‖ b"VSPKEND1"   20 bytes

The table of contents lists every object in order; objects tile the region
between the header and the table exactly, so inserted or duplicated bytes are
detected. Because the table is bound to the pack id, a pack copied under
another name fails authentication. The index (``index.py``) is rebuilt from
the trailers and tables alone, read by range.

Streaming readers (a restore) use :class:`PackReader`: a pack is fetched whole
(one GET) the first time one of its objects is needed and shared by the reader
threads while it stays in a small LRU.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import NamedTuple

import msgpack

from vaultstore import faults
from vaultstore.errors import IntegrityError, UnsupportedVersionError
from vaultstore.repo.objects import ID_SIZE, ObjectCodec, unpack_plain
from vaultstore.store.base import Store

log = logging.getLogger(__name__)

MAGIC = b"VSPACK"
VERSION = 1
HEADER = MAGIC + struct.pack(">H", VERSION)
TRAILER_MAGIC = b"VSPKEND1"
TRAILER = struct.Struct(">QI8s")
DEFAULT_PACK_SIZE = 4 * 1024 * 1024
PACK_ID_SIZE = 16
# Full packs handed to a PackWriter's writer thread and not yet stored.
PACKS_IN_FLIGHT = 2


@dataclass(frozen=True)
class TocEntry:
    """One object's place inside a pack."""

    oid: bytes
    kind: int
    offset: int
    length: int


def pack_name(pack_id: bytes) -> str:
    """Store name of a pack."""
    hexid = pack_id.hex()
    return f"data/{hexid[:2]}/{hexid}"


def pack_id_from_name(name: str) -> bytes | None:
    """Pack id of a store name, or None if the name is not a pack."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "data" or len(parts[2]) != 2 * PACK_ID_SIZE:
        return None
    try:
        pack_id = bytes.fromhex(parts[2])
    except ValueError:
        return None
    return pack_id if parts[1] == parts[2][:2] else None


def toc_associated(codec: ObjectCodec, pack_id: bytes) -> bytes:
    return codec.repo_id + b"toc" + pack_id


class PackWriter:
    """Accumulates sealed objects and writes a pack when it reaches its size.

    With a ``writer`` executor (one thread), the store write of a full pack
    (temp file, fsync, rename, or an S3 PUT) runs there while the caller goes
    on filling the next one: the write is I/O, so it overlaps the caller's
    Python work instead of stalling it. At most :data:`PACKS_IN_FLIGHT` packs
    wait at a time (a memory bound). ``on_written`` still runs on the calling
    thread, in pack order, once a pack is stored; :meth:`wait` stores every
    pack still being written and raises the first failure. A pack whose write
    failed, or one written after it, is unreferenced garbage (no manifest
    names it yet) that prune removes.
    """

    def __init__(
        self,
        store: Store,
        codec: ObjectCodec,
        pack_size: int = DEFAULT_PACK_SIZE,
        on_written: Callable[[bytes, list[TocEntry], int], None] | None = None,
        writer: Executor | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.pack_size = pack_size
        self.on_written = on_written
        self.writer = writer
        self._parts: list[bytes] = [HEADER]
        self._entries: list[TocEntry] = []
        self._offset = len(HEADER)
        self._in_flight: deque[_PackWrite] = deque()
        self.bytes_written = 0
        self.packs_written = 0

    def add(self, kind: int, oid: bytes, sealed: bytes) -> None:
        """Queue a sealed object; writes the pack once it is full."""
        self._parts.append(sealed)
        self._entries.append(TocEntry(oid, kind, self._offset, len(sealed)))
        self._offset += len(sealed)
        if self._offset >= self.pack_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending objects as one pack (no-op when empty).

        With a ``writer``, the write is handed to it and only packs already
        stored are reported; call :meth:`wait` before referencing any of them.

        Raises:
            StoreError, LocalIOError: a write failed; nothing is referenced yet.
        """
        if not self._entries:
            return
        pack_id = os.urandom(PACK_ID_SIZE)
        toc_plain = msgpack.packb(
            [[e.oid, e.kind, e.offset, e.length] for e in self._entries],
            use_bin_type=True,
        )
        toc = self.codec.seal_raw(toc_plain, toc_associated(self.codec, pack_id))
        trailer = TRAILER.pack(self._offset, len(toc), TRAILER_MAGIC)
        self._parts += (toc, trailer)
        data = b"".join(self._parts)
        entries = self._entries
        self._parts = [HEADER]
        self._entries = []
        self._offset = len(HEADER)
        if self.writer is None:
            self._put(pack_id, data, len(entries))
            self._written(pack_id, entries, len(data))
            return
        future = self.writer.submit(self._put, pack_id, data, len(entries))
        self._in_flight.append(_PackWrite(pack_id, entries, len(data), future))
        self._collect(PACKS_IN_FLIGHT)

    def wait(self) -> None:
        """Block until every pack handed to the writer is stored.

        Raises:
            StoreError, LocalIOError: a write failed.
        """
        self._collect(0)

    def _collect(self, limit: int) -> None:
        """Report stored packs in order, first waiting until at most ``limit``
        are still being written."""
        queue = self._in_flight
        while queue and (len(queue) > limit or queue[0].future.done()):
            done = queue.popleft()
            done.future.result()
            self._written(done.pack_id, done.entries, done.size)

    def _put(self, pack_id: bytes, data: bytes, objects: int) -> None:
        faults.point("repo.pack.before-write")
        self.store.put(pack_name(pack_id), data)
        faults.point("repo.pack.after-write")
        log.debug(
            "wrote pack %s (%d objects, %d bytes)",
            pack_id.hex(),
            objects,
            len(data),
            extra={"event": "repo.pack.written"},
        )

    def _written(self, pack_id: bytes, entries: list[TocEntry], size: int) -> None:
        self.bytes_written += size
        self.packs_written += 1
        if self.on_written is not None:
            self.on_written(pack_id, entries, size)


class _PackWrite(NamedTuple):
    pack_id: bytes
    entries: list[TocEntry]
    size: int
    future: Future[None]


def read_toc(store: Store, codec: ObjectCodec, pack_id: bytes) -> list[TocEntry]:
    """The verified table of contents of a pack, read by range.

    Raises:
        IntegrityError: bad trailer, table or layout.
        ObjectMissingError, StoreError: the pack cannot be read.
    """
    name = pack_name(pack_id)
    size = store.size(name)
    if size < len(HEADER) + TRAILER.size:
        raise IntegrityError(f"pack {pack_id.hex()} is truncated ({size} bytes)")
    toc_offset, toc_len, magic = TRAILER.unpack(
        store.get_range(name, size - TRAILER.size, TRAILER.size)
    )
    if magic != TRAILER_MAGIC:
        raise IntegrityError(f"pack {pack_id.hex()} has no valid trailer")
    if toc_offset < len(HEADER) or toc_offset + toc_len + TRAILER.size != size:
        raise IntegrityError(f"pack {pack_id.hex()} trailer does not match its size")
    sealed = store.get_range(name, toc_offset, toc_len)
    plain = codec.open_raw(
        sealed,
        toc_associated(codec, pack_id),
        f"table of contents of pack {pack_id.hex()}",
    )
    return _parse_toc(
        unpack_plain(plain, f"pack {pack_id.hex()} table"), pack_id, toc_offset
    )


def _parse_toc(value: object, pack_id: bytes, toc_offset: int) -> list[TocEntry]:
    if not isinstance(value, list):
        raise IntegrityError(f"pack {pack_id.hex()} table is malformed")
    entries: list[TocEntry] = []
    expected = len(HEADER)
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 4
            or not isinstance(item[0], bytes)
            or len(item[0]) != ID_SIZE
            or not all(isinstance(x, int) for x in item[1:])
        ):
            raise IntegrityError(f"pack {pack_id.hex()} table entry is malformed")
        entry = TocEntry(item[0], item[1], item[2], item[3])
        if entry.offset != expected or entry.length <= 0:
            raise IntegrityError(f"pack {pack_id.hex()} objects do not tile the pack")
        expected += entry.length
        entries.append(entry)
    if expected != toc_offset:
        raise IntegrityError(f"pack {pack_id.hex()} has bytes outside its objects")
    return entries


def verify_header(store: Store, pack_id: bytes) -> None:
    """Check a pack's header magic and version. Raises IntegrityError."""
    head = store.get_range(pack_name(pack_id), 0, len(HEADER))
    if head[: len(MAGIC)] != MAGIC:
        raise IntegrityError(f"pack {pack_id.hex()} has a bad header")
    (version,) = struct.unpack(">H", head[len(MAGIC) :])
    if version != VERSION:
        raise UnsupportedVersionError(
            f"pack {pack_id.hex()} has format version {version}"
        )


STREAM_PACKS = 4


class PackReader:
    """Sealed object bytes for streaming readers, one whole pack per fetch.

    Safe to use from several threads: each pack is fetched by the first thread
    that needs it while the others wait for that fetch. At most ``capacity``
    packs are held. A pack needed again after it left the cache is read by
    range from then on, so a reader that jumps between many packs (a full
    patched over many earlier ones) fetches each pack whole at most once and
    memory stays at ``capacity`` packs.
    """

    def __init__(self, store: Store, capacity: int = STREAM_PACKS) -> None:
        self.store = store
        self.capacity = capacity
        self._lock = threading.Lock()
        self._packs: OrderedDict[bytes, Future[bytes]] = OrderedDict()
        self._evicted: set[bytes] = set()
        self.whole_reads = 0
        self.range_reads = 0

    def read(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of a pack (fewer if it is truncated).

        Raises:
            ObjectMissingError, StoreError, LocalIOError: the pack cannot be read.
        """
        owner = False
        with self._lock:
            pending = self._packs.get(pack_id)
            if pending is not None:
                self._packs.move_to_end(pack_id)
            elif pack_id not in self._evicted:
                pending = self._packs[pack_id] = Future()
                owner = True
                while len(self._packs) > self.capacity:
                    gone, _ = self._packs.popitem(last=False)
                    self._evicted.add(gone)
        if pending is None:
            self.range_reads += 1
            return self.store.get_range(pack_name(pack_id), offset, length)
        if owner:
            self._fetch(pack_id, pending)
        return pending.result()[offset : offset + length]

    def _fetch(self, pack_id: bytes, pending: Future[bytes]) -> None:
        try:
            data = self.store.get(pack_name(pack_id))
        except BaseException as exc:
            # Waiting threads see the same error; a later read may try again.
            with self._lock:
                if self._packs.get(pack_id) is pending:
                    del self._packs[pack_id]
            pending.set_exception(exc)
            return
        self.whole_reads += 1
        pending.set_result(data)
