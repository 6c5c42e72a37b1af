"""A fresh full built by two processes (``vaultstore.repo.split``) against one.

Real journals (SQLite files) and a real helper process; the threshold is
lowered so that a few thousand agents take the two-process path.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.campaign_support import (
    VAULTSTORE,
    Source,
    agent_events,
    restore_digest,
    run_cli,
    run_forked,
    run_main,
    snapshot_digests,
)
from tests.repo_fakejournal import state_digest_of
from vaultstore.crypto.purpose import RepoKeys
from vaultstore.errors import IntegrityError, LocalIOError
from vaultstore.journal import Event, Journal
from vaultstore.model import Record
from vaultstore.repo import split
from vaultstore.repo.repository import Repository
from vaultstore.store.local import LocalStore

KEYS = RepoKeys.from_master(bytes(range(32)))


def record(n: int) -> Record:
    agent = f"agent-{n:05d}"
    wallet = {"agentId": agent, "derivationIndex": n, "evmAddress": "0x" + "b" * 40}
    if n % 7 == 0:
        wallet["metadata"] = {"note": "x" * 5000}  # batches also close by size
    life = {"agentId": agent, "state": "active", "createdAt": 1}
    balances = [{"agentId": agent, "chain": "evm", "token": "ETH", "balance": str(n)}]
    return Record(agent, wallet, life, balances)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal.bulk_load(tmp_path / "vault", (record(n) for n in range(4000)), 10)
    removed = [Event("remove", f"agent-{n:05d}", None) for n in range(0, 4000, 11)]
    j.append(removed)  # tombstones in the projection
    return j


def repository(tmp_path: Path, name: str, seed: int) -> Repository:
    store = LocalStore(tmp_path / name)
    return Repository(
        store, bytes([seed]) * 16, KEYS, tmp_path / f"{name}-cache", batch_records=9
    )


def full(repo: Repository, journal: Journal) -> Any:
    repo.backup(journal, "full", {}, "host", 1_800_000_000_000)
    return repo.resolve()[-1]


def test_two_processes_write_the_tree_one_process_writes(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULTSTORE_SPLIT_MIN", str(1 << 40))
    alone_repo = repository(tmp_path, "alone", 1)
    alone = full(alone_repo, journal)
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(list(args))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(split.subprocess, "Popen", popen)
    monkeypatch.setenv("VAULTSTORE_SPLIT_MIN", "100")
    repo = repository(tmp_path, "split", 2)
    halves = full(repo, journal)
    assert len(started) == 1 and started[0][-2:] == [
        "vaultstore.full_worker",
        str(journal.path),
    ]
    # The same records in the same order; only the batches around the split
    # point are cut differently (each half closes its own last batch).
    assert list(repo.iter_state(halves)) == list(alone_repo.iter_state(alone))
    assert halves.agents == alone.agents == 4000 - len(range(0, 4000, 11))
    assert halves.records_added == alone.records_added == halves.agents
    assert state_digest_of(repo.iter_state(halves)) == journal.state_digest()
    assert halves.digest_after == journal.state_digest()


def test_no_key_reaches_the_helpers_argv_or_environment(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_popen = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        seen.append((list(args), dict(kwargs["env"])))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(split.subprocess, "Popen", popen)
    monkeypatch.setenv("VAULTSTORE_SPLIT_MIN", "100")
    monkeypatch.setenv("VAULTSTORE_PASSWORD", "Split-Helper-Passw0rd!")
    full(repository(tmp_path, "r", 3), journal)
    assert seen
    assert all("VAULTSTORE_PASSWORD" not in env for _, env in seen)
    assert all(
        "Split-Helper-Passw0rd!" not in " ".join(env.values()) for _, env in seen
    )
    secrets = [KEYS.object_id, KEYS.seal, KEYS.record_id]
    for args, env in seen:
        text = " ".join(args + [f"{k}={v}" for k, v in env.items()])
        for key in secrets:
            assert key.hex() not in text and key.hex().upper() not in text
            assert key.decode("latin-1") not in text


def test_a_killed_helper_fails_the_backup_and_publishes_nothing(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_popen = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real_popen(args, **kwargs)
        child.kill()
        return child

    monkeypatch.setattr(split.subprocess, "Popen", popen)
    monkeypatch.setenv("VAULTSTORE_SPLIT_MIN", "100")
    repo = repository(tmp_path, "r", 4)
    with pytest.raises(LocalIOError, match="full-backup helper"):
        full(repo, journal)
    assert repo.snapshots() == []
    monkeypatch.setattr(split.subprocess, "Popen", real_popen)
    head = full(repo, journal)  # the rerun completes
    assert state_digest_of(repo.iter_state(head)) == journal.state_digest()


def test_a_helper_whose_view_moved_on_leaves_its_half_to_the_backup(
    tmp_path: Path, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper that sees another LSN answers "moved": the parent builds that
    half itself, into the very tree the helper would have written."""
    real_init = split.HalfBuilder.__init__

    def stale(self: split.HalfBuilder, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **{**kwargs, "lsn": kwargs["lsn"] - 1})

    answers: list[object] = []
    real_result = split.HalfBuilder.result

    def result(self: split.HalfBuilder) -> object:
        answers.append(real_result(self))
        return answers[-1]

    monkeypatch.setattr(split.HalfBuilder, "__init__", stale)
    monkeypatch.setattr(split.HalfBuilder, "result", result)
    monkeypatch.setenv("VAULTSTORE_SPLIT_MIN", "100")
    moved = full(repository(tmp_path, "moved", 5), journal)
    assert answers == [None]
    monkeypatch.undo()
    monkeypatch.setenv("VAULTSTORE_SPLIT_MIN", "100")
    helped = full(repository(tmp_path, "helped", 6), journal)
    assert moved.root == helped.root


