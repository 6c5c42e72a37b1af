"""Damage campaign (RELIABILITY.md cases 5-9): every kind of object, every kind of harm.

A pristine repository holds four snapshots (full 1, incremental 2, full 3,
incremental 4), one pack each. Each test copies it, damages one thing, then:

- ``vaultstore check --read-data --json`` exits 3 and names the damaged
  object and the snapshots that depend on it;
- a restore of every named snapshot is refused (exit 3, nothing written), and
  every snapshot *not* named still restores to its recorded digest — so the
  list of dependants is exactly right, not just non-empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from tests.campaign_support import (
    PASSWORD,
    T0,
    Source,
    agent_events,
    files_under,
    flip_bit,
    lifecycle,
    open_repo,
    restore_digest,
    run_main,
)
from vaultstore.errors import VaultstoreError
from vaultstore.journal import Event
from vaultstore.repo.manifest import HEADER, MAC_SIZE, SHA_SIZE


class Pristine:
    """Four snapshots, the pack each one wrote, and a second unrelated repository."""

    def __init__(self, root: Path) -> None:
        self.src = Source(root / "src")
        self.packs: dict[int, Path] = {}
        steps: list[tuple[str, list[Event]]] = [
            ("full", list(agent_events(range(40)))),
            (
                "incremental",
                [
                    *agent_events(range(38, 50), wei=9),
                    Event("remove", "agent-00002", None),
                ],
            ),
            ("full", list(agent_events(range(50, 55)))),
            (
                "incremental",
                [
                    Event(
                        "lifecycle",
                        "agent-00007",
                        lifecycle(7, "suspended", suspendedAt=T0 + 5),
                    )
                ],
            ),
        ]
        seen: set[Path] = set()
        self.digests: dict[int, bytes] = {}
        for seq, (kind, events) in enumerate(steps, start=1):
            self.src.append(events)
            self.src.backup(kind, T0 + seq * 1000)
            self.digests[seq] = self.src.digest()
            new = set(files_under(self.src.repo_dir / "data")) - seen
            assert len(new) == 1
            self.packs[seq] = new.pop()
            seen |= new | {self.packs[seq]}
        # Another repository: same password, same seed, same data.
        self.other = Source(root / "other")
        self.other.append(steps[0][1])
        self.other.backup("full", T0 + 1000)
        self.other.append(steps[1][1])
        self.other.backup("incremental", T0 + 2000)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("pristine"))


def rel(pristine: Pristine, path: Path) -> str:
    return str(path.relative_to(pristine.src.repo_dir))


def manifest(seq: int) -> str:
    return f"snapshots/{seq:010d}"


def replace_bytes(path: Path, data: bytes) -> None:
    os.chmod(path, 0o600)
    path.write_bytes(data)


Damage = Callable[[Pristine, Path], str]  # returns what the report must name


def pack_flip(offset: int) -> Damage:
    def damage(p: Pristine, repo: Path) -> str:
        name = rel(p, p.packs[1])
        size = (repo / name).stat().st_size
        flip_bit(repo / name, offset if offset >= 0 else size + offset, 3)
        return name.rsplit("/", 1)[-1]

    return damage


def pack_truncate(p: Pristine, repo: Path) -> str:
    name = rel(p, p.packs[1])
    data = (repo / name).read_bytes()
    replace_bytes(repo / name, data[: len(data) // 2])
    return name.rsplit("/", 1)[-1]


def pack_zero(p: Pristine, repo: Path) -> str:
    name = rel(p, p.packs[2])
    replace_bytes(repo / name, b"")
    return name.rsplit("/", 1)[-1]


def pack_delete(p: Pristine, repo: Path) -> str:
    name = rel(p, p.packs[2])
    (repo / name).unlink()
    return ""  # a missing object is named by what referenced it


def pack_swap(p: Pristine, repo: Path) -> str:
    a, b = repo / rel(p, p.packs[1]), repo / rel(p, p.packs[2])
    da, db = a.read_bytes(), b.read_bytes()
    replace_bytes(a, db)
    replace_bytes(b, da)
    return a.name


def pack_duplicate_appended(p: Pristine, repo: Path) -> str:
    """An object duplicated inside its pack (the pack's bytes doubled in place)."""
    name = rel(p, p.packs[2])
    data = (repo / name).read_bytes()
    replace_bytes(repo / name, data[:8] + data[8:-20] + data[8:])
    return name.rsplit("/", 1)[-1]


def pack_from_other_repository(p: Pristine, repo: Path) -> str:
    name = rel(p, p.packs[1])
    foreign = files_under(p.other.repo_dir / "data")[0]
    replace_bytes(repo / name, foreign.read_bytes())
    return name.rsplit("/", 1)[-1]


def manifest_flip(p: Pristine, repo: Path) -> str:
    flip_bit(repo / manifest(2), 40, 1)
    return manifest(2)


def manifest_truncate(p: Pristine, repo: Path) -> str:
    data = (repo / manifest(1)).read_bytes()
    replace_bytes(repo / manifest(1), data[:-7])
    return manifest(1)


def manifest_zero(p: Pristine, repo: Path) -> str:
    replace_bytes(repo / manifest(3), b"")
    return manifest(3)


def manifest_swap(p: Pristine, repo: Path) -> str:
    one, two = (repo / manifest(1)).read_bytes(), (repo / manifest(2)).read_bytes()
    replace_bytes(repo / manifest(1), two)
    replace_bytes(repo / manifest(2), one)
    return manifest(1)


def manifest_duplicated_over_the_next(p: Pristine, repo: Path) -> str:
    replace_bytes(repo / manifest(4), (repo / manifest(3)).read_bytes())
    return manifest(4)


def manifest_from_other_repository(p: Pristine, repo: Path) -> str:
    replace_bytes(repo / manifest(2), (p.other.repo_dir / manifest(2)).read_bytes())
    return manifest(2)


def manifest_edited_sha_recomputed(p: Pristine, repo: Path) -> str:
    """Case 8: decrypt, edit, re-seal and recompute the SHA-256; only the MAC is old.

    The attacker here even holds the seal key; the MAC key alone stops them.
    """
    codec = open_repo(repo).manifests
    data = (repo / manifest(2)).read_bytes()
    m = codec.decode(data, manifest(2))
    body = m.body()
    body["agents"] = body["agents"] + 1  # claim one more agent
    raw = msgpack.packb(body, use_bin_type=True)
    seq = HEADER.unpack(data[: HEADER.size])[2]
    signed = (
        data[: HEADER.size]
        + hashlib.sha256(raw).digest()
        + codec._sealer.seal(raw, codec._ad(seq))
    )
    old_mac = data[-MAC_SIZE:]
    replace_bytes(repo / manifest(2), signed + old_mac)
    assert len(data[HEADER.size : HEADER.size + SHA_SIZE]) == SHA_SIZE
    return manifest(2)


def manifest_deleted(p: Pristine, repo: Path) -> str:
    (repo / manifest(1)).unlink()
    return "snapshot 2"


DAMAGES: dict[str, tuple[list[int], Damage]] = {
    # name: (reliability cases, damage)
    "pack-bitflip-middle": ([5], pack_flip(600)),
    # The header magic is outside every object's AEAD: check flags the pack,
    # restore may still read its (authenticated) objects -- but never wrong data.
    "pack-bitflip-header": ([5], pack_flip(3)),
    "pack-bitflip-toc-trailer": ([5], pack_flip(-30)),
    "pack-truncated": ([6], pack_truncate),
    "pack-zero-length": ([6], pack_zero),
    "pack-deleted": ([6], pack_delete),
    "pack-object-duplicated": ([6], pack_duplicate_appended),
    "pack-swapped-with-another": ([7], pack_swap),
    "pack-from-another-repository": ([7], pack_from_other_repository),
    "manifest-bitflip": ([5], manifest_flip),
    "manifest-truncated": ([6], manifest_truncate),
    "manifest-zero-length": ([6], manifest_zero),
    "manifest-deleted-parent": ([6, 13], manifest_deleted),
    "manifest-duplicated-over-next": ([6, 7], manifest_duplicated_over_the_next),
    "manifest-swapped": ([7], manifest_swap),
    "manifest-from-another-repository": ([7], manifest_from_other_repository),
    "manifest-edited-sha-recomputed": ([8], manifest_edited_sha_recomputed),
}


def _case(name: str) -> object:
    cases, damage = DAMAGES[name]
    return pytest.param(damage, id=name, marks=pytest.mark.reliability(*cases))


@pytest.mark.parametrize("damage", [_case(n) for n in DAMAGES])
def test_damage_is_named_with_its_snapshots_and_refused(
    pristine: Pristine, tmp_path: Path, damage: Damage, request: pytest.FixtureRequest
) -> None:
    work = pristine.src.copy_to(tmp_path / "w")
    named = damage(pristine, work.repo_dir)
    header_only = request.node.callspec.id == "pack-bitflip-header"

    check = run_main(work.env(), "check", "--read-data", "--json")
    assert check.code == 3, check.out + check.err
    report = json.loads(check.out)
    assert not report["ok"]
    problems = report["problems"]
    described = json.dumps(problems)
    assert named in described, (named, described)
    affected = {int(s.split(":")[0]) for p in problems for s in p["snapshots"]}
    assert affected, "no dependent snapshot named"
    assert PASSWORD not in check.out + check.err

    # Every named snapshot is refused; every other one still restores exactly.
    for seq, digest in pristine.digests.items():
        target = tmp_path / f"r{seq}"
        if seq in affected:
            try:
                restored = restore_digest(work.repo_dir, target, str(seq))
            except VaultstoreError as refused:
                assert refused.exit_code in (3, 12), refused
                assert not target.exists()
            else:
                assert header_only and restored == digest, (seq, "restored anyway")
        elif (work.repo_dir / manifest(seq)).exists():
            assert restore_digest(work.repo_dir, target, str(seq)) == digest, seq
    # Through the real command line: exit 3, no target, no staging leftovers.
    worst = max(affected)
    if header_only:
        return
    target = tmp_path / "cli-target"
    done = run_main(
        work.env(VAULTSTORE_VAULT=str(tmp_path / "fresh")),
        "restore",
        str(worst),
        "--target",
        str(target),
    )
    assert done.code in (3, 12), done.err
    assert not target.exists()
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".cli-target")
    ] == []


