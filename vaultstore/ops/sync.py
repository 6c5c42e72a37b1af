"""Bring every secondary destination up to date with the primary.

``vaultstore sync`` and the start of every backup use this. Objects are
write-once, so a secondary is repaired by copying the names it lacks; the
manifests (``snapshots/``) go last, so a secondary never publishes a snapshot
whose objects it does not hold yet (see :mod:`vaultstore.store.replica`). No
key is needed: nothing is decrypted, the bytes are copied as stored.

A secondary that cannot be reached stays recorded as *behind* in the vault's
replica state file; the command then exits with the "partial" code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from vaultstore.store.replica import ReplicatedStore

log = logging.getLogger(__name__)


@dataclass
class DestinationSync:
    """What one secondary received, or why it could not be reached."""

    url: str
    ok: bool
    copied: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        manifests = [n for n in self.copied if n.startswith("snapshots/")]
        return {
            "url": self.url,
            "ok": self.ok,
            "objectsCopied": len(self.copied),
            "manifestsCopied": manifests,
            "bytesCopied": self.bytes_copied,
            "error": self.error,
        }


@dataclass
class SyncReport:
    """The outcome of one sync over every secondary."""

    primary: str
    destinations: list[DestinationSync] = field(default_factory=list)

    @property
    def failed_destinations(self) -> list[str]:
        """URLs of secondaries still behind after this sync."""
        return [d.url for d in self.destinations if not d.ok]

    @property
    def partial(self) -> bool:
        """Whether some secondary is still behind (the "partial" exit code)."""
        return bool(self.failed_destinations)

    def as_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "destinations": [d.as_dict() for d in self.destinations],
            "partial": self.partial,
            "failedDestinations": self.failed_destinations,
        }


def sync_secondaries(store: ReplicatedStore) -> SyncReport:
    """Copy to every secondary of ``store`` whatever it lacks; never raises for one.

    A secondary that fails stays recorded as behind (and is named in the report);
    one that succeeds is active again for the next backup.
    """
    results = {r.target: r for r in store.catch_up(every_secondary=True)}
    behind = store.behind
    report = SyncReport(primary=store.primary.url)
    for secondary in store.secondaries:
        done = results.get(secondary.url)
        if done is not None and secondary.url not in behind:
            report.destinations.append(
                DestinationSync(
                    secondary.url, True, list(done.copied), done.bytes_copied
                )
            )
            continue
        error = str(behind.get(secondary.url, {}).get("error") or "unreachable")
        report.destinations.append(DestinationSync(secondary.url, False, error=error))
    log.info(
        "sync finished: %d destinations, %d still behind",
        len(report.destinations),
        len(report.failed_destinations),
        extra={
            "event": "sync.done",
            "destinations": len(report.destinations),
            "behind": report.failed_destinations,
        },
    )
    return report
