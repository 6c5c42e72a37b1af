"""Legacy JSON export and import at N agents, next to plain json.dumps/json.load.

Each phase runs in its own subprocess so that its peak RSS (``ru_maxrss`` of
the waited-for child) is its own:

* ``export``      — ``write_legacy`` streaming N generated records to a file
* ``import``      — ``read_legacy`` full pass: parse, validate, checksum
* ``import-journal`` — the same pass applied to a new journal (legacy=True)
* ``json-dumps``  — the same state built as one dict, ``json.dumps(indent=2)``
* ``json-load``   — ``json.load`` of the exported file

Records are generated in-process (deterministic, addresses syntactically
valid but random, so address derivation is not part of these figures).

    python benchmarks/bench_legacy.py --agents 100000 [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vaultstore.model import Record  # noqa: E402

B58 = "rpshnaf39wBUDNEGHJKLM4PQRST7VWXYZ2bcdeCg65jkm8oFqi1tuvAxyz"
TOKENS = ("ETH", "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", "XRP")


def make_record(i: int) -> Record:
    """Agent ``i``: wallet, lifecycle and two or three balances, deterministic."""
    h = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=64).digest()
    agent = f"agent-{i:07d}"
    wallet: dict[str, Any] = {
        "agentId": agent,
        "derivationIndex": i,
        "evmAddress": "0x" + h[:20].hex(),
        "xrpAddress": "r" + "".join(B58[b % 58] for b in h[30:63]),
        "createdAt": 1_767_225_600_000 + i * 1000,
    }
    if h[0] < 64:
        wallet["metadata"] = {
            "label": f"bot {i} ✓",
            "tier": h[1] % 5,
            "ratio": h[2] / 7,
        }
    state = ("pending", "active", "active", "suspended", "archived")[h[3] % 5]
    life: dict[str, Any] = {
        "agentId": agent,
        "state": state,
        "createdAt": wallet["createdAt"] + 5,
        "totalTransactions": h[4],
        "totalVolume": {"ETH": str(int.from_bytes(h[5:13], "big")), "XRP": str(h[6])},
    }
    if state != "pending":
        life["activatedAt"] = wallet["createdAt"] + 10
        life["lastActivity"] = wallet["createdAt"] + 99
    balances = [
        {
            "agentId": agent,
            "chain": "xrp" if token == "XRP" else "evm",
            "token": token,
            "balance": str(int.from_bytes(h[13 + k * 8 : 21 + k * 8], "big") * 10**9),
            "lastUpdated": 1_790_000_000_000,
        }
        for k, token in enumerate(TOKENS[: 2 + h[7] % 2])
    ]
    return Record(agent, wallet, life, balances)


def records(n: int) -> Iterator[Record]:
    return (make_record(i) for i in range(n))


def phase_export(n: int, path: Path) -> dict[str, Any]:
    from vaultstore.compat.legacy import write_legacy

    checksum = write_legacy(
        path,
        timestamp_ms=1_790_000_000_000,
        backup_type="full",
        encrypted_seed="A" * 200,
        records=records(n),
    )
    return {"checksum": checksum, "bytes": path.stat().st_size}


def phase_import(n: int, path: Path) -> dict[str, Any]:
    from vaultstore.compat.legacy import read_legacy

    reader = read_legacy(path)
    count = sum(1 for _ in reader)
    assert reader.summary is not None
    return {"items": count, "wallets": reader.summary.wallets}


def phase_import_journal(n: int, path: Path) -> dict[str, Any]:
    from vaultstore.compat.legacy import read_legacy
    from vaultstore.journal import Event, Journal

    def events() -> Iterator[Event]:
        for kind, payload in read_legacy(path):
            if kind == "balances":
                yield Event("balances", payload[0], payload[1], 1)
            else:
                yield Event(kind, payload["agentId"], payload, 1)

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        journal = Journal.create(Path(tmp) / "vault")
        lsn = journal.append(events(), legacy=True)
        journal.close()
    return {"lsn": lsn}


def phase_json_dumps(n: int, path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "1.0",
        "timestamp": 1_790_000_000_000,
        "type": "full",
        "encryptedMasterSeed": "A" * 200,
        "wallets": [],
        "lifecycleRecords": [],
        "balanceSnapshots": {},
        "checksum": "",
    }
    for r in records(n):
        doc["wallets"].append(r.wallet)
        doc["lifecycleRecords"].append(r.lifecycle)
        doc["balanceSnapshots"][r.agent_id] = r.balances
    compact = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    doc["checksum"] = hashlib.sha256(compact.encode()).hexdigest()
    del compact
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    path.with_suffix(".dump.json").write_text(text, encoding="utf-8")
    return {"bytes": len(text)}


def phase_json_load(n: int, path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    return {"wallets": len(doc["wallets"])}


PHASES = {
    "export": phase_export,
    "import": phase_import,
    "import-journal": phase_import_journal,
    "json-dumps": phase_json_dumps,
    "json-load": phase_json_load,
}


def run_child(phase: str, n: int, path: Path) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            phase,
            "--agents",
            str(n),
            "--file",
            str(path),
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    result: dict[str, Any] = {
        "phase": phase,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "ok": os.waitstatus_to_exitcode(status) == 0,
    }
    if out.strip():
        result.update(json.loads(out))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(PHASES[args.child](args.agents, args.file)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-legacy-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"wallet-backup-{args.agents}.json"
    rows = [run_child(p, args.agents, path) for p in args.phases.split(",")]
    if args.json:
        print(json.dumps({"agents": args.agents, "phases": rows}, indent=2))
        return
    print(f"legacy JSON at {args.agents} agents ({work})")
    print(f"{'phase':<16}{'wall s':>9}{'cpu s':>9}{'peak MiB':>10}  ok")
    for r in rows:
        print(
            f"{r['phase']:<16}{r['wall_s']:>9}{r['cpu_s']:>9}{r['peak_rss_mib']:>10}"
            f"  {r['ok']}"
        )


if __name__ == "__main__":
    main()
