"""Seed and key commands: ``init``, ``seed generate|import|verify``,
``key add|list|remove|passwd``.

Secrets never come from argv: passwords from the sources in ``common.py``
(a *new* password from ``VAULTSTORE_NEW_PASSWORD``, ``--new-password-file`` or
a hidden prompt), mnemonics from stdin. A mnemonic is printed only by
``seed generate --show`` and only to a terminal; ``seed generate --output FILE``
writes it to a new 0600 file instead. ``VAULTSTORE_TESTING=1`` selects the tiny
``test`` KDF profile (and its floor) for the test suite.

``seed import`` replaces the seed of an existing vault only with ``--replace``,
and only when every wallet in the journal derives from the new mnemonic (it is
for repairing a vault from a paper backup, not for moving wallets to another
seed); a new vault with a given mnemonic is ``init --mnemonic-stdin``.

``key passwd`` changes the password of the vault (key file and seed envelope)
and, when a repository is configured, of the repository key file the old
password opens.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from vaultstore import durable
from vaultstore.cli.common import emit, json_option, kdf_profile, settings
from vaultstore.crypto import repokeys
from vaultstore.crypto.password import check_password
from vaultstore.crypto.seed import WORD_COUNTS, generate_mnemonic, normalize_mnemonic
from vaultstore.errors import (
    AddressMismatchError,
    MisuseError,
    NotFoundError,
)
from vaultstore.locks import VaultLock
from vaultstore.store.base import Store
from vaultstore.store.open import open_store
from vaultstore.vault import Vault

NEW_PASSWORD_ENV = "VAULTSTORE_NEW_PASSWORD"
_NAMED_IN_MESSAGE = 20

words_option = click.option(
    "--words",
    type=click.Choice([str(n) for n in WORD_COUNTS]),
    default="24",
    show_default=True,
    help="Length of a new mnemonic.",
)


# -- init -------------------------------------------------------------------------


@click.command("init")
@click.option(
    "--mnemonic-stdin", is_flag=True, help="Read the mnemonic from stdin instead."
)
@words_option
@json_option
@click.pass_context
def init_cmd(
    ctx: click.Context, mnemonic_stdin: bool, words: str, as_json: bool
) -> None:
    """Create a vault with a new master seed (or one read from stdin)."""
    path = settings(ctx).vault
    if (path / "keyfile").exists():
        _init_repository_of_existing_vault(ctx, path, as_json)
        return
    if (path / "journal.db").exists():
        raise MisuseError(f"a vault already exists at {path}", path=str(path))
    if mnemonic_stdin:
        mnemonic = normalize_mnemonic(_read_mnemonic())
    else:
        mnemonic = generate_mnemonic(int(words))
    password = settings(ctx).password("new vault password", confirm=True)
    check_password(password)

    made = not path.exists()
    vault = Vault.create(path, password, mnemonic, kdf_profile())
    try:
        with vault:
            repository = _init_repository(ctx, vault, password)
    except BaseException:
        # All or nothing: a vault whose repository could not be set up is removed.
        if made:
            shutil.rmtree(path, ignore_errors=True)
        raise
    count = len(mnemonic.split())
    emit(
        {
            "vault": str(path),
            "words": count,
            "seed": "imported" if mnemonic_stdin else "new",
            "repository": repository,
        },
        as_json,
        f"created vault {path} with a {'given' if mnemonic_stdin else 'new'} "
        f"{count}-word seed, stored only encrypted"
        + (
            f"; repository {repository['url']} {repository['action']}"
            if repository
            else "; no repository configured (set VAULTSTORE_REPOSITORY)"
        ),
    )


def _init_repository_of_existing_vault(
    ctx: click.Context, path: Path, as_json: bool
) -> None:
    """``init`` on an existing vault (say one made by ``import-json``): set up
    the configured repository it lacks; refuse when there is nothing to do."""
    with Vault.open(path, kdf_profile()) as vault:
        if vault.journal.get_meta("repository_url") is not None:
            raise MisuseError(f"a vault already exists at {path}", path=str(path))
        password = settings(ctx).password("vault password")
        vault.unlock(password)
        repository = _init_repository(ctx, vault, password)
    if repository is None:
        raise MisuseError(
            f"a vault already exists at {path}; to add a repository to it, set "
            "VAULTSTORE_REPOSITORY (or --repo) and run init again",
            path=str(path),
        )
    emit(
        {"vault": str(path), "repository": repository},
        as_json,
        f"vault {path}: repository {repository['url']} {repository['action']}",
    )


def _init_repository(
    ctx: click.Context, vault: Vault, password: str
) -> dict[str, str] | None:
    """Create the configured repository, or attach to the one already there.

    The location is recorded in the vault, so later commands find it without
    VAULTSTORE_REPOSITORY.
    """
    from vaultstore.cli.common import destinations, open_destination_store
    from vaultstore.ops.backup import init_repository, open_repository

    try:
        primary = destinations(ctx)[0]
    except MisuseError:
        return None
    store = open_destination_store(ctx)
    if store.exists("config"):
        repo = open_repository(vault, store, password)
        action = "attached"
    else:
        repo = init_repository(vault, store, password)
        action = "created"
    vault.journal.set_meta("repository_url", primary.url.encode("utf-8"))
    return {"url": primary.url, "id": repo.id, "action": action}


# -- seed -------------------------------------------------------------------------


@click.group("seed")
def seed_group() -> None:
    """The master seed: generate, import, verify wallets against it."""


@seed_group.command("generate")
@words_option
@click.option("--show", is_flag=True, help="Print it (only to a terminal).")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write it to this new file (mode 0600).",
)
def seed_generate_cmd(words: str, show: bool, output: Path | None) -> None:
    """Generate a new BIP-39 mnemonic, for `init --mnemonic-stdin` elsewhere.

    The mnemonic is never stored by this command. It goes to a new 0600 file
    with --output, or to the terminal with --show; never into a pipe or log.
    """
    if not show and output is None:
        raise MisuseError("say where the mnemonic goes: --output FILE or --show")
    if show and not sys.stdout.isatty():
        raise MisuseError(
            "refusing to print a mnemonic to a pipe or file; use --output FILE"
        )
    mnemonic = generate_mnemonic(int(words))
    if output is not None:
        _write_new_private(output, mnemonic + "\n")
        click.echo(
            f"wrote a new {words}-word mnemonic to {output} (mode 0600)", err=True
        )
    if show:
        click.echo(mnemonic)


@seed_group.command("import")
@click.option("--replace", is_flag=True, help="Replace the seed of this vault.")
@json_option
@click.pass_context
def seed_import_cmd(ctx: click.Context, replace: bool, as_json: bool) -> None:
    """Replace the vault's seed by a mnemonic from stdin (wallets must match)."""
    path = settings(ctx).vault
    with Vault.open(path, kdf_profile()) as vault:
        if not replace:
            raise MisuseError(
                f"vault {path} already holds a seed; --replace replaces it "
                "(a new vault from a mnemonic is `vaultstore init --mnemonic-stdin`)"
            )
        mnemonic = normalize_mnemonic(_read_mnemonic())
        password = settings(ctx).password("vault password")
        with VaultLock(path, "seed import").acquire():
            vault.unlock(password)
            count, bad = _check_wallets(vault, mnemonic)
            vault.replace_mnemonic(mnemonic, password)
    emit(
        {"vault": str(path), "wallets": count, "replaced": True},
        as_json,
        f"replaced the seed of {path}; all {count} wallets derive from it",
    )


