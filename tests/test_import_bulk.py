"""import-json into a new vault: spooled, joined per agent and bulk-loaded.

Every test compares that path with the journal's writer (an import into an
existing, empty vault applies every item as an event): the same files must
give the same records, state digest and counts.
"""

from __future__ import annotations

import json
import logging
import random
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.campaign_support import base_env, run_cli
from tests.test_compat_legacy import GOLDEN, MNEMONIC, PASSWORD, _records_of
from tests.test_compat_properties import states
from vaultstore.compat import spool
from vaultstore.crypto.derive import WalletDeriver
from vaultstore.crypto.seed import mnemonic_to_seed
from vaultstore.errors import InputError
from vaultstore.journal import Journal
from vaultstore.model import Record
from vaultstore.ops.backup import init_repository, open_repository, run_backup
from vaultstore.ops.exportjson import export_records
from vaultstore.ops.importjson import import_json
from vaultstore.ops.restore import restore
from vaultstore.store.local import LocalStore
from vaultstore.vault import Vault

T0 = 1796312767857


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    """The golden vector with its raw ``encryption-salt`` beside it."""
    directory = tmp_path / "in"
    directory.mkdir()
    (directory / GOLDEN.name).write_bytes(GOLDEN.read_bytes())
    salt = (GOLDEN.parent / "encryption-salt.hex").read_text().strip()
    (directory / "encryption-salt").write_bytes(bytes.fromhex(salt))
    return directory / GOLDEN.name


def _export(path: Path, records: list[Record], kind: str, when: int) -> Path:
    export_records(
        path,
        records,
        backup_type=kind,
        mnemonic=MNEMONIC,
        password=PASSWORD,
        timestamp_ms=when,
    )
    return path


def _state(vault_dir: Path) -> dict[str, Any]:
    with Journal.open(vault_dir) as journal:
        assert journal.verify_projection() == []
        assert journal.integrity_problems() == []
        return {
            "records": [
                (agent, data) for _, agent, _, data in journal.iter_by_tree_key()
            ],
            "digest": journal.state_digest(),
            "counts": journal.counts(),
        }


def _both(root: Path, files: list[Path], **options: Any) -> tuple[Any, Any]:
    """(bulk-loaded state, writer state) of importing ``files``."""
    bulk = import_json(
        root / "bulk", files, PASSWORD, profile="test", workers=1, **options
    )
    assert bulk.created_vault
    Vault.create(root / "writer", PASSWORD, MNEMONIC, "test").close()
    writer = import_json(
        root / "writer", files, PASSWORD, profile="test", workers=1, **options
    )
    assert not writer.created_vault
    for key in ("wallets", "lifecycle_records", "balance_lists", "files"):
        assert getattr(bulk, key) == getattr(writer, key)
    return _state(root / "bulk"), _state(root / "writer")


def test_the_golden_vector_gives_the_writers_state(
    golden: Path, tmp_path: Path
) -> None:
    bulk, writer = _both(tmp_path, [golden])
    assert bulk == writer
    assert bulk["counts"]["agents"] == 20
    with Journal.open(tmp_path / "bulk") as journal:
        # Loaded as the base: one LSN per item read, and no event in the log.
        assert journal.base_lsn() == journal.last_lsn() == 20 + 18 + 20
        assert list(journal.iter_events()) == []
    assert not list(tmp_path.glob(".bulk.import-*"))
    assert stat.S_IMODE((tmp_path / "bulk").stat().st_mode) == 0o700
    # A vault path whose parents do not exist yet, as for `vaultstore init`.
    deep = tmp_path / "new" / "parents" / "vault"
    import_json(deep, [golden], PASSWORD, profile="test", workers=1)
    assert _state(deep) == bulk