@pytest.mark.reliability(9)
def test_old_manifest_replayed_as_latest_is_refused_with_a_vault(
    pristine: Pristine, tmp_path: Path
) -> None:
    work = pristine.src.copy_to(tmp_path / "w")
    # The vault has seen sequence 4; the attacker deletes 3 and 4.
    for seq in (3, 4):
        (work.repo_dir / manifest(seq)).unlink()
    for args in (("snapshots",), ("backup", "--incremental")):
        done = run_main(work.env(), *args)
        assert done.code == 3, (args, done.err)
        assert "roll" in done.err.lower() or "sequence" in done.err.lower(), done.err
    # An old genuine manifest written back under the newest name is refused too.
    old = (pristine.src.repo_dir / manifest(2)).read_bytes()
    (work.repo_dir / manifest(4)).write_bytes(old)
    check = run_main(work.env(), "check", "--read-data", "--json")
    assert check.code == 3
    assert manifest(4) in check.out


@pytest.mark.reliability(6)
@pytest.mark.parametrize("harm", ["deleted", "damaged", "truncated"])
def test_index_deleted_or_damaged_is_rebuilt_from_the_packs(
    pristine: Pristine, tmp_path: Path, harm: str
) -> None:
    work = pristine.src.copy_to(tmp_path / "w")
    index = next((work.vault_dir / "cache").rglob("index"))
    if harm == "deleted":
        index.unlink()
    elif harm == "damaged":
        flip_bit(index, 20, 2)
    else:
        replace_bytes(index, index.read_bytes()[:9])
    check = run_main(work.env(), "check", "--read-data")
    assert check.code == 0, check.out + check.err
    assert index.exists() and index.stat().st_size > 9
    work.append(agent_events(range(60, 62)))
    backup = run_main(work.env(), "backup", "--incremental", "--json")
    assert backup.code == 0, backup.err
    # Nothing stored twice: only the two new records went into the new pack.
    assert json.loads(backup.out)["records_added"] == 2
    assert restore_digest(work.repo_dir, tmp_path / "r") == work.digest()


