"""Import legacy wallet-backup JSON files into the vault.

Order of work, so that a bad file leaves nothing behind:

1. Read every file's header; sort the files by timestamp (a full, then its
   incrementals). An incremental with no full before it (in the files given,
   or an existing non-empty vault) is refused unless ``allow_partial``.
2. For every file: decrypt the seed (PBKDF2 under the password and the
   ``encryption-salt``) and require the same mnemonic in every file (and in
   the vault, if it exists).
3. One streaming pass per file: the reader validates every record and
   computes the checksum while a pool of worker processes re-derives every
   wallet's addresses from the seed. Only when a file's checksum, structure
   and every address check out does the next file start.

Where the records go depends on whether the vault exists:

- **A new vault** (the usual migration or disaster-recovery case): the records
  are spooled, per section, into sorted runs in a staging directory beside
  the vault's path (:mod:`vaultstore.compat.spool`). Once every file has
  checked out, the runs are merged into one record per agent in tree order —
  per agent the last wallet, lifecycle record and balance list in file order,
  exactly what applying them one by one would leave — and loaded with
  :meth:`Journal.bulk_load` as the journal's base state (``base_lsn`` = the
  number of items read, no events), as a restore loads a snapshot. Then the
  seed is sealed into the staging vault (:meth:`Vault.adopt`) and the
  directory is renamed into place. Any failure removes the staging
  directory; a killed import leaves only ``.NAME.import-*``.
- **An existing vault**: one journal transaction for all files, each record
  applied as it is read (lifecycle records as *recorded states*,
  ``legacy=True``: a jump the live state machine would refuse is applied with
  a warning, which the spool's join logs too), committed only when every
  file has checked out; any failure rolls it back.

Why the bulk load: the writer validated, looked up and rewrote each agent's
projection row once per item (three times per agent) and logged every item
as an event; the load writes each record once, appending in tree order.

Import upserts: agents already in the vault and absent from a file are left
as they are (a legacy full does not express removals; archived agents'
records are often missing from it).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vaultstore import durable, faults
from vaultstore.compat.legacy import (
    LegacyHeader,
    LegacyReader,
    checksum_mismatch_message,
)
from vaultstore.compat.spool import SLOTS, RecordSpool
from vaultstore.crypto.derive import CHUNK_SIZE, Wallet, verify_wallet_chunks
from vaultstore.crypto.password import check_password
from vaultstore.crypto.seed import normalize_mnemonic
from vaultstore.errors import (
    AddressMismatchError,
    InputError,
    IntegrityError,
    MisuseError,
)
from vaultstore.journal import Event, Journal, Writer
from vaultstore.model import validate_agent_id
from vaultstore.ops.verifyjson import (
    decrypt_file_seed,
    load_salt,
    peek_header,
)
from vaultstore.vault import Vault

log = logging.getLogger(__name__)

SPOOL_DIR = "import-spool"  # in the staging directory; removed once loaded


@dataclass
class ImportReport:
    """What an import did."""

    vault: str
    created_vault: bool = False
    files: list[dict[str, Any]] = field(default_factory=list)
    wallets: int = 0
    lifecycle_records: int = 0
    balance_lists: int = 0
    last_lsn: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def order_files(paths: Sequence[Path]) -> list[tuple[Path, LegacyHeader]]:
    """The files with their headers, oldest first (fulls first on a tie)."""
    headed = [(Path(p), peek_header(p)) for p in paths]
    headed.sort(key=lambda ph: (ph[1].timestamp, ph[1].type != "full"))
    return headed


def import_json(
    vault_path: Path | str,
    paths: Sequence[Path | str],
    password: str,
    *,
    salt_file: Path | None = None,
    allow_partial: bool = False,
    profile: str = "production",
    workers: int = 2,
) -> ImportReport:
    """Verify and apply every file, all or nothing (see the module notes).

    Raises:
        IntegrityError: a checksum fails, or a file's seed differs.
        AddressMismatchError: wallets do not derive from the seed (named).
        WrongPasswordError: the password does not open a file's seed.
        MisuseError: an incremental without a preceding full.
        InputError, UnsupportedVersionError: a malformed or unknown file.
    """
    if not paths:
        raise MisuseError("import-json needs at least one file")
    vault_path = Path(vault_path)
    files = order_files([Path(p) for p in paths])
    importer = _import_into if _vault_exists(vault_path) else _import_new
    report = importer(
        vault_path, files, password, salt_file, allow_partial, profile, workers
    )
    log.info(
        "imported %d legacy file(s): %d wallets, %d lifecycle, %d balance lists",
        len(files),
        report.wallets,
        report.lifecycle_records,
        report.balance_lists,
        extra={"event": "legacy.import", "files": len(files), "lsn": report.last_lsn},
    )
    return report


def _import_into(
    vault_path: Path,
    files: list[tuple[Path, LegacyHeader]],
    password: str,
    salt_file: Path | None,
    allow_partial: bool,
    profile: str,
    workers: int,
) -> ImportReport:
    """Upsert into an existing vault: one journal transaction for all files."""
    vault = Vault.open(vault_path, profile)
    try:
        vault.unlock(password)
        _check_chain(files, vault, allow_partial)
        mnemonic = _open_seeds(files, password, salt_file, vault)
        report = ImportReport(vault=str(vault_path))
        with vault.journal.writer(legacy=True) as writer:
            for path, header in files:
                # This thread keeps one core busy writing: derive on the rest.
                apply = _writer_apply(writer, header.timestamp)
                _apply_file(path, header, mnemonic, apply, report, max(1, workers - 1))
        report.last_lsn = vault.journal.last_lsn()
    finally:
        vault.close()
    return report


def _import_new(
    vault_path: Path,
    files: list[tuple[Path, LegacyHeader]],
    password: str,
    salt_file: Path | None,
    allow_partial: bool,
    profile: str,
    workers: int,
) -> ImportReport:
    """Create the vault: spool and verify every file, then bulk-load the join."""
    _check_chain(files, None, allow_partial)
    mnemonic = _open_seeds(files, password, salt_file, None)
    # What Vault.adopt refuses at the end, refused before the files are read.
    normalize_mnemonic(mnemonic)
    check_password(password)
    _refuse_occupied(vault_path)
    report = ImportReport(vault=str(vault_path), created_vault=True)
    staging = _staging_dir(vault_path)
    placed = False
    try:
        _load_staged(staging, files, mnemonic, report, workers)
        Vault.adopt(staging, password, mnemonic, profile)
        faults.point("import.before-rename")
        _move_into_place(staging, vault_path)
        placed = True
    finally:
        if not placed:
            shutil.rmtree(staging, ignore_errors=True)
    return report


def _load_staged(
    staging: Path,
    files: list[tuple[Path, LegacyHeader]],
    mnemonic: str,
    report: ImportReport,
    workers: int,
) -> None:
    """Spool and verify every file, then load the joined records as the base.

    The base LSN is the number of items read: what a writer would have
    numbered them, had none been a no-op.
    """
    spool_dir = staging / SPOOL_DIR
    _make_private_dir(staging, parents=True)  # as Vault.create makes a vault
    _make_private_dir(spool_dir)
    spool = RecordSpool(spool_dir)
    try:
        apply = _spool_apply(spool)
        for path, header in files:
            # Spooling is lighter than writing: one deriving process per core.
            _apply_file(path, header, mnemonic, apply, report, workers)
        lsn = report.wallets + report.lifecycle_records + report.balance_lists
        faults.point("import.before-load")
        journal = Journal.bulk_load(
            staging, spool.records(), lsn, expected=report.wallets
        )
        journal.close()
        report.last_lsn = lsn
    finally:
        spool.discard()
    spool_dir.rmdir()


def _writer_apply(writer: Writer, when: int) -> Apply:
    def apply(kind: str, agent_id: str, payload: Any) -> None:
        writer.add(Event(kind, agent_id, payload, when), validated=True)

    return apply


def _spool_apply(spool: RecordSpool) -> Apply:
    add, slots = spool.add, SLOTS

    def apply(kind: str, agent_id: str, payload: Any) -> None:
        if kind == "balances":
            # The wallet and lifecycle validators check their agentId; an
            # empty balance list names its agent only in the key.
            validate_agent_id(agent_id)
        add(slots[kind], agent_id, payload)

    return apply


def _make_private_dir(path: Path, parents: bool = False) -> None:
    try:
        path.mkdir(mode=0o700, parents=parents)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise durable.io_error(f"the import staging directory {path}", exc) from exc


def _staging_dir(vault_path: Path) -> Path:
    return vault_path.parent / f".{vault_path.name}.import-{os.urandom(4).hex()}"


def _refuse_occupied(vault_path: Path) -> None:
    if vault_path.exists() and (not vault_path.is_dir() or any(vault_path.iterdir())):
        raise MisuseError(
            f"{vault_path} exists and is not a vault; refusing to import into it",
            path=str(vault_path),
        )


def _move_into_place(staging: Path, vault_path: Path) -> None:
    """Rename the committed staging vault to its path (durably)."""
    try:
        durable.fsync_tree(staging)
        if vault_path.is_dir():
            vault_path.rmdir()  # empty (checked before the import): replace it
        os.rename(staging, vault_path)
        durable.fsync_dir(vault_path.parent)
    except OSError as exc:
        raise durable.io_error(f"the new vault {vault_path}", exc) from exc


def _vault_exists(path: Path) -> bool:
    return (path / "keyfile").is_file()


def _check_chain(
    files: list[tuple[Path, LegacyHeader]], vault: Vault | None, allow_partial: bool
) -> None:
    if files[0][1].type == "full" or allow_partial:
        return
    if vault is not None and vault.journal.counts().get("agents", 0) > 0:
        return
    raise MisuseError(
        f"{files[0][0].name} is an incremental backup with no full backup before "
        "it; pass the full backup too, or --allow-partial to import it alone"
    )


def _open_seeds(
    files: list[tuple[Path, LegacyHeader]],
    password: str,
    salt_file: Path | None,
    vault: Vault | None,
) -> str:
    """Every file's mnemonic (one PBKDF2 each): they must all be the vault's."""
    expected = vault.mnemonic() if vault is not None else None
    for path, header in files:
        mnemonic = decrypt_file_seed(header, password, load_salt(salt_file, path))
        if expected is None:
            expected = mnemonic
        elif mnemonic != expected:
            what = "the vault's" if vault is not None else "the other files'"
            raise IntegrityError(
                f"{path.name}: its seed differs from {what}; refusing to import"
            )
    if expected is None:
        raise MisuseError("no file to import")
    return expected


Apply = Callable[[str, str, Any], None]


def _apply_file(
    path: Path,
    header: LegacyHeader,
    mnemonic: str,
    apply: Apply,
    report: ImportReport,
    derive_workers: int,
) -> None:
    """Hand one file's records to ``apply`` while its wallets are verified.

    ``apply(kind, agent_id, payload)`` receives every record as the reader
    yields it, validated. Raises (the caller then discards what was applied)
    on an address that does not derive, a checksum mismatch, or malformed
    structure.
    """
    counts = {"wallet": 0, "lifecycle": 0, "balances": 0}
    reader = LegacyReader(path, verify=False)  # the checksum is checked below
    wallets = _WalletFeed()
    verifier = threading.Thread(
        target=wallets.verify,
        args=(mnemonic, derive_workers),
        name="vaultstore-derive",
    )
    verifier.start()
    try:
        # The reader runs the journal's own checks on every record (and its
        # errors name the file and the field), so the writer need not.
        for kind, payload in reader:
            counts[kind] += 1
            if kind == "wallet":
                apply(kind, payload["agentId"], payload)
                wallets.add(payload)
            elif kind == "lifecycle":
                apply(kind, payload["agentId"], payload)
            else:
                apply(kind, payload[0], payload[1])
    finally:
        wallets.close()
        verifier.join()
    _check_file(path, reader, wallets.result())
    report.files.append(
        {
            "file": str(path),
            "type": header.type,
            "timestamp": header.timestamp,
            "wallets": counts["wallet"],
            "lifecycle": counts["lifecycle"],
            "balances": counts["balances"],
        }
    )
    report.wallets += counts["wallet"]
    report.lifecycle_records += counts["lifecycle"]
    report.balance_lists += counts["balances"]


def _check_file(path: Path, reader: LegacyReader, mismatches: list[str]) -> None:
    """Raise unless every address derived and the file's checksum held."""
    if mismatches:
        shown = ", ".join(mismatches[:20])
        raise AddressMismatchError(
            f"{path.name}: {len(mismatches)} wallet(s) do not derive from the "
            f"seed: {shown}",
            agents=mismatches,
        )
    if reader.summary is None:
        raise InputError(f"{path.name}: structure: the file was not read to its end")
    if not reader.summary.checksum_ok:
        raise IntegrityError(checksum_mismatch_message(path), file=str(path))


