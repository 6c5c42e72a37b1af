"""Cron schedules, catch-up, the daemon loop, and SIGTERM handling."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from vaultstore.errors import InputError, LockedError, StoreError
from vaultstore.retention import DEFAULT_POLICY, SnapshotInfo, plan
from vaultstore.schedule import (
    Daemon,
    Job,
    due_jobs,
    next_run,
    pick_run,
    previous_run,
    read_state,
    validate_cron,
    write_state,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS = [Job("full", "0 0 * * 0"), Job("incremental", "0 0 * * *")]


class FakeTime:
    """An injected clock; sleeping advances it, and stops the daemon at ``end``."""

    def __init__(self, start: datetime, end: datetime | None = None) -> None:
        self.now = start
        self.end = end
        self.daemon: Daemon | None = None
        self.slept: list[float] = []

    def clock(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        if self.end is not None and self.now >= self.end and self.daemon is not None:
            self.daemon.stop("simulation over")


def test_next_and_previous_run_in_a_time_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 6, 1, 21, 0, tzinfo=UTC)  # 23:00 in Berlin
    assert next_run("0 0 * * *", now, berlin) == datetime(2026, 6, 1, 22, 0, tzinfo=UTC)
    assert next_run("0 0 * * *", now, UTC) == datetime(2026, 6, 2, 0, 0, tzinfo=UTC)
    exact = datetime(2026, 6, 7, 0, 0, tzinfo=UTC)  # a Sunday at midnight
    assert previous_run("0 0 * * 0", exact, UTC) == exact
    assert previous_run(
        "0 0 * * 0", exact - timedelta(seconds=1), UTC
    ) == exact - timedelta(days=7)


@pytest.mark.parametrize(
    "bad", ["", "0 0 * *", "61 0 * * *", "0 0 * * * *", "every day"]
)
def test_invalid_cron_is_refused(bad: str) -> None:
    with pytest.raises(InputError, match="cron"):
        validate_cron(bad)
    with pytest.raises(InputError):
        Job("full", bad)


def test_a_missed_run_is_due_once_not_once_per_missed_day() -> None:
    last = {
        "full": datetime(2026, 6, 7, tzinfo=UTC),
        "incremental": datetime(2026, 6, 8, tzinfo=UTC),
    }
    now = datetime(2026, 6, 11, 15, 0, tzinfo=UTC)  # three incrementals missed
    assert due_jobs(JOBS, last, now, UTC) == ["incremental"]
    calls: list[str] = []
    fake = FakeTime(now)
    daemon = Daemon(
        JOBS,
        calls.append,
        clock=fake.clock,
        sleep=fake.sleep,
        max_sleep=None,
        last_runs=last,
    )
    assert daemon.tick() is True
    assert daemon.tick() is False
    assert calls == ["incremental"]


def test_full_wins_when_both_are_due() -> None:
    assert pick_run(["incremental", "full"]) == ("full", ["incremental"])
    assert pick_run(["incremental"]) == ("incremental", [])
    assert pick_run([]) == (None, [])
    sunday = datetime(2026, 6, 7, 0, 0, 30, tzinfo=UTC)
    last = dict.fromkeys(("full", "incremental"), sunday - timedelta(hours=1))
    calls: list[str] = []
    fake = FakeTime(sunday)
    daemon = Daemon(
        JOBS,
        calls.append,
        clock=fake.clock,
        sleep=fake.sleep,
        max_sleep=None,
        last_runs=last,
    )
    daemon.tick()
    daemon.tick()
    assert calls == ["full"]


def test_a_job_that_never_ran_starts_at_its_next_fire_time() -> None:
    start = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)  # a Wednesday
    fake = FakeTime(start, end=start + timedelta(days=2))
    calls: list[tuple[str, datetime]] = []
    daemon = Daemon(
        JOBS,
        lambda k: calls.append((k, fake.now)),
        clock=fake.clock,
        sleep=fake.sleep,
        max_sleep=3600,
    )
    fake.daemon = daemon
    daemon.run()
    assert max(fake.slept) == 3600  # long waits are cut to notice clock jumps
    assert calls == [
        ("incremental", datetime(2026, 6, 4, tzinfo=UTC)),
        ("incremental", datetime(2026, 6, 5, tzinfo=UTC)),
    ]


def test_simulated_year_ends_with_exactly_what_the_default_policy_keeps() -> None:
    start = datetime(2025, 1, 4, 12, 0, tzinfo=UTC)  # a Saturday
    end = start + timedelta(days=365)
    fake = FakeTime(start, end)
    history: dict[str, SnapshotInfo] = {}
    live: dict[str, SnapshotInfo] = {}

    def run_job(kind: str) -> str:
        newest = max(live.values(), key=lambda s: s.seq, default=None)
        parent = newest.id if newest is not None and kind == "incremental" else None
        seq = len(history) + 1
        snap = SnapshotInfo(f"snap{seq:04d}", seq, kind, fake.now, parent)  # type: ignore[arg-type]
        history[snap.id] = live[snap.id] = snap
        fake.now += timedelta(minutes=7)  # the backup takes a while
        return "ok"

    def retention() -> None:
        result = plan(live.values(), DEFAULT_POLICY, now=fake.clock())
        for snap_id in result.remove_ids:
            del live[snap_id]

    daemon = Daemon(
        JOBS,
        run_job,
        retention=retention,
        clock=fake.clock,
        sleep=fake.sleep,
        max_sleep=None,
    )
    fake.daemon = daemon
    runs = daemon.run()

    fulls = sorted(
        (s for s in history.values() if s.type == "full"), key=lambda s: s.seq
    )
    incs = sorted(
        (s for s in history.values() if s.type == "incremental"), key=lambda s: s.seq
    )
    assert runs == len(history) == 365  # one run a day: Sundays are fulls only
    assert len(fulls) == 53 and all(s.time.weekday() == 6 for s in fulls)
    assert all(s.time.weekday() != 6 for s in incs)

    cutoff = incs[-1].time - timedelta(days=30)
    expected = {s.id for s in fulls[-52:]} | {s.id for s in incs if s.time >= cutoff}
    for snap_id in list(expected):  # the chains of kept incrementals
        cur = history[snap_id]
        while cur.type == "incremental" and cur.parent is not None:
            cur = history[cur.parent]
            expected.add(cur.id)
    assert set(live) == expected
    assert len([s for s in live.values() if s.type == "full"]) == 52

    for snap in live.values():  # no incremental whose chain was removed
        cur = snap
        while cur.type == "incremental":
            assert cur.parent in live, f"{snap.id} lost its parent {cur.parent}"
            cur = live[cur.parent]


def test_each_run_is_logged_and_failures_do_not_stop_the_daemon(
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)
    fake = FakeTime(start, end=start + timedelta(days=4))
    outcomes = iter(
        [LockedError("held"), StoreError("s3 down"), RuntimeError("bug"), "partial"]
    )
    retained: list[datetime] = []

    def run_job(kind: str) -> object:
        result = next(outcomes)
        if isinstance(result, Exception):
            raise result
        return result

    daemon = Daemon(
        JOBS,
        run_job,
        retention=lambda: retained.append(fake.now),
        clock=fake.clock,
        sleep=fake.sleep,
        max_sleep=None,
    )
    fake.daemon = daemon
    with caplog.at_level(logging.INFO, logger="vaultstore"):
        assert daemon.run() == 4

    runs = [r for r in caplog.records if getattr(r, "event", None) == "daemon.run"]
    assert [r.outcome for r in runs] == ["locked", "error", "error", "partial"]
    # 4, 5, 6 June are incrementals; 7 June 2026 is a Sunday.
    assert [r.kind for r in runs] == ["incremental"] * 3 + ["full"]
    assert all(isinstance(r.duration, float) and r.start for r in runs)
    assert len(retained) == 1  # retention only after the run that stored something
    assert [r for r in caplog.records if getattr(r, "event", None) == "daemon.stop"]


def test_state_file_catches_up_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "daemon-state.json"
    start = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)
    fake = FakeTime(start, end=start + timedelta(days=1))
    calls: list[str] = []
    first = Daemon(
        JOBS,
        calls.append,
        clock=fake.clock,
        sleep=fake.sleep,
        max_sleep=None,
        state_path=state,
    )
    fake.daemon = first
    first.run()
    assert calls == ["incremental"]
    assert state.stat().st_mode & 0o777 == 0o600
    assert read_state(state)["incremental"] == datetime(2026, 6, 4, tzinfo=UTC)

    # Down for five days, over a Sunday: one full, no pile of incrementals.
    fake2 = FakeTime(datetime(2026, 6, 9, 8, 0, tzinfo=UTC))
    second = Daemon(
        JOBS,
        calls.append,
        clock=fake2.clock,
        sleep=fake2.sleep,
        max_sleep=None,
        state_path=state,
    )
    second.tick()
    second.tick()
    assert calls == ["incremental", "full"]


def test_state_file_garbage_is_an_input_error(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        read_state(state)
    write_state(state, {"full": datetime(2026, 1, 1, tzinfo=UTC), "incremental": None})
    assert read_state(state) == {"full": datetime(2026, 1, 1, tzinfo=UTC)}


def test_stop_interrupts_a_real_sleep() -> None:
    daemon = Daemon([Job("full", "0 0 1 1 *")], lambda k: None)
    timer = threading.Timer(0.2, daemon.stop)
    started = time.monotonic()
    timer.start()
    daemon._sleep(30)  # woken by the pipe, not by the timeout
    elapsed = time.monotonic() - started
    timer.join()
    daemon.close()
    assert 0.15 < elapsed < 1


DAEMON_SCRIPT = """
import sys
from vaultstore.logs import configure
from vaultstore.schedule import Daemon, Job
configure("info")
jobs = [Job("full", "0 0 1 1 *"), Job("incremental", "0 0 * * *")]
daemon = Daemon(jobs, lambda k: None)
daemon.install_signal_handlers()
print("ready", flush=True)
daemon.run()
sys.exit(0)
"""


def test_sigterm_stops_a_real_daemon_within_a_second() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", DAEMON_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(0.2)  # let it reach its sleep
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=5)
            elapsed = time.monotonic() - sent
            assert proc.stderr is not None
            stderr = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0
    assert elapsed < 1.0
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines[-1]["event"] == "daemon.stop"
    assert any(
        line.get("event") == "daemon.stopping" and "SIGTERM" in line["msg"]
        for line in lines
    )


@pytest.mark.reliability(21)
def test_clock_set_back_resumes_at_the_next_fire_time() -> None:
    last = dict.fromkeys(("full", "incremental"), datetime(2026, 6, 20, tzinfo=UTC))
    fake = FakeTime(datetime(2026, 6, 10, 12, 0, tzinfo=UTC))  # ten days earlier
    calls: list[tuple[str, datetime]] = []
    daemon = Daemon(
        JOBS,
        lambda k: calls.append((k, fake.now)),
        clock=fake.clock,
        sleep=fake.sleep,
        max_sleep=None,
        last_runs=last,
    )
    assert daemon.tick() is False
    assert daemon.last_runs["incremental"] == fake.now
    daemon._sleep_until_next()
    assert daemon.tick() is True
    assert calls == [("incremental", datetime(2026, 6, 11, tzinfo=UTC))]
