"""The repository: keys, config, full and incremental backups, reading, checking.

Store layout::

    config                 b"VSCONF" ‖ version u8 ‖ msgpack {repo_id, version,
                           created_ms}
                           ‖ HMAC-SHA256(manifest MAC key, b"config" ‖ all before)
    keys/<key-id>          key files (vaultstore.crypto.keyfile) wrapping the master key
    data/<xx>/<pack-id>    packs (pack.py)
    snapshots/<seq:010d>   manifests (manifest.py), put-if-absent: the commit point

A backup reads the journal inside one read view, so it sees one LSN. Objects
are written first, each pack confirmed by the store, and the manifest last.
Rollback: the vault keeps the highest sequence seen per repository in journal
meta (``repo_hwm:<repo-id>``); a latest manifest below it is refused.

Reading a whole state (:meth:`Repository.iter_state_chunks`, what a restore
streams) walks the full's buckets in tree order, a group of leaves at a time.
A small thread pool opens objects ahead of the caller (whole packs fetched
once through :class:`~vaultstore.repo.pack.PackReader`; AES-GCM, zstd and
BLAKE3 release the GIL), and records pass on as the batch's own ``bytes``
objects: nothing is decoded or re-encoded per record. Held in memory: the
chain's changes, two groups of batches and a few packs, whatever the number
of agents.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import msgpack

from vaultstore import faults
from vaultstore.crypto import keyfile
from vaultstore.crypto.purpose import RepoKeys
from vaultstore.errors import (
    IntegrityError,
    LockedError,
    MisuseError,
    NotFoundError,
    ObjectExistsError,
    ObjectMissingError,
    UnsupportedVersionError,
    VaultstoreError,
    WrongPasswordError,
)
from vaultstore.model import tree_key
from vaultstore.repo import split, tree
from vaultstore.repo.index import Index
from vaultstore.repo.manifest import (
    FULL,
    INCREMENTAL,
    Manifest,
    ManifestCodec,
    manifest_name,
    seq_from_name,
)
from vaultstore.repo.objects import (
    BATCH,
    CHANGES,
    ID_SIZE,
    LEAF,
    REPO_ID_SIZE,
    ROOT,
    ObjectCodec,
    decode_batch,
    describe,
    unpack_plain,
)
from vaultstore.repo.pack import (
    DEFAULT_PACK_SIZE,
    PackReader,
    PackWriter,
    TocEntry,
    pack_name,
)
from vaultstore.store.base import Store

log = logging.getLogger(__name__)

_T = TypeVar("_T")

CONFIG_NAME = "config"
CONFIG_MAGIC = b"VSCONF"
FORMAT_VERSION = 1
HWM_PREFIX = "repo_hwm:"
# The last snapshot this vault copy took or was restored from, per repository:
# if the vault's newest snapshot in the repository is another one, a second
# copy of the vault (restored elsewhere, or from an older snapshot) moved its
# chain on, and this copy must not build on it.
LAST_SNAPSHOT_PREFIX = "last_snapshot:"
# Written just before each publication attempt, so a crash between the
# manifest write and the LAST_SNAPSHOT update is not mistaken for another copy.
PENDING_SNAPSHOT_PREFIX = "pending_snapshot:"
BATCH_CACHE = 64
PACK_CACHE = 2


class JournalLike(Protocol):
    """What a backup needs from the journal (``vaultstore.journal.Journal``)."""

    def read_view(self) -> AbstractContextManager[Any]: ...
    def last_lsn(self) -> int: ...
    def state_digest(self) -> bytes: ...
    def counts(self) -> dict[str, Any]: ...
    def iter_changed_since(
        self, lsn: int, upto: int | None = None
    ) -> Iterator[tuple[str, int, bytes | None]]: ...
    def iter_by_tree_key(
        self, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, str, int, bytes | None]]: ...
    def get_meta(self, key: str) -> bytes | None: ...


class MetaLike(Protocol):
    def get_meta(self, key: str) -> bytes | None: ...
    def set_meta(self, key: str, value: bytes) -> None: ...


@dataclass
class BackupResult:
    """What one backup stored."""

    snapshot: str
    type: str
    seq: int
    parent: str | None
    lsn_start: int
    lsn_end: int
    agents: int
    records_added: int
    objects_added: int
    bytes_added: int
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Problem:
    """One damaged thing found by check, and the snapshots depending on it."""

    what: str
    message: str
    snapshots: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "message": self.message,
            "snapshots": sorted(self.snapshots),
        }


@dataclass
class CheckReport:
    """Outcome of :meth:`Repository.check`."""

    packs: int = 0
    objects: int = 0
    snapshots: int = 0
    read_data: bool = False
    # Snapshots whose whole state was read back and recomputed (--read-data).
    states_verified: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "packs": self.packs,
            "objects": self.objects,
            "snapshots": self.snapshots,
            "read_data": self.read_data,
            "states_verified": self.states_verified,
            "problems": [p.as_dict() for p in self.problems],
            "warnings": self.warnings,
        }


def _encode_config(repo_id: bytes, keys: RepoKeys, created_ms: int) -> bytes:
    body = msgpack.packb(
        {"repo_id": repo_id, "version": FORMAT_VERSION, "created_ms": created_ms},
        use_bin_type=True,
    )
    signed = CONFIG_MAGIC + bytes((FORMAT_VERSION,)) + bytes(body)
    return (
        signed
        + hmac.new(keys.manifest_mac, b"config" + signed, hashlib.sha256).digest()
    )


def _decode_config(data: bytes, keys: RepoKeys) -> bytes:
    signed, mac = data[:-32], data[-32:]
    if len(data) < 40 or signed[:6] != CONFIG_MAGIC:
        raise IntegrityError("repository config is damaged")
    expect = hmac.new(keys.manifest_mac, b"config" + signed, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expect):
        raise IntegrityError(
            "repository config failed its MAC (tampered, or another key)"
        )
    if signed[6] != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"repository format version {signed[6]} is unknown"
        )
    body = msgpack.unpackb(signed[7:], raw=False)
    repo_id = body.get("repo_id") if isinstance(body, dict) else None
    if not isinstance(repo_id, bytes) or len(repo_id) != REPO_ID_SIZE:
        raise IntegrityError("repository config has no valid id")
    return repo_id


class Repository:
    """One open repository (keys unlocked, index loaded)."""

    def __init__(
        self,
        store: Store,
        repo_id: bytes,
        keys: RepoKeys,
        cache_dir: Path | None,
        *,
        meta: MetaLike | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
        batch_records: int = 256,
    ) -> None:
        self.store = store
        self.id = repo_id.hex()
        self.codec = ObjectCodec(repo_id, keys)
        self.manifests = ManifestCodec(repo_id, keys)
        self.meta = meta
        self.pack_size = pack_size
        self.batch_records = batch_records
        path = cache_dir / self.id / "index" if cache_dir is not None else None
        self.index = Index(path)
        self._manifest_cache: dict[int, Manifest] = {}
        self._batches: OrderedDict[bytes, list[bytes]] = OrderedDict()
        self._packs: OrderedDict[bytes, bytes] = OrderedDict()
        self._streaming = 0
        # True: every full re-reads the whole journal in tree order instead of
        # patching the parent full's tree with the changes since it.
        self.full_rescan = False
        if not self.index.load():
            log.info(
                "building object index from pack tables",
                extra={"event": "repo.index.rebuild"},
            )
        self.bad_packs = self.index.sync(store, self.codec)
        self.index.save()

    # ----------------------------------------------------------------- keys
    @classmethod
    def init(
        cls,
        store: Store,
        password: str,
        profile: str,
        cache_dir: Path | None = None,
        *,
        master_key: bytes | None = None,
        now_ms: int | None = None,
        **kw: Any,
    ) -> Repository:
        """Create a repository: master key, key file, config.

        Raises:
            MisuseError: the store already holds a repository.
            WeakPasswordError: the password fails the password rule.
        """
        if store.exists(CONFIG_NAME):
            raise MisuseError(f"{store.url} already holds a repository")
        master = master_key if master_key is not None else keyfile.generate_master_key()
        data = keyfile.create_keyfile(master, password, profile)
        store.put(f"keys/{hashlib.sha256(data).hexdigest()[:16]}", data)
        keys = RepoKeys.from_master(master)
        repo_id = os.urandom(REPO_ID_SIZE)
        created = now_ms if now_ms is not None else int(time.time() * 1000)
        store.put(CONFIG_NAME, _encode_config(repo_id, keys, created))
        log.info(
            "repository created", extra={"event": "repo.init", "repo": repo_id.hex()}
        )
        return cls(store, repo_id, keys, cache_dir, **kw)

    @classmethod
    def open(
        cls,
        store: Store,
        password: str,
        cache_dir: Path | None,
        profile: str = "production",
        **kw: Any,
    ) -> Repository:
        """Open with a password: try each key file (one KDF run per file).

        Raises:
            NotFoundError: no repository at this store.
            WrongPasswordError: no key file opens with the password.
        """
        master = open_master_key(store, password, profile)
        return cls.open_with_key(store, master, cache_dir, **kw)

    @classmethod
    def open_with_key(
        cls, store: Store, master_key: bytes, cache_dir: Path | None, **kw: Any
    ) -> Repository:
        """Open with an already unwrapped master key."""
        try:
            data = store.get(CONFIG_NAME)
        except ObjectMissingError as exc:
            raise NotFoundError(f"no repository at {store.url}") from exc
        keys = RepoKeys.from_master(master_key)
        return cls(store, _decode_config(data, keys), keys, cache_dir, **kw)

    # ------------------------------------------------------------ manifests
    def _manifest(self, seq: int) -> Manifest:
        cached = self._manifest_cache.get(seq)
        if cached is None:
            name = manifest_name(seq)
            cached = self.manifests.decode(self.store.get(name), name)
            self._manifest_cache[seq] = cached
        return cached

    def _seqs(self) -> list[int]:
        return sorted(
            s for n in self.store.list("snapshots/") if (s := seq_from_name(n))
        )

    def snapshots(self) -> list[Manifest]:
        """Every manifest, verified, oldest first. Raises IntegrityError."""
        return [self._manifest(s) for s in self._seqs()]

    def latest(self) -> Manifest | None:
        """The newest manifest, refusing a rollback below the vault's high-water mark.

        Raises:
            IntegrityError: bad manifest, or an older manifest presented as latest.
        """
        seqs = self._seqs()
        latest = self._manifest(seqs[-1]) if seqs else None
        hwm = self._hwm()
        if hwm and (latest is None or latest.seq < hwm):
            raise IntegrityError(
                f"repository rolled back: latest snapshot sequence is "
                f"{latest.seq if latest else 0} but this vault has seen {hwm}",
                seen=hwm,
            )
        return latest

    def _own_parent(self, journal: Any, vault_id: str, kind: str) -> Manifest | None:
        """This vault's newest snapshot, if this copy of the vault took it.

        Raises:
            MisuseError: an incremental whose parent another copy of the vault
                took; a full then starts from scratch instead.
        """
        parent = self.latest_of(vault_id)
        raw = journal.get_meta(LAST_SNAPSHOT_PREFIX + self.id)
        pending = journal.get_meta(PENDING_SNAPSHOT_PREFIX + self.id)
        mine = {bytes(v).decode() for v in (raw, pending) if v is not None}
        if parent is None or raw is None or parent.id in mine:
            return parent
        if kind == INCREMENTAL:
            raise MisuseError(
                f"the newest snapshot of this vault ({parent.id[:16]}, sequence "
                f"{parent.seq}) was not taken by this copy of the vault (was it "
                "restored elsewhere, or from an older snapshot?); take a --full "
                "backup"
            )
        log.warning(
            "snapshot %s was taken by another copy of this vault; the full "
            "backup starts from scratch",
            parent.id[:16],
            extra={"event": "repo.backup.foreign-parent", "snapshot": parent.id},
        )
        return None

    def newest_seq(self) -> int:
        """The highest snapshot sequence in the repository (0 if none); no decode."""
        seqs = self._seqs()
        return seqs[-1] if seqs else 0

    def latest_of(self, vault_id: str) -> Manifest | None:
        """The newest snapshot taken by vault ``vault_id`` (after the rollback check).

        Raises:
            IntegrityError: bad manifest, or the repository was rolled back.
        """
        if self.latest() is None:
            return None
        for seq in reversed(self._seqs()):
            manifest = self._manifest(seq)
            if manifest.vault == vault_id:
                return manifest
        return None

    def _hwm(self) -> int:
        if self.meta is None:
            return 0
        raw = self.meta.get_meta(HWM_PREFIX + self.id)
        return int(raw.decode()) if raw else 0

    def _note_seq(self, seq: int) -> None:
        if self.meta is not None and seq > self._hwm():
            self.meta.set_meta(HWM_PREFIX + self.id, str(seq).encode())

    def _by_id(self, snapshot_id: str, below: int) -> Manifest:
        for seq in reversed([s for s in self._seqs() if s < below]):
            m = self._manifest(seq)
            if m.id == snapshot_id:
                return m
        raise IntegrityError(f"snapshot {snapshot_id[:16]} (a parent) is missing")

    def chain(self, manifest: Manifest) -> list[Manifest]:
        """The full and the incrementals leading to ``manifest``, every link verified.

        Raises:
            IntegrityError: a missing parent, or a sequence, LSN or digest mismatch.
        """
        out = [manifest]
        cur = manifest
        while cur.type == INCREMENTAL:
            if cur.parent is None:
                raise IntegrityError(
                    f"incremental snapshot {cur.id[:16]} has no parent"
                )
            parent = self._by_id(cur.parent, cur.seq)
            if (
                parent.lsn_end != cur.lsn_start
                or parent.digest_after != cur.digest_before
            ):
                raise IntegrityError(
                    f"snapshot {cur.id[:16]} does not continue its parent "
                    f"{parent.id[:16]}"
                )
            out.append(parent)
            cur = parent
        out.reverse()
        return out

    def resolve(self, spec: str = "latest", at_ms: int | None = None) -> list[Manifest]:
        """The verified chain for ``spec``: ``latest``, a sequence or an id prefix.

        Raises:
            NotFoundError: no such snapshot.
            IntegrityError: a manifest or a chain link is bad.
        """
        target = self._find(spec, at_ms)
        if spec == "latest" and at_ms is None:
            self._note_seq(target.seq)
        return self.chain(target)

    def _find(self, spec: str, at_ms: int | None) -> Manifest:
        if spec == "latest":
            latest = self.latest()
            if latest is None:
                raise NotFoundError("the repository has no snapshots")
            if at_ms is None:
                return latest
            for seq in reversed(self._seqs()):
                m = self._manifest(seq)
                if m.time_ms <= at_ms:
                    return m
            raise NotFoundError("no snapshot at or before the given time")
        seqs = self._seqs()
        if spec.isdigit() and len(spec) < 12:
            if int(spec) in seqs:
                return self._manifest(int(spec))
            raise NotFoundError(f"no snapshot with sequence {spec}")
        hits = [
            m
            for m in (self._manifest(s) for s in seqs)
            if m.id.startswith(spec.lower())
        ]
        if len(hits) != 1:
            raise NotFoundError(f"no unique snapshot matches {spec!r}")
        return hits[0]

    # --------------------------------------------------------------- objects
    def read_object(self, kind: int, oid: bytes) -> bytes:
        """The verified plaintext of an object.

        Raises:
            IntegrityError: missing from every pack, or corrupt.
        """
        loc = self.index.lookup(oid)
        if loc is None:
            raise IntegrityError(f"{describe(kind, oid)} is missing", object=oid.hex())
        pack_id, stored_kind, offset, length = loc
        if stored_kind != kind:
            raise IntegrityError(f"{describe(kind, oid)} is stored as another kind")
        try:
            if self._streaming:
                sealed = self._whole_pack(pack_id)[offset : offset + length]
            else:
                sealed = self.store.get_range(pack_name(pack_id), offset, length)
        except ObjectMissingError as exc:
            raise IntegrityError(f"{describe(kind, oid)}: its pack is missing") from exc
        return self.codec.open(kind, oid, sealed)

    def _whole_pack(self, pack_id: bytes) -> bytes:
        # Streaming a whole snapshot reads packs mostly in order: one GET per
        # pack instead of one per object; two packs of a few MiB are kept.
        data = self._packs.get(pack_id)
        if data is None:
            data = self.store.get(pack_name(pack_id))
            self._packs[pack_id] = data
            if len(self._packs) > PACK_CACHE:
                self._packs.popitem(last=False)
        else:
            self._packs.move_to_end(pack_id)
        return data

    def _batch(self, oid: bytes) -> list[bytes]:
        records = self._batches.get(oid)
        if records is None:
            records = decode_batch(self.read_object(BATCH, oid), describe(BATCH, oid))
            self._batches[oid] = records
            if len(self._batches) > BATCH_CACHE:
                self._batches.popitem(last=False)
        else:
            self._batches.move_to_end(oid)
        return records

    def _record(self, batch: bytes, slot: int) -> bytes:
        records = self._batch(batch)
        if not 0 <= slot < len(records):
            raise IntegrityError(f"{describe(BATCH, batch)} has no slot {slot}")
        return records[slot]

    def _entries(self, kind: int, oid: bytes) -> list[tree.Entry]:
        return tree.decode_entries(self.read_object(kind, oid), describe(kind, oid))

    def _root(self, oid: bytes) -> tuple[int, int, bytes]:
        """``(bits, agents, whole leaf table)`` of a root, following deltas."""
        root = self._root_object(oid)
        return root.bits, root.agents, self._root_table(root)

    def _root_object(self, oid: bytes) -> tree.Root:
        return tree.decode_root(self.read_object(ROOT, oid), describe(ROOT, oid))

    def _root_table(self, root: tree.Root) -> bytes:
        if root.base is None:
            return root.table
        base = self._root_object(root.base)
        if base.depth != root.depth - 1 or base.bits != root.bits:
            raise IntegrityError(
                f"{describe(ROOT, root.base)} is not a valid delta base"
            )
        return tree.apply_delta(root, self._root_table(base))

    # ------------------------------------------------------------ reading
    def iter_changes(self, manifest: Manifest) -> Iterator[tuple[str, bytes | None]]:
        """An incremental's changes (None = removed); for a full, its whole state."""
        if manifest.type == FULL:
            for agent_id, batch, slot in self._iter_tree(manifest):
                yield agent_id, self._record(batch, slot)
            return
        for oid in manifest.changes:
            for agent, changed, where in self._entries(CHANGES, oid):
                if changed is None:
                    yield agent, None
                else:
                    yield agent, self._record(changed, int(where or 0))

    def _iter_tree(self, full: Manifest) -> Iterator[tuple[str, bytes, int]]:
        if full.root is None:
            raise IntegrityError(f"snapshot {full.id[:16]} has no tree root")
        bits, _, leaf_ids = self._root(full.root)
        for bucket in range(1 << bits):
            lid = tree.leaf_at(leaf_ids, bucket)
            if lid != tree.EMPTY:
                for agent_id, batch, slot in self._entries(LEAF, lid):
                    if batch is None:
                        raise IntegrityError(f"{describe(LEAF, lid)} holds a tombstone")
                    yield agent_id, batch, int(slot or 0)

    def iter_state(self, manifest: Manifest) -> Iterator[bytes]:
        """Record bytes of the whole state at ``manifest``, in tree order.

        Memory grows with the chain's changes, not with the number of agents.

        Raises:
            IntegrityError: a chain link or an object is missing or corrupt.
        """
        for chunk in self.iter_state_chunks(manifest):
            yield from chunk

    def iter_state_chunks(self, manifest: Manifest) -> Iterator[list[bytes]]:
        """The records of :meth:`iter_state`, a few thousand per list, in order.

        Raises:
            IntegrityError: a chain link or an object is missing or corrupt.
        """
        for _, records in self.iter_state_columns(manifest):
            yield records

    def iter_state_columns(
        self, manifest: Manifest
    ) -> Iterator[tuple[list[str], list[bytes]]]:
        """:meth:`iter_state_chunks` with each record's agent id beside it.

        The ids come from the tree (the leaves and change sets), not from the
        records: a caller that needs them (a restore's journal load) need not
        decode a million records to learn them.

        Objects are fetched a whole pack at a time and opened (decrypted,
        decompressed, checked against their ids) by :data:`READ_WORKERS`
        thread(s) working a group of leaves ahead of the caller: fetches and
        the C-level work of AES-GCM, zstd and BLAKE3 overlap with the caller's
        own. One thread for a local repository: a second one added more GIL
        contention than work on two cores (the restore's SQLite inserts run in
        their own process); :data:`REMOTE_READ_WORKERS` for S3, where fetches
        wait on the network.

        Raises:
            IntegrityError: a chain link or an object is missing or corrupt.
        """
        chain = self.chain(manifest)
        full = chain[0]
        changes: dict[str, tuple[bytes, int] | None] = {}
        for inc in chain[1:]:
            for oid in inc.changes:
                for agent_id, batch, slot in self._entries(CHANGES, oid):
                    changes[agent_id] = (
                        None if batch is None else (batch, int(slot or 0))
                    )
        if full.root is None:
            raise IntegrityError(f"snapshot {full.id[:16]} has no tree root")
        bits, _, leaf_ids = self._root(full.root)
        reader = _StateReader(self, changes)
        try:
            yield from reader.chunks(_buckets(bits, leaf_ids, changes))
        finally:
            reader.close()

    # ------------------------------------------------------------- backup
    def backup(
        self,
        journal: Any,
        kind: str,
        seed_envelope: dict[str, Any],
        host: str,
        now_ms: int,
        progress: Callable[[int], None] | None = None,
    ) -> BackupResult:
        """Write one snapshot (``full`` or ``incremental``) of the journal's state.

        Raises:
            MisuseError: an incremental with no snapshot to build on.
            LockedError: another backup committed an incremental's parent first.
            IntegrityError: a rollback, or a damaged parent.
        """
        if kind not in (FULL, INCREMENTAL):
            raise MisuseError(f"backup kind must be full or incremental, not {kind!r}")
        started = time.monotonic()
        if self.meta is None:
            self.meta = journal
        run = _Run(self)
        try:
            vault_id = _vault_id(journal)  # before the read view: it may write meta
            with journal.read_view() as view:
                # Every read goes through the view: one consistent LSN for the run.
                reader: JournalLike = view if view is not None else journal
                parent = self._own_parent(journal, vault_id, kind)
                if kind == INCREMENTAL and parent is None:
                    raise MisuseError(
                        "no snapshot yet: the first backup must be --full"
                    )
                lsn_end = reader.last_lsn()
                digest_after = reader.state_digest()
                counts = reader.counts()
                agents = int(counts["agents"])
                changes: list[bytes] = []
                root: bytes | None = None
                if kind == FULL:
                    root, agents = self._write_full(
                        reader, parent, run, progress, lsn_end
                    )
                elif parent is not None:
                    changes = self._write_changes(
                        reader, parent, lsn_end, run, progress
                    )
            run.finish()
        finally:
            run.close()
        self.index.save()
        states = {k: int(v) for k, v in counts.get("byState", {}).items() if v}
        manifest = Manifest(
            type=kind,
            time_ms=now_ms,
            host=host,
            seq=0,
            lsn_start=0 if kind == FULL or parent is None else parent.lsn_end,
            lsn_end=lsn_end,
            parent=parent.id if parent else None,
            root=root,
            changes=changes,
            agents=agents,
            records_added=run.batches.records_written + run.helper_records,
            digest_before=parent.digest_after if parent else bytes(32),
            digest_after=digest_after,
            seed_envelope=seed_envelope,
            bytes_added=run.packs.bytes_written,
            vault=vault_id,
            # Only counts that add up: a restore would refuse any others.
            states=states if sum(states.values()) == agents else None,
        )
        self._commit(manifest, parent)
        journal.set_meta(LAST_SNAPSHOT_PREFIX + self.id, manifest.id.encode("ascii"))
        result = BackupResult(
            snapshot=manifest.id,
            type=kind,
            seq=manifest.seq,
            parent=manifest.parent,
            lsn_start=manifest.lsn_start,
            lsn_end=lsn_end,
            agents=agents,
            records_added=manifest.records_added,
            objects_added=run.objects,
            bytes_added=manifest.bytes_added + manifest.stored_size,
            duration_s=time.monotonic() - started,
        )
        log.info(
            "%s backup %s stored %d records, %d bytes",
            kind,
            manifest.id[:16],
            result.records_added,
            result.bytes_added,
            extra={"event": "repo.backup.done", **result.as_dict()},
        )
        return result

    def _commit(self, manifest: Manifest, parent: Manifest | None) -> None:
        # Sequence numbers are repository-wide; the parent is this vault's own.
        seqs = self._seqs()
        manifest.seq = (seqs[-1] if seqs else 0) + 1
        for _ in range(8):
            data = self.manifests.encode(manifest)
            if self.meta is not None:
                self.meta.set_meta(
                    PENDING_SNAPSHOT_PREFIX + self.id, manifest.id.encode("ascii")
                )
            faults.point("repo.manifest.before-write")
            try:
                self.store.put(manifest_name(manifest.seq), data)
            except ObjectExistsError:
                newest = self.latest()
                if newest is None:
                    raise LockedError(
                        f"snapshot {manifest.seq} appeared and vanished; rerun"
                    ) from None
                own = self.latest_of(manifest.vault)
                own_id = own.id if own is not None else None
                if own_id != manifest.parent:
                    if manifest.type == INCREMENTAL:
                        raise LockedError(
                            f"another backup of this vault published snapshot "
                            f"{own.seq if own else '?'} first; rerun"
                        ) from None
                    # A full is self-contained: rebase it on the vault's new latest.
                    manifest.parent = own_id
                    manifest.digest_before = own.digest_after if own else bytes(32)
                # Another vault took the number: take the next one.
                manifest.seq = newest.seq + 1
                continue
            faults.point("repo.manifest.after-write")
            self._manifest_cache[manifest.seq] = manifest
            self._note_seq(manifest.seq)
            return
        raise LockedError("could not publish the snapshot: too many concurrent backups")

    def _write_changes(
        self,
        journal: JournalLike,
        parent: Manifest,
        lsn_end: int,
        run: _Run,
        progress: Callable[[int], None] | None,
    ) -> list[bytes]:
        pending: list[tuple[str, int | None]] = []
        rows = journal.iter_changed_since(parent.lsn_end, lsn_end)
        # Batched in tree order, a window at a time: then each batch holds
        # agents of one stretch of the tree, and a restore walking the tree
        # opens it once instead of once per stretch (changed rows come in
        # LSN order, scattered over the whole tree).
        while window := list(itertools.islice(rows, CHANGES_SORT_WINDOW)):
            window.sort(key=lambda row: (tree_key(row[0]), row[0]))
            for agent_id, _lsn, record in window:
                if record is None:
                    pending.append((agent_id, None))
                else:
                    gen, slot = run.batches.add(record)
                    pending.append((agent_id, tree.pending_slot(gen, slot)))
            if progress is not None:
                progress(len(window))
        run.batches.close_batch()
        run.batches.flush()
        ids = run.batches.ids
        out: list[bytes] = []
        for start in range(0, max(len(pending), 1), tree.CHANGES_PER_OBJECT):
            entries: list[tree.Entry] = []
            for agent_id, packed in pending[start : start + tree.CHANGES_PER_OBJECT]:
                if packed is None:
                    entries.append((agent_id, None, None))
                else:
                    gen, slot = divmod(packed, 1 << 20)
                    entries.append((agent_id, ids[gen], slot))
            oid, sealed = self.codec.seal(CHANGES, tree.encode_entries(entries))
            run.emit(CHANGES, oid, sealed)
            out.append(oid)
        return out

    def _changes_since(
        self, journal: JournalLike, lsn: int, upto: int, limit: int
    ) -> list[tuple[int, str, int, bytes | None]] | None:
        """Rows changed in (lsn, upto] in tree order, or None past ``limit`` rows."""
        rows = list(itertools.islice(journal.iter_changed_since(lsn, upto), limit + 1))
        if len(rows) > limit:
            return None
        return sorted((tree_key(a), a, row_lsn, rec) for a, row_lsn, rec in rows)

    def _patch_leaves(
        self,
        changed: list[tuple[int, str, int, bytes | None]],
        parent_leaves: bytes,
        shift: int,
        base_lsn: int,
        since: dict[str, tuple[bytes, int, int]],
        run: _Run,
        leaves: tree.LeafWriter,
    ) -> None:
        """Rewrite the leaves of buckets with changes; every other leaf is shared."""
        for bucket, group in itertools.groupby(changed, key=lambda r: r[0] >> shift):
            rows = list(group)
            touched = {r[1] for r in rows}
            lid = tree.leaf_at(parent_leaves, bucket)
            merged: list[tuple[int, str, bytes | None, int]] = [
                (tree_key(a), a, b, int(s or 0))
                for a, b, s in (self._entries(LEAF, lid) if lid != tree.EMPTY else [])
                if a not in touched and b is not None
            ]
            fresh = False
            for tk, agent_id, lsn, record in rows:
                if record is None or lsn <= base_lsn:
                    continue
                hit = since.get(agent_id)
                if hit is not None and lsn <= hit[2]:
                    merged.append((tk, agent_id, hit[0], hit[1]))
                else:
                    gen, slot = run.batches.add(record)
                    merged.append((tk, agent_id, None, tree.pending_slot(gen, slot)))
                    fresh = True
            merged.sort(key=lambda m: (m[0], m[1]))
            if merged:
                entries = [(a, b, s) for _, a, b, s in merged]
                leaves.add(tree.PendingLeaf(bucket, entries), fresh)
            else:
                leaves.clear(bucket)

    def _write_full(
        self,
        journal: JournalLike,
        parent: Manifest | None,
        run: _Run,
        progress: Callable[[int], None] | None,
        lsn_end: int,
    ) -> tuple[bytes, int]:
        chain = self.chain(parent) if parent is not None else []
        base = chain[0] if chain else None
        parent_bits: int | None = None
        parent_leaves = b""
        parent_root: tree.Root | None = None
        if base is not None and base.root is not None:
            parent_root = self._root_object(base.root)
            parent_bits, parent_leaves = parent_root.bits, self._root_table(parent_root)
        base_lsn = base.lsn_end if base is not None else -1
        # Locations of records already stored by incrementals since the base full.
        since: dict[str, tuple[bytes, int, int]] = {}
        for inc in chain[1:]:
            for oid in inc.changes:
                for agent_id, batch, slot in self._entries(CHANGES, oid):
                    if batch is None:
                        since.pop(agent_id, None)
                    else:
                        since[agent_id] = (batch, int(slot or 0), inc.lsn_end)
        bits = tree.choose_bits(int(journal.counts()["agents"]), parent_bits)
        same = parent_bits == bits
        leaf_ids = bytearray(tree.ID_SIZE << bits)
        leaves = tree.LeafWriter(self.codec, run.batches, run.emit, leaf_ids)
        shift = 63 - bits

        def consume(rows_in: Iterator[tuple[int, str, int, bytes | None]]) -> int:
            agents = 0
            rows_seen = 0
            for bucket, group in itertools.groupby(
                rows_in, key=lambda r: r[0] >> shift
            ):
                rows = list(group)
                rows_seen += len(rows)
                if progress is not None and rows_seen >= 4096:
                    progress(rows_seen)
                    rows_seen = 0
                if same and all(r[2] <= base_lsn for r in rows):
                    leaf_ids[bucket * 32 : bucket * 32 + 32] = tree.leaf_at(
                        parent_leaves, bucket
                    )
                    agents += sum(1 for r in rows if r[3] is not None)
                    continue
                known: dict[str, tuple[bytes, int]] = {}
                if same:
                    lid = tree.leaf_at(parent_leaves, bucket)
                    if lid != tree.EMPTY:
                        known = {
                            a: (b, int(s or 0))
                            for a, b, s in self._entries(LEAF, lid)
                            if b
                        }
                if not known and not since:
                    # Nothing stored to reuse (a first full, say): every record
                    # is new, so place the bucket's records in one step.
                    agents += tree.place_new(bucket, rows, run.batches, leaves)
                    continue
                entries: list[tuple[str, bytes | None, int]] = []
                fresh = False
                for _tk, agent_id, lsn, record in rows:
                    if record is None:
                        continue
                    agents += 1
                    loc = known.get(agent_id) if lsn <= base_lsn else None
                    if loc is None and (hit := since.get(agent_id)) and lsn <= hit[2]:
                        loc = (hit[0], hit[1])
                    if loc is None:
                        gen, slot = run.batches.add(record)
                        entries.append((agent_id, None, tree.pending_slot(gen, slot)))
                        fresh = True
                    else:
                        entries.append((agent_id, loc[0], loc[1]))
                if entries:
                    leaves.add(tree.PendingLeaf(bucket, entries), fresh)
            tree.finish(run.batches, leaves)
            return agents

        changed = None
        if same and base is not None and not self.full_rescan:
            changed = self._changes_since(
                journal, base_lsn, lsn_end, 1 + (1 << bits) * 4
            )
        if changed is not None:
            # Few changes since the base full: patch its tree, O(changes).
            leaf_ids[:] = parent_leaves
            self._patch_leaves(
                changed, parent_leaves, shift, base_lsn, since, run, leaves
            )
            tree.finish(run.batches, leaves)
            agents = int(journal.counts()["agents"])
        elif (helper := self._helper(journal, bits, same or bool(since))) is not None:
            # A full that reuses nothing, of many agents: a helper process
            # builds the upper half of the buckets meanwhile (repo/split.py).
            try:
                split_key = helper.first << shift
                agents = consume(journal.iter_by_tree_key(0, split_key))
                half = helper.result()
                if half is None:  # its view of the journal moved: build it here
                    agents += consume(journal.iter_by_tree_key(split_key))
                else:
                    for kind, oid, sealed in helper.objects():
                        run.emit(kind, oid, sealed)
                    leaf_ids[helper.first * ID_SIZE :] = half.leaf_ids
                    agents += half.agents
                    run.helper_records += half.records
                    if progress is not None:
                        progress(half.agents)
            finally:
                helper.close()
        else:
            # One thread reads the journal and builds the tree; batches are
            # compressed and sealed on another (BatchWriter.sealer). Reading
            # on a second thread cost more in GIL hand-offs than it saved.
            agents = consume(journal.iter_by_tree_key())
        root = tree.delta_root(
            bits,
            agents,
            leaf_ids,
            parent_root,
            base.root if base else None,
            parent_leaves,
        )
        oid, sealed = self.codec.seal(ROOT, tree.encode_root(root))
        run.emit(ROOT, oid, sealed)
        return oid, agents

    def _helper(
        self, journal: JournalLike, bits: int, reuses: bool
    ) -> split.HalfBuilder | None:
        """A helper process for the upper half of a full that reuses nothing
        from earlier snapshots, when it pays off (many agents, two cores)."""
        path = getattr(journal, "path", None)
        if reuses or bits < 1 or not isinstance(path, Path):
            return None
        if (os.cpu_count() or 1) < 2:
            return None
        if int(journal.counts()["agents"]) < split.split_min():
            return None
        first = 1 << (bits - 1)
        log.info(
            "buckets %d to %d of the full go to a helper process",
            first,
            (1 << bits) - 1,
            extra={"event": "repo.full.split", "bits": bits},
        )
        return split.HalfBuilder(
            path,
            self.codec,
            bits=bits,
            first=first,
            lsn=journal.last_lsn(),
            batch_records=self.batch_records,
        )

    # --------------------------------------------------------------- check
    def check(self, read_data: bool = False) -> CheckReport:
        """Verify manifests, chains, packs and every referenced object.

        With ``read_data`` every object of every pack is decrypted and its id
        recomputed; without, tree objects are read and batches checked for
        presence. Each problem names the object and the snapshots depending on it.
        """
        from vaultstore.repo.checker import Checker

        return Checker(self, read_data).run()


