"""The object index: object id → (pack, kind, offset, length), a rebuildable cache.

Kept in the vault at ``cache/<repo-id>/index`` (file 0600, directories 0700).
Layout (version 2)::

    b"VSIDX" ‖ version u8 ‖ msgpack [packs, oids, locations] ‖ BLAKE3-256

``packs`` is a list of 16-byte pack ids; ``oids`` the 32-byte object ids
concatenated; ``locations`` the little-endian u64 quadruples
``(pack number, kind, offset, length)`` in the same order. Columns rather
than one row per object, so loading 80k entries (1M agents) takes a few C
calls, not a Python loop: every backup pays for it. A version-1 (row) index
is rebuilt.

The checksum only detects damage: the index is a cache, and every object it
points at is authenticated when opened. A missing, damaged or unknown-version
index is rebuilt from the pack tables of contents; packs present in the store
but not in the index (written by another host, or by a run that crashed
before saving the index) are added on open, and packs no longer in the store
are dropped.
"""

from __future__ import annotations

import itertools
import logging
import operator
import sys
from array import array
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path

import blake3
import msgpack

from vaultstore import durable
from vaultstore.errors import IntegrityError
from vaultstore.repo.objects import ObjectCodec
from vaultstore.repo.pack import TocEntry, pack_id_from_name, read_toc
from vaultstore.store.base import Store

log = logging.getLogger(__name__)

MAGIC = b"VSIDX"
VERSION = 2
ID_BYTES = 32

Location = tuple[int, int, int, int]  # pack number, kind, offset, length

# In memory a location is one int, ``pack number << 72 | kind << 64 | offset
# << 32 | length``: about 45 bytes instead of a 4-tuple's ~145 (the tuple and
# its two large ints). At 10M agents (563k objects) the index took 152 MiB as
# tuples, the largest part of a full backup's 341 MiB.
_WORD = 0xFFFF_FFFF


def _pack(number: int, kind: int, offset: int, length: int) -> int:
    return number << 72 | kind << 64 | offset << 32 | length


def _unpack(value: int) -> Location:
    return value >> 72, value >> 64 & 0xFF, value >> 32 & _WORD, value & _WORD


class _OlderIndex(Exception):
    """An index in an older cache format: rebuilt, not damaged."""


