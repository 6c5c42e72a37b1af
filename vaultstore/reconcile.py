"""Balance reconciliation: the vault's balance snapshots against the chains.

Every balance entry of every live record (``chain``, ``token``, ``balance`` as
a decimal string) is looked up at the agent's address in the source that
serves its chain (``vaultstore.balances``). Both sides are compared as Python
integers. The legacy service compared a string with an integer and flagged
every entry; here an expected amount that is not a canonical non-negative
decimal integer is counted as ``invalid`` and never compared.

Each difference is one WARNING log record with the message
``Balance mismatch detected`` and the fields ``agentId``, ``chain``, ``token``,
``expected`` and ``actual`` (amounts as decimal strings: JSON readers lose
precision above 2^53). The returned :class:`ReconcileSummary` counts:

- ``checked``: entries compared, ``matched`` + ``mismatched``;
- ``unavailable``: the source had no value (not in the file, an unsupported
  token, a JSON-RPC error for that one call);
- ``skipped``: no source serves the entry's chain, or the wallet has no
  address for it;
- ``invalid``: the vault's own amount is not a decimal integer;
- ``accountsNotFound``: XRPL accounts the ledger does not know, compared as 0.

Archived agents are checked like the others: archiving ends an agent's
lifecycle, not the funds its addresses may still hold, and a restored
snapshot must be as exact for them.

Records are processed in batches of ``batch_size`` entries, so memory stays
flat in the number of agents and sources can batch their requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vaultstore.balances import BalanceQuery, BalanceSource, Lookup, parse_amount
from vaultstore.errors import IntegrityError, MisuseError
from vaultstore.model import Record, decode_record

log = logging.getLogger(__name__)

__all__ = [
    "MISMATCH_MESSAGE",
    "Mismatch",
    "ReconcileSummary",
    "live_records",
    "reconcile",
    "reconcile_view",
]

MISMATCH_MESSAGE = "Balance mismatch detected"
ADDRESS_FIELD = {"evm": "evmAddress", "xrp": "xrpAddress"}
NOT_FOUND_NOTE = "account-not-found"


@dataclass(frozen=True)
class Mismatch:
    """One balance that differs between the vault and its source."""

    agent_id: str
    chain: str
    token: str
    expected: int
    actual: int

    def to_dict(self) -> dict[str, str]:
        """JSON-safe form, amounts as decimal strings."""
        return {
            "agentId": self.agent_id,
            "chain": self.chain,
            "token": self.token,
            "expected": str(self.expected),
            "actual": str(self.actual),
        }


@dataclass
class ReconcileSummary:
    """Counts of one reconciliation run, plus the first mismatches found."""

    agents: int = 0
    checked: int = 0
    matched: int = 0
    mismatched: int = 0
    unavailable: int = 0
    skipped: int = 0
    invalid: int = 0
    accounts_not_found: int = 0
    sources: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No mismatch, and nothing that should have been read went unread."""
        return self.mismatched == 0 and self.unavailable == 0 and self.invalid == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for ``--json`` and drill reports."""
        return {
            "agents": self.agents,
            "checked": self.checked,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "unavailable": self.unavailable,
            "skipped": self.skipped,
            "invalid": self.invalid,
            "accountsNotFound": self.accounts_not_found,
            "sources": list(self.sources),
            "mismatches": [m.to_dict() for m in self.mismatches],
        }


class _Pending:
    """Entries waiting for their batch: queries and expected amounts, per source."""

    def __init__(self, sources: Sequence[BalanceSource]) -> None:
        self.queries: list[list[BalanceQuery]] = [[] for _ in sources]
        self.expected: list[list[int]] = [[] for _ in sources]
        self.size = 0

    def add(self, slot: int, query: BalanceQuery, expected: int) -> None:
        self.queries[slot].append(query)
        self.expected[slot].append(expected)
        self.size += 1


def live_records(
    rows: Iterable[tuple[int, str, int, bytes | None]],
) -> Iterator[Record]:
    """Decode the journal's ``iter_by_tree_key()`` rows, skipping tombstones.

    Raises:
        IntegrityError: a stored record does not decode.
    """
    for _tree_key, agent_id, lsn, record_bytes in rows:
        if record_bytes is None:
            continue
        try:
            yield decode_record(record_bytes)
        except ValueError as exc:
            raise IntegrityError(
                f"journal record of agent {agent_id!r} (LSN {lsn}) does not decode",
                agent_id=agent_id,
                lsn=lsn,
            ) from exc


class TreeKeyRows(Protocol):
    """A journal or one of its read views: what reconciliation reads from."""

    def iter_by_tree_key(self) -> Iterator[tuple[int, str, int, bytes | None]]:
        """Every agent's row: (tree key, agentId, LSN, record bytes or None)."""
        ...


