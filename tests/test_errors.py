"""The error catalogue: stable exit codes, and the README's table agrees."""

from __future__ import annotations

import re

from vaultstore import errors
from vaultstore.errors import VaultstoreError, all_error_classes

from .conftest import REPO_ROOT


def readme_exit_codes() -> dict[int, str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", section, re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def test_every_error_exit_code_is_documented_in_readme() -> None:
    documented = readme_exit_codes()
    for cls in all_error_classes():
        assert cls.exit_code in documented, f"{cls.__name__} exit {cls.exit_code}"


def test_readme_documents_no_code_that_nothing_uses() -> None:
    used = {cls.exit_code for cls in all_error_classes()}
    used |= {errors.EXIT_OK, errors.EXIT_PARTIAL, errors.EXIT_INTERRUPTED}
    assert set(readme_exit_codes()) == used


def test_errors_carry_message_and_fields() -> None:
    exc = errors.InputError(
        "line 3: wallets.derivationIndex must be an integer", line=3
    )
    assert str(exc) == "line 3: wallets.derivationIndex must be an integer"
    assert exc.fields == {"line": 3}
    assert isinstance(exc, VaultstoreError) and exc.exit_code == 7


def test_weak_password_lists_each_failed_rule() -> None:
    exc = errors.WeakPasswordError(["too short", "no digit"])
    assert exc.failures == ["too short", "no digit"]
    assert "too short" in str(exc) and "no digit" in str(exc)