class Index:
    """In-memory object index with load, save and sync against the store."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.packs: list[bytes] = []
        self._pack_numbers: dict[bytes, int] = {}
        self.objects: dict[bytes, int] = {}  # oid -> packed location
        self.dirty = False

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.objects

    def __len__(self) -> int:
        return len(self.objects)

    def lookup(self, oid: bytes) -> tuple[bytes, int, int, int] | None:
        """``(pack id, kind, offset, length)`` of an object, or None."""
        value = self.objects.get(oid)
        if value is None:
            return None
        return (
            self.packs[value >> 72],
            value >> 64 & 0xFF,
            value >> 32 & _WORD,
            value & _WORD,
        )

    def items(self) -> Iterator[tuple[bytes, Location]]:
        """Every ``(object id, (pack number, kind, offset, length))``."""
        for oid, value in self.objects.items():
            yield oid, _unpack(value)

    def add_pack(self, pack_id: bytes, entries: list[TocEntry], size: int = 0) -> None:
        """Record every object of a pack (first location of an id wins)."""
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = len(self.packs)
            self.packs.append(pack_id)
            self._pack_numbers[pack_id] = number
        for e in entries:
            if not (
                0 <= e.kind <= 0xFF
                and 0 <= e.offset <= _WORD
                and 0 <= e.length <= _WORD
            ):
                raise IntegrityError(f"pack {pack_id.hex()}: an entry is out of range")
            self.objects.setdefault(e.oid, _pack(number, e.kind, e.offset, e.length))
        self.dirty = True

    def load(self) -> bool:
        """Load from disk; False (and empty) when missing or damaged."""
        if self.path is None:
            return False
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning(
                "cannot read index %s: %s",
                self.path,
                exc.strerror,
                extra={"event": "repo.index.unreadable"},
            )
            return False
        try:
            self._decode(data)
        except _OlderIndex as exc:
            log.info(
                "index %s: %s; rebuilding",
                self.path,
                exc,
                extra={"event": "repo.index.upgrade"},
            )
            self.packs, self._pack_numbers, self.objects = [], {}, {}
            return False
        except (
            IntegrityError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            OverflowError,
            msgpack.ExtraData,
        ) as exc:
            # The cache is rebuildable: any damage, whatever its shape, means
            # "rebuild from the pack tables", never a crash.
            log.warning(
                "index %s is damaged (%s); rebuilding",
                self.path,
                exc,
                extra={"event": "repo.index.damaged"},
            )
            self.packs, self._pack_numbers, self.objects = [], {}, {}
            return False
        return True

    def _decode(self, data: bytes) -> None:
        body, check = data[:-32], data[-32:]
        if len(data) < 38 or blake3.blake3(body).digest() != check:
            raise IntegrityError("index checksum mismatch")
        if body[:5] != MAGIC:
            raise IntegrityError("index magic unknown")
        if body[5] != VERSION:
            raise _OlderIndex(f"index format {body[5]}, this build writes {VERSION}")
        packs, oids, raw_locations = msgpack.unpackb(body[6:], raw=False)
        if len(oids) % ID_BYTES or len(raw_locations) != len(oids) // ID_BYTES * 32:
            raise IntegrityError("index columns do not line up")
        locations = array("Q")
        locations.frombytes(raw_locations)
        if sys.byteorder != "little":
            locations.byteswap()
        self.packs = [bytes(p) for p in packs]
        self._pack_numbers = {p: i for i, p in enumerate(self.packs)}
        if locations and max(locations[0::4]) >= len(self.packs):
            raise IntegrityError("index refers to an unknown pack")
        kinds, offsets, lengths = locations[1::4], locations[2::4], locations[3::4]
        if locations and (
            max(kinds) > 0xFF or max(offsets) > _WORD or max(lengths) > _WORD
        ):
            raise IntegrityError("index holds a location out of range")
        ids = [oids[i : i + ID_BYTES] for i in range(0, len(oids), ID_BYTES)]
        # C-level maps, no Python frame per entry: every backup loads this.
        shl, or_ = operator.lshift, operator.or_
        high = map(or_, map(shl, locations[0::4], repeat(8)), kinds)
        low = map(or_, map(shl, offsets, repeat(32)), lengths)
        values = map(or_, map(shl, high, repeat(64)), low)
        self.objects = dict(zip(ids, values, strict=True))

    def save(self) -> None:
        """Write atomically (temp, fsync, rename, dir fsync). Raises LocalIOError."""
        if self.path is None or not self.dirty:
            return
        values = list(self.objects.values())
        shr, and_ = operator.rshift, operator.and_
        numbers = map(shr, values, repeat(72))
        kinds = map(and_, map(shr, values, repeat(64)), repeat(0xFF))
        offsets = map(and_, map(shr, values, repeat(32)), repeat(_WORD))
        lengths = map(and_, values, repeat(_WORD))
        locations = array(
            "Q",
            itertools.chain.from_iterable(
                zip(numbers, kinds, offsets, lengths, strict=True)
            ),
        )
        if sys.byteorder != "little":
            locations.byteswap()
        columns = [self.packs, b"".join(self.objects), locations.tobytes()]
        body = MAGIC + bytes((VERSION,)) + msgpack.packb(columns, use_bin_type=True)
        data = body + blake3.blake3(body).digest()
        # write_atomic picks a unique temporary name: two processes may save
        # the same vault's index.
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise durable.io_error(
                f"index {self.path}", exc, path=str(self.path)
            ) from exc
        durable.write_atomic(self.path, data, what=f"index {self.path}")
        self.dirty = False

    def sync(self, store: Store, codec: ObjectCodec) -> list[tuple[bytes, str]]:
        """Add packs the index lacks, drop packs the store lacks.

        Returns the packs whose table could not be read, with the reason.
        """
        present = {}
        for name in store.list("data/"):
            pack_id = pack_id_from_name(name)
            if pack_id is not None:
                present[pack_id] = name
        bad: list[tuple[bytes, str]] = []
        if any(p not in present for p in self.packs):
            # A pack went away (prune, or damage): an object it held may live
            # on in another pack the index already knows, under a location
            # the index never recorded. Re-read every table rather than guess.
            self._reset()
        for pack_id in sorted(present):
            if pack_id in self._pack_numbers:
                continue
            try:
                entries = read_toc(store, codec, pack_id)
            except IntegrityError as exc:
                bad.append((pack_id, exc.message))
                log.warning(
                    "pack %s unreadable: %s",
                    pack_id.hex(),
                    exc.message,
                    extra={"event": "repo.pack.bad-toc"},
                )
                continue
            self.add_pack(pack_id, entries)
        return bad

    def _reset(self) -> None:
        self.packs = []
        self._pack_numbers = {}
        self.objects = {}
        self.dirty = True