@pytest.mark.reliability(5)
def test_damaged_repository_config_is_refused(
    pristine: Pristine, tmp_path: Path
) -> None:
    work = pristine.src.copy_to(tmp_path / "w")
    flip_bit(work.repo_dir / "config", 12)
    for args in (("check", "--read-data"), ("snapshots",)):
        done = run_main(work.env(), *args)
        assert done.code == 3, (args, done.err)
        assert "config" in done.err


@pytest.mark.reliability(7)
def test_another_repositorys_key_file_does_not_open_this_one(
    pristine: Pristine, tmp_path: Path
) -> None:
    work = pristine.src.copy_to(tmp_path / "w")
    shutil.rmtree(work.repo_dir / "keys")
    shutil.copytree(pristine.other.repo_dir / "keys", work.repo_dir / "keys")
    done = run_main(
        work.env(VAULTSTORE_VAULT=str(tmp_path / "fresh")),
        "restore",
        "--target",
        str(tmp_path / "t"),
    )
    assert done.code == 3, done.err
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------- the journal


def _journal_with_torn_tail(vault: Path, a: list[Event], b: list[Event]) -> None:
    """Commit A then B in a child process that is SIGKILLed (no checkpoint)."""
    from vaultstore.journal import Journal

    pid = os.fork()
    if pid == 0:
        try:
            journal = Journal.create(vault)
            journal.append(a)
            journal.append(b)
        finally:
            os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)


