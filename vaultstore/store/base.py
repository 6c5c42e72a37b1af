"""The Store protocol every repository destination implements.

Names are relative, slash-separated keys (``data/ab/<pack-id>``,
``snapshots/0000000007``); no segment may be empty, ``..`` or start with a dot
(stores refuse such names with ``StoreError``). A store never interprets
content: ``get`` returns the stored bytes unverified, and the repository layer
checks them against the object's id. Errors are
translated to the ``StoreError`` branch of ``vaultstore.errors``:
``ObjectExistsError`` when put-if-absent loses, ``ObjectMissingError`` when a
name is absent, ``StoreError`` when the destination fails, ``LocalIOError`` for
local disk failures (full disk, failed fsync).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable


@runtime_checkable
class Store(Protocol):
    """A flat namespace of write-once (or explicitly overwritable) objects."""

    url: str

    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None:
        """Store ``data`` durably under ``name``; put-if-absent unless overwrite.

        Returns only when the object is on stable storage.

        Raises:
            ObjectExistsError: ``name`` exists and ``overwrite`` is false.
            StoreError, LocalIOError: the write failed; nothing is visible.
        """
        ...

    def get(self, name: str) -> bytes:
        """The whole object. Raises ObjectMissingError, StoreError."""
        ...

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``. Raises ObjectMissingError, StoreError.

        Fewer bytes come back when the object ends sooner, none past its end.
        """
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names under ``prefix``, sorted ascending."""
        ...

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists."""
        ...

    def size(self, name: str) -> int:
        """Size in bytes. Raises ObjectMissingError."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``; absent is not an error."""
        ...
