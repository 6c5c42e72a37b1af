"""Legacy JSON: the golden vector, the writer's byte-exactness, import, verify."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from vaultstore.cli import compat_cmds
from vaultstore.cli.common import Settings
from vaultstore.compat.legacy import read_legacy, write_legacy
from vaultstore.errors import (
    AddressMismatchError,
    InputError,
    IntegrityError,
    MisuseError,
    UnsupportedVersionError,
    WrongPasswordError,
)
from vaultstore.model import Record
from vaultstore.ops.exportjson import export_records, export_vault
from vaultstore.ops.importjson import import_json
from vaultstore.ops.verifyjson import load_salt, verify_json
from vaultstore.vault import Vault

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "full-backup.json"
TAMPERED = DATA / "full-backup-tampered.json"
PASSWORD = "Vector-Passw0rd!-2026"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
CHECKSUM = "6418aef0ff6eef36a01a428cfecfae3be00188b7577d687059779bc792c8db15"


@pytest.fixture
def salt() -> bytes:
    return bytes.fromhex((DATA / "encryption-salt.hex").read_text().strip())


@pytest.fixture
def golden_dir(tmp_path: Path, salt: bytes) -> Path:
    """The vectors copied into a directory with a raw ``encryption-salt``."""
    directory = tmp_path / "in"
    directory.mkdir()
    for src in (GOLDEN, TAMPERED):
        (directory / src.name).write_bytes(src.read_bytes())
    (directory / "encryption-salt").write_bytes(salt)
    return directory


def _records_of(path: Path) -> list[Record]:
    """Records in the file's wallet order, lifecycle and balances attached."""
    wallets: list[dict[str, Any]] = []
    life: dict[str, dict[str, Any]] = {}
    balances: dict[str, list[dict[str, Any]]] = {}
    for kind, payload in read_legacy(path):
        if kind == "wallet":
            wallets.append(payload)
        elif kind == "lifecycle":
            life[payload["agentId"]] = payload
        else:
            balances[payload[0]] = payload[1]
    return [
        Record(w["agentId"], w, life.get(w["agentId"]), balances.get(w["agentId"]))
        for w in wallets
    ]


# -- reading the golden vector ----------


def test_golden_reads_with_every_count_and_the_checksum() -> None:
    reader = read_legacy(GOLDEN)
    items = list(reader)
    summary = reader.summary
    assert summary is not None
    assert summary.checksum == CHECKSUM and summary.computed == CHECKSUM
    assert (summary.wallets, summary.lifecycle) == (20, 18)
    assert summary.by_state == {"active": 13, "pending": 2, "suspended": 3}
    assert (summary.balance_lists, summary.balance_entries) == (20, 38)
    wallets = [p for k, p in items if k == "wallet"]
    assert [w["agentId"] for w in wallets] == [f"agent-{i:03d}" for i in range(20)]
    assert [w["derivationIndex"] for w in wallets] == list(range(20))


def test_golden_values_are_exact() -> None:
    items = list(read_legacy(GOLDEN))
    wallets = {p["agentId"]: p for k, p in items if k == "wallet"}
    life = {p["agentId"]: p for k, p in items if k == "lifecycle"}
    balances = dict(p for k, p in items if k == "balances")
    assert wallets["agent-002"]["metadata"] == {
        "label": "Café ✓ 日本",
        "note": 'tab\there "q" </script>',
        "tier": 3,
        "ratio": 0.5,
        "tags": ["a", "b"],
        "ok": True,
        "none": None,
    }
    assert list(wallets["agent-002"]["metadata"]) == [
        "label",
        "note",
        "tier",
        "ratio",
        "tags",
        "ok",
        "none",
    ]
    assert (
        life["agent-012"]["suspensionReason"] == 'Quote "test" / back\\slash\nnewline'
    )
    assert "suspendedAt" not in life["agent-013"]
    assert life["agent-013"]["state"] == "active"
    assert {"agent-014", "agent-015"}.isdisjoint(life)
    assert {a for a, r in life.items() if r["state"] == "suspended"} == {
        "agent-010",
        "agent-011",
        "agent-012",
    }
    assert {a for a, r in life.items() if r["state"] == "pending"} == {
        "agent-018",
        "agent-019",
    }
    big = [e for e in balances["agent-016"] if e["token"] == "ETH"][0]
    assert big["balance"] == "123456789012345678901234567890"
    for agent in ("agent-018", "agent-019"):
        assert [(e["token"], e["balance"]) for e in balances[agent]] == [("ETH", "0")]