def _check_wallets(vault: Vault, mnemonic: str) -> tuple[int, list[str]]:
    count, bad = vault.verify_wallets(_workers(0), mnemonic=mnemonic)
    if bad:
        raise _mismatch(
            bad, "do not derive from the imported mnemonic; nothing changed"
        )
    return count, bad


@seed_group.command("verify")
@click.option(
    "--workers", type=int, default=0, help="Processes to use (0: one per CPU)."
)
@json_option
@click.pass_context
def seed_verify_cmd(ctx: click.Context, workers: int, as_json: bool) -> None:
    """Check that every wallet's EVM and XRP address derives from the seed.

    Exits 3 and names each agent whose addresses do not match.
    """
    with Vault.open(settings(ctx).vault, kdf_profile()) as vault:
        vault.unlock(settings(ctx).password("vault password"))
        count, bad = vault.verify_wallets(_workers(workers))
    data = {"wallets": count, "mismatches": bad, "ok": not bad}
    emit(data, as_json, lambda: _verify_text(count, bad))
    if bad:
        raise _mismatch(bad, "do not derive from the seed")


def _verify_text(count: int, bad: list[str]) -> str:
    if not bad:
        return f"checked {count} wallets: every address derives from the seed"
    return f"checked {count} wallets: {len(bad)} mismatch(es):\n" + "\n".join(
        f"  {agent}" for agent in bad
    )


def _mismatch(bad: list[str], what: str) -> AddressMismatchError:
    named = ", ".join(bad[:_NAMED_IN_MESSAGE])
    more = (
        f" and {len(bad) - _NAMED_IN_MESSAGE} more"
        if len(bad) > _NAMED_IN_MESSAGE
        else ""
    )
    return AddressMismatchError(
        f"{len(bad)} wallet(s) {what}: {named}{more}", agents=bad
    )


# -- key --------------------------------------------------------------------------


@click.group("key")
def key_group() -> None:
    """Repository key files: add, list, remove, change password."""


new_password_option = click.option(
    "--new-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Read the new password from this file [env {NEW_PASSWORD_ENV}].",
)


@key_group.command("list")
@json_option
@click.pass_context
def key_list_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the repository's key files and their KDF parameters."""
    infos = repokeys.list_keys(_open_repository(ctx))
    emit(infos, as_json, lambda: _key_list_text(infos))


