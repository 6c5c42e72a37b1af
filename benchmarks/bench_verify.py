"""Benchmark: verifying wallets against the seed (``vaultstore seed verify``).

Streams N synthetic wallets (each with the right EVM and XRP address for its
index, so every one does the full work) through ``verify_wallets`` and reports
wallets/s and the peak RSS of the parent process (workers hold one chunk each).

    .venv/bin/python benchmarks/bench_verify.py --wallets 200000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Iterator

from vaultstore.crypto.derive import WalletDeriver, verify_wallets
from vaultstore.crypto.seed import mnemonic_to_seed

MNEMONIC = (
    "child bird parent spare bulb come artefact noodle parade badge carpet humor "
    "excuse unaware leaf matter copy wheel fury mad dumb squeeze neutral describe"
)
DISTINCT = 1000


def wallets(count: int) -> Iterator[tuple[str, int, str, str]]:
    """``count`` wallets cycling over DISTINCT correctly derived indexes."""
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
    known = [deriver.addresses(i) for i in range(min(count, DISTINCT))]
    for n in range(count):
        evm, xrp = known[n % len(known)]
        yield f"agent-{n:08d}", n % len(known), evm, xrp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    started = time.perf_counter()
    bad = verify_wallets(MNEMONIC, wallets(args.wallets), workers=args.workers)
    elapsed = time.perf_counter() - started
    result = {
        "wallets": args.wallets,
        "workers": args.workers,
        "seconds": round(elapsed, 2),
        "walletsPerSecond": round(args.wallets / elapsed),
        "projected1MSeconds": round(1_000_000 * elapsed / args.wallets),
        "mismatches": len(bad),
        "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
