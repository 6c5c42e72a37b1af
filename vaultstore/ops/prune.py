"""The ``prune`` operation: free the space of snapshots ``forget`` removed.

Prune holds the repository's exclusive lock (``locks/exclusive``) for the
whole run (a dry run: a shared one), with a heartbeat, so no backup (shared
lock) and no ``forget`` runs at the same time; it checks that the lock is still
its own before writing new packs and before deleting. The mark, sweep and
repack logic is in ``vaultstore.repo.prune``.
"""

from __future__ import annotations

import logging

from vaultstore.locks import RepositoryLock
from vaultstore.repo.prune import (
    DEFAULT_REPACK_THRESHOLD,
    PruneResult,
    prune_repository,
)
from vaultstore.repo.repository import Repository

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_REPACK_THRESHOLD", "PruneResult", "prune"]


def prune(
    repo: Repository,
    *,
    dry_run: bool = False,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
) -> PruneResult:
    """Delete packs no snapshot references; repack mostly-dead ones.

    Raises:
        LockedError: a backup, forget or prune holds the repository lock
            (exit 5), or the lock was lost while pruning.
        IntegrityError: a manifest or tree object is damaged: nothing deleted.
        MisuseError: ``repack_threshold`` outside 0..1.
        StoreError, LocalIOError: the store failed; rerunning is safe.
    """
    # A dry run changes nothing, so it only keeps forget and prune out (shared);
    # backups may run meanwhile, and their unpublished objects then count as
    # garbage in its estimate.
    command = "prune --dry-run" if dry_run else "prune"
    lock = RepositoryLock(repo.store, command, exclusive=not dry_run).acquire()
    try:
        lock.start_heartbeat()
        return prune_repository(
            repo,
            dry_run=dry_run,
            repack_threshold=repack_threshold,
            guard=lock.refresh,
        )
    finally:
        lock.release()
