"""Garbage collection of a repository: mark what manifests reference, sweep packs.

No new on-disk structure is defined here: prune writes ordinary packs
(``pack.py``, format version 1) and the ordinary index cache (``index.py``).

**Mark.** Every remaining manifest (``snapshots/``) is verified; a manifest
that fails verification stops prune, since what it references cannot be
known. From each full, the root and every root down its delta chain are
live, and so is every leaf of its resolved leaf table; from each leaf, every
batch in the leaf's own batch table. From each incremental, its change-set
objects and the batches they name. Memory is one 32-byte id per live object
(batches, leaves, roots, change sets), never per record; a leaf shared by
many fulls is read once.

**Sweep.** Every pack's table of contents is read (the index is only a
cache). An object stored in several packs (a crashed earlier prune, or two
hosts writing the same object) is *kept* in one of them: the pack with the
highest live fraction. A pack keeping no live object is deleted. A pack whose
kept bytes are below ``repack_threshold`` of its object bytes (header, table
and trailer not counted, so a small wholly live pack is never repacked) is
repacked: its kept objects are copied, still sealed (they are bound to
repository, kind and id, not to a pack), into new packs with new tables of
contents.

**Order (crash safety).** New packs are written and their tables read back
before any pack is deleted; deletion comes last. A crash at any point leaves
every live object in at least one pack: at worst an object is stored twice
(``check`` warns, nothing is damaged), and the next prune removes the extra
copy. The index cache is rebuilt from the surviving tables at the end.

Fault points: ``prune.after-pack-written`` after each new pack is confirmed,
``prune.before-pack-delete`` before each deletion.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vaultstore import faults
from vaultstore.errors import IntegrityError, MisuseError, StoreError, VaultstoreError
from vaultstore.repo import tree
from vaultstore.repo.index import Index
from vaultstore.repo.manifest import FULL, Manifest
from vaultstore.repo.objects import (
    CHANGES,
    ID_SIZE,
    LEAF,
    ROOT,
    describe,
    unpack_plain,
)
from vaultstore.repo.pack import (
    PackWriter,
    TocEntry,
    pack_id_from_name,
    pack_name,
    read_toc,
)

if TYPE_CHECKING:
    from vaultstore.repo.repository import Repository

log = logging.getLogger(__name__)

DEFAULT_REPACK_THRESHOLD = 0.5
WHOLE_PACK_MIN_OBJECTS = 4  # fewer wanted objects in a pack: range reads instead
ROOT_TABLE_CACHE = 4
GUARD_EVERY = 64  # deletions between two lock checks

Guard = Callable[[], None]


@dataclass
class PackUsage:
    """One pack and the live objects it keeps."""

    pack_id: bytes
    size: int  # the whole pack file
    objects: int
    object_bytes: int  # the objects alone, without header, table and trailer
    kept: list[TocEntry] = field(default_factory=list)

    @property
    def kept_bytes(self) -> int:
        return sum(e.length for e in self.kept)

    @property
    def fraction(self) -> float:
        """Live share of the object bytes (a small, fully live pack is 1.0)."""
        return self.kept_bytes / self.object_bytes if self.object_bytes else 0.0


@dataclass
class PrunePlan:
    """What the sweep would do."""

    snapshots: int
    live_objects: int
    keep: list[PackUsage] = field(default_factory=list)
    delete: list[PackUsage] = field(default_factory=list)
    repack: list[PackUsage] = field(default_factory=list)
    unreadable: list[tuple[bytes, str]] = field(default_factory=list)
    missing: int = 0  # live objects found in no readable pack
    tocs: dict[bytes, list[TocEntry]] = field(default_factory=dict)


@dataclass
class PruneResult:
    """What one prune did (or, with ``dry_run``, would do)."""

    dry_run: bool
    snapshots: int
    live_objects: int
    packs_before: int
    packs_after: int
    packs_deleted: int
    packs_repacked: int
    packs_written: int
    objects_kept: int
    objects_removed: int
    bytes_before: int
    bytes_after: int
    bytes_freed: int
    repack_threshold: float
    unreadable_packs: list[str]
    missing_objects: int
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- mark ----------------------------------------------------------------------


def mark_live(repo: Repository, manifests: list[Manifest]) -> set[bytes]:
    """Ids of every object a manifest in ``manifests`` references.

    Raises:
        IntegrityError: a referenced tree object is missing or corrupt (what it
            references cannot be known, so nothing may be swept).
    """
    live: set[bytes] = set()
    tables: OrderedDict[bytes, bytes] = OrderedDict()
    leaves: set[bytes] = set()
    change_sets: list[bytes] = []
    for m in manifests:
        if m.type == FULL:
            if m.root is None:
                raise IntegrityError(f"snapshot {m.seq} has no tree root")
            table = _root_table(repo, m.root, live, tables)
            for at in range(0, len(table), ID_SIZE):
                lid = table[at : at + ID_SIZE]
                if lid != tree.EMPTY and lid not in live:
                    live.add(lid)
                    leaves.add(lid)
        for oid in m.changes:
            if oid not in live:
                live.add(oid)
                change_sets.append(oid)
    for kind, oids in ((LEAF, sorted(leaves)), (CHANGES, change_sets)):
        for oid, plain in read_objects(repo, kind, oids):
            live.update(_batch_table(plain, describe(kind, oid)))
    return live


def _root_table(
    repo: Repository,
    oid: bytes,
    live: set[bytes],
    cache: OrderedDict[bytes, bytes],
    depth: int = 0,
) -> bytes:
    """The whole leaf table of root ``oid``; marks it and its delta bases live."""
    live.add(oid)
    hit = cache.get(oid)
    if hit is not None:
        cache.move_to_end(oid)
        return hit
    what = describe(ROOT, oid)
    root = tree.decode_root(repo.read_object(ROOT, oid), what)
    if root.base is None:
        table = root.table
    else:
        if depth > 64:
            raise IntegrityError(f"{what} has a delta chain that does not end")
        table = tree.apply_delta(
            root, _root_table(repo, root.base, live, cache, depth + 1)
        )
    cache[oid] = table
    if len(cache) > ROOT_TABLE_CACHE:
        cache.popitem(last=False)
    return table


def _batch_table(plain: bytes, what: str) -> list[bytes]:
    """The batch ids a leaf or change set names (its own batch table)."""
    value = unpack_plain(plain, what)
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], list):
        raise IntegrityError(f"{what} is malformed")
    table = value[0]
    if not all(isinstance(b, bytes) and len(b) == ID_SIZE for b in table):
        raise IntegrityError(f"{what} has a malformed batch table")
    return table


def read_objects(
    repo: Repository, kind: int, oids: Iterable[bytes]
) -> Iterator[tuple[bytes, bytes]]:
    """``(oid, verified plaintext)`` of many objects, read pack by pack.

    A pack holding several wanted objects is fetched whole, once.

    Raises:
        IntegrityError: an object is missing from the index, or corrupt.
    """
    by_pack: dict[bytes, list[tuple[int, int, bytes]]] = {}
    for oid in oids:
        loc = repo.index.lookup(oid)
        if loc is None:
            raise IntegrityError(
                f"{describe(kind, oid)} is missing; run `vaultstore check`",
                object=oid.hex(),
            )
        pack_id, stored_kind, offset, length = loc
        if stored_kind != kind:
            raise IntegrityError(f"{describe(kind, oid)} is stored as another kind")
        by_pack.setdefault(pack_id, []).append((offset, length, oid))
    for pack_id in sorted(by_pack):
        wanted = sorted(by_pack[pack_id])
        name = pack_name(pack_id)
        whole = repo.store.get(name) if len(wanted) >= WHOLE_PACK_MIN_OBJECTS else None
        for offset, length, oid in wanted:
            if whole is not None:
                sealed = whole[offset : offset + length]
            else:
                sealed = repo.store.get_range(name, offset, length)
            yield oid, repo.codec.open(kind, oid, sealed)


# -- sweep planning ------------------------------------------------------------


def survey(
    repo: Repository, manifests: list[Manifest], live: set[bytes], threshold: float
) -> PrunePlan:
    """Read every pack's table and decide, per pack, keep, delete or repack."""
    if not 0.0 <= threshold <= 1.0:
        raise MisuseError(f"repack threshold must be within 0..1, not {threshold}")
    packs: list[tuple[PackUsage, list[TocEntry]]] = []
    plan = PrunePlan(snapshots=len(manifests), live_objects=len(live))
    for name in repo.store.list("data/"):
        pack_id = pack_id_from_name(name)
        if pack_id is None:
            continue
        try:
            entries = read_toc(repo.store, repo.codec, pack_id)
            size = repo.store.size(name)
        except (IntegrityError, StoreError) as exc:
            # Never delete what cannot be accounted for; check reports it.
            plan.unreadable.append((pack_id, exc.message))
            log.warning(
                "prune: pack %s unreadable, left alone: %s",
                pack_id.hex(),
                exc.message,
                extra={"event": "repo.prune.bad-pack", "pack": pack_id.hex()},
            )
            continue
        usage = PackUsage(pack_id, size, len(entries), sum(e.length for e in entries))
        packs.append((usage, entries))
        plan.tocs[pack_id] = entries
    _choose_keepers(packs, live)
    kept = {e.oid for usage, _ in packs for e in usage.kept}
    plan.missing = len(live - kept)
    for usage, _ in packs:
        if not usage.kept:
            plan.delete.append(usage)
        elif usage.fraction < threshold:
            plan.repack.append(usage)
        else:
            plan.keep.append(usage)
    if plan.missing:
        log.warning(
            "prune: %d live objects are in no readable pack; run `vaultstore check`",
            plan.missing,
            extra={"event": "repo.prune.missing", "missing": plan.missing},
        )
    return plan


