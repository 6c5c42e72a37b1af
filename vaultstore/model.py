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

Validation (``validate_wallet``, ``validate_lifecycle``, ``validate_balances``)
checks the dicts ``json.loads`` produced, in place, and raises ``InputError``
whose message starts with the field, e.g. ``wallets.derivationIndex: ...``:

- amounts (balances, totalVolume values) are non-negative integers of any size,
  kept as canonical decimal strings: a JSON integer is accepted and rewritten
  as its string; floats, negatives, signs, leading zeros (other than "0") and
  non-ASCII digits are refused;
- optional keys are absent, never null; unknown keys are refused;
- metadata is any JSON object, kept exactly (floats, nulls inside, key order);
- derivationIndex is 0 .. 2^31-1; timestamps and counters are non-negative
  integers (JSON floats such as ``1.0`` are refused);
- **agentId**: a string of 1 to 256 characters with no control characters
  (U+0000-U+001F, U+007F), no ``/`` or ``\\``, and no leading or trailing
  whitespace. The rule keeps ids safe to use in file names and log lines.

Lifecycle states follow the machine in :data:`TRANSITIONS`; a first record may
be in any state, staying in the same state is an update, archived is final.
"""

from __future__ import annotations

import operator
import re
import struct
from collections.abc import Iterable
from itertools import repeat
from typing import Any, Literal, NamedTuple

import blake3
import msgpack

from vaultstore.errors import InputError, TransitionError

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
    data: bytes = msgpack.packb(tuple(record), use_bin_type=True)
    return data


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


def tree_keys(agent_ids: Iterable[str]) -> list[int]:
    """:func:`tree_key` of each agent id, with no Python frame per id.

    A chain of C-level ``map`` calls: at a million agents (a restore) the
    function-call overhead of :func:`tree_key` itself is most of its cost.
    """
    digests = map(_DIGEST8, map(blake3.blake3, map(str.encode, agent_ids)))
    big: Literal["big"] = "big"
    keys = map(int.from_bytes, digests, repeat(big))
    return list(map(operator.rshift, keys, repeat(1)))


def record_hashes(records: Iterable[bytes | memoryview]) -> list[bytes]:
    """:func:`record_hash` of each record (bytes or a memoryview of them)."""
    return list(map(_DIGEST, map(blake3.blake3, records)))


def digest_terms_sum(terms: bytes) -> int:
    """Sum of the concatenated 32-byte big-endian terms, as integers.

    Four columns of 64-bit words are summed in C and combined; equal to
    ``sum(int.from_bytes(t, "big") for t in terms)`` without a loop.
    """
    if len(terms) % 32:
        raise ValueError("digest terms are 32 bytes each")
    words: tuple[int, ...] = struct.unpack(f">{len(terms) // 8}Q", terms)
    total: int = (
        (sum(words[0::4]) << 192)
        + (sum(words[1::4]) << 128)
        + (sum(words[2::4]) << 64)
        + sum(words[3::4])
    )
    return total


def records_digest_sum(records: Iterable[bytes | memoryview]) -> int:
    """The sum of the records' digest terms (reduce mod 2^256 for a digest),
    hashed and summed with C-level calls only."""
    return digest_terms_sum(b"".join(record_hashes(records)))


_DIGEST = operator.methodcaller("digest")
_DIGEST8 = operator.methodcaller("digest", 8)


def digest_add(digest: bytes, term: bytes) -> bytes:
    """Multiset hash: add a record's term to a 32-byte state digest (mod 2^256)."""
    total = int.from_bytes(digest, "big") + int.from_bytes(term, "big")
    return (total % (1 << 256)).to_bytes(32, "big")


def digest_remove(digest: bytes, term: bytes) -> bytes:
    """Multiset hash: remove a record's term from a state digest."""
    total = int.from_bytes(digest, "big") - int.from_bytes(term, "big")
    return (total % (1 << 256)).to_bytes(32, "big")


EMPTY_DIGEST = bytes(32)


# --- validation -------------------------------------------------------------
#
# Validators take the dicts ``json.loads`` produced and check them in place:
# no per-record classes, one pass over the keys, amounts normalised to
# canonical decimal strings. They raise InputError whose message starts with
# the field (``wallets.derivationIndex: ...``); callers add the line number.

