"""Restore through the real command line: exactness, chains, refusals, crashes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vaultstore.crypto.derive import WalletDeriver
from vaultstore.crypto.seed import mnemonic_to_seed
from vaultstore.journal import Event, Journal
from vaultstore.ops.backup import init_repository, run_backup
from vaultstore.ops.drill import _fleet_events
from vaultstore.store.local import LocalStore
from vaultstore.vault import Vault

PASSWORD = "Restore-Test-Passw0rd!"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
VAULTSTORE = [sys.executable, "-m", "vaultstore.cli.main"]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*VAULTSTORE, *args], env=env, capture_output=True, text=True, timeout=120
    )


class Source:
    """A vault with history and a local repository, built through the Python API."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.vault_dir = root / "vault"
        self.repo_dir = root / "repo"
        self.vault = Vault.create(self.vault_dir, PASSWORD, MNEMONIC, "test")
        self.repo = init_repository(self.vault, LocalStore(self.repo_dir), PASSWORD)
        self.deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
        self.digests: list[bytes] = []
        self.times: list[int] = []

    def append(self, events: Iterator[Event] | list[Event]) -> None:
        with self.vault.journal.writer() as writer:
            for event in events:
                writer.add(event)

    def backup(self, kind: str, now_ms: int) -> dict[str, Any]:
        result = run_backup(self.vault, self.repo, kind, now_ms=now_ms)
        self.digests.append(self.vault.journal.state_digest())
        self.times.append(now_ms)
        return result.as_dict()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTSTORE_")}
        env.update(
            VAULTSTORE_TESTING="1",
            VAULTSTORE_PASSWORD=PASSWORD,
            VAULTSTORE_REPOSITORY=str(self.repo_dir),
            # A fresh machine: the vault directory does not exist.
            VAULTSTORE_VAULT=str(self.root / "no-vault-here"),
        )
        env.update(extra)
        return env


def lifecycle(agent: str, state: str, **extra: Any) -> Event:
    record = {"agentId": agent, "state": state, "createdAt": 1_790_000_000_000}
    record.update(extra)
    record.setdefault("totalTransactions", 1)
    record.setdefault("totalVolume", {})
    return Event("lifecycle", agent, record)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    src = Source(tmp_path)
    rng = random.Random(7)
    src.append(_fleet_events(src.deriver, range(60), rng))
    src.append(
        [
            lifecycle(
                "agent-0000001",
                "suspended",
                activatedAt=1,
                suspendedAt=2,
                suspensionReason="review",
            )
        ]
    )
    src.backup("full", 1_800_000_000_000)
    # Reactivation (drops suspendedAt and reason), archival, metadata edit, new agents.
    record = src.vault.journal.get("agent-0000003")
    assert record is not None and record.wallet is not None
    wallet = dict(record.wallet, metadata={"edited": True, "ratio": 1e-7})
    src.append(
        [
            lifecycle("agent-0000001", "active", activatedAt=3),
            Event("wallet", "agent-0000003", wallet),
        ]
    )
    src.append(_fleet_events(src.deriver, range(60, 70), rng))
    src.backup("incremental", 1_800_000_100_000)
    active = [
        a
        for a in ("agent-0000004", "agent-0000005", "agent-0000006")
        if (r := src.vault.journal.get(a)) and r.lifecycle["state"] == "active"
    ]
    src.append([lifecycle(a, "archived", activatedAt=1, archivedAt=9) for a in active])
    src.append([Event("remove", "agent-0000010", None)])
    src.backup("incremental", 1_800_000_200_000)
    yield src
    src.vault.close()


def restored_digest(target: Path) -> bytes:
    with Journal.open(target) as journal:
        return journal.state_digest()


