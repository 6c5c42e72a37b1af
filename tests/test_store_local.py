"""LocalStore durability: permissions, fault points, EIO, full disk, power cut."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaultstore import faults
from vaultstore.errors import LocalIOError, MisuseError, ObjectExistsError, StoreError
from vaultstore.store.local import TEMP_PREFIX, FsOps, LocalStore, fsync_directory
from vaultstore.store.open import open_store, parse_s3_url


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def fault_hook() -> Iterator[None]:
    yield
    faults.set_hook(None)
    faults.recording = False
    faults.seen.clear()


def test_permissions(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    store.put("data/ab/pack", b"x")
    assert stat.S_IMODE((tmp_path / "repo/data/ab/pack").stat().st_mode) == 0o600
    for d in ("repo", "repo/data", "repo/data/ab"):
        assert stat.S_IMODE((tmp_path / d).stat().st_mode) == 0o700


def test_fault_points_in_order(tmp_path: Path, fault_hook: None) -> None:
    faults.recording = True
    LocalStore(tmp_path).put("config", b"x")
    assert faults.seen == [
        "local.put.before-write",
        "local.put.before-fsync",
        "local.put.before-link",
        "local.put.after-dirsync",
    ]


@pytest.mark.parametrize(
    "point",
    ["local.put.before-write", "local.put.before-fsync", "local.put.before-link"],
)
def test_failure_before_publish_leaves_nothing(
    tmp_path: Path, fault_hook: None, point: str
) -> None:
    def hook(name: str) -> None:
        if name == point:
            raise RuntimeError("injected crash")

    faults.set_hook(hook)
    store = LocalStore(tmp_path / "repo")
    with pytest.raises(RuntimeError):
        store.put("snapshots/0000000001", b"manifest")
    faults.set_hook(None)
    assert not store.exists("snapshots/0000000001")
    assert _files(tmp_path / "repo") == []
    store.put("snapshots/0000000001", b"manifest")  # the rerun completes
    assert store.get("snapshots/0000000001") == b"manifest"


@pytest.mark.reliability(16)
def test_fsync_eio_fails_once_and_publishes_nothing(tmp_path: Path) -> None:
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    store = LocalStore(tmp_path / "repo", ops=FsOps(fsync=failing_fsync))
    with pytest.raises(LocalIOError, match="fsync failed") as info:
        store.put("data/00/pack", b"payload")
    assert info.value.exit_code == 11
    assert len(calls) == 1  # never retried
    assert not store.exists("data/00/pack")
    assert _files(tmp_path / "repo") == []


@pytest.mark.reliability(16)
def test_directory_fsync_failure_withdraws_the_name(tmp_path: Path) -> None:
    def failing_dir_sync(path: str) -> None:
        if path.endswith("snapshots"):
            raise OSError(errno.EIO, "Input/output error")
        fsync_directory(path)

    store = LocalStore(tmp_path / "repo", ops=FsOps(fsync_dir=failing_dir_sync))
    store.ensure_directory(tmp_path / "repo")
    with pytest.raises(LocalIOError):
        store.put("snapshots/0000000001", b"manifest")
    assert not (tmp_path / "repo/snapshots/0000000001").exists()
    assert list(store.list()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.reliability(15)
def test_full_disk(tmp_path: Path, code: int) -> None:
    written: list[int] = []

    def filling_write(fd: int, data: memoryview) -> int:
        if written:
            raise OSError(code, os.strerror(code))
        written.append(os.write(fd, data[:10]))
        return 10

    store = LocalStore(tmp_path / "repo", ops=FsOps(write=filling_write))
    with pytest.raises(LocalIOError, match="disk full"):
        store.put("data/00/pack", b"x" * 1000)
    assert _files(tmp_path / "repo") == []  # temporary file removed
    assert not store.exists("data/00/pack")


def test_short_writes_are_completed(tmp_path: Path) -> None:
    def trickle(fd: int, data: memoryview) -> int:
        return os.write(fd, data[:7])

    store = LocalStore(tmp_path, ops=FsOps(write=trickle))
    store.put("obj", bytes(range(200)))
    assert store.get("obj") == bytes(range(200))


def test_put_if_absent_race_keeps_the_winner(tmp_path: Path) -> None:
    def racing_link(src: str, dst: str) -> None:
        Path(dst).write_bytes(b"winner")  # another writer got there first
        os.link(src, dst)

    store = LocalStore(tmp_path, ops=FsOps(link=racing_link))
    with pytest.raises(ObjectExistsError):
        store.put("snapshots/0000000002", b"loser")
    assert store.get("snapshots/0000000002") == b"winner"
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["0000000002"]


def test_leftover_temporaries_are_invisible_and_removable(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("data/aa/p", b"1")
    (tmp_path / "data/aa" / f"{TEMP_PREFIX}deadbeef").write_bytes(b"partial")
    assert list(store.list()) == ["data/aa/p"]
    assert store.remove_temporaries() == 1
    assert _files(tmp_path) == ["data/aa/p"]


def test_new_directories_sync_their_parents(tmp_path: Path) -> None:
    synced: list[str] = []

    def recording_dir_sync(path: str) -> None:
        synced.append(os.path.relpath(path, tmp_path))
        fsync_directory(path)

    store = LocalStore(tmp_path / "repo", ops=FsOps(fsync_dir=recording_dir_sync))
    store.put("data/ab/pack", b"x")
    # repo's parent, then each new level, then the directory of the new entry.
    assert synced == [".", "repo", "repo/data", "repo/data/ab"]


def test_delete_syncs_the_directory(tmp_path: Path) -> None:
    synced: list[str] = []

    def recording_dir_sync(path: str) -> None:
        synced.append(path)
        fsync_directory(path)

    store = LocalStore(tmp_path, ops=FsOps(fsync_dir=recording_dir_sync))
    store.put("locks/x", b"1")
    synced.clear()
    store.delete("locks/x")
    assert synced == [str(tmp_path / "locks")]


# -- power cut ---------------------------------------------------------------


class PowerCutModel:
    """Tracks what would survive a power cut.

    A directory entry (a new name or directory) survives only once its
    directory has been fsynced; a file's content only if it was fsynced before
    it was linked to its name. Everything else may be lost or reordered.
    """

    def __init__(self) -> None:
        self.synced_content: set[str] = set()
        self.pending: dict[str, set[str]] = {}
        self.created: set[str] = set()
        self.durable: set[str] = set()
        self.content_ok: dict[str, bool] = {}

    def ops(self) -> FsOps:
        return FsOps(
            fsync=self.fsync,
            fsync_dir=self.fsync_dir,
            link=self.link,
            replace=self.replace,
            mkdir=self.mkdir,
        )

    def _created(self, path: str, content_ok: bool) -> None:
        self.created.add(path)
        self.durable.discard(path)
        self.content_ok[path] = content_ok
        self.pending.setdefault(os.path.dirname(path), set()).add(path)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.synced_content.add(os.readlink(f"/proc/self/fd/{fd}"))

    def fsync_dir(self, path: str) -> None:
        fsync_directory(path)
        self.durable |= self.pending.pop(path, set())

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)
        self._created(dst, src in self.synced_content)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)
        self._created(dst, src in self.synced_content)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(path, mode)
        self._created(path, True)

    def survives(self, path: str) -> bool:
        if not self.content_ok.get(path, False):
            return False
        for p in [path, *map(str, Path(path).parents)]:
            if p in self.created and p not in self.durable:
                return False
        return True


class StoreWithoutDirectorySync(LocalStore):
    """A broken variant: renames are never made durable."""

    def _sync_directory(self, directory: Path, name: str) -> None:
        pass


def _lost_after_power_cut(store_class: type[LocalStore], root: Path) -> list[str]:
    model = PowerCutModel()
    store = store_class(root, ops=model.ops())
    acknowledged = []
    for name in ["config", "data/ab/p1", "data/ab/p2", "data/cd/p3"]:
        store.put(name, name.encode())
        acknowledged.append(name)
    store.put("snapshots/0000000001", b"m", overwrite=True)
    acknowledged.append("snapshots/0000000001")
    return [n for n in acknowledged if not model.survives(str(root / n))]


@pytest.mark.reliability(2)
def test_power_cut_every_acknowledged_name_survives(tmp_path: Path) -> None:
    assert _lost_after_power_cut(LocalStore, tmp_path / "repo") == []


@pytest.mark.reliability(2)
def test_power_cut_model_catches_missing_directory_fsync(tmp_path: Path) -> None:
    lost = _lost_after_power_cut(StoreWithoutDirectorySync, tmp_path / "repo")
    assert lost == [
        "config",
        "data/ab/p1",
        "data/ab/p2",
        "data/cd/p3",
        "snapshots/0000000001",
    ]


# -- open_store ----------------------------------------------------------------


def test_open_store_local_forms(tmp_path: Path) -> None:
    by_path = open_store(str(tmp_path / "r"))
    by_url = open_store((tmp_path / "r").as_uri())
    assert isinstance(by_path, LocalStore) and isinstance(by_url, LocalStore)
    assert by_path.url == by_url.url == (tmp_path / "r").as_uri()
    relative = open_store("repo")
    assert isinstance(relative, LocalStore)
    assert relative.root == Path.cwd() / "repo"


def test_open_store_refuses_unknown_locations() -> None:
    for bad in ["", "ftp://host/x", "file://otherhost/x", "s3://", "s3:///prefix"]:
        with pytest.raises(MisuseError):
            open_store(bad)


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_url("s3://bucket/a") == ("bucket", "a/")


def test_list_prefix_cannot_escape_the_root(tmp_path: Path) -> None:
    (tmp_path / "outside").write_bytes(b"secret")
    store = LocalStore(tmp_path / "repo")
    store.put("a", b"1")
    with pytest.raises(StoreError):
        list(store.list("../"))
    assert list(store.list("nothing/")) == []
