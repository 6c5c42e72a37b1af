"""Vault and repository locks, with stale-lock detection.

**Vault lock** (``<vault>/lock``, 0600). Every writer takes an exclusive
``fcntl.flock`` on the file, without waiting, and then writes a JSON body
naming itself. The kernel drops a flock when its holder dies, so a dead
process never blocks anyone; a body found on a file whose flock is free was
left by a holder that died (a clean release empties it), and is reported as
stale and replaced. The file is never unlinked: two processes could otherwise
lock two different inodes under the same name. flock conflicts between two
open file descriptions even inside one process, so a process takes the vault
lock once and passes it down.

**Repository lock** (``locks/<name>`` through the Store protocol, so it works
on a directory and on S3 alike). ``locks/exclusive`` is created with
put-if-absent (forget, prune); shared locks are ``locks/shared-<token>``
(backups). Each side writes its own lock first and then looks for the other
kind, so of two that race at least one sees the other and backs off. A lock
is stale when its holder ran on this host and that process is gone (pid and
process start time, so a reused pid does not keep it alive), or when its
heartbeat is older than ``stale_after`` seconds; long holders refresh it with
:meth:`RepositoryLock.refresh` or :meth:`RepositoryLock.start_heartbeat`.
Breaking a stale lock re-reads it first and deletes it only if unchanged;
on a store without conditional delete a small window remains, which the
read-back after acquiring (the body must carry our token) closes for the
winner.

Lock body (both kinds), UTF-8 JSON::

    {"format": "vaultstore-lock", "version": 1, "host": "...", "pid": 123,
     "pid_start": 456789 | null, "command": "backup", "token": "<16 hex>",
     "started": <unix s>, "heartbeat": <unix s>, "expires": <unix s>}

Nothing in a lock is secret; nothing secret may be put in ``command``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

from vaultstore.errors import (
    LocalIOError,
    LockedError,
    NotFoundError,
    ObjectExistsError,
    ObjectMissingError,
    UnsupportedVersionError,
)
from vaultstore.store.base import Store

log = logging.getLogger(__name__)

LOCK_FORMAT = "vaultstore-lock"
LOCK_VERSION = 1
DEFAULT_STALE_AFTER = 1800.0
EXCLUSIVE = "locks/exclusive"
SHARED_PREFIX = "locks/shared-"

Clock = Callable[[], float]


# -- lock bodies ---------------------------------------------------------------


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or held) a lock."""

    host: str
    pid: int
    command: str
    token: str
    started: float
    heartbeat: float
    expires: float
    pid_start: int | None = None

    def to_bytes(self) -> bytes:
        """The JSON body."""
        body = {"format": LOCK_FORMAT, "version": LOCK_VERSION, **asdict(self)}
        return json.dumps(body, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LockInfo:
        """Parse a body.

        Raises:
            ValueError: not a lock body at all (empty, torn, garbage).
            UnsupportedVersionError: a lock body of an unknown version.
        """
        body = json.loads(data.decode("utf-8"))
        if not isinstance(body, dict) or body.get("format") != LOCK_FORMAT:
            raise ValueError("not a vaultstore lock body")
        if body.get("version") != LOCK_VERSION:
            raise UnsupportedVersionError(
                f"lock body version {body.get('version')!r} is not supported"
            )
        try:
            return cls(
                host=str(body["host"]),
                pid=int(body["pid"]),
                command=str(body["command"]),
                token=str(body["token"]),
                started=float(body["started"]),
                heartbeat=float(body["heartbeat"]),
                expires=float(body["expires"]),
                pid_start=None
                if body.get("pid_start") is None
                else int(body["pid_start"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"lock body lacks a field: {exc}") from exc

    def describe(self) -> str:
        """``pid 12 on host h (command 'backup', since <UTC time>)``."""
        since = datetime.fromtimestamp(self.started, UTC).isoformat()
        return (
            f"pid {self.pid} on host {self.host} "
            f"(command {self.command!r}, since {since})"
        )

    def as_dict(self) -> dict[str, object]:
        """Fields for logs, errors and ``--json`` output."""
        return asdict(self)


def this_host() -> str:
    """The name locks record for this machine."""
    return socket.gethostname()


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, pid_start: int | None = None) -> bool:
    """Whether ``pid`` runs on this host and, if known, started at ``pid_start``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if pid_start is not None:
        current = process_start(pid)
        if current is not None and current != pid_start:
            return False  # the pid was reused by another process
    return True


def stale_reason(
    info: LockInfo, *, now: float, host: str, stale_after: float
) -> str | None:
    """Why the lock is stale, or None if its holder may still be working."""
    if info.host == host and not process_alive(info.pid, info.pid_start):
        return f"process {info.pid} on this host is gone"
    if now - info.heartbeat > stale_after:
        age = int(now - info.heartbeat)
        return f"no heartbeat for {age} s (limit {int(stale_after)} s)"
    return None


def _new_info(command: str, now: float, stale_after: float) -> LockInfo:
    pid = os.getpid()
    return LockInfo(
        host=this_host(),
        pid=pid,
        command=command,
        token=secrets.token_hex(8),
        started=now,
        heartbeat=now,
        expires=now + stale_after,
        pid_start=process_start(pid),
    )


# -- the vault lock ------------------------------------------------------------


@dataclass(frozen=True)
class VaultLockStatus:
    """What ``unlock`` and ``status`` see on a vault lock file."""

    state: Literal["free", "held", "stale"]
    holder: LockInfo | None
    path: Path


class VaultLock:
    """An exclusive, non-waiting flock on ``<vault>/<name>`` with a holder body."""

    def __init__(
        self,
        vault_dir: Path,
        command: str,
        *,
        name: str = "lock",
        clock: Clock = time.time,
    ) -> None:
        self.path = Path(vault_dir) / name
        self.command = command
        self.clock = clock
        self.info: LockInfo | None = None
        self.stale: LockInfo | None = None
        self._fd: int | None = None

    def acquire(self) -> VaultLock:
        """Take the lock or raise.

        Raises:
            LockedError: another live process holds it (named in the message).
            LocalIOError: the lock file cannot be opened or written.
        """
        if self._fd is not None:
            return self  # already ours: ``with VaultLock(...).acquire():`` works
        fd = _open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_body(fd)
            os.close(fd)
            raise _vault_locked(self.path, holder) from None
        except OSError as exc:
            os.close(fd)
            raise LocalIOError(f"cannot lock {self.path}: {exc.strerror}") from exc
        self._fd = fd
        self.stale = _read_body(fd)
        if self.stale is not None:
            log.warning(
                "replacing stale vault lock left by %s",
                self.stale.describe(),
                extra={
                    "event": "lock.stale",
                    "lock": str(self.path),
                    **_fields(self.stale),
                },
            )
        now = self.clock()
        # flock needs no heartbeat: the body is for people, not for judging.
        self.info = _new_info(self.command, now, stale_after=0.0)
        _write_body(fd, self.info.to_bytes(), self.path)
        log.debug(
            "vault lock taken", extra={"event": "lock.acquire", "lock": str(self.path)}
        )
        return self

    def release(self) -> None:
        """Empty the body and drop the flock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError:
            pass  # the flock still goes away; a leftover body reads as stale
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> VaultLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"no vault at {path.parent} (cannot create {path.name})"
        ) from exc
    except OSError as exc:
        raise LocalIOError(f"cannot open lock file {path}: {exc.strerror}") from exc


def _read_body(fd: int) -> LockInfo | None:
    try:
        data = os.pread(fd, 65536, 0)
    except OSError:
        return None
    if not data.strip():
        return None
    try:
        return LockInfo.from_bytes(data)
    except (ValueError, UnsupportedVersionError):
        # Torn (being written this instant) or foreign: report the holder as unknown.
        return LockInfo("unknown", 0, "unknown", "", 0.0, 0.0, 0.0)


def _write_body(fd: int, body: bytes, path: Path) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, body, 0)
        os.fsync(fd)
    except OSError as exc:
        raise LocalIOError(f"cannot write lock file {path}: {exc.strerror}") from exc


