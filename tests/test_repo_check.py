"""check --read-data catches every kind of damage and names what depends on it."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from repo_fakejournal import DictStore, FakeJournal  # noqa: E402

from vaultstore.errors import IntegrityError  # noqa: E402
from vaultstore.repo.manifest import HEADER, SHA_SIZE  # noqa: E402
from vaultstore.repo.repository import Repository  # noqa: E402

PASSWORD = "correct horse battery staple 1A!"


def build(tmp_path: Path) -> tuple[DictStore, Repository]:
    store = DictStore()
    j = FakeJournal()
    for n in range(120):
        j.put(f"agent-{n}", n)
    repo = Repository.init(
        store, PASSWORD, "test", None, pack_size=2048, batch_records=9
    )
    repo.backup(j, "full", {}, "h", 1)
    for n in range(0, 120, 13):
        j.put(f"agent-{n}", n + 500)
    repo.backup(j, "incremental", {}, "h", 2)
    j.put("agent-5", 9)
    repo.backup(j, "full", {}, "h", 3)
    return store, repo


def recheck(store: DictStore) -> object:
    repo = Repository.open(store, PASSWORD, None, "test")
    return repo.check(read_data=True)


def test_clean_repository_checks_ok(tmp_path: Path) -> None:
    store, repo = build(tmp_path)
    report = repo.check(read_data=True)
    assert report.ok, report.as_dict()
    assert report.snapshots == 3 and report.packs > 3


def test_every_single_bit_flip_in_packs_and_manifests_is_caught(tmp_path: Path) -> None:
    store, _ = build(tmp_path)
    names = [n for n in store.list() if n.startswith(("data/", "snapshots/"))]
    for name in names:
        original = store.data[name]
        for pos in sorted(
            {
                0,
                7,
                9,
                len(original) // 3,
                len(original) // 2,
                len(original) - 30,
                len(original) - 1,
            }
        ):
            damaged = bytearray(original)
            damaged[pos] ^= 0x10
            store.data[name] = bytes(damaged)
            report = recheck(store)
            assert not report.ok, (name, pos)
            assert any(
                name.split("/")[-1][:16] in p.what or "pack" in p.what
                for p in report.problems
            ), (name, pos)
            assert any(p.snapshots for p in report.problems), (name, pos)
        store.data[name] = original
    assert recheck(store).ok


def test_flip_in_config_or_keyfile_refused_at_open(tmp_path: Path) -> None:
    store, _ = build(tmp_path)
    for name in ["config", *store.list("keys/")]:
        original = store.data[name]
        damaged = bytearray(original)
        damaged[len(original) // 2] ^= 1
        store.data[name] = bytes(damaged)
        # Damage, never a "not found" or an I/O error: a flipped key file is
        # told apart from a wrong password before any KDF runs.
        with pytest.raises(IntegrityError):
            Repository.open(store, PASSWORD, None, "test").check()
        store.data[name] = original


def _packs(store: DictStore) -> list[str]:
    return list(store.list("data/"))


def test_truncated_missing_duplicated_swapped_foreign(tmp_path: Path) -> None:
    store, _ = build(tmp_path)
    packs = _packs(store)
    first, second = packs[0], packs[1]
    saved = dict(store.data)

    store.data[first] = store.data[first][:-5]  # truncated
    report = recheck(store)
    assert not report.ok and any(
        first.split("/")[-1] in p.what for p in report.problems
    )

    store.data = dict(saved)
    del store.data[first]  # missing: every object in it is named as missing
    report = recheck(store)
    assert not report.ok
    assert any("missing" in p.message and p.snapshots for p in report.problems)

    store.data = dict(saved)  # duplicated: a pack copied under another name
    other = "data/ff/" + "ff" * 16
    store.data[other] = store.data[first]
    assert not recheck(store).ok

    store.data = dict(saved)  # swapped: two packs exchange names
    store.data[first], store.data[second] = saved[second], saved[first]
    report = recheck(store)
    assert not report.ok and len(report.problems) >= 2

    foreign, _ = build(tmp_path)  # a pack from another repository under our name
    store.data = dict(saved)
    store.data[first] = next(iter(foreign.data[n] for n in foreign.list("data/")))
    assert not recheck(store).ok


def test_edited_manifest_with_recomputed_sha_refused(tmp_path: Path) -> None:
    store, _ = build(tmp_path)
    name = "snapshots/0000000002"
    data = bytearray(store.data[name])
    body_at = HEADER.size + SHA_SIZE
    data[body_at + 20] ^= 1
    data[HEADER.size : body_at] = hashlib.sha256(bytes(data[body_at:-32])).digest()
    store.data[name] = bytes(data)
    report = recheck(store)
    bad = [p for p in report.problems if name in p.what]
    assert bad and "MAC" in bad[0].message
    # the incremental is lost; the first full and the later full still resolve
    repo = Repository.open(store, PASSWORD, None, "test")
    assert [m.seq for m in repo.resolve("1")] == [1]
    assert [m.seq for m in repo.resolve("3")] == [3]
    with pytest.raises(IntegrityError):
        repo.resolve("2")


def test_damaged_leaf_names_both_dependent_snapshots(tmp_path: Path) -> None:
    store, repo = build(tmp_path)
    from vaultstore.repo.objects import LEAF
    from vaultstore.repo.pack import pack_name

    oid, loc = next((o, loc) for o, loc in repo.index.items() if loc[1] == LEAF)
    pack_id, _, offset, length = repo.index.lookup(oid)
    name = pack_name(pack_id)
    data = bytearray(store.data[name])
    data[offset + length // 2] ^= 1
    store.data[name] = bytes(data)
    report = recheck(store)
    leaf_problems = [p for p in report.problems if oid.hex()[:16] in p.what]
    assert leaf_problems and leaf_problems[0].snapshots


class _Misreporting(FakeJournal):
    """A journal whose digest or counts disagree with its records: what a
    writer bug would publish under a valid MAC."""

    def __init__(self, digest: bytes | None = None, by_state: dict | None = None):
        super().__init__()
        self.forced_digest = digest
        self.by_state = by_state

    def state_digest(self) -> bytes:
        return self.forced_digest or super().state_digest()

    def counts(self) -> dict[str, object]:
        counts = super().counts()
        if self.by_state is not None:
            counts["byState"] = self.by_state
        return counts


def _one_full(journal: FakeJournal) -> tuple[DictStore, Repository]:
    for n in range(40):
        if f"agent-{n}" not in journal.agents:
            journal.put(f"agent-{n}", n)
    store = DictStore()
    repo = Repository.init(store, PASSWORD, "test", None, pack_size=2048)
    repo.backup(journal, "full", {}, "h", 1)
    return store, repo


def test_read_data_recomputes_every_snapshot_state(tmp_path: Path) -> None:
    store, repo = build(tmp_path)
    assert repo.check(read_data=True).states_verified == 3
    assert repo.check(read_data=False).states_verified == 0
    honest = _Misreporting(by_state={"active": 40})
    _, repo = _one_full(honest)
    report = repo.check(read_data=True)
    assert report.ok and report.states_verified == 1, report.as_dict()
    assert repo.resolve("latest")[-1].states == {"active": 40}


@pytest.mark.parametrize(
    ("journal", "message"),
    [
        (_Misreporting(digest=b"\x01" * 32), "do not match its state digest"),
        (
            _Misreporting(by_state={"active": 39, "archived": 1}),
            "counts by lifecycle state differ",
        ),
    ],
    ids=["digest", "states"],
)
def test_read_data_names_a_snapshot_whose_manifest_misdescribes_its_state(
    journal: FakeJournal, message: str
) -> None:
    _, repo = _one_full(journal)
    assert repo.check(read_data=False).ok  # structure and MACs are sound
    report = repo.check(read_data=True)
    [problem] = report.problems
    assert problem.what == "snapshot 1" and message in problem.message
    assert [s.split(":")[0] for s in problem.snapshots] == ["1"]


def test_read_data_names_a_record_filed_under_another_agent(tmp_path: Path) -> None:
    journal = FakeJournal()
    journal.put("agent-8", 8)
    journal._set("agent-7", journal.agents["agent-8"][2])  # agent-8's record
    _, repo = _one_full(journal)
    [problem] = repo.check(read_data=True).problems
    assert problem.what == "snapshot 1" and "'agent-7'" in problem.message
