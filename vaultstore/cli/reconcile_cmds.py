"""``vaultstore reconcile``: the vault's balances against the chains or a file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from vaultstore.cli.common import emit, json_option, settings
from vaultstore.errors import ReconcileMismatchError
from vaultstore.journal import Journal

if TYPE_CHECKING:
    from vaultstore.reconcile import ReconcileSummary


def register(group: click.Group) -> None:
    """Add ``reconcile`` to ``group``."""
    group.add_command(reconcile_command)


@click.command("reconcile")
@click.option("--evm-rpc", metavar="URL", help="Ethereum JSON-RPC endpoint.")
@click.option("--xrpl-rpc", metavar="URL", help="XRP Ledger JSON-RPC endpoint.")
@click.option(
    "--balances-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="JSON file of actual balances (per-agent lists or a legacy backup).",
)
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds per request.",
)
@click.option(
    "--xrpl-batch",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="account_info calls per request through rippled's batch method.",
)
@click.option(
    "--strict", is_flag=True, help="Fail (exit 13) on any mismatch or unread balance."
)
@json_option
@click.pass_context
def reconcile_command(
    ctx: click.Context,
    evm_rpc: str | None,
    xrpl_rpc: str | None,
    balances_file: Path | None,
    timeout: float,
    xrpl_batch: int,
    strict: bool,
    as_json: bool,
) -> None:
    """Compare the vault's balance snapshots with what the chains hold.

    RPC sources take precedence over the file for the chains they serve.
    Each difference is logged as "Balance mismatch detected".
    """
    from vaultstore.balances import make_sources
    from vaultstore.reconcile import reconcile_view

    sources = make_sources(
        evm_rpc=evm_rpc,
        xrpl_rpc=xrpl_rpc,
        balances_file=balances_file,
        timeout=timeout,
        xrpl_batch=xrpl_batch,
    )
    with Journal.open(settings(ctx).vault) as journal, journal.read_view() as view:
        summary = reconcile_view(view, sources)
    emit(summary.to_dict(), as_json, lambda: _text(summary))
    if strict and not summary.clean:
        raise ReconcileMismatchError(
            f"reconciliation failed: {summary.mismatched} mismatched, "
            f"{summary.unavailable} unavailable, {summary.invalid} invalid",
            mismatched=summary.mismatched,
        )


def _text(summary: ReconcileSummary) -> str:
    lines = [
        f"agents:       {summary.agents}",
        f"checked:      {summary.checked}",
        f"matched:      {summary.matched}",
        f"mismatched:   {summary.mismatched}",
        f"unavailable:  {summary.unavailable}",
        f"skipped:      {summary.skipped}",
        f"invalid:      {summary.invalid}",
        f"not on ledger (compared as 0): {summary.accounts_not_found}",
    ]
    for m in summary.mismatches:
        lines.append(
            f"  {m.agent_id} {m.chain} {m.token}: "
            f"expected {m.expected}, actual {m.actual}"
        )
    if summary.mismatched > len(summary.mismatches):
        lines.append(f"  ... and {summary.mismatched - len(summary.mismatches)} more")
    return "\n".join(lines)
