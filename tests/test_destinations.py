"""Several destinations through the real command line: a local primary, an S3 secondary.

The secondary is the session's moto server over HTTP. "S3 unreachable" is
the same destination URL pointed at a port nothing listens on (the config
file's ``endpoint``), so the vault's record of what is behind stays keyed by
the same URL when S3 comes back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import s3server
from tests.s3_cli_support import (
    MNEMONIC,
    balance_changes,
    cli_env,
    closed_port,
    create_bucket,
    events_ndjson,
    journal_digest,
    local_names,
    run_main,
    s3_names,
)
from vaultstore.errors import EXIT_PARTIAL, StoreError
from vaultstore.ops.sync import sync_secondaries
from vaultstore.store.base import Store
from vaultstore.store.local import LocalStore
from vaultstore.store.replica import ReplicatedStore, sync

s3_endpoint = s3server.s3_endpoint
s3_credentials = s3server.s3_credentials


class Site:
    """A vault whose config file names a local primary and an S3 secondary."""

    def __init__(self, root: Path, endpoint: str) -> None:
        self.root = root
        self.endpoint = endpoint
        self.vault = root / "vault"
        self.local = root / "local-repo"
        self.bucket = f"dest-{uuid.uuid4().hex[:12]}"
        self.s3_url = f"s3://{self.bucket}/mirror"
        self.config = root / "vaultstore.toml"
        create_bucket(endpoint, self.bucket)
        self.reachable(True)
        self.env = cli_env(self.vault, VAULTSTORE_CONFIG=str(self.config))

    def reachable(self, up: bool) -> None:
        endpoint = self.endpoint if up else f"http://127.0.0.1:{closed_port()}"
        self.config.write_text(
            "destinations = [\n"
            f'  "{self.local}",\n'
            f'  {{url = "{self.s3_url}", endpoint = "{endpoint}"}},\n'
            "]\n"
        )

    def run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        result = run_main(self.env, *args, stdin=stdin)
        return result.code, result.out, result.err

    def json(self, *args: str, code: int = 0) -> Any:
        got, out, err = self.run(*args, "--json")
        assert got == code, (args, got, err)
        return json.loads(out)

    def s3(self) -> list[str]:
        return s3_names(self.endpoint, self.s3_url)

    def primary(self) -> list[str]:
        return [n for n in local_names(self.local) if not n.startswith("locks/")]


@pytest.fixture
def site(s3_endpoint: str, s3_credentials: None, tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path, s3_endpoint)
    code, out, err = site.run("init", "--mnemonic-stdin", stdin=MNEMONIC + "\n")
    assert code == 0, err
    site.json("ingest", str(events_ndjson(tmp_path / "a.ndjson", range(30))))
    yield site


def _fresh_restore(site: Site, target: Path, **repo: str) -> Any:
    env = cli_env(site.root / "no-vault-here", **repo)
    result = run_main(env, "restore", "latest", "--target", str(target), "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.mark.s3
def test_s3_down_partial_then_sync_catches_up(site: Site) -> None:
    full = site.json("backup", "--full")
    assert full["partial"] is False and full["failedDestinations"] == []
    assert full["caughtUp"] == []
    assert site.s3() == site.primary()

    # S3 becomes unreachable: the backup is committed locally and exits 6.
    site.reachable(False)
    site.json("ingest", str(balance_changes(site.root / "b.ndjson", range(5), 42)))
    code, out, err = site.run("backup", "--incremental", "--json")
    assert code == EXIT_PARTIAL, err
    inc = json.loads(out)
    assert inc["partial"] is True
    assert inc["failedDestinations"] == [site.s3_url + "/"]
    assert "partial" in err and site.s3_url in err
    assert "snapshots/0000000002" in site.primary()
    assert "snapshots/0000000002" not in site.s3()
    status = site.json("status")["lastBackup"]
    assert status["partial"] is True and status["snapshot"] == inc["snapshot"]

    # The partial snapshot restores from the local primary alone.
    local = _fresh_restore(
        site, site.root / "from-local", VAULTSTORE_REPOSITORY=str(site.local)
    )
    assert local["snapshot"] == inc["snapshot"]
    assert local["digest"] == journal_digest(site.vault)

    # Still down: sync reports it and exits 6, copying nothing.
    code, out, err = site.run("sync", "--json")
    assert code == EXIT_PARTIAL, err
    report = json.loads(out)
    assert report["partial"] is True
    assert report["destinations"][0]["ok"] is False
    assert report["destinations"][0]["error"]

    # S3 is back: sync copies what it lacks, manifests included.
    site.reachable(True)
    report = site.json("sync")
    assert report["partial"] is False
    [dest] = report["destinations"]
    assert dest["ok"] is True and dest["manifestsCopied"] == ["snapshots/0000000002"]
    assert dest["objectsCopied"] >= 2 and dest["bytesCopied"] > 0
    assert site.s3() == site.primary()
    again = site.json("sync")
    assert again["destinations"][0]["objectsCopied"] == 0

    # A restore from S3 alone gives the same state; S3 checks clean on its own.
    s3_only = {
        "VAULTSTORE_REPOSITORY": site.s3_url,
        "VAULTSTORE_S3_ENDPOINT": site.endpoint,
    }
    remote = _fresh_restore(site, site.root / "from-s3", **s3_only)
    assert remote["snapshot"] == inc["snapshot"]
    assert remote["digest"] == local["digest"]
    code, out, err = site.run("--repo", site.s3_url, "check", "--read-data")
    assert code == 0, err
    assert "no problems" in out


@pytest.mark.s3
def test_next_backup_catches_s3_up(site: Site) -> None:
    site.reachable(False)
    code, out, err = site.run("backup", "--full", "--json")
    assert code == EXIT_PARTIAL, err
    first = json.loads(out)
    # init reached S3 (config and key), the snapshot did not.
    assert not any(n.startswith("snapshots/") for n in site.s3())

    site.reachable(True)
    site.json("ingest", str(balance_changes(site.root / "b.ndjson", range(3), 5)))
    second = site.json("backup", "--incremental")
    assert second["partial"] is False and second["parent"] == first["snapshot"]
    [caught_up] = second["caughtUp"]
    assert caught_up["url"] == site.s3_url + "/" and caught_up["objectsCopied"] >= 2
    assert site.s3() == site.primary()
    assert site.json("status")["lastBackup"]["partial"] is False

    remote = _fresh_restore(
        site,
        site.root / "from-s3",
        VAULTSTORE_REPOSITORY=site.s3_url,
        VAULTSTORE_S3_ENDPOINT=site.endpoint,
    )
    assert remote["snapshot"] == second["snapshot"]
    assert remote["digest"] == journal_digest(site.vault)


def test_sync_without_secondaries(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "vault", VAULTSTORE_REPOSITORY=str(tmp_path / "repo"))
    assert run_main(env, "init", "--mnemonic-stdin", stdin=MNEMONIC + "\n").code == 0
    result = run_main(env, "sync")
    assert result.code == 0, result.err
    assert "nothing to sync" in result.out


def test_sync_without_vault(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "vault", VAULTSTORE_REPOSITORY=str(tmp_path / "repo"))
    result = run_main(env, "sync")
    assert result.code == 12, result.err
    assert "no vault" in result.err


# -- the operation and the copy order, on local stores ------------------------------


def _fill(store: Store, manifests: int) -> None:
    for n in range(1, manifests + 1):
        store.put(f"data/0{n}/pack{n}", b"pack %d" % n)
        store.put(f"snapshots/{n:010d}", b"manifest %d" % n)


def test_sync_secondaries_repairs_behind_and_unmarked(tmp_path: Path) -> None:
    primary = LocalStore(tmp_path / "p")
    behind, unmarked = LocalStore(tmp_path / "s1"), LocalStore(tmp_path / "s2")
    _fill(primary, 2)
    primary.put("locks/prune", b"held")
    replicated = ReplicatedStore(primary, [behind, unmarked], tmp_path / "state.json")
    replicated._mark_behind(behind, "data/01/pack1", OSError("down"))
    assert replicated.failed_destinations == [behind.url]

    report = sync_secondaries(replicated)
    assert not report.partial and report.failed_destinations == []
    for store in (behind, unmarked):
        assert list(store.list()) == [n for n in primary.list() if n != "locks/prune"]
    assert report.as_dict()["destinations"][0]["manifestsCopied"] == [
        "snapshots/0000000001",
        "snapshots/0000000002",
    ]
    # The state file forgets the repaired secondary.
    assert ReplicatedStore(primary, [behind], tmp_path / "state.json").partial is False


class _Unreachable(LocalStore):
    def list(self, prefix: str = "") -> Iterator[str]:
        raise StoreError("unreachable for the test")


def test_sync_secondaries_names_the_one_still_down(tmp_path: Path) -> None:
    primary = LocalStore(tmp_path / "p")
    _fill(primary, 1)
    good, down = LocalStore(tmp_path / "good"), _Unreachable(tmp_path / "down")
    replicated = ReplicatedStore(primary, [good, down], tmp_path / "state.json")
    report = sync_secondaries(replicated)
    assert report.partial and report.failed_destinations == [down.url]
    assert report.destinations[0].ok and report.destinations[0].copied
    assert "unreachable for the test" in (report.destinations[1].error or "")


class _RacingPrimary(LocalStore):
    """A primary on which a backup publishes a snapshot in the middle of a listing.

    A full listing walks ``data/`` before ``snapshots/``; the backup writes its
    pack and then its manifest between the two, as a real one can.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.raced = False

    def list(self, prefix: str = "") -> Iterator[str]:
        if prefix or self.raced:
            yield from super().list(prefix)
            return
        self.raced = True
        yield from [n for n in super().list() if not n.startswith("snapshots/")]
        self.put("data/09/late-pack", b"late pack")
        self.put("snapshots/0000000009", b"late manifest")
        yield from super().list("snapshots/")


