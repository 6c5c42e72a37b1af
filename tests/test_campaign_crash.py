"""Crash campaign (RELIABILITY.md case 1): kill -9 at every durable write point.

Each operation is first run once with ``VAULTSTORE_FAULT_LOG`` to enumerate
the durable-write points it passes; then, on a fresh copy of the same state,
the real CLI is SIGKILLed at the Nth point (``VAULTSTORE_FAULT_POINT=*:N``) for
every N. Afterwards:

- every acknowledged event is still in the journal (its digest is unchanged);
- the visible snapshots are the old ones, plus the new one only if the kill
  came after its manifest was published, and then complete;
- ``vaultstore check --read-data`` exits 0 and ``latest`` restores to the
  digest its manifest recorded;
- rerunning the operation completes, and the result restores exactly.

Random-moment kills of a real subprocess run a few times in the fast suite and
``CAMPAIGN_KILLS`` (default 200) times per operation under ``-m slow``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.campaign_support import (
    T0,
    VAULTSTORE,
    Source,
    agent_events,
    lifecycle,
    restore_digest,
    run_cli,
    run_forked,
    run_main,
    snapshot_digests,
)
from vaultstore.journal import Event, Journal

SLOW_KILLS = int(os.environ.get("CAMPAIGN_KILLS", "200"))


@pytest.fixture
def base(tmp_path: Path) -> Source:
    """A vault with one acknowledged full backup and later acknowledged events."""
    src = Source(tmp_path / "base")
    src.append(agent_events(range(40)))
    src.backup("full", T0)
    # Acknowledged after the full: updates, a suspension, a removal, new agents.
    src.append(agent_events(range(35, 48), wei=77))
    src.append(
        [
            Event(
                "lifecycle",
                "agent-00003",
                lifecycle(3, "suspended", suspendedAt=T0 + 9),
            ),
            Event("remove", "agent-00004", None),
        ]
    )
    return src


def enumerate_points(src: Source, tmp_path: Path, *args: str) -> list[str]:
    probe = src.copy_to(tmp_path / "probe")
    trace = tmp_path / "points.log"
    done = run_cli(probe.env(VAULTSTORE_FAULT_LOG=str(trace)), *args)
    assert done.code == 0, done.err
    points = trace.read_text().split()
    trace.unlink()
    return points


def assert_recovers_after_backup_kill(
    work: Source, before: list[bytes], acknowledged: bytes, kind: str, tmp: Path
) -> None:
    """The post-conditions of a backup killed at any moment."""
    assert work.digest() == acknowledged, "an acknowledged event was lost"
    visible = snapshot_digests(work.repo_dir)
    assert visible in (before, [*before, acknowledged]), "a partial snapshot shows"
    check = run_main(work.env(), "check", "--read-data")
    assert check.code == 0, check.out + check.err
    assert restore_digest(work.repo_dir, tmp / "r1") == visible[-1]
    rerun = run_main(work.env(), "backup", f"--{kind}", "--json")
    assert rerun.code == 0, rerun.err
    after = snapshot_digests(work.repo_dir)
    assert after[: len(visible)] == visible and after[-1] == acknowledged
    assert restore_digest(work.repo_dir, tmp / "r2") == acknowledged


@pytest.mark.reliability(1)
@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_kill_at_every_backup_write_point(
    base: Source, tmp_path: Path, kind: str
) -> None:
    points = enumerate_points(base, tmp_path, "backup", f"--{kind}")
    # Every durable step of a local backup is there, the manifest last.
    assert points.count("local.put.before-link") >= 2
    assert points[-1] == "repo.manifest.after-write"
    before, acknowledged = snapshot_digests(base.repo_dir), base.digest()
    for number in range(1, len(points) + 1):
        work = base.copy_to(tmp_path / f"k{number}")
        killed = run_forked(
            work.env(VAULTSTORE_FAULT_POINT=f"*:{number}"), "backup", f"--{kind}"
        )
        assert killed.code == -signal.SIGKILL, (number, points[number - 1], killed.err)
        published = snapshot_digests(work.repo_dir) != before
        # Published exactly when the kill came after the manifest's rename.
        manifest_at = len(points) - points[::-1].index("repo.manifest.before-write")
        link = manifest_at + points[manifest_at:].index("local.put.before-link") + 1
        assert published == (number > link), (number, points[number - 1])
        assert_recovers_after_backup_kill(work, before, acknowledged, kind, work.root)


@pytest.mark.reliability(1)
def test_rerun_after_a_kill_before_the_manifest_dedupes(
    base: Source, tmp_path: Path
) -> None:
    """Packs written by a killed run are reused, not stored a second time."""
    work = base.copy_to(tmp_path / "w")
    killed = run_forked(
        work.env(VAULTSTORE_FAULT_POINT="repo.manifest.before-write"),
        "backup",
        "--incremental",
    )
    assert killed.code == -signal.SIGKILL
    packs = sorted(p.name for p in (work.repo_dir / "data").rglob("*") if p.is_file())
    rerun = run_main(work.env(), "backup", "--incremental", "--json")
    assert rerun.code == 0, rerun.err
    after = sorted(p.name for p in (work.repo_dir / "data").rglob("*") if p.is_file())
    assert after == packs, "the rerun wrote its objects again"


@pytest.mark.reliability(1)
def test_kill_at_every_ingest_write_point(base: Source, tmp_path: Path) -> None:
    ndjson = tmp_path / "run-b.ndjson"
    from tests.journal_data import line

    lines = []
    for i in range(60, 90):
        lines.append(
            line(
                {
                    "kind": "wallet",
                    "wallet": {
                        "agentId": f"agent-{i:05d}",
                        "derivationIndex": i,
                        "evmAddress": "0x" + f"{i + 1:040x}",
                        "xrpAddress": "rHpbKweByKf4HaC3iAATyTagm87Zz3czXd",
                        "createdAt": T0,
                    },
                }
            )
        )
    ndjson.write_text("\n".join(lines) + "\n")
    a = base.digest()
    points = enumerate_points(base, tmp_path, "ingest", str(ndjson))
    assert "journal.commit.before" in points
    full = base.copy_to(tmp_path / "full")
    assert run_main(full.env(), "ingest", str(ndjson)).code == 0
    a_plus_b = full.digest()
    for number in range(1, len(points) + 1):
        work = base.copy_to(tmp_path / f"k{number}")
        killed = run_forked(
            work.env(VAULTSTORE_FAULT_POINT=f"*:{number}"), "ingest", str(ndjson)
        )
        assert killed.code == -signal.SIGKILL
        state = work.digest()
        assert state in (a, a_plus_b), number
        # Committed exactly when the kill came after the commit.
        assert (state == a_plus_b) == (points[number - 1] == "journal.commit.after")
        with Journal.open(work.vault_dir) as journal:
            assert journal.verify_projection() == []
        assert run_main(work.env(), "ingest", str(ndjson)).code == 0
        assert work.digest() == a_plus_b


@pytest.mark.reliability(1)
def test_kill_at_every_export_write_point(base: Source, tmp_path: Path) -> None:
    base.backup("incremental", T0 + 1000)
    out_args = ("export-json", "latest", "-o")
    points = enumerate_points(base, tmp_path, *out_args, str(tmp_path / "p.json"))
    assert "legacy.write.before-rename" in points
    for number in range(1, len(points) + 1):
        work = base.copy_to(tmp_path / f"k{number}")
        out = work.root / "out" / "backup.json"
        killed = run_forked(
            work.env(VAULTSTORE_FAULT_POINT=f"*:{number}"), *out_args, str(out)
        )
        assert killed.code == -signal.SIGKILL
        if out.exists():  # killed after the rename: the file is complete
            verified = run_main(work.env(), "verify-json", str(out))
            assert verified.code == 0, (number, verified.out, verified.err)
        # The repository is untouched by an export.
        assert run_main(work.env(), "check").code == 0
        rerun = run_main(work.env(), *out_args, str(out))
        assert rerun.code == 0, rerun.err
        assert run_main(work.env(), "verify-json", str(out)).code == 0


def _random_kills(base: Source, tmp_path: Path, kind: str, kills: int) -> None:
    """SIGKILL ``backup --KIND`` at random moments across its whole run."""
    rng = random.Random(f"campaign-{kind}-{kills}")
    before, acknowledged = snapshot_digests(base.repo_dir), base.digest()
    probe = base.copy_to(tmp_path / "probe")
    started = time.monotonic()
    assert run_cli(probe.env(), "backup", f"--{kind}").code == 0
    duration = time.monotonic() - started
    outcomes = {"killed": 0, "finished": 0}
    for number in range(kills):
        work = base.copy_to(tmp_path / f"r{number}")
        proc = subprocess.Popen(
            [*VAULTSTORE, "backup", f"--{kind}"],
            env=work.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # A few fixed moments in the fast suite; random ones over the whole run
        # (start-up included, and a little past its end) in the long campaign.
        fraction = (0.45, 0.75)[number % 2] if kills < 10 else rng.uniform(0.05, 1.1)
        time.sleep(fraction * duration)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=60)
        assert code in (0, -signal.SIGKILL), (number, code)
        outcomes["killed" if code == -signal.SIGKILL else "finished"] += 1
        if code == 0:
            assert snapshot_digests(work.repo_dir)[-1] == acknowledged
        assert_recovers_after_backup_kill(work, before, acknowledged, kind, work.root)
        if kills > 20:  # keep the disk small during the long campaign
            shutil.rmtree(work.root)
    assert outcomes["killed"] > 0 or kills < 10, outcomes


@pytest.mark.reliability(1)
@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_random_moment_kills_of_backup(base: Source, tmp_path: Path, kind: str) -> None:
    _random_kills(base, tmp_path, kind, 2)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.reliability(1)
@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_hundreds_of_random_kills_of_backup(tmp_path: Path, kind: str) -> None:
    src = Source(tmp_path / "big")
    src.append(agent_events(range(1500)))
    src.backup("full", T0)
    src.append(agent_events(range(1400, 1700), wei=5))
    _random_kills(src, tmp_path, kind, SLOW_KILLS)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.reliability(1)
def test_hundreds_of_random_kills_of_ingest(base: Source, tmp_path: Path) -> None:
    from tests.journal_data import write_ndjson

    ndjson = write_ndjson(tmp_path / "b.ndjson", range(100, 2100))
    a = base.digest()
    full = base.copy_to(tmp_path / "full")
    started = time.monotonic()
    assert run_cli(full.env(), "ingest", str(ndjson)).code == 0
    duration = time.monotonic() - started
    a_plus_b = full.digest()
    rng = random.Random(11)
    for number in range(SLOW_KILLS):
        work = base.copy_to(tmp_path / f"r{number}")
        proc = subprocess.Popen(
            [*VAULTSTORE, "ingest", str(ndjson)],
            env=work.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, 1.1) * duration)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=60)
        assert code in (0, -signal.SIGKILL), (number, code)
        state = work.digest()
        assert state in (a, a_plus_b)
        if code == 0:
            assert state == a_plus_b
        assert run_main(work.env(), "ingest", str(ndjson)).code == 0
        assert work.digest() == a_plus_b
        shutil.rmtree(work.root)


def first_of_each(points: list[str]) -> list[int]:
    """1-based numbers of the first pass of every distinct point, and the last."""
    return sorted({points.index(p) + 1 for p in points} | {len(points)})


@pytest.mark.reliability(1)
@pytest.mark.parametrize(
    "every", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["sample", "all"]
)
def test_kill_at_every_prune_write_point(tmp_path: Path, every: bool) -> None:
    """forget, then prune killed at each point: what is kept still restores.

    The fast suite kills at the first pass of every distinct point (and at the
    last point); ``-m slow`` at every pass.
    """
    src = Source(tmp_path / "base")
    day = 86_400_000
    past = int(time.time() * 1000) - 400 * day  # forget never touches the future
    src.append(agent_events(range(60)))
    src.backup("full", past)
    src.append(agent_events(range(0, 50), wei=31))  # most records replaced
    src.backup("incremental", past + day)
    src.append(agent_events(range(0, 55), wei=32))
    src.backup("full", past + 2 * day)
    src.append([Event("remove", "agent-00059", None)])
    src.backup("incremental", past + 3 * day)
    kept = snapshot_digests(src.repo_dir)[2:]
    forgot = run_main(src.env(), "forget", "--keep-last", "1", "--json")
    assert forgot.code == 0, forgot.err
    assert snapshot_digests(src.repo_dir) == kept
    args = ("prune", "--repack-threshold", "0.9")
    points = enumerate_points(src, tmp_path, *args)
    assert "prune.before-pack-delete" in points, points
    numbers = range(1, len(points) + 1) if every else first_of_each(points)
    for number in numbers:
        work = src.copy_to(tmp_path / f"k{number}")
        killed = run_forked(work.env(VAULTSTORE_FAULT_POINT=f"*:{number}"), *args)
        assert killed.code == -signal.SIGKILL, (number, killed.err)
        assert snapshot_digests(work.repo_dir) == kept
        check = run_main(work.env(), "check", "--read-data")
        assert check.code == 0, (number, points[number - 1], check.out)
        assert restore_digest(work.repo_dir, work.root / "r1") == kept[-1]
        # The dead prune's exclusive lock is stale (its pid is gone): taken over.
        rerun = run_main(work.env(), *args)
        assert rerun.code == 0, (number, rerun.err)
        assert restore_digest(work.repo_dir, work.root / "r2") == kept[-1]
