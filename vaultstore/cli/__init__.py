"""The ``vaultstore`` command line: parse, prompt, print, exit codes. Nothing else.

Each module below defines ``register(group)``, which adds its commands.
"""

from __future__ import annotations

import importlib
from types import ModuleType

COMMAND_MODULES = (
    "journal_cmds",  # init, status, ingest
    "key_cmds",  # seed generate|import|verify, key add|list|remove|passwd
    "repo_cmds",  # backup, snapshots, check, sync
    "restore_cmds",  # restore, drill
    "reconcile_cmds",  # reconcile
    "compat_cmds",  # export-json, import-json, verify-json
    "admin_cmds",  # config show, forget, prune, unlock, daemon
)


def command_modules() -> list[ModuleType]:
    """The command modules, imported in a fixed order."""
    return [importlib.import_module(f"vaultstore.cli.{n}") for n in COMMAND_MODULES]