MAX_DERIVATION_INDEX = (1 << 31) - 1
MAX_AGENT_ID_LENGTH = 256
CHAINS = ("evm", "xrp")

_AMOUNT = re.compile(r"0|[1-9][0-9]*")
_AGENT_ID_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\]")
_EVM_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_XRP_ADDRESS = re.compile(r"r[1-9A-HJ-NP-Za-km-z]{24,34}")

_WALLET_REQUIRED = (
    "agentId",
    "derivationIndex",
    "evmAddress",
    "xrpAddress",
    "createdAt",
)
_WALLET_NEEDS = frozenset(_WALLET_REQUIRED)
_WALLET_KEYS = _WALLET_NEEDS | {"metadata"}
_LIFECYCLE_REQUIRED = (
    "agentId",
    "state",
    "createdAt",
    "totalTransactions",
    "totalVolume",
)
_LIFECYCLE_NEEDS = frozenset(_LIFECYCLE_REQUIRED)
_LIFECYCLE_TIMES = ("activatedAt", "suspendedAt", "archivedAt", "lastActivity")
_LIFECYCLE_KEYS = (
    frozenset(_LIFECYCLE_REQUIRED) | frozenset(_LIFECYCLE_TIMES) | {"suspensionReason"}
)
_BALANCE_KEYS = ("agentId", "chain", "token", "balance", "lastUpdated")
_BALANCE_KEYSET = frozenset(_BALANCE_KEYS)


def _fail(field: str, problem: str) -> InputError:
    return InputError(f"{field}: {problem}", field=field)


def validate_agent_id(value: Any, field: str = "agentId") -> str:
    """Check an agentId against the rule in the module docstring."""
    if not isinstance(value, str):
        raise _fail(field, "must be a string")
    if not 1 <= len(value) <= MAX_AGENT_ID_LENGTH:
        raise _fail(field, f"must be 1 to {MAX_AGENT_ID_LENGTH} characters")
    if _AGENT_ID_FORBIDDEN.search(value):
        raise _fail(field, "must not contain control characters, '/' or '\\'")
    if value != value.strip():
        raise _fail(field, "must not start or end with whitespace")
    return value


def canonical_amount(value: Any, field: str) -> str:
    """An amount as a canonical decimal string: digits only, no leading zeros."""
    if isinstance(value, str):
        if _AMOUNT.fullmatch(value) is None:
            raise _fail(field, "must be a non-negative integer in decimal digits")
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    raise _fail(field, "must be a non-negative integer (a decimal string)")


# Counters and timestamps must fit SQLite's and msgpack's signed 64 bits.
MAX_UINT = (1 << 63) - 1


def _uint(value: Any, field: str, upper: int = MAX_UINT) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        if value <= upper:
            return value
        raise _fail(field, f"must be an integer 0..{upper}")
    raise _fail(field, "must be a non-negative integer")