def _choose_keepers(
    packs: list[tuple[PackUsage, list[TocEntry]]], live: set[bytes]
) -> None:
    """Give every live object exactly one keeping pack: the most-live one."""
    score: dict[bytes, float] = {}
    for usage, entries in packs:
        live_bytes = sum(e.length for e in entries if e.oid in live)
        total = usage.object_bytes
        score[usage.pack_id] = live_bytes / total if total else 0.0
    best: dict[bytes, tuple[float, bytes, int]] = {}
    for number, (usage, entries) in enumerate(packs):
        # Highest score wins; equal scores: the smaller pack id, for stable reruns.
        rank = (score[usage.pack_id], bytes(255 - b for b in usage.pack_id), number)
        for e in entries:
            if e.oid in live:
                current = best.get(e.oid)
                if current is None or rank > current:
                    best[e.oid] = rank
    for number, (usage, entries) in enumerate(packs):
        seen: set[bytes] = set()
        for e in entries:
            if e.oid in live and best[e.oid][2] == number and e.oid not in seen:
                seen.add(e.oid)
                usage.kept.append(e)


# -- sweep ---------------------------------------------------------------------


def sweep(
    repo: Repository, plan: PrunePlan, guard: Guard | None = None
) -> dict[bytes, int]:
    """Repack, then delete; rebuild the index. Returns the new packs' sizes.

    Raises:
        LockedError: ``guard`` found the lock lost; nothing more is deleted.
        StoreError, LocalIOError: a write or delete failed; rerun prune.
    """
    check = guard if guard is not None else (lambda: None)
    check()
    new_tocs: dict[bytes, list[TocEntry]] = {}
    written = _repack(repo, plan.repack, new_tocs)
    check()
    doomed = sorted(u.pack_id for u in [*plan.delete, *plan.repack])
    for count, pack_id in enumerate(doomed):
        if count and count % GUARD_EVERY == 0:
            check()
        faults.point("prune.before-pack-delete")
        repo.store.delete(pack_name(pack_id))
        log.debug(
            "prune: deleted pack %s",
            pack_id.hex(),
            extra={"event": "repo.prune.deleted", "pack": pack_id.hex()},
        )
    gone = set(doomed)
    survivors = {p: e for p, e in plan.tocs.items() if p not in gone}
    rebuild_index(repo, {**survivors, **new_tocs})
    return written