def test_a_full_and_its_incrementals_give_the_writers_state(
    golden: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = _records_of(golden)
    changed = [
        r._replace(lifecycle=dict(r.lifecycle, state="suspended", suspendedAt=9))
        for r in records
        if r.lifecycle is not None and r.lifecycle["state"] == "active"
    ][:3]
    first = _export(tmp_path / "i1" / "a.json", changed, "incremental", T0 + 1000)
    # The second incremental moves one agent back to pending (a jump the live
    # state machine refuses) and replaces another's balances with an empty list.
    jumper = next(r for r in records[5:] if r.lifecycle is not None)
    assert jumper.lifecycle is not None
    target = "archived" if jumper.lifecycle["state"] == "pending" else "pending"
    later = [
        jumper._replace(lifecycle=dict(jumper.lifecycle, state=target)),
        records[0]._replace(balances=[]),
    ]
    second = _export(tmp_path / "i2" / "b.json", later, "incremental", T0 + 2000)
    with caplog.at_level(logging.WARNING, logger="vaultstore"):
        bulk, writer = _both(tmp_path, [second, golden, first])
    assert bulk == writer
    jumps = [
        r for r in caplog.records if getattr(r, "event", "") == "journal.legacy-jump"
    ]
    assert [r.agentId for r in jumps] == [jumper.agent_id] * 2  # both paths
    with Journal.open(tmp_path / "bulk") as journal:
        assert journal.get(jumper.agent_id).lifecycle["state"] == target
        assert journal.get(records[0].agent_id).balances == []


def test_sections_in_any_order_and_repeated_agents_are_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in tree order, lifecycle and balances in other orders than the
    wallets, agents in only some sections or twice: small runs, many merged."""
    monkeypatch.setattr(spool, "RUN_ENTRIES", 7)
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
    rng = random.Random(6)
    records = []
    for n in range(60):
        agent = f"agent-{n:03d}"
        evm, xrp = deriver.addresses(n)
        wallet = {
            "agentId": agent,
            "derivationIndex": n,
            "evmAddress": evm,
            "xrpAddress": xrp,
            "createdAt": n,
        }
        lifecycle = {
            "agentId": agent,
            "state": rng.choice(["pending", "active", "suspended"]),
            "createdAt": n,
            "totalTransactions": n,
            "totalVolume": {"ETH": str(n)},
        }
        balances = [
            {
                "agentId": agent,
                "chain": "evm",
                "token": "ETH",
                "balance": str(n * 7),
                "lastUpdated": n,
            }
        ]
        records.append(
            Record(
                agent,
                wallet if n % 5 else None,
                lifecycle if n % 3 else None,
                balances if n % 4 else None,
            )
        )
    rng.shuffle(records)
    # Repeats later in the same file: the writer keeps the last of each.
    records += [
        r._replace(
            lifecycle=dict(r.lifecycle, state="archived"),
            balances=[dict(b, balance="1") for b in r.balances or []],
        )
        for r in records[:9]
        if r.lifecycle is not None
    ]
    path = _export(tmp_path / "f" / "a.json", records, "full", T0)
    bulk, writer = _both(tmp_path, [path])
    assert bulk == writer
    assert bulk["counts"]["agents"] == 59  # agent-000 is in no section


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(full=states, incremental=states)
def test_hostile_values_give_the_writers_state(
    tmp_path: Path, full: tuple[Record, ...], incremental: tuple[Record, ...]
) -> None:
    run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    files = [
        _export(run / "a" / "full.json", list(full), "full", 5),
        _export(run / "b" / "inc.json", list(incremental), "incremental", 6),
    ]
    bulk, writer = _both(run, files)
    assert bulk == writer


def test_a_bulk_loaded_vault_backs_up_restores_and_takes_more_imports(
    golden: Path, tmp_path: Path
) -> None:
    vault_dir = tmp_path / "v"
    import_json(vault_dir, [golden], PASSWORD, profile="test", workers=1)
    later = _export(
        tmp_path / "i" / "b.json",
        [
            r._replace(wallet=dict(r.wallet, createdAt=r.wallet["createdAt"] + 1))
            for r in _records_of(golden)[:4]
            if r.wallet is not None
        ],
        "incremental",
        T0 + 5000,
    )
    with Vault.open(vault_dir, "test") as vault:
        vault.unlock(PASSWORD)
        repo = init_repository(vault, LocalStore(tmp_path / "repo"), PASSWORD)
        full = run_backup(vault, repo, "full", now_ms=T0 + 1)
        assert (full.agents, full.lsn_end) == (20, vault.journal.last_lsn())
    import_json(vault_dir, [later], PASSWORD, profile="test", workers=1)
    with Vault.open(vault_dir, "test") as vault:
        vault.unlock(PASSWORD)
        repo = open_repository(vault, LocalStore(tmp_path / "repo"), PASSWORD)
        assert vault.journal.verify_projection() == []
        assert vault.journal.counts()["agents"] == 20
        changed = list(vault.journal.iter_changed_since(vault.journal.base_lsn()))
        assert len(changed) == 4
        incremental = run_backup(vault, repo, "incremental", now_ms=T0 + 2)
        assert incremental.lsn_start == full.lsn_end
        assert incremental.lsn_end == vault.journal.last_lsn() == full.lsn_end + 4
        digest = vault.journal.state_digest()
        assert repo.check(read_data=True).ok
        restore(repo, "latest", tmp_path / "restored", PASSWORD, kdf_profile="test")
    with Journal.open(tmp_path / "restored") as journal:
        assert journal.state_digest() == digest


@pytest.mark.reliability(1)
@pytest.mark.parametrize("loader_min", ["0", "1000000"], ids=["loader", "inline"])
def test_kill_at_every_write_point_of_a_new_vault_leaves_no_vault(
    golden: Path, tmp_path: Path, loader_min: str
) -> None:
    trace = tmp_path / "points.txt"
    env = base_env(VAULTSTORE_PASSWORD=PASSWORD, VAULTSTORE_LOADER_MIN=loader_min)
    probe = {**env, "VAULTSTORE_VAULT": str(tmp_path / "probe")}
    done = run_cli(
        {**probe, "VAULTSTORE_FAULT_LOG": str(trace)}, "import-json", str(golden)
    )
    assert done.code == 0, done.err
    points = trace.read_text().split()
    assert {"import.before-load", "import.before-rename"} <= set(points)
    expected = _state(tmp_path / "probe")
    for number in range(1, len(points) + 1):
        target = tmp_path / f"killed-{number}"
        killed_env = {**env, "VAULTSTORE_VAULT": str(target)}
        killed = run_cli(
            {**killed_env, "VAULTSTORE_FAULT_POINT": f"*:{number}"},
            "import-json",
            str(golden),
        )
        assert killed.code == -9, (number, points[number - 1], killed.err)
        # Either no vault, or (killed after the rename) the complete one.
        if target.exists():
            assert _state(target) == expected
        for leftover in tmp_path.glob(f".{target.name}.import-*"):
            assert stat.S_IMODE(leftover.stat().st_mode) == 0o700
        rerun = run_cli(killed_env, "import-json", str(golden), "--json")
        assert rerun.code == 0, rerun.err
        assert json.loads(rerun.out)["wallets"] == 20
        assert _state(target)["digest"] == expected["digest"]


def test_the_loader_process_gets_no_password_in_its_environment(
    golden: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str]] = []
    real = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(dict(kwargs.get("env") or {}))
        return real(*args, **kwargs)

    monkeypatch.setenv("VAULTSTORE_PASSWORD", PASSWORD)
    monkeypatch.setenv("VAULTSTORE_LOADER_MIN", "0")
    monkeypatch.setattr(subprocess, "Popen", spy)
    import_json(tmp_path / "v", [golden], PASSWORD, profile="test", workers=1)
    assert seen, "the loader process did not run"
    for env in seen:
        assert PASSWORD not in env.values()


def test_a_bad_agent_id_that_only_keys_an_empty_balance_list_is_refused(
    tmp_path: Path,
) -> None:
    path = _export(
        tmp_path / "f" / "a.json",
        [Record("bad/agent", None, None, [])],
        "full",
        T0,
    )
    for vault_dir in (tmp_path / "bulk", tmp_path / "writer"):
        if vault_dir.name == "writer":
            Vault.create(vault_dir, PASSWORD, MNEMONIC, "test").close()
        with pytest.raises(InputError, match="agentId"):
            import_json(vault_dir, [path], PASSWORD, profile="test", workers=1)
    assert not (tmp_path / "bulk").exists()
    assert not list(tmp_path.glob(".bulk.import-*"))
    with Journal.open(tmp_path / "writer") as journal:
        assert journal.counts()["agents"] == 0
