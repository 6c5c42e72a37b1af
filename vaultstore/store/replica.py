"""Several destinations behind one Store: a primary and catch-up secondaries.

Writes go to the primary first and must succeed there. Each secondary then
gets the same write; a secondary that fails is logged
(``store.secondary_failed``), marked *behind* in a small state file, and
receives no further writes in this run. Skipping it matters: a manifest
must never reach a destination that lacks objects the manifest references.
Reads are served by the primary.

A behind secondary is brought up to date by :func:`sync` (through
:meth:`ReplicatedStore.catch_up`): list both sides, copy every name the
secondary lacks. Objects are write-once, so a name present on both sides is
the same object and is not compared. Manifests (``snapshots/``) are copied
after everything else, so a secondary only ever publishes a snapshot whose
objects it already holds. ``locks/`` is never copied nor mirrored: locks
belong to the destination they were taken on.

State file (JSON, written with temp file → fsync → rename → directory fsync,
mode 0600)::

    {"format": "vaultstore-replica-state", "version": 1,
     "behind": {"<secondary url>": {"since": <unix seconds>,
                                    "first_failed": "<object name>",
                                    "error": "<message>"}}}

Accepted versions: 1. A secondary listed there stays behind (and unwritten)
until a catch-up of it succeeds.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultstore.errors import (
    InputError,
    LocalIOError,
    ObjectExistsError,
    StoreError,
    UnsupportedVersionError,
)
from vaultstore.store.base import Store
from vaultstore.store.local import LocalStore

log = logging.getLogger(__name__)

STATE_FORMAT = "vaultstore-replica-state"
STATE_VERSION = 1
MANIFEST_PREFIX = "snapshots/"
SKIPPED_PREFIXES = ("locks/",)


@dataclass
class SyncResult:
    """What one :func:`sync` copied (and, if asked, deleted)."""

    source: str
    target: str
    copied: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    deleted: list[str] = field(default_factory=list)


def sync(primary: Store, secondary: Store, *, delete_extra: bool = False) -> SyncResult:
    """Copy to ``secondary`` every object it lacks; manifests last.

    With ``delete_extra``, names the primary no longer has (pruned) are
    removed from the secondary, manifests first, so the secondary never
    holds a manifest whose objects were deleted.

    Raises:
        StoreError, LocalIOError: either side failed; what was copied stays.
    """
    result = SyncResult(source=primary.url, target=secondary.url)
    # Manifests are listed before the objects: a manifest is written after
    # everything it references, so every object of a manifest seen here is in
    # the second listing even while a backup is writing to the primary.
    manifests = _copyable(primary.list(MANIFEST_PREFIX))
    wanted = [
        name
        for name in _copyable(primary.list())
        if not name.startswith(MANIFEST_PREFIX)
    ]
    wanted += manifests
    present = set(_copyable(secondary.list()))
    missing = [name for name in wanted if name not in present]
    # Everything a manifest may reference first, then the manifests.
    missing.sort(key=lambda name: (name.startswith(MANIFEST_PREFIX), name))
    for name in missing:
        data = primary.get(name)
        try:
            secondary.put(name, data)
        except ObjectExistsError:
            continue  # written meanwhile; write-once names hold one content
        result.copied.append(name)
        result.bytes_copied += len(data)

    if delete_extra:
        extra = sorted(present - set(wanted))
        extra.sort(key=lambda name: (not name.startswith(MANIFEST_PREFIX), name))
        for name in extra:
            secondary.delete(name)
            result.deleted.append(name)

    log.info(
        "synced %s → %s: %d objects, %d bytes copied, %d deleted",
        primary.url,
        secondary.url,
        len(result.copied),
        result.bytes_copied,
        len(result.deleted),
        extra={
            "event": "store.synced",
            "target": secondary.url,
            "copied": len(result.copied),
            "bytes": result.bytes_copied,
            "deleted": len(result.deleted),
        },
    )
    return result


def _copyable(names: Iterator[str]) -> list[str]:
    return [n for n in names if not n.startswith(SKIPPED_PREFIXES)]


class ReplicatedStore:
    """A primary Store mirrored, best effort, to secondary Stores."""

    def __init__(
        self, primary: Store, secondaries: Sequence[Store], state_path: str | Path
    ) -> None:
        self.primary = primary
        self.secondaries = list(secondaries)
        self.url = primary.url
        self.state_path = Path(state_path)
        self._behind: dict[str, dict[str, Any]] = self._load_state()

    def __repr__(self) -> str:
        urls = ", ".join(s.url for s in self.secondaries)
        return f"ReplicatedStore({self.primary.url!r} → [{urls}])"

    # -- status --------------------------------------------------------------

    @property
    def failed_destinations(self) -> list[str]:
        """URLs of secondaries that are behind the primary."""
        current = {s.url for s in self.secondaries}
        return sorted(url for url in self._behind if url in current)

    @property
    def partial(self) -> bool:
        """Whether some secondary lacks what the primary holds (exit code 6)."""
        return bool(self.failed_destinations)

    def _active(self) -> list[Store]:
        return [s for s in self.secondaries if s.url not in self._behind]

    def _mirrors(self, name: str) -> list[Store]:
        # Locks (and their heartbeats) stay on the primary, where they are taken.
        return [] if name.startswith(SKIPPED_PREFIXES) else self._active()

    def _mark_behind(self, store: Store, name: str, exc: Exception) -> None:
        log.warning(
            "secondary destination %s failed on %s: %s; it will be caught up later",
            store.url,
            name,
            exc,
            extra={
                "event": "store.secondary_failed",
                "destination": store.url,
                "object": name,
                "error": type(exc).__name__,
            },
        )
        self._behind[store.url] = {
            "since": int(time.time()),
            "first_failed": name,
            "error": str(exc),
        }
        self._save_state()

    # -- Store protocol: writes fan out --------------------------------------

    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None:
        """Write to the primary (must succeed), then to each active secondary.

        Raises:
            ObjectExistsError: ``name`` exists on the primary.
            StoreError, LocalIOError: the primary failed.
        """
        self.primary.put(name, data, overwrite=overwrite)
        for store in self._mirrors(name):
            try:
                store.put(name, data, overwrite=overwrite)
            except ObjectExistsError as exc:
                # Left by an earlier catch-up or partial run; fine if identical.
                if not self._holds(store, name, data):
                    self._mark_behind(store, name, exc)
            except (StoreError, LocalIOError) as exc:
                self._mark_behind(store, name, exc)

    def _holds(self, store: Store, name: str, data: bytes) -> bool:
        try:
            return store.get(name) == data
        except (StoreError, LocalIOError):
            return False

    def delete(self, name: str) -> None:
        """Delete on the primary, then on each active secondary.

        Raises:
            StoreError, LocalIOError: the primary failed.
        """
        self.primary.delete(name)
        for store in self._mirrors(name):
            try:
                store.delete(name)
            except (StoreError, LocalIOError) as exc:
                self._mark_behind(store, name, exc)

    # -- Store protocol: reads from the primary -------------------------------

    def get(self, name: str) -> bytes:
        """The whole object, from the primary."""
        return self.primary.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """A byte range, from the primary."""
        return self.primary.get_range(name, offset, length)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names on the primary under ``prefix``, sorted."""
        return self.primary.list(prefix)

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists on the primary."""
        return self.primary.exists(name)

    def size(self, name: str) -> int:
        """Size on the primary."""
        return self.primary.size(name)

    # -- catching up ----------------------------------------------------------

    @property
    def behind(self) -> dict[str, dict[str, Any]]:
        """Secondary URL → what is recorded about its failure (a copy)."""
        current = {s.url for s in self.secondaries}
        return {url: dict(v) for url, v in self._behind.items() if url in current}

    def catch_up(
        self, *, delete_extra: bool = False, every_secondary: bool = False
    ) -> builtins.list[SyncResult]:
        """Sync every behind secondary; those that succeed become active again.

        With ``every_secondary``, secondaries not known to be behind are synced
        too (``vaultstore sync``: they may lack objects another process wrote).
        A secondary that still fails stays behind (logged, never raised).
        """
        results: list[SyncResult] = []
        for store in self.secondaries:
            if store.url not in self._behind and not every_secondary:
                continue
            try:
                results.append(sync(self.primary, store, delete_extra=delete_extra))
            except (StoreError, LocalIOError) as exc:
                self._mark_behind(store, "(catch-up)", exc)
                continue
            if self._behind.pop(store.url, None) is None:
                continue
            self._save_state()
            log.info(
                "secondary destination %s caught up",
                store.url,
                extra={"event": "store.secondary_caught_up", "destination": store.url},
            )
        return results

    # -- state file -------------------------------------------------------------

    def _load_state(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LocalIOError(
                f"cannot read {self.state_path}: {exc.strerror}",
                path=str(self.state_path),
            ) from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise InputError(
                f"{self.state_path} is not valid JSON", path=str(self.state_path)
            ) from exc
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise InputError(
                f"{self.state_path} is not a replica state file",
                path=str(self.state_path),
            )
        if doc.get("version") != STATE_VERSION:
            raise UnsupportedVersionError(
                f"{self.state_path}: unsupported version {doc.get('version')!r}",
                path=str(self.state_path),
            )
        behind = doc.get("behind")
        if not isinstance(behind, dict) or not all(
            isinstance(v, dict) for v in behind.values()
        ):
            raise InputError(
                f"{self.state_path}: malformed 'behind' field",
                path=str(self.state_path),
            )
        return behind

    def _save_state(self) -> None:
        doc = {"format": STATE_FORMAT, "version": STATE_VERSION, "behind": self._behind}
        data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
        # The same temp → fsync → rename → directory fsync path as objects.
        LocalStore(self.state_path.parent).put(
            self.state_path.name, data, overwrite=True
        )
