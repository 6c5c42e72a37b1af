"""Realistic, deterministic agent-fleet state and change workloads for benchmarks.

Every agent is a pure function of ``(seed, index)``: its addresses, lifecycle,
balances and metadata come from SHAKE-128 of the seed and the index, so any
agent can be produced alone, in any order, and nothing is held in memory
between agents (generation streams at any N). The change workload of round
``r`` is likewise a pure function of ``(seed, r, index)`` applied to the agent
as it stood after round ``r - 1``, so the state after changes streams too.

Addresses are syntactically valid (EIP-55 casing, XRPL base58check with version
byte 0x00) but, by default, made from random bytes, not derived from a seed:
formatting costs ~10 us per agent, deriving ~0.2 ms (see ``use_mnemonic``).

Outputs (no on-disk format of vaultstore's own is defined here):

* NDJSON change events in ``vaultstore ingest`` format, one compact JSON object
  per line: ``{"kind":"wallet","wallet":{...}}``,
  ``{"kind":"lifecycle","record":{...}}`` and
  ``{"kind":"balances","agentId":...,"balances":[...]}``, field names and
  values as in the legacy JSON format (amounts as decimal strings, times in ms,
  optional keys absent, balance entries ordered ETH, ERC-20, XRP).
* Legacy JSON (``compat/FORMAT.md``): one big ``wallet-backup`` file, or one
  such document per contiguous shard of agents. Two-space indentation, no
  trailing newline, a valid SHA-256 checksum over the compact form. The
  ``encryptedMasterSeed`` is random bytes of the right shape, not decryptable.

Command line::

    python benchmarks/generate.py state   --agents N [--seed S] [--jobs J] -o FILE
    (``-o -`` for standard output, the report then on standard error; state
    and changes only)
    python benchmarks/generate.py changes --agents N --percent P [--round R] -o FILE
    python benchmarks/generate.py legacy  --agents N [--after-percent P] -o FILE
    python benchmarks/generate.py shards  --agents N [--after-percent P] \
        --shards 256 -o DIR

Every command also takes ``--mnemonic-file FILE``: derive the addresses from
that BIP-39 mnemonic (vaultstore's own derivation, ~0.2 ms per agent) so that
commands which verify wallets against the seed accept them.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import hashlib
import json
import multiprocessing
import multiprocessing.pool
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from Crypto.Hash import keccak

DEFAULT_SEED = 20260101

# All generated times lie in 2026: creation in the first 300 days, change
# round r on day 330 + r.
BASE_MS = 1_767_225_600_000
DAY_MS = 86_400_000
CREATION_WINDOW_MS = 300 * DAY_MS
SNAPSHOT_MS = BASE_MS + 320 * DAY_MS

XRP_ALPHABET = "rpshnaf39wBUDNEGHJKLM4PQRST7VWXYZ2bcdeCg65jkm8oFqi1tuvAxyz"
# Every three-letter group of the XRPL alphabet, indexed by its value: base58
# encoding then costs one big-int divmod per three characters.
_B58_TRIPLES = [
    a + b + c for a in XRP_ALPHABET for b in XRP_ALPHABET for c in XRP_ALPHABET
]
_B58_CUBE = 58**3

STATES = ("pending", "active", "suspended", "archived")
TRANSITIONS = {
    "pending": {"active"},
    "active": {"suspended", "archived"},
    "suspended": {"active", "archived"},
    "archived": set(),
}

SUSPENSION_REASONS = (
    "Manual review",
    "Spending limit exceeded",
    "Suspicious activity detected",
    'Policy "max-daily-volume" breached',
    "Operator request\nsee ticket OPS-1182",
    "Key rotation pending",
    "Compliance hold (KYC/AML)",
)

TEAMS = ("treasury", "market-making", "payments", "research", "ops", "growth")
STRATEGIES = ("arbitrage", "dca", "rebalance", "payroll", "liquidity", "hedge")
LABEL_SUFFIXES = ("", "", "", " – prod", " ✓", " (Café)", " 日本")


def eip55(hex40: str) -> str:
    """EIP-55 mixed-case form of a 40-digit hex address (lower or mixed case)."""
    low = hex40.lower().encode("ascii")
    digest = _keccak256(low).hex()[:40].encode("ascii")
    # Upper-case a letter where the hash nibble is >= 8: subtract 0x20 from the
    # bytes selected by both masks, all in C (bytes.translate and big ints).
    hot = int.from_bytes(digest.translate(_NIBBLE_HIGH), "big")
    letters = int.from_bytes(low.translate(_HEX_LETTER), "big")
    cased = int.from_bytes(low, "big") - (hot & letters)
    return "0x" + cased.to_bytes(40, "big").decode("ascii")


def _keccak256_portable(data: bytes) -> bytes:
    return keccak.new(data=data, digest_bits=256).digest()


def _make_keccak256() -> Callable[[bytes], bytes]:
    """Keccak-256 in one call into pycryptodome's C library when it allows.

    ``keccak.new`` costs three foreign calls and an object per hash, which is
    most of an agent's generation time; the library's one-shot entry point
    does it in one. Falls back to the public API if the internals differ.
    """
    try:
        from Crypto.Hash.keccak import _raw_keccak_lib
        from Crypto.Util._raw_api import (
            c_size_t,
            c_ubyte,
            create_string_buffer,
            get_raw_buffer,
        )
    except ImportError:
        return _keccak256_portable
    out = create_string_buffer(32)
    size, capacity, rounds, padding = (
        c_size_t(32),
        c_size_t(64),
        c_ubyte(24),
        c_ubyte(1),
    )

    def oneshot(data: bytes) -> bytes:
        failed = _raw_keccak_lib.keccak_oneshot(
            data, c_size_t(len(data)), out, size, capacity, rounds, padding
        )
        if failed:
            raise ValueError(f"keccak_oneshot failed with code {failed}")
        return bytes(get_raw_buffer(out))

    try:
        if oneshot(b"") != _keccak256_portable(b""):
            return _keccak256_portable
    except (AttributeError, TypeError, ValueError):
        return _keccak256_portable
    return oneshot


_keccak256 = _make_keccak256()
_NIBBLE_HIGH = bytes(0x20 if chr(b) in "89abcdef" else 0 for b in range(256))
_HEX_LETTER = bytes(0x20 if chr(b) in "abcdef" else 0 for b in range(256))


def xrp_address(account_id: bytes) -> str:
    """Classic XRPL address of a 20-byte account id (base58check, version 0)."""
    payload = b"\x00" + account_id
    check = hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    return _b58encode(payload + check)


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    groups = []
    while number:
        number, rem = divmod(number, _B58_CUBE)
        groups.append(_B58_TRIPLES[rem])
    text = "".join(reversed(groups)).lstrip(XRP_ALPHABET[0])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return XRP_ALPHABET[0] * zeros + text


def xrp_decode(address: str) -> bytes:
    """Account id of a classic XRPL address; ValueError on a bad checksum."""
    number = 0
    for ch in address:
        number = number * 58 + XRP_ALPHABET.index(ch)
    zeros = len(address) - len(address.lstrip(XRP_ALPHABET[0]))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    raw = b"\x00" * zeros + body
    if len(raw) != 25 or raw[0] != 0:
        raise ValueError(f"not a classic XRPL address: {address!r}")
    check = hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()[:4]
    if check != raw[21:]:
        raise ValueError(f"bad XRPL address checksum: {address!r}")
    return raw[1:21]


@dataclass(frozen=True)
class Token:
    """An ERC-20 token the fleet holds: symbol, contract address, decimals."""

    symbol: str
    address: str
    decimals: int
    hold_percent: int


ERC20_TOKENS = (
    Token("USDC", eip55("a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"), 6, 30),
    Token("USDT", eip55("dac17f958d2ee523a2206206994597c13d831ec7"), 6, 20),
    Token("DAI", eip55("6b175474e89094c44da98b954eedeac495271d0f"), 18, 12),
    Token("WETH", eip55("c02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"), 18, 8),
    Token("LINK", eip55("514910771af9ca656af840dff83e8264ecf986ca"), 18, 5),
)
TOKEN_ORDER = {"ETH": 0, **{t.address: i + 1 for i, t in enumerate(ERC20_TOKENS)}}
TOKEN_ORDER["XRP"] = len(ERC20_TOKENS) + 1


class _Draw:
    """Deterministic draws from a block of hash output (mixed-radix digits)."""

    __slots__ = ("_n",)

    def __init__(self, data: bytes) -> None:
        self._n = int.from_bytes(data, "little")

    def take(self, bound: int) -> int:
        self._n, rem = divmod(self._n, bound)
        return rem

    def amount(self, low_exp: int, span: int) -> int:
        """A log-uniform amount: 10^(low_exp .. low_exp+span) scale."""
        exponent = low_exp + self.take(span + 1)
        return self.take(10**exponent) + 10 ** (exponent - 1)


def _entropy(seed: int, domain: bytes, index: int, size: int) -> bytes:
    key = seed.to_bytes(16, "big", signed=True) + domain + index.to_bytes(8, "big")
    return hashlib.shake_128(key).digest(size)


# Set by use_mnemonic(): derive real addresses instead of formatting random
# bytes. Module state so that forked --jobs workers inherit it.
_DERIVER: Any = None


def use_mnemonic(mnemonic: str | None) -> None:
    """Derive wallet addresses from this BIP-39 mnemonic, or stop (None).

    Real derivation (vaultstore's own BIP-32 code) costs ~0.2 ms per agent
    instead of ~10 us, but lets ``import-json`` and ``restore``, which verify
    addresses against the seed, run on the generated state.
    """
    global _DERIVER
    if mnemonic is None:
        _DERIVER = None
        return
    from mnemonic import Mnemonic

    from vaultstore.crypto.derive import WalletDeriver

    _DERIVER = WalletDeriver.from_seed(Mnemonic.to_seed(mnemonic.strip(), ""))


def _addresses(raw: bytes, index: int) -> tuple[str, str]:
    if _DERIVER is not None:
        evm, xrp = _DERIVER.addresses(index)
        return str(evm), str(xrp)
    return eip55(raw[:20].hex()), xrp_address(raw[20:40])


def agent_id_for(index: int) -> str:
    """The agentId of the agent at ``index`` (also its derivation index)."""
    return f"agent-{index:08d}"


@dataclass
class Agent:
    """One agent's state as the legacy format holds it (plain dicts)."""

    wallet: dict[str, Any]
    lifecycle: dict[str, Any]
    balances: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agent_id(self) -> str:
        return str(self.wallet["agentId"])


def make_agent(seed: int, index: int, created_floor: int = BASE_MS) -> Agent:
    """The agent at ``index`` of the fleet made from ``seed``, before any change."""
    raw = _entropy(seed, b"agent", index, 176)
    draw = _Draw(raw[40:])
    agent_id = agent_id_for(index)
    created = created_floor + draw.take(CREATION_WINDOW_MS)
    evm, xrp = _addresses(raw, index)
    wallet: dict[str, Any] = {
        "agentId": agent_id,
        "derivationIndex": index,
        "evmAddress": evm,
        "xrpAddress": xrp,
        "createdAt": created,
    }
    if draw.take(100) < 25:
        wallet["metadata"] = _metadata(draw, index)
    roll = draw.take(1000)
    state = (
        "pending"
        if roll < 40
        else "suspended"
        if roll < 110
        else "archived"
        if roll < 170
        else "active"
    )
    lifecycle = _initial_lifecycle(draw, agent_id, created, state)
    balances = _initial_balances(draw, agent_id, state, lifecycle)
    return Agent(wallet, lifecycle, balances)


def _metadata(draw: _Draw, index: int) -> dict[str, Any]:
    team = TEAMS[draw.take(len(TEAMS))]
    meta: dict[str, Any] = {
        "label": f"{team}-bot-{index % 997}"
        + LABEL_SUFFIXES[draw.take(len(LABEL_SUFFIXES))],
        "team": team,
        "strategy": STRATEGIES[draw.take(len(STRATEGIES))],
        "tier": 1 + draw.take(3),
    }
    if draw.take(3) == 0:
        meta["tags"] = ["autonomous", f"region-{draw.take(4)}"]
    return meta


def _initial_lifecycle(
    draw: _Draw, agent_id: str, created: int, state: str
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "agentId": agent_id,
        "state": state,
        "createdAt": created + draw.take(500),
        "totalTransactions": 0,
        "totalVolume": {},
    }
    if state == "pending":
        return record
    activated = created + 1000 + draw.take(3_600_000)
    last = activated + draw.take(SNAPSHOT_MS - activated)
    record["totalTransactions"] = 1 + draw.take(40) * (1 + draw.take(25))
    record["activatedAt"] = activated
    record["lastActivity"] = last
    if state == "suspended":
        record["suspendedAt"] = last + draw.take(DAY_MS)
        record["suspensionReason"] = SUSPENSION_REASONS[
            draw.take(len(SUSPENSION_REASONS))
        ]
    elif state == "archived":
        record["archivedAt"] = last + draw.take(10 * DAY_MS)
    return record


def _initial_balances(
    draw: _Draw, agent_id: str, state: str, lifecycle: dict[str, Any]
) -> list[dict[str, Any]]:
    updated = SNAPSHOT_MS - draw.take(DAY_MS)
    if state == "pending":
        return [_entry(agent_id, "evm", "ETH", 0, updated)]
    whale = draw.take(100) == 0
    entries = [
        _entry(agent_id, "evm", "ETH", draw.amount(15, 12 if whale else 7), updated)
    ]
    for token in ERC20_TOKENS:
        if draw.take(100) < token.hold_percent:
            value = draw.amount(token.decimals, 6 if whale else 4)
            entries.append(_entry(agent_id, "evm", token.address, value, updated))
    entries.append(_entry(agent_id, "xrp", "XRP", draw.amount(7, 4), updated))
    if state == "archived":
        # Swept on archival: ETH dust and the XRP account reserve remain.
        for entry in entries:
            entry["balance"] = "10000000" if entry["token"] == "XRP" else "0"
    volume = lifecycle["totalVolume"]
    for entry in entries:
        volume[entry["token"]] = str(draw.amount(6, 13))
    return entries


def _entry(agent_id: str, chain: str, token: str, value: int, updated: int) -> dict:
    return {
        "agentId": agent_id,
        "chain": chain,
        "token": token,
        "balance": str(value),
        "lastUpdated": updated,
    }


# ---------------------------------------------------------------- changes

CHANGE_KINDS = (
    "transaction",
    "activation",
    "suspension",
    "reactivation",
    "archival",
    "metadata",
    "balance-refresh",
)

# state -> (kind, weight) choices, every one a valid transition from that state.
_CHANGE_TABLE: dict[str, tuple[tuple[str, int], ...]] = {
    "pending": (("activation", 80), ("metadata", 10), ("balance-refresh", 10)),
    "active": (
        ("transaction", 70),
        ("suspension", 8),
        ("archival", 4),
        ("metadata", 10),
        ("balance-refresh", 8),
    ),
    "suspended": (
        ("reactivation", 50),
        ("archival", 20),
        ("metadata", 15),
        ("balance-refresh", 15),
    ),
    "archived": (("metadata", 50), ("balance-refresh", 50)),
}

# Of the agents a change round touches, this share are new agents.
NEW_AGENT_SHARE = 0.1


def round_time(change_round: int) -> int:
    """Earliest time of the changes of a round."""
    return BASE_MS + (330 + change_round) * DAY_MS


def _threshold(percent: float) -> int:
    return int(round((1.0 - NEW_AGENT_SHARE) * percent / 100.0 * 2**32))


def new_agent_count(agents: int, percent: float) -> int:
    """How many new agents one change round adds to a fleet of ``agents``."""
    return int(round(agents * percent / 100.0 * NEW_AGENT_SHARE))


def is_changed(seed: int, change_round: int, index: int, threshold: int) -> bool:
    """Whether round ``change_round`` changes the existing agent at ``index``."""
    raw = _entropy(seed, b"pick%d" % change_round, index, 4)
    return int.from_bytes(raw, "big") < threshold


def apply_change(
    seed: int, change_round: int, agent: Agent
) -> tuple[str, Agent, list[str]]:
    """Change one agent; returns (kind, agent after, which parts changed)."""
    index = agent.wallet["derivationIndex"]
    draw = _Draw(_entropy(seed, b"change%d" % change_round, index, 64))
    now = round_time(change_round) + draw.take(DAY_MS)
    state = agent.lifecycle["state"]
    kind = _pick(draw, _CHANGE_TABLE[state])
    wallet, life = agent.wallet, agent.lifecycle
    balances = [dict(e) for e in agent.balances]
    if kind == "metadata":
        wallet = dict(wallet)
        meta = dict(wallet.get("metadata") or _metadata(draw, index))
        meta["tier"] = 1 + (meta.get("tier", 0) % 3)
        meta["editedAt"] = now
        wallet["metadata"] = meta
        return kind, Agent(wallet, life, agent.balances), ["wallet"]
    if kind == "balance-refresh":
        _move_balance(draw, balances, now, incoming=True)
        return kind, Agent(wallet, life, balances), ["balances"]
    life = dict(life)
    life["totalVolume"] = dict(life["totalVolume"])
    if kind == "transaction":
        token, moved = _move_balance(draw, balances, now, incoming=draw.take(2) == 0)
        life["totalTransactions"] += 1 + draw.take(5)
        volume = life["totalVolume"]
        volume[token] = str(int(volume.get(token, "0")) + moved)
        life["lastActivity"] = now
        return kind, Agent(wallet, life, balances), ["lifecycle", "balances"]
    if kind == "activation":
        life["state"] = "active"
        life["activatedAt"] = now
    elif kind == "suspension":
        life["state"] = "suspended"
        life["suspendedAt"] = now
        life["suspensionReason"] = SUSPENSION_REASONS[
            draw.take(len(SUSPENSION_REASONS))
        ]
    elif kind == "reactivation":
        life["state"] = "active"
        life.pop("suspendedAt", None)
        life.pop("suspensionReason", None)
    elif kind == "archival":
        life["state"] = "archived"
        life["archivedAt"] = now
    return kind, Agent(wallet, life, balances), ["lifecycle"]


def _pick(draw: _Draw, table: tuple[tuple[str, int], ...]) -> str:
    roll = draw.take(sum(weight for _, weight in table))
    for kind, weight in table:
        if roll < weight:
            return kind
        roll -= weight
    raise RuntimeError("unreachable: weights exhausted")


def _move_balance(
    draw: _Draw, balances: list[dict[str, Any]], now: int, incoming: bool
) -> tuple[str, int]:
    entry = balances[draw.take(len(balances))]
    held = int(entry["balance"])
    if incoming or held == 0:
        moved = 1 + draw.take(max(held, 10**6))
        entry["balance"] = str(held + moved)
    else:
        moved = 1 + draw.take(held)
        entry["balance"] = str(held - moved)
    for each in balances:
        each["lastUpdated"] = now
    return str(entry["token"]), moved


def new_agent(seed: int, change_round: int, index: int) -> Agent:
    """A fleet newcomer added by a change round: pending or freshly active."""
    agent = make_agent(seed, index)
    draw = _Draw(_entropy(seed, b"new%d" % change_round, index, 32))
    created = round_time(change_round) + draw.take(DAY_MS)
    agent.wallet["createdAt"] = created
    agent_id = agent.agent_id
    life: dict[str, Any] = {
        "agentId": agent_id,
        "state": "pending",
        "createdAt": created + draw.take(500),
        "totalTransactions": 0,
        "totalVolume": {},
    }
    balances = [_entry(agent_id, "evm", "ETH", 0, created)]
    if draw.take(2) == 0:
        life["state"] = "active"
        life["activatedAt"] = created + 1000 + draw.take(60_000)
        balances.append(_entry(agent_id, "xrp", "XRP", 10_000_000, created))
    return Agent(agent.wallet, life, balances)


def fleet_size(agents: int, percent: float, rounds: int) -> int:
    """Number of agents after ``rounds`` change rounds (new agents included)."""
    total = agents
    for _ in range(rounds):
        total += new_agent_count(total, percent)
    return total


def agent_after(seed: int, index: int, percent: float, rounds: int, base: int) -> Agent:
    """The agent at ``index`` after ``rounds`` rounds over a fleet of ``base``."""
    size = base
    agent: Agent | None = make_agent(seed, index) if index < base else None
    threshold = _threshold(percent)
    for change_round in range(1, rounds + 1):
        added = new_agent_count(size, percent)
        if agent is None:
            if index < size + added:
                agent = new_agent(seed, change_round, index)
        elif is_changed(seed, change_round, index, threshold):
            agent = apply_change(seed, change_round, agent)[1]
        size += added
    if agent is None:
        raise ValueError(f"agent {index} does not exist after {rounds} rounds")
    return agent


def iter_agents(
    seed: int, agents: int, percent: float = 0.0, rounds: int = 0
) -> Iterator[Agent]:
    """Every agent of the fleet, in index order, after ``rounds`` change rounds."""
    if rounds == 0:
        for index in range(agents):
            yield make_agent(seed, index)
        return
    for index in range(fleet_size(agents, percent, rounds)):
        yield agent_after(seed, index, percent, rounds, agents)


# ---------------------------------------------------------------- events


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def agent_events(
    agent: Agent, parts: Iterable[str] = ("wallet", "lifecycle", "balances")
) -> str:
    """NDJSON lines (each ending in a newline) for the given parts of an agent."""
    lines = []
    for part in parts:
        if part == "wallet":
            lines.append(_ENCODE({"kind": "wallet", "wallet": agent.wallet}))
        elif part == "lifecycle":
            lines.append(_ENCODE({"kind": "lifecycle", "record": agent.lifecycle}))
        else:
            lines.append(_balances_event(agent.agent_id, agent.balances))
    return "\n".join(lines) + "\n"


def _balances_event(agent_id: str, balances: list[dict[str, Any]]) -> str:
    # The one event with many small dicts: formatted by hand (agentIds and
    # tokens made here never need escaping), several times faster than json.
    entries = ",".join(
        f'{{"agentId":"{e["agentId"]}","chain":"{e["chain"]}","token":"{e["token"]}",'
        f'"balance":"{e["balance"]}","lastUpdated":{e["lastUpdated"]}}}'
        for e in balances
    )
    return f'{{"kind":"balances","agentId":"{agent_id}","balances":[{entries}]}}'


def iter_state_events(seed: int, agents: int) -> Iterator[str]:
    """The initial state as NDJSON text chunks, one chunk per agent."""
    for agent in iter_agents(seed, agents):
        yield agent_events(agent)


def iter_change_events(
    seed: int, agents: int, percent: float, change_round: int = 1
) -> Iterator[tuple[str, str]]:
    """(kind, NDJSON chunk) for every agent that round ``change_round`` touches.

    ``agents`` is the size of the original fleet; round ``r`` applies to the
    state after rounds ``1 .. r-1``.
    """
    threshold = _threshold(percent)
    size = fleet_size(agents, percent, change_round - 1)
    for index in range(size):
        if not is_changed(seed, change_round, index, threshold):
            continue
        before = agent_after(seed, index, percent, change_round - 1, agents)
        kind, after, parts = apply_change(seed, change_round, before)
        yield kind, agent_events(after, parts)
    for index in range(size, size + new_agent_count(size, percent)):
        yield "new-agent", agent_events(new_agent(seed, change_round, index))


def _state_chunk(task: tuple[int, int, int]) -> str:
    seed, start, stop = task
    return "".join(agent_events(make_agent(seed, i)) for i in range(start, stop))


STATE_CHUNK = 4096


def write_state(path: Path, seed: int, agents: int, jobs: int = 1) -> int:
    """Write the initial state as NDJSON; returns the number of agents.

    With ``jobs`` > 1, forked workers make chunks of agents and the parent
    writes them in index order: the output is the same bytes for any ``jobs``.
    """
    tasks = [
        (seed, start, min(start + STATE_CHUNK, agents))
        for start in range(0, agents, STATE_CHUNK)
    ]
    with _output(path) as out:
        if jobs <= 1:
            for task in tasks:
                out.write(_state_chunk(task))
            return agents
        # At most a few chunks per worker ahead of the writer: piped into a
        # slower reader (``vaultstore ingest -``), Pool.imap would buffer
        # every finished chunk (5.7 GB at 10M agents).
        ahead: collections.deque[multiprocessing.pool.AsyncResult[str]]
        ahead = collections.deque()
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for task in tasks:
                if len(ahead) >= 4 * jobs:
                    out.write(ahead.popleft().get())
                ahead.append(pool.apply_async(_state_chunk, (task,)))
            while ahead:
                out.write(ahead.popleft().get())
    return agents


def _output(path: Path) -> contextlib.AbstractContextManager[TextIO]:
    """The text file at ``path``, or standard output for ``-``."""
    if str(path) == "-":
        return contextlib.nullcontext(sys.stdout)
    return open(path, "w", encoding="utf-8", newline="\n")


def write_changes(
    path: Path, seed: int, agents: int, percent: float, change_round: int = 1
) -> dict[str, int]:
    """Write one change round as NDJSON; returns counts per change kind."""
    counts: dict[str, int] = {}
    with _output(path) as out:
        for kind, chunk in iter_change_events(seed, agents, percent, change_round):
            counts[kind] = counts.get(kind, 0) + 1
            out.write(chunk)
    return counts


# ---------------------------------------------------------------- legacy JSON

_ENCODE_STR = json.encoder.encode_basestring  # type: ignore[attr-defined]
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _pretty(value: Any, level: int) -> str:
    """JSON.stringify(value, null, 2) at nesting ``level`` (our value types)."""
    if isinstance(value, str):
        return _ENCODE_STR(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    pad = "  " * (level + 1)
    end = "  " * level
    if isinstance(value, dict):
        if not value:
            return "{}"
        body = ",\n".join(
            f"{pad}{_ENCODE_STR(k)}: {_pretty(v, level + 1)}" for k, v in value.items()
        )
        return "{\n" + body + "\n" + end + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        body = ",\n".join(pad + _pretty(v, level + 1) for v in value)
        return "[\n" + body + "\n" + end + "]"
    return json.dumps(value)


def _fake_seed_envelope(seed: int) -> str:
    return base64.b64encode(_entropy(seed, b"envelope", 0, 32 + 190)).decode("ascii")


class LegacyWriter:
    """Streams one legacy full backup: wallets, then records, then balances.

    The three arrays are written to temporary files (pretty and compact form)
    and joined at the end, so memory stays flat; the checksum is SHA-256 of the
    compact form with ``checksum`` empty, as the legacy service computes it.
    """

    def __init__(self, path: Path, seed: int, timestamp: int) -> None:
        self.path = path
        self.tmp = Path(tempfile.mkdtemp(prefix="legacy-", dir=path.parent))
        self.header = {
            "version": "1.0",
            "timestamp": timestamp,
            "type": "full",
            "encryptedMasterSeed": _fake_seed_envelope(seed),
        }
        names = ("wallets", "records", "balances")
        self.pretty = {
            n: open(self.tmp / f"{n}.pretty", "w", encoding="utf-8") for n in names
        }
        self.compact = {
            n: open(self.tmp / f"{n}.compact", "w", encoding="utf-8") for n in names
        }
        self.count = 0

    def add(self, agent: Agent) -> None:
        sep_p = "" if self.count == 0 else ",\n"
        sep_c = "" if self.count == 0 else ","
        self.pretty["wallets"].write(sep_p + "    " + _pretty(agent.wallet, 2))
        self.pretty["records"].write(sep_p + "    " + _pretty(agent.lifecycle, 2))
        self.pretty["balances"].write(
            f"{sep_p}    {_ENCODE_STR(agent.agent_id)}: {_pretty(agent.balances, 2)}"
        )
        self.compact["wallets"].write(sep_c + _COMPACT(agent.wallet))
        self.compact["records"].write(sep_c + _COMPACT(agent.lifecycle))
        self.compact["balances"].write(
            f"{sep_c}{_ENCODE_STR(agent.agent_id)}:{_COMPACT(agent.balances)}"
        )
        self.count += 1

    def finish(self) -> str:
        """Join the parts into the final file; returns the checksum."""
        for handle in (*self.pretty.values(), *self.compact.values()):
            handle.close()
        checksum = self._checksum()
        head = ",\n".join(
            f"  {_ENCODE_STR(k)}: {_pretty(v, 1)}" for k, v in self.header.items()
        )
        opens = {"wallets": "[", "records": "[", "balances": "{"}
        closes = {"wallets": "]", "records": "]", "balances": "}"}
        keys = {
            "wallets": "wallets",
            "records": "lifecycleRecords",
            "balances": "balanceSnapshots",
        }
        with open(self.path, "w", encoding="utf-8", newline="\n") as out:
            out.write("{\n" + head)
            for name in ("wallets", "records", "balances"):
                empty = self.count == 0
                out.write(
                    f',\n  "{keys[name]}": {opens[name]}' + ("" if empty else "\n")
                )
                with open(self.tmp / f"{name}.pretty", encoding="utf-8") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
                out.write(closes[name] if empty else "\n  " + closes[name])
            out.write(f',\n  "checksum": "{checksum}"\n}}')
        shutil.rmtree(self.tmp)
        return checksum

    def _checksum(self) -> str:
        digest = hashlib.sha256()
        head = _COMPACT(self.header)[:-1]
        digest.update(head.encode("utf-8"))
        opens = {"wallets": "[", "records": "[", "balances": "{"}
        closes = {"wallets": "]", "records": "]", "balances": "}"}
        keys = {
            "wallets": "wallets",
            "records": "lifecycleRecords",
            "balances": "balanceSnapshots",
        }
        for name in ("wallets", "records", "balances"):
            digest.update(f',"{keys[name]}":{opens[name]}'.encode())
            with open(self.tmp / f"{name}.compact", "rb") as part:
                while block := part.read(1 << 20):
                    digest.update(block)
            digest.update(closes[name].encode())
        digest.update(b',"checksum":""}')
        return digest.hexdigest()


def write_legacy(
    path: Path, agents_iter: Iterable[Agent], seed: int, timestamp: int
) -> int:
    """Write agents as one legacy full backup file; returns the agent count."""
    writer = LegacyWriter(path, seed, timestamp)
    for agent in agents_iter:
        writer.add(agent)
    writer.finish()
    return writer.count


def write_legacy_shards(
    directory: Path,
    agents_iter: Iterable[Agent],
    total: int,
    shards: int,
    seed: int,
    timestamp: int,
) -> list[Path]:
    """Write agents as ``shards`` legacy files over contiguous index ranges."""
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = max(1, -(-total // shards))
    paths: list[Path] = []
    writer: LegacyWriter | None = None
    for agent in agents_iter:
        shard = min(agent.wallet["derivationIndex"] // per_shard, shards - 1)
        if writer is None or len(paths) <= shard:
            if writer is not None:
                writer.finish()
            paths.append(directory / f"shard-{shard:04d}.json")
            writer = LegacyWriter(paths[-1], seed, timestamp)
        writer.add(agent)
    if writer is not None:
        writer.finish()
    return paths


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("state", "initial state as NDJSON ingest events"),
        ("changes", "one change round as NDJSON ingest events"),
        ("legacy", "state as one legacy JSON full backup"),
        ("shards", "state as legacy JSON files, one per shard of agents"),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--agents", type=int, required=True)
        cmd.add_argument("--seed", type=int, default=DEFAULT_SEED)
        cmd.add_argument("-o", "--output", type=Path, required=True)
        cmd.add_argument(
            "--mnemonic-file",
            type=Path,
            default=None,
            help="derive addresses from this BIP-39 mnemonic (slow, real)",
        )
        if name == "changes":
            cmd.add_argument("--percent", type=float, required=True)
            cmd.add_argument("--round", type=int, default=1, dest="change_round")
        if name in ("legacy", "shards"):
            cmd.add_argument(
                "--after-percent",
                type=float,
                default=0.0,
                help="state after one change round of this percentage",
            )
        if name == "state":
            cmd.add_argument(
                "--jobs",
                type=int,
                default=min(4, os.cpu_count() or 1),
                help="worker processes (output is identical for any value)",
            )
        if name == "shards":
            cmd.add_argument("--shards", type=int, default=256)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.mnemonic_file is not None:
        use_mnemonic(args.mnemonic_file.read_text(encoding="utf-8"))
    started = time.perf_counter()
    report: dict[str, Any] = {"command": args.command, "agents": args.agents}
    if args.command == "state":
        write_state(args.output, args.seed, args.agents, args.jobs)
    elif args.command == "changes":
        counts = write_changes(
            args.output, args.seed, args.agents, args.percent, args.change_round
        )
        report["changes"] = counts
        report["changed_agents"] = sum(counts.values())
    else:
        rounds = 1 if args.after_percent > 0 else 0
        total = fleet_size(args.agents, args.after_percent, rounds)
        agents = iter_agents(args.seed, args.agents, args.after_percent, rounds)
        stamp = round_time(rounds + 1)
        if args.command == "legacy":
            args.output.parent.mkdir(parents=True, exist_ok=True)
            write_legacy(args.output, agents, args.seed, stamp)
        else:
            write_legacy_shards(
                args.output, agents, total, args.shards, args.seed, stamp
            )
        report["written_agents"] = total
    report["seconds"] = round(time.perf_counter() - started, 3)
    # With ``-o -`` the data goes to standard output and the report to
    # standard error, so the output can be piped into ``vaultstore ingest -``.
    to_stdout = str(args.output) == "-"
    if args.command != "shards" and not to_stdout:
        report["bytes"] = os.path.getsize(args.output)
    report_stream = sys.stderr if to_stdout else sys.stdout
    json.dump(report, report_stream)
    report_stream.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
