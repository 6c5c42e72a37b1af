"""Unit tests of repository plumbing: decoders on hostile input, batch sealing."""

from __future__ import annotations

import itertools
import random
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.memory_store import MemoryStore
from vaultstore.crypto.purpose import RepoKeys
from vaultstore.errors import IntegrityError, LocalIOError
from vaultstore.repo import manifest as manifest_mod
from vaultstore.repo import tree
from vaultstore.repo.index import Index
from vaultstore.repo.manifest import FULL, Manifest, ManifestCodec
from vaultstore.repo.objects import BATCH, ObjectCodec, decode_batch
from vaultstore.repo.pack import (
    PACKS_IN_FLIGHT,
    PackWriter,
    TocEntry,
    pack_name,
    read_toc,
)


@given(st.binary(max_size=300))
def test_decoders_refuse_garbage_cleanly(data: bytes) -> None:
    for decode in (tree.decode_entries, tree.decode_root, decode_batch):
        try:
            decode(data, "object")
        except IntegrityError:
            pass


@given(
    st.lists(
        st.one_of(
            st.integers(), st.none(), st.binary(max_size=40), st.text(max_size=5)
        ),
        max_size=8,
    )
)
def test_decoders_refuse_wrong_shapes(items: list[object]) -> None:
    data = msgpack.packb([items, [items]], use_bin_type=True)
    for decode in (tree.decode_entries, tree.decode_root):
        try:
            decode(data, "object")
        except IntegrityError:
            pass


def test_entries_round_trip() -> None:
    a, b = bytes(range(32)), bytes(32 * [7])
    entries: list[tree.Entry] = [
        ("x", a, 0),
        ("y", b, 5),
        ("z", None, None),
        ("w", a, 3),
    ]
    assert tree.decode_entries(tree.encode_entries(entries), "leaf") == entries


def test_delta_root_round_trip() -> None:
    parent_table = bytes(32 * 8)
    table = bytearray(parent_table)
    table[64:96] = bytes([9]) * 32
    parent = tree.Root(3, 8, parent_table)
    root = tree.delta_root(3, 8, table, parent, bytes([1]) * 32, parent_table)
    assert root.base is not None and root.depth == 1
    decoded = tree.decode_root(tree.encode_root(root), "root")
    assert tree.apply_delta(decoded, parent_table) == bytes(table)
    many = bytearray(bytes([5]) * 32 * 8)
    assert tree.delta_root(3, 8, many, parent, bytes(32), parent_table).base is None


def test_ideal_bits_keeps_leaves_near_sixteen() -> None:
    for agents in (1, 100, 10_000, 1_000_000, 10_000_000):
        per_leaf = agents / (1 << tree.ideal_bits(agents))
        assert per_leaf <= 23
        assert agents < 16 or per_leaf >= 11


def _codec() -> ObjectCodec:
    return ObjectCodec(b"\x01" * 16, RepoKeys.from_master(b"\x02" * 32))


def test_batches_sealed_on_a_helper_thread_equal_inline_ones() -> None:
    """Same ids, same plaintext after opening, same order of emission."""
    codec = _codec()
    records = [msgpack.packb([f"agent-{n}", n]) for n in range(1000)]
    inline: list[tuple[int, bytes, bytes]] = []
    threaded: list[tuple[int, bytes, bytes]] = []
    plain = tree.BatchWriter(codec, lambda *o: inline.append(o), max_records=16)
    with ThreadPoolExecutor(1) as pool:
        helped = tree.BatchWriter(
            codec, lambda *o: threaded.append(o), max_records=16, sealer=pool
        )
        for record in records:
            assert plain.add(record) == helped.add(record)
        plain.close_batch()
        helped.close_batch()
        helped.flush()
    assert plain.ids == helped.ids
    assert [o[:2] for o in inline] == [o[:2] for o in threaded]
    opened = [decode_batch(codec.open(k, oid, s), "b") for k, oid, s in threaded]
    assert [r for batch in opened for r in batch] == records


def test_a_failure_on_the_sealing_thread_reaches_the_writer() -> None:
    codec = _codec()

    def broken(kind: int, oid: bytes, plaintext: bytes) -> bytes:
        raise OSError("sealer died")

    codec.seal_known = broken  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        writer = tree.BatchWriter(codec, lambda *o: None, max_records=4, sealer=pool)
        with pytest.raises(OSError, match="sealer died"):
            for n in range(100):
                writer.add(msgpack.packb(n))
            writer.flush()


@given(
    st.lists(st.integers(0, 3000), max_size=400),
    st.integers(1, 40),
    st.integers(1, 20_000),
    st.lists(st.integers(1, 60), min_size=1, max_size=30),
)
def test_add_many_places_records_exactly_like_add(
    lengths: list[int], max_records: int, max_bytes: int, runs: list[int]
) -> None:
    """Same pending slots, same batch boundaries, same batch ids."""
    codec = _codec()
    records = [bytes([n % 251]) * size for n, size in enumerate(lengths)]
    one: list[tuple[int, bytes, bytes]] = []
    many: list[tuple[int, bytes, bytes]] = []
    single = tree.BatchWriter(
        codec, lambda *o: one.append(o), max_records=max_records, max_bytes=max_bytes
    )
    grouped = tree.BatchWriter(
        codec, lambda *o: many.append(o), max_records=max_records, max_bytes=max_bytes
    )
    expected = [tree.pending_slot(*single.add(r)) for r in records]
    got: list[int] = []
    start = 0
    for size in itertools.cycle(runs):
        if start >= len(records):
            break
        got += grouped.add_many(records[start : start + size])
        start += size
    single.close_batch()
    grouped.close_batch()
    assert got == expected
    assert single.ids == grouped.ids
    assert [o[1] for o in one] == [o[1] for o in many]


