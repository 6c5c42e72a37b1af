"""A repository on a local (or mounted) filesystem.

Layout: each object name maps to one file under the root, ``/`` separators
becoming directories (``data/ab/<pack-id>`` → ``<root>/data/ab/<pack-id>``).
Files are created 0600 and directories 0700. While an object is being written
it lives under a temporary name in its final directory: ``.tmp-<random>``.
Such files are never listed; a crash can leave them behind and
:meth:`LocalStore.remove_temporaries` clears them. Object names are refused if
any segment is empty, ``.``/``..``, or starts with a dot, so a name can never
collide with a temporary file or escape the root.

Durability protocol for one ``put`` (each step a named fault point):

1. ``local.put.before-write``: create the temporary file (``O_EXCL``, 0600)
   and write every byte;
2. ``local.put.before-fsync``: fsync the file;
3. ``local.put.before-link``: publish it. Put-if-absent hard-links the
   temporary file to the final name (``link`` never replaces an existing name,
   so losing a race is an ``ObjectExistsError`` and the other writer's object
   is untouched) and unlinks the temporary name; ``overwrite=True`` renames
   over the final name with ``os.replace``;
4. fsync the directory, so the new directory entry survives a power cut;
   ``local.put.after-dirsync``.

New directories are created one level at a time and each new directory's
parent is fsynced before anything is placed inside it.

A failed fsync raises :class:`LocalIOError` and is never retried: after a
failed fsync the kernel may have dropped the dirty pages and a second fsync
can report success for data that is gone. A full disk (``ENOSPC``/``EDQUOT``)
also raises ``LocalIOError``; in every failure the temporary file is removed
and nothing new is visible under the final name.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vaultstore import durable, faults
from vaultstore.errors import (
    LocalIOError,
    ObjectExistsError,
    ObjectMissingError,
    StoreError,
)

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
FILE_MODE = 0o600
DIR_MODE = 0o700
_READ_CHUNK = 1 << 20
_FULL_DISK = durable.FULL_DISK


#: fsync a directory so the entries created or removed in it are durable
#: (the one shared implementation, :func:`vaultstore.durable.fsync_dir`).
fsync_directory = durable.fsync_dir


@dataclass
class FsOps:
    """The filesystem calls the durability protocol depends on.

    Tests swap these to inject ``EIO``/``ENOSPC`` or to record which directory
    entries were made durable (a power-cut model).
    """

    fsync: Callable[[int], None] = os.fsync
    fsync_dir: Callable[[str], None] = fsync_directory
    link: Callable[[str, str], None] = os.link
    replace: Callable[[str, str], None] = os.replace
    mkdir: Callable[[str, int], None] = os.mkdir
    write: Callable[[int, memoryview], int] = os.write


def check_name(name: str) -> None:
    """Refuse object names that could escape the root or look like temporaries.

    Raises:
        StoreError: the name is empty, absolute, or has an unsafe segment.
    """
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise StoreError(f"invalid object name {name!r}", name=name)
    for part in name.split("/"):
        if not part or part.startswith("."):
            raise StoreError(f"invalid object name {name!r}", name=name)


class LocalStore:
    """Objects as files under a root directory, written with fsync and rename."""

    def __init__(self, root: str | os.PathLike[str], *, ops: FsOps | None = None):
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()
        self.ops = ops or FsOps()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        check_name(name)
        return self.root / name

    # -- writing -----------------------------------------------------------

    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None:
        """Write ``data`` under ``name`` durably (see the module docstring).

        Raises:
            ObjectExistsError: ``name`` exists and ``overwrite`` is false.
            LocalIOError: disk full, failed fsync or another I/O error;
                nothing new is visible under ``name``.
        """
        path = self._path(name)
        if not overwrite and path.exists():
            raise ObjectExistsError(f"object {name} already exists", name=name)
        self.ensure_directory(path.parent)

        tmp = path.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            self._write_temporary(tmp, data, name)
            self._publish(tmp, path, name, overwrite)
        finally:
            _unlink_quietly(tmp)

        try:
            self._sync_directory(path.parent, name)
        except LocalIOError:
            # The entry may or may not survive a power cut: withdraw a new
            # name so a rerun writes it again instead of trusting it.
            if not overwrite:
                _unlink_quietly(path)
            raise
        faults.point("local.put.after-dirsync")

    def _write_temporary(self, tmp: Path, data: bytes, name: str) -> None:
        faults.point("local.put.before-write")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, FILE_MODE)
        except OSError as exc:
            raise _io_error("create a temporary file for", name, exc) from exc
        try:
            view = memoryview(data)
            while view:
                try:
                    written = self.ops.write(fd, view)
                except OSError as exc:
                    raise _io_error("write", name, exc) from exc
                view = view[written:]

            faults.point("local.put.before-fsync")
            try:
                self.ops.fsync(fd)
            except OSError as exc:
                raise _fsync_error(str(tmp), name, exc) from exc
        finally:
            os.close(fd)

    def _publish(self, tmp: Path, path: Path, name: str, overwrite: bool) -> None:
        faults.point("local.put.before-link")
        try:
            if overwrite:
                self.ops.replace(str(tmp), str(path))
            else:
                self.ops.link(str(tmp), str(path))
        except FileExistsError as exc:
            raise ObjectExistsError(f"object {name} already exists", name=name) from exc
        except OSError as exc:
            raise _io_error("publish", name, exc) from exc

    def _sync_directory(self, directory: Path, name: str) -> None:
        """fsync ``directory``; the step a power-cut test must see for every put."""
        try:
            self.ops.fsync_dir(str(directory))
        except OSError as exc:
            raise _fsync_error(str(directory), name, exc) from exc

    def ensure_directory(self, directory: Path) -> None:
        """Create ``directory`` (and missing parents) 0700, each parent fsynced.

        Raises:
            LocalIOError: a directory could not be created or synced.
        """
        if directory.is_dir():
            return
        if directory.parent != directory:
            self.ensure_directory(directory.parent)
        try:
            self.ops.mkdir(str(directory), DIR_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise LocalIOError(
                    f"{directory} exists and is not a directory", path=str(directory)
                ) from None
            return
        except OSError as exc:
            raise _io_error("create directory for", str(directory), exc) from exc
        self._sync_directory(directory.parent, str(directory))

    def delete(self, name: str) -> None:
        """Remove ``name`` durably; absent is not an error.

        Raises:
            LocalIOError: the unlink or the directory fsync failed.
        """
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _io_error("delete", name, exc) from exc
        self._sync_directory(path.parent, name)

    def remove_temporaries(self) -> int:
        """Delete temporary files a crashed writer left behind; returns the count."""
        removed = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for filename in files:
                if filename.startswith(TEMP_PREFIX):
                    _unlink_quietly(Path(dirpath) / filename)
                    removed += 1
        if removed:
            log.info(
                "removed %d temporary files under %s",
                removed,
                self.root,
                extra={"event": "store.local.temporaries_removed", "count": removed},
            )
        return removed

    # -- reading -----------------------------------------------------------

    def get(self, name: str) -> bytes:
        """The whole object.

        Raises:
            ObjectMissingError: no such object.
            LocalIOError: the file could not be read.
        """
        path = self._path(name)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise _missing(name) from exc
        except OSError as exc:
            raise _io_error("read", name, exc) from exc

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end of the object).

        Raises:
            ObjectMissingError: no such object.
            LocalIOError: the file could not be read.
        """
        if offset < 0 or length < 0:
            raise StoreError(f"invalid range {offset}+{length} for {name}", name=name)
        path = self._path(name)
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise _missing(name) from exc
        except OSError as exc:
            raise _io_error("read", name, exc) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names starting with ``prefix``, sorted ascending; temporaries skipped."""
        # Walk only the deepest directory the prefix fully names.
        base_dir, _, _ = prefix.rpartition("/")
        if base_dir:
            check_name(base_dir)
        start = self.root / base_dir if base_dir else self.root
        names: list[str] = []
        for dirpath, dirs, files in os.walk(start):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for filename in files:
                full = rel + filename
                if not filename.startswith(".") and full.startswith(prefix):
                    names.append(full)
        names.sort()
        return iter(names)

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists as an object."""
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        """Size in bytes.

        Raises:
            ObjectMissingError: no such object.
        """
        path = self._path(name)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise _missing(name) from exc
        except OSError as exc:
            raise _io_error("stat", name, exc) from exc
        if not path.is_file():
            raise _missing(name)
        return st.st_size


def _missing(name: str) -> ObjectMissingError:
    return ObjectMissingError(f"object {name} is missing", name=name)


def _io_error(action: str, name: str, exc: OSError) -> LocalIOError:
    if exc.errno in _FULL_DISK:
        return LocalIOError(
            f"disk full: cannot {action} {name} ({exc.strerror})",
            name=name,
            errno=exc.errno,
        )
    return LocalIOError(
        f"I/O error: cannot {action} {name} ({exc.strerror or exc})",
        name=name,
        errno=exc.errno,
    )


def _fsync_error(path: str, name: str, exc: OSError) -> LocalIOError:
    log.error(
        "fsync of %s failed: %s",
        path,
        exc.strerror or exc,
        extra={"event": "store.local.fsync_failed", "path": path},
    )
    if exc.errno in _FULL_DISK:
        return _io_error("sync", name, exc)
    return LocalIOError(
        f"fsync failed for {name} ({exc.strerror or exc}); the run must stop",
        name=name,
        errno=exc.errno,
    )


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning(
            "could not remove temporary file %s: %s",
            path,
            exc.strerror or exc,
            extra={"event": "store.local.temp_left", "path": str(path)},
        )
