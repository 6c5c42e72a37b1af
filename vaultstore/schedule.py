"""Cron schedules and the backup daemon.

Schedules are five-field cron expressions (``croniter``) evaluated in one time
zone (UTC unless configured): the seed's defaults are a weekly full at
``0 0 * * 0`` and a daily incremental at ``0 0 * * *``.

Catch-up: a job is *due* when its most recent fire time at or before now is
later than its last run. A daemon that was down for three days therefore runs
a missed job once, not three times. A job that never ran has no catch-up: its
first run is its next fire time.

:class:`Daemon` runs the jobs one at a time. When both are due in one tick the
full wins and the incremental is skipped (the full covers everything it would
have stored). After each successful run it calls the retention callback. Every
run is logged as event ``daemon.run`` with kind, start, duration and outcome.
SIGTERM or SIGINT sets a stop flag that is checked between runs and wakes the
sleep at once; a run in progress is allowed to finish.

State file (optional, JSON, 0600, written atomically: temp, fsync, rename)::

    {"format": "vaultstore-daemon-state", "version": 1,
     "last_run": {"full": "<ISO-8601>", "incremental": "<ISO-8601>"}}
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from vaultstore import durable
from vaultstore.errors import InputError, LocalIOError, LockedError, VaultstoreError

log = logging.getLogger(__name__)

JOB_KINDS = ("full", "incremental")
STATE_FORMAT = "vaultstore-daemon-state"
STATE_VERSION = 1

Clock = Callable[[], datetime]
Sleep = Callable[[float], None]
RunJob = Callable[[str], object]
Retention = Callable[[], object]


def validate_cron(expression: str, what: str = "schedule") -> str:
    """Return the expression if it is a valid five-field cron line.

    Raises:
        InputError: not five fields, or a field croniter rejects.
    """
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise InputError(
            f"{what}: {expression!r} is not a five-field cron expression "
            "(minute hour day-of-month month day-of-week)"
        )
    return expression


def load_timezone(name: str) -> tzinfo:
    """A ``zoneinfo`` time zone by IANA name (``UTC``, ``Europe/Berlin``).

    Raises:
        InputError: unknown zone.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"unknown time zone {name!r}") from exc


def next_run(expression: str, after: datetime, tz: tzinfo) -> datetime:
    """The first fire time strictly after ``after``, as an aware time in ``tz``."""
    return croniter(expression, after.astimezone(tz)).get_next(datetime)  # type: ignore[no-any-return]


def next_runs(
    expression: str, after: datetime, tz: tzinfo, count: int
) -> list[datetime]:
    """The next ``count`` fire times after ``after``."""
    it = croniter(expression, after.astimezone(tz))
    return [it.get_next(datetime) for _ in range(count)]


def previous_run(expression: str, now: datetime, tz: tzinfo) -> datetime:
    """The latest fire time at or before ``now``."""
    # croniter's get_prev is strictly before its start; one second later makes
    # a fire time exactly at ``now`` count.
    start = now.astimezone(tz) + timedelta(seconds=1)
    found: datetime = croniter(expression, start).get_prev(datetime)
    return found


@dataclass(frozen=True)
class Job:
    """One scheduled backup kind."""

    kind: str
    cron: str

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise InputError(f"unknown job kind {self.kind!r}")
        validate_cron(self.cron, f"{self.kind} schedule")


def due_jobs(
    jobs: list[Job],
    last_runs: Mapping[str, datetime | None],
    now: datetime,
    tz: tzinfo,
) -> list[str]:
    """Kinds whose latest fire time at or before ``now`` is after their last run.

    A job with no last run is never due here: the caller sets its baseline.
    """
    due = []
    for job in jobs:
        last = last_runs.get(job.kind)
        if last is not None and previous_run(job.cron, now, tz) > last:
            due.append(job.kind)
    return due


def pick_run(due: list[str]) -> tuple[str | None, list[str]]:
    """The kind to run now and the kinds skipped in its favour (full wins)."""
    if not due:
        return None, []
    chosen = "full" if "full" in due else due[0]
    return chosen, [k for k in due if k != chosen]


