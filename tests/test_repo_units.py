"""Unit tests of repository plumbing: decoders on hostile input, the row feeder."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from vaultstore.errors import IntegrityError
from vaultstore.repo import tree
from vaultstore.repo.objects import decode_batch


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
