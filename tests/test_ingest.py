"""NDJSON ingest: the Python API, `vaultstore ingest` and `vaultstore status`."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.journal_data import (
    agent,
    agent_lines,
    balances,
    lifecycle,
    line,
    wallet,
    write_ndjson,
)
from vaultstore.errors import InputError, TransitionError
from vaultstore.ingest import ingest_file, ingest_lines, ingest_stream, parse_event
from vaultstore.journal import Journal

VAULTSTORE = Path(sys.executable).with_name("vaultstore")


def run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run the real entry point in-process: (exit code, stdout, stderr)."""
    from vaultstore.cli.main import main

    monkeypatch.setattr(sys, "argv", ["vaultstore", *args])
    root = logging.getLogger("vaultstore")
    saved = (list(root.handlers), root.level, root.propagate)
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        # The CLI points its log handler at this test's captured stderr.
        root.handlers[:], root.level, root.propagate = saved
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    path = tmp_path / "vault"
    Journal.create(path).close()
    return path


def snapshot(vault: Path) -> tuple[int, bytes, list[Any]]:
    with Journal.open(vault) as j:
        return j.last_lsn(), j.state_digest(), list(j.iter_by_tree_key())


def test_ingest_twice_is_idempotent(vault: Path, tmp_path: Path) -> None:
    source = write_ndjson(tmp_path / "in.ndjson", range(20))
    with Journal.open(vault) as j:
        first = ingest_file(j, source)
        assert (first.events_read, first.applied, first.skipped) == (60, 60, 0)
        state = (j.last_lsn(), j.state_digest())
        second = ingest_file(j, source)
        assert (second.events_read, second.applied, second.skipped) == (60, 0, 60)
        assert (j.last_lsn(), j.state_digest()) == state
        assert len(list(j.iter_events())) == 60
        assert j.verify_projection() == []


def test_upsert_semantics(vault: Path) -> None:
    lines = [
        *agent_lines(1, "pending"),
        line({"kind": "lifecycle", "record": lifecycle(1, "active")}),
        line({"kind": "balances", "agentId": agent(1), "balances": []}),
        line({"kind": "wallet", "wallet": wallet(1, metadata={"n": 1.25})}),
        *agent_lines(2),
        line({"kind": "remove", "agentId": agent(2)}),
        "",
        "   ",
    ]
    with Journal.open(vault) as j:
        report = ingest_lines(j, lines)
        assert report.events_read == 10
        record = j.get(agent(1))
        assert record is not None
        assert record.lifecycle == lifecycle(1, "active")
        assert record.balances == []
        assert record.wallet == wallet(1, metadata={"n": 1.25})
        assert j.get(agent(2)) is None
        assert j.counts()["agents"] == 1


def test_integer_amounts_are_stored_as_strings(vault: Path) -> None:
    entries = balances(1)
    entries[0]["balance"] = 2**70
    text = line({"kind": "balances", "agentId": agent(1), "balances": entries})
    with Journal.open(vault) as j:
        ingest_stream(j, io.BytesIO(text.encode() + b"\r\n"))
        record = j.get(agent(1))
        assert record is not None and record.balances is not None
        assert record.balances[0]["balance"] == str(2**70)


def test_event_time_is_taken_from_the_line(vault: Path) -> None:
    text = line({"kind": "wallet", "wallet": wallet(1), "time": 42})
    with Journal.open(vault) as j:
        ingest_lines(j, [text])
        assert [e[1] for e in j.iter_events()] == [42]


def _w(**change: Any) -> str:
    return line({"kind": "wallet", "wallet": wallet(1, **change)})


def _lc(record: dict[str, Any]) -> str:
    return line({"kind": "lifecycle", "record": record})


