"""Several destinations: primary must succeed, secondaries fail softly and catch up."""

from __future__ import annotations

import json
import logging
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import s3server
from vaultstore.errors import (
    InputError,
    LocalIOError,
    ObjectExistsError,
    StoreError,
    UnsupportedVersionError,
)
from vaultstore.store.local import LocalStore
from vaultstore.store.open import StoreOptions
from vaultstore.store.replica import ReplicatedStore, sync
from vaultstore.store.s3 import S3Store

s3_endpoint = s3server.s3_endpoint
s3_credentials = s3server.s3_credentials
s3_options = s3server.s3_options
s3_bucket = s3server.s3_bucket


class FlakyStore:
    """A Store wrapper that records writes and can be told to fail."""

    def __init__(self, inner: LocalStore, fail_after: int | None = None) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail_after = fail_after
        self.puts: list[str] = []

    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None:
        if self.fail_after is not None and len(self.puts) >= self.fail_after:
            raise StoreError(f"injected failure writing {name}")
        self.inner.put(name, data, overwrite=overwrite)
        self.puts.append(name)

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(name, offset, length)

    def list(self, prefix: str = "") -> Iterator[str]:
        if self.fail_after is not None:
            raise StoreError("injected failure listing")
        return self.inner.list(prefix)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)


BACKUP = [
    ("data/aa/p1", b"pack one"),
    ("data/bb/p2", b"pack two"),
    ("snapshots/0000000001", b"manifest one"),
]


def _write(store: ReplicatedStore, objects: list[tuple[str, bytes]]) -> None:
    for name, data in objects:
        store.put(name, data)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "vault/cache/destinations.json"


def test_all_destinations_receive_writes(tmp_path: Path, state: Path) -> None:
    primary = LocalStore(tmp_path / "a")
    second = LocalStore(tmp_path / "b")
    replicated = ReplicatedStore(primary, [second], state)
    _write(replicated, BACKUP)
    assert list(second.list()) == list(primary.list()) == sorted(n for n, _ in BACKUP)
    assert not replicated.partial and replicated.failed_destinations == []
    assert not state.exists()
    assert replicated.get("data/aa/p1") == b"pack one"
    assert replicated.url == primary.url


def test_primary_failure_is_an_error(tmp_path: Path, state: Path) -> None:
    primary = FlakyStore(LocalStore(tmp_path / "a"), fail_after=0)
    second = FlakyStore(LocalStore(tmp_path / "b"))
    replicated = ReplicatedStore(primary, [second], state)
    with pytest.raises(StoreError):
        replicated.put("data/aa/p1", b"x")
    assert second.puts == []
    replicated_ok = ReplicatedStore(LocalStore(tmp_path / "c"), [second], state)
    replicated_ok.put("config", b"c")
    with pytest.raises(ObjectExistsError):
        replicated_ok.put("config", b"c")