def test_a_truncated_spool_is_refused(tmp_path: Path) -> None:
    builder = split.HalfBuilder.__new__(split.HalfBuilder)
    builder._spool = (tmp_path / "spool").open("w+b")
    builder._spool.write(split.SPOOL_HEADER.pack(1, bytes(32), 100) + b"short")
    with pytest.raises(IntegrityError, match="truncated spool"):
        list(builder.objects())
    builder._spool.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Source:
    """A vault of 300 agents with no backup yet: its first full is split."""
    src = Source(tmp_path / "base")
    src.append(agent_events(range(300)))
    src.append([Event("remove", "agent-00007", None)])
    return src


@pytest.mark.reliability(1)
def test_kill_at_every_write_point_of_a_split_full(
    fresh: Source, tmp_path: Path
) -> None:
    split_env = {"VAULTSTORE_SPLIT_MIN": "100"}
    probe = fresh.copy_to(tmp_path / "probe")
    trace = tmp_path / "points.log"
    done = run_cli(
        probe.env(VAULTSTORE_FAULT_LOG=str(trace), **split_env), "backup", "--full"
    )
    assert done.code == 0, done.err
    points = trace.read_text().split()
    assert points[-1] == "repo.manifest.after-write"
    acknowledged = fresh.digest()
    for number in range(1, len(points) + 1):
        work = fresh.copy_to(tmp_path / f"k{number}")
        env = work.env(VAULTSTORE_FAULT_POINT=f"*:{number}", **split_env)
        killed = run_forked(env, "backup", "--full")
        assert killed.code == -signal.SIGKILL, (number, killed.err)
        assert_recovers(work, acknowledged, tmp_path / f"k{number}-r", split_env)


@pytest.mark.reliability(1)
def test_kills_at_random_moments_of_a_split_full(fresh: Source, tmp_path: Path) -> None:
    """Killed while the helper process works too: no helper outlives it for
    long, nothing partial is visible, and the rerun completes."""
    split_env = {"VAULTSTORE_SPLIT_MIN": "100"}
    probe = fresh.copy_to(tmp_path / "probe")
    started = time.monotonic()
    assert run_cli(probe.env(**split_env), "backup", "--full").code == 0
    duration = time.monotonic() - started
    acknowledged = fresh.digest()
    for number, fraction in enumerate((0.5, 0.7, 0.85)):
        work = fresh.copy_to(tmp_path / f"r{number}")
        proc = subprocess.Popen(
            [*VAULTSTORE, "backup", "--full"],
            env=work.env(**split_env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(fraction * duration)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=60)
        assert code in (0, -signal.SIGKILL), (number, code)
        assert_recovers(work, acknowledged, tmp_path / f"r{number}-r", split_env)


def assert_recovers(
    work: Source, acknowledged: bytes, scratch: Path, env: dict[str, str]
) -> None:
    assert work.digest() == acknowledged, "an acknowledged event was lost"
    visible = snapshot_digests(work.repo_dir)
    assert visible in ([], [acknowledged]), "a partial snapshot shows"
    check = run_main(work.env(), "check", "--read-data")
    assert check.code == 0, check.out + check.err
    rerun = run_main(work.env(**env), "backup", "--full", "--json")
    assert rerun.code == 0, rerun.err
    assert snapshot_digests(work.repo_dir)[-1] == acknowledged
    assert restore_digest(work.repo_dir, scratch) == acknowledged