_END = None


class _WalletFeed:
    """Wallets handed from the importing thread to :func:`verify_wallet_chunks`.

    Chunks travel through a bounded queue, so memory stays flat; the
    verifying thread mostly waits on the worker processes that derive.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[list[Wallet] | None] = queue.Queue(maxsize=16)
        self._chunk: list[Wallet] = []
        self._outcome: list[str] | BaseException = []
        self._stopped = threading.Event()

    def add(self, wallet: dict[str, Any]) -> None:
        self._chunk.append(
            (
                wallet["agentId"],
                wallet["derivationIndex"],
                wallet["evmAddress"],
                wallet["xrpAddress"],
            )
        )
        if len(self._chunk) >= CHUNK_SIZE:
            self._put(self._chunk)
            self._chunk = []

    def close(self) -> None:
        self._put(self._chunk)
        self._put(_END)

    def _put(self, item: list[Wallet] | None) -> None:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _chunks(self) -> Iterator[list[Wallet]]:
        while (chunk := self._queue.get()) is not _END:
            if chunk:
                yield chunk

    def verify(self, mnemonic: str, workers: int) -> None:
        try:
            self._outcome = verify_wallet_chunks(
                mnemonic, self._chunks(), workers, spare_core=True
            )
        except BaseException as exc:  # re-raised on the importing thread
            self._outcome = exc
        finally:
            self._stopped.set()

    def result(self) -> list[str]:
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome
