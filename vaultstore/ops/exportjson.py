"""Export state as a legacy wallet-backup JSON file.

Sources: any iterable of records (:func:`export_records`), a repository
snapshot (:func:`export_snapshot`: a full exports the whole state at that
snapshot, an incremental the records changed since its parent), or the
vault's current state (:func:`export_vault`).

Order: records are written in the order the source yields them — tree order
(``tree_key``) for the vault and for repository snapshots. The legacy service
does not depend on array order, and sorting by derivationIndex would hold
every record (about 1 GB at 1M agents) in memory or need an external sort;
streaming in tree order keeps memory flat.

Unlike the legacy service, a full export includes archived agents'
lifecycle records, and an incremental carries every change (reactivations,
archivals, metadata edits). A removal (tombstone) cannot be expressed in the
legacy format; it is skipped and counted.

The seed goes into the legacy PBKDF2 envelope under the given password. Its
32-byte salt is written beside the file as ``encryption-salt`` (0600); an
existing valid salt file there is reused, so that earlier exports in the same
directory stay decryptable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from vaultstore import durable
from vaultstore.compat.legacy import write_legacy
from vaultstore.crypto.legacy import encrypt_legacy_seed, new_salt
from vaultstore.errors import InputError, NotFoundError
from vaultstore.model import Record, decode_record
from vaultstore.ops.verifyjson import SALT_FILE, load_salt

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    """What an export wrote."""

    file: str
    salt_file: str
    type: str
    timestamp: int
    checksum: str
    records: int = 0
    skipped_removals: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_path(timestamp_ms: int, directory: Path | str = "backups") -> Path:
    """``./backups/wallet-backup-<ms>.json``."""
    return Path(directory) / f"wallet-backup-{timestamp_ms}.json"


def salt_beside(path: Path) -> tuple[bytes, Path]:
    """The ``encryption-salt`` beside ``path``: reused if valid, else created.

    Raises:
        LocalIOError: the salt file cannot be written.
    """
    salt_path = path.parent / SALT_FILE
    try:
        return load_salt(None, path), salt_path
    except NotFoundError:
        pass
    except InputError:
        raise InputError(
            f"{salt_path} exists but is not a 32-byte salt; move it away first"
        ) from None
    salt = new_salt()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise durable.io_error(str(salt_path), exc, path=str(salt_path)) from exc
    durable.write_atomic(salt_path, salt, fault="legacy.salt.before-rename")
    return salt, salt_path


class _Counted:
    """Decodes record bytes, skipping removals and counting both."""

    def __init__(self, items: Iterable[Record | bytes | None]) -> None:
        self.items = items
        self.records = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[Record]:
        for item in self.items:
            if item is None:
                self.skipped += 1
                continue
            record = decode_record(item) if isinstance(item, bytes) else item
            self.records += 1
            yield record


def export_records(
    path: Path | str,
    records: Iterable[Record | bytes | None],
    *,
    backup_type: str,
    mnemonic: str,
    password: str,
    salt: bytes | None = None,
    timestamp_ms: int | None = None,
) -> ExportReport:
    """Write ``records`` (Record, record bytes, or None for a removal) as a legacy file.

    Raises:
        WeakPasswordError: the password fails the password rule.
        LocalIOError: a file cannot be written.
    """
    path = Path(path)
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    if salt is None:
        salt, salt_path = salt_beside(path)
    else:
        salt_path = path.parent / SALT_FILE
    envelope = encrypt_legacy_seed(mnemonic, password, salt)
    counted = _Counted(records)
    checksum = write_legacy(
        path,
        timestamp_ms=ts,
        backup_type=backup_type,
        encrypted_seed=envelope,
        records=counted,
    )
    report = ExportReport(
        file=str(path),
        salt_file=str(salt_path),
        type=backup_type,
        timestamp=ts,
        checksum=checksum,
        records=counted.records,
        skipped_removals=counted.skipped,
    )
    if counted.skipped:
        log.warning(
            "%d removed agent(s) cannot be expressed in a legacy file; skipped",
            counted.skipped,
            extra={"event": "legacy.export.removals", "count": counted.skipped},
        )
    return report


class VaultLike(Protocol):
    journal: Any

    def mnemonic(self) -> str: ...


def export_vault(
    vault: VaultLike,
    path: Path | str | None,
    password: str,
    *,
    timestamp_ms: int | None = None,
) -> ExportReport:
    """Export the vault's current state as a full legacy file (tree order)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    target = Path(path) if path is not None else default_path(ts)
    mnemonic = vault.mnemonic()
    with vault.journal.read_view() as view:
        # Tombstones (removed agents) are simply absent from a full export.
        rows = (d for _, _, _, d in view.iter_by_tree_key() if d is not None)
        return export_records(
            target,
            rows,
            backup_type="full",
            mnemonic=mnemonic,
            password=password,
            timestamp_ms=ts,
        )


class RepositoryLike(Protocol):
    def resolve(self, spec: str = "latest", at_ms: int | None = None) -> list[Any]: ...

    def iter_state(self, manifest: Any) -> Iterator[bytes]: ...

    def iter_changes(self, manifest: Any) -> Iterator[tuple[str, bytes | None]]: ...


def export_snapshot(
    repo: RepositoryLike,
    spec: str,
    path: Path | str | None,
    mnemonic: str,
    password: str,
) -> ExportReport:
    """Export snapshot ``spec`` (a full: the whole state; an incremental: its changes).

    The file's timestamp is the snapshot's time.
    """
    chain = repo.resolve(spec)
    head = chain[-1]
    target = Path(path) if path is not None else default_path(head.time_ms)
    if head.type == "full":
        items: Iterable[bytes | None] = repo.iter_state(head)
    else:
        items = (data for _, data in repo.iter_changes(head))
    return export_records(
        target,
        items,
        backup_type="full" if head.type == "full" else "incremental",
        mnemonic=mnemonic,
        password=password,
        timestamp_ms=head.time_ms,
    )