def _object(obj: Any, field: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail(field, "must be a JSON object")
    return obj


def _check_keys(
    obj: dict[str, Any],
    allowed: frozenset[str],
    required: tuple[str, ...],
    needs: frozenset[str],
    where: str,
) -> None:
    if not obj.keys() >= needs:
        missing = next(key for key in required if key not in obj)
        raise _fail(f"{where}.{missing}", "is missing")
    if len(obj) > len(required):
        for key, value in obj.items():
            if key not in allowed:
                raise _fail(f"{where}.{key}", "is not a known field")
            if value is None:
                raise _fail(f"{where}.{key}", "must be absent rather than null")


def validate_wallet(obj: Any) -> Wallet:
    """Check a legacy wallet dict in place; returns it (key order kept)."""
    wallet = _object(obj, "wallets")
    _check_keys(wallet, _WALLET_KEYS, _WALLET_REQUIRED, _WALLET_NEEDS, "wallets")
    validate_agent_id(wallet["agentId"], "wallets.agentId")
    _uint(wallet["derivationIndex"], "wallets.derivationIndex", MAX_DERIVATION_INDEX)
    evm = wallet["evmAddress"]
    if not isinstance(evm, str) or _EVM_ADDRESS.fullmatch(evm) is None:
        raise _fail("wallets.evmAddress", "must be 0x followed by 40 hex digits")
    xrp = wallet["xrpAddress"]
    if not isinstance(xrp, str) or _XRP_ADDRESS.fullmatch(xrp) is None:
        raise _fail("wallets.xrpAddress", "must be a classic r... address")
    _uint(wallet["createdAt"], "wallets.createdAt")
    if "metadata" in wallet and not isinstance(wallet["metadata"], dict):
        raise _fail("wallets.metadata", "must be a JSON object")
    return wallet


def validate_lifecycle(obj: Any) -> Lifecycle:
    """Check a legacy lifecycle record in place; amounts become strings."""
    record = _object(obj, "lifecycleRecords")
    _check_keys(
        record,
        _LIFECYCLE_KEYS,
        _LIFECYCLE_REQUIRED,
        _LIFECYCLE_NEEDS,
        "lifecycleRecords",
    )
    validate_agent_id(record["agentId"], "lifecycleRecords.agentId")
    if record["state"] not in LIFECYCLE_STATES or not isinstance(record["state"], str):
        raise _fail(
            "lifecycleRecords.state", "must be one of " + ", ".join(LIFECYCLE_STATES)
        )
    _uint(record["createdAt"], "lifecycleRecords.createdAt")
    _uint(record["totalTransactions"], "lifecycleRecords.totalTransactions")
    for key in _LIFECYCLE_TIMES:
        if key in record:
            _uint(record[key], f"lifecycleRecords.{key}")
    if "suspensionReason" in record and not isinstance(record["suspensionReason"], str):
        raise _fail("lifecycleRecords.suspensionReason", "must be a string")
    volume = _object(record["totalVolume"], "lifecycleRecords.totalVolume")
    for token, amount in volume.items():
        if not token:
            raise _fail("lifecycleRecords.totalVolume", "token must not be empty")
        if type(amount) is not str:
            volume[token] = canonical_amount(amount, "lifecycleRecords.totalVolume")
        elif _AMOUNT.fullmatch(amount) is None:
            raise _fail(
                "lifecycleRecords.totalVolume", f"{token}: not a decimal amount"
            )
    return record


def validate_balances(agent_id: str, entries: Any) -> list[BalanceEntry]:
    """Check an agent's balance list in place; each balance becomes a string."""
    if not isinstance(entries, list):
        raise _fail("balanceSnapshots", "must be a JSON array")
    for position, entry in enumerate(entries):
        where = f"balanceSnapshots[{position}]"
        entry = _object(entry, where)
        if entry.keys() != _BALANCE_KEYSET:
            missing = [k for k in _BALANCE_KEYS if k not in entry]
            extra = [k for k in entry if k not in _BALANCE_KEYS]
            name = (missing or extra)[0]
            raise _fail(
                f"{where}.{name}", "is missing" if missing else "is not a known field"
            )
        if entry["agentId"] != agent_id:
            raise _fail(f"{where}.agentId", "does not match the agent")
        if entry["chain"] not in CHAINS or not isinstance(entry["chain"], str):
            raise _fail(f"{where}.chain", "must be evm or xrp")
        if not isinstance(entry["token"], str) or not entry["token"]:
            raise _fail(f"{where}.token", "must be a non-empty string")
        balance = entry["balance"]
        if type(balance) is not str or _AMOUNT.fullmatch(balance) is None:
            entry["balance"] = canonical_amount(balance, f"{where}.balance")
        _uint(entry["lastUpdated"], f"{where}.lastUpdated")
    return entries


def transition_allowed(old_state: str | None, new_state: str) -> bool:
    """Whether the state machine lets a record move from old to new state.

    A first record (``old_state`` None) may be in any state; staying in the same
    state is an update of counters and timestamps, allowed in every state.
    """
    return (
        old_state is None
        or old_state == new_state
        or new_state in TRANSITIONS.get(old_state, frozenset())
    )


def check_transition(agent_id: str, old_state: str | None, new_state: str) -> None:
    """Raise TransitionError unless ``old_state -> new_state`` is allowed."""
    if transition_allowed(old_state, new_state):
        return
    final = " (archived is final)" if old_state == "archived" else ""
    raise TransitionError(
        f"lifecycleRecords.state: agent {agent_id!r} cannot move from "
        f"{old_state} to {new_state}{final}",
        field="lifecycleRecords.state",
        agent_id=agent_id,
        old_state=old_state,
        new_state=new_state,
    )
