"""What every command shares: global options, password sources, output, errors.

Only this package reads environment variables, prompts or prints. Operations
below take plain values (paths, bytes, settings), never click objects.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vaultstore.errors import MisuseError, NotFoundError

if TYPE_CHECKING:
    from vaultstore.config import Config, Destination
    from vaultstore.repo.repository import Repository
    from vaultstore.store.base import Store

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

PASSWORD_ENV_VARS = ("VAULTSTORE_PASSWORD", "WALLET_BACKUP_PASSWORD")


@dataclass
class Settings:
    """Global options, resolved once per invocation."""

    vault: Path
    repository: str | None
    config_file: Path | None
    password_file: Path | None
    password_command: str | None
    s3_endpoint: str | None = None

    def password(self, purpose: str = "password", confirm: bool = False) -> str:
        """The password from the first configured source; never from argv."""
        return read_password(self, purpose, confirm)


def read_password(settings: Settings, purpose: str, confirm: bool) -> str:
    """Environment, --password-file, --password-command, the config file's
    password source, then a prompt."""
    for name in PASSWORD_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    if settings.password_file is None and not settings.password_command:
        from vaultstore.config import load_config

        config = load_config(config_path(settings))
        settings.password_file = config.password_file
        settings.password_command = config.password_command
    if settings.password_file is not None:
        _warn_if_readable_by_others(settings.password_file)
        try:
            return settings.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise NotFoundError(
                f"cannot read password file {settings.password_file}: {exc.strerror}"
            ) from exc
    if settings.password_command:
        return _password_from_command(settings.password_command)
    if not sys.stdin.isatty():
        raise MisuseError(
            "no password: set VAULTSTORE_PASSWORD, or use --password-file or "
            "--password-command (stdin is not a terminal, so no prompt)"
        )
    return str(
        click.prompt(
            f"Enter {purpose}", hide_input=True, confirmation_prompt=confirm, err=True
        )
    )


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # the read below reports it
    if mode & 0o077:
        log.warning(
            "password file %s can be read by other users (mode %o); chmod 600 it",
            path,
            mode & 0o777,
            extra={"event": "password.file-permissions", "path": str(path)},
        )


def _password_from_command(command: str) -> str:
    try:
        done = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MisuseError(
            f"--password-command failed to run: {type(exc).__name__}"
        ) from exc
    if done.returncode != 0:
        # The command's output is not echoed: it may hold the secret.
        raise MisuseError(f"--password-command exited with status {done.returncode}")
    return done.stdout.rstrip("\r\n")


def settings(ctx: click.Context) -> Settings:
    """The Settings object the top-level group stored on the context."""
    obj = ctx.find_root().obj
    if not isinstance(obj, Settings):
        raise MisuseError("internal: settings missing from the command context")
    return obj


def json_option(func: F) -> F:
    """Adds ``--json`` (machine-readable output) to a command."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON."
    )(func)


