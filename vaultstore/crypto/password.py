"""The password rule of the legacy wallet service (``compat/FORMAT.md``).

A new password must have at least 16 characters and contain an ASCII uppercase
letter, an ASCII lowercase letter, a digit, and one symbol from
:data:`SYMBOLS`. Slash, quotes, backslash, tilde, backtick and space do not
count as symbols. The rule is applied whenever a password is *set* (a new key
file, a new envelope, a password change); opening an existing key file does
not check it, so a wrong password costs one KDF run and says nothing more.
"""

from __future__ import annotations

from vaultstore.errors import WeakPasswordError

MIN_LENGTH = 16
SYMBOLS = "!@#$%^&*()_+-=[]{}|;:,.<>?"

_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset("0123456789")
_SYMBOLS = frozenset(SYMBOLS)


def password_failures(password: str) -> list[str]:
    """One message per rule the password fails; empty when it passes."""
    chars = set(password)
    failures: list[str] = []
    if len(password) < MIN_LENGTH:
        failures.append(f"must be at least {MIN_LENGTH} characters long")
    if not chars & _UPPER:
        failures.append("must contain an uppercase letter (A-Z)")
    if not chars & _LOWER:
        failures.append("must contain a lowercase letter (a-z)")
    if not chars & _DIGITS:
        failures.append("must contain a digit (0-9)")
    if not chars & _SYMBOLS:
        failures.append(f"must contain a symbol from {SYMBOLS}")
    return failures


def check_password(password: str) -> None:
    """Raise WeakPasswordError listing every failed rule.

    Raises:
        WeakPasswordError: the password fails one or more rules.
    """
    failures = password_failures(password)
    if failures:
        raise WeakPasswordError(failures)
