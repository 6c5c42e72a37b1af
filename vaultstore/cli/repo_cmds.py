"""``backup``, ``snapshots`` and ``check``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from vaultstore.cli.common import (
    emit,
    json_option,
    kdf_profile,
    open_destination_store,
    settings,
)
from vaultstore.errors import IntegrityError, MisuseError
from vaultstore.ops.backup import open_repository, run_backup
from vaultstore.ops.check import report_text, run_check
from vaultstore.repo.repository import Repository
from vaultstore.vault import Vault


@contextmanager
def _opened(ctx: click.Context) -> Iterator[tuple[Vault, Repository]]:
    s = settings(ctx)
    store = open_destination_store(ctx)
    vault = Vault.open(s.vault, kdf_profile())
    try:
        repo = open_repository(vault, store, s.password())
        yield vault, repo
    finally:
        vault.close()


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


@click.command()
@click.option("--full", "kind", flag_value="full", help="A full snapshot (tree root).")
@click.option("--incremental", "kind", flag_value="incremental", help="Changes only.")
@json_option
@click.pass_context
def backup(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """Take one snapshot of the vault into the repository."""
    if kind is None:
        raise MisuseError("say --full or --incremental")
    with _opened(ctx) as (vault, repo):
        if sys.stderr.isatty() and not as_json:
            total = int(vault.journal.counts()["agents"]) if kind == "full" else 0
            with click.progressbar(
                length=max(total, 1), label=kind, file=sys.stderr
            ) as bar:
                result = run_backup(vault, repo, kind, progress=bar.update)
        else:
            result = run_backup(vault, repo, kind)
    data = result.as_dict()
    emit(
        data,
        as_json,
        lambda: (
            f"{result.type} snapshot {result.snapshot[:16]} (sequence {result.seq}): "
            f"{result.agents} agents, {result.records_added} records added, "
            f"{result.bytes_added} bytes added in {result.duration_s:.2f}s"
        ),
    )


@click.command()
@json_option
@click.pass_context
def snapshots(ctx: click.Context, as_json: bool) -> None:
    """List snapshots: id, type, time, sequence, parent, agents, bytes."""
    with _opened(ctx) as (_vault, repo):
        rows: list[dict[str, Any]] = [m.summary() for m in repo.snapshots()]
        repo.latest()  # refuses a rolled-back repository

    def text() -> str:
        lines = [
            f"{'id':16}  {'type':11}  {'time':20}  {'seq':>5}  {'parent':16}  "
            f"{'agents':>9}  {'bytes':>12}"
        ]
        for r in rows:
            lines.append(
                f"{r['id'][:16]}  {r['type']:11}  {_when(r['time_ms']):20}  "
                f"{r['sequence']:>5}  {(r['parent'] or '-')[:16]:16}  "
                f"{r['agents']:>9}  {r['bytes']:>12}"
            )
        return "\n".join(lines)

    emit(rows, as_json, text)


@click.command()
@click.option("--read-data", is_flag=True, help="Decrypt and verify every object.")
@json_option
@click.pass_context
def check(ctx: click.Context, read_data: bool, as_json: bool) -> None:
    """Verify the repository; name every damaged object and its snapshots."""
    with _opened(ctx) as (_vault, repo):
        report = run_check(repo, read_data)
    emit(report.as_dict(), as_json, lambda: report_text(report))
    if not report.ok:
        raise IntegrityError(f"check found {len(report.problems)} problems")


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    group.add_command(backup)
    group.add_command(snapshots)
    group.add_command(check)