def reconcile_view(
    view: TreeKeyRows, sources: Sequence[BalanceSource], **options: Any
) -> ReconcileSummary:
    """Reconcile every live record of a journal view (see :func:`reconcile`)."""
    return reconcile(live_records(view.iter_by_tree_key()), sources, **options)


def reconcile(
    records: Iterable[Record],
    sources: Sequence[BalanceSource],
    *,
    batch_size: int = 2000,
    keep_mismatches: int = 100,
) -> ReconcileSummary:
    """Compare every balance entry of ``records`` with the sources, as integers.

    For each chain the first source in ``sources`` that serves it is used.
    Mismatches are logged one by one; the first ``keep_mismatches`` are also
    kept in the summary.

    Raises:
        BalanceSourceError: a source could not be reached or read.
    """
    if not sources:
        raise MisuseError("reconciliation needs at least one balance source")
    route: dict[str, int] = {}
    for slot, source in enumerate(sources):
        for chain in source.chains:
            route.setdefault(chain, slot)
    summary = ReconcileSummary(sources=[s.name for s in sources])
    pending = _Pending(sources)
    for record in records:
        summary.agents += 1
        _collect(record, route, pending, summary)
        if pending.size >= batch_size:
            _flush(pending, sources, summary, keep_mismatches)
            pending = _Pending(sources)
    _flush(pending, sources, summary, keep_mismatches)
    _log_summary(summary)
    return summary


def _collect(
    record: Record, route: dict[str, int], pending: _Pending, summary: ReconcileSummary
) -> None:
    """Queue one record's balance entries for lookup."""
    wallet = record.wallet if isinstance(record.wallet, dict) else {}
    entries = record.balances if isinstance(record.balances, list) else ()
    for entry in entries:
        if not isinstance(entry, dict):
            summary.skipped += 1
            continue
        chain, token = entry.get("chain"), entry.get("token")
        if not isinstance(chain, str) or not isinstance(token, str):
            summary.skipped += 1
            continue
        slot = route.get(chain)
        address = wallet.get(ADDRESS_FIELD.get(chain, ""))
        if slot is None or not isinstance(address, str):
            summary.skipped += 1
            continue
        expected = parse_amount(entry.get("balance"))
        if expected is None:
            summary.invalid += 1
            log.warning(
                "balance of agent %r (%s %s) in the vault is not a decimal integer",
                record.agent_id,
                chain,
                token,
                extra={"event": "balance.invalid", "agentId": record.agent_id},
            )
            continue
        pending.add(
            slot, BalanceQuery(record.agent_id, chain, token, address), expected
        )


def _flush(
    pending: _Pending,
    sources: Sequence[BalanceSource],
    summary: ReconcileSummary,
    keep: int,
) -> None:
    """Ask each source for its queued entries and compare the answers."""
    for source, queries, expected in zip(
        sources, pending.queries, pending.expected, strict=True
    ):
        if not queries:
            continue
        lookups = source.fetch(queries)
        if len(lookups) != len(queries):
            raise IntegrityError(
                f"balance source {source.name} answered {len(lookups)} of "
                f"{len(queries)} queries"
            )
        _compare(queries, expected, lookups, summary, keep)


def _compare(
    queries: list[BalanceQuery],
    expected: list[int],
    lookups: list[Lookup],
    summary: ReconcileSummary,
    keep: int,
) -> None:
    for query, want, (actual, note) in zip(queries, expected, lookups, strict=True):
        if note == NOT_FOUND_NOTE:
            summary.accounts_not_found += 1
        if actual is None:
            summary.unavailable += 1
            log.debug(
                "balance of agent %r (%s %s) unavailable: %s",
                query.agent_id,
                query.chain,
                query.token,
                note,
                extra={"event": "balance.unavailable", "agentId": query.agent_id},
            )
            continue
        summary.checked += 1
        if actual == want:
            summary.matched += 1
            continue
        summary.mismatched += 1
        _log_mismatch(query, want, actual)
        if len(summary.mismatches) < keep:
            summary.mismatches.append(
                Mismatch(query.agent_id, query.chain, query.token, want, actual)
            )


def _log_mismatch(query: BalanceQuery, expected: int, actual: int) -> None:
    log.warning(
        MISMATCH_MESSAGE,
        extra={
            "event": "balance.mismatch",
            "agentId": query.agent_id,
            "chain": query.chain,
            "token": query.token,
            "expected": str(expected),
            "actual": str(actual),
        },
    )


def _log_summary(summary: ReconcileSummary) -> None:
    log.info(
        "reconciled %d balances of %d agents: %d matched, %d mismatched, "
        "%d unavailable, %d skipped, %d invalid",
        summary.checked,
        summary.agents,
        summary.matched,
        summary.mismatched,
        summary.unavailable,
        summary.skipped,
        summary.invalid,
        extra={
            "event": "balance.summary",
            **{k: v for k, v in summary.to_dict().items() if k != "mismatches"},
        },
    )
