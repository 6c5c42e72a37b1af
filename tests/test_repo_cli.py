"""backup / snapshots / check through the command line, on a real vault and journal."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vaultstore.cli import repo_cmds
from vaultstore.cli.common import Settings
from vaultstore.errors import VaultstoreError
from vaultstore.journal import Event
from vaultstore.model import EMPTY_DIGEST, digest_add, record_hash
from vaultstore.ops.backup import init_repository, open_repository
from vaultstore.store.local import LocalStore
from vaultstore.vault import Vault

PASSWORD = "correct horse battery staple 1A!"
MNEMONIC = (
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon "
    "abandon abandon about"
)


def balances(agent: str, amount: int) -> list[dict[str, object]]:
    return [
        {
            "agentId": agent,
            "chain": "evm",
            "token": "ETH",
            "balance": str(amount),
            "lastUpdated": 1_796_000_000_000,
        }
    ]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    vault_dir, repo_dir = tmp_path / "vault", tmp_path / "repo"
    vault = Vault.create(vault_dir, PASSWORD, MNEMONIC, "test")
    init_repository(vault, LocalStore(repo_dir), PASSWORD)
    vault.journal.append(
        [Event("balances", f"agent-{n}", balances(f"agent-{n}", n)) for n in range(200)]
    )
    vault.close()
    return vault_dir, repo_dir


@click.group()
@click.option("--vault", type=click.Path(path_type=Path))
@click.option("--repo")
@click.pass_context
def cli(ctx: click.Context, vault: Path, repo: str) -> None:
    # The same Settings the real top-level group builds (vaultstore.cli.main).
    ctx.obj = Settings(vault, repo, None, None, None)


repo_cmds.register(cli)


class Outcome:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code, self.output = exit_code, output


def run(vault_dir: Path, repo_dir: Path, *args: str) -> Outcome:
    env = {"VAULTSTORE_PASSWORD": PASSWORD}
    result = CliRunner().invoke(
        cli, ["--vault", str(vault_dir), "--repo", str(repo_dir), *args], env=env
    )
    if isinstance(result.exception, VaultstoreError):
        # what vaultstore.cli.main.main() does with it
        return Outcome(result.exception.exit_code, result.output)
    return Outcome(result.exit_code, result.output)


def test_backup_snapshots_check(setup: tuple[Path, Path]) -> None:
    vault_dir, repo_dir = setup
    result = run(vault_dir, repo_dir, "backup", "--full", "--json")
    assert result.exit_code == 0, result.output
    full = json.loads(result.output)
    assert full["records_added"] == 200 and full["type"] == "full"

    vault = Vault.open(vault_dir, "test")
    vault.journal.append(
        [
            Event("balances", "agent-3", balances("agent-3", 99)),
            Event("remove", "agent-4", None),
        ]
    )
    expected = vault.journal.state_digest()
    vault.close()

    result = run(vault_dir, repo_dir, "backup", "--incremental", "--json")
    assert result.exit_code == 0, result.output
    inc = json.loads(result.output)
    assert inc["records_added"] == 1 and inc["bytes_added"] < full["bytes_added"] / 4

    result = run(vault_dir, repo_dir, "snapshots", "--json")
    rows = json.loads(result.output)
    assert [r["type"] for r in rows] == ["full", "incremental"]
    assert rows[1]["parent"] == rows[0]["id"] and rows[1]["agents"] == 199

    result = run(vault_dir, repo_dir, "check", "--read-data")
    assert result.exit_code == 0 and "no problems" in result.output

    vault = Vault.open(vault_dir, "test")
    repo = open_repository(vault, LocalStore(repo_dir), PASSWORD)
    digest = EMPTY_DIGEST
    for record in repo.iter_state(repo.resolve("latest")[-1]):
        digest = digest_add(digest, record_hash(record))
    assert digest == expected
    vault.close()

    pack = next(p for p in (repo_dir / "data").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[20] ^= 4
    pack.chmod(0o600)
    pack.write_bytes(bytes(data))
    result = run(vault_dir, repo_dir, "check", "--read-data")
    assert result.exit_code == 3
    assert "DAMAGED" in result.output and "snapshots affected" in result.output


def test_incremental_first_is_a_usage_error(setup: tuple[Path, Path]) -> None:
    vault_dir, repo_dir = setup
    result = run(vault_dir, repo_dir, "backup", "--incremental")
    assert result.exit_code == 2