def test_sync_never_copies_a_manifest_without_its_objects(tmp_path: Path) -> None:
    primary = _RacingPrimary(tmp_path / "p")
    _fill(primary, 1)
    secondary = LocalStore(tmp_path / "s")
    result = sync(primary, secondary)
    copied = set(result.copied)
    # The late manifest may be copied only together with its pack.
    if "snapshots/0000000009" in copied:
        assert "data/09/late-pack" in copied
    assert {"data/01/pack1", "snapshots/0000000001"} <= copied
    sync(primary, secondary)
    assert list(secondary.list()) == list(primary.list())


def test_locks_stay_on_the_primary(tmp_path: Path) -> None:
    primary, secondary = LocalStore(tmp_path / "p"), LocalStore(tmp_path / "s")
    replicated = ReplicatedStore(primary, [secondary], tmp_path / "state.json")
    replicated.put("locks/shared-1", b"heartbeat")
    replicated.put("locks/shared-1", b"heartbeat 2", overwrite=True)
    replicated.put("data/01/pack1", b"pack")
    assert list(primary.list()) == ["data/01/pack1", "locks/shared-1"]
    assert list(secondary.list()) == ["data/01/pack1"]
    replicated.delete("locks/shared-1")
    assert not primary.exists("locks/shared-1")
    assert not replicated.partial
