"""``check``: verify every pack, manifest, chain link and referenced object.

Works from the packs' own tables of contents, not the index cache, so a
damaged index cannot hide a damaged pack. Each problem names the pack, object
or manifest, and lists every snapshot that depends on it (directly, or
through the chain of an incremental).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from vaultstore.errors import IntegrityError, VaultstoreError
from vaultstore.model import records_digest_sum
from vaultstore.repo import tree
from vaultstore.repo.manifest import Manifest, manifest_name
from vaultstore.repo.objects import BATCH, CHANGES, LEAF, ROOT, decode_batch, describe
from vaultstore.repo.pack import (
    TocEntry,
    pack_id_from_name,
    pack_name,
    read_toc,
    verify_header,
)

if TYPE_CHECKING:
    from vaultstore.repo.repository import CheckReport, Problem, Repository

log = logging.getLogger(__name__)


class Checker:
    def __init__(self, repo: Repository, read_data: bool) -> None:
        from vaultstore.repo.repository import CheckReport

        self.repo = repo
        self.read_data = read_data
        self.report = CheckReport(read_data=read_data)
        self.problems: dict[str, Problem] = {}
        self.where: dict[bytes, tuple[bytes, TocEntry]] = {}
        self.bad_objects: dict[bytes, str] = {}  # oid -> problem key
        self.status: dict[bytes, frozenset[str]] = {}

    def _problem(self, what: str, message: str) -> str:
        from vaultstore.repo.repository import Problem

        if what not in self.problems:
            self.problems[what] = Problem(what, message)
            log.warning(
                "check: %s: %s", what, message, extra={"event": "repo.check.problem"}
            )
        return what

    def run(self) -> CheckReport:
        self._check_packs()
        manifests = self._check_manifests()
        direct: dict[int, set[str]] = {}
        for m in manifests.values():
            direct[m.seq] = self._snapshot_objects(m)
        by_id = {m.id: m for m in manifests.values()}
        for m in manifests.values():
            keys = set(direct[m.seq])
            cur = m
            while cur.type != "full":
                parent = by_id.get(cur.parent or "")
                if parent is None or parent.seq >= cur.seq:
                    keys.add(
                        self._problem(
                            f"snapshot {m.seq}", "its parent is missing or damaged"
                        )
                    )
                    break
                if (
                    parent.lsn_end != cur.lsn_start
                    or parent.digest_after != cur.digest_before
                ):
                    keys.add(
                        self._problem(
                            f"snapshot {cur.seq}",
                            "does not continue its parent (LSN or digest)",
                        )
                    )
                keys |= direct[parent.seq]
                cur = parent
            for key in keys:
                self.problems[key].snapshots.add(f"{m.seq}:{m.id[:16]}")
            if self.read_data and not keys:
                self._check_state(m)
        self.report.snapshots = len(manifests)
        self.report.problems = list(self.problems.values())
        return self.report

    def _check_state(self, m: Manifest) -> None:
        """Recompute a sound snapshot's state as a restore would read it.

        The records' digest must equal the manifest's ``digest_after``, their
        number its ``agents`` and their lifecycle states its ``states``; each
        record must be the agent's that the tree files it under.
        """
        from vaultstore.journal import record_census

        total = count = 0
        states: Counter[str] = Counter()
        what = f"snapshot {m.seq}"
        try:
            for agents, records in self.repo.iter_state_columns(m):
                found, found_states = record_census(records)
                if found != agents:
                    pairs = zip(agents, found, strict=False)
                    stray = next((a for a, b in pairs if a != b), (agents or ["?"])[-1])
                    self._tag(
                        what,
                        f"the record filed under agent {stray!r} is another's",
                        m,
                    )
                    return
                states.update(found_states)
                count += len(records)
                total += records_digest_sum(records)
        except IntegrityError as exc:
            self._tag(what, f"its state does not read back: {exc.message}", m)
            return
        self.report.states_verified += 1
        if (total % (1 << 256)).to_bytes(32, "big") != m.digest_after:
            self._tag(what, "its records do not match its state digest", m)
        elif count != m.agents:
            self._tag(what, f"holds {count} agents, its manifest says {m.agents}", m)
        elif m.states is not None and dict(states) != m.states:
            self._tag(what, "its counts by lifecycle state differ from its manifest", m)

    def _tag(self, what: str, message: str, m: Manifest) -> None:
        self.problems[self._problem(what, message)].snapshots.add(
            f"{m.seq}:{m.id[:16]}"
        )

    def _check_packs(self) -> None:
        store, codec = self.repo.store, self.repo.codec
        for name in store.list("data/"):
            pack_id = pack_id_from_name(name)
            if pack_id is None:
                self.report.warnings.append(f"unexpected file {name}")
                continue
            self.report.packs += 1
            try:
                verify_header(store, pack_id)
                entries = read_toc(store, codec, pack_id)
            except VaultstoreError as exc:
                self._problem(f"pack {pack_id.hex()}", exc.message)
                continue
            data = store.get(name) if self.read_data else b""
            for e in entries:
                self.report.objects += 1
                if e.oid in self.where:
                    self.report.warnings.append(
                        describe(e.kind, e.oid)
                        + f" stored twice, again in {pack_id.hex()}"
                    )
                    continue
                self.where[e.oid] = (pack_id, e)
                if self.read_data:
                    try:
                        plain = codec.open(
                            e.kind, e.oid, data[e.offset : e.offset + e.length]
                        )
                        if e.kind == BATCH:
                            decode_batch(plain, describe(e.kind, e.oid))
                    except IntegrityError as exc:
                        key = self._problem(
                            describe(e.kind, e.oid) + f" in pack {pack_id.hex()}",
                            exc.message,
                        )
                        self.bad_objects[e.oid] = key

    def _check_manifests(self) -> dict[int, Manifest]:
        out: dict[int, Manifest] = {}
        for seq in self.repo._seqs():
            name = manifest_name(seq)
            try:
                out[seq] = self.repo.manifests.decode(self.repo.store.get(name), name)
            except VaultstoreError as exc:
                key = self._problem(f"manifest {name}", exc.message)
                self.problems[key].snapshots.add(str(seq))
        try:
            self.repo.latest()
        except VaultstoreError as exc:
            self._problem("latest snapshot", exc.message)
        return out

    def _snapshot_objects(self, m: Manifest) -> set[str]:
        keys: set[str] = set()
        if m.type == "full" and m.root is not None:
            keys |= self._object(ROOT, m.root)
        for oid in m.changes:
            keys |= self._object(CHANGES, oid)
        return keys

    def _object(self, kind: int, oid: bytes) -> frozenset[str]:
        cached = self.status.get(oid)
        if cached is not None:
            return cached
        self.status[oid] = frozenset()  # guards against reference cycles
        result = frozenset(self._visit(kind, oid))
        self.status[oid] = result
        return result

    def _visit(self, kind: int, oid: bytes) -> set[str]:
        found = self.where.get(oid)
        if oid in self.bad_objects:
            return {self.bad_objects[oid]}
        if found is None:
            return {self._problem(describe(kind, oid), "is missing from every pack")}
        pack_id, entry = found
        if entry.kind != kind:
            return {self._problem(describe(kind, oid), "is stored as another kind")}
        if kind == BATCH:
            return set()
        what = describe(kind, oid)
        try:
            sealed = self.repo.store.get_range(
                pack_name(pack_id), entry.offset, entry.length
            )
            plain = self.repo.codec.open(kind, oid, sealed)
            keys: set[str] = set()
            if kind == ROOT:
                root = tree.decode_root(plain, what)
                if root.base is not None:
                    keys |= self._object(ROOT, root.base)
                    ids = root.changed_ids
                else:
                    ids = root.table
                for at in range(0, len(ids), tree.ID_SIZE):
                    lid = ids[at : at + tree.ID_SIZE]
                    if lid != tree.EMPTY:
                        keys |= self._object(LEAF, lid)
                return keys
            for _agent, batch, _slot in tree.decode_entries(plain, what):
                if batch is not None:
                    keys |= self._object(BATCH, batch)
            return keys
        except VaultstoreError as exc:
            return {self._problem(what + f" in pack {pack_id.hex()}", exc.message)}
