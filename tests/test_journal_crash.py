"""kill -9 during `vaultstore ingest`: all of the run or none of it survives.

Each case copies a vault that already holds an acknowledged ingest (run A),
starts `vaultstore ingest` of run B as a real process, SIGKILLs it at a random
moment (or at a named fault point), then reopens the journal and checks:

- its state is exactly "A" or exactly "A + B" (LSN and state digest), and
  "A + B" whenever the process had exited successfully (acknowledged);
- the projection equals a rebuild from the log (``verify_projection``);
- re-running the ingest completes and lands on "A + B".
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.journal_data import agent, lifecycle, line, write_ndjson
from vaultstore.ingest import ingest_file
from vaultstore.journal import Journal

VAULTSTORE = Path(sys.executable).with_name("vaultstore")
RUN_B_AGENTS = 4000

# Runs the real CLI entry point, SIGKILLing itself at the named fault point.
KILL_AT_POINT = """
import os, signal, sys
from vaultstore import faults
target = sys.argv[1]
def hook(name):
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)
faults.set_hook(hook)
sys.argv = ["vaultstore", *sys.argv[2:]]
from vaultstore.cli.main import main
main()
"""


@dataclass
class Scenario:
    base: Path  # vault holding run A, closed
    run_b: Path  # NDJSON of run B
    state_a: tuple[int, bytes]
    state_ab: tuple[int, bytes]
    full_run_seconds: float


def state(vault: Path) -> tuple[int, bytes]:
    with Journal.open(vault) as j:
        return j.last_lsn(), j.state_digest()


def fresh_copy(scenario: Scenario, where: Path) -> Path:
    shutil.copytree(scenario.base, where)
    return where


def ingest_process(vault: Path, source: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(VAULTSTORE), "ingest", str(source)],
        env={**os.environ, "VAULTSTORE_VAULT": str(vault)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    work = tmp_path_factory.mktemp("crash")
    run_a = write_ndjson(work / "a.ndjson", range(300))
    run_b = write_ndjson(work / "b.ndjson", range(300, 300 + RUN_B_AGENTS))
    with open(run_b, "a", encoding="utf-8") as out:
        for i in range(0, 300, 3):  # B also changes agents A created
            record = lifecycle(i, "suspended", suspensionReason="audit")
            out.write(line({"kind": "lifecycle", "record": record}) + "\n")
            out.write(line({"kind": "remove", "agentId": agent(i + 1)}) + "\n")
    with Journal.create(work / "base") as j:
        ingest_file(j, run_a)
        state_a = j.last_lsn(), j.state_digest()

    reference = fresh_copy(
        Scenario(work / "base", run_b, state_a, state_a, 0), work / "r"
    )
    start = time.monotonic()
    child = ingest_process(reference, run_b)
    assert child.wait(timeout=120) == 0, "vaultstore ingest failed"
    seconds = time.monotonic() - start
    state_ab = state(reference)
    assert state_ab[0] > state_a[0]
    return Scenario(work / "base", run_b, state_a, state_ab, seconds)


def check_after_crash(scenario: Scenario, vault: Path, acknowledged: bool) -> str:
    found = state(vault)
    assert found in (scenario.state_a, scenario.state_ab), found
    if acknowledged:
        assert found == scenario.state_ab
    with Journal.open(vault) as j:
        assert j.verify_projection() == []
        ingest_file(j, scenario.run_b)  # re-running completes
        assert (j.last_lsn(), j.state_digest()) == scenario.state_ab
        assert j.verify_projection() == []
    return "all" if found == scenario.state_ab else "none"


def kill_campaign(scenario: Scenario, tmp_path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    outcomes: list[str] = []
    for n in range(kills):
        vault = fresh_copy(scenario, tmp_path / f"v{n}")
        delay = rng.uniform(0.1, 1.1) * scenario.full_run_seconds
        child = ingest_process(vault, scenario.run_b)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        code = child.wait(timeout=60)
        outcomes.append(check_after_crash(scenario, vault, acknowledged=code == 0))
        shutil.rmtree(vault)
    # The campaign must have hit the run mid-way at least once, not only before
    # or after it: otherwise it proves nothing about the transaction.
    assert "none" in outcomes, outcomes


def test_kill_during_ingest_at_random_moments(
    scenario: Scenario, tmp_path: Path
) -> None:
    kill_campaign(scenario, tmp_path, kills=10, seed=2026)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_during_ingest_campaign(scenario: Scenario, tmp_path: Path) -> None:
    kill_campaign(scenario, tmp_path, kills=100, seed=7)


@pytest.mark.parametrize(
    ("point", "expected"),
    [("journal.commit.before", "none"), ("journal.commit.after", "all")],
)
def test_kill_at_commit_points(
    scenario: Scenario, tmp_path: Path, point: str, expected: str
) -> None:
    vault = fresh_copy(scenario, tmp_path / "v")
    done = subprocess.run(
        [sys.executable, "-c", KILL_AT_POINT, point, "ingest", str(scenario.run_b)],
        env={**os.environ, "VAULTSTORE_VAULT": str(vault)},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert check_after_crash(scenario, vault, acknowledged=False) == expected