def read_state(path: Path) -> dict[str, datetime]:
    """Last run per kind from a state file; missing file = no history.

    Raises:
        InputError: the file is not a daemon state file.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(raw)
        if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
            raise ValueError("not a daemon state file of a known version")
        return {
            kind: datetime.fromisoformat(value)
            for kind, value in data["last_run"].items()
            if kind in JOB_KINDS
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"daemon state file {path} is unreadable: {exc}") from exc


def write_state(path: Path, last_runs: Mapping[str, datetime | None]) -> None:
    """Write the state file atomically (temp file, fsync, rename, fsync dir).

    Raises:
        LocalIOError: the file could not be written; the old one is intact.
    """
    body = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "last_run": {k: v.isoformat() for k, v in last_runs.items() if v is not None},
    }
    durable.write_atomic(
        path,
        json.dumps(body, sort_keys=True).encode("utf-8"),
        what=f"daemon state file {path}",
    )


def utc_now() -> datetime:
    """The real clock, as an aware UTC time."""
    return datetime.now(UTC)


class Daemon:
    """Runs the full and incremental schedules, one run at a time, until stopped."""

    def __init__(
        self,
        jobs: list[Job],
        run_job: RunJob,
        *,
        tz: tzinfo = UTC,
        retention: Retention | None = None,
        clock: Clock = utc_now,
        sleep: Sleep | None = None,
        last_runs: Mapping[str, datetime | None] | None = None,
        state_path: Path | None = None,
        max_sleep: float | None = 300.0,
    ) -> None:
        if not jobs:
            raise InputError("the daemon needs at least one schedule")
        self.jobs = list(jobs)
        self.run_job = run_job
        self.tz = tz
        self.retention = retention
        self.clock = clock
        self.state_path = state_path
        # Long sleeps are cut so a wall-clock jump (suspend, NTP step) is seen.
        self.max_sleep = max_sleep
        self.runs = 0
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._sleep = sleep if sleep is not None else self._interruptible_sleep
        known = dict(last_runs or {})
        if state_path is not None and not known:
            known = dict(read_state(state_path))
        self.last_runs: dict[str, datetime | None] = {
            job.kind: known.get(job.kind) for job in self.jobs
        }

    # -- control -------------------------------------------------------------

    def stop(self, reason: str = "requested") -> None:
        """Ask the loop to end after the current run; wakes a sleep at once."""
        if not self._stopping:
            log.info("daemon stopping: %s", reason, extra={"event": "daemon.stopping"})
        self._stopping = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass  # the pipe is full: one byte in it is enough

    @property
    def stopping(self) -> bool:
        """Whether stop() has been called."""
        return self._stopping

    def install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT (call from the main thread)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _interruptible_sleep(self, seconds: float) -> None:
        if seconds > 0 and not self._stopping and self._wake_r >= 0:
            select.select([self._wake_r], [], [], seconds)

    def close(self) -> None:
        """Release the wake-up pipe (run() does this when it returns)."""
        fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        """Loop until stopped; returns the number of runs made."""
        now = self.clock()
        for kind, last in self.last_runs.items():
            if last is None:
                self.last_runs[kind] = now
        log.info(
            "daemon started",
            extra={"event": "daemon.start", "schedules": self.describe(now)},
        )
        try:
            while not self._stopping:
                if not self.tick():
                    self._sleep_until_next()
        finally:
            self.close()
            log.info(
                "daemon stopped after %d runs",
                self.runs,
                extra={"event": "daemon.stop", "runs": self.runs},
            )
        return self.runs

    def describe(self, now: datetime) -> dict[str, dict[str, str]]:
        """Each job's cron line and next fire time (for logs and ``config show``)."""
        return {
            job.kind: {
                "cron": job.cron,
                "next": next_run(job.cron, now, self.tz).isoformat(),
            }
            for job in self.jobs
        }

    def tick(self) -> bool:
        """Run what is due now, if anything; returns whether a run happened."""
        now = self.clock()
        self._notice_clock_going_back(now)
        chosen, skipped = pick_run(due_jobs(self.jobs, self.last_runs, now, self.tz))
        if chosen is None:
            return False
        for kind in skipped:
            self.last_runs[kind] = now
            log.info(
                "%s run skipped: a full runs in the same tick",
                kind,
                extra={"event": "daemon.skip", "kind": kind, "instead": chosen},
            )
        self.last_runs[chosen] = now
        outcome = self._run_one(chosen, now)
        # Saved after the run: a daemon killed mid-run catches the run up.
        self._save_state()
        if outcome == "ok" and self.retention is not None:
            self._apply_retention(self.retention)
        return True

    def _notice_clock_going_back(self, now: datetime) -> None:
        # A last run in the future means the clock was set back. Waiting for
        # the clock to pass it again could stall the schedule for days, so
        # the job restarts from now: its next run is its next fire time.
        for kind, last in self.last_runs.items():
            if last is not None and last > now:
                log.warning(
                    "clock went back: last %s run %s is after now %s",
                    kind,
                    last.isoformat(),
                    now.isoformat(),
                    extra={"event": "daemon.clock", "kind": kind},
                )
                self.last_runs[kind] = now

    def _run_one(self, kind: str, start: datetime) -> str:
        started = time.monotonic()
        outcome, detail = "ok", None
        try:
            result = self.run_job(kind)
            if isinstance(result, str):
                outcome = result
        except LockedError as exc:
            outcome, detail = "locked", exc.message
        except VaultstoreError as exc:
            outcome, detail = "error", exc.message
        except Exception as exc:  # a daemon outlives one broken run
            log.exception("%s run crashed", kind, extra={"event": "daemon.crash"})
            outcome, detail = "error", type(exc).__name__
        self.runs += 1
        fields: dict[str, Any] = {
            "event": "daemon.run",
            "kind": kind,
            "start": start.isoformat(),
            "duration": round(time.monotonic() - started, 3),
            "outcome": outcome,
        }
        if detail is not None:
            fields["detail"] = detail
        level = logging.INFO if outcome in ("ok", "partial") else logging.ERROR
        log.log(level, "%s backup run: %s", kind, outcome, extra=fields)
        return "ok" if outcome in ("ok", "partial") else outcome

    def _apply_retention(self, retention: Retention) -> None:
        try:
            retention()
        except VaultstoreError as exc:
            log.error(
                "retention failed: %s",
                exc.message,
                extra={"event": "daemon.retention", "outcome": "error"},
            )
        except Exception:
            log.exception("retention crashed", extra={"event": "daemon.retention"})

    def _sleep_until_next(self) -> None:
        now = self.clock()
        upcoming = min(next_run(job.cron, now, self.tz) for job in self.jobs)
        seconds = max((upcoming - now).total_seconds(), 0.0)
        if self.max_sleep is not None:
            seconds = min(seconds, self.max_sleep)
        self._sleep(seconds)

    def _save_state(self) -> None:
        if self.state_path is not None:
            try:
                write_state(self.state_path, self.last_runs)
            except LocalIOError as exc:
                log.warning(
                    "cannot write daemon state %s: %s",
                    self.state_path,
                    exc,
                    extra={"event": "daemon.state"},
                )