def emit(data: Any, as_json: bool, text: str | Callable[[], str] | None = None) -> None:
    """Print a command's result as JSON, or as text for a person."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
        return
    if callable(text):
        text = text()
    if text is None:
        text = "\n".join(f"{k}: {v}" for k, v in dict(data).items())
    click.echo(text)


def kdf_profile() -> str:
    """``test`` (tiny KDF parameters) when VAULTSTORE_TESTING=1, else production."""
    return "test" if os.environ.get("VAULTSTORE_TESTING") == "1" else "production"


CONFIG_IN_VAULT = "config.toml"
REPLICA_STATE = "replicas.json"


def config_path(cfg: Settings) -> Path | None:
    """``--config`` / VAULTSTORE_CONFIG, else ``<vault>/config.toml`` if present."""
    if cfg.config_file is not None:
        return cfg.config_file
    in_vault = cfg.vault / CONFIG_IN_VAULT
    return in_vault if in_vault.is_file() else None


def effective_config(ctx: click.Context) -> Config:
    """The config file with command-line and environment overrides applied.

    ``--repo`` replaces the primary destination; ``--s3-endpoint`` applies to
    S3 destinations given on the command line; ``--password-file`` and
    ``--password-command`` replace the configured password source, and a
    configured source fills in when neither is given.
    """
    from vaultstore.config import load_config

    cfg = settings(ctx)
    config = load_config(config_path(cfg))
    if cfg.s3_endpoint:
        config = replace(config, s3_endpoint=cfg.s3_endpoint)
    if cfg.repository:
        primary = _destination_for(config, cfg.repository)
        rest = tuple(d for d in config.destinations[1:] if d.url != primary.url)
        config = replace(config, destinations=(primary, *rest))
    if cfg.password_file is None and cfg.password_command is None:
        cfg.password_file = config.password_file
        cfg.password_command = config.password_command
    return config


def _destination_for(config: Config, url: str) -> Destination:
    from vaultstore.config import Destination

    for dest in config.destinations:
        if dest.url == url:
            return dest
    if url.startswith("s3://"):
        return Destination(
            url,
            region=config.s3_region,
            endpoint=config.s3_endpoint,
            checksum=config.s3_checksum,
        )
    return Destination(url)


def destinations(ctx: click.Context) -> tuple[Destination, ...]:
    """Primary first: --repo, the config file, or what the vault recorded at init."""
    config = effective_config(ctx)
    if config.destinations:
        return config.destinations
    from vaultstore.journal import Journal

    s = settings(ctx)
    if (s.vault / "journal.db").exists():
        with Journal.open(s.vault) as journal:
            recorded = journal.get_meta("repository_url")
        if recorded:
            return (_destination_for(config, recorded.decode("utf-8")),)
    raise MisuseError(
        "no repository: set VAULTSTORE_REPOSITORY, pass --repo, or configure "
        "destinations in the config file"
    )


def open_destination_store(ctx: click.Context) -> Store:
    """The repository's store: the primary, mirrored to any secondaries.

    Secondaries are tracked in ``<vault>/replicas.json``; without a vault (a
    fresh machine) only the primary is used.
    """
    from vaultstore.store.open import open_store
    from vaultstore.store.replica import ReplicatedStore

    primary, *secondaries = destinations(ctx)
    store = open_store(primary.url, primary.store_options())
    vault = settings(ctx).vault
    if not secondaries or not (vault / "keyfile").exists():
        return store
    others = [open_store(d.url, d.store_options()) for d in secondaries]
    return ReplicatedStore(store, others, vault / REPLICA_STATE)


@contextmanager
def open_repository(
    ctx: click.Context, password: str, *, allow_missing_vault: bool = False
) -> Iterator[Repository]:
    """Open the repository, with the vault's cache and rollback memory if any.

    Without a vault (a fresh machine restoring), ``allow_missing_vault`` uses a
    temporary cache and no high-water mark.
    """
    import tempfile

    from vaultstore.journal import Journal
    from vaultstore.repo.repository import Repository

    s = settings(ctx)
    store = open_destination_store(ctx)
    if (s.vault / "keyfile").exists():
        with Journal.open(s.vault) as journal:
            yield Repository.open(
                store, password, s.vault / "cache", kdf_profile(), meta=journal
            )
        return
    if not allow_missing_vault:
        raise NotFoundError(f"no vault at {s.vault}: run `vaultstore init` first")
    with tempfile.TemporaryDirectory(prefix="vaultstore-cache-") as cache:
        yield Repository.open(store, password, Path(cache), kdf_profile())


def loose_paths(ctx: click.Context) -> list[str]:
    """Private files and directories that others can read or enter.

    The vault (directory, key file, journal), the password file, and a local
    repository's root and key files. Other users must not read any of them.
    """
    s = settings(ctx)
    candidates = [s.vault, s.vault / "keyfile", s.vault / "journal.db"]
    if s.password_file is not None:
        candidates.append(s.password_file)
    try:
        primary = destinations(ctx)[0]
    except (MisuseError, NotFoundError):
        primary = None
    if primary is not None and primary.kind == "local":
        root = Path(primary.url.removeprefix("file://"))
        candidates.append(root)
        keys = root / "keys"
        if keys.is_dir():
            candidates += [keys, *sorted(keys.iterdir())]
    loose = []
    for path in candidates:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            continue
        if mode & 0o077:
            loose.append(f"{path} (mode {mode:o})")
    return loose


def check_permissions(ctx: click.Context) -> None:
    """``--strict``: refuse to run while private paths are open to others.

    (Without it, opening the vault and reading a password file warn.)
    """
    loose = loose_paths(ctx)
    if loose:
        raise MisuseError(
            "--strict: readable by other users: " + ", ".join(loose) + "; chmod them"
        )