def test_tampered_vector_fails_its_checksum() -> None:
    with pytest.raises(IntegrityError, match="Backup checksum validation failed"):
        list(read_legacy(TAMPERED))
    reader = read_legacy(TAMPERED, verify=False)
    list(reader)
    assert reader.summary is not None and not reader.summary.checksum_ok


# -- the writer reproduces the existing service byte for byte ----------


def test_writer_reproduces_the_golden_file_byte_for_byte(tmp_path: Path) -> None:
    reader = read_legacy(GOLDEN)
    records = _records_of(GOLDEN)
    list(reader)
    assert reader.header is not None
    out = tmp_path / "out" / "copy.json"
    checksum = write_legacy(
        out,
        timestamp_ms=reader.header.timestamp,
        backup_type="full",
        encrypted_seed=reader.header.encrypted_seed,
        records=records,
    )
    assert checksum == CHECKSUM
    assert out.read_bytes() == GOLDEN.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["copy.json"]  # no temp left


def test_writer_orders_index_like_agents_first_and_keeps_them_checksummed(
    tmp_path: Path,
) -> None:
    def rec(agent: str, meta: dict[str, Any] | None = None) -> Record:
        wallet = {
            "agentId": agent,
            "derivationIndex": 1,
            "evmAddress": "0x" + "a" * 40,
            "xrpAddress": "r" + "a" * 30,
            "createdAt": 1,
        }
        if meta is not None:
            wallet["metadata"] = meta
        return Record(agent, wallet, None, None)

    out = tmp_path / "b.json"
    write_legacy(
        out,
        timestamp_ms=5,
        backup_type="full",
        encrypted_seed="x",
        records=[
            rec("b"),
            rec("20260101", {"10": 1, "2": 2, "x": 0}),
            rec("007"),
            rec("3"),
        ],
    )
    text = out.read_text()
    parsed = json.loads(text)
    assert list(parsed["balanceSnapshots"]) == ["3", "20260101", "b", "007"]
    assert list(parsed["wallets"][1]["metadata"]) == ["2", "10", "x"]
    assert not text.endswith("\n")
    reader = read_legacy(out)
    list(reader)  # the reader agrees with the writer's checksum
    assert reader.summary is not None and reader.summary.checksum_ok