def _repack(
    repo: Repository, usages: list[PackUsage], new_tocs: dict[bytes, list[TocEntry]]
) -> dict[bytes, int]:
    """Copy the kept objects of ``usages`` into new packs, each confirmed."""
    new_packs: dict[bytes, int] = {}
    if not usages:
        return new_packs

    def confirm(pack_id: bytes, entries: list[TocEntry], size: int) -> None:
        # Read the new table back: the pack is really there and whole.
        if read_toc(repo.store, repo.codec, pack_id) != entries:
            raise IntegrityError(f"new pack {pack_id.hex()} does not read back")
        new_packs[pack_id] = size
        new_tocs[pack_id] = entries
        faults.point("prune.after-pack-written")

    writer = PackWriter(repo.store, repo.codec, repo.pack_size, on_written=confirm)
    for usage in sorted(usages, key=lambda u: u.pack_id):
        data = repo.store.get(pack_name(usage.pack_id))
        for e in usage.kept:
            sealed = data[e.offset : e.offset + e.length]
            if len(sealed) != e.length:
                raise IntegrityError(f"pack {usage.pack_id.hex()} is truncated")
            writer.add(e.kind, e.oid, sealed)
    writer.flush()
    log.info(
        "prune: repacked %d packs into %d",
        len(usages),
        len(new_packs),
        extra={"event": "repo.prune.repacked", "packs": len(new_packs)},
    )
    return new_packs


