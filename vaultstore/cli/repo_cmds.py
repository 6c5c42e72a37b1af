"""``backup``, ``snapshots``, ``check`` and ``sync``.

With secondary destinations configured, ``backup`` first catches up any
secondary left behind by an earlier run, then writes the snapshot through the
primary (which must succeed) to every reachable secondary. A secondary that
fails makes the run "partial": the snapshot is committed on the primary, the
failed destination is named, and the exit code is 6. ``sync`` repairs
secondaries on demand.

After each backup the vault's journal meta key ``last_backup`` holds a JSON
object ``{"snapshot", "type", "seq", "time_ms", "agents", "bytes_added",
"partial"}`` (what ``vaultstore status`` shows).
"""

from __future__ import annotations

import json
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
from vaultstore.config import mask_url
from vaultstore.errors import EXIT_PARTIAL, IntegrityError, MisuseError, NotFoundError
from vaultstore.ops.backup import open_repository, run_backup
from vaultstore.ops.check import report_text, run_check
from vaultstore.ops.sync import SyncReport, sync_secondaries
from vaultstore.repo.repository import BackupResult, Repository
from vaultstore.store.base import Store
from vaultstore.store.replica import ReplicatedStore, SyncResult
from vaultstore.vault import Vault


@contextmanager
def _opened(
    ctx: click.Context, store: Store | None = None
) -> Iterator[tuple[Vault, Repository]]:
    s = settings(ctx)
    store = store if store is not None else open_destination_store(ctx)
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
    """Take one snapshot of the vault into the repository.

    Exits 6 ("partial") when the snapshot is committed on the primary but a
    secondary destination could not be written; ``vaultstore sync`` or the
    next backup catches it up.
    """
    if kind is None:
        raise MisuseError("say --full or --incremental")
    store = open_destination_store(ctx)
    caught_up: list[SyncResult] = []
    if isinstance(store, ReplicatedStore):
        # Never raises for a secondary: one still unreachable stays behind.
        caught_up = store.catch_up()
    now_ms = int(time.time() * 1000)
    with _opened(ctx, store) as (vault, repo):
        result = _run_backup(vault, repo, kind, now_ms, as_json)
        failed = store.failed_destinations if isinstance(store, ReplicatedStore) else []
        vault.journal.set_meta(
            "last_backup", _last_backup_json(result, now_ms, bool(failed))
        )
    data = {
        **result.as_dict(),
        "partial": bool(failed),
        "failedDestinations": [mask_url(u) for u in failed],
        "caughtUp": [
            {
                "url": mask_url(r.target),
                "objectsCopied": len(r.copied),
                "bytesCopied": r.bytes_copied,
            }
            for r in caught_up
        ],
    }
    emit(data, as_json, lambda: _backup_text(result, caught_up))
    if failed:
        _report_partial(store, failed, f"snapshot {result.snapshot[:16]}")
        ctx.exit(EXIT_PARTIAL)


def _run_backup(
    vault: Vault, repo: Repository, kind: str, now_ms: int, as_json: bool
) -> BackupResult:
    if sys.stderr.isatty() and not as_json:
        total = int(vault.journal.counts()["agents"]) if kind == "full" else 0
        with click.progressbar(
            length=max(total, 1), label=kind, file=sys.stderr
        ) as bar:
            return run_backup(vault, repo, kind, now_ms=now_ms, progress=bar.update)
    return run_backup(vault, repo, kind, now_ms=now_ms)


def _backup_text(result: BackupResult, caught_up: list[SyncResult]) -> str:
    lines = [
        f"caught up {mask_url(r.target)}: {len(r.copied)} objects, "
        f"{r.bytes_copied} bytes copied"
        for r in caught_up
    ]
    lines.append(
        f"{result.type} snapshot {result.snapshot[:16]} (sequence {result.seq}): "
        f"{result.agents} agents, {result.records_added} records added, "
        f"{result.bytes_added} bytes added in {result.duration_s:.2f}s"
    )
    return "\n".join(lines)


def _last_backup_json(result: BackupResult, now_ms: int, partial: bool) -> bytes:
    doc = {
        "snapshot": result.snapshot,
        "type": result.type,
        "seq": result.seq,
        "time_ms": now_ms,
        "agents": result.agents,
        "bytes_added": result.bytes_added,
        "partial": partial,
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _report_partial(store: Store, failed: list[str], what: str) -> None:
    behind = store.behind if isinstance(store, ReplicatedStore) else {}
    for url in failed:
        error = behind.get(url, {}).get("error", "unreachable")
        click.echo(
            f"vaultstore: partial: {what} is on the primary {mask_url(store.url)}, "
            f"but secondary destination {mask_url(url)} failed ({error}); "
            "run `vaultstore sync` or the next backup to catch it up",
            err=True,
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
    with _opened(ctx) as (vault, repo):
        report = run_check(repo, read_data)
        # The vault's journal too: a damaged page in its event log is found
        # here even though backups, which read only the projection, never
        # touch it; --read-data also rebuilds the projection from the log.
        journal = vault.journal.integrity_problems()
        if read_data and not journal:
            journal = vault.journal.verify_projection()
    data = report.as_dict()
    data["journal"] = {"path": str(vault.path / "journal.db"), "problems": journal}

    def text() -> str:
        lines = [report_text(report)]
        lines.append(
            "journal: no problems found"
            if not journal
            else "journal problems:\n" + "\n".join(f"  {p}" for p in journal)
        )
        return "\n".join(lines)

    emit(data, as_json, text)
    if not report.ok or journal:
        total = len(report.problems) + len(journal)
        raise IntegrityError(f"check found {total} problems")


@click.command("sync")
@json_option
@click.pass_context
def sync_cmd(ctx: click.Context, as_json: bool) -> None:
    """Copy to every secondary destination what it lacks (manifests last).

    Needs no password: objects are copied as stored. Exits 6 when a secondary
    is still unreachable.
    """
    vault = settings(ctx).vault
    if not (vault / "keyfile").exists():
        raise NotFoundError(f"no vault at {vault}: sync needs the vault's state")
    store = open_destination_store(ctx)
    if not isinstance(store, ReplicatedStore):
        emit(
            SyncReport(primary=store.url).as_dict(),
            as_json,
            "no secondary destinations configured: nothing to sync",
        )
        return
    report = sync_secondaries(store)
    emit(report.as_dict(), as_json, lambda: _sync_text(report))
    if report.partial:
        _report_partial(store, report.failed_destinations, "the repository")
        ctx.exit(EXIT_PARTIAL)


def _sync_text(report: SyncReport) -> str:
    lines = [f"primary {mask_url(report.primary)}"]
    for d in report.destinations:
        if d.ok:
            manifests = sum(1 for n in d.copied if n.startswith("snapshots/"))
            lines.append(
                f"  {mask_url(d.url)}: {len(d.copied)} objects copied "
                f"({manifests} snapshots, {d.bytes_copied} bytes)"
            )
        else:
            lines.append(f"  {mask_url(d.url)}: still behind ({d.error})")
    return "\n".join(lines)


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    group.add_command(backup)
    group.add_command(snapshots)
    group.add_command(check)
    group.add_command(sync_cmd)