@pytest.mark.reliability(3)
@pytest.mark.parametrize("cut", [1, 100, 4000])
def test_torn_last_journal_record_is_dropped_and_the_journal_opens(
    tmp_path: Path, cut: int
) -> None:
    from vaultstore.journal import Journal

    a = list(agent_events(range(30)))
    b = list(agent_events(range(30, 33)))
    reference = tmp_path / "ref"
    with Journal.create(reference) as journal:
        journal.append(a)
        digest_a, lsn_a = journal.state_digest(), journal.last_lsn()
    vault = tmp_path / "vault"
    _journal_with_torn_tail(vault, a, b)
    wal = vault / "journal.db-wal"
    size = wal.stat().st_size
    assert size > 4096, "the kill left no write-ahead log to tear"
    with open(wal, "r+b") as fh:  # the last write reached the disk only in part
        fh.truncate(size - cut)
    with Journal.open(vault) as journal:
        assert journal.last_lsn() == lsn_a
        assert journal.state_digest() == digest_a
        assert journal.verify_projection() == []
        journal.append(b)  # and it takes new writes
        assert journal.last_lsn() == lsn_a + len(b)


def _corrupt_table_page(db: Path, table: str) -> int:
    """Overwrite the middle of one leaf page of ``table``; returns its number."""
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = [
            row[0]
            for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'"
                " ORDER BY pageno",
                (table,),
            )
        ]
    finally:
        conn.close()
    assert len(pages) >= 3, pages
    page = pages[len(pages) // 2]
    data = bytearray(db.read_bytes())
    start = (page - 1) * page_size
    data[start + 8 : start + page_size - 8] = os.urandom(page_size - 16)
    replace_bytes(db, bytes(data))
    return page


@pytest.fixture
def big_journal(tmp_path: Path) -> Source:
    src = Source(tmp_path / "s")
    src.append(agent_events(range(400)))
    return src


@pytest.mark.reliability(4)
def test_corrupt_projection_page_is_refused_by_backup(big_journal: Source) -> None:
    src = big_journal
    _corrupt_table_page(src.vault_dir / "journal.db", "agents")
    before = sorted(p.name for p in files_under(src.repo_dir / "snapshots"))
    # (A full after an earlier full reads only the rows changed since it, so
    # the first full is the backup that must read -- and refuse -- every row.)
    for args in (("backup", "--full"),):
        done = run_main(src.env(), *args)
        assert done.code == 3, (args, done.code, done.err)
        assert "journal" in done.err.lower() or "corrupt" in done.err.lower()
        assert "Traceback" not in done.err
    # Nothing was published from a corrupt journal; the repository is intact.
    assert sorted(p.name for p in files_under(src.repo_dir / "snapshots")) == before
    # The repository is untouched; check now also scans the journal and
    # reports its damaged page.
    checked = run_main(src.env(), "check", "--read-data")
    assert checked.code == 3, checked.err
    assert "journal problems" in checked.out
