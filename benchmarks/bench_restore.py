"""Restore benchmark: ``vaultstore restore`` on a fresh machine, timed and measured.

``build`` makes, once, a vault of N wallet-shaped agents (the generator of
``bench_backup.py``; with ``--derive`` the addresses are derived from the
benchmark mnemonic, so the default sampled address check passes), a local
repository (test KDF) and three snapshots: a first full, an incremental after
1 % changed, and a full after it (a patched tree whose leaves mix old and new
batches). ``run`` restores snapshots through the real command line, each in a
fresh child process with no vault (so the index is rebuilt from the pack
tables, as on a new machine), and reads wall time, CPU and peak RSS from the
kernel (``os.wait4``).

    .venv/bin/python benchmarks/bench_restore.py build --agents 100000 \\
        --dir /tmp/rbench100k --derive
    .venv/bin/python benchmarks/bench_restore.py run --dir /tmp/rbench100k \\
        --snapshot 2 --verify none --repeat 3

The machine caveat of ``README.md`` applies: other work shares the two cores,
so compare runs made minutes apart, not figures from different days.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PASSWORD = "benchmark password 1A!"
MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
NOW_MS = 1_796_000_000_000
CHUNK = 5_000

_deriver: Any = None


def _init_worker(derive: bool) -> None:
    global _deriver
    if derive:
        from vaultstore.crypto.derive import WalletDeriver
        from vaultstore.crypto.seed import mnemonic_to_seed

        _deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))


def _make_chunk(start: int, stop: int, seed: int) -> list[bytes]:
    """Encoded records of agents ``start … stop-1`` (deterministic per chunk)."""
    from bench_backup import make_record

    from vaultstore.model import encode_record

    rng = random.Random(seed * 1_000_003 + start)
    out: list[bytes] = []
    for n in range(start, stop):
        record = make_record(rng, n, NOW_MS)
        if _deriver is not None:
            evm, xrp = _deriver.addresses(n)
            record.wallet["evmAddress"] = evm
            record.wallet["xrpAddress"] = xrp
        out.append(encode_record(record))
    return out


def _records(agents: int, derive: bool, jobs: int) -> Iterator[bytes]:
    spans = [(s, min(s + CHUNK, agents), 7) for s in range(0, agents, CHUNK)]
    if jobs <= 1:
        _init_worker(derive)
        for span in spans:
            yield from _make_chunk(*span)
        return
    with multiprocessing.Pool(jobs, _init_worker, (derive,)) as pool:
        for chunk in pool.imap(_star_make_chunk, spans):
            yield from chunk


def _star_make_chunk(span: tuple[int, int, int]) -> list[bytes]:
    return _make_chunk(*span)


def _change(vault: Any, agents: int, fraction: float, salt: int) -> None:
    from bench_backup import balance

    from vaultstore.journal import Event

    rng = random.Random(salt)
    picked = rng.sample(range(agents), max(1, int(agents * fraction)))
    with vault.journal.writer() as writer:
        for n in picked:
            agent_id = f"agent-{n:08d}"
            amount = rng.randrange(10**20)
            entry = balance(agent_id, "evm", "ETH", amount, NOW_MS + salt)
            writer.add(Event("balances", agent_id, [entry]))


def build(args: argparse.Namespace) -> None:
    """Vault + repository + snapshots 1 (full), 2 (incremental), 3 (full)."""
    from vaultstore.journal import Journal
    from vaultstore.ops.backup import init_repository, run_backup
    from vaultstore.store.local import LocalStore
    from vaultstore.vault import Vault

    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True, mode=0o700)
    vault_dir = args.dir / "vault"
    t0 = time.monotonic()
    records = _records(args.agents, args.derive, args.jobs)
    Journal.bulk_load(vault_dir, records, 1).close()
    Vault.adopt(vault_dir, PASSWORD, MNEMONIC, "test")
    print(f"generated {args.agents} agents in {time.monotonic() - t0:.1f} s")
    with Vault.open(vault_dir, "test") as vault:
        vault.unlock(PASSWORD)
        repo = init_repository(vault, LocalStore(args.dir / "repo"), PASSWORD)
        for step, kind in enumerate(("full", "incremental", "full"), start=1):
            if step > 1:
                _change(vault, args.agents, 0.01, step)
            t0 = time.monotonic()
            result = run_backup(vault, repo, kind, now_ms=NOW_MS + step * 1000)
            print(
                f"snapshot {result.seq} {kind}: {time.monotonic() - t0:.1f} s, "
                f"{result.bytes_added / 1e6:.1f} MB"
            )
    info = {"agents": args.agents, "derived": args.derive}
    (args.dir / "bench.json").write_text(json.dumps(info))


def restore_once(
    bench_dir: Path, snapshot: str, verify: str, target: Path
) -> dict[str, Any]:
    """One ``vaultstore restore`` in a child process: figures from ``os.wait4``."""
    shutil.rmtree(target, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTSTORE_")}
    env.update(
        VAULTSTORE_TESTING="1",
        VAULTSTORE_PASSWORD=PASSWORD,
        VAULTSTORE_REPOSITORY=str(bench_dir / "repo"),
        VAULTSTORE_VAULT=str(bench_dir / "no-vault-here"),
    )
    cmd = [sys.executable, "-m", "vaultstore.cli.main", "restore", "--json"]
    cmd += [snapshot, "--target", str(target), "--verify-addresses", verify]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    figures: dict[str, Any] = {
        "exit": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    if proc.returncode != 0:
        figures["error"] = err.decode(errors="replace")[-2000:]
        return figures
    report = json.loads(out)
    figures["agents"] = report.get("agents")
    figures["timings"] = report.get("timings")
    return figures


def run(args: argparse.Namespace) -> None:
    info = json.loads((args.dir / "bench.json").read_text())
    target = args.dir / "restored"
    for i in range(args.repeat):
        figures = restore_once(args.dir, args.snapshot, args.verify, target)
        figures.update(n=info["agents"], snapshot=args.snapshot, run=i + 1)
        print(json.dumps(figures), flush=True)
    shutil.rmtree(target, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--agents", type=int, default=100_000)
    b.add_argument("--dir", type=Path, required=True)
    b.add_argument("--derive", action="store_true", help="derive real addresses")
    b.add_argument("--jobs", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("--snapshot", default="latest")
    r.add_argument("--verify", choices=("none", "sample", "all"), default="none")
    r.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.command == "build":
        build(args)
    else:
        run(args)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]
    os.umask(0o077)
    main()
