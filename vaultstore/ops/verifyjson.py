"""Verify a legacy wallet-backup JSON file without writing anything.

Checks, in order: structure and checksum (one streaming pass), the seed
envelope (PBKDF2 under the password and the ``encryption-salt``), and every
wallet address re-derived from the decrypted mnemonic (in the same pass,
in chunks). The report says what passed and names what failed; nothing is
written and no secret appears in it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vaultstore.compat.legacy import (
    LegacyHeader,
    LegacyReader,
    LegacySummary,
    read_header,
)
from vaultstore.crypto.derive import verify_wallets
from vaultstore.crypto.legacy import decrypt_legacy_seed
from vaultstore.crypto.seed import normalize_mnemonic
from vaultstore.errors import (
    InputError,
    LocalIOError,
    NotFoundError,
    VaultstoreError,
)

log = logging.getLogger(__name__)

SALT_FILE = "encryption-salt"
SALT_SIZE = 32
_HEX = re.compile(rb"[0-9a-fA-F]{64}\Z")


def load_salt(salt_file: Path | None, beside: Path) -> bytes:
    """The PBKDF2 salt: ``salt_file``, else ``encryption-salt`` beside ``beside``.

    Accepts 32 raw bytes or 64 hex characters (surrounding whitespace ignored).

    Raises:
        NotFoundError: no salt file.
        InputError: the file is neither 32 raw bytes nor 64 hex digits.
    """
    path = salt_file if salt_file is not None else Path(beside).parent / SALT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"no salt file {path}: pass --salt-file (the legacy service keeps it "
            f"as {SALT_FILE})"
        ) from exc
    except OSError as exc:
        raise LocalIOError(f"cannot read salt file {path}: {exc.strerror}") from exc
    if len(data) == SALT_SIZE:
        return data
    text = data.strip()
    if _HEX.match(text):
        return bytes.fromhex(text.decode("ascii"))
    raise InputError(f"salt file {path} holds neither 32 raw bytes nor 64 hex digits")


def decrypt_file_seed(header: LegacyHeader, password: str, salt: bytes) -> str:
    """The file's mnemonic, validated and normalized.

    Raises:
        WrongPasswordError: wrong password or salt, or an altered envelope.
        IntegrityError: a damaged envelope.
        InputError: the plaintext is not a valid BIP-39 mnemonic.
    """
    return normalize_mnemonic(
        decrypt_legacy_seed(header.encrypted_seed, password, salt)
    )


@dataclass
class VerifyReport:
    """The outcome of :func:`verify_json`; ``failures`` names what failed."""

    file: str
    type: str | None = None
    timestamp: int | None = None
    checksum: str | None = None
    computed_checksum: str | None = None
    checksum_ok: bool = False
    structure_ok: bool = False
    wallets: int = 0
    lifecycle_records: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    balance_lists: int = 0
    balance_entries: int = 0
    seed_ok: bool = False
    addresses_checked: int = 0
    address_mismatches: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def verify_json(
    path: Path | str, password: str, salt: bytes | None, *, workers: int = 2
) -> VerifyReport:
    """Verify ``path``; never raises for a failed check, only reports it.

    Raises:
        NotFoundError: the file does not exist.
    """
    path = Path(path)
    report = VerifyReport(file=str(path))
    reader = LegacyReader(path, verify=False)
    try:
        header = peek_header(path)
    except (NotFoundError, LocalIOError):
        raise
    except VaultstoreError as exc:
        report.failures.append(f"structure: {exc.message}")
        return report
    report.type, report.timestamp = header.type, header.timestamp

    mnemonic = _open_seed(report, header, password, salt)
    try:
        wallets = _wallet_tuples(reader)
        if mnemonic is not None:
            report.address_mismatches = verify_wallets(mnemonic, wallets, workers)
        else:
            for _ in wallets:
                pass
    except VaultstoreError as exc:
        report.failures.append(f"structure: {exc.message}")
        return report
    if reader.summary is None:  # the pass ends with a summary or an error
        report.failures.append("structure: the file was not read to its end")
        return report
    _fill(report, reader.summary, mnemonic is not None)
    return report


def _open_seed(
    report: VerifyReport, header: LegacyHeader, password: str, salt: bytes | None
) -> str | None:
    if salt is None:
        report.failures.append("seed: no salt (pass --salt-file)")
        return None
    try:
        mnemonic = decrypt_file_seed(header, password, salt)
    except VaultstoreError as exc:
        report.failures.append(f"seed: {exc.message}")
        return None
    report.seed_ok = True
    return mnemonic


def _fill(report: VerifyReport, summary: LegacySummary, derived: bool) -> None:
    report.structure_ok = True
    report.checksum = summary.checksum
    report.computed_checksum = summary.computed
    report.checksum_ok = summary.checksum_ok
    report.wallets = summary.wallets
    report.lifecycle_records = summary.lifecycle
    report.by_state = summary.by_state
    report.balance_lists = summary.balance_lists
    report.balance_entries = summary.balance_entries
    if not summary.checksum_ok:
        report.failures.insert(0, "checksum: Backup checksum validation failed")
    if derived:
        report.addresses_checked = summary.wallets
        if report.address_mismatches:
            shown = ", ".join(report.address_mismatches[:20])
            more = len(report.address_mismatches) - 20
            report.failures.append(
                f"addresses: {len(report.address_mismatches)} wallet(s) do not derive "
                f"from the seed: {shown}" + (f" and {more} more" if more > 0 else "")
            )
    log.info(
        "verified legacy file %s: %s",
        report.file,
        "ok" if report.ok else "; ".join(report.failures),
        extra={"event": "legacy.verify", "ok": report.ok, "file": report.file},
    )


def _wallet_tuples(reader: LegacyReader) -> Iterator[tuple[str, int, str, str]]:
    """The wallets of one full pass, as verify_wallets wants them."""
    for kind, payload in reader:
        if kind == "wallet":
            yield (
                payload["agentId"],
                payload["derivationIndex"],
                payload["evmAddress"],
                payload["xrpAddress"],
            )


def peek_header(path: Path | str) -> LegacyHeader:
    """The header fields of a legacy file, reading only its beginning."""
    return read_header(path)
