"""An S3 repository end to end through the real command line.

The repository lives on a moto server process on 127.0.0.1, reached over
HTTP exactly as S3 would be (``VAULTSTORE_REPOSITORY=s3://bucket/prefix``,
``VAULTSTORE_S3_ENDPOINT``): init, ingest, full and incremental backups,
snapshots, ``check --read-data``, and a restore on a machine that never saw
the vault. Then the server is killed in the middle of a backup and restarted:
the run fails cleanly, the rerun succeeds, and the repository checks clean.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import s3server
from tests.s3_cli_support import (
    MNEMONIC,
    PrivateS3Server,
    balance_changes,
    cli_env,
    create_bucket,
    events_ndjson,
    journal_digest,
    run_main,
    s3_names,
)
from vaultstore import faults
from vaultstore.errors import EXIT_PARTIAL, StoreError

s3_endpoint = s3server.s3_endpoint
s3_credentials = s3server.s3_credentials

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("s3_credentials")]


def _init(env: dict[str, str]) -> None:
    result = run_main(env, "init", "--mnemonic-stdin", stdin=MNEMONIC + "\n")
    assert result.code == 0, result.err
    assert "created" in result.out


def _json(env: dict[str, str], *args: str) -> Any:
    result = run_main(env, *args, "--json")
    assert result.code == 0, (args, result.err)
    return json.loads(result.out)


def test_s3_repository_end_to_end(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    create_bucket(s3_endpoint, bucket)
    url = f"s3://{bucket}/fleet/prod"
    vault = tmp_path / "vault"
    env = cli_env(vault, VAULTSTORE_REPOSITORY=url, VAULTSTORE_S3_ENDPOINT=s3_endpoint)

    _init(env)
    assert (
        _json(env, "ingest", str(events_ndjson(tmp_path / "a.ndjson", range(40))))[
            "applied"
        ]
        == 120
    )
    full = _json(env, "backup", "--full")
    assert full["type"] == "full" and full["agents"] == 40
    assert full["partial"] is False and full["failedDestinations"] == []

    changes = balance_changes(tmp_path / "b.ndjson", range(0, 40, 10), wei=7)
    _json(env, "ingest", str(changes))
    _json(env, "ingest", str(events_ndjson(tmp_path / "c.ndjson", range(40, 43))))
    inc = _json(env, "backup", "--incremental")
    assert inc["type"] == "incremental" and inc["records_added"] == 7
    assert inc["bytes_added"] < full["bytes_added"]

    # Everything is really in the bucket, under the prefix, over HTTP.
    names = s3_names(s3_endpoint, url)
    assert "config" in names
    assert [n for n in names if n.startswith("snapshots/")] == [
        "snapshots/0000000001",
        "snapshots/0000000002",
    ]
    assert any(n.startswith("data/") for n in names)

    # The global option does what the environment variable does.
    flag_env = {k: v for k, v in env.items() if k != "VAULTSTORE_S3_ENDPOINT"}
    rows = _json(flag_env, "--s3-endpoint", s3_endpoint, "snapshots")
    assert [r["type"] for r in rows] == ["full", "incremental"]
    assert [r["sequence"] for r in rows] == [1, 2]
    assert rows[1]["parent"] == rows[0]["id"] == full["snapshot"]
    assert rows[1]["agents"] == 43

    check = run_main(env, "check", "--read-data")
    assert check.code == 0, check.err
    assert "no problems" in check.out

    status = _json(env, "status")
    assert status["lastBackup"]["snapshot"] == inc["snapshot"]
    assert status["lastBackup"]["seq"] == 2
    assert status["lastBackup"]["partial"] is False

    # A fresh machine: no vault, only the location, the endpoint and the password.
    fresh = cli_env(
        tmp_path / "nowhere",
        VAULTSTORE_REPOSITORY=url,
        VAULTSTORE_S3_ENDPOINT=s3_endpoint,
    )
    restored = _json(fresh, "restore", "latest", "--target", str(tmp_path / "r"))
    assert restored["digest"] == journal_digest(vault)
    assert restored["agents"] == 43
    assert journal_digest(tmp_path / "r") == journal_digest(vault)
    assert not (tmp_path / "nowhere").exists()


def test_s3_unreachable_primary_fails_cleanly(tmp_path: Path) -> None:
    """S3 as the only destination and unreachable: exit 10, nothing recorded."""
    server = PrivateS3Server(tmp_path, persist=False)
    server.start()
    try:
        create_bucket(server.endpoint, "down-bucket")
        env = cli_env(
            tmp_path / "vault",
            VAULTSTORE_REPOSITORY="s3://down-bucket/r",
            VAULTSTORE_S3_ENDPOINT=server.endpoint,
        )
        _init(env)
        _json(env, "ingest", str(events_ndjson(tmp_path / "a.ndjson", range(5))))
    finally:
        server.kill()
    result = run_main(env, "backup", "--full")
    assert result.code == StoreError.exit_code, result.err
    assert "down-bucket" in result.err
    assert _json(env, "status")["lastBackup"] is None


@pytest.mark.parametrize(
    "point",
    [
        "repo.manifest.before-write",
        # The same story one step earlier; ~10 s, so only in the slow run.
        pytest.param("repo.pack.before-write", marks=pytest.mark.slow),
    ],
)
def test_s3_server_killed_mid_backup_then_restarted(tmp_path: Path, point: str) -> None:
    server = PrivateS3Server(tmp_path)
    server.start()
    try:
        _killed_mid_backup(server, tmp_path, point)
    finally:
        server.kill()


def _killed_mid_backup(server: PrivateS3Server, tmp_path: Path, point: str) -> None:
    create_bucket(server.endpoint, "crash-bucket")
    url = "s3://crash-bucket/repo"
    vault = tmp_path / "vault"
    env = cli_env(
        vault, VAULTSTORE_REPOSITORY=url, VAULTSTORE_S3_ENDPOINT=server.endpoint
    )
    _init(env)
    _json(env, "ingest", str(events_ndjson(tmp_path / "a.ndjson", range(30))))
    first = _json(env, "backup", "--full")
    changes = balance_changes(tmp_path / "b.ndjson", range(0, 30, 3), wei=99)
    _json(env, "ingest", str(changes))
    before = s3_names(server.endpoint, url)

    def kill_server(name: str) -> None:
        if name == point and server.process is not None:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()

    faults.set_hook(kill_server)
    failed = run_main(env, "backup", "--incremental")
    assert failed.code == StoreError.exit_code, failed.err
    assert "crash-bucket" in failed.err

    server.restart()
    after_crash = s3_names(server.endpoint, url)
    # The restarted server holds what it had; no snapshot of the failed run.
    assert set(before) <= set(after_crash)
    assert [n for n in after_crash if n.startswith("snapshots/")] == [
        "snapshots/0000000001"
    ]
    assert _json(env, "status")["lastBackup"]["snapshot"] == first["snapshot"]

    rerun = _json(env, "backup", "--incremental")
    assert rerun["seq"] == 2 and rerun["records_added"] == 10
    check = run_main(env, "check", "--read-data")
    assert check.code == 0, check.err
    assert "no problems" in check.out

    fresh = cli_env(
        tmp_path / "nowhere",
        VAULTSTORE_REPOSITORY=url,
        VAULTSTORE_S3_ENDPOINT=server.endpoint,
    )
    restored = _json(fresh, "restore", "latest", "--target", str(tmp_path / "r"))
    assert restored["digest"] == journal_digest(vault)


def test_partial_exit_code_is_the_documented_one() -> None:
    assert EXIT_PARTIAL == 6
