"""The disaster-recovery drill: the quarterly exercise in one call.

In a scratch directory: create a vault with a fresh seed and ``agents``
generated agents whose addresses really derive from it; take a full backup;
change a slice of the fleet (balance moves, suspensions, reactivations,
archivals, metadata edits, new agents); take an incremental; then, as a fresh
machine holding only the repository and the password would, open the
repository with a new cache, restore the latest snapshot, and compare the
restored vault with the source: state digest, every record field by field
(wallets, lifecycle records, balances), lifecycle counts, and every address
re-derived from the seed. Each step is timed for the report.

The drill's password is generated and never shown; the scratch directory is
removed afterwards unless ``keep`` is set.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultstore.balances import JsonFileSource
from vaultstore.crypto.derive import WalletDeriver
from vaultstore.crypto.seed import generate_mnemonic, mnemonic_to_seed
from vaultstore.journal import Event, Journal
from vaultstore.model import decode_record
from vaultstore.ops.backup import init_repository, run_backup
from vaultstore.ops.restore import restore
from vaultstore.reconcile import reconcile_view
from vaultstore.repo.repository import Repository
from vaultstore.store.local import LocalStore
from vaultstore.vault import Vault

log = logging.getLogger(__name__)

ERC20_TOKENS = (
    "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
    "0xdAC17F958D2ee523a2206206994597C13D831ec7",
)
START_MS = 1_790_000_000_000
CHANGED_SHARE = 0.05


@dataclass
class DrillReport:
    """What the drill did and found."""

    agents: int
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    restored_agents: int = 0
    wallets_verified: int = 0
    digest_match: bool = False
    mismatches: dict[str, int] = field(default_factory=dict)
    states_source: dict[str, int] = field(default_factory=dict)
    states_restored: dict[str, int] = field(default_factory=dict)
    balances: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    workdir: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.digest_match
            and not any(self.mismatches.values())
            and self.states_source == self.states_restored
            and self.restored_agents > 0
            and self.balances.get("mismatched") == 0
            and self.balances.get("checked", 0) > 0
        )

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["ok"] = self.ok
        return data

    def as_text(self) -> str:
        lines = [
            f"disaster-recovery drill: {'PASSED' if self.ok else 'FAILED'}",
            f"  agents generated:  {self.agents}",
            f"  agents restored:   {self.restored_agents}",
            f"  wallets verified:  {self.wallets_verified} (re-derived from the seed)",
            f"  state digest:      {'equal' if self.digest_match else 'DIFFERENT'}",
            "  lifecycle states:  "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.states_restored.items())),
            "  mismatches:        "
            + ", ".join(f"{k} {v}" for k, v in self.mismatches.items()),
            f"  balances:          {self.balances.get('checked', 0)} checked, "
            f"{self.balances.get('matched', 0)} matched, "
            f"{self.balances.get('mismatched', 0)} mismatched",
            "  snapshots:",
        ]
        for snap in self.snapshots:
            lines.append(
                f"    {snap['type']:<11} seq {snap['seq']:<3} "
                f"agents {snap['agents']:<8}"
                f" records added {snap['records_added']:<8} bytes {snap['bytes_added']}"
            )
        lines.append("  timings:")
        lines += [
            f"    {step:<22} {secs:8.3f} s" for step, secs in self.timings.items()
        ]
        if self.workdir:
            lines.append(f"  scratch kept at {self.workdir}")
        return "\n".join(lines)


def run_drill(
    agents: int,
    *,
    workdir: Path | None = None,
    keep: bool = False,
    kdf_profile: str = "production",
    cpu_count: int = 1,
) -> DrillReport:
    """Run the whole drill in a scratch directory; see the module docstring."""
    scratch = Path(tempfile.mkdtemp(prefix="vaultstore-drill-", dir=workdir))
    report = DrillReport(agents=agents, workdir=str(scratch) if keep else None)
    try:
        _drill(scratch, agents, kdf_profile, report)
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    log.info(
        "drill finished: %s",
        "passed" if report.ok else "failed",
        extra={"event": "drill.done", "ok": report.ok, "agents": agents},
    )
    return report


def _drill(scratch: Path, agents: int, profile: str, report: DrillReport) -> None:
    timed = _timer(report.timings)
    password = _drill_password()
    mnemonic = generate_mnemonic(24)
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(mnemonic))
    rng = random.Random(agents)

    vault = timed(
        "create vault",
        lambda: Vault.create(scratch / "source-vault", password, mnemonic, profile),
    )
    try:
        timed(
            "generate + ingest",
            lambda: _append(vault.journal, _fleet_events(deriver, range(agents), rng)),
        )
        store = LocalStore(scratch / "repository")
        repo = timed("init repository", lambda: init_repository(vault, store, password))
        full = timed("backup full", lambda: run_backup(vault, repo, "full"))
        timed(
            "change fleet",
            lambda: _append(
                vault.journal, _change_events(vault.journal, deriver, agents, rng)
            ),
        )
        incr = timed(
            "backup incremental", lambda: run_backup(vault, repo, "incremental")
        )
        report.snapshots = [full.as_dict(), incr.as_dict()]
        source_digest = vault.journal.state_digest()
        report.states_source = dict(vault.journal.counts()["byState"])

        # A fresh machine: only the repository and the password.
        fresh = timed(
            "open repository",
            lambda: Repository.open(
                LocalStore(scratch / "repository"),
                password,
                scratch / "fresh-cache",
                profile,
            ),
        )
        target = scratch / "restored-vault"
        restored = timed(
            "restore",
            lambda: restore(
                fresh,
                "latest",
                target,
                password,
                verify_addresses="all",
                kdf_profile=profile,
            ),
        )
        report.restored_agents = restored.agents
        report.wallets_verified = restored.wallets_verified
        with Journal.open(target) as copy:
            report.digest_match = copy.state_digest() == source_digest
            report.states_restored = dict(copy.counts()["byState"])
            report.mismatches = timed(
                "compare records", lambda: _compare(vault.journal, copy)
            )
            # The chains, as the drill knows them: the source vault's balances.
            chain = _write_chain_balances(vault.journal, scratch / "chain.json")
            summary = timed(
                "reconcile balances",
                lambda: reconcile_view(copy, [JsonFileSource(chain)]),
            )
            report.balances = summary.to_dict()
    finally:
        vault.close()


def _timer(timings: dict[str, float]) -> Callable[[str, Callable[[], Any]], Any]:
    def run(step: str, func: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return func()
        finally:
            timings[step] = round(time.perf_counter() - start, 3)

    return run


def _drill_password() -> str:
    # Satisfies the password rule whatever the random part holds.
    return "Drill-" + secrets.token_urlsafe(24) + "-9aZ!"


def _append(journal: Journal, events: Iterator[Event]) -> None:
    with journal.writer() as writer:
        for event in events:
            writer.add(event)


def _fleet_events(
    deriver: WalletDeriver, indexes: range, rng: random.Random
) -> Iterator[Event]:
    """Wallet, lifecycle and balances events for each new agent."""
    for index in indexes:
        agent_id = f"agent-{index:07d}"
        evm, xrp = deriver.addresses(index)
        created = START_MS + index * 1000
        wallet: dict[str, Any] = {
            "agentId": agent_id,
            "derivationIndex": index,
            "evmAddress": evm,
            "xrpAddress": xrp,
            "createdAt": created,
        }
        if index % 7 == 0:
            wallet["metadata"] = {"team": f"fleet-{index % 13}", "tier": index % 3}
        yield Event("wallet", agent_id, wallet)
        yield Event("lifecycle", agent_id, _lifecycle(agent_id, created, rng))
        yield Event("balances", agent_id, _balances(agent_id, created, rng))


def _lifecycle(agent_id: str, created: int, rng: random.Random) -> dict[str, Any]:
    state = rng.choices(("active", "pending", "suspended", "archived"), (80, 8, 7, 5))[
        0
    ]
    record: dict[str, Any] = {"agentId": agent_id, "state": state, "createdAt": created}
    if state != "pending":
        record["activatedAt"] = created + 60_000
    if state == "suspended":
        record["suspendedAt"] = created + 120_000
        record["suspensionReason"] = "risk review"
    if state == "archived":
        record["archivedAt"] = created + 180_000
    record["totalTransactions"] = rng.randrange(0, 5000)
    record["totalVolume"] = {"ETH": str(rng.randrange(10**15, 10**21))}
    return record


def _balances(agent_id: str, when: int, rng: random.Random) -> list[dict[str, Any]]:
    entries = [_entry(agent_id, "evm", "ETH", rng.randrange(10**24), when)]
    for token in ERC20_TOKENS[: rng.randrange(len(ERC20_TOKENS) + 1)]:
        entries.append(_entry(agent_id, "evm", token, rng.randrange(10**22), when))
    entries.append(_entry(agent_id, "xrp", "XRP", rng.randrange(10**12), when))
    return entries


def _entry(
    agent_id: str, chain: str, token: str, amount: int, when: int
) -> dict[str, Any]:
    return {
        "agentId": agent_id,
        "chain": chain,
        "token": token,
        "balance": str(amount),
        "lastUpdated": when,
    }


def _change_events(
    journal: Journal, deriver: WalletDeriver, agents: int, rng: random.Random
) -> Iterator[Event]:
    """Changes to a slice of the fleet: every kind the legacy system missed."""
    now = START_MS + agents * 1000 + 86_400_000
    picked = rng.sample(range(agents), max(1, int(agents * CHANGED_SHARE)))
    for index in picked:
        agent_id = f"agent-{index:07d}"
        record = journal.get(agent_id)
        if record is None or record.lifecycle is None or record.wallet is None:
            continue
        life = dict(record.lifecycle)
        state = life["state"]
        if state == "suspended":  # reactivation drops the suspension fields
            life.pop("suspendedAt", None)
            life.pop("suspensionReason", None)
            life["state"] = "active"
        elif state == "active" and index % 3 == 0:
            life["state"] = "archived"
            life["archivedAt"] = now
        elif state == "active" and index % 3 == 1:
            life.update(state="suspended", suspendedAt=now, suspensionReason="drill")
        elif state == "pending":
            life.update(state="active", activatedAt=now)
        life["totalTransactions"] = int(life.get("totalTransactions", 0)) + 1
        life["lastActivity"] = now
        yield Event("lifecycle", agent_id, life)
        if index % 2 == 0:
            wallet = dict(record.wallet)
            wallet["metadata"] = {"edited": now, "note": "drill ✓"}
            yield Event("wallet", agent_id, wallet)
        yield Event("balances", agent_id, _balances(agent_id, now, rng))
    newcomers = range(agents, agents + max(1, agents // 50))
    yield from _fleet_events(deriver, newcomers, rng)


def _write_chain_balances(journal: Journal, path: Path) -> Path:
    """The source vault's balances as a balance-source file (agentId → entries)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("{")
        first = True
        for _key, agent_id, data in _live(journal):
            balances = decode_record(data).balances or []
            out.write(("" if first else ",") + json.dumps(agent_id) + ":")
            out.write(json.dumps(balances))
            first = False
        out.write("}")
    return path


def _compare(source: Journal, copy: Journal) -> dict[str, int]:
    """Field-by-field differences between two journals, streamed in tree order."""
    diffs = {"missing": 0, "extra": 0, "wallet": 0, "lifecycle": 0, "balances": 0}
    left = _live(source)
    right = _live(copy)
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[:2] < b[:2]):
            diffs["missing"] += 1
            a = next(left, None)
        elif a is None or b[:2] < a[:2]:
            diffs["extra"] += 1
            b = next(right, None)
        else:
            if a[2] != b[2]:
                ra, rb = decode_record(a[2]), decode_record(b[2])
                diffs["wallet"] += ra.wallet != rb.wallet
                diffs["lifecycle"] += ra.lifecycle != rb.lifecycle
                diffs["balances"] += ra.balances != rb.balances
            a, b = next(left, None), next(right, None)
    return diffs


def _live(journal: Journal) -> Iterator[tuple[int, str, bytes]]:
    for key, agent_id, _lsn, data in journal.iter_by_tree_key():
        if data is not None:
            yield key, agent_id, data
