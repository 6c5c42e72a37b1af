"""Backup benchmark: first full, incremental after 1 % changed, full after 1 % changed.

Generates N wallet-shaped agents straight into a journal (``Journal.bulk_load``),
changes 1 % of them through the journal API (balance events), and measures each
backup's wall time, bytes added to the repository and peak RSS. Each backup
runs in a fresh child process, so the times include interpreter start, the
key-file KDF (``--profile``) and the index load, as a user would see them.

    .venv/bin/python benchmarks/bench_backup.py --agents 100000 --dir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PASSWORD = "benchmark password 1A!"
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def make_record(rng: random.Random, n: int, now: int) -> Any:
    from vaultstore.model import Record

    agent_id = f"agent-{n:08d}"
    evm = "0x" + "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(40))
    xrp = "r" + "".join(rng.choice(B58) for _ in range(33))
    wallet: dict[str, Any] = {
        "agentId": agent_id,
        "derivationIndex": n,
        "evmAddress": evm,
        "xrpAddress": xrp,
        "createdAt": now - rng.randrange(10**9),
    }
    if n % 7 == 0:
        wallet["metadata"] = {"label": f"fleet-{n % 97}", "tier": n % 5}
    lifecycle = {
        "agentId": agent_id,
        "state": rng.choice(("active", "active", "suspended")),
        "createdAt": wallet["createdAt"],
        "activatedAt": wallet["createdAt"] + 1000,
        "totalTransactions": rng.randrange(5000),
        "totalVolume": {
            "ETH": str(rng.randrange(10**21)),
            "XRP": str(rng.randrange(10**12)),
        },
        "lastActivity": now - rng.randrange(10**7),
    }
    balances = [
        balance(agent_id, "evm", "ETH", rng.randrange(10**20), now),
        balance(agent_id, "evm", "USDC", rng.randrange(10**12), now),
        balance(agent_id, "xrp", "XRP", rng.randrange(10**11), now),
    ]
    return Record(agent_id, wallet, lifecycle, balances)


def balance(
    agent_id: str, chain: str, token: str, amount: int, now: int
) -> dict[str, Any]:
    return {
        "agentId": agent_id,
        "chain": chain,
        "token": token,
        "balance": str(amount),
        "lastUpdated": now,
    }


def generate(vault: Path, agents: int) -> None:
    from vaultstore.journal import Journal

    rng = random.Random(7)
    now = 1_796_000_000_000
    records = (make_record(rng, n, now) for n in range(agents))
    Journal.bulk_load(vault, records, 1).close()


def change(vault: Path, agents: int, fraction: float, salt: int) -> int:
    from vaultstore.journal import Event, Journal

    rng = random.Random(salt)
    picked = rng.sample(range(agents), max(1, int(agents * fraction)))
    events = []
    for n in picked:
        agent_id = f"agent-{n:08d}"
        entries = [
            balance(
                agent_id, "evm", "ETH", rng.randrange(10**20), 1_796_100_000_000 + salt
            )
        ]
        events.append(Event("balances", agent_id, entries))
    journal = Journal.open(vault)
    try:
        return journal.append(events)
    finally:
        journal.close()


def child(args: argparse.Namespace) -> None:
    """One backup, in its own process; prints a JSON line of figures."""
    started = time.monotonic()
    from vaultstore.journal import Journal
    from vaultstore.repo.repository import Repository
    from vaultstore.store.local import LocalStore

    store = LocalStore(args.repo)
    journal = Journal.open(args.vault)
    if args.kind == "init":
        Repository.init(store, PASSWORD, args.profile, args.vault / "cache")
        return
    repo = Repository.open(
        store, PASSWORD, args.vault / "cache", args.profile, meta=journal
    )
    result = repo.backup(journal, args.kind, {}, "bench", int(time.time() * 1000))
    journal.close()
    out = result.as_dict()
    out["wall_s"] = time.monotonic() - started
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--dir",
        str(args.dir),
        "--profile",
        args.profile,
    ]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.monotonic() - t0
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
    figures = json.loads(line)
    figures["process_wall_s"] = wall
    return figures


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/vaultstore-bench"))
    parser.add_argument("--profile", default="test", help="KDF profile of the key file")
    parser.add_argument("--child", default=None)
    parser.add_argument(
        "--reuse",
        type=int,
        default=0,
        help="reuse the journal of an earlier run (a new number each time)",
    )
    args = parser.parse_args()
    args.vault = args.dir / "vault"
    args.repo = args.dir / "repo"
    if args.child:
        args.kind = args.child
        child(args)
        return
    if args.reuse:
        shutil.rmtree(args.repo, ignore_errors=True)
        shutil.rmtree(args.vault / "cache", ignore_errors=True)
    else:
        shutil.rmtree(args.dir, ignore_errors=True)
        args.dir.mkdir(parents=True)
        t0 = time.monotonic()
        generate(args.vault, args.agents)
        print(
            f"generated {args.agents} agents in {time.monotonic() - t0:.1f}s",
            flush=True,
        )
    run_child("init", args)
    rows = {}
    rows["first full"] = run_child("full", args)
    change(args.vault, args.agents, 0.01, 1 + 10 * args.reuse)
    rows["incremental after 1% changed"] = run_child("incremental", args)
    rows["full after it (1% changed)"] = run_child("full", args)
    change(args.vault, args.agents, 0.01, 2 + 10 * args.reuse)
    rows["full after 1% changed, no incr."] = run_child("full", args)
    base = rows["first full"]["bytes_added"]
    print(f"\nN = {args.agents}, repository on disk {du(args.repo) / 1e6:.1f} MB")
    print(
        f"{'backup':34} {'process s':>9} {'backup s':>9} {'MB added':>9} "
        f"{'% of full':>9} {'records':>8} {'RSS MB':>7}"
    )
    for name, r in rows.items():
        print(
            f"{name:34} {r['process_wall_s']:9.2f} {r['duration_s']:9.2f} "
            f"{r['bytes_added'] / 1e6:9.2f} {100 * r['bytes_added'] / base:9.2f} "
            f"{r['records_added']:8d} {r['peak_rss_mb']:7.0f}"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.umask(0o077)
    main()
