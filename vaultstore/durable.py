"""Durable small-file writes, written once and reused by every module.

The protocol (the same one :mod:`vaultstore.store.local` follows for objects):

1. create a temporary file in the *target's own directory* (same filesystem,
   so publishing is atomic) under a unique name
   ``.<target-name>.<16 hex>.tmp``, ``O_EXCL``, mode 0600 by default, and
   write every byte (a full write loop: ``os.write`` may write less);
2. fsync the file;
3. publish it: ``os.replace`` over the target (``overwrite=True``), or, for
   put-if-absent (``overwrite=False``), ``os.link`` to the target, which never
   replaces an existing name, then drop the temporary name. On a filesystem
   without hard links (``EPERM``/``ENOTSUP``, e.g. FAT on a USB stick) the name
   is claimed with an empty ``O_EXCL`` file and then replaced: still never
   overwriting another writer, but a crash in between leaves an empty file;
4. fsync the directory, so the new directory entry survives a power cut.

Error policy, decided here once: :func:`write_atomic` raises
:class:`~vaultstore.errors.LocalIOError` for every ``OSError`` (message
``cannot write <what>: <reason>``, prefixed ``disk full: `` for
``ENOSPC``/``EDQUOT``; ``errno`` and ``path`` are attached), except that
put-if-absent losing to an existing name raises :class:`FileExistsError`
untouched, so each caller maps it to its own error. A failed fsync is never
retried. On any failure, including an exception raised by a fault hook, the
temporary file is removed and nothing new is visible under the target; if the
final directory fsync fails after put-if-absent, the new name is withdrawn too
(a rerun writes it again instead of trusting an entry that may not survive).

:func:`fsync_dir` lets ``OSError`` through: callers that sync directories
they did not write through :func:`write_atomic` translate it themselves.

Parent directories are not created here; that is the caller's business.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from vaultstore import faults
from vaultstore.errors import LocalIOError

__all__ = [
    "FULL_DISK",
    "fsync_dir",
    "fsync_tree",
    "io_error",
    "temp_name",
    "write_atomic",
]

log = logging.getLogger(__name__)

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync the directory ``path`` so entries created or removed in it persist.

    Raises:
        OSError: the directory cannot be opened or the fsync failed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every regular file and directory under ``root``, then ``root``.

    Used before a staged directory is renamed into place: after it, a power
    cut keeps the whole tree. Symbolic links are not followed.

    Raises:
        OSError: a file or directory could not be opened or synced.
    """
    top = Path(root)
    for _dirpath, _dirnames, filenames, dirfd in os.fwalk(top, topdown=False):
        for filename in filenames:
            try:
                fd = os.open(
                    filename,
                    os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                    dir_fd=dirfd,
                )
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a symbolic link: not ours to sync
                    continue
                raise
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fsync(fd)
            finally:
                os.close(fd)
        os.fsync(dirfd)


def temp_name(path: Path) -> Path:
    """A unique temporary name beside ``path`` (hidden, ``.tmp`` suffix)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def io_error(what: str, exc: OSError, *, path: str | None = None) -> LocalIOError:
    """Translate ``exc`` into the :class:`LocalIOError` this module raises."""
    reason = exc.strerror or str(exc)
    prefix = "disk full: " if exc.errno in FULL_DISK else ""
    return LocalIOError(
        f"{prefix}cannot write {what}: {reason}",
        path=path if path is not None else what,
        errno=exc.errno,
    )


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o600,
    overwrite: bool = True,
    fault: str | None = None,
    what: str | None = None,
) -> None:
    """Durably write ``data`` as ``path`` (see the module docstring).

    Args:
        path: the target; its directory must exist.
        data: the complete new content.
        mode: permission bits of the new file (0600 unless told).
        overwrite: replace an existing file (``os.replace``); when false,
            publish with ``os.link`` and refuse an existing name.
        fault: a :func:`vaultstore.faults.point` name run just before
            publishing, for crash tests.
        what: how error messages name the file (default: the path).

    Raises:
        FileExistsError: ``overwrite`` is false and ``path`` exists.
        LocalIOError: disk full, failed write/fsync/publish/directory fsync;
            the temporary file is gone and the old content (if any) intact.
    """
    target = Path(path)
    label = what if what is not None else str(target)
    tmp = temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if fault is not None:
            faults.point(fault)
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_or_claim(tmp, target)
    except FileExistsError:
        raise
    except OSError as exc:
        log.error(
            "durable write of %s failed: %s",
            target,
            exc.strerror or exc,
            extra={"event": "durable.write_failed", "path": str(target)},
        )
        raise io_error(label, exc, path=str(target)) from exc
    finally:
        _unlink_quietly(tmp)
    try:
        fsync_dir(target.parent)
    except OSError as exc:
        if not overwrite:
            _unlink_quietly(target)
        log.error(
            "directory fsync of %s failed: %s",
            target.parent,
            exc.strerror or exc,
            extra={"event": "durable.dirsync_failed", "path": str(target.parent)},
        )
        raise io_error(label, exc, path=str(target)) from exc


_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


def _link_or_claim(tmp: Path, target: Path) -> None:
    """Publish ``tmp`` as ``target`` without ever replacing an existing name."""
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    try:
        os.replace(tmp, target)
    except OSError:
        _unlink_quietly(target)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
