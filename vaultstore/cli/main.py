"""The ``vaultstore`` group, global options and the one top-level error handler."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from vaultstore import __version__, faults
from vaultstore.cli import command_modules
from vaultstore.cli.common import Settings, check_permissions
from vaultstore.errors import EXIT_INTERRUPTED, VaultstoreError
from vaultstore.logs import configure

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vaultstore")
@click.option(
    "--vault",
    type=click.Path(path_type=Path),
    envvar="VAULTSTORE_VAULT",
    default="./vault",
    show_default=True,
    help="Vault directory [env VAULTSTORE_VAULT].",
)
@click.option(
    "--repo",
    "repository",
    envvar="VAULTSTORE_REPOSITORY",
    default=None,
    help="Repository: a path or s3://bucket/prefix [env VAULTSTORE_REPOSITORY].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    envvar="VAULTSTORE_CONFIG",
    default=None,
    help="TOML config file [env VAULTSTORE_CONFIG].",
)
@click.option(
    "--s3-endpoint",
    envvar="VAULTSTORE_S3_ENDPOINT",
    default=None,
    help="Endpoint URL of an S3-compatible service [env VAULTSTORE_S3_ENDPOINT].",
)
@click.option(
    "--password-file",
    type=click.Path(path_type=Path),
    envvar="VAULTSTORE_PASSWORD_FILE",
    default=None,
    help="Read the password from this file [env VAULTSTORE_PASSWORD_FILE].",
)
@click.option(
    "--password-command",
    envvar="VAULTSTORE_PASSWORD_COMMAND",
    default=None,
    help="Run this command and read the password from its stdout "
    "[env VAULTSTORE_PASSWORD_COMMAND].",
)
@click.option(
    "--strict",
    is_flag=True,
    envvar="VAULTSTORE_STRICT",
    help="Refuse to run when the vault, key files, password file or a local "
    "repository are readable by other users [env VAULTSTORE_STRICT].",
)
@click.option("--log-file", default=None, help="Write JSON-lines logs here.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.pass_context
def cli(
    ctx: click.Context,
    vault: Path,
    repository: str | None,
    config_file: Path | None,
    s3_endpoint: str | None,
    password_file: Path | None,
    password_command: str | None,
    strict: bool,
    log_file: str | None,
    log_level: str,
) -> None:
    """Backup and disaster recovery for the wallets of AI-agent fleets."""
    os.umask(0o077)
    configure(log_level, log_file)
    _install_fault_hook()
    ctx.obj = Settings(
        vault=vault,
        repository=repository,
        config_file=config_file,
        password_file=password_file,
        password_command=password_command,
        s3_endpoint=s3_endpoint,
    )
    if strict:
        check_permissions(ctx)


def _install_fault_hook() -> None:
    """Crash tests: with VAULTSTORE_TESTING=1, act on VAULTSTORE_FAULT_POINT.

    ``VAULTSTORE_FAULT_POINT=NAME[:N]`` SIGKILLs this process at the Nth time
    (default 1st) it passes the durable-write point NAME (``*`` = any point);
    ``VAULTSTORE_FAULT_LOG=FILE`` appends every point passed to FILE, so a test
    can enumerate the points of an operation before killing at each.
    """
    if os.environ.get("VAULTSTORE_TESTING") != "1":
        return
    spec = os.environ.get("VAULTSTORE_FAULT_POINT")
    trace = os.environ.get("VAULTSTORE_FAULT_LOG")
    if not spec and not trace:
        return
    name, _, count = (spec or "").partition(":")
    remaining = [int(count) if count else 1]

    def hook(point: str) -> None:
        if trace:
            with open(trace, "a", encoding="utf-8") as out:
                out.write(point + "\n")
        if name and (name == "*" or name == point):
            remaining[0] -= 1
            if remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    faults.set_hook(hook)


for _module in command_modules():
    _module.register(cli)


def main() -> None:
    """Entry point: run the group, turning errors into one message and a code."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except VaultstoreError as exc:
        log.error("%s", exc.message, extra={"event": "error", "kind": exc.kind})
        click.echo(f"vaultstore: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
