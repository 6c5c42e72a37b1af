"""Shared CLI plumbing: private log files, password-file permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultstore.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.reliability(24, 25)
def test_the_log_file_is_private_and_loose_password_files_are_named(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "password"
    secret.write_text("Loose-Password-File-1!\n")
    os.chmod(secret, 0o644)
    log_file = tmp_path / "vaultstore.log"
    env = dict(os.environ, VAULTSTORE_TESTING="1", VAULTSTORE_VAULT=str(tmp_path / "v"))
    env.pop("VAULTSTORE_PASSWORD", None)
    done = run(
        dict(env, VAULTSTORE_PASSWORD_FILE=str(secret)),
        "--log-file",
        str(log_file),
        "init",
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    events = [
        json.loads(line)["event"]
        for line in log_file.read_text().splitlines()
        if "event" in json.loads(line)
    ]
    assert "password.file-permissions" in events
    assert "Loose-Password-File-1!" not in log_file.read_text()


@pytest.mark.reliability(25)
def test_strict_refuses_loose_permissions_and_names_them(tmp_path: Path) -> None:
    vault = tmp_path / "v"
    repo = tmp_path / "repo"
    env = dict(
        os.environ,
        VAULTSTORE_TESTING="1",
        VAULTSTORE_VAULT=str(vault),
        VAULTSTORE_REPOSITORY=str(repo),
        VAULTSTORE_PASSWORD="Strict-Mode-Passw0rd!",
    )
    assert run(env, "init").returncode == 0
    assert run(env, "--strict", "status").returncode == 0  # 0700 / 0600: fine
    os.chmod(vault, 0o755)
    keys = sorted((repo / "keys").iterdir())
    os.chmod(keys[0], 0o644)
    refused = run(env, "--strict", "status")
    assert refused.returncode == 2
    assert str(vault) in refused.stderr and str(keys[0]) in refused.stderr
    warned = run(env, "snapshots")  # opens the vault, which warns
    assert warned.returncode == 0
    assert "vault.loose-permissions" in warned.stderr
