"""An in-memory stand-in for the journal API the repository uses (tests only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tests.memory_store import MemoryStore as DictStore  # noqa: F401 (re-export)
from vaultstore.model import (
    EMPTY_DIGEST,
    Record,
    digest_add,
    digest_remove,
    encode_record,
    record_hash,
    tree_key,
)


class FakeJournal:
    def __init__(self) -> None:
        self.lsn = 0
        self.agents: dict[str, tuple[int, int, bytes | None]] = {}
        self.digest = EMPTY_DIGEST
        self.meta: dict[str, bytes] = {}

    def put(self, agent_id: str, n: int = 0) -> None:
        wallet = {
            "agentId": agent_id,
            "derivationIndex": n,
            "evmAddress": f"0x{n:040x}",
        }
        lifecycle = {"state": "active", "totalTransactions": n}
        balances = [{"chain": "evm", "token": "ETH", "amount": str(n * 10**18)}]
        self._set(
            agent_id, encode_record(Record(agent_id, wallet, lifecycle, balances))
        )

    def remove(self, agent_id: str) -> None:
        self._set(agent_id, None)

    def _set(self, agent_id: str, record: bytes | None) -> None:
        old = self.agents.get(agent_id)
        if old is not None and old[2] is not None:
            self.digest = digest_remove(self.digest, record_hash(old[2]))
        if record is not None:
            self.digest = digest_add(self.digest, record_hash(record))
        self.lsn += 1
        self.agents[agent_id] = (self.lsn, tree_key(agent_id), record)

    def read_view(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def last_lsn(self) -> int:
        return self.lsn

    def state_digest(self) -> bytes:
        return self.digest

    def counts(self) -> dict[str, Any]:
        return {"agents": sum(1 for v in self.agents.values() if v[2] is not None)}

    def iter_changed_since(
        self, lsn: int, upto: int | None = None
    ) -> Iterator[tuple[str, int, bytes | None]]:
        rows = [(v[0], a, v[2]) for a, v in self.agents.items() if v[0] > lsn]
        for row_lsn, agent_id, record in sorted(rows):
            if upto is None or row_lsn <= upto:
                yield agent_id, row_lsn, record

    def iter_by_tree_key(
        self, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, str, int, bytes | None]]:
        rows = sorted((v[1], a, v[0], v[2]) for a, v in self.agents.items())
        yield from (r for r in rows if r[0] >= start and (stop is None or r[0] < stop))

    def get_meta(self, key: str) -> bytes | None:
        return self.meta.get(key)

    def set_meta(self, key: str, value: bytes) -> None:
        self.meta[key] = value


def state_digest_of(records: Iterator[bytes]) -> bytes:
    digest = EMPTY_DIGEST
    for record in records:
        digest = digest_add(digest, record_hash(record))
    return digest
