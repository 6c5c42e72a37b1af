"""Commands: restore, drill."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import click

from vaultstore.cli.common import (
    destinations,
    emit,
    json_option,
    kdf_profile,
    open_repository,
    settings,
)
from vaultstore.errors import MisuseError


def parse_time_ms(value: str) -> int:
    """``--at``: milliseconds since the epoch, or ISO 8601 (UTC unless zoned)."""
    if value.isdigit():
        return int(value)
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MisuseError(
            f"--at {value!r} is neither milliseconds nor an ISO 8601 time"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


@click.command("restore")
@click.argument("snapshot", default="latest")
@click.option("--target", required=True, type=click.Path(path_type=Path))
@click.option(
    "--at", "at", default=None, help="Latest snapshot at or before this time."
)
@click.option("--dry-run", is_flag=True, help="Verify everything, write nothing.")
@click.option("--replace", is_flag=True, help="Replace an existing target vault.")
@click.option(
    "--verify-addresses",
    type=click.Choice(["sample", "all", "none"]),
    default="sample",
    show_default=True,
    help="Re-derive a sample of wallets (256), all of them, or none.",
)
@json_option
@click.pass_context
def restore_command(
    ctx: click.Context,
    snapshot: str,
    target: Path,
    at: str | None,
    dry_run: bool,
    replace: bool,
    verify_addresses: str,
    as_json: bool,
) -> None:
    """Restore SNAPSHOT (an id, a sequence number, or latest) into --target."""
    from vaultstore.ops.restore import restore

    at_ms = parse_time_ms(at) if at else None
    password = settings(ctx).password()
    with open_repository(ctx, password, allow_missing_vault=True) as repo:
        report = restore(
            repo,
            snapshot,
            target,
            password,
            at_ms=at_ms,
            dry_run=dry_run,
            replace=replace,
            verify_addresses=verify_addresses,
            kdf_profile=kdf_profile(),
            extra_meta={"repository_url": destinations(ctx)[0].url.encode("utf-8")},
        )
    data = report.as_dict()
    emit(data, as_json, lambda: _restore_text(data))


def _restore_text(data: dict[str, Any]) -> str:
    verb = "verified (dry run)" if data["dry_run"] else "restored"
    lines = [
        f"{verb} snapshot {data['snapshot']} into {data['target']}",
        f"  chain:            {' → '.join(data['chain'])}",
        f"  agents:           {data['agents']}",
        f"  wallets verified: {data['wallets_verified']}",
        f"  state digest:     {data['digest']}",
    ]
    lines += [f"  {step:<17} {secs:.3f} s" for step, secs in data["timings"].items()]
    return "\n".join(lines)


@click.command("drill")
@click.option(
    "--agents",
    type=click.IntRange(1, 10_000_000),
    default=None,
    help="Generate this many agents in a scratch vault (default 1000 "
    "when no vault exists).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Scratch directory (default: a new temporary directory).",
)
@click.option("--keep", is_flag=True, help="Keep the scratch directory.")
@json_option
@click.pass_context
def drill_command(
    ctx: click.Context,
    agents: int | None,
    workdir: Path | None,
    keep: bool,
    as_json: bool,
) -> None:
    """Run the disaster-recovery drill end to end and print a report."""
    from vaultstore.ops.drill import run_drill

    report = run_drill(
        agents=agents or 1000,
        workdir=workdir,
        keep=keep,
        kdf_profile=kdf_profile(),
        cpu_count=os.cpu_count() or 1,
    )
    emit(report.as_dict(), as_json, report.as_text)
    if not report.ok:
        ctx.exit(3)


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    group.add_command(restore_command)
    group.add_command(drill_command)
