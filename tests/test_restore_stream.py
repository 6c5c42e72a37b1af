"""The streaming state reader and the restore sampler: order, grouping, damage."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from repo_fakejournal import DictStore, FakeJournal, state_digest_of  # noqa: E402

from vaultstore.errors import IntegrityError
from vaultstore.model import decode_record, tree_key
from vaultstore.ops import restore as restore_ops
from vaultstore.repo import pack as pack_mod
from vaultstore.repo import repository as repo_mod
from vaultstore.repo.pack import PackReader, pack_name
from vaultstore.repo.repository import Repository

PASSWORD = "correct horse battery staple 1A!"
SEED = {"format": "test-envelope", "salt": "00"}


def make_repo(store: DictStore, tmp_path: Path) -> Repository:
    return Repository.init(
        store, PASSWORD, "test", tmp_path / "cache", pack_size=4096, batch_records=7
    )


def history(tmp_path: Path) -> tuple[Repository, DictStore, list[bytes]]:
    """Full, incremental (changes, a removal, a newcomer), then a patched full."""
    store = DictStore()
    j = FakeJournal()
    for n in range(400):
        j.put(f"agent-{n}", n)
    repo = make_repo(store, tmp_path)
    digests = []
    repo.backup(j, "full", SEED, "h", 1)
    digests.append(j.state_digest())
    for n in range(0, 400, 37):
        j.put(f"agent-{n}", n + 1000)
    j.remove("agent-5")
    j.put("agent-new", 9)
    repo.backup(j, "incremental", SEED, "h", 2)
    digests.append(j.state_digest())
    j.put("agent-11", 4242)
    repo.backup(j, "full", SEED, "h", 3)
    digests.append(j.state_digest())
    return repo, store, digests


@pytest.mark.parametrize("group, per_task, capacity", [(256, 32, 4), (3, 2, 1)])
def test_state_streams_in_tree_order_with_any_grouping(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    group: int,
    per_task: int,
    capacity: int,
) -> None:
    monkeypatch.setattr(repo_mod, "GROUP_LEAVES", group)
    monkeypatch.setattr(repo_mod, "LEAVES_PER_TASK", per_task)
    monkeypatch.setattr(pack_mod, "STREAM_PACKS", capacity)
    monkeypatch.setattr(
        repo_mod,
        "PackReader",
        lambda store: PackReader(store, capacity),
    )
    repo, _, digests = history(tmp_path)
    for manifest, digest in zip(repo.snapshots(), digests, strict=True):
        chunks = list(repo.iter_state_chunks(manifest))
        records = [r for chunk in chunks for r in chunk]
        assert state_digest_of(iter(records)) == digest == manifest.digest_after
        ids = [decode_record(r).agent_id for r in records]
        assert len(set(ids)) == len(ids) == manifest.agents
        assert ids == sorted(ids, key=lambda a: (tree_key(a), a))
        assert ("agent-5" in ids) == (manifest.seq == 1)
        if group == 3:
            assert len(chunks) > 10  # many small groups were stitched together


def test_pack_reader_reads_each_pack_whole_once() -> None:
    store = DictStore()
    ids = [bytes([n]) * 16 for n in range(3)]
    for n, pid in enumerate(ids):
        store.put(pack_name(pid), bytes([n]) * 100)
    reader = PackReader(store, capacity=1)
    assert reader.read(ids[0], 10, 5) == bytes([0]) * 5
    assert reader.read(ids[0], 90, 20) == bytes([0]) * 10  # short at the end
    assert reader.read(ids[1], 0, 3) == bytes([1]) * 3
    assert reader.read(ids[0], 0, 2) == bytes([0]) * 2  # evicted: by range now
    assert (reader.whole_reads, reader.range_reads) == (2, 1)


def test_a_damaged_batch_stops_the_stream_naming_it(tmp_path: Path) -> None:
    repo, store, _ = history(tmp_path)
    full = repo.snapshots()[0]
    batch = next(oid for oid, loc in repo.index.items() if loc[1] == repo_mod.BATCH)
    pack_id, _, offset, _ = repo.index.lookup(batch)  # type: ignore[misc]
    data = bytearray(store.data[pack_name(pack_id)])
    data[offset + 20] ^= 1
    store.data[pack_name(pack_id)] = bytes(data)
    with pytest.raises(IntegrityError, match=f"batch {batch.hex()[:16]}"):
        for _ in repo.iter_state(full):
            pass


def test_a_leaf_pointing_past_its_batch_is_refused() -> None:
    leaf = repo_mod._Leaf([bytes(32)], ["a"], [0], [5])
    reader = object.__new__(repo_mod._StateReader)
    reader.changes = {}
    reader._pending_uses = repo_mod.Counter()
    done: repo_mod.Future[list[bytes]] = repo_mod.Future()
    done.set_result([b"only", b"two"])
    reader._batches = {bytes(32): done}
    with pytest.raises(IntegrityError, match="has no slot 5"):
        reader._records([(leaf, [])], {bytes(32)})


@pytest.mark.parametrize(
    "plaintext",
    [
        [[bytes(32)], [["a", 1, 0]]],  # ref out of the table
        [[bytes(32)], [["a", 0, -1]]],  # negative slot
        [[bytes(31)], [["a", 0, 0]]],  # short batch id
        [[bytes(32)], [["a", 0]]],  # short entry
        [[bytes(32)], [[7, 0, 0]]],  # agent not a string
        [[bytes(32)], [["a", True, 0]]],  # bool is not a reference
    ],
)
def test_malformed_leaves_are_refused(plaintext: list[object]) -> None:
    import msgpack

    with pytest.raises(IntegrityError):
        repo_mod._parse_leaf(msgpack.packb(plaintext), "leaf x")


def test_sampler_keeps_a_uniform_reservoir_of_fixed_size() -> None:
    n, trials = 2000, 300
    counts = [0] * n
    records = [str(i).encode() for i in range(n)]
    for t in range(trials):
        sampler = restore_ops._SampleCollector("sample")
        sampler._rng = random.Random(t)
        rng = random.Random(1000 + t)
        pos = 0
        while pos < n:
            size = rng.choice((1, 7, 100, 999))
            sampler.offer_chunk(records[pos : pos + size])
            pos += size
        assert len(sampler._reservoir) == restore_ops.DEFAULT_SAMPLE
        assert len(set(sampler._reservoir)) == restore_ops.DEFAULT_SAMPLE
        for data in sampler._reservoir:
            counts[int(data)] += 1
    expected = trials * restore_ops.DEFAULT_SAMPLE / n
    quarters = [sum(counts[q * n // 4 : (q + 1) * n // 4]) for q in range(4)]
    for total in quarters:
        assert abs(total / (n / 4) - expected) < 0.1 * expected


def test_sampler_takes_everything_below_its_size() -> None:
    sampler = restore_ops._SampleCollector("sample")
    sampler.offer_chunk([b"a", b"b"])
    sampler.offer_chunk([b"c"])
    assert sampler._reservoir == [b"a", b"b", b"c"]
