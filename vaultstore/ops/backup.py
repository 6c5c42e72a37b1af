"""Backup operations: create or open a vault's repository, take a snapshot.

A backup holds the vault lock (one writer per vault) and a shared repository
lock (``locks/shared-<token>``, with a heartbeat), so it never runs while
``prune`` or ``forget`` holds the exclusive one: it exits "locked" (5) at once
instead of waiting. Once it holds the lock it refreshes the index cache, so an
object of a pack pruned since the repository was opened is not taken as
stored. It reads the journal in one read view, writes objects, then publishes
the manifest; the seed envelope comes from the vault, so no second KDF runs.
The index cache lives in the vault at ``cache/<repo-id>/index``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from vaultstore.locks import RepositoryLock, VaultLock, this_host
from vaultstore.repo.manifest import FULL, INCREMENTAL
from vaultstore.repo.prune import refresh_index
from vaultstore.repo.repository import BackupResult, Repository
from vaultstore.store.base import Store
from vaultstore.vault import Vault

log = logging.getLogger(__name__)

KINDS = (FULL, INCREMENTAL)


def cache_dir(vault_dir: Path) -> Path:
    """Where a vault keeps its per-repository caches."""
    return Path(vault_dir) / "cache"


def init_repository(vault: Vault, store: Store, password: str) -> Repository:
    """Create a repository at ``store`` with its own master key under ``password``.

    Raises:
        MisuseError: the store already holds a repository.
        WeakPasswordError: the password fails the password rule.
    """
    return Repository.init(
        store, password, vault.profile, cache_dir(vault.path), meta=vault.journal
    )


def open_repository(vault: Vault, store: Store, password: str) -> Repository:
    """Open the repository at ``store`` for this vault (one KDF run).

    Raises:
        NotFoundError: no repository there.
        WrongPasswordError: no key file opens with ``password``.
    """
    return Repository.open(
        store, password, cache_dir(vault.path), vault.profile, meta=vault.journal
    )


def run_backup(
    vault: Vault,
    repo: Repository,
    kind: str,
    *,
    host: str | None = None,
    now_ms: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BackupResult:
    """Take one ``full`` or ``incremental`` snapshot of the vault's journal.

    Raises:
        LockedError: another process holds the vault lock, prune or forget
            holds the repository's exclusive lock, or a publish race was lost.
        MisuseError: an incremental with no earlier snapshot.
        IntegrityError: a rollback of the repository, or a damaged parent.
    """
    command = f"backup --{kind}"
    with VaultLock(vault.path, command).acquire():
        with RepositoryLock(repo.store, command, exclusive=False).acquire() as lock:
            lock.start_heartbeat()
            refresh_index(repo)
            envelope = vault.seed_envelope()
            return repo.backup(
                vault.journal,
                kind,
                envelope,
                host or this_host(),
                now_ms if now_ms is not None else int(time.time() * 1000),
                progress,
            )