BAD_LINES = [
    ("{not json", "json"),
    ('{"kind":"wallet","wallet":{"a":NaN}}', "json"),
    ("[1,2]", "json"),
    ('{"kind":"archive","agentId":"x"}', "kind"),
    ('{"wallet":{}}', "kind"),
    ('{"kind":"balances","agentId":"agent-00001"}', "balances"),
    ('{"kind":"remove"}', "agentId"),
    ('{"kind":"remove","agentId":"x","extra":1}', "extra"),
    ('{"kind":"remove","agentId":"x","time":-1}', "time"),
    ('{"kind":"remove","agentId":"../x"}', "agentId"),
    ('{"kind":"remove","agentId":5}', "agentId"),
    ('{"kind":"wallet","wallet":"x"}', "wallets"),
    (_w(derivationIndex="1"), "wallets.derivationIndex"),
    (_w(metadata=None), "wallets.metadata"),
    (_lc(lifecycle(1, totalVolume={"ETH": 0.5})), "lifecycleRecords.totalVolume"),
    (_lc({"agentId": "agent-00001"}), "lifecycleRecords.state"),
    (
        line({"kind": "balances", "agentId": agent(1), "balances": balances(2)}),
        "balanceSnapshots[0].agentId",
    ),
    (_lc(lifecycle(1, "pending")), "lifecycleRecords.state"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_LINES)
def test_malformed_line_aborts_the_whole_run(
    vault: Path, tmp_path: Path, bad: str, field: str
) -> None:
    good = agent_lines(1) + agent_lines(2)
    before = snapshot(vault)
    with Journal.open(vault) as j:
        with pytest.raises(InputError) as info:
            ingest_lines(j, [*good[:4], bad, *good[4:]])
    message = info.value.message
    assert message.startswith(f"line 5: {field}"), message
    assert info.value.fields["line"] == 5
    assert snapshot(vault) == before


def test_invalid_transition_keeps_its_class(vault: Path) -> None:
    with Journal.open(vault) as j:
        ingest_lines(j, agent_lines(1, "archived"))
        with pytest.raises(TransitionError, match="line 2: .*from archived to active"):
            ingest_lines(j, [agent_lines(3)[0], agent_lines(1)[1]])
        assert j.get(agent(3)) is None


def test_parse_event_shapes() -> None:
    event = parse_event(line({"kind": "balances", "agentId": "a", "balances": []}))
    assert (event.kind, event.agent_id, event.payload) == ("balances", "a", [])
    event = parse_event(b'{"kind":"remove","agentId":"a"}')
    assert (event.kind, event.agent_id, event.payload) == ("remove", "a", None)


def test_cli_ingest_and_status(
    vault: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_ndjson(tmp_path / "in.ndjson", range(1, 4))
    with open(source, "a", encoding="utf-8") as out:
        out.write("\n".join(agent_lines(0, "suspended")) + "\n")
    args = ["--vault", str(vault)]
    code, out, _ = run_cli(
        [*args, "ingest", "--json", str(source)], monkeypatch, capsys
    )
    assert code == 0
    assert json.loads(out) == {
        "eventsRead": 12,
        "applied": 12,
        "skipped": 0,
        "lastLsn": 12,
    }
    code, out, _ = run_cli([*args, "ingest", str(source)], monkeypatch, capsys)
    assert code == 0 and "12 unchanged" in out and "last LSN 12" in out

    with Journal.open(vault) as j:
        j.set_meta("last_backup", json.dumps({"snapshot": "abc", "lsn": 12}))
    code, out, _ = run_cli([*args, "status", "--json"], monkeypatch, capsys)
    status = json.loads(out)
    assert code == 0
    assert status["agents"] == 4
    assert status["byState"] == {
        "pending": 0,
        "active": 3,
        "suspended": 1,
        "archived": 0,
    }
    assert status["lastLsn"] == 12
    assert status["lastBackup"] == {"snapshot": "abc", "lsn": 12}
    assert status["vault"] == str(vault)
    code, out, _ = run_cli([*args, "status"], monkeypatch, capsys)
    assert code == 0 and "agents:      4" in out and "snapshot=abc" in out


@pytest.mark.parametrize(("bad", "field"), BAD_LINES[::3])
def test_cli_malformed_line_exit_code_7(
    vault: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bad: str,
    field: str,
) -> None:
    source = tmp_path / "bad.ndjson"
    source.write_text("\n".join([*agent_lines(1), *agent_lines(2)[:1], bad, ""]))
    before = snapshot(vault)
    code, out, err = run_cli(
        ["--vault", str(vault), "ingest", str(source)], monkeypatch, capsys
    )
    assert code == 7
    assert f"line 5: {field}" in err
    assert out == ""
    assert snapshot(vault) == before


def test_cli_without_vault_says_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["status"], ["ingest", "-"]):
        code, _, err = run_cli(
            ["--vault", str(tmp_path / "none"), *command], monkeypatch, capsys
        )
        assert code == 12 and "vaultstore init" in err


def test_cli_missing_file_is_not_found(
    vault: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["--vault", str(vault), "ingest", "missing.ndjson"], monkeypatch, capsys
    )
    assert code == 12 and "missing.ndjson" in err


@pytest.mark.skipif(not VAULTSTORE.exists(), reason="console script not installed")
def test_cli_ingest_from_stdin_subprocess(vault: Path, tmp_path: Path) -> None:
    data = "\n".join(agent_lines(1) + agent_lines(2)) + "\n"
    env = {"VAULTSTORE_VAULT": str(vault), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(VAULTSTORE), "ingest", "--json", "-"],
        input=data.encode(),
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applied"] == 6
    bad = data + '{"kind":"remove"}\n'
    done = subprocess.run(
        [str(VAULTSTORE), "ingest", "-"],
        input=bad.encode(),
        capture_output=True,
        env=env,
    )
    assert done.returncode == 7
    assert b"line 7: agentId" in done.stderr
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)


@pytest.mark.parametrize(
    "bad", [b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"kind":"wallet"']
)
def test_hostile_bytes_are_a_clean_input_error(vault: Path, bad: bytes) -> None:
    lines = [agent_lines(1)[0].encode(), bad]
    with Journal.open(vault) as j:
        with pytest.raises(InputError, match="^line 2: json"):
            ingest_lines(j, lines)
        assert j.last_lsn() == 0


def test_cli_ingest_refuses_a_locked_vault(
    vault: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vaultstore.locks import VaultLock

    source = write_ndjson(tmp_path / "in.ndjson", range(2))
    with VaultLock(vault, "backup"):
        code, _, err = run_cli(
            ["--vault", str(vault), "ingest", str(source)], monkeypatch, capsys
        )
    assert code == 5 and "locked" in err
    assert snapshot(vault)[0] == 0
