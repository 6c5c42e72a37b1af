"""Test isolation shared by every test: no VAULTSTORE_* from the caller,
a temporary working directory, and the fast KDF profile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile(
    "deterministic", derandomize=True, deadline=None, max_examples=60
)
settings.load_profile("deterministic")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("VAULTSTORE_") or name == "WALLET_BACKUP_PASSWORD":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULTSTORE_TESTING", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def reset_fault_points() -> object:
    """No fault hook or recording leaks from one test into the next."""
    from vaultstore import faults

    faults.set_hook(None)
    faults.recording = False
    faults.seen.clear()
    yield
    faults.set_hook(None)
    faults.recording = False
    faults.seen.clear()
