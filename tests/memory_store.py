"""An in-memory Store (the protocol of ``vaultstore.store.base``) for unit tests.

Real-backend behaviour is covered by the contract suite against LocalStore and
a real S3 server process; this one only lets plumbing tests run without disk.
"""

from __future__ import annotations

from collections.abc import Iterator

from vaultstore.errors import ObjectExistsError, ObjectMissingError


class MemoryStore:
    """The Store protocol over a dict; ``data`` is open for tests to damage."""

    url = "memory://test"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None:
        if name in self.data and not overwrite:
            raise ObjectExistsError(f"object {name} already exists")
        self.data[name] = bytes(data)

    def get(self, name: str) -> bytes:
        try:
            return self.data[name]
        except KeyError:
            raise ObjectMissingError(f"object {name} is missing") from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.get(name)[offset : offset + length]

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(n for n in self.data if n.startswith(prefix)))

    def exists(self, name: str) -> bool:
        return name in self.data

    def size(self, name: str) -> int:
        return len(self.get(name))

    def delete(self, name: str) -> None:
        self.data.pop(name, None)
