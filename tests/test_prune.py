"""prune: mark, sweep and repack are safe; crashes at each point heal; locks hold."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from repo_fakejournal import DictStore, FakeJournal, state_digest_of  # noqa: E402

from vaultstore import faults  # noqa: E402
from vaultstore.crypto.derive import WalletDeriver  # noqa: E402
from vaultstore.crypto.seed import mnemonic_to_seed  # noqa: E402
from vaultstore.errors import IntegrityError, LockedError, MisuseError  # noqa: E402
from vaultstore.journal import Event  # noqa: E402
from vaultstore.locks import EXCLUSIVE, RepositoryLock  # noqa: E402
from vaultstore.ops.backup import init_repository, run_backup  # noqa: E402
from vaultstore.ops.drill import _balances, _fleet_events  # noqa: E402
from vaultstore.ops.prune import prune  # noqa: E402
from vaultstore.repo.manifest import manifest_name  # noqa: E402
from vaultstore.repo.objects import BATCH, CHANGES, LEAF, ROOT  # noqa: E402
from vaultstore.repo.prune import mark_live  # noqa: E402
from vaultstore.repo.repository import Repository  # noqa: E402
from vaultstore.store.local import LocalStore  # noqa: E402
from vaultstore.vault import Vault  # noqa: E402

PASSWORD = "Prune-Test-Passw0rd!"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
VAULTSTORE = [sys.executable, "-m", "vaultstore.cli.main"]


class Crash(BaseException):
    """Stands in for kill -9: nothing after the fault point runs."""


def open_repo(store: DictStore, cache: Path | None) -> Repository:
    return Repository.open(
        store, PASSWORD, cache, "test", pack_size=2048, batch_records=9
    )


def build(cache: Path | None) -> tuple[DictStore, FakeJournal]:
    """Three weeks of fulls and incrementals over 150 agents, tiny packs."""
    store, journal = DictStore(), FakeJournal()
    for n in range(150):
        journal.put(f"agent-{n}", n)
    repo = Repository.init(
        store, PASSWORD, "test", cache, pack_size=2048, batch_records=9
    )
    t = 1
    for week in range(3):
        repo.backup(journal, "full", {}, "h", t)
        t += 1
        for day in range(3):
            # The same agents all week: day 1 and 2 records die on day 3.
            for n in range(week, 150, 5):
                journal.put(f"agent-{n}", 1000 * week + 100 * day + n)
            journal.remove(f"agent-{week * 40 + day}")
            repo.backup(journal, "incremental", {}, "h", t)
            t += 1
    return store, journal


def forget(store: DictStore, keep_from: int) -> None:
    """Delete every manifest below sequence ``keep_from`` (a whole week's chain)."""
    for name in list(store.list("snapshots/")):
        if int(name.rsplit("/", 1)[1]) < keep_from:
            store.delete(name)


def assert_all_restore(repo: Repository) -> None:
    report = repo.check(read_data=True)
    assert report.ok, report.as_dict()
    assert not [w for w in report.warnings if "stored twice" in w], report.warnings
    for m in repo.snapshots():
        assert state_digest_of(repo.iter_state(m)) == m.digest_after, m.seq


def pack_names(store: DictStore) -> set[str]:
    return set(store.list("data/"))


def test_prune_after_forget_deletes_unreferenced_packs(tmp_path: Path) -> None:
    store, _ = build(tmp_path / "cache")
    forget(store, keep_from=5)  # weeks 2 and 3 stay: seq 5..12
    before = pack_names(store)
    repo = open_repo(store, tmp_path / "cache")
    result = prune(repo, repack_threshold=0.0)
    assert result.packs_deleted > 0 and result.packs_repacked == 0
    assert result.bytes_freed > 0 and result.objects_removed > 0
    after = pack_names(store)
    assert after < before and len(before - after) == result.packs_deleted
    assert result.snapshots == 8
    assert_all_restore(open_repo(store, tmp_path / "cache"))
    # Nothing live was dropped: every live object is indexed and opens.
    fresh = open_repo(store, tmp_path / "other-cache")
    live = mark_live(fresh, fresh.snapshots())
    assert len(live) == result.live_objects
    for oid in live:
        loc = fresh.index.lookup(oid)
        assert loc is not None
        fresh.read_object(loc[1], oid)
    # A second run finds nothing more to do.
    again = prune(open_repo(store, tmp_path / "cache"), repack_threshold=0.0)
    assert again.packs_deleted == 0 and again.bytes_freed == 0


def test_dry_run_changes_nothing_and_predicts_the_deletions(tmp_path: Path) -> None:
    store, _ = build(None)
    forget(store, keep_from=9)
    snapshot = dict(store.data)
    dry = prune(open_repo(store, None), dry_run=True)
    assert store.data == snapshot
    assert dry.dry_run and dry.packs_deleted > 0
    real = prune(open_repo(store, None))
    assert (real.packs_deleted, real.packs_repacked) == (
        dry.packs_deleted,
        dry.packs_repacked,
    )
    assert real.objects_kept == dry.objects_kept


def test_repack_copies_live_objects_and_drops_the_dead(tmp_path: Path) -> None:
    store, _ = build(tmp_path / "cache")
    forget(store, keep_from=9)  # only the last week: most packs partly dead
    repo = open_repo(store, tmp_path / "cache")
    live = mark_live(repo, repo.snapshots())
    result = prune(repo, repack_threshold=0.99)
    assert result.packs_repacked > 0 and result.packs_written > 0
    assert result.objects_kept == len(live)
    fresh = open_repo(store, tmp_path / "cache-2")
    kinds = {BATCH, LEAF, ROOT, CHANGES}
    stored = 0
    for oid in live:
        loc = fresh.index.lookup(oid)
        assert loc is not None and loc[1] in kinds
        fresh.read_object(loc[1], oid)
        stored += 1
    assert stored == len(live) == len(fresh.index)  # nothing dead is left
    assert_all_restore(fresh)
    # Repacked packs are wholly live: a rerun at the same threshold converges.
    again = prune(fresh, repack_threshold=0.99)
    assert (again.packs_deleted, again.packs_repacked, again.bytes_freed) == (0, 0, 0)


def test_bad_threshold_is_refused(tmp_path: Path) -> None:
    store, _ = build(None)
    with pytest.raises(MisuseError):
        prune(open_repo(store, None), repack_threshold=1.5)
    assert not any(n.startswith("locks/") for n in store.data)


def _points(store: DictStore, cache: Path) -> list[str]:
    probe = DictStore()
    probe.data = dict(store.data)
    faults.recording = True
    faults.seen.clear()
    try:
        prune(open_repo(probe, cache), repack_threshold=0.9)
    finally:
        faults.recording = False
    return list(faults.seen)


@pytest.mark.reliability(1)
def test_crash_at_every_prune_point_leaves_a_clean_repository(tmp_path: Path) -> None:
    store, _ = build(tmp_path / "cache")
    forget(store, keep_from=9)
    original = dict(store.data)
    points = _points(store, tmp_path / "probe-cache")
    assert "prune.after-pack-written" in points
    assert "prune.before-pack-delete" in points
    for number in range(1, len(points) + 1):
        store.data = dict(original)
        cache = tmp_path / f"cache-{number}"
        count = [0]

        def hook(name: str, count: list[int] = count, limit: int = number) -> None:
            count[0] += 1
            if count[0] == limit:
                raise Crash(name)

        faults.set_hook(hook)
        with pytest.raises(Crash):
            prune(open_repo(store, cache), repack_threshold=0.9)
        faults.set_hook(None)
        # The dead process's lock is stale (its pid is this live test, so break
        # it the way `vaultstore unlock --force` would after checking).
        store.delete(EXCLUSIVE)
        survivor = open_repo(store, cache)  # the stale index cache is reused
        report = survivor.check(read_data=True)
        assert report.ok, (number, points[number - 1], report.as_dict())
        for m in survivor.snapshots():
            assert state_digest_of(survivor.iter_state(m)) == m.digest_after
        rerun = prune(survivor, repack_threshold=0.9)
        assert rerun.missing_objects == 0
        assert_all_restore(open_repo(store, cache))


def test_prune_refuses_while_a_backup_holds_the_shared_lock(tmp_path: Path) -> None:
    store, _ = build(None)
    forget(store, keep_from=9)
    before = dict(store.data)
    with RepositoryLock(store, "backup --incremental", exclusive=False):
        with pytest.raises(LockedError) as caught:
            prune(open_repo(store, None))
    assert "backup" in caught.value.message
    assert {n: d for n, d in store.data.items() if not n.startswith("locks/")} == {
        n: d for n, d in before.items() if not n.startswith("locks/")
    }
    assert not any(n.startswith("locks/") for n in store.data)
    assert prune(open_repo(store, None)).packs_deleted > 0


# -- with a real vault ---------------------------------------------------------


class Source:
    """A vault with a small fleet and a local repository (Python API)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.vault_dir = root / "vault"
        self.repo_dir = root / "repo"
        self.vault = Vault.create(self.vault_dir, PASSWORD, MNEMONIC, "test")
        self.store = LocalStore(self.repo_dir)
        self.repo = init_repository(self.vault, self.store, PASSWORD)
        self.deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
        self.rng = random.Random(5)
        self.vault.journal.append(
            list(_fleet_events(self.deriver, range(40), self.rng))
        )

    def change(self, day: int) -> None:
        agents = [f"agent-{(day * 7 + k) % 40:07d}" for k in range(3)]
        self.vault.journal.append(
            [Event("balances", a, _balances(a, day, self.rng)) for a in agents]
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTSTORE_")}
        env.update(
            VAULTSTORE_TESTING="1",
            VAULTSTORE_PASSWORD=PASSWORD,
            VAULTSTORE_REPOSITORY=str(self.repo_dir),
            VAULTSTORE_VAULT=str(self.vault_dir),
        )
        return env


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    src = Source(tmp_path)
    t = 1_800_000_000_000
    for week in range(3):
        run_backup(src.vault, src.repo, "full", now_ms=t)
        for _day in range(2):
            t += 86_400_000
            src.change(week)  # the same agents: day 1's records die on day 2
            run_backup(src.vault, src.repo, "incremental", now_ms=t)
        t += 86_400_000
    # Forget the first week (its chain is seq 1..3).
    for seq in (3, 2, 1):
        src.store.delete(manifest_name(seq))
    yield src
    src.vault.close()


def test_a_backup_during_prune_exits_locked_and_writes_nothing(
    source: Source,
) -> None:
    seqs = sorted(source.store.list("snapshots/"))
    packs = sorted(source.store.list("data/"))
    source.change(99)
    with RepositoryLock(source.store, "prune"):
        with pytest.raises(LockedError) as caught:
            run_backup(source.vault, source.repo, "incremental")
    assert caught.value.exit_code == 5 and "prune" in caught.value.message
    assert sorted(source.store.list("snapshots/")) == seqs
    assert sorted(source.store.list("data/")) == packs
    assert list(source.store.list("locks/")) == []
    # Afterwards the backup goes through.
    run_backup(source.vault, source.repo, "incremental")


def test_backup_after_prune_does_not_reuse_pruned_objects(source: Source) -> None:
    # The backup's repository was opened (index loaded) before the prune ran.
    pruner = Repository.open(source.store, PASSWORD, None, "test")
    assert prune(pruner).packs_deleted > 0
    source.change(50)
    run_backup(source.vault, source.repo, "full")
    checked = Repository.open(source.store, PASSWORD, None, "test")
    assert checked.check(read_data=True).ok
    latest = checked.latest()
    assert latest is not None
    assert state_digest_of(checked.iter_state(latest)) == (
        source.vault.journal.state_digest()
    )


def run_cli(src: Source, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VAULTSTORE, *args], env=src.env(), capture_output=True, text=True, timeout=120
    )


@pytest.mark.reliability(20)
def test_prune_and_backup_processes_run_concurrently(source: Source) -> None:
    source.vault.close()
    outcomes: list[tuple[int, int]] = []
    for _ in range(3):
        backup = subprocess.Popen(
            [*VAULTSTORE, "backup", "--incremental"],
            env=source.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pruning = subprocess.Popen(
            [*VAULTSTORE, "prune", "--repack-threshold", "0.9", "--json"],
            env=source.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        b_out, b_err = backup.communicate(timeout=120)
        p_out, p_err = pruning.communicate(timeout=120)
        assert backup.returncode in (0, 5), b_err
        assert pruning.returncode in (0, 5), p_err
        if backup.returncode == 5 or pruning.returncode == 5:
            assert "locked" in (b_err + p_err)
        outcomes.append((backup.returncode, pruning.returncode))
    checked = run_cli(source, "check", "--read-data", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    source.vault = Vault.open(source.vault_dir, "test")
    repo = Repository.open(source.store, PASSWORD, None, "test")
    for m in repo.snapshots():
        assert state_digest_of(repo.iter_state(m)) == m.digest_after
    assert list(source.store.list("locks/")) == []


@pytest.mark.reliability(1)
@pytest.mark.parametrize(
    "point",
    [
        "prune.after-pack-written:1",
        "prune.before-pack-delete:2",
    ],
)
def test_kill_9_during_cli_prune_then_rerun(source: Source, point: str) -> None:
    source.vault.close()
    env = source.env()
    env["VAULTSTORE_FAULT_POINT"] = point
    killed = subprocess.run(
        [*VAULTSTORE, "prune", "--repack-threshold", "0.9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    assert list(source.store.list("locks/")) == [EXCLUSIVE]  # left by the dead
    checked = run_cli(source, "check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rerun = run_cli(source, "prune", "--json")  # breaks the dead process's lock
    assert rerun.returncode == 0, rerun.stderr
    checked = run_cli(source, "check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "stored twice" not in checked.stdout
    repo = Repository.open(source.store, PASSWORD, source.vault_dir / "cache", "test")
    for m in repo.snapshots():
        assert state_digest_of(repo.iter_state(m)) == m.digest_after


def test_cli_dry_run_reports_and_changes_nothing(source: Source) -> None:
    source.vault.close()
    packs = sorted(source.store.list("data/"))
    dry = run_cli(source, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would free" in dry.stdout and "deleted" in dry.stdout
    assert sorted(source.store.list("data/")) == packs
    bad = run_cli(source, "prune", "--repack-threshold", "1.5")
    assert bad.returncode == 2
    done = run_cli(source, "prune", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["packs_deleted"] > 0
    assert sorted(source.store.list("data/")) != packs


def test_prune_refuses_to_empty_a_repository_without_snapshots() -> None:
    store, _ = build(None)
    forget(store, keep_from=100)
    packs = pack_names(store)
    with pytest.raises(MisuseError):
        prune(open_repo(store, None))
    assert pack_names(store) == packs


def test_prune_refuses_a_rolled_back_snapshot_list() -> None:
    store, journal = build(None)
    repo = open_repo(store, None)
    repo.meta = journal
    repo.latest()  # the vault remembers sequence 12
    forget_newest = sorted(store.list("snapshots/"))[-4:]
    saved = {n: store.data[n] for n in forget_newest}
    for name in saved:
        store.delete(name)
    packs = pack_names(store)
    with pytest.raises(IntegrityError):
        prune(repo)
    assert pack_names(store) == packs


@pytest.mark.parametrize("refresher", ["refresh_index", "index.sync"])
def test_refresh_index_survives_a_deleted_pack_whose_objects_live_elsewhere(
    tmp_path: Path, refresher: str
) -> None:
    """A copy in another, already indexed pack must stay findable, through
    ``refresh_index`` (backups, prune) and ``Index.sync`` (every open)."""
    from vaultstore.repo.pack import PackWriter, pack_name, read_toc
    from vaultstore.repo.prune import refresh_index

    store, _ = build(None)
    repo = open_repo(store, tmp_path / "cache")
    first = repo.index.packs[0]
    entries = read_toc(store, repo.codec, first)
    data = store.get(pack_name(first))
    copies: list[bytes] = []
    while not copies or copies[-1] < first:  # the copy sorts after the original
        if copies:
            store.delete(pack_name(copies[-1]))
        writer = PackWriter(
            store, repo.codec, 1 << 20, on_written=lambda p, e, s: copies.append(p)
        )
        for e in entries:
            writer.add(e.kind, e.oid, data[e.offset : e.offset + e.length])
        writer.flush()
    stale = open_repo(store, tmp_path / "cache")  # indexes both; first wins
    assert stale.index.lookup(entries[0].oid)[0] == first  # type: ignore[index]
    store.delete(pack_name(first))  # a prune elsewhere removed the original
    if refresher == "refresh_index":
        refresh_index(stale)
    else:
        stale.index.sync(store, stale.codec)
    for e in entries:
        loc = stale.index.lookup(e.oid)
        assert loc is not None and loc[0] == copies[-1]
        stale.read_object(e.kind, e.oid)
    for m in stale.snapshots():
        assert state_digest_of(stale.iter_state(m)) == m.digest_after


def test_forget_with_prune_frees_space_and_keeps_the_rest_whole(
    source: Source,
) -> None:
    source.vault.close()
    done = run_cli(source, "forget", "--keep-last", "2", "--prune", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["prune"]["packs_deleted"] > 0
    assert report["prune"]["snapshots"] == len(report["keep"])
    checked = run_cli(source, "check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    repo = Repository.open(source.store, PASSWORD, None, "test")
    for m in repo.snapshots():
        assert state_digest_of(repo.iter_state(m)) == m.digest_after
