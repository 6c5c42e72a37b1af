"""Commands: config show, unlock, forget, prune, daemon.

``forget`` and ``daemon`` reach the repository and the backup operation through
three adapters at the top of this module (``_open_repository``,
``_run_backup``, ``_open_store``), so the policy, lock and schedule code here
stays independent of how a repository is opened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from vaultstore.cli.common import (
    effective_config,
    emit,
    json_option,
    kdf_profile,
    open_destination_store,
    settings,
)
from vaultstore.config import Config, Destination, mask_url, masked
from vaultstore.errors import InputError, LockedError, MisuseError
from vaultstore.locks import (
    RepositoryLock,
    VaultLock,
    break_lock,
    break_vault_lock,
    inspect_vault_lock,
    list_repository_locks,
)
from vaultstore.retention import (
    KeepRules,
    Plan,
    Policy,
    SnapshotInfo,
    apply,
    parse_duration,
    plan,
)
from vaultstore.schedule import Daemon, next_run
from vaultstore.store.base import Store
from vaultstore.store.open import open_store

log = logging.getLogger(__name__)

DAEMON_LOCK = "daemon.lock"
DAEMON_STATE = "daemon-state.json"


# -- adapters the lead connects ------------------------------------------------


@dataclass
class RepositoryAccess:
    """What ``forget`` needs from an open repository."""

    store: Store  # the primary store: ``locks/`` live there
    snapshots: Callable[[], list[SnapshotInfo]]
    delete_snapshot: Callable[[SnapshotInfo], None]  # removes one manifest
    prune: Callable[[], Mapping[str, Any]] | None = None


def snapshot_info(manifest: Any) -> SnapshotInfo:
    """A retention descriptor from a repository manifest (``repo.manifest``)."""
    return SnapshotInfo(
        id=manifest.id,
        seq=manifest.seq,
        type=manifest.type,
        time=datetime.fromtimestamp(manifest.time_ms / 1000, UTC),
        parent=manifest.parent,
        group=getattr(manifest, "vault", ""),
    )


def _open_repository(ctx: click.Context) -> RepositoryAccess:
    """Open the configured repository for forget and the daemon's retention."""
    from vaultstore.repo.manifest import manifest_name
    from vaultstore.repo.repository import Repository

    s = settings(ctx)
    store = open_destination_store(ctx)
    cache = s.vault / "cache" if (s.vault / "keyfile").exists() else None
    repo = Repository.open(store, s.password(), cache, kdf_profile())
    return RepositoryAccess(
        store=store,
        snapshots=lambda: [snapshot_info(m) for m in repo.snapshots()],
        delete_snapshot=lambda snap: store.delete(manifest_name(snap.seq)),
        prune=_pruner(repo),
    )


def _pruner(repo: Any) -> Callable[[], Mapping[str, Any]] | None:
    try:
        from vaultstore.ops.prune import prune
    except ImportError:  # prune not in this build: forget --prune refuses
        return None
    return lambda: prune(repo).as_dict()


def _run_backup(ctx: click.Context, kind: str) -> str:
    """Run one ``full`` or ``incremental`` backup; ``ok`` or ``partial``."""
    from vaultstore.ops.backup import open_repository, run_backup
    from vaultstore.vault import Vault

    s = settings(ctx)
    store = open_destination_store(ctx)
    vault = Vault.open(s.vault, kdf_profile())
    try:
        repo = open_repository(vault, store, s.password())
        result = run_backup(vault, repo, kind)
    finally:
        vault.close()
    partial = bool(getattr(store, "partial", False))
    log.info(
        "scheduled %s backup %s",
        kind,
        result.snapshot[:16],
        extra={"event": "daemon.backup", "kind": kind, "partial": partial},
    )
    return "partial" if partial else "ok"


def _open_store(ctx: click.Context, destination: Destination) -> Store:
    """The store of a destination, without opening the repository (no password)."""
    return open_store(destination.url, destination.store_options())


