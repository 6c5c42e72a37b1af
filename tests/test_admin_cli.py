"""The admin commands: config show, unlock, forget, daemon (adapters faked)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vaultstore.cli import admin_cmds
from vaultstore.cli.common import Settings
from vaultstore.errors import InputError, LockedError
from vaultstore.locks import EXCLUSIVE, LockInfo, RepositoryLock, VaultLock
from vaultstore.retention import SnapshotInfo
from vaultstore.store.local import LocalStore


@click.group()
@click.option("--vault", type=click.Path(path_type=Path), default="vault")
@click.option("--repo", "repository", default=None)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None)
@click.option("--password-file", type=click.Path(path_type=Path), default=None)
@click.pass_context
def root(
    ctx: click.Context,
    vault: Path,
    repository: str | None,
    config_file: Path | None,
    password_file: Path | None,
) -> None:
    ctx.obj = Settings(vault, repository, config_file, password_file, None)


admin_cmds.register(root)


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(root, list(args), catch_exceptions=True)


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    path = tmp_path / "vault"
    path.mkdir(mode=0o700)
    return path


def test_config_show_json_masks_and_reports_next_runs(
    tmp_path: Path, vault: Path
) -> None:
    (vault / "config.toml").write_text(
        'timezone = "Europe/Berlin"\npassword_file = "/etc/vs/pw"\n'
        '[s3]\nbucket = "b"\nregion = "eu-central-1"\n'
        '[local]\npath = "/srv/repo"\n'
    )
    result = invoke("--vault", str(vault), "config", "show", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["config_file"] == str(vault / "config.toml")
    assert [d["url"] for d in shown["destinations"]] == ["/srv/repo", "s3://b"]
    assert shown["password_source"] == "file /etc/vs/pw"
    nxt = datetime.fromisoformat(shown["next_runs"]["incremental"])
    assert (nxt.hour, nxt.minute) == (0, 0) and nxt.utcoffset() in (
        timedelta(hours=1),
        timedelta(hours=2),
    )


def test_config_show_text_and_repo_override(tmp_path: Path, vault: Path) -> None:
    result = invoke("--vault", str(vault), "--repo", "s3://other/x", "config", "show")
    assert result.exit_code == 0, result.output
    assert "primary   s3://other/x" in result.output
    assert "0 0 * * 0" in result.output and "keep_weekly 52" in result.output


def test_config_show_refuses_a_credential(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[s3]\naws_secret_access_key = "canary-secret-value"\n')
    result = invoke("--config", str(path), "config", "show")
    assert isinstance(result.exception, InputError)
    assert "canary-secret-value" not in result.output + str(result.exception)


def snapshots_for_days(days: int) -> list[SnapshotInfo]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days)
    snaps: list[SnapshotInfo] = []
    for day in range(days):
        moment = start + timedelta(days=day)
        kind = "full" if day % 7 == 0 else "incremental"
        parent = snaps[-1].id if kind == "incremental" else None
        snaps.append(SnapshotInfo(f"id{day:03d}", day + 1, kind, moment, parent))  # type: ignore[arg-type]
    return snaps


@pytest.fixture
def fake_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[LocalStore, dict[str, SnapshotInfo], list[str]]:
    store = LocalStore(tmp_path / "repo")
    live = {s.id: s for s in snapshots_for_days(70)}
    deleted: list[str] = []

    def delete(snap: SnapshotInfo) -> None:
        assert store.exists(EXCLUSIVE), "forget must hold the exclusive lock"
        deleted.append(snap.id)
        del live[snap.id]

    access = admin_cmds.RepositoryAccess(
        store=store,
        snapshots=lambda: list(live.values()),
        delete_snapshot=delete,
        prune=lambda: {"bytes_freed": 123},
    )
    monkeypatch.setattr(admin_cmds, "_open_repository", lambda ctx: access)
    return store, live, deleted


def test_forget_dry_run_lists_reasons_and_deletes_nothing(
    vault: Path, fake_repo: tuple[LocalStore, dict[str, SnapshotInfo], list[str]]
) -> None:
    store, live, deleted = fake_repo
    result = invoke("--vault", str(vault), "forget", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert deleted == [] and len(live) == 70
    assert out["dry_run"] is True and out["remove"]
    assert all(d["reasons"] for d in out["keep"] + out["remove"])
    assert len(out["keep"]) + len(out["remove"]) == 70
    assert not store.exists(EXCLUSIVE)


def test_forget_with_keep_options_deletes_children_first_and_prunes(
    vault: Path, fake_repo: tuple[LocalStore, dict[str, SnapshotInfo], list[str]]
) -> None:
    store, live, deleted = fake_repo
    result = invoke(
        "--vault", str(vault), "forget", "--keep-last", "1", "--prune", "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    # keep-last 1 over everything: the newest (an incremental) and its chain.
    kept = {d["id"] for d in out["keep"]}
    assert set(live) == kept
    assert all(live[k].type == "incremental" for k in kept if k != min(kept))
    assert deleted == sorted(deleted, reverse=True)  # highest sequence first
    assert out["prune"] == {"bytes_freed": 123}
    assert not store.exists(EXCLUSIVE)


def test_forget_type_scope_keeps_configured_rules_for_the_other_type(
    vault: Path, fake_repo: tuple[LocalStore, dict[str, SnapshotInfo], list[str]]
) -> None:
    _store, live, _deleted = fake_repo
    fulls_before = {k for k, s in live.items() if s.type == "full"}
    result = invoke(
        "--vault", str(vault), "forget", "--type", "incremental", "--keep-last", "2"
    )
    assert result.exit_code == 0, result.output
    assert "policy: full keep_weekly 52; incremental keep_last 2" in result.output
    assert {k for k, s in live.items() if s.type == "full"} == fulls_before


def test_forget_refuses_while_another_host_holds_the_repository(
    vault: Path, fake_repo: tuple[LocalStore, dict[str, SnapshotInfo], list[str]]
) -> None:
    store, live, deleted = fake_repo
    with RepositoryLock(store, "backup", exclusive=False).acquire():
        result = invoke("--vault", str(vault), "forget")
    assert isinstance(result.exception, LockedError)
    assert result.exception.exit_code == 5
    assert deleted == [] and len(live) == 70


def test_unlock_removes_stale_locks_and_refuses_live_ones(
    tmp_path: Path, vault: Path
) -> None:
    repo = tmp_path / "repo"
    store = LocalStore(repo)
    now = time.time()
    (vault / "lock").write_bytes(
        LockInfo("gone-host", 1, "backup", "aa", now, now, now).to_bytes()
    )
    live = LockInfo("elsewhere", 1, "prune", "bb", now, now, now + 1800).to_bytes()
    store.put(EXCLUSIVE, live)
    stale = LockInfo("elsewhere", 1, "backup", "cc", now - 7200, now - 7200, now)
    store.put("locks/shared-cc", stale.to_bytes())

    result = invoke("--vault", str(vault), "--repo", str(repo), "unlock", "--json")
    assert isinstance(result.exception, LockedError)
    out = json.loads(result.output)
    assert {r["lock"] for r in out["removed"]} == {
        str(vault / "lock"),
        "locks/shared-cc",
    }
    assert store.get(EXCLUSIVE) == live
    assert (vault / "lock").read_bytes() == b""

    forced = invoke("--vault", str(vault), "--repo", str(repo), "unlock", "--force")
    assert forced.exit_code == 0, forced.output
    assert not store.exists(EXCLUSIVE)


def test_unlock_leaves_a_live_vault_lock(vault: Path) -> None:
    with VaultLock(vault, "backup").acquire():
        result = invoke("--vault", str(vault), "unlock", "--force")
    assert isinstance(result.exception, LockedError)
    assert "stop that process" in str(result.exception)


def test_a_second_daemon_on_the_same_vault_is_locked(vault: Path) -> None:
    with VaultLock(vault, "daemon", name=admin_cmds.DAEMON_LOCK).acquire():
        result = invoke("--vault", str(vault), "daemon")
    assert isinstance(result.exception, LockedError)


def test_daemon_runs_backups_through_the_adapter(
    vault: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_repo: tuple[LocalStore, dict[str, SnapshotInfo], list[str]],
) -> None:
    kinds: list[str] = []
    monkeypatch.setattr(admin_cmds, "_run_backup", lambda ctx, kind: kinds.append(kind))

    def one_tick(self: admin_cmds.Daemon) -> int:
        earlier = datetime.now(UTC) - timedelta(days=8)
        self.last_runs = dict.fromkeys(self.last_runs, earlier)
        self.tick()
        self.close()
        return self.runs

    monkeypatch.setattr(admin_cmds.Daemon, "run", one_tick)
    result = invoke("--vault", str(vault), "daemon")
    assert result.exit_code == 0, result.output
    assert kinds == ["full"]
    _store, live, deleted = fake_repo
    assert deleted  # retention ran after the successful run
    assert (vault / admin_cmds.DAEMON_STATE).exists()
