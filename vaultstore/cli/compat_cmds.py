"""Legacy JSON commands: ``import-json``, ``verify-json``, ``export-json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vaultstore.cli.common import emit, json_option, kdf_profile, settings
from vaultstore.errors import (
    AddressMismatchError,
    InputError,
    IntegrityError,
    VaultstoreError,
    WrongPasswordError,
)

_SALT_HELP = (
    "The legacy PBKDF2 salt (32 raw bytes or 64 hex digits); default: "
    "encryption-salt beside the file."
)


@click.command("import-json")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--salt-file", type=click.Path(path_type=Path), help=_SALT_HELP)
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Import an incremental backup without its full backup.",
)
@json_option
@click.pass_context
def import_json_command(
    ctx: click.Context,
    files: tuple[Path, ...],
    salt_file: Path | None,
    allow_partial: bool,
    as_json: bool,
) -> None:
    """Import legacy wallet-backup FILES (a full, then its incrementals)."""
    from vaultstore.ops.importjson import import_json

    conf = settings(ctx)
    password = conf.password()
    report = import_json(
        conf.vault,
        list(files),
        password,
        salt_file=salt_file,
        allow_partial=allow_partial,
        profile=kdf_profile(),
    )
    data = report.as_dict()
    emit(data, as_json, lambda: _import_text(data))


def _import_text(data: dict[str, Any]) -> str:
    lines = [
        f"vault: {data['vault']}" + (" (created)" if data["created_vault"] else "")
    ]
    for item in data["files"]:
        lines.append(
            f"{item['file']}: {item['type']}, {item['wallets']} wallets, "
            f"{item['lifecycle']} lifecycle records, {item['balances']} balance lists"
        )
    lines.append(f"last LSN: {data['last_lsn']}")
    return "\n".join(lines)


@click.command("verify-json")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--salt-file", type=click.Path(path_type=Path), help=_SALT_HELP)
@json_option
@click.pass_context
def verify_json_command(
    ctx: click.Context, file: Path, salt_file: Path | None, as_json: bool
) -> None:
    """Check a legacy FILE: checksum, structure, seed, addresses."""
    from vaultstore.ops.verifyjson import load_salt, verify_json

    password = settings(ctx).password()
    try:
        salt: bytes | None = load_salt(salt_file, file)
    except VaultstoreError:
        if salt_file is not None:
            raise
        salt = None
    report = verify_json(file, password, salt)
    data = report.as_dict()
    emit(data, as_json, lambda: _verify_text(data))
    if not report.ok:
        raise _verify_error(file, report.failures, report.address_mismatches)


def _verify_text(data: dict[str, Any]) -> str:
    mark = {True: "ok", False: "FAILED"}
    lines = [
        f"file: {data['file']} ({data['type']}, timestamp {data['timestamp']})",
        f"structure: {mark[data['structure_ok']]}",
        f"checksum: {mark[data['checksum_ok']]}",
        f"seed: {mark[data['seed_ok']]}",
        f"addresses: {data['addresses_checked']} checked, "
        f"{len(data['address_mismatches'])} mismatch(es)",
        f"wallets: {data['wallets']}, lifecycle records: {data['lifecycle_records']} "
        f"{data['by_state']}, balance entries: {data['balance_entries']} in "
        f"{data['balance_lists']} lists",
    ]
    lines += [f"failed: {f}" for f in data["failures"]]
    return "\n".join(lines)


def _verify_error(
    file: Path, failures: list[str], agents: list[str]
) -> VaultstoreError:
    summary = f"verification of {file.name} failed: " + "; ".join(
        f.split(":", 1)[0] for f in failures
    )
    first = failures[0]
    if first.startswith("structure"):
        return InputError(summary)
    if first.startswith("seed") and "password" in first.lower():
        return WrongPasswordError(summary)
    if agents and first.startswith("addresses"):
        return AddressMismatchError(summary, agents=agents)
    return IntegrityError(summary)


@click.command("export-json")
@click.argument("snapshot", required=False, default="latest")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None)
@click.option(
    "--from-vault",
    is_flag=True,
    help="Export the vault's current state instead of a repository snapshot.",
)
@json_option
@click.pass_context
def export_json_command(
    ctx: click.Context,
    snapshot: str,
    output: Path | None,
    from_vault: bool,
    as_json: bool,
) -> None:
    """Export SNAPSHOT (an id, a sequence number, or latest) as a legacy file."""
    conf = settings(ctx)
    password = conf.password()
    if from_vault:
        report = _export_vault(conf.vault, output, password)
    else:
        report = _export_snapshot(ctx, snapshot, output, password)
    data = report.as_dict()
    emit(
        data,
        as_json,
        f"wrote {data['file']} ({data['type']}, {data['records']} agents, "
        f"checksum {data['checksum']}); salt in {data['salt_file']}",
    )


def _export_vault(vault_path: Path, output: Path | None, password: str) -> Any:
    from vaultstore.ops.exportjson import export_vault
    from vaultstore.vault import Vault

    with Vault.open(vault_path, kdf_profile()) as vault:
        vault.unlock(password)
        return export_vault(vault, output, password)


def _export_snapshot(
    ctx: click.Context, snapshot: str, output: Path | None, password: str
) -> Any:
    from vaultstore.cli.common import open_repository
    from vaultstore.crypto.envelope import open_seed
    from vaultstore.ops.exportjson import export_snapshot

    with open_repository(ctx, password, allow_missing_vault=True) as repo:
        head = repo.resolve(snapshot)[-1]
        mnemonic = open_seed(head.seed_envelope, password, kdf_profile())
        return export_snapshot(repo, snapshot, output, mnemonic, password)


def register(group: click.Group) -> None:
    """Add the legacy JSON commands to ``group``."""
    group.add_command(import_json_command)
    group.add_command(verify_json_command)
    group.add_command(export_json_command)