def _vault_locked(path: Path, holder: LockInfo | None) -> LockedError:
    who = holder.describe() if holder is not None else "another process"
    fields = holder.as_dict() if holder is not None else {}
    return LockedError(
        f"vault is locked: {path} is held by {who}", lock=str(path), **fields
    )


def _fields(info: LockInfo) -> dict[str, object]:
    return {"holder_" + k: v for k, v in info.as_dict().items() if k != "token"}


def inspect_vault_lock(vault_dir: Path, name: str = "lock") -> VaultLockStatus:
    """Whether the vault lock is free, held by a live process, or stale."""
    path = Path(vault_dir) / name
    if not path.exists():
        return VaultLockStatus("free", None, path)
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return VaultLockStatus("held", _read_body(fd), path)
        body = _read_body(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return VaultLockStatus("stale" if body is not None else "free", body, path)
    finally:
        os.close(fd)


def break_vault_lock(vault_dir: Path, name: str = "lock") -> LockInfo | None:
    """Clear a stale vault lock body; returns what it said (None if free).

    A vault lock held by a live process cannot be broken: the kernel holds it
    for exactly as long as that process lives. Stop the process instead.

    Raises:
        LockedError: a live process holds the lock.
    """
    path = Path(vault_dir) / name
    if not path.exists():
        return None
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _vault_locked(path, _read_body(fd)) from None
        body = _read_body(fd)
        if body is not None:
            _write_body(fd, b"", path)
            log.warning(
                "removed stale vault lock of %s",
                body.describe(),
                extra={"event": "lock.break", "lock": str(path), **_fields(body)},
            )
        fcntl.flock(fd, fcntl.LOCK_UN)
        return body
    finally:
        os.close(fd)


# -- the repository lock -------------------------------------------------------


@dataclass(frozen=True)
class RepositoryLockStatus:
    """One lock object in a repository and how it looks from here."""

    name: str
    holder: LockInfo | None
    stale: str | None  # reason, or None when live

    @property
    def live(self) -> bool:
        """Whether the holder may still be working."""
        return self.stale is None


def _read_store_lock(store: Store, name: str) -> bytes | None:
    try:
        return store.get(name)
    except ObjectMissingError:
        return None


def lock_status(
    store: Store,
    name: str,
    *,
    now: float | None = None,
    host: str | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> RepositoryLockStatus | None:
    """The status of ``locks/...`` ``name``, or None when it does not exist."""
    data = _read_store_lock(store, name)
    if data is None:
        return None
    try:
        info = LockInfo.from_bytes(data)
    except UnsupportedVersionError:
        return RepositoryLockStatus(name, None, None)  # cannot judge: treat as live
    except ValueError:
        return RepositoryLockStatus(name, None, "unreadable lock body")
    reason = stale_reason(
        info,
        now=time.time() if now is None else now,
        host=this_host() if host is None else host,
        stale_after=stale_after,
    )
    return RepositoryLockStatus(name, info, reason)


def list_repository_locks(
    store: Store, *, now: float | None = None, stale_after: float = DEFAULT_STALE_AFTER
) -> list[RepositoryLockStatus]:
    """Every lock in the repository with its state."""
    found = []
    for name in store.list("locks/"):
        status = lock_status(store, name, now=now, stale_after=stale_after)
        if status is not None:
            found.append(status)
    return found


def _repo_locked(status: RepositoryLockStatus) -> LockedError:
    who = status.holder.describe() if status.holder else "a lock of an unknown version"
    fields = status.holder.as_dict() if status.holder else {}
    return LockedError(
        f"repository is locked ({status.name}) by {who}; "
        "if that process is gone, run `vaultstore unlock`",
        lock=status.name,
        **fields,
    )


def break_lock(
    store: Store,
    name: str,
    *,
    force: bool = False,
    now: float | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> RepositoryLockStatus | None:
    """Delete a repository lock if stale (or with ``force``); returns what it was.

    Raises:
        LockedError: the lock is live and ``force`` is false.
    """
    status = lock_status(store, name, now=now, stale_after=stale_after)
    if status is None:
        return None
    if status.live and not force:
        raise _repo_locked(status)
    if _read_store_lock(store, name) != (
        status.holder.to_bytes() if status.holder else None
    ):
        # Changed since we judged it (refreshed or replaced): judge again.
        if status.holder is not None:
            return break_lock(
                store, name, force=force, now=now, stale_after=stale_after
            )
    store.delete(name)
    log.warning(
        "removed %s repository lock %s: %s",
        "live" if status.live else "stale",
        name,
        status.stale or "forced",
        extra={
            "event": "lock.break",
            "lock": name,
            **(_fields(status.holder) if status.holder else {}),
        },
    )
    return status


class RepositoryLock:
    """An exclusive or shared lock stored in the repository under ``locks/``."""

    def __init__(
        self,
        store: Store,
        command: str,
        *,
        exclusive: bool = True,
        clock: Clock = time.time,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self.store = store
        self.command = command
        self.exclusive = exclusive
        self.clock = clock
        self.stale_after = stale_after
        self.info: LockInfo | None = None
        self.name = ""
        self._heartbeat: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()

    def acquire(self) -> RepositoryLock:
        """Create the lock, then make sure no conflicting live lock exists.

        Raises:
            LockedError: a live conflicting lock exists (named in the message).
            StoreError, LocalIOError: the store failed.
        """
        if self.info is not None:
            return self
        info = _new_info(self.command, self.clock(), self.stale_after)
        name = EXCLUSIVE if self.exclusive else SHARED_PREFIX + info.token
        self._create(name, info)
        self.info, self.name = info, name
        try:
            self._check_conflicts()
        except BaseException:
            self.release()
            raise
        log.info(
            "repository lock %s taken",
            name,
            extra={"event": "lock.acquire", "lock": name, "command": self.command},
        )
        return self

    def _create(self, name: str, info: LockInfo) -> None:
        for _ in range(3):
            try:
                self.store.put(name, info.to_bytes())
                return
            except ObjectExistsError:
                status = self._status(name)
                if status is None:
                    continue  # released between our put and our read
                if status.live:
                    raise _repo_locked(status) from None
                break_lock(
                    self.store, name, now=self.clock(), stale_after=self.stale_after
                )
        raise LockedError(
            f"repository lock {name} keeps changing; try again", lock=name
        )

    def _status(self, name: str) -> RepositoryLockStatus | None:
        return lock_status(
            self.store, name, now=self.clock(), stale_after=self.stale_after
        )

    def _check_conflicts(self) -> None:
        mine = _read_store_lock(self.store, self.name)
        if self.info is None or mine != self.info.to_bytes():
            raise LockedError(
                f"repository lock {self.name} was taken over while acquiring"
            )
        if self.exclusive:
            others = [n for n in self.store.list(SHARED_PREFIX)]
        else:
            others = [EXCLUSIVE]
        for other in others:
            status = self._status(other)
            if status is None:
                continue
            if status.live:
                raise _repo_locked(status)
            break_lock(
                self.store, other, now=self.clock(), stale_after=self.stale_after
            )

    def refresh(self) -> None:
        """Renew the heartbeat.

        Raises:
            LockedError: the lock is gone or belongs to someone else now.
        """
        if self.info is None:
            raise LockedError("refresh of a repository lock that is not held")
        current = _read_store_lock(self.store, self.name)
        if current != self.info.to_bytes():
            raise LockedError(
                f"repository lock {self.name} was lost (broken as stale?)"
            )
        now = self.clock()
        renewed = replace(self.info, heartbeat=now, expires=now + self.stale_after)
        self.store.put(self.name, renewed.to_bytes(), overwrite=True)
        self.info = renewed

    def start_heartbeat(self, interval: float | None = None) -> None:
        """Refresh from a background thread every ``interval`` seconds."""
        period = interval if interval is not None else self.stale_after / 3

        def beat() -> None:
            while not self._stop_heartbeat.wait(period):
                try:
                    self.refresh()
                except Exception as exc:  # logged; the holder finds out on release
                    log.error(
                        "repository lock heartbeat failed: %s",
                        exc,
                        extra={"event": "lock.heartbeat", "lock": self.name},
                    )
                    return

        self._stop_heartbeat.clear()
        self._heartbeat = threading.Thread(
            target=beat, name="lock-heartbeat", daemon=True
        )
        self._heartbeat.start()

    def release(self) -> None:
        """Delete the lock if it is still ours (idempotent)."""
        self._stop_heartbeat.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        if self.info is None:
            return
        info, self.info = self.info, None
        if _read_store_lock(self.store, self.name) == info.to_bytes():
            self.store.delete(self.name)
        else:
            log.warning(
                "repository lock %s was no longer ours at release",
                self.name,
                extra={"event": "lock.lost", "lock": self.name},
            )

    def __enter__(self) -> RepositoryLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
