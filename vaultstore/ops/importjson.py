"""Import legacy wallet-backup JSON files into the vault.

Order of work, so that a bad file writes nothing:

1. Read every file's header; sort the files by timestamp (a full, then its
   incrementals). An incremental with no full before it (in the files given,
   or an existing non-empty vault) is refused unless ``allow_partial``.
2. For every file: decrypt the seed (PBKDF2 under the password and the
   ``encryption-salt``), require the same mnemonic in every file (and in the
   vault, if it exists), then one streaming pass that checks structure and
   checksum and re-derives every wallet address from the seed.
3. Only then: create the vault if it is missing (seed from the files, vault
   password = the same password) and apply all files in one journal
   transaction — per file wallets, then lifecycle records as *recorded
   states* (``legacy=True``: a jump the live state machine would refuse is
   applied with a warning), then balances, in file order.

Import upserts: agents already in the vault and absent from a file are left
as they are (a legacy full does not express removals; archived agents'
records are often missing from it).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vaultstore.compat.legacy import (
    LegacyHeader,
    LegacyReader,
    checksum_mismatch_message,
)
from vaultstore.errors import (
    AddressMismatchError,
    InputError,
    IntegrityError,
    MisuseError,
)
from vaultstore.journal import Event
from vaultstore.ops.verifyjson import (
    decrypt_file_seed,
    load_salt,
    peek_header,
    verify_json,
)
from vaultstore.vault import Vault

log = logging.getLogger(__name__)


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
    """Verify every file, then apply them all to the vault in one transaction.

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
    vault = Vault.open(vault_path, profile) if _vault_exists(vault_path) else None
    try:
        if vault is not None:
            vault.unlock(password)
        _check_chain(files, vault, allow_partial)
        mnemonic, verified = _verify_all(files, password, salt_file, vault, workers)
        report = ImportReport(vault=str(vault_path))
        if vault is None:
            vault = Vault.create(vault_path, password, mnemonic, profile)
            report.created_vault = True
        events = _events(files, verified, report)
        try:
            report.last_lsn = vault.journal.append(events, legacy=True)
        except BaseException:
            if report.created_vault:
                # The vault was made for this import a moment ago: take it away
                # again so that a failed import leaves nothing behind.
                vault.close()
                vault = None
                shutil.rmtree(vault_path, ignore_errors=True)
            raise
    finally:
        if vault is not None:
            vault.close()
    log.info(
        "imported %d legacy file(s): %d wallets, %d lifecycle, %d balance lists",
        len(files),
        report.wallets,
        report.lifecycle_records,
        report.balance_lists,
        extra={"event": "legacy.import", "files": len(files), "lsn": report.last_lsn},
    )
    return report


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


def _verify_all(
    files: list[tuple[Path, LegacyHeader]],
    password: str,
    salt_file: Path | None,
    vault: Vault | None,
    workers: int,
) -> tuple[str, dict[Path, str]]:
    """Check every file's checksum, structure, seed and addresses.

    Returns the common mnemonic and each file's verified checksum.
    """
    expected = vault.mnemonic() if vault is not None else None
    verified: dict[Path, str] = {}
    for path, header in files:
        salt = load_salt(salt_file, path)
        mnemonic = decrypt_file_seed(header, password, salt)
        if expected is None:
            expected = mnemonic
        elif mnemonic != expected:
            what = "the vault's" if vault is not None else "the other files'"
            raise IntegrityError(
                f"{path.name}: its seed differs from {what}; refusing to import"
            )
        report = verify_json(path, password, salt, workers=workers)
        if report.address_mismatches:
            shown = ", ".join(report.address_mismatches[:20])
            raise AddressMismatchError(
                f"{path.name}: {len(report.address_mismatches)} wallet(s) do not "
                f"derive from the seed: {shown}",
                agents=report.address_mismatches,
            )
        if not report.ok:
            raise _failure(path, report.failures)
        verified[path] = str(report.computed_checksum)
    if expected is None:
        raise MisuseError("no file to import")
    return expected, verified


def _failure(path: Path, failures: list[str]) -> Exception:
    if any(f.startswith("checksum") for f in failures):
        return IntegrityError(checksum_mismatch_message(path), file=str(path))
    return InputError(f"{path.name}: " + "; ".join(failures))


def _events(
    files: list[tuple[Path, LegacyHeader]],
    verified: dict[Path, str],
    report: ImportReport,
) -> Iterator[Event]:
    """The files' events; raising here aborts the journal transaction."""
    for path, header in files:
        counts = {"wallets": 0, "lifecycle": 0, "balances": 0}
        when = header.timestamp
        reader = LegacyReader(path, verify=True)
        for kind, payload in reader:
            if kind == "wallet":
                counts["wallets"] += 1
                yield Event("wallet", payload["agentId"], payload, when)
            elif kind == "lifecycle":
                counts["lifecycle"] += 1
                yield Event("lifecycle", payload["agentId"], payload, when)
            else:
                agent_id, entries = payload
                counts["balances"] += 1
                yield Event("balances", agent_id, entries, when)
        if reader.summary is None or reader.summary.computed != verified[path]:
            # The file changed between the verifying pass and this one.
            raise IntegrityError(f"{path.name} changed while it was being imported")
        report.files.append(
            {
                "file": str(path),
                "type": header.type,
                "timestamp": header.timestamp,
                **counts,
            }
        )
        report.wallets += counts["wallets"]
        report.lifecycle_records += counts["lifecycle"]
        report.balance_lists += counts["balances"]
