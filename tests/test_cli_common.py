"""Shared CLI plumbing: private log files, password-file permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultstore.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


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
