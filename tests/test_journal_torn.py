"""RELIABILITY case 3, for real: an ingest killed before its commit is dropped,
and the next command that opens the journal says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaultstore.journal import Journal


def vaultstore(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultstore.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.reliability(3)
def test_a_killed_ingest_is_dropped_with_a_warning(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    Journal.create(vault).close()
    line = {
        "kind": "balances",
        "agentId": "agent-1",
        "balances": [
            {
                "agentId": "agent-1",
                "chain": "evm",
                "token": "ETH",
                "balance": "5",
                "lastUpdated": 1,
            }
        ],
    }
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(line) + "\n")
    env = dict(os.environ, VAULTSTORE_TESTING="1", VAULTSTORE_VAULT=str(vault))

    killed = vaultstore(
        dict(env, VAULTSTORE_FAULT_POINT="journal.commit.before"), "ingest", str(events)
    )
    assert killed.returncode == -9
    status = vaultstore(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["agents"] == 0
    assert "journal.torn-write-dropped" in status.stderr
    again = vaultstore(env, "status", "--json")
    assert "journal.torn-write-dropped" not in again.stderr  # said once

    assert vaultstore(env, "ingest", str(events)).returncode == 0
    done = vaultstore(env, "status", "--json")
    assert json.loads(done.stdout)["agents"] == 1
