"""Benchmark: ``vaultstore ingest`` of N agents' NDJSON (3 events per agent).

Each agent gets a wallet, a lifecycle record and a balance list (ETH, one
ERC-20 token, XRP), about 1 KB of NDJSON per agent. The ingest runs as a child
process; its wall time gives events/s and ``os.wait4`` its peak RSS.

    .venv/bin/python benchmarks/bench_ingest.py --agents 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VAULTSTORE = Path(sys.executable).with_name("vaultstore")
TOKEN = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"


def agent_lines(index: int) -> tuple[str, str, str]:
    """The wallet, lifecycle and balances lines of agent ``index``."""
    agent = f"agent-{index:08d}"
    created = 1_760_000_000_000 + index
    wallet = {
        "agentId": agent,
        "derivationIndex": index,
        "evmAddress": "0x" + f"{index:040x}",
        "xrpAddress": "rHpbKweByKf4HaC3iAATyTagm87Zz3czXd",
        "createdAt": created,
        "metadata": {"team": f"team-{index % 97}", "tier": index % 5, "ratio": 0.25},
    }
    lifecycle = {
        "agentId": agent,
        "state": "active",
        "createdAt": created,
        "totalTransactions": index % 1000,
        "totalVolume": {"ETH": str(10**18 + index), "XRP": str(250_000 + index)},
        "activatedAt": created + 5,
        "lastActivity": created + 1000,
    }
    balances = [
        {
            "agentId": agent,
            "chain": chain,
            "token": token,
            "balance": amount,
            "lastUpdated": created + 2000,
        }
        for chain, token, amount in (
            ("evm", "ETH", str(123456789012345678901234567890 + index)),
            ("evm", TOKEN, str(5_000_000 * index)),
            ("xrp", "XRP", str(20_000_000 + index)),
        )
    ]
    return (
        json.dumps({"kind": "wallet", "wallet": wallet}, separators=(",", ":")),
        json.dumps({"kind": "lifecycle", "record": lifecycle}, separators=(",", ":")),
        json.dumps(
            {"kind": "balances", "agentId": agent, "balances": balances},
            separators=(",", ":"),
        ),
    )


def write_ndjson(path: Path, agents: int) -> int:
    """Write the NDJSON for ``agents`` agents; returns the file size."""
    with open(path, "w", encoding="utf-8") as out:
        for index in range(agents):
            out.write("\n".join(agent_lines(index)) + "\n")
    return path.stat().st_size


def run_ingest(
    vault: Path, source: Path, command: Path
) -> tuple[float, float, int, str]:
    """Run ``vaultstore ingest``: (wall s, CPU s, peak RSS bytes, stdout)."""
    env = dict(os.environ, VAULTSTORE_VAULT=str(vault))
    start = time.perf_counter()
    child = subprocess.Popen(
        [str(command), "ingest", "--json", str(source)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert child.stdout is not None
    output = child.stdout.read().decode()
    _pid, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ingest failed with status {status}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss * 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--command", type=Path, default=VAULTSTORE, help="vaultstore")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.workdir))
    try:
        source = work / "events.ndjson"
        start = time.perf_counter()
        size = write_ndjson(source, args.agents)
        generated = time.perf_counter() - start

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from vaultstore.journal import Journal

        Journal.create(work / "vault").close()
        seconds, cpu, peak, output = run_ingest(work / "vault", source, args.command)
        summary = json.loads(output)
        events = summary["eventsRead"]
        db_size = sum(f.stat().st_size for f in (work / "vault").iterdir())
        result = {
            "agents": args.agents,
            "events": events,
            "ndjsonBytes": size,
            "generateSeconds": round(generated, 1),
            "ingestSeconds": round(seconds, 1),
            "eventsPerSecond": round(events / seconds),
            # CPU time is what the ingest costs whatever else the host runs.
            "cpuSeconds": round(cpu, 1),
            "eventsPerCpuSecond": round(events / cpu),
            "peakRssMiB": round(peak / 2**20, 1),
            "vaultBytes": db_size,
            "lastLsn": summary["lastLsn"],
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
