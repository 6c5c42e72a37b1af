"""The disaster-recovery drill: passes end to end, and its comparison can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vaultstore.journal import Event, Journal
from vaultstore.ops.drill import _compare, run_drill


def balances(agent: str, amount: int) -> list[dict[str, object]]:
    entry = {
        "agentId": agent,
        "chain": "evm",
        "token": "ETH",
        "balance": str(amount),
        "lastUpdated": 1,
    }
    return [entry]


def test_drill_passes_and_reports_every_step(tmp_path: Path) -> None:
    report = run_drill(120, workdir=tmp_path, kdf_profile="test")
    assert report.ok, report.as_text()
    assert report.restored_agents == 120 + 2  # newcomers added before the incremental
    assert report.wallets_verified == report.restored_agents
    assert report.balances["checked"] > 0 and report.balances["mismatched"] == 0
    assert [s["type"] for s in report.snapshots] == ["full", "incremental"]
    assert {"backup full", "restore", "reconcile balances"} <= set(report.timings)
    assert list(tmp_path.iterdir()) == []  # scratch removed


def test_drill_cli_prints_json_report(tmp_path: Path) -> None:
    env = {"VAULTSTORE_TESTING": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaultstore.cli.main",
            "drill",
            "--agents",
            "50",
            "--json",
            "--workdir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is True and data["digest_match"] is True


def test_compare_names_each_kind_of_difference(tmp_path: Path) -> None:
    left = Journal.create(tmp_path / "a")
    right = Journal.create(tmp_path / "b")
    left.append(
        [Event("balances", f"agent-{n}", balances(f"agent-{n}", n)) for n in range(5)]
    )
    right.append(
        [
            Event("balances", f"agent-{n}", balances(f"agent-{n}", n))
            for n in range(1, 5)
        ]
    )
    right.append(
        [
            Event("balances", "agent-3", balances("agent-3", 999)),
            Event("balances", "agent-9", balances("agent-9", 9)),
        ]
    )
    diffs = _compare(left, right)
    assert diffs == {
        "missing": 1,
        "extra": 1,
        "wallet": 0,
        "lifecycle": 0,
        "balances": 1,
    }
    left.close()
    right.close()
