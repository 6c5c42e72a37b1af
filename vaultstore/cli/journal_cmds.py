"""Journal commands: ``ingest`` (NDJSON change events) and ``status``.

``init`` lives with the key commands; it creates the journal with
``Journal.create``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from vaultstore.cli.common import emit, json_option, settings
from vaultstore.errors import IntegrityError
from vaultstore.ingest import IngestReport, ingest_file, ingest_stream
from vaultstore.journal import Journal
from vaultstore.locks import VaultLock


@click.command("ingest")
@click.argument("source", metavar="FILE|-")
@click.option(
    "--legacy",
    is_flag=True,
    help="Apply lifecycle records as recorded, without the transition check.",
)
@json_option
@click.pass_context
def ingest_cmd(ctx: click.Context, source: str, legacy: bool, as_json: bool) -> None:
    """Append NDJSON change events from FILE (or stdin for -) to the journal.

    The whole file is one transaction: a malformed line aborts the run
    (exit code 7) and nothing of it is written.
    """
    vault = settings(ctx).vault
    # Open first: a missing vault is "run vaultstore init", not a lock error.
    with Journal.open(vault) as journal, VaultLock(vault, "ingest"):
        report = _run_ingest(journal, source, legacy)
    emit(report.as_dict(), as_json, lambda: _ingest_text(report))


def _run_ingest(journal: Journal, source: str, legacy: bool) -> IngestReport:
    if source == "-":
        return ingest_stream(journal, sys.stdin.buffer, legacy=legacy)
    return ingest_file(journal, Path(source), legacy=legacy)


def _ingest_text(report: IngestReport) -> str:
    return (
        f"read {report.events_read} events: {report.applied} applied, "
        f"{report.skipped} unchanged; last LSN {report.last_lsn}"
    )


@click.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the vault: agents in total and by state, last LSN, last backup."""
    vault = settings(ctx).vault
    with Journal.open(vault) as journal, journal.read_view() as view:
        counts = view.counts()
        data: dict[str, Any] = {
            "vault": str(vault.absolute()),
            "agents": counts["agents"],
            "byState": counts["byState"],
            "lastLsn": view.last_lsn(),
            "lastBackup": _last_backup(view.get_meta("last_backup")),
        }
    emit(data, as_json, lambda: _status_text(data))


def _last_backup(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise IntegrityError("journal meta last_backup is not valid JSON") from exc


def _status_text(data: dict[str, Any]) -> str:
    states = ", ".join(f"{name} {n}" for name, n in data["byState"].items())
    backup = data["lastBackup"]
    if backup is None:
        backup_text = "never"
    elif isinstance(backup, dict):
        backup_text = ", ".join(f"{k}={v}" for k, v in backup.items())
    else:
        backup_text = str(backup)
    return "\n".join(
        [
            f"vault:       {data['vault']}",
            f"agents:      {data['agents']} ({states})",
            f"last LSN:    {data['lastLsn']}",
            f"last backup: {backup_text}",
        ]
    )


def register(group: click.Group) -> None:
    """Add ``ingest`` and ``status`` to ``group``."""
    group.add_command(ingest_cmd)
    group.add_command(status_cmd)