def _key_list_text(infos: list[dict[str, Any]]) -> str:
    if not infos:
        return "no key files"
    lines = []
    for info in infos:
        if "error" in info:
            lines.append(f"{info['id']}  DAMAGED: {info['error']}")
        else:
            lines.append(
                f"{info['id']}  {info['kdf']} m={info['memory_cost']}KiB "
                f"t={info['iterations']} p={info['lanes']}"
            )
    return "\n".join(lines)


@key_group.command("add")
@new_password_option
@json_option
@click.pass_context
def key_add_cmd(
    ctx: click.Context, new_password_file: Path | None, as_json: bool
) -> None:
    """Add a key file under a new password (the current password authorises it)."""
    store = _open_repository(ctx)
    password = settings(ctx).password("current repository password")
    new = _new_password(new_password_file)
    check_password(new)
    _, master = repokeys.unlock_repository(store, password, kdf_profile())
    key_id = repokeys.add_key(store, master, new, kdf_profile())
    emit({"added": key_id}, as_json, f"added key {key_id}")


@key_group.command("remove")
@click.argument("key_id")
@json_option
@click.pass_context
def key_remove_cmd(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Remove key file KEY_ID (authorised by the password of another key)."""
    store = _open_repository(ctx)
    password = settings(ctx).password("repository password")
    repokeys.remove_key(store, key_id, password, kdf_profile())
    emit({"removed": key_id}, as_json, f"removed key {key_id}")


@key_group.command("passwd")
@new_password_option
@json_option
@click.pass_context
def key_passwd_cmd(
    ctx: click.Context, new_password_file: Path | None, as_json: bool
) -> None:
    """Change the password of the vault and of the repository key it opens."""
    cfg = settings(ctx)
    has_vault = (cfg.vault / "keyfile").is_file()
    if not has_vault and cfg.repository is None:
        raise MisuseError(f"no vault at {cfg.vault} and no repository configured")
    old = cfg.password("current password")
    new = _new_password(new_password_file)
    check_password(new)

    result: dict[str, Any] = {"vault": None, "repository": None}
    if has_vault:
        with (
            Vault.open(cfg.vault, kdf_profile()) as vault,
            VaultLock(cfg.vault, "key passwd").acquire(),
        ):
            vault.unlock(old)  # before touching the repository: fail early
            if cfg.repository is not None:
                result["repository"] = _passwd_repository(ctx, old, new)
            vault.change_password(old, new)
            result["vault"] = str(cfg.vault)
    else:
        result["repository"] = _passwd_repository(ctx, old, new)
    emit(result, as_json, lambda: _passwd_text(result))


def _passwd_repository(ctx: click.Context, old: str, new: str) -> dict[str, str]:
    old_id, new_id = repokeys.change_key_password(
        _open_repository(ctx), old, new, kdf_profile()
    )
    return {"oldKey": old_id, "newKey": new_id}


def _passwd_text(result: dict[str, Any]) -> str:
    lines = []
    if result["vault"]:
        lines.append(f"changed the password of vault {result['vault']}")
    if result["repository"]:
        repo = result["repository"]
        lines.append(f"replaced repository key {repo['oldKey']} by {repo['newKey']}")
    return "\n".join(lines)


# -- helpers ----------------------------------------------------------------------


def _open_repository(ctx: click.Context) -> Store:
    location = settings(ctx).repository
    if not location:
        raise MisuseError("no repository: use --repo or set VAULTSTORE_REPOSITORY")
    return open_store(location)


def _read_mnemonic() -> str:
    stream = sys.stdin
    if stream.isatty():
        return str(click.prompt("Mnemonic", hide_input=True, err=True))
    text = stream.read(16 * 1024)
    if not text.strip():
        raise MisuseError("no mnemonic on stdin")
    return text


def _new_password(path: Path | None) -> str:
    value = os.environ.get(NEW_PASSWORD_ENV)
    if value:
        return value
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise NotFoundError(
                f"cannot read new password file {path}: {exc.strerror}"
            ) from exc
    if not sys.stdin.isatty():
        raise MisuseError(
            f"no new password: set {NEW_PASSWORD_ENV} or use --new-password-file "
            "(stdin is not a terminal, so no prompt)"
        )
    return str(
        click.prompt(
            "New password", hide_input=True, confirmation_prompt=True, err=True
        )
    )


def _workers(requested: int) -> int:
    return requested if requested > 0 else max(1, os.cpu_count() or 1)


def _write_new_private(path: Path, text: str) -> None:
    """Create ``path`` (0600) durably with ``text``; never overwrite a file."""
    if path.exists():
        raise MisuseError(f"{path} already exists; refusing to overwrite it")
    try:
        durable.write_atomic(path, text.encode("utf-8"), overwrite=False)
    except FileExistsError as exc:
        raise MisuseError(f"{path} already exists; refusing to overwrite it") from exc


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    commands: list[click.Command] = [init_cmd, seed_group, key_group]
    for command in commands:
        group.add_command(command)