# -- config show ---------------------------------------------------------------


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@json_option
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings, secrets masked."""
    config = effective_config(ctx)
    cfg = settings(ctx)
    shown = masked(config)
    shown["vault"] = str(config.vault or cfg.vault)
    if cfg.password_file is not None and cfg.password_file != config.password_file:
        shown["password_source"] = f"file {cfg.password_file} (command line)"
    elif cfg.password_command and cfg.password_command != config.password_command:
        shown["password_source"] = "command (command line)"
    now = datetime.now(UTC)
    tz = config.tz()
    shown["next_runs"] = {
        job.kind: next_run(job.cron, now, tz).isoformat() for job in config.jobs()
    }
    emit(shown, as_json, lambda: _config_text(shown))


def _config_text(shown: dict[str, Any]) -> str:
    lines = [
        f"config file:  {shown['config_file'] or '(none: defaults)'}",
        f"vault:        {shown['vault']}",
        f"time zone:    {shown['timezone']}",
        f"password:     {shown['password_source']}",
        "destinations:",
    ]
    for dest in shown["destinations"] or [{"role": "-", "url": "(none configured)"}]:
        extra = ""
        if dest.get("kind") == "s3":
            extra = (
                f" region={dest['region']} endpoint={dest['endpoint']} "
                f"checksum={dest['checksum']} credentials: {dest['credentials']}"
            )
        lines.append(f"  {dest['role']:<9} {dest['url']}{extra}")
    for kind in ("full", "incremental"):
        lines.append(
            f"{kind + ':':<13} {shown['schedule'][kind]}  "
            f"(next {shown['next_runs'][kind]})  "
            f"retention {_rules_text(shown['retention'][kind])}"
        )
    return "\n".join(lines)


def _rules_text(rules: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in rules.items()) or "keep none"


# -- unlock --------------------------------------------------------------------


@click.command("unlock")
@click.option("--force", is_flag=True, help="Also remove live repository locks.")
@json_option
@click.pass_context
def unlock_command(ctx: click.Context, force: bool, as_json: bool) -> None:
    """Remove stale vault and repository locks (live ones only with --force)."""
    cfg = settings(ctx)
    config = effective_config(ctx)
    removed: list[dict[str, Any]] = []
    refused: list[str] = []

    vault_status = inspect_vault_lock(cfg.vault)
    if vault_status.state == "held":
        # The kernel holds a flock exactly as long as its process lives.
        who = vault_status.holder.describe() if vault_status.holder else "a process"
        refused.append(f"vault lock held by live {who}: stop that process")
    elif vault_status.state == "stale":
        broken = break_vault_lock(cfg.vault)
        if broken is not None:
            removed.append({"lock": str(vault_status.path), **broken.as_dict()})

    if config.primary is not None:
        store = _open_store(ctx, config.primary)
        for status in list_repository_locks(store):
            if status.live and not force:
                who = status.holder.describe() if status.holder else "unknown"
                refused.append(f"{status.name} held by live {who} (use --force)")
                continue
            break_lock(store, status.name, force=force)
            holder = status.holder.as_dict() if status.holder else {}
            removed.append({"lock": status.name, "reason": status.stale or "forced"})
            removed[-1].update(holder)

    emit(
        {"removed": removed, "refused": refused},
        as_json,
        lambda: _unlock_text(removed, refused),
    )
    if refused:
        raise LockedError(
            "some locks are live and were left alone: " + "; ".join(refused)
        )


def _unlock_text(removed: list[dict[str, Any]], refused: list[str]) -> str:
    lines = [
        f"removed {r['lock']} (pid {r.get('pid')} on {r.get('host')})" for r in removed
    ]
    lines += [f"left {r}" for r in refused]
    return "\n".join(lines) or "no locks found"


# -- forget --------------------------------------------------------------------


def _check_duration(value: str | None) -> str | None:
    """A malformed --keep-within is a usage error (exit 2), like any bad option."""
    if value is not None:
        try:
            parse_duration(value)
        except InputError as exc:
            raise click.BadParameter(exc.message, param_hint="--keep-within") from exc
    return value


def policy_from_options(
    config: Config, options: Mapping[str, Any], scope: str
) -> tuple[Policy, bool]:
    """The policy to apply and whether command-line rules were given.

    No ``--keep-*`` option: the configured policy. Otherwise the given rules
    replace the rules of ``scope`` (``all``, ``full`` or ``incremental``).
    """
    counts = {
        name: options[f"keep_{name}"] or 0
        for name in ("last", "daily", "weekly", "monthly", "yearly")
    }
    within = options.get("keep_within")
    given = any(counts.values()) or bool(within)
    base = config.retention
    if not given:
        return base, False
    rules = KeepRules(**counts, within=parse_duration(within) if within else None)
    if scope == "full":
        return Policy(full=rules, incremental=base.incremental, tz=base.tz), True
    if scope == "incremental":
        return Policy(full=base.full, incremental=rules, tz=base.tz), True
    return Policy.uniform(rules, base.tz), True


def run_forget(
    access: RepositoryAccess,
    policy: Policy,
    *,
    dry_run: bool,
    now: datetime | None = None,
) -> tuple[Plan, list[str]]:
    """Plan under the exclusive repository lock and delete unless ``dry_run``."""
    with RepositoryLock(access.store, "forget").acquire():
        result = plan(access.snapshots(), policy, now=now or datetime.now(UTC))
        deleted = [] if dry_run else apply(result, access.delete_snapshot)
    log.info(
        "forget: %d kept, %d %s",
        len(result.keep),
        len(result.remove),
        "would be removed" if dry_run else "removed",
        extra={
            "event": "forget",
            "kept": len(result.keep),
            "removed": len(deleted),
            "dry_run": dry_run,
        },
    )
    return result, deleted


def _plan_text(result: Plan, dry_run: bool, policy: Policy) -> str:
    lines = [
        f"policy: full {_rules_text(policy.full.describe())}; "
        f"incremental {_rules_text(policy.incremental.describe())}",
        f"keep {len(result.keep)} snapshots:",
    ]
    for d in result.keep:
        s = d.snapshot
        lines.append(
            f"  {s.seq:>6} {s.type:<11} {s.time.isoformat()}  {'; '.join(d.reasons)}"
        )
    verb = "would remove" if dry_run else "removed"
    lines.append(f"{verb} {len(result.remove)} snapshots:")
    for d in result.remove:
        s = d.snapshot
        lines.append(
            f"  {s.seq:>6} {s.type:<11} {s.time.isoformat()}  {'; '.join(d.reasons)}"
        )
    return "\n".join(lines)


@click.command("forget")
@click.option("--keep-last", type=click.IntRange(min=0), default=None)
@click.option("--keep-daily", type=click.IntRange(min=0), default=None)
@click.option("--keep-weekly", type=click.IntRange(min=0), default=None)
@click.option("--keep-monthly", type=click.IntRange(min=0), default=None)
@click.option("--keep-yearly", type=click.IntRange(min=0), default=None)
@click.option(
    "--keep-within",
    default=None,
    callback=lambda _ctx, _param, value: _check_duration(value),
    help="Duration such as 30d or 1y2m.",
)
@click.option(
    "--type",
    "scope",
    type=click.Choice(["all", "full", "incremental"]),
    default="all",
    show_default=True,
    help="Which snapshots the --keep-* rules apply to (others keep the config's).",
)
@click.option(
    "--dry-run", is_flag=True, help="List what would go and why; delete nothing."
)
@click.option("--prune", "and_prune", is_flag=True, help="Prune right after.")
@json_option
@click.pass_context
def forget_command(
    ctx: click.Context,
    keep_last: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    keep_monthly: int | None,
    keep_yearly: int | None,
    keep_within: str | None,
    scope: str,
    dry_run: bool,
    and_prune: bool,
    as_json: bool,
) -> None:
    """Remove snapshots the retention policy no longer keeps.

    Without --keep-* options the configured policy applies (default: 52
    weekly fulls and every incremental of the last 30 days). A snapshot a
    kept incremental depends on is never removed.
    """
    config = effective_config(ctx)
    keep = {
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
        "keep_yearly": keep_yearly,
        "keep_within": keep_within,
    }
    policy, _ = policy_from_options(config, keep, scope)
    access = _open_repository(ctx)
    result, _deleted = run_forget(access, policy, dry_run=dry_run)
    output: dict[str, Any] = {"dry_run": dry_run, **result.as_dict()}
    if and_prune and not dry_run:
        if access.prune is None:
            raise MisuseError("prune is not available for this repository")
        output["prune"] = dict(access.prune())
    emit(output, as_json, lambda: _plan_text(result, dry_run, policy))


# -- prune ---------------------------------------------------------------------


@click.command("prune")
@click.option(
    "--dry-run", is_flag=True, help="Report what would be freed; change nothing."
)
@click.option(
    "--repack-threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Repack a pack whose live bytes are below this fraction of its objects.",
)
@json_option
@click.pass_context
def prune_command(
    ctx: click.Context, dry_run: bool, repack_threshold: float, as_json: bool
) -> None:
    """Delete the data no remaining snapshot references (after forget).

    Holds the repository's exclusive lock: a running backup makes prune exit
    5 ("locked"), and a backup started during prune exits 5 too.
    """
    from vaultstore.ops.prune import prune
    from vaultstore.repo.repository import Repository

    s = settings(ctx)
    store = open_destination_store(ctx)
    cache = s.vault / "cache" if (s.vault / "keyfile").exists() else None
    repo = Repository.open(store, s.password(), cache, kdf_profile())
    result = prune(repo, dry_run=dry_run, repack_threshold=repack_threshold)
    emit(result.as_dict(), as_json, lambda: _prune_text(result.as_dict()))


def _prune_text(r: Mapping[str, Any]) -> str:
    verb = "would free" if r["dry_run"] else "freed"
    lines = [
        f"{r['snapshots']} snapshots reference {r['live_objects']} objects",
        f"packs: {r['packs_before']} before, {r['packs_after']} after "
        f"({r['packs_deleted']} deleted, {r['packs_repacked']} repacked into "
        f"{r['packs_written']})",
        f"objects: {r['objects_kept']} kept, {r['objects_removed']} removed",
        f"{verb} {r['bytes_freed']} bytes ({r['bytes_before']} -> {r['bytes_after']})",
    ]
    if r["unreadable_packs"]:
        lines.append(
            "left alone, unreadable: "
            + ", ".join(r["unreadable_packs"])
            + " (run `vaultstore check`)"
        )
    if r["missing_objects"]:
        lines.append(
            f"{r['missing_objects']} referenced objects are in no pack "
            "(run `vaultstore check --read-data`)"
        )
    return "\n".join(lines)


# -- daemon --------------------------------------------------------------------


@click.command("daemon")
@click.option("--prune", "and_prune", is_flag=True, help="Prune after each forget.")
@click.pass_context
def daemon_command(ctx: click.Context, and_prune: bool) -> None:
    """Run the full and incremental schedules until SIGTERM."""
    cfg = settings(ctx)
    config = effective_config(ctx)
    tz = config.tz()

    def retention() -> None:
        access = _open_repository(ctx)
        run_forget(access, config.retention, dry_run=False)
        if and_prune and access.prune is not None:
            access.prune()

    # One daemon per vault; the backups it starts take the vault lock themselves.
    with VaultLock(cfg.vault, "daemon", name=DAEMON_LOCK).acquire():
        daemon = Daemon(
            config.jobs(),
            lambda kind: _run_backup(ctx, kind),
            tz=tz,
            retention=retention,
            state_path=cfg.vault / DAEMON_STATE,
        )
        daemon.install_signal_handlers()
        for dest in config.destinations:
            log.info(
                "destination %s",
                mask_url(dest.url),
                extra={"event": "daemon.destination", "url": mask_url(dest.url)},
            )
        daemon.run()


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    group.add_command(config_group)
    group.add_command(unlock_command)
    group.add_command(forget_command)
    group.add_command(prune_command)
    group.add_command(daemon_command)
