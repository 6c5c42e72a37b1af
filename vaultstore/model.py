"""The domain model: wallets, lifecycle records, balance snapshots, records.

Values are kept as the legacy JSON format carries them (``compat/FORMAT.md``):
plain dicts whose key order is data (the legacy checksum follows it), amounts as
canonical decimal strings (integers of any size, never floats), optional keys
absent rather than null. Plain dicts keep per-record Python work small at
millions of agents.

A *record* is one agent's whole current state, encoded canonically with
msgpack as the array ``[agentId, wallet|nil, lifecycle|nil, balances|nil]``.
The same state always encodes to the same bytes (dict order is preserved), so
records can be hashed, deduplicated and compared by their bytes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import blake3
import msgpack

Wallet = dict[str, Any]
Lifecycle = dict[str, Any]
BalanceEntry = dict[str, Any]

LIFECYCLE_STATES = ("pending", "active", "suspended", "archived")

# state -> states it may move to; staying in the same state is an update.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"active"}),
    "active": frozenset({"suspended", "archived"}),
    "suspended": frozenset({"active", "archived"}),
    "archived": frozenset(),
}


class Record(NamedTuple):
    """One agent's current state."""

    agent_id: str
    wallet: Wallet | None
    lifecycle: Lifecycle | None
    balances: list[BalanceEntry] | None


def encode_record(record: Record) -> bytes:
    """Canonical msgpack bytes of a record."""
    return msgpack.packb(tuple(record), use_bin_type=True)


def decode_record(data: bytes) -> Record:
    """Inverse of :func:`encode_record`; raises ValueError on malformed bytes."""
    value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(value, list) or len(value) != 4 or not isinstance(value[0], str):
        raise ValueError("record is not [agentId, wallet, lifecycle, balances]")
    return Record(*value)


def tree_key(agent_id: str) -> int:
    """Where an agent sits in a snapshot tree: 63 bits of BLAKE3(agentId).

    Unkeyed on purpose: the journal stores it so a full backup can stream the
    projection in tree order, for any repository. Tree nodes are encrypted, so
    placement reveals nothing to someone who holds only the repository.
    """
    return int.from_bytes(blake3.blake3(agent_id.encode("utf-8")).digest(8), "big") >> 1


def record_hash(record_bytes: bytes) -> bytes:
    """Unkeyed BLAKE3-256 of a record's bytes: the term of the state digest."""
    return blake3.blake3(record_bytes).digest()


def digest_add(digest: bytes, term: bytes) -> bytes:
    """Multiset hash: add a record's term to a 32-byte state digest (mod 2^256)."""
    total = int.from_bytes(digest, "big") + int.from_bytes(term, "big")
    return (total % (1 << 256)).to_bytes(32, "big")


def digest_remove(digest: bytes, term: bytes) -> bytes:
    """Multiset hash: remove a record's term from a state digest."""
    total = int.from_bytes(digest, "big") - int.from_bytes(term, "big")
    return (total % (1 << 256)).to_bytes(32, "big")


EMPTY_DIGEST = bytes(32)