def test_reader_rehashes_balance_keys_out_of_javascript_order(tmp_path: Path) -> None:
    doc = json.loads(GOLDEN.read_text())
    snaps = doc["balanceSnapshots"]
    snaps["20260101"] = []
    snaps["5"] = []
    # Index-like agents last in the file: JS moves them first after parsing.
    out = tmp_path / "odd.json"
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    reader = read_legacy(_write_text(out, text), verify=False)
    list(reader)
    assert reader.summary is not None
    expected_doc = dict(doc, checksum="")
    import hashlib

    from vaultstore.compat.jsformat import dumps_compact

    expected = hashlib.sha256(dumps_compact(expected_doc).encode()).hexdigest()
    assert reader.summary.computed == expected
    assert list(json.loads(text)["balanceSnapshots"])[-1] == "5"


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- hostile and malformed input ----------


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        (
            '{"version": "2.0", "timestamp": 1, "type": "full", '
            '"encryptedMasterSeed": "x", "wallets": []}',
            UnsupportedVersionError,
            "2.0",
        ),
        ("[1, 2]", InputError, "object"),
        (
            '{"version": "1.0", "timestamp": 1, "type": "full", '
            '"encryptedMasterSeed": "x", "wallets": [{"agentId": "a"}]}',
            InputError,
            r"wallets\[0\]: .*derivationIndex",
        ),
        (
            '{"version": "1.0", "timestamp": 1, "type": "full", '
            '"encryptedMasterSeed": "x", "wallets": [], "lifecycleRecords": '
            '[{"agentId": "a", "state": "gone", "createdAt": 1, "totalTransactions": 0,'
            ' "totalVolume": {}}]}',
            InputError,
            r"lifecycleRecords\[0\]: .*state",
        ),
        (
            '{"version": "1.0", "timestamp": 1, "type": "full", '
            '"encryptedMasterSeed": "x", "wallets": [}',
            InputError,
            "malformed JSON",
        ),
        ('{"version": "1.0", "timestamp": 1', InputError, "malformed|not a legacy"),
        (
            '{"version": "1.0", "timestamp": 1, "type": "full", '
            '"encryptedMasterSeed": "x", "wallets": [], "lifecycleRecords": [], '
            '"balanceSnapshots": {"a": '
            '[{"agentId": "a", "chain": "evm", "token": "ETH", "balance": 5, '
            '"lastUpdated": 1}]}, "checksum": ""}',
            InputError,
            "balance must be",
        ),
    ],
)
def test_malformed_files_are_refused_cleanly(
    tmp_path: Path, text: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        list(read_legacy(_write_text(tmp_path / "bad.json", text)))


def test_deep_nesting_is_refused_before_parsing(tmp_path: Path) -> None:
    depth = 200_000  # would cost ijson gigabytes of prefix strings
    text = (
        '{"version": "1.0", "timestamp": 1, "type": "full", '
        '"encryptedMasterSeed": "x", "wallets": [' + "[" * depth + "]" * depth + "]}"
    )
    with pytest.raises(InputError, match="nested deeper"):
        list(read_legacy(_write_text(tmp_path / "deep.json", text)))


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    doc = json.loads(GOLDEN.read_text())
    doc["wallets"][2]["metadata"]["label"] = "[" * 5000 + '"\\' + "{" * 5000
    import hashlib

    from vaultstore.compat.jsformat import dumps_compact

    doc["checksum"] = ""
    doc["checksum"] = hashlib.sha256(dumps_compact(doc).encode()).hexdigest()
    path = _write_text(
        tmp_path / "s.json", json.dumps(doc, indent=2, ensure_ascii=False)
    )
    reader = read_legacy(path)
    list(reader)
    assert reader.summary is not None and reader.summary.checksum_ok


def test_huge_string_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaultstore.compat import legacy

    monkeypatch.setattr(legacy, "MAX_STRING", 1000)
    monkeypatch.setattr(legacy, "CHUNK", 256)
    text = '{"version": "1.0", "timestamp": 1, "type": "full", "encryptedMasterSeed": "'
    with pytest.raises(InputError, match="longer than"):
        list(read_legacy(_write_text(tmp_path / "h.json", text + "A" * 5000 + '"}')))


# -- salt ----------


def test_salt_accepts_raw_and_hex(tmp_path: Path, salt: bytes) -> None:
    (tmp_path / "raw").write_bytes(salt)
    (tmp_path / "hex").write_text(salt.hex() + "\n")
    assert load_salt(tmp_path / "raw", tmp_path / "f.json") == salt
    assert load_salt(tmp_path / "hex", tmp_path / "f.json") == salt
    (tmp_path / "bad").write_bytes(b"short")
    with pytest.raises(InputError):
        load_salt(tmp_path / "bad", tmp_path / "f.json")


# -- verify ----------


def test_verify_golden_passes_every_check(golden_dir: Path, salt: bytes) -> None:
    report = verify_json(golden_dir / GOLDEN.name, PASSWORD, salt, workers=1)
    assert report.ok, report.failures
    assert report.seed_ok and report.checksum_ok and report.structure_ok
    assert report.addresses_checked == 20 and report.address_mismatches == []


def test_verify_names_each_failure(golden_dir: Path, salt: bytes) -> None:
    tampered = verify_json(golden_dir / TAMPERED.name, PASSWORD, salt, workers=1)
    assert tampered.address_mismatches == ["agent-004"]
    assert [f.split(":")[0] for f in tampered.failures] == ["checksum", "addresses"]
    wrong = verify_json(golden_dir / GOLDEN.name, PASSWORD + "x", salt, workers=1)
    assert not wrong.seed_ok and wrong.failures[0].startswith("seed:")


# -- import ----------


def test_import_golden_creates_the_vault_with_every_state(
    golden_dir: Path, tmp_path: Path
) -> None:
    vault_dir = tmp_path / "vault"
    report = import_json(
        vault_dir, [golden_dir / GOLDEN.name], PASSWORD, profile="test", workers=1
    )
    assert report.created_vault
    assert (report.wallets, report.lifecycle_records, report.balance_lists) == (
        20,
        18,
        20,
    )
    with Vault.open(vault_dir, "test") as vault:
        vault.unlock(PASSWORD)
        assert vault.mnemonic() == MNEMONIC
        counts = vault.journal.counts()
        assert counts["agents"] == 20
        rec = vault.journal.get("agent-016")
        assert rec is not None and rec.balances is not None
        assert rec.balances[0]["balance"] == "123456789012345678901234567890"
        assert vault.journal.get("agent-002").wallet["metadata"]["ratio"] == 0.5
        assert vault.journal.get("agent-014").lifecycle is None
        assert vault.journal.get("agent-012").lifecycle["state"] == "suspended"
    # importing the same file again changes nothing
    again = import_json(
        vault_dir, [golden_dir / GOLDEN.name], PASSWORD, profile="test", workers=1
    )
    assert again.last_lsn == report.last_lsn


def test_import_refuses_the_tampered_vector_and_writes_nothing(
    golden_dir: Path, tmp_path: Path
) -> None:
    vault_dir = tmp_path / "vault"
    with pytest.raises(AddressMismatchError) as info:
        import_json(
            vault_dir, [golden_dir / TAMPERED.name], PASSWORD, profile="test", workers=1
        )
    assert info.value.agents == ["agent-004"]
    assert not vault_dir.exists()


def test_import_refuses_bad_checksum_even_with_valid_addresses(
    golden_dir: Path, tmp_path: Path
) -> None:
    path = golden_dir / GOLDEN.name
    path.write_bytes(path.read_bytes().replace(b'"tier": 3', b'"tier": 4'))
    with pytest.raises(IntegrityError, match="Backup checksum validation failed"):
        import_json(tmp_path / "v", [path], PASSWORD, profile="test", workers=1)
    assert not (tmp_path / "v").exists()


def test_import_wrong_password_writes_nothing(golden_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WrongPasswordError):
        import_json(
            tmp_path / "v",
            [golden_dir / GOLDEN.name],
            "Other-Passw0rd!-2026x",
            profile="test",
            workers=1,
        )
    assert not (tmp_path / "v").exists()


def test_incremental_alone_needs_allow_partial(
    golden_dir: Path, tmp_path: Path
) -> None:
    incremental = _reexport(golden_dir, tmp_path, "incremental")
    with pytest.raises(MisuseError, match="--allow-partial"):
        import_json(tmp_path / "v", [incremental], PASSWORD, profile="test", workers=1)
    report = import_json(
        tmp_path / "v",
        [incremental],
        PASSWORD,
        profile="test",
        workers=1,
        allow_partial=True,
    )
    assert report.wallets == 20


def test_files_are_applied_in_timestamp_order(golden_dir: Path, tmp_path: Path) -> None:
    later = _reexport(golden_dir, tmp_path, "incremental", suspend_013=True)
    report = import_json(
        tmp_path / "v",
        [later, golden_dir / GOLDEN.name],
        PASSWORD,
        profile="test",
        workers=1,
    )
    assert [f["type"] for f in report.files] == ["full", "incremental"]
    with Vault.open(tmp_path / "v", "test") as vault:
        assert vault.journal.get("agent-013").lifecycle["state"] == "suspended"


def test_import_refuses_a_file_with_another_seed(
    golden_dir: Path, tmp_path: Path
) -> None:
    import_json(
        tmp_path / "v", [golden_dir / GOLDEN.name], PASSWORD, profile="test", workers=1
    )
    other = (
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon "
        "abandon abandon about"
    )
    path = export_records(
        tmp_path / "other" / "f.json",
        [],
        backup_type="full",
        mnemonic=other,
        password=PASSWORD,
        timestamp_ms=1,
    )
    with pytest.raises(IntegrityError, match="seed differs"):
        import_json(
            tmp_path / "v", [Path(path.file)], PASSWORD, profile="test", workers=1
        )


def _reexport(
    golden_dir: Path, tmp_path: Path, kind: str, suspend_013: bool = False
) -> Path:
    records = _records_of(golden_dir / GOLDEN.name)
    if suspend_013:
        records = [
            r._replace(lifecycle=dict(r.lifecycle, state="suspended", suspendedAt=9))
            if r.agent_id == "agent-013"
            else r
            for r in records
        ]
    out = tmp_path / kind / "wallet-backup.json"
    export_records(
        out,
        records,
        backup_type=kind,
        mnemonic=MNEMONIC,
        password=PASSWORD,
        timestamp_ms=1796312767857 + 1000,
    )
    return out


# -- export ----------


def test_export_from_vault_round_trips(golden_dir: Path, tmp_path: Path) -> None:
    vault_dir = tmp_path / "vault"
    import_json(
        vault_dir, [golden_dir / GOLDEN.name], PASSWORD, profile="test", workers=1
    )
    with Vault.open(vault_dir, "test") as vault:
        vault.unlock(PASSWORD)
        report = export_vault(
            vault, tmp_path / "out" / "x.json", PASSWORD, timestamp_ms=42
        )
    out = Path(report.file)
    assert report.records == 20
    salt_file = out.parent / "encryption-salt"
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    assert len(salt_file.read_bytes()) == 32
    result = verify_json(out, PASSWORD, salt_file.read_bytes(), workers=1)
    assert result.ok, result.failures
    assert (result.wallets, result.lifecycle_records, result.balance_entries) == (
        20,
        18,
        38,
    )
    golden = {
        tuple(r)
        for r in map(lambda r: json.dumps(r, sort_keys=True), _records_of(GOLDEN))
    }
    exported = {
        tuple(r) for r in map(lambda r: json.dumps(r, sort_keys=True), _records_of(out))
    }
    assert golden == exported


def test_export_reuses_an_existing_salt(tmp_path: Path, salt: bytes) -> None:
    (tmp_path / "encryption-salt").write_bytes(salt)
    report = export_records(
        tmp_path / "a.json",
        [],
        backup_type="full",
        mnemonic=MNEMONIC,
        password=PASSWORD,
        timestamp_ms=1,
    )
    assert (tmp_path / "encryption-salt").read_bytes() == salt
    assert verify_json(Path(report.file), PASSWORD, salt, workers=1).seed_ok


# -- CLI ----------


def _cli(vault: Path) -> click.Group:
    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.obj = Settings(vault, None, None, None, None)

    compat_cmds.register(group)
    return group


def test_cli_verify_import_export(
    golden_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULTSTORE_PASSWORD", PASSWORD)
    cli = _cli(tmp_path / "vault")
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify-json", str(golden_dir / GOLDEN.name), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True
    bad = runner.invoke(cli, ["verify-json", str(golden_dir / TAMPERED.name)])
    assert bad.exit_code != 0 and isinstance(bad.exception, IntegrityError)
    assert "agent-004" in bad.output
    done = runner.invoke(cli, ["import-json", str(golden_dir / GOLDEN.name)])
    assert done.exit_code == 0, done.output
    out = tmp_path / "e.json"
    exp = runner.invoke(cli, ["export-json", "--from-vault", "-o", str(out), "--json"])
    assert exp.exit_code == 0, exp.output
    assert json.loads(exp.output)["records"] == 20
    assert os.path.exists(out)


class _FakeManifest:
    def __init__(self, kind: str, time_ms: int) -> None:
        self.type, self.time_ms = kind, time_ms


class _FakeRepo:
    """The Repository calls export_snapshot makes, over fixed records."""

    def __init__(self, kind: str, records: list[Record]) -> None:
        self.head = _FakeManifest(kind, 1_800_000_000_000)
        self.records = records

    def resolve(self, spec: str = "latest", at_ms: int | None = None) -> list[Any]:
        return [self.head]

    def iter_state(self, manifest: Any) -> Any:
        from vaultstore.model import encode_record

        return (encode_record(r) for r in self.records)

    def iter_changes(self, manifest: Any) -> Any:
        from vaultstore.model import encode_record

        yield from ((r.agent_id, encode_record(r)) for r in self.records)
        yield "agent-gone", None


@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_export_snapshot_full_and_incremental(tmp_path: Path, kind: str) -> None:
    from vaultstore.ops.exportjson import export_snapshot

    monkey_dir = tmp_path / "x"
    monkey_dir.mkdir()
    os.chdir(monkey_dir)
    records = _records_of(GOLDEN)[:5]
    report = export_snapshot(
        _FakeRepo(kind, records), "latest", None, MNEMONIC, PASSWORD
    )
    out = Path(report.file)
    assert out == Path("backups") / "wallet-backup-1800000000000.json"
    assert report.records == 5
    assert report.skipped_removals == (1 if kind == "incremental" else 0)
    reader = read_legacy(out)
    list(reader)
    assert reader.header is not None and reader.header.type == kind
    assert reader.summary is not None and reader.summary.wallets == 5


def _bad_checksum(path: Path) -> Path:
    path.write_bytes(path.read_bytes().replace(b'"tier": 3', b'"tier": 4'))
    return path


def test_a_bad_later_file_rolls_back_the_files_before_it(
    golden_dir: Path, tmp_path: Path
) -> None:
    """Records are applied while they are verified: nothing is committed
    until every file checks out, and a new vault is not left behind."""
    later = _bad_checksum(_reexport(golden_dir, tmp_path, "incremental", True))
    with pytest.raises(IntegrityError, match="Backup checksum validation failed"):
        import_json(
            tmp_path / "v",
            [golden_dir / GOLDEN.name, later],
            PASSWORD,
            profile="test",
            workers=1,
        )
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".v", "v"))]

    vault_dir = tmp_path / "v"
    import_json(
        vault_dir, [golden_dir / GOLDEN.name], PASSWORD, profile="test", workers=1
    )
    with Vault.open(vault_dir, "test") as vault:
        before = (vault.journal.state_digest(), vault.journal.last_lsn())
    with pytest.raises(IntegrityError):
        import_json(vault_dir, [later], PASSWORD, profile="test", workers=1)
    with Vault.open(vault_dir, "test") as vault:
        assert (vault.journal.state_digest(), vault.journal.last_lsn()) == before
        assert vault.journal.get("agent-013").lifecycle["state"] != "suspended"