@pytest.mark.reliability(12, 14)
@pytest.mark.parametrize("loader_min", ["0", "1000000"], ids=["loader", "inline"])
def test_restore_on_a_fresh_machine_equals_the_source_exactly(
    source: Source, tmp_path: Path, loader_min: str
) -> None:
    target = tmp_path / "restored"
    done = run(
        source.env(VAULTSTORE_LOADER_MIN=loader_min),
        "restore",
        "latest",
        "--target",
        str(target),
        "--verify-addresses",
        "all",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["agents"] == 69  # 70 created, one removed
    assert len(report["chain"]) == 3
    assert restored_digest(target) == source.digests[-1]
    with Journal.open(target) as journal:
        reactivated = journal.get("agent-0000001")
        assert reactivated is not None and reactivated.lifecycle is not None
        assert reactivated.lifecycle["state"] == "active"
        assert "suspendedAt" not in reactivated.lifecycle
        edited = journal.get("agent-0000003")
        assert edited is not None and edited.wallet is not None
        assert edited.wallet["metadata"] == {"edited": True, "ratio": 1e-7}
        assert journal.get("agent-0000010") is None
    # The restored vault opens with the same password and holds the seed.
    vault = Vault.open(target, "test")
    vault.unlock(PASSWORD)
    assert vault.mnemonic() == MNEMONIC
    vault.close()


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with Journal.open(path) as journal:
        return journal._conn.execute(
            "SELECT tree_key, agent_id, rhash, record FROM agents"
            " WHERE record IS NOT NULL ORDER BY tree_key, agent_id"
        ).fetchall()


@pytest.mark.parametrize("manifest", ["with-states", "without-states"])
def test_the_restored_counts_and_rows_equal_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: str
) -> None:
    """Manifests that carry the counts by state (restore takes agent ids from
    the tree and counts from the manifest) and older ones without them
    (restore scans every record) restore the same journal."""
    from vaultstore.repo import repository

    if manifest == "without-states":
        real = repository.Manifest
        monkeypatch.setattr(
            repository, "Manifest", lambda **kw: real(**{**kw, "states": None})
        )
    src = Source(tmp_path / "src")
    rng = random.Random(11)
    src.append(_fleet_events(src.deriver, range(40), rng))
    src.backup("full", 1_800_000_000_000)
    active = [
        a
        for n in range(10)
        if (r := src.vault.journal.get(a := f"agent-{n:07d}"))
        and r.lifecycle["state"] == "active"
    ]
    src.append([lifecycle(a, "archived", activatedAt=1, archivedAt=9) for a in active])
    src.append([Event("remove", "agent-0000011", None)])
    src.append(_fleet_events(src.deriver, range(40, 45), rng))
    src.backup("incremental", 1_800_000_100_000)
    head = src.repo.resolve("latest")[-1]
    assert (head.states is None) == (manifest == "without-states")
    target = tmp_path / "restored"
    done = run(
        src.env(VAULTSTORE_LOADER_MIN="0"), "restore", "latest", "--target", str(target)
    )
    assert done.returncode == 0, done.stderr
    with Journal.open(target) as journal:
        assert journal.counts() == src.vault.journal.counts()
        assert journal.counts()["byState"]["archived"] >= len(active) > 0
        assert journal.verify_projection() == []
    assert _rows(target) == _rows(src.vault_dir) and len(_rows(target)) == 44
    src.vault.close()


def test_point_in_time_restore_picks_the_snapshot_at_or_before(
    source: Source, tmp_path: Path
) -> None:
    between = str(source.times[1] + 50_000)
    target = tmp_path / "at"
    done = run(source.env(), "restore", "--target", str(target), "--at", between)
    assert done.returncode == 0, done.stderr
    assert restored_digest(target) == source.digests[1]

    too_early = run(
        source.env(),
        "restore",
        "--target",
        str(tmp_path / "early"),
        "--at",
        str(source.times[0] - 1),
    )
    assert too_early.returncode == 12, too_early.stderr
    assert not (tmp_path / "early").exists()


