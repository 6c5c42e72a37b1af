"""The password rule: one message per failed rule."""

from __future__ import annotations

import pytest

from vaultstore.crypto.password import check_password, password_failures
from vaultstore.errors import WeakPasswordError

GOOD = "Vector-Passw0rd!-2026"


def test_a_password_meeting_every_rule_passes() -> None:
    assert password_failures(GOOD) == []
    check_password(GOOD)


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("Short-Passw0rd!", "at least 16 characters"),
        ("vector-passw0rd!-2026", "uppercase"),
        ("VECTOR-PASSW0RD!-2026", "lowercase"),
        ("Vector-Password!-twenty", "digit"),
        ("VectorPassw0rd2026abc", "symbol"),
    ],
)
def test_each_rule_fails_alone_with_its_own_message(password: str, rule: str) -> None:
    failures = password_failures(password)
    assert len(failures) == 1
    assert rule in failures[0]


def test_every_failed_rule_is_reported_once() -> None:
    with pytest.raises(WeakPasswordError) as caught:
        check_password("abc")
    assert len(caught.value.failures) == 4  # length, uppercase, digit, symbol
    assert caught.value.exit_code == 8
    assert "abc" not in str(caught.value)


@pytest.mark.parametrize("symbol", ["/", "'", '"', "\\", "~", "`", " "])
def test_characters_outside_the_symbol_set_do_not_count(symbol: str) -> None:
    failures = password_failures(f"VectorPassw0rd{symbol}2026")
    assert failures == [failures[0]] and "symbol" in failures[0]


def test_non_ascii_letters_do_not_count_as_upper_or_lower() -> None:
    failures = password_failures("ÄÖÜ0123456789!@#$%")
    assert any("uppercase" in f for f in failures)
    assert any("lowercase" in f for f in failures)