def test_a_mismatching_address_found_by_the_worker_pool_rolls_back(
    tmp_path: Path,
) -> None:
    """Enough wallets for the process pool; one address off, near the end."""
    from vaultstore.crypto.derive import WalletDeriver
    from vaultstore.crypto.seed import mnemonic_to_seed

    deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
    records = []
    for n in range(9000):
        agent = f"agent-{n:05d}"
        evm, xrp = deriver.addresses(n)
        if n == 8765:
            evm, xrp = deriver.addresses(n + 1)
        wallet = {
            "agentId": agent,
            "derivationIndex": n,
            "evmAddress": evm,
            "xrpAddress": xrp,
            "createdAt": 1,
        }
        records.append(Record(agent, wallet, None, None))
    path = tmp_path / "big" / "wallet-backup.json"
    export_records(
        path,
        records,
        backup_type="full",
        mnemonic=MNEMONIC,
        password=PASSWORD,
        timestamp_ms=1,
    )
    with pytest.raises(AddressMismatchError) as info:
        import_json(tmp_path / "v", [path], PASSWORD, profile="test", workers=2)
    assert info.value.agents == ["agent-08765"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".v", "v"))]


def test_an_import_killed_before_its_commit_leaves_no_vault(
    golden_dir: Path, tmp_path: Path
) -> None:
    from tests.campaign_support import base_env, run_cli

    env = base_env(
        VAULTSTORE_VAULT=str(tmp_path / "v"),
        VAULTSTORE_PASSWORD=PASSWORD,
        VAULTSTORE_FAULT_POINT="journal.commit.before",
    )
    killed = run_cli(env, "import-json", str(golden_dir / GOLDEN.name))
    assert killed.code == -9, killed.err
    assert not (tmp_path / "v").exists()
    # What the killed run staged stays beside it, private (see README).
    for leftover in tmp_path.glob(".v.import-*"):
        assert stat.S_IMODE(leftover.stat().st_mode) == 0o700
    del env["VAULTSTORE_FAULT_POINT"]
    done = run_cli(env, "import-json", str(golden_dir / GOLDEN.name), "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out)["wallets"] == 20


def test_read_header_reads_only_the_beginning(tmp_path: Path) -> None:
    from vaultstore.compat.legacy import read_header

    header = read_header(GOLDEN)
    assert (header.version, header.timestamp, header.type) == (
        "1.0",
        1796312767857,
        "full",
    )
    # Anything after "wallets" is not looked at, even if it is broken.
    cut = GOLDEN.read_bytes()[:2000] + b"\x00garbage"
    assert (
        read_header(_write_text(tmp_path / "c.json", cut.decode("latin-1"))).type
        == "full"
    )
    with pytest.raises(InputError, match="scalar"):
        read_header(_write_text(tmp_path / "n.json", '{"version": [[[[[[["x"]]]]]]]}'))


def test_a_huge_number_literal_is_refused_not_a_crash(tmp_path: Path) -> None:
    # ijson's C backend segfaults on integers past Python's 4,300-digit limit.
    text = GOLDEN.read_text(encoding="utf-8").replace(
        '"tier": 3', '"tier": ' + "9" * 5000, 1
    )
    hostile = tmp_path / "wallet-backup-1.json"
    hostile.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="digits"):
        list(read_legacy(hostile))


