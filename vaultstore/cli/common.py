"""What every command shares: global options, password sources, output, errors.

Only this package reads environment variables, prompts or prints. Operations
below take plain values (paths, bytes, settings), never click objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from vaultstore.errors import MisuseError, NotFoundError

F = TypeVar("F", bound=Callable[..., Any])

PASSWORD_ENV_VARS = ("VAULTSTORE_PASSWORD", "WALLET_BACKUP_PASSWORD")


@dataclass
class Settings:
    """Global options, resolved once per invocation."""

    vault: Path
    repository: str | None
    config_file: Path | None
    password_file: Path | None
    password_command: str | None

    def password(self, purpose: str = "password", confirm: bool = False) -> str:
        """The password from the first configured source; never from argv."""
        return read_password(self, purpose, confirm)


def read_password(settings: Settings, purpose: str, confirm: bool) -> str:
    """Environment, then --password-file, --password-command, then a prompt."""
    for name in PASSWORD_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    if settings.password_file is not None:
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


def _password_from_command(command: str) -> str:
    try:
        done = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MisuseError(f"--password-command failed to run: {type(exc).__name__}") from exc
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
