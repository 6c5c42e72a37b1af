"""A simulated year: daily incrementals, weekly fulls, then forget and prune.

The clock is injected (``run_backup(now_ms=...)``); a small fleet changes a
few agents a day. After ``forget`` with the default policy and ``prune``, the
snapshots left are exactly the ones the policy keeps (worked out here
independently of ``vaultstore.retention``), and every one of them restores to
the state digest the journal had when it was taken.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from repo_fakejournal import DictStore, state_digest_of  # noqa: E402

from vaultstore.cli.admin_cmds import snapshot_info  # noqa: E402
from vaultstore.crypto.derive import WalletDeriver  # noqa: E402
from vaultstore.crypto.seed import mnemonic_to_seed  # noqa: E402
from vaultstore.journal import Event  # noqa: E402
from vaultstore.ops.backup import init_repository, run_backup  # noqa: E402
from vaultstore.ops.drill import _balances, _fleet_events  # noqa: E402
from vaultstore.ops.prune import prune  # noqa: E402
from vaultstore.repo.manifest import manifest_name  # noqa: E402
from vaultstore.repo.repository import Repository  # noqa: E402
from vaultstore.retention import DEFAULT_POLICY, apply, plan  # noqa: E402
from vaultstore.vault import Vault  # noqa: E402

PASSWORD = "Year-Long-Passw0rd!"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
FLEET = 24
START = datetime(2026, 1, 4, tzinfo=UTC)  # a Sunday: the first backup is a full


@dataclass(frozen=True)
class Taken:
    seq: int
    kind: str
    time: datetime
    parent_seq: int | None
    digest: bytes  # the journal's state digest when the snapshot was taken


@dataclass
class Year:
    vault: Vault
    store: DictStore
    repo: Repository
    taken: list[Taken]


def simulate(root: Path, days: int) -> Iterator[Year]:
    vault = Vault.create(root / "vault", PASSWORD, MNEMONIC, "test")
    store = DictStore()
    repo = init_repository(vault, store, PASSWORD)
    rng = random.Random(2026)
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
    vault.journal.append(list(_fleet_events(deriver, range(FLEET), rng)))
    taken: list[Taken] = []
    for day in range(days):
        when = START + timedelta(days=day)
        if day:
            agents = rng.sample(range(FLEET), 3)
            events = [
                Event("balances", f"agent-{a:07d}", _balances(f"agent-{a:07d}", 0, rng))
                for a in agents
            ]
            vault.journal.append(events)
        kind = "full" if when.weekday() == 6 else "incremental"
        result = run_backup(vault, repo, kind, now_ms=int(when.timestamp() * 1000))
        parent = taken[-1].seq if kind == "incremental" else None
        taken.append(
            Taken(result.seq, kind, when, parent, vault.journal.state_digest())
        )
    try:
        yield Year(vault, store, repo, taken)
    finally:
        vault.close()


def expected_keep(taken: list[Taken]) -> set[int]:
    """The default policy by hand: 52 weekly fulls, incrementals of 30 days."""
    fulls = [t for t in taken if t.kind == "full"]
    keep = {t.seq for t in fulls[-52:]}  # one full per ISO week
    incrementals = [t for t in taken if t.kind == "incremental"]
    cutoff = incrementals[-1].time - timedelta(days=30)
    by_seq = {t.seq: t for t in taken}
    for inc in incrementals:
        if inc.time >= cutoff:
            cur: Taken | None = inc
            while cur is not None:  # its chain back to its full
                keep.add(cur.seq)
                cur = by_seq[cur.parent_seq] if cur.parent_seq else None
    keep.add(taken[-1].seq)
    return keep


def forget_and_prune(year: Year) -> tuple[set[int], dict[str, object]]:
    infos = [snapshot_info(m) for m in year.repo.snapshots()]
    now = year.taken[-1].time + timedelta(hours=1)
    decided = plan(infos, DEFAULT_POLICY, now=now)
    apply(decided, lambda s: year.store.delete(manifest_name(s.seq)))
    result = prune(year.repo).as_dict()
    return {d.snapshot.seq for d in decided.keep}, result


def check_year(year: Year) -> None:
    kept_by_policy, result = forget_and_prune(year)
    expected = expected_keep(year.taken)
    remaining = {m.seq for m in year.repo.snapshots()}
    assert remaining == kept_by_policy == expected
    assert len(remaining) < len(year.taken)
    assert result["packs_deleted"] > 0 and result["bytes_freed"] > 0
    reopened = Repository.open(year.store, PASSWORD, None, "test")
    report = reopened.check(read_data=True)
    assert report.ok, report.as_dict()
    by_seq = {t.seq: t for t in year.taken}
    for m in reopened.snapshots():
        digest = state_digest_of(reopened.iter_state(m))
        assert digest == m.digest_after == by_seq[m.seq].digest, m.seq
    # Backups carry on after the prune, and a second prune is a no-op.
    last = year.taken[-1]
    for day in (1, 2):
        when = last.time + timedelta(days=day)
        kind = "full" if when.weekday() == 6 else "incremental"
        run_backup(year.vault, year.repo, kind, now_ms=int(when.timestamp() * 1000))
    newest = year.repo.latest()
    assert newest is not None
    assert state_digest_of(year.repo.iter_state(newest)) == (
        year.vault.journal.state_digest()
    )
    again = prune(year.repo)
    assert again.packs_deleted == 0


def test_120_days_of_backups_forget_and_prune(tmp_path: Path) -> None:
    for year in simulate(tmp_path, 120):
        check_year(year)


@pytest.mark.slow
def test_a_year_of_backups_forget_and_prune(tmp_path: Path) -> None:
    for year in simulate(tmp_path, 365):
        check_year(year)