def test_the_number_guard_sees_a_digit_run_split_across_chunks() -> None:
    from vaultstore.compat.legacy import MAX_NUMBER_DIGITS, _Guard

    guard = _Guard("x.json")
    guard.feed(b'{"a": "' + b"9" * 2000 + b'", "b": ' + b"1" * (MAX_NUMBER_DIGITS - 10))
    with pytest.raises(InputError, match="digits"):
        guard.feed(b"1" * 20 + b"}")
    fine = _Guard("y.json")
    fine.feed(b'{"a": ' + b"1" * 600)
    fine.feed(b', "b": ' + b"2" * 600 + b"}")


_GUARD_TEXT = st.text(alphabet='[]{}"\\ab1\n\u2028', max_size=12)
_GUARD_VALUES = st.recursive(
    st.one_of(_GUARD_TEXT, st.integers(0, 10**30)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_GUARD_TEXT, inner, max_size=3)
    ),
    max_leaves=12,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@given(value=_GUARD_VALUES, cuts=st.lists(st.integers(0, 1 << 16), max_size=6))
def test_the_guard_follows_escaped_strings_across_any_chunk_boundary(
    value: Any, cuts: list[int]
) -> None:
    """Quotes and backslashes inside strings, split anywhere: the guard ends
    outside every string, at depth 0, and refuses only real nesting."""
    from vaultstore.compat import legacy

    text = json.dumps(value).encode()
    deep = (b"[" * legacy.MAX_NESTING) + text + (b"]" * legacy.MAX_NESTING)
    for doc, refused in ((text, False), (deep, _depth(value) > 0)):
        guard = legacy._Guard("g.json")
        marks = sorted(cut % (len(doc) + 1) for cut in cuts) + [len(doc)]
        start = 0
        try:
            for mark in marks:
                guard.feed(doc[start:mark])
                start = mark
        except InputError as exc:
            assert refused and "nested deeper" in exc.message
            continue
        assert not refused
        assert (guard.carry, guard.depth) == (b"", 0)
