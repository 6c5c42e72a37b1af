"""Vault and repository locks: overlap, stale detection, breaking, heartbeats."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.memory_store import MemoryStore
from vaultstore.errors import (
    LockedError,
    NotFoundError,
)
from vaultstore.locks import (
    EXCLUSIVE,
    LockInfo,
    RepositoryLock,
    VaultLock,
    break_lock,
    break_vault_lock,
    inspect_vault_lock,
    list_repository_locks,
    lock_status,
    process_alive,
    process_start,
    this_host,
)
from vaultstore.store.local import LocalStore

REPO_ROOT = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def foreign_info(**changes: object) -> LockInfo:
    now = time.time()
    base = {
        "host": this_host(),
        "pid": os.getpid(),
        "command": "backup",
        "token": "0123456789abcdef",
        "started": now,
        "heartbeat": now,
        "expires": now + 1800,
        "pid_start": process_start(os.getpid()),
    }
    base.update(changes)
    return LockInfo(**base)  # type: ignore[arg-type]


HOLDER = """
import sys
from pathlib import Path
from vaultstore.locks import VaultLock
lock = VaultLock(Path(sys.argv[1]), "backup").acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    path = tmp_path / "vault"
    path.mkdir(mode=0o700)
    return path


def spawn_holder(vault: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(vault)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_vault_lock_writes_a_body_and_empties_it_on_release(vault: Path) -> None:
    with VaultLock(vault, "backup") as lock:
        body = json.loads((vault / "lock").read_bytes())
        assert body["pid"] == os.getpid() and body["command"] == "backup"
        assert body["format"] == "vaultstore-lock" and lock.held
        assert (vault / "lock").stat().st_mode & 0o777 == 0o600
    assert (vault / "lock").read_bytes() == b""
    assert inspect_vault_lock(vault).state == "free"


@pytest.mark.reliability(20)
def test_a_second_process_gets_locked_while_the_first_holds_the_vault(
    vault: Path,
) -> None:
    proc = spawn_holder(vault)
    try:
        with pytest.raises(LockedError) as caught:
            VaultLock(vault, "backup").acquire()
        assert caught.value.exit_code == 5
        assert f"pid {proc.pid}" in caught.value.message
        assert "backup" in caught.value.message
        status = inspect_vault_lock(vault)
        assert status.state == "held" and status.holder is not None
        assert status.holder.pid == proc.pid
        with pytest.raises(LockedError):
            break_vault_lock(vault)  # a live flock cannot be broken
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    with VaultLock(vault, "backup") as lock:
        assert lock.stale is None  # released cleanly: no stale body


@pytest.mark.reliability(20)
def test_holder_killed_leaves_a_stale_body_that_the_next_taker_reports(
    vault: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = spawn_holder(vault)
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        assert pipe is not None
        pipe.close()
    status = inspect_vault_lock(vault)
    assert status.state == "stale" and status.holder is not None
    assert status.holder.pid == proc.pid
    with caplog.at_level(logging.WARNING, logger="vaultstore"):
        with VaultLock(vault, "backup") as lock:
            assert lock.stale is not None and lock.stale.pid == proc.pid
    assert any(getattr(r, "event", None) == "lock.stale" for r in caplog.records)


@pytest.mark.reliability(20)
def test_stale_body_of_a_dead_pid_is_detected_and_broken(vault: Path) -> None:
    gone = dead_pid()
    (vault / "lock").write_bytes(foreign_info(pid=gone, pid_start=None).to_bytes())
    status = inspect_vault_lock(vault)
    assert status.state == "stale" and status.holder is not None
    assert status.holder.pid == gone
    assert break_vault_lock(vault) == status.holder
    assert inspect_vault_lock(vault).state == "free"
    assert break_vault_lock(vault) is None

    (vault / "lock").write_bytes(foreign_info(pid=gone, pid_start=None).to_bytes())
    with VaultLock(vault, "backup") as lock:  # taken over by the next writer
        assert lock.stale is not None and lock.stale.pid == gone
        assert json.loads((vault / "lock").read_bytes())["pid"] == os.getpid()


def test_the_same_process_cannot_take_the_vault_lock_twice(vault: Path) -> None:
    with VaultLock(vault, "backup").acquire() as lock:  # acquire is idempotent
        assert lock.held
        with pytest.raises(LockedError):
            VaultLock(vault, "prune").acquire()


def test_process_alive_notices_a_reused_pid() -> None:
    me = os.getpid()
    start = process_start(me)
    assert process_alive(me, start)
    assert not process_alive(dead_pid())
    assert not process_alive(0)
    if start is not None:
        assert not process_alive(me, start + 1)


# -- repository locks ----------------------------------------------------------


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "memory":
        return MemoryStore()
    return LocalStore(tmp_path / "repo")


def test_exclusive_lock_excludes_a_second_exclusive(store: MemoryStore) -> None:
    with RepositoryLock(store, "prune").acquire() as first:
        assert store.exists(EXCLUSIVE)
        with pytest.raises(LockedError) as caught:
            RepositoryLock(store, "forget").acquire()
        assert (
            "prune" in caught.value.message
            and f"pid {os.getpid()}" in caught.value.message
        )
        assert first.info is not None
    assert not store.exists(EXCLUSIVE)


def test_shared_locks_coexist_but_exclude_an_exclusive(store: MemoryStore) -> None:
    a = RepositoryLock(store, "backup", exclusive=False).acquire()
    b = RepositoryLock(store, "backup", exclusive=False).acquire()
    assert len(list(store.list("locks/shared-"))) == 2
    with pytest.raises(LockedError, match="backup"):
        RepositoryLock(store, "prune").acquire()
    assert not store.exists(EXCLUSIVE)  # the loser removed its own lock
    a.release()
    b.release()
    with RepositoryLock(store, "prune"):
        with pytest.raises(LockedError, match="prune"):
            RepositoryLock(store, "backup", exclusive=False).acquire()
        assert list(store.list("locks/shared-")) == []


@pytest.mark.reliability(20)
def test_a_dead_holder_on_this_host_is_taken_over(store: MemoryStore) -> None:
    store.put(EXCLUSIVE, foreign_info(pid=dead_pid(), pid_start=None).to_bytes())
    status = lock_status(store, EXCLUSIVE)
    assert status is not None and status.stale is not None and "gone" in status.stale
    with RepositoryLock(store, "prune") as lock:
        assert lock.info is not None
        assert LockInfo.from_bytes(store.get(EXCLUSIVE)).token == lock.info.token


def test_another_hosts_lock_is_live_until_its_heartbeat_is_old(
    store: MemoryStore,
) -> None:
    now = time.time()
    fresh = foreign_info(host="elsewhere", pid=1, heartbeat=now - 60)
    store.put(EXCLUSIVE, fresh.to_bytes())
    with pytest.raises(LockedError, match="elsewhere"):
        RepositoryLock(store, "prune", stale_after=600).acquire()
    with pytest.raises(LockedError):
        break_lock(store, EXCLUSIVE, stale_after=600)

    later = now + 3600  # the other host stopped refreshing an hour ago
    status = lock_status(store, EXCLUSIVE, now=later, stale_after=600)
    assert (
        status is not None and status.stale is not None and "heartbeat" in status.stale
    )
    lock = RepositoryLock(
        store, "prune", clock=lambda: later, stale_after=600
    ).acquire()
    lock.release()


def test_force_breaks_a_live_lock(store: MemoryStore) -> None:
    store.put(EXCLUSIVE, foreign_info(host="elsewhere", pid=1).to_bytes())
    broken = break_lock(store, EXCLUSIVE, force=True)
    assert (
        broken is not None
        and broken.holder is not None
        and broken.holder.host == "elsewhere"
    )
    assert not store.exists(EXCLUSIVE)
    assert break_lock(store, EXCLUSIVE) is None


def test_garbage_is_stale_but_an_unknown_version_is_respected(
    store: MemoryStore,
) -> None:
    store.put(EXCLUSIVE, b"\x00garbage")
    [status] = list_repository_locks(store)
    assert status.stale == "unreadable lock body"
    RepositoryLock(store, "prune").acquire().release()

    body = json.loads(foreign_info(host="elsewhere").to_bytes())
    body["version"] = 99
    store.put(EXCLUSIVE, json.dumps(body).encode())
    with pytest.raises(LockedError, match="unknown version"):
        RepositoryLock(store, "prune").acquire()


def test_refresh_renews_the_heartbeat_and_notices_a_lost_lock(
    store: MemoryStore,
) -> None:
    clock = [1000.0]
    lock = RepositoryLock(
        store, "prune", clock=lambda: clock[0], stale_after=100
    ).acquire()
    clock[0] = 1050.0
    lock.refresh()
    assert LockInfo.from_bytes(store.get(EXCLUSIVE)).heartbeat == 1050.0
    status = lock_status(store, EXCLUSIVE, now=1120.0, stale_after=100)
    assert status is not None and status.live

    store.delete(EXCLUSIVE)  # someone broke it
    with pytest.raises(LockedError, match="lost"):
        lock.refresh()
    lock.release()


def test_heartbeat_thread_keeps_the_lock_fresh() -> None:
    store = MemoryStore()
    lock = RepositoryLock(store, "prune").acquire()
    first = LockInfo.from_bytes(store.get(EXCLUSIVE)).heartbeat
    lock.start_heartbeat(0.05)
    time.sleep(0.3)
    renewed = LockInfo.from_bytes(store.get(EXCLUSIVE)).heartbeat
    lock.release()
    assert renewed > first
    assert not store.exists(EXCLUSIVE)


def test_release_leaves_someone_elses_lock_alone() -> None:
    store = MemoryStore()
    lock = RepositoryLock(store, "prune").acquire()
    other = foreign_info(host="elsewhere", pid=1).to_bytes()
    store.put(EXCLUSIVE, other, overwrite=True)
    lock.release()
    assert store.get(EXCLUSIVE) == other


def test_a_missing_vault_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no vault"):
        VaultLock(tmp_path / "absent", "backup").acquire()