def _fill(writer: PackWriter, objects: int) -> None:
    codec = writer.codec
    rng = random.Random(7)  # incompressible, and the same for every writer
    for n in range(objects):
        oid, sealed = codec.seal(BATCH, msgpack.packb([n, rng.randbytes(600)]))
        writer.add(BATCH, oid, sealed)


def test_packs_written_on_a_helper_thread_equal_inline_ones() -> None:
    """Same tables, reported in order, each pack stored before it is reported."""
    codec = _codec()
    stores = MemoryStore(), MemoryStore()
    tables: list[list[list[TocEntry]]] = [[], []]

    def reporter(store: MemoryStore, out: list[list[TocEntry]]) -> Callable[..., None]:
        def on_written(pack_id: bytes, entries: list[TocEntry], size: int) -> None:
            assert len(store.get(pack_name(pack_id))) == size
            assert read_toc(store, codec, pack_id) == entries
            out.append(entries)

        return on_written

    inline = PackWriter(stores[0], codec, 8192, reporter(stores[0], tables[0]))
    with ThreadPoolExecutor(1) as pool:
        threaded = PackWriter(
            stores[1], codec, 8192, reporter(stores[1], tables[1]), pool
        )
        for writer in (inline, threaded):
            _fill(writer, 200)
            writer.flush()
        threaded.wait()
    assert len(tables[1]) == threaded.packs_written > PACKS_IN_FLIGHT
    assert [[e.kind for e in t] for t in tables[0]] == [
        [e.kind for e in t] for t in tables[1]
    ]
    assert [len(t) for t in tables[0]] == [len(t) for t in tables[1]]
    assert inline.bytes_written == threaded.bytes_written
    assert len(stores[1].data) == threaded.packs_written


def test_a_failed_pack_write_on_the_helper_thread_is_raised_and_not_reported() -> None:
    codec = _codec()
    store = MemoryStore()
    reported: list[bytes] = []
    calls = 0
    real_put = store.put

    def failing_put(name: str, data: bytes, *, overwrite: bool = False) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise LocalIOError("disk full while writing a pack")
        real_put(name, data, overwrite=overwrite)

    store.put = failing_put  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        writer = PackWriter(
            store, codec, 8192, lambda p, e, s: reported.append(p), pool
        )
        with pytest.raises(LocalIOError, match="disk full"):
            _fill(writer, 200)
            writer.flush()
            writer.wait()
    # Only the packs before the failed one were reported (and so indexed).
    assert len(reported) == 2
    assert all(pack_name(p) in store.data for p in reported)


def _manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = dict(
        type=FULL,
        time_ms=1,
        host="h",
        seq=3,
        lsn_start=0,
        lsn_end=9,
        parent=None,
        root=b"\x05" * 32,
        changes=[],
        agents=5,
        records_added=5,
        digest_before=bytes(32),
        digest_after=b"\x07" * 32,
        seed_envelope={},
        bytes_added=0,
        vault="ab",
        states={"active": 3, "none": 2},
    )
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "states",
    [{"active": 3, "none": 1}, {"active": 5, "none": 0}, {"active": "5"}, [5], {5: 5}],
    ids=["short", "zero", "text", "list", "int-key"],
)
def test_a_manifest_whose_states_do_not_count_its_agents_is_refused(
    states: object,
) -> None:
    codec = ManifestCodec(b"\x01" * 16, RepoKeys.from_master(b"\x02" * 32))
    good = _manifest()
    assert codec.decode(codec.encode(good), "snapshots/0000000003") == good
    data = codec.encode(_manifest(states=states))
    with pytest.raises(IntegrityError, match="malformed"):
        codec.decode(data, "snapshots/0000000003")


def test_a_manifest_written_before_states_existed_decodes_without_them() -> None:
    codec = ManifestCodec(b"\x01" * 16, RepoKeys.from_master(b"\x02" * 32))
    old = _manifest(states=None)
    body = old.body()
    del body["states"]
    real = manifest_mod.Manifest.body
    try:
        manifest_mod.Manifest.body = lambda self: body  # type: ignore[method-assign]
        data = codec.encode(old)
    finally:
        manifest_mod.Manifest.body = real  # type: ignore[method-assign]
    decoded = codec.decode(data, "snapshots/0000000003")
    assert decoded.states is None and decoded == old


@given(
    st.lists(
        st.tuples(
            st.binary(min_size=32, max_size=32),
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
        ),
        max_size=40,
    ),
    st.integers(1, 300),
)
def test_index_locations_survive_packing_saving_and_loading(
    entries: list[tuple[bytes, int, int, int]], packs: int
) -> None:
    """Locations are packed into one int in memory; every field comes back."""
    with tempfile.TemporaryDirectory() as tmp:
        index = Index(Path(tmp) / "index")
        expected: dict[bytes, tuple[bytes, int, int, int]] = {}
        for n, (oid, kind, offset, length) in enumerate(entries):
            pack_id = (n % packs).to_bytes(16, "big")
            index.add_pack(pack_id, [TocEntry(oid, kind, offset, length)])
            expected.setdefault(oid, (pack_id, kind, offset, length))
        index.save()
        loaded = Index(Path(tmp) / "index")
        assert loaded.load() or not entries
        for idx in (index, loaded):
            assert {oid: idx.lookup(oid) for oid in expected} == expected
            assert len(idx) == len(expected)
            assert {oid: idx.packs[loc[0]] for oid, loc in idx.items()} == {
                oid: loc[0] for oid, loc in expected.items()
            }


def test_an_index_entry_out_of_range_is_refused() -> None:
    with pytest.raises(IntegrityError, match="out of range"):
        Index(None).add_pack(b"\x01" * 16, [TocEntry(b"\x02" * 32, 1, 2**32, 5)])
