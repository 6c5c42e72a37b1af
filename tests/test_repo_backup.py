"""Repository round trips: full, incremental, sharing, rollback, index rebuild."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from repo_fakejournal import DictStore, FakeJournal, state_digest_of  # noqa: E402

from vaultstore.errors import IntegrityError, MisuseError, WrongPasswordError
from vaultstore.repo.repository import Repository
from vaultstore.store.local import LocalStore

SEED = {"format": "test-envelope", "salt": "00"}


@pytest.fixture(params=["dict", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "dict":
        return DictStore()
    return LocalStore(tmp_path / "repo")


def make_repo(store: object, tmp_path: Path, **kw: object) -> Repository:
    return Repository.init(
        store,
        "correct horse battery staple 1A!",
        "test",
        tmp_path / "cache",
        pack_size=4096,
        batch_records=7,
        **kw,  # tiny packs and batches
    )


def reopen(store: object, tmp_path: Path, meta: object = None) -> Repository:
    return Repository.open(
        store,
        "correct horse battery staple 1A!",
        tmp_path / "cache",
        "test",
        pack_size=4096,
        batch_records=7,
        meta=meta,
    )


def backup(repo: Repository, j: FakeJournal, kind: str, t: int = 1) -> object:
    return repo.backup(j, kind, SEED, "host-a", t)


def test_full_incremental_full_states_match(store: object, tmp_path: Path) -> None:
    j = FakeJournal()
    for n in range(300):
        j.put(f"agent-{n}", n)
    repo = make_repo(store, tmp_path)
    r1 = backup(repo, j, "full")
    d1 = j.state_digest()
    assert r1.agents == 300 and r1.records_added == 300

    for n in range(0, 300, 50):
        j.put(f"agent-{n}", n + 1000)
    j.remove("agent-7")
    j.put("agent-new", 5)
    r2 = backup(repo, j, "incremental", 2)
    d2 = j.state_digest()
    assert r2.records_added == 7
    assert r2.bytes_added < r1.bytes_added / 5

    j.put("agent-3", 77)
    r3 = backup(repo, j, "full", 3)
    d3 = j.state_digest()
    # Only agent-3 is new to the repository; the incremental's records are reused.
    assert r3.records_added == 1

    repo = reopen(store, tmp_path)
    snaps = repo.snapshots()
    assert [s.type for s in snaps] == ["full", "incremental", "full"]
    for snap, digest in zip(snaps, (d1, d2, d3), strict=True):
        chain = repo.resolve(str(snap.seq))
        assert chain[-1].id == snap.id
        assert state_digest_of(repo.iter_state(snap)) == digest == snap.digest_after
    changes = dict(repo.iter_changes(snaps[1]))
    assert changes["agent-7"] is None and changes["agent-new"] is not None
    assert len(changes) == 8
    assert [m.seq for m in repo.resolve("latest")] == [3]
    assert [m.seq for m in repo.resolve(str(snaps[1].id[:12]))] == [1, 2]
    assert repo.check(read_data=True).ok


def test_full_after_one_change_shares_the_tree(tmp_path: Path) -> None:
    store = DictStore()
    j = FakeJournal()
    for n in range(2000):
        j.put(f"agent-{n}", n)
    repo = make_repo(store, tmp_path)
    first = backup(repo, j, "full")
    j.put("agent-42", 1)
    second = backup(repo, j, "full", 2)
    # one batch (one record), one leaf, the root: far fewer than the first
    assert second.records_added == 1
    assert second.objects_added == 3
    assert second.bytes_added < first.bytes_added / 5
    assert state_digest_of(repo.iter_state(repo.resolve()[-1])) == j.state_digest()


def test_incremental_needs_a_full(tmp_path: Path) -> None:
    repo = make_repo(DictStore(), tmp_path)
    with pytest.raises(MisuseError):
        backup(repo, FakeJournal(), "incremental")


def test_wrong_password_refused(tmp_path: Path) -> None:
    store = DictStore()
    make_repo(store, tmp_path)
    with pytest.raises(WrongPasswordError):
        Repository.open(store, "wrong password 1A!xx", tmp_path / "cache", "test")


def test_replayed_old_manifest_is_refused(tmp_path: Path) -> None:
    store = DictStore()
    j = FakeJournal()
    j.put("a", 1)
    repo = make_repo(store, tmp_path, meta=j)
    backup(repo, j, "full")
    j.put("b", 2)
    backup(repo, j, "incremental", 2)
    # An attacker deletes the newest manifest, presenting the old one as latest.
    del store.data["snapshots/0000000002"]
    repo = reopen(store, tmp_path, meta=j)
    with pytest.raises(IntegrityError, match="rolled back"):
        repo.resolve("latest")
    with pytest.raises(IntegrityError):
        backup(repo, j, "incremental", 3)
    assert not repo.check().ok


def test_index_deleted_or_damaged_is_rebuilt(tmp_path: Path) -> None:
    store = DictStore()
    j = FakeJournal()
    for n in range(100):
        j.put(f"agent-{n}", n)
    repo = make_repo(store, tmp_path)
    backup(repo, j, "full")
    index = tmp_path / "cache" / repo.id / "index"
    assert index.exists() and (index.stat().st_mode & 0o777) == 0o600
    index.unlink()
    repo = reopen(store, tmp_path)
    assert index.exists()
    assert state_digest_of(repo.iter_state(repo.resolve()[-1])) == j.state_digest()
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 1
    index.write_bytes(bytes(data))
    repo = reopen(store, tmp_path)
    assert state_digest_of(repo.iter_state(repo.resolve()[-1])) == j.state_digest()


def test_rerun_after_crash_before_manifest(tmp_path: Path) -> None:
    from vaultstore import faults

    store = DictStore()
    j = FakeJournal()
    for n in range(50):
        j.put(f"agent-{n}", n)
    repo = make_repo(store, tmp_path)

    def boom(name: str) -> None:
        if name == "repo.manifest.before-write":
            raise RuntimeError("crash")

    faults.set_hook(boom)
    try:
        with pytest.raises(RuntimeError):
            backup(repo, j, "full")
    finally:
        faults.set_hook(None)
    assert not list(store.list("snapshots/"))
    repo = reopen(store, tmp_path)
    result = backup(repo, j, "full")
    assert result.seq == 1
    assert state_digest_of(repo.iter_state(repo.resolve()[-1])) == j.state_digest()


def test_keyfile_and_config_files_present(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    make_repo(store, tmp_path)
    assert list(store.list("keys/")) and store.exists("config")
    assert os.path.exists(tmp_path / "repo" / "config")


def test_many_fulls_with_delta_roots_and_growth(tmp_path: Path) -> None:
    from vaultstore.model import decode_record, tree_key

    store = DictStore()
    j = FakeJournal()
    repo = make_repo(store, tmp_path)
    size = 10
    for round_no in range(12):
        for n in range(size):
            if n % 5 == round_no % 5:
                j.put(f"agent-{n}", n + round_no)
        if round_no % 4 == 3:
            j.remove(f"agent-{round_no}")
        kind = "incremental" if round_no % 3 == 1 else "full"
        backup(repo, j, kind, round_no + 1)
        head = repo.resolve()[-1]
        records = list(repo.iter_state(head))
        assert state_digest_of(iter(records)) == j.state_digest()
        keys = [(tree_key(a), a) for a in (decode_record(r).agent_id for r in records)]
        assert keys == sorted(keys)
        size = size * 2 if round_no < 7 else size
    for k in range(10):  # small changes: fulls become delta roots, depth capped
        j.put("agent-1", 1000 + k)
        backup(repo, j, "full", 100 + k)
        head = repo.resolve()[-1]
        assert state_digest_of(repo.iter_state(head)) == j.state_digest()
    assert repo.check(read_data=True).ok
    depths = [repo._root_object(m.root).depth for m in repo.snapshots() if m.root]
    assert max(depths) == 8 and depths[-1] < 8


def test_concurrent_publish(tmp_path: Path) -> None:
    """Two hosts of ONE vault race: b picked its parent and sequence before a
    published. b's incremental must not publish; b's full rebases."""
    from vaultstore.errors import LockedError, MisuseError

    store = DictStore()
    j = FakeJournal()
    for n in range(30):
        j.put(f"agent-{n}", n)
    a = make_repo(store, tmp_path)
    backup(a, j, "full")
    b = reopen(store, tmp_path / "host-b", meta=FakeJournal())
    stale = b.latest()
    assert stale is not None
    j.put("agent-1", 5)
    backup(a, j, "incremental", 2)  # seq 2, same vault

    def race_once(repo: Any) -> None:
        """The first parent and sequence lookups see the world before seq 2."""
        real_latest_of, real_seqs = repo.latest_of, repo._seqs
        calls = {"latest_of": 0, "seqs": 0}

        def latest_of(vault: str) -> Any:
            calls["latest_of"] += 1
            return stale if calls["latest_of"] == 1 else real_latest_of(vault)

        def seqs() -> list[int]:
            calls["seqs"] += 1
            return [1] if calls["seqs"] == 1 else real_seqs()

        repo.latest_of, repo._seqs = latest_of, seqs

    race_once(b)
    # Refused either at publication (the sequence is taken) or before, because
    # the vault's newest snapshot is not the one this copy last took.
    with pytest.raises((LockedError, MisuseError)):
        backup(b, j, "incremental", 3)
    race_once(b)
    result = backup(b, j, "full", 4)
    assert result.seq == 3
    chain = reopen(store, tmp_path).resolve("latest")
    assert [m.seq for m in chain] == [3]
    assert chain[0].parent == reopen(store, tmp_path).resolve("2")[-1].id


def test_two_vaults_in_one_repository_chain_on_their_own_snapshots(
    tmp_path: Path,
) -> None:
    store = DictStore()
    left, right = FakeJournal(), FakeJournal()
    for n in range(20):
        left.put(f"left-{n}", n)
        right.put(f"right-{n}", n)
    a = make_repo(store, tmp_path)
    b = reopen(store, tmp_path / "b", meta=right)
    backup(a, left, "full", 1)
    backup(b, right, "full", 2)  # seq 2: must not share left's leaves
    left.put("left-3", 333)
    backup(a, left, "incremental", 3)  # seq 3: parent is seq 1, not seq 2
    right.put("right-4", 444)
    backup(b, right, "incremental", 4)
    backup(a, left, "full", 5)
    repo = reopen(store, tmp_path / "c")
    heads = {m.seq: m for m in repo.snapshots()}
    assert heads[3].parent == heads[1].id and heads[4].parent == heads[2].id
    assert heads[1].vault == heads[3].vault == heads[5].vault != heads[2].vault
    for seq in (3, 4, 5):
        head = repo.resolve(str(seq))[-1]
        assert state_digest_of(repo.iter_state(head)) == head.digest_after
    assert state_digest_of(repo.iter_state(heads[5])) == left.state_digest()
    assert state_digest_of(repo.iter_state(heads[4])) == right.state_digest()


@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_crash_at_every_write_point_then_rerun(tmp_path: Path, kind: str) -> None:
    from vaultstore import faults

    def fresh() -> tuple[DictStore, FakeJournal, Repository]:
        store, j = DictStore(), FakeJournal()
        for n in range(60):
            j.put(f"agent-{n}", n)
        repo = make_repo(store, tmp_path / f"c{len(points)}")
        backup(repo, j, "full")
        for n in range(0, 60, 4):
            j.put(f"agent-{n}", n + 100)
        return store, j, repo

    points: list[str] = []
    store, j, repo = fresh()
    faults.seen.clear()
    faults.recording = True
    try:
        backup(repo, j, kind, 2)
    finally:
        faults.recording = False
    points = sorted(set(faults.seen))
    assert "repo.pack.before-write" in points and "repo.manifest.before-write" in points
    for point in points:
        store, j, repo = fresh()

        def crash(name: str, point: str = point) -> None:
            if name == point:
                raise KeyboardInterrupt(point)

        faults.set_hook(crash)
        try:
            with pytest.raises(KeyboardInterrupt):
                backup(repo, j, kind, 2)
        finally:
            faults.set_hook(None)
        published = point == "repo.manifest.after-write"
        assert len(list(store.list("snapshots/"))) == (2 if published else 1), point
        repo = reopen(store, tmp_path / f"c{len(points)}")
        if not published:
            backup(repo, j, kind, 3)
        assert state_digest_of(repo.iter_state(repo.resolve()[-1])) == j.state_digest()
        assert repo.check(read_data=True).ok, point


def test_patched_full_equals_rescanned_full(tmp_path: Path) -> None:
    """A full built from the changes since its parent equals one from a full scan."""
    from vaultstore.crypto.purpose import RepoKeys

    keys = RepoKeys.from_master(bytes(range(32)))
    repo_id = bytes(16)
    patched = Repository(
        DictStore(), repo_id, keys, None, batch_records=7, meta=FakeJournal()
    )
    # Its own repository id (as every real repository has): object ids depend
    # only on the keys, so the roots stay comparable.
    scanned = Repository(
        DictStore(), bytes([1]) * 16, keys, None, batch_records=7, meta=FakeJournal()
    )
    scanned.full_rescan = True
    j = FakeJournal()
    for n in range(400):
        j.put(f"agent-{n}", n)
    for round_no in range(5):
        for repo in (patched, scanned):
            backup(repo, j, "full" if round_no % 2 == 0 else "incremental", round_no)
        a, b = patched.resolve()[-1], scanned.resolve()[-1]
        assert (a.root, a.changes, a.agents) == (b.root, b.changes, b.agents)
        for n in range(round_no, 400, 37):
            j.put(f"agent-{n}", n * 1000 + round_no)
        j.remove(f"agent-{round_no * 3}")
    for repo in (patched, scanned):
        head = repo.resolve()[-1]
        assert state_digest_of(repo.iter_state(head)) == head.digest_after