@pytest.mark.reliability(18)
def test_failing_secondary_is_recorded_and_skipped(
    tmp_path: Path, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    primary = LocalStore(tmp_path / "a")
    second = FlakyStore(LocalStore(tmp_path / "b"), fail_after=1)
    third = LocalStore(tmp_path / "c")
    replicated = ReplicatedStore(primary, [second, third], state)
    with caplog.at_level(logging.WARNING, logger="vaultstore.store.replica"):
        _write(replicated, BACKUP)

    assert list(primary.list()) == list(third.list()) == sorted(n for n, _ in BACKUP)
    # After its first failure the secondary got nothing more: above all no
    # manifest naming objects it lacks.
    assert second.puts == ["data/aa/p1"]
    assert list(second.inner.list("snapshots/")) == []
    assert replicated.partial
    assert replicated.failed_destinations == [second.url]
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("store.secondary_failed") == 1

    doc = json.loads(state.read_text())
    assert doc["format"] == "vaultstore-replica-state" and doc["version"] == 1
    assert doc["behind"][second.url]["first_failed"] == "data/bb/p2"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


@pytest.mark.reliability(18)
def test_next_run_catches_up_manifests_last(tmp_path: Path, state: Path) -> None:
    primary = LocalStore(tmp_path / "a")
    second = FlakyStore(LocalStore(tmp_path / "b"), fail_after=0)
    _write(ReplicatedStore(primary, [second], state), BACKUP)

    healed = FlakyStore(LocalStore(tmp_path / "b"))
    next_run = ReplicatedStore(primary, [healed], state)
    assert next_run.partial  # remembered across runs
    next_run.put("data/cc/p3", b"pack three")
    assert healed.puts == []  # still behind: not written until caught up

    [result] = next_run.catch_up()
    assert result.copied == ["data/aa/p1", "data/bb/p2", "data/cc/p3", BACKUP[2][0]]
    assert healed.puts[-1] == "snapshots/0000000001"
    assert result.bytes_copied == sum(len(d) for _, d in BACKUP) + len(b"pack three")
    assert not next_run.partial
    assert json.loads(state.read_text())["behind"] == {}

    next_run.put("snapshots/0000000002", b"manifest two")
    assert healed.get("snapshots/0000000002") == b"manifest two"
    assert list(healed.list()) == list(primary.list())


def test_catch_up_that_fails_again_stays_behind(tmp_path: Path, state: Path) -> None:
    primary = LocalStore(tmp_path / "a")
    broken = FlakyStore(LocalStore(tmp_path / "b"), fail_after=0)
    replicated = ReplicatedStore(primary, [broken], state)
    _write(replicated, BACKUP)
    assert replicated.catch_up() == []
    assert replicated.partial
    assert ReplicatedStore(primary, [broken], state).partial


def test_secondary_holding_the_same_object_is_fine(tmp_path: Path, state: Path) -> None:
    primary = LocalStore(tmp_path / "a")
    second = LocalStore(tmp_path / "b")
    second.put("data/aa/p1", b"pack one")
    second.put("snapshots/0000000001", b"a different manifest")
    replicated = ReplicatedStore(primary, [second], state)
    replicated.put("data/aa/p1", b"pack one")
    assert not replicated.partial
    replicated.put("snapshots/0000000001", b"manifest one")
    assert replicated.failed_destinations == [second.url]


def test_sync_delete_extra_removes_manifests_first(tmp_path: Path) -> None:
    primary = LocalStore(tmp_path / "a")
    second = LocalStore(tmp_path / "b")
    for name, data in BACKUP:
        primary.put(name, data)
    sync(primary, second)
    primary.delete("snapshots/0000000001")
    primary.delete("data/bb/p2")
    primary.put("locks/prune", b"host")
    result = sync(primary, second, delete_extra=True)
    assert result.deleted == ["snapshots/0000000001", "data/bb/p2"]
    assert result.copied == []  # locks are never copied
    assert list(second.list()) == ["data/aa/p1"]
    assert sync(primary, second).copied == []


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"{not json", InputError),
        (b'{"format": "other", "version": 1, "behind": {}}', InputError),
        (
            b'{"format": "vaultstore-replica-state", "version": 9}',
            UnsupportedVersionError,
        ),
        (
            b'{"format": "vaultstore-replica-state", "version": 1, "behind": []}',
            InputError,
        ),
    ],
)
def test_bad_state_file_is_refused(
    tmp_path: Path, state: Path, content: bytes, error: type[Exception]
) -> None:
    state.parent.mkdir(parents=True)
    state.write_bytes(content)
    with pytest.raises(error):
        ReplicatedStore(LocalStore(tmp_path / "a"), [], state)


def test_unwritable_state_is_a_local_io_error(tmp_path: Path) -> None:
    primary = LocalStore(tmp_path / "a")
    second = FlakyStore(LocalStore(tmp_path / "b"), fail_after=0)
    replicated = ReplicatedStore(primary, [second], tmp_path / "d/state.json")
    (tmp_path / "d").write_bytes(b"")  # the state directory is now a file
    with pytest.raises(LocalIOError):
        replicated.put("config", b"c")
    assert primary.get("config") == b"c"


@pytest.mark.s3
@pytest.mark.reliability(18)
def test_unreachable_s3_secondary_then_caught_up(
    tmp_path: Path, state: Path, s3_options: StoreOptions, s3_bucket: str
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    offline = StoreOptions(
        **{
            **s3_options.__dict__,
            "endpoint_url": f"http://127.0.0.1:{port}",
            "max_attempts": 2,
            "connect_timeout": 0.5,
        }
    )
    primary = LocalStore(tmp_path / "a")
    first_run = ReplicatedStore(primary, [S3Store(s3_bucket, "repo", offline)], state)
    _write(first_run, BACKUP)
    assert sorted(primary.list()) == sorted(n for n, _ in BACKUP)
    assert first_run.failed_destinations == [f"s3://{s3_bucket}/repo/"]

    online = S3Store(s3_bucket, "repo", s3_options)
    next_run = ReplicatedStore(primary, [online], state)
    assert next_run.partial
    next_run.catch_up()
    assert not next_run.partial
    assert list(online.list()) == list(primary.list())
    assert online.get("snapshots/0000000001") == b"manifest one"


def test_sync_copies_manifests_after_every_other_name(tmp_path: Path) -> None:
    primary = LocalStore(tmp_path / "a")
    for name in ["snapshots/0000000001", "trees/ab/node", "config", "zz/late"]:
        primary.put(name, name.encode())
    second = FlakyStore(LocalStore(tmp_path / "b"))
    result = sync(primary, second)
    assert second.puts == ["config", "trees/ab/node", "zz/late", "snapshots/0000000001"]
    assert result.copied == second.puts
