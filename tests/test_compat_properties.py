"""Property tests: legacy JSON export -> import -> export preserves every field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultstore.compat.jsformat import MAX_SAFE, js_key_order
from vaultstore.compat.legacy import read_legacy, write_legacy
from vaultstore.crypto.derive import WalletDeriver
from vaultstore.crypto.seed import mnemonic_to_seed
from vaultstore.model import Record
from vaultstore.ops.exportjson import export_records, export_vault
from vaultstore.ops.importjson import import_json
from vaultstore.vault import Vault

PASSWORD = "Vector-Passw0rd!-2026"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
_DERIVER = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
ADDRESSES = [_DERIVER.addresses(i) for i in range(4)]

HOSTILE_FLOATS = [1e-7, 5e-324, 1.5e21, -0.0, 0.1, 1e21, 1.2345678901234568e20, 2.0**53]
HOSTILE_TEXT = [
    "\u2028",
    "\u2029",
    "\U0001f600",
    "\x00",
    "\x1f",
    "\x7f",
    '"',
    "\\",
    "/",
    "</script>",
    "é",
    "\n\t",
]
INDEX_KEYS = ["0", "7", "10", "2", "20260101", "007", "-1", "4294967294", "4294967295"]

texts = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(HOSTILE_TEXT), max_size=4).map("".join),
)
keys = st.one_of(texts, st.sampled_from(INDEX_KEYS))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(HOSTILE_FLOATS),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)
    ),
    max_leaves=8,
)
amounts = st.integers(min_value=0, max_value=2**200).map(str)
ms = st.integers(min_value=0, max_value=2**45)
agent_ids = st.one_of(
    st.sampled_from(INDEX_KEYS + ["agent-1", "Ünïcode ✓", "a\u2028b", "x\U0001f600"]),
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
            blacklist_characters="/\\",
        ),
        min_size=1,
        max_size=10,
    ),
)


@st.composite
def records(draw: Any, agent_id: str) -> Record:
    index = draw(st.integers(min_value=0, max_value=3))
    wallet: dict[str, Any] | None = None
    if draw(st.booleans()):
        wallet = {
            "agentId": agent_id,
            "derivationIndex": index,
            "evmAddress": ADDRESSES[index][0],
            "xrpAddress": ADDRESSES[index][1],
            "createdAt": draw(ms),
        }
        if draw(st.booleans()):
            wallet["metadata"] = draw(st.dictionaries(keys, json_values, max_size=4))
    lifecycle = None
    if draw(st.booleans()):
        state = draw(st.sampled_from(["pending", "active", "suspended", "archived"]))
        lifecycle = {
            "agentId": agent_id,
            "state": state,
            "createdAt": draw(ms),
            "totalTransactions": draw(st.integers(0, 2**40)),
            "totalVolume": draw(
                st.dictionaries(
                    st.sampled_from(["ETH", "XRP", "0x" + "ab" * 20]), amounts
                )
            ),
        }
        for key in ("activatedAt", "suspendedAt", "archivedAt", "lastActivity"):
            if draw(st.booleans()):
                lifecycle[key] = draw(ms)
        if draw(st.booleans()):
            lifecycle["suspensionReason"] = draw(texts)
    balances = None
    if draw(st.booleans()):
        balances = [
            {
                "agentId": agent_id,
                "chain": chain,
                "token": token,
                "balance": draw(amounts),
                "lastUpdated": draw(ms),
            }
            for chain, token in draw(
                st.lists(
                    st.sampled_from(
                        [("evm", "ETH"), ("evm", "0x" + "cd" * 20), ("xrp", "XRP")]
                    ),
                    max_size=3,
                    unique=True,
                )
            )
        ]
    return Record(agent_id, wallet, lifecycle, balances)


states = st.lists(agent_ids, max_size=6, unique=True).flatmap(
    lambda ids: st.tuples(*[records(a) for a in ids])
)


def js_norm(value: Any) -> Any:
    """What JSON.stringify then JSON.parse gives back (ints beyond 2^53: strings)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE <= value <= MAX_SAFE else str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        if value.is_integer() and abs(value) <= MAX_SAFE:
            return int(value)
        return value
    if isinstance(value, dict):
        order = js_key_order(list(value)) or list(value)
        return {k: js_norm(value[k]) for k in order}
    return [js_norm(v) for v in value]


def exact(value: Any) -> Any:
    """A form whose == also compares key order and int/float/str types."""
    if isinstance(value, dict):
        return [("{}", k, exact(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [exact(v) for v in value]
    return (type(value).__name__, repr(value))


def read_state(path: Path) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for kind, payload in read_legacy(path):
        if kind == "balances":
            state.setdefault(payload[0], {})["balances"] = payload[1]
        else:
            state.setdefault(payload["agentId"], {})[kind] = payload
    return state


def expected_state(recs: tuple[Record, ...], full: bool) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for r in recs:
        entry: dict[str, Any] = {}
        if r.wallet is not None:
            entry["wallet"] = js_norm(r.wallet)
        if r.lifecycle is not None:
            entry["lifecycle"] = js_norm(r.lifecycle)
        if r.balances is not None:
            entry["balances"] = js_norm(r.balances)
        elif full and r.wallet is not None:
            entry["balances"] = []
        if entry:
            state[r.agent_id] = entry
    return state


def as_records(state: dict[str, Any]) -> list[Record]:
    return [
        Record(a, s.get("wallet"), s.get("lifecycle"), s.get("balances"))
        for a, s in state.items()
    ]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=states)
def test_write_read_write_is_exact(tmp_path: Path, recs: tuple[Record, ...]) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    kw: dict[str, Any] = {
        "timestamp_ms": 1,
        "backup_type": "full",
        "encrypted_seed": "s",
    }
    sum1 = write_legacy(first, records=recs, **kw)
    state = read_state(first)
    expected = expected_state(recs, full=True)
    assert exact(dict(sorted(state.items()))) == exact(dict(sorted(expected.items())))
    # Written again in the original agent order, the file is the same bytes.
    again = as_records({a: state[a] for a in expected})
    sum2 = write_legacy(second, records=again, **kw)
    assert sum1 == sum2
    assert first.read_bytes() == second.read_bytes()


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=states)
def test_export_import_export_through_the_vault(
    tmp_path: Path, recs: tuple[Record, ...]
) -> None:
    run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    original = export_records(
        run / "one" / "a.json",
        recs,
        backup_type="full",
        mnemonic=MNEMONIC,
        password=PASSWORD,
        timestamp_ms=5,
    )
    first = read_state(Path(original.file))
    import_json(
        run / "vault", [Path(original.file)], PASSWORD, profile="test", workers=1
    )
    with Vault.open(run / "vault", "test") as vault:
        vault.unlock(PASSWORD)
        again = export_vault(vault, run / "two" / "b.json", PASSWORD, timestamp_ms=6)
    second = read_state(Path(again.file))
    # Same agents and every field exact; the order of agents is tree order now.
    assert exact(dict(sorted(first.items()))) == exact(dict(sorted(second.items())))
