"""Secrets campaign (RELIABILITY.md cases 24, 25, 12).

A representative session of real (forked) CLI processes runs with a canary
mnemonic and password: init from stdin, ingest, full and incremental backup,
snapshots, check, restore on a fresh machine, export-json, verify-json, key
list, seed verify, status, config show, plus failing commands (wrong password,
bad input), all with ``--json`` where offered and a debug ``--log-file``.
Then every stdout, stderr, the log file and every file under the test's
directory (encrypted ones included: the plaintext must not appear) is scanned
for the password, the mnemonic, and any three consecutive mnemonic words, in
plain text, hex and base64. Every file and directory created must be private.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from tests.campaign_support import (
    MNEMONIC,
    PASSWORD,
    Result,
    base_env,
    run_forked,
    run_main,
    wallet,
)
from vaultstore.journal import Journal


def needles() -> list[bytes]:
    words = MNEMONIC.split()
    texts = [PASSWORD, MNEMONIC] + [
        " ".join(words[i : i + 3]) for i in range(len(words) - 2)
    ]
    out: list[bytes] = []
    for text in texts:
        raw = text.encode()
        out += [raw, raw.hex().encode(), base64.b64encode(raw)]
    # The password and mnemonic in other common encodings too.
    for text in (PASSWORD, MNEMONIC):
        out += [text.encode("utf-16-le"), json.dumps(text).encode()]
    return out


def scan(blob: bytes, where: str) -> list[str]:
    return [f"{where}: {n[:24]!r}" for n in needles() if n in blob]


def ndjson(path: Path, indexes: range, state: str = "active") -> Path:
    lines = []
    for i in indexes:
        agent = f"agent-{i:05d}"
        lines.append({"kind": "wallet", "wallet": wallet(i)})
        lines.append(
            {
                "kind": "lifecycle",
                "record": {
                    "agentId": agent,
                    "state": state,
                    "createdAt": 1,
                    "activatedAt": 2,
                    "totalTransactions": i,
                    "totalVolume": {"ETH": str(10**18 * i)},
                },
            }
        )
        lines.append(
            {
                "kind": "balances",
                "agentId": agent,
                "balances": [
                    {
                        "agentId": agent,
                        "chain": "evm",
                        "token": "ETH",
                        "balance": str(7 * 10**20 + i),
                        "lastUpdated": 3,
                    }
                ],
            }
        )
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.mark.reliability(24, 12)
def test_a_whole_cli_session_leaks_no_secret_and_creates_only_private_files(
    tmp_path: Path,
) -> None:
    vault, repo, log = tmp_path / "vault", tmp_path / "repo", tmp_path / "logs/run.log"
    log.parent.mkdir(mode=0o700)
    env = base_env(
        VAULTSTORE_VAULT=str(vault),
        VAULTSTORE_REPOSITORY=str(repo),
        VAULTSTORE_PASSWORD=PASSWORD,
    )
    fresh = dict(env, VAULTSTORE_VAULT=str(tmp_path / "fresh-machine"))
    g = ("--log-file", str(log), "--log-level", "debug")
    outputs: list[tuple[str, Result]] = []

    def cmd(
        *args: str, expect: int = 0, use: dict[str, str] = env, stdin: str | None = None
    ) -> Result:
        done = run_forked(use, *g, *args, stdin=stdin)
        outputs.append((" ".join(args), done))
        assert done.code == expect, (args, done.code, done.out, done.err)
        return done

    cmd("init", "--mnemonic-stdin", "--json", stdin=MNEMONIC + "\n")
    cmd("ingest", str(ndjson(tmp_path / "a.ndjson", range(20))), "--json")
    cmd("backup", "--full", "--json")
    cmd(
        "ingest",
        str(ndjson(tmp_path / "b.ndjson", range(15, 30), "suspended")),
        "--json",
    )
    cmd("backup", "--incremental", "--json")
    cmd("snapshots", "--json")
    cmd("check", "--read-data", "--json")
    cmd(
        "restore",
        "latest",
        "--target",
        str(tmp_path / "restored"),
        "--verify-addresses",
        "all",
        "--json",
        use=fresh,
    )
    cmd(
        "export-json",
        "latest",
        "-o",
        str(tmp_path / "export" / "backup.json"),
        "--json",
    )
    cmd("verify-json", str(tmp_path / "export" / "backup.json"), "--json")
    cmd("key", "list", "--json")
    cmd("seed", "verify", "--json")
    cmd("status", "--json")
    cmd("config", "show")
    # Failures print errors: they must not leak either.
    cmd(
        "restore",
        "--target",
        str(tmp_path / "nope"),
        use=dict(fresh, VAULTSTORE_PASSWORD=PASSWORD[::-1]),
        expect=4,
    )
    cmd("seed", "verify", use=dict(env, VAULTSTORE_PASSWORD=PASSWORD + "x"), expect=4)
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"kind":"remove","agentId":"../x"}\n')
    cmd("ingest", str(bad), expect=7)
    cmd("init", "--mnemonic-stdin", expect=2, stdin=MNEMONIC + "\n")

    # The restored vault equals the source and holds the same seed.
    with Journal.open(vault) as a, Journal.open(tmp_path / "restored") as b:
        assert a.state_digest() == b.state_digest()
        assert b.counts()["agents"] == 30

    hits: list[str] = []
    for args, done in outputs:
        hits += scan(done.out.encode(), f"stdout of {args}")
        hits += scan(done.err.encode(), f"stderr of {args}")
    assert log.stat().st_size > 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 15
    for path in files:
        hits += scan(path.read_bytes(), str(path.relative_to(tmp_path)))
    assert hits == [], hits

    # Nothing the session created is readable by group or others.
    inputs = {tmp_path / "a.ndjson", tmp_path / "b.ndjson", bad}
    loose = [
        f"{p.relative_to(tmp_path)} {stat.S_IMODE(p.stat().st_mode):o}"
        for p in tmp_path.rglob("*")
        if p not in inputs and stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert loose == [], loose


@pytest.mark.reliability(24)
def test_password_from_a_command_or_file_is_never_in_argv_or_output(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(PASSWORD + "\n")
    secret_file.chmod(0o600)
    env = base_env(VAULTSTORE_VAULT=str(tmp_path / "vault"))
    done = run_main(
        env,
        "--password-file",
        str(secret_file),
        "init",
        "--mnemonic-stdin",
        "--json",
        stdin=MNEMONIC + "\n",
    )
    assert done.code == 0, done.err
    failing = run_main(
        env, "--password-command", f"echo {PASSWORD[::-1]}; exit 3", "seed", "verify"
    )
    assert failing.code == 2
    blob = (done.out + done.err + failing.out + failing.err).encode()
    assert scan(blob, "output") == []
    assert scan(blob.replace(PASSWORD[::-1].encode(), b""), "reversed") == []


@pytest.mark.reliability(25)
def test_loose_vault_permissions_are_warned_about(tmp_path: Path) -> None:
    env = base_env(
        VAULTSTORE_VAULT=str(tmp_path / "vault"), VAULTSTORE_PASSWORD=PASSWORD
    )
    assert run_main(env, "init", "--mnemonic-stdin", stdin=MNEMONIC + "\n").code == 0
    os.chmod(tmp_path / "vault", 0o755)
    os.chmod(tmp_path / "vault" / "keyfile", 0o644)
    done = run_main(env, "seed", "verify", "--json")
    assert done.code == 0, done.err
    warnings = [
        json.loads(line)
        for line in done.err.splitlines()
        if line.startswith("{") and "loose-permissions" in line
    ]
    named = {w.get("path") for w in warnings}
    assert str(tmp_path / "vault") in named
    assert str(tmp_path / "vault" / "keyfile") in named
    assert all(w["level"] == "warning" for w in warnings)
