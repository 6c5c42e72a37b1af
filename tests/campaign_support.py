"""Shared helpers of the fault and bad-input campaign (``tests/test_campaign_*``).

A *source* is a vault (built through the Python API, fast KDF) with a local
repository; commands run either as a real subprocess (``run_cli``: needed to
SIGKILL it) or through the real entry point in this process (``run_main``:
the same top-level error handler and exit codes, without interpreter start-up).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from vaultstore.journal import Event, Journal
from vaultstore.ops.backup import init_repository, open_repository, run_backup
from vaultstore.repo.repository import Repository
from vaultstore.store.local import LocalStore
from vaultstore.vault import Vault

# Canary secrets: the secrets campaign greps every output for these.
PASSWORD = "Canary-Passw0rd-7Qx!vz"
MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
VAULTSTORE = [sys.executable, "-m", "vaultstore.cli.main"]
T0 = 1_800_000_000_000


@dataclass
class Result:
    """Exit code and captured output of one command."""

    code: int
    out: str
    err: str


def base_env(**extra: str) -> dict[str, str]:
    """The caller's environment without VAULTSTORE_*, plus the test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTSTORE_")}
    env["VAULTSTORE_TESTING"] = "1"
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> Result:
    """Run ``vaultstore ARGS`` as a real process."""
    done = subprocess.run(
        [*VAULTSTORE, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def run_main(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    """Run the real entry point (``vaultstore.cli.main.main``) in this process."""
    from vaultstore.cli.main import main

    saved_env = dict(os.environ)
    root = logging.getLogger("vaultstore")
    saved_log = (list(root.handlers), root.level, root.propagate)
    saved_argv, saved_stdin = sys.argv, sys.stdin
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    try:
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["vaultstore", *args]
        sys.stdin = _TextStdin(stdin or "")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.stdin = saved_argv, saved_stdin
        for handler in root.handlers:
            if handler not in saved_log[0]:
                handler.close()
        root.handlers[:], root.level, root.propagate = saved_log
        from vaultstore import faults

        faults.set_hook(None)
    return Result(code, out.getvalue(), err.getvalue())


def child_main(
    env: dict[str, str], args: Sequence[str], out: int, err: int, given: int
) -> NoReturn:
    """In a forked child: run the real entry point on these descriptors, exit.

    Never returns into pytest: the child leaves through ``os._exit`` with the
    command's exit code (70 if it could not even start).
    """
    code = 70
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(given, 0)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["vaultstore", *args]
        from vaultstore.cli.main import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_forked(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    """Run the real entry point in a forked child process (no interpreter start-up).

    The child is a real process: ``VAULTSTORE_FAULT_POINT`` SIGKILLs it exactly
    as it would the installed command; nothing it does is cleaned up by us.
    """
    import tempfile

    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as given,
    ):
        given.write((stdin or "").encode("utf-8"))
        given.flush()
        given.seek(0)
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            child_main(env, args, out.fileno(), err.fileno(), given.fileno())
        _, status = os.waitpid(pid, 0)
        code = (
            -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        )
        out.seek(0)
        err.seek(0)
        return Result(
            code,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


class _TextStdin(io.TextIOWrapper):
    """A non-terminal stdin holding ``text`` (``click.get_binary_stream`` works)."""

    def __init__(self, text: str) -> None:
        super().__init__(io.BytesIO(text.encode("utf-8")), encoding="utf-8")

    def isatty(self) -> bool:
        return False


@functools.cache
def _addresses(i: int) -> tuple[str, str]:
    from vaultstore.crypto.derive import WalletDeriver
    from vaultstore.crypto.seed import mnemonic_to_seed

    global _DERIVER
    if _DERIVER is None:
        _DERIVER = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
    evm, xrp = _DERIVER.addresses(i)
    return evm, xrp


_DERIVER: Any = None


def wallet(i: int) -> dict[str, Any]:
    """A wallet whose addresses really derive from the canary MNEMONIC."""
    evm, xrp = _addresses(i)
    return {
        "agentId": f"agent-{i:05d}",
        "derivationIndex": i,
        "evmAddress": evm,
        "xrpAddress": xrp,
        "createdAt": T0 + i,
    }


def lifecycle(i: int, state: str = "active", **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "agentId": f"agent-{i:05d}",
        "state": state,
        "createdAt": T0 + i,
        "totalTransactions": i % 17,
        "totalVolume": {"ETH": str(10**18 + i)},
    }
    if state != "pending":
        record["activatedAt"] = T0 + i + 1
    record.update(extra)
    return record


def balances(i: int, wei: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "agentId": f"agent-{i:05d}",
            "chain": "evm",
            "token": "ETH",
            "balance": str(wei or 123456789012345678901234567890 + i),
            "lastUpdated": T0 + i,
        }
    ]


def agent_events(indexes: range, wei: int = 0) -> Iterator[Event]:
    for i in indexes:
        agent = f"agent-{i:05d}"
        yield Event("wallet", agent, wallet(i))
        yield Event("lifecycle", agent, lifecycle(i))
        yield Event("balances", agent, balances(i, wei))


class Source:
    """A vault with a local repository, built through the Python API."""

    def __init__(self, root: Path, *, mnemonic: str = MNEMONIC) -> None:
        self.root = root
        self.vault_dir = root / "vault"
        self.repo_dir = root / "repo"
        vault = Vault.create(self.vault_dir, PASSWORD, mnemonic, "test")
        init_repository(vault, LocalStore(self.repo_dir), PASSWORD)
        vault.close()

    def append(self, events: Iterator[Event] | list[Event]) -> None:
        with Journal.open(self.vault_dir) as journal:
            journal.append(events)

    def digest(self) -> bytes:
        with Journal.open(self.vault_dir) as journal:
            return journal.state_digest()

    def backup(self, kind: str, now_ms: int = T0) -> dict[str, Any]:
        vault = Vault.open(self.vault_dir, "test")
        try:
            repo = open_repository(vault, LocalStore(self.repo_dir), PASSWORD)
            return run_backup(vault, repo, kind, now_ms=now_ms).as_dict()
        finally:
            vault.close()

    def env(self, **extra: str) -> dict[str, str]:
        settings = {
            "VAULTSTORE_PASSWORD": PASSWORD,
            "VAULTSTORE_VAULT": str(self.vault_dir),
            "VAULTSTORE_REPOSITORY": str(self.repo_dir),
        }
        settings.update(extra)
        return base_env(**settings)

    def copy_to(self, root: Path) -> Source:
        """An independent copy of vault and repository under ``root``."""
        clone = object.__new__(Source)
        clone.root = root
        clone.vault_dir = root / "vault"
        clone.repo_dir = root / "repo"
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.vault_dir, clone.vault_dir, symlinks=True)
        shutil.copytree(self.repo_dir, clone.repo_dir, symlinks=True)
        return clone


def open_repo(repo_dir: Path, cache: Path | None = None) -> Repository:
    """The repository at ``repo_dir`` as a fresh machine sees it (no vault)."""
    return Repository.open(LocalStore(repo_dir), PASSWORD, cache, "test")


def restore_digest(repo_dir: Path, target: Path, spec: str = "latest") -> bytes:
    """Restore ``spec`` in this process (fresh machine) and return its digest."""
    from vaultstore.ops.restore import restore

    repo = open_repo(repo_dir)
    restore(
        repo,
        spec,
        target,
        PASSWORD,
        replace=True,
        verify_addresses="none",
        kdf_profile="test",
    )
    with Journal.open(target) as journal:
        return journal.state_digest()


def snapshot_digests(repo_dir: Path) -> list[bytes]:
    """The recorded state digest of every visible snapshot, by sequence."""
    repo = open_repo(repo_dir)
    return [m.digest_after for m in repo.snapshots()]


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())