class _Run:
    """Writers of one backup run; skips objects the repository already holds."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.written: set[bytes] = set()
        self.objects = 0
        self.helper_records = 0  # records a helper process stored (split.py)
        # Another writes full packs to the store (fsync or upload) meanwhile.
        self._uploader = ThreadPoolExecutor(1, "vaultstore-pack")
        self.packs = PackWriter(
            repo.store, repo.codec, repo.pack_size, self._on_pack, self._uploader
        )
        # One thread compresses and encrypts batches (C code, without the GIL)
        # while this one walks the journal: a first full's largest cost after
        # the per-record Python work.
        self._sealer = ThreadPoolExecutor(1, "vaultstore-seal")
        self.batches = tree.BatchWriter(
            repo.codec,
            self.emit,
            max_records=repo.batch_records,
            sealer=self._sealer,
        )

    def emit(self, kind: int, oid: bytes, sealed: bytes) -> None:
        if oid in self.written or oid in self.repo.index:
            return
        self.written.add(oid)
        self.objects += 1
        self.packs.add(kind, oid, sealed)

    def _on_pack(self, pack_id: bytes, entries: list[TocEntry], size: int) -> None:
        self.repo.index.add_pack(pack_id, entries, size)

    def finish(self) -> None:
        self.batches.flush()
        self._sealer.shutdown(wait=True)
        self.packs.flush()
        self.packs.wait()

    def close(self) -> None:
        self._sealer.shutdown(wait=True, cancel_futures=True)
        self._uploader.shutdown(wait=True, cancel_futures=True)


READ_WORKERS = 1
# Over a network (S3) most of a read is waiting for the answer: more threads.
REMOTE_READ_WORKERS = 4
# Changed rows an incremental sorts into tree order at a time (bounds memory).
CHANGES_SORT_WINDOW = 65_536
GROUP_LEAVES = 256
LEAVES_PER_TASK = 32
# Change-set batches held open beyond the current groups (a few hundred KB
# decoded each): see _StateReader._kept.
RETAIN_BATCHES = 96

# A bucket to restore: its leaf id in the full (None: empty there) and the
# chain's changed records that land in it, as (tree key, agentId, location).
_Added = tuple[int, str, tuple[bytes, int]]
_Bucket = tuple[bytes | None, list[_Added]]


class _Leaf(NamedTuple):
    """A decoded leaf as parallel lists (entries in tree order)."""

    table: list[bytes]  # batch ids
    agents: tuple[str, ...]
    refs: tuple[int, ...]  # index into ``table``
    slots: tuple[int, ...]


_Decoded = tuple[_Leaf | None, list[_Added]]


def _buckets(
    bits: int, leaf_ids: bytes, changes: dict[str, tuple[bytes, int] | None]
) -> Iterator[_Bucket]:
    """Every bucket holding state: a leaf of the full, or changed records."""
    shift = 63 - bits
    added = sorted(
        (tree_key(a), a, loc) for a, loc in changes.items() if loc is not None
    )
    pos = 0
    empty = tree.EMPTY
    for bucket in range(1 << bits):
        lid: bytes | None = leaf_ids[bucket * ID_SIZE : (bucket + 1) * ID_SIZE]
        start = pos
        while pos < len(added) and added[pos][0] >> shift == bucket:
            pos += 1
        if lid == empty:
            if start == pos:
                continue
            lid = None
        yield lid, added[start:pos]


def _parse_leaf(plaintext: bytes, what: str) -> _Leaf:
    """A leaf's entries, checked with C-level passes over whole columns.

    Tombstones (no batch) are dropped: a full's leaves hold live agents only.

    Raises:
        IntegrityError: the leaf is malformed.
    """
    value = unpack_plain(plaintext, what)
    if type(value) is not list or len(value) != 2:
        raise IntegrityError(f"{what} is malformed")
    table, rows = value
    if type(table) is not list or type(rows) is not list:
        raise IntegrityError(f"{what} is malformed")
    try:
        agents, refs, slots = zip(*rows, strict=True) if rows else ((), (), ())
    except (TypeError, ValueError):
        raise IntegrityError(f"{what} has a malformed entry") from None
    if None in refs:
        kept = [i for i, ref in enumerate(refs) if ref is not None]
        agents = tuple(agents[i] for i in kept)
        refs = tuple(refs[i] for i in kept)
        slots = tuple(slots[i] for i in kept)
    if (
        not set(map(type, agents)) <= {str}
        or not {*map(type, refs), *map(type, slots)} <= {int}
        or not all(type(b) is bytes and len(b) == ID_SIZE for b in table)
        or (refs and (min(refs) < 0 or max(refs) >= len(table)))
        or (slots and min(slots) < 0)
    ):
        raise IntegrityError(f"{what} has a malformed entry")
    return _Leaf(table, agents, refs, slots)


class _StateReader:
    """Streams a snapshot's records with a thread pool opening objects ahead.

    Work moves in groups of :data:`GROUP_LEAVES` buckets. While the caller
    consumes group *g*, the pool opens the batches of group *g+1* (its leaves
    are already decoded) and the leaves of group *g+2*. Only the batches of
    two groups are held, so memory does not grow with the number of agents.
    """

    def __init__(
        self, repo: Repository, changes: dict[str, tuple[bytes, int] | None]
    ) -> None:
        self.repo = repo
        self.changes = changes
        self.packs = PackReader(repo.store)
        local = repo.store.url.startswith("file:")
        workers = READ_WORKERS if local else REMOTE_READ_WORKERS
        self.pool = ThreadPoolExecutor(workers, "vaultstore-read")
        self._batches: dict[bytes, Future[list[bytes]]] = {}
        # Change-set records not yet handed out, per batch: a batch of an
        # incremental serves buckets all over the tree, so it is kept open
        # (up to RETAIN_BATCHES of them) until its last record is used,
        # instead of being opened again for every group that needs it.
        self._pending_uses = Counter(
            loc[0] for loc in changes.values() if loc is not None
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def chunks(
        self, buckets: Iterator[_Bucket]
    ) -> Iterator[tuple[list[str], list[bytes]]]:
        groups = _grouped(buckets, GROUP_LEAVES)
        upcoming = self._submit_leaves(next(groups, None))
        current: list[_Decoded] | None = None
        current_needed: set[bytes] = set()
        while True:
            decoded = None
            needed: set[bytes] = set()
            if upcoming is not None:
                decoded = self._resolve_leaves(*upcoming)
                needed = self._submit_batches(decoded)
                upcoming = self._submit_leaves(next(groups, None))
            if current is not None:
                yield self._records(current, current_needed)
            if decoded is None:
                return
            self._batches = self._kept(needed)
            current, current_needed = decoded, needed

    def _kept(self, needed: set[bytes]) -> dict[bytes, Future[list[bytes]]]:
        """The open batches to hold on to: the next group's, then, within
        :data:`RETAIN_BATCHES`, change batches with records still to come."""
        kept = {b: self._batches[b] for b in needed}
        room = RETAIN_BATCHES
        pending = self._pending_uses
        for batch, future in self._batches.items():
            if room <= 0:
                break
            if batch not in kept and pending.get(batch, 0) > 0:
                kept[batch] = future
                room -= 1
        return kept

    def _submit_leaves(
        self, group: list[_Bucket] | None
    ) -> tuple[list[_Bucket], list[Future[list[_Leaf]]]] | None:
        if group is None:
            return None
        # Leaves are small: a task opens several, so thread hand-offs stay few.
        lids = [lid for lid, _ in group if lid is not None]
        tasks = [
            self.pool.submit(self._open_leaves, lids[i : i + LEAVES_PER_TASK])
            for i in range(0, len(lids), LEAVES_PER_TASK)
        ]
        return group, tasks

    @staticmethod
    def _resolve_leaves(
        group: list[_Bucket], tasks: list[Future[list[_Leaf]]]
    ) -> list[_Decoded]:
        leaves = itertools.chain.from_iterable(task.result() for task in tasks)
        return [
            (next(leaves) if lid is not None else None, added) for lid, added in group
        ]

    def _submit_batches(self, group: list[_Decoded]) -> set[bytes]:
        needed: set[bytes] = set()
        for leaf, added in group:
            if leaf is not None:
                needed.update(leaf.table)
            needed.update(loc[0] for _, _, loc in added)
        for batch in needed:
            if batch not in self._batches:
                self._batches[batch] = self.pool.submit(self._open_batch, batch)
        return needed

    def _records(
        self, group: list[_Decoded], needed: set[bytes]
    ) -> tuple[list[str], list[bytes]]:
        # Batches of a group were submitted a group earlier: wait for them all.
        ready = {b: self._batches[b].result() for b in needed}
        ids: list[str] = []
        out: list[bytes] = []
        changes = self.changes
        self._pending_uses.subtract(loc[0] for _, added in group for _, _, loc in added)
        for leaf, added in group:
            if leaf is None:
                locs = [(a, loc[0], loc[1]) for _, a, loc in added]
                self._append(ids, out, ready, locs)
            elif added or (changes and not changes.keys().isdisjoint(leaf.agents)):
                self._append(ids, out, ready, self._patched(leaf, added))
            else:
                ids += leaf.agents
                lists = [ready[b] for b in leaf.table]
                try:
                    if len(lists) == 1:  # the common case: one batch, a C-level map
                        out += map(lists[0].__getitem__, leaf.slots)
                    else:
                        out += [
                            lists[r][s]
                            for r, s in zip(leaf.refs, leaf.slots, strict=True)
                        ]
                except IndexError:
                    raise self._bad_slot(leaf, ready) from None
        return ids, out

    def _patched(
        self, leaf: _Leaf, added: list[_Added]
    ) -> list[tuple[str, bytes, int]]:
        """A leaf's entries with the chain's changes applied, in tree order."""
        changes = self.changes
        fresh = {a: loc for _, a, loc in added}
        locs: list[tuple[str, bytes, int]] = []
        for a, r, s in zip(leaf.agents, leaf.refs, leaf.slots, strict=True):
            if a not in changes:
                locs.append((a, leaf.table[r], s))
            elif (loc := fresh.pop(a, None)) is not None:
                locs.append((a, loc[0], loc[1]))  # changed in place; else removed
        if fresh:
            # Agents new to this bucket: merge by (tree key, agentId).
            keyed = [(tree_key(a), a, b, s) for a, b, s in locs]
            keyed += [(tk, a, loc[0], loc[1]) for tk, a, loc in added if a in fresh]
            keyed.sort(key=lambda m: (m[0], m[1]))
            locs = [(a, b, s) for _, a, b, s in keyed]
        return locs

    @staticmethod
    def _append(
        ids: list[str],
        out: list[bytes],
        ready: dict[bytes, list[bytes]],
        locs: list[tuple[str, bytes, int]],
    ) -> None:
        for agent_id, batch, slot in locs:
            records = ready[batch]
            if not 0 <= slot < len(records):
                raise IntegrityError(f"{describe(BATCH, batch)} has no slot {slot}")
            ids.append(agent_id)
            out.append(records[slot])

    @staticmethod
    def _bad_slot(leaf: _Leaf, ready: dict[bytes, list[bytes]]) -> IntegrityError:
        for r, s in zip(leaf.refs, leaf.slots, strict=True):
            batch = leaf.table[r]
            if s >= len(ready[batch]):
                return IntegrityError(f"{describe(BATCH, batch)} has no slot {s}")
        return IntegrityError("internal: a leaf slot is out of range")

    def _open(self, kind: int, oid: bytes) -> bytes:
        loc = self.repo.index.lookup(oid)
        if loc is None:
            raise IntegrityError(f"{describe(kind, oid)} is missing", object=oid.hex())
        pack_id, stored_kind, offset, length = loc
        if stored_kind != kind:
            raise IntegrityError(f"{describe(kind, oid)} is stored as another kind")
        try:
            sealed = self.packs.read(pack_id, offset, length)
        except ObjectMissingError as exc:
            raise IntegrityError(f"{describe(kind, oid)}: its pack is missing") from exc
        return self.repo.codec.open(kind, oid, sealed)

    def _open_leaves(self, lids: list[bytes]) -> list[_Leaf]:
        return [_parse_leaf(self._open(LEAF, lid), describe(LEAF, lid)) for lid in lids]

    def _open_batch(self, batch: bytes) -> list[bytes]:
        return decode_batch(self._open(BATCH, batch), describe(BATCH, batch))


def _grouped(items: Iterator[_T], size: int) -> Iterator[list[_T]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def open_master_key(store: Store, password: str, profile: str) -> bytes:
    """Unwrap the master key from the first key file the password opens.

    Raises:
        NotFoundError: no key files.
        WrongPasswordError: none opens.
    """
    names = list(store.list("keys/"))
    if not names:
        raise NotFoundError(f"no repository key files at {store.url}")
    last: VaultstoreError | None = None
    for name in names:
        try:
            return keyfile.open_keyfile(store.get(name), password, profile)
        except WrongPasswordError as exc:
            last = exc
    raise last or WrongPasswordError("wrong password")


VAULT_ID_META = "vault_id"


def _vault_id(journal: Any) -> str:
    """The vault's identity (hex); made on its first backup if it has none."""
    raw = journal.get_meta(VAULT_ID_META)
    if raw:
        return bytes(raw).decode("ascii")
    made = os.urandom(16).hex()
    journal.set_meta(VAULT_ID_META, made.encode("ascii"))
    return made