def test_an_existing_target_is_refused_unless_replace(
    source: Source, tmp_path: Path
) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "keep-me").write_text("x")
    refused = run(source.env(), "restore", "--target", str(target))
    assert refused.returncode == 2
    assert (target / "keep-me").exists()

    replaced = run(source.env(), "restore", "--target", str(target), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert not (target / "keep-me").exists()
    assert restored_digest(target) == source.digests[-1]


@pytest.mark.reliability(10)
def test_wrong_password_exits_4_and_writes_nothing(
    source: Source, tmp_path: Path
) -> None:
    target = tmp_path / "wrong"
    done = run(
        source.env(VAULTSTORE_PASSWORD="Not-The-Passw0rd!!"),
        "restore",
        "--target",
        str(target),
    )
    assert done.returncode == 4
    assert not target.exists()
    assert PASSWORD not in done.stderr and "Not-The-Passw0rd" not in done.stderr
    assert list(tmp_path.glob(".wrong*")) == []


def test_dry_run_verifies_and_writes_nothing(source: Source, tmp_path: Path) -> None:
    target = tmp_path / "dry"
    done = run(source.env(), "restore", "--target", str(target), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["agents"] == 69
    assert not target.exists()


@pytest.mark.reliability(5)
def test_damaged_pack_is_refused_before_the_target_appears(
    source: Source, tmp_path: Path
) -> None:
    packs = sorted((source.repo_dir / "data").rglob("*"))
    pack = max((p for p in packs if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x01
    os.chmod(pack, 0o600)
    pack.write_bytes(bytes(data))
    target = tmp_path / "damaged"
    done = run(source.env(), "restore", "--target", str(target))
    assert done.returncode == 3, done.stderr
    assert not target.exists()
    assert list(tmp_path.glob(".damaged*")) == []


@pytest.mark.reliability(13)
def test_missing_parent_of_an_incremental_is_refused(
    source: Source, tmp_path: Path
) -> None:
    (source.repo_dir / "snapshots" / "0000000002").unlink()
    target = tmp_path / "gap"
    done = run(source.env(), "restore", "latest", "--target", str(target))
    assert done.returncode == 3, done.stderr
    assert not target.exists()


@pytest.mark.reliability(8)
def test_an_address_that_does_not_derive_stops_the_restore(tmp_path: Path) -> None:
    src = Source(tmp_path)
    src.append(_fleet_events(src.deriver, range(5), random.Random(1)))
    record = src.vault.journal.get("agent-0000002")
    assert record is not None and record.wallet is not None
    forged = dict(record.wallet, evmAddress="0x" + "11" * 20)
    src.append([Event("wallet", "agent-0000002", forged)])
    src.backup("full", 1_800_000_000_000)
    target = tmp_path / "forged"
    done = run(
        src.env(), "restore", "--target", str(target), "--verify-addresses", "all"
    )
    src.vault.close()
    assert done.returncode == 3
    assert "agent-0000002" in done.stderr
    assert not target.exists()


@pytest.mark.reliability(1)
@pytest.mark.parametrize("loader_min", ["0", "1000000"], ids=["loader", "inline"])
def test_kill_at_every_restore_write_point_leaves_target_untouched(
    source: Source, tmp_path: Path, loader_min: str
) -> None:
    trace = tmp_path / "points.txt"
    probe = tmp_path / "probe"
    base = source.env(VAULTSTORE_LOADER_MIN=loader_min)
    done = run(
        {**base, "VAULTSTORE_FAULT_LOG": str(trace)}, "restore", "--target", str(probe)
    )
    assert done.returncode == 0, done.stderr
    points = trace.read_text().split()
    assert "restore.before-swap" in points
    for number in range(1, len(points) + 1):
        target = tmp_path / f"killed-{number}"
        killed = run(
            {**base, "VAULTSTORE_FAULT_POINT": f"*:{number}"},
            "restore",
            "--target",
            str(target),
        )
        assert killed.returncode == -9, (number, killed.stderr)
        # Either nothing, or (killed after the rename) the complete vault.
        if target.exists():
            assert restored_digest(target) == source.digests[-1]
        rerun = run(source.env(), "restore", "--target", str(target), "--replace")
        assert rerun.returncode == 0, rerun.stderr
        assert restored_digest(target) == source.digests[-1]


def test_a_restored_vault_continues_the_same_chain(
    source: Source, tmp_path: Path
) -> None:
    target = tmp_path / "continued"
    done = run(source.env(), "restore", "latest", "--target", str(target))
    assert done.returncode == 0, done.stderr
    env = source.env(VAULTSTORE_VAULT=str(target))
    with Vault.open(target, "test") as vault:
        vault.journal.append([lifecycle("agent-0000020", "active", activatedAt=5)])
        expected = vault.journal.state_digest()
    backed = run(env, "backup", "--incremental", "--json")
    assert backed.returncode == 0, backed.stderr
    result = json.loads(backed.stdout)
    listing = json.loads(run(env, "snapshots", "--json").stdout)
    assert result["parent"] == listing[-2]["id"]  # the snapshot it came from
    again = tmp_path / "again"
    done = run(source.env(), "restore", "latest", "--target", str(again))
    assert done.returncode == 0, done.stderr
    assert restored_digest(again) == expected


def test_the_config_files_password_source_is_used(
    source: Source, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    config = tmp_path / "vaultstore.toml"
    config.write_text(f'password_file = "{secret}"\n')
    env = source.env(VAULTSTORE_CONFIG=str(config))
    del env["VAULTSTORE_PASSWORD"]
    target = tmp_path / "from-config"
    done = run(env, "restore", "latest", "--target", str(target), "--dry-run")
    assert done.returncode == 0, done.stderr


def test_after_restoring_an_older_snapshot_the_chain_is_not_forked(
    source: Source, tmp_path: Path
) -> None:
    target = tmp_path / "older"
    done = run(source.env(), "restore", "1", "--target", str(target))
    assert done.returncode == 0, done.stderr
    env = source.env(VAULTSTORE_VAULT=str(target))
    with Vault.open(target, "test") as vault:
        vault.journal.append([lifecycle("agent-0000020", "active", activatedAt=6)])
        expected = vault.journal.state_digest()
    # A new vault identity: an incremental has no parent of its own yet.
    refused = run(env, "backup", "--incremental")
    assert refused.returncode == 2, refused.stderr
    assert run(env, "backup", "--full").returncode == 0
    assert run(env, "backup", "--incremental").returncode == 0
    again = tmp_path / "again"
    done = run(source.env(), "restore", "latest", "--target", str(again))
    assert done.returncode == 0, done.stderr
    assert restored_digest(again) == expected


def test_a_second_copy_of_the_vault_cannot_chain_on_the_firsts_snapshots(
    source: Source, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    assert run(source.env(), "restore", "--target", str(copy)).returncode == 0
    source.append([lifecycle("agent-0000021", "active", activatedAt=7)])
    source.backup("incremental", 1_800_000_300_000)  # the original moves on
    env = source.env(VAULTSTORE_VAULT=str(copy))
    refused = run(env, "backup", "--incremental")
    assert refused.returncode == 2 and "copy of the vault" in refused.stderr
    assert run(env, "backup", "--full").returncode == 0


def test_a_replacing_restore_killed_between_its_renames_is_repaired(
    source: Source, tmp_path: Path
) -> None:
    target = tmp_path / "live"
    assert run(source.env(), "restore", "1", "--target", str(target)).returncode == 0
    killed = run(
        source.env(VAULTSTORE_FAULT_POINT="restore.between-renames"),
        "restore",
        "--target",
        str(target),
        "--replace",
    )
    assert killed.returncode == -9
    assert not target.exists() and (tmp_path / ".live.old").exists()
    # The next restore puts the old vault back first, then replaces it.
    refused = run(source.env(), "restore", "--target", str(target))
    assert refused.returncode == 2  # the target is back, and exists
    assert restored_digest(target) == source.digests[0]
    done = run(source.env(), "restore", "--target", str(target), "--replace")
    assert done.returncode == 0, done.stderr
    assert restored_digest(target) == source.digests[-1]
    assert not (tmp_path / ".live.old").exists()


def test_the_restored_vault_keeps_rollback_protection(
    source: Source, tmp_path: Path
) -> None:
    target = tmp_path / "guarded"
    assert run(source.env(), "restore", "--target", str(target)).returncode == 0
    env = source.env(VAULTSTORE_VAULT=str(target))
    newest = source.repo_dir / "snapshots" / "0000000003"
    newest.rename(tmp_path / "withheld")  # an attacker hides the newest snapshot
    listed = run(env, "snapshots")
    assert listed.returncode == 3 and "rolled back" in listed.stderr