def rebuild_index(
    repo: Repository, tocs: dict[bytes, list[TocEntry]] | None = None
) -> None:
    """Replace the index cache with one built from the packs' own tables.

    ``Index.sync`` alone can lose an object when the pack its entry names is
    deleted while another pack, already indexed, holds a copy; a rebuild
    cannot. ``tocs`` (pack id to table) saves reading tables already read.

    Raises:
        LocalIOError: the index file cannot be written.
    """
    fresh = Index(repo.index.path)
    fresh.dirty = True
    if tocs is None:
        repo.bad_packs = fresh.sync(repo.store, repo.codec)
    else:
        for pack_id in sorted(tocs):
            fresh.add_pack(pack_id, tocs[pack_id])
    fresh.save()
    repo.index = fresh


def refresh_index(repo: Repository) -> None:
    """Bring the index up to date after packs may have been pruned.

    Used by a backup once it holds the shared repository lock: objects of
    deleted packs must not be taken as already stored.
    """
    present = {
        p for n in repo.store.list("data/") if (p := pack_id_from_name(n)) is not None
    }
    if any(p not in present for p in repo.index.packs):
        rebuild_index(repo)
        return
    repo.bad_packs = repo.index.sync(repo.store, repo.codec)
    repo.index.save()


# -- driver --------------------------------------------------------------------


def prune_repository(
    repo: Repository,
    *,
    dry_run: bool = False,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
    guard: Guard | None = None,
) -> PruneResult:
    """Mark, plan and (unless ``dry_run``) sweep. The caller holds the lock.

    Raises:
        IntegrityError: a manifest or tree object is damaged, or the snapshot
            list is older than this vault has seen: nothing is swept.
        MisuseError: no snapshots at all, or a threshold outside 0..1.
        LockedError: ``guard`` found the lock lost.
        StoreError, LocalIOError: the store failed; rerun prune.
    """
    started = time.monotonic()
    try:
        manifests = repo.snapshots()
    except VaultstoreError as exc:
        raise IntegrityError(
            f"prune refused: a manifest cannot be read ({exc.message}); "
            "run `vaultstore check`"
        ) from exc
    if not manifests and any(True for _ in repo.store.list("data/")):
        # An empty listing may be a wrong prefix or a store fault, not a user's
        # wish: deleting every pack on its word is not undoable.
        raise MisuseError(
            "prune refused: the repository has data but no snapshots; "
            "delete the repository instead if that is what you want"
        )
    repo.latest()  # refuses a rollback below this vault's high-water mark
    refresh_index(repo)  # opened before the lock was taken: packs may differ
    live = mark_live(repo, manifests)
    plan = survey(repo, manifests, live, repack_threshold)
    written = {} if dry_run else sweep(repo, plan, guard)
    count = len(written)
    if dry_run:  # estimated: the copied bytes in packs of the usual size
        count = -(-sum(u.kept_bytes for u in plan.repack) // repo.pack_size)
    result = _result(plan, dry_run, count, repack_threshold, started)
    if not dry_run:
        result.bytes_after = sum(u.size for u in plan.keep) + sum(written.values())
        result.bytes_freed = result.bytes_before - result.bytes_after
    log.info(
        "prune%s: %d packs deleted, %d repacked, %d bytes freed",
        " (dry run)" if dry_run else "",
        result.packs_deleted,
        result.packs_repacked,
        result.bytes_freed,
        extra={"event": "repo.prune.done", **result.as_dict()},
    )
    return result


def _result(
    plan: PrunePlan, dry_run: bool, written: int, threshold: float, started: float
) -> PruneResult:
    every = [*plan.keep, *plan.delete, *plan.repack]
    before = sum(u.size for u in every)
    removed_packs = [*plan.delete, *plan.repack]
    kept_objects = sum(len(u.kept) for u in every)
    repacked_bytes = sum(u.kept_bytes for u in plan.repack)
    # Without writing, the new packs' size is estimated by the bytes they copy.
    after = before - sum(u.size for u in removed_packs) + repacked_bytes
    return PruneResult(
        dry_run=dry_run,
        snapshots=plan.snapshots,
        live_objects=plan.live_objects,
        packs_before=len(every) + len(plan.unreadable),
        packs_after=len(plan.keep) + len(plan.unreadable) + written,
        packs_deleted=len(plan.delete),
        packs_repacked=len(plan.repack),
        packs_written=written,
        objects_kept=kept_objects,
        objects_removed=sum(u.objects for u in every) - kept_objects,
        bytes_before=before,
        bytes_after=after,
        bytes_freed=before - after,
        repack_threshold=threshold,
        unreadable_packs=[p.hex() for p, _ in plan.unreadable],
        missing_objects=plan.missing,
        duration_s=time.monotonic() - started,
    )
