"""The shared durable-write helper: temp, fsync, publish, directory fsync."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from vaultstore import durable, faults
from vaultstore.errors import LocalIOError


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_content_mode_0600(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    durable.write_atomic(target, b"hello" * 1000)
    assert target.read_bytes() == b"hello" * 1000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _leftovers(tmp_path) == []


def test_custom_mode_and_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    durable.write_atomic(target, b"new", mode=0o400)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o400


def test_short_writes_are_looped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def one_byte(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:1]))

    monkeypatch.setattr(os, "write", one_byte)
    target = tmp_path / "f"
    durable.write_atomic(target, b"abcdef")
    assert target.read_bytes() == b"abcdef"


def test_fsyncs_file_then_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    synced: list[tuple[str, bool]] = []

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    target = tmp_path / "f"
    durable.write_atomic(target, b"x")
    assert len(synced) == 2
    file_path, file_is_dir = synced[0]
    assert not file_is_dir and Path(file_path).name.endswith(".tmp")
    assert synced[1] == (str(tmp_path), True)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
@pytest.mark.parametrize("step", ["write", "fsync"])
def test_failure_removes_temp_and_keeps_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, step: str
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def fail(*_args: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(LocalIOError) as info:
        durable.write_atomic(target, b"new", what="the state file")
    monkeypatch.undo()
    message = str(info.value)
    assert "cannot write the state file" in message
    assert message.startswith("disk full: ") == (code != errno.EIO)
    assert info.value.fields["errno"] == code
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_directory_fsync_failure_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(_path: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(durable, "fsync_dir", fail)
    target = tmp_path / "f"
    with pytest.raises(LocalIOError):
        durable.write_atomic(target, b"new", overwrite=False)
    # A new name whose directory entry may not be durable is withdrawn.
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_put_if_absent_refuses_existing_name(tmp_path: Path) -> None:
    target = tmp_path / "f"
    durable.write_atomic(target, b"first", overwrite=False)
    assert target.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        durable.write_atomic(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_fault_point_runs_before_publish_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    class Crash(Exception):
        pass

    def hook(name: str) -> None:
        if name == "test.durable.before-rename":
            assert _leftovers(tmp_path) != []  # the temp is complete by now
            raise Crash(name)

    faults.set_hook(hook)
    try:
        with pytest.raises(Crash):
            durable.write_atomic(target, b"new", fault="test.durable.before-rename")
    finally:
        faults.set_hook(None)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_fsync_dir_raises_oserror(tmp_path: Path) -> None:
    durable.fsync_dir(tmp_path)
    with pytest.raises(OSError):
        durable.fsync_dir(tmp_path / "missing")


def test_fsync_tree_syncs_every_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "staged"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a").write_bytes(b"1")
    (root / "sub" / "b").write_bytes(b"2")
    (root / "sub" / "deeper" / "c").write_bytes(b"3")
    (root / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_bytes(b"not ours")
    real_fsync = os.fsync
    synced: list[str] = []

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    durable.fsync_tree(root)
    expected = {
        str(root / "a"),
        str(root / "sub" / "b"),
        str(root / "sub" / "deeper" / "c"),
        str(root),
        str(root / "sub"),
        str(root / "sub" / "deeper"),
    }
    assert set(synced) == expected
    assert len(synced) == len(expected)
    # Children before parents: the root directory is synced last.
    assert synced[-1] == str(root)


def test_put_if_absent_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(_src: object, _dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "seed.txt"
    durable.write_atomic(target, b"words", overwrite=False)
    assert target.read_bytes() == b"words"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        durable.write_atomic(target, b"other", overwrite=False)
    assert target.read_bytes() == b"words"
    assert [p.name for p in tmp_path.iterdir()] == ["seed.txt"]
