"""The vaultstore error catalogue.

Every error a user can meet is a subclass of :class:`VaultstoreError`. Each class
carries a stable ``exit_code`` (documented in the README and checked against it
by ``tests/test_errors.py``); the CLI's single top-level handler turns an
exception into one message on stderr and that exit code. Messages never carry
secrets (passwords, mnemonics, keys): they name objects, files, lines, fields.

    VaultstoreError                      1  general error
    ├── MisuseError                      2  usage: bad arguments, missing vault
    ├── IntegrityError                   3  corrupt, tampered, or inconsistent data
    │   └── AddressMismatchError         3  an address does not derive from the seed
    ├── WrongPasswordError               4  the password does not open the key
    ├── LockedError                      5  another process holds the lock
    ├── (partial success)                6  a secondary destination failed
    ├── InputError                       7  malformed input: NDJSON, JSON, wallet data
    │   └── TransitionError              7  an invalid lifecycle transition
    ├── WeakPasswordError                8  a new password fails the password rule
    ├── UnsupportedVersionError          9  an unknown format version
    ├── StoreError                      10  a repository destination failed (S3, disk)
    ├── LocalIOError                    11  local disk: full, fsync failed, I/O error
    ├── NotFoundError                   12  no such vault, repository, snapshot, file
    ├── ReconcileMismatchError          13  balances differ and --strict was given
    └── BalanceSourceError              14  a balance source (JSON-RPC, file) failed
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_PARTIAL = 6
EXIT_INTERRUPTED = 130


class VaultstoreError(Exception):
    """Root of every error vaultstore raises on purpose."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return self.message


class MisuseError(VaultstoreError):
    """The command was used wrongly: bad arguments or a missing prerequisite."""

    exit_code = 2
    kind = "usage"


class IntegrityError(VaultstoreError):
    """Data is corrupt, tampered with, or inconsistent."""

    exit_code = 3
    kind = "integrity"


class AddressMismatchError(IntegrityError):
    """One or more wallet addresses do not derive from the seed."""

    def __init__(self, message: str, agents: list[str], **fields: Any) -> None:
        super().__init__(message, agents=agents, **fields)
        self.agents = agents


class WrongPasswordError(VaultstoreError):
    """The password does not open the key file or envelope."""

    exit_code = 4
    kind = "wrong-password"


class LockedError(VaultstoreError):
    """Another process holds the vault or repository lock."""

    exit_code = 5
    kind = "locked"


class InputError(VaultstoreError):
    """Malformed or invalid input data."""

    exit_code = 7
    kind = "input"


class TransitionError(InputError):
    """A lifecycle transition the state machine does not allow."""


class WeakPasswordError(VaultstoreError):
    """A new password fails one or more rules of the password policy."""

    exit_code = 8
    kind = "weak-password"

    def __init__(self, failures: list[str]) -> None:
        super().__init__("password rejected: " + "; ".join(failures), failures=failures)
        self.failures = failures


class UnsupportedVersionError(VaultstoreError):
    """A file or object declares a format version this build cannot read."""

    exit_code = 9
    kind = "unsupported-version"


class StoreError(VaultstoreError):
    """A repository destination failed (unreachable, refused, or errored)."""

    exit_code = 10
    kind = "store"


class ObjectExistsError(StoreError):
    """A write-once object already exists (put-if-absent lost the race)."""


class ObjectMissingError(StoreError):
    """An object the caller expected is not in the store."""

    exit_code = 3
    kind = "integrity"


class LocalIOError(VaultstoreError):
    """Local disk failure: full disk, failed fsync, or another I/O error."""

    exit_code = 11
    kind = "local-io"


class NotFoundError(VaultstoreError):
    """No such vault, repository, snapshot or file."""

    exit_code = 12
    kind = "not-found"


class ReconcileMismatchError(VaultstoreError):
    """Balances differ from the chain and strict reconciliation was asked for."""

    exit_code = 13
    kind = "reconcile-mismatch"


def all_error_classes() -> list[type[VaultstoreError]]:
    """Every error class, root first (used to check the README's table)."""
    seen: list[type[VaultstoreError]] = []
    stack: list[type[VaultstoreError]] = [VaultstoreError]
    while stack:
        cls = stack.pop(0)
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


class BalanceSourceError(VaultstoreError):
    """A balance source (EVM or XRPL JSON-RPC, file) failed or answered badly."""

    exit_code = 14
    kind = "balance-source"
