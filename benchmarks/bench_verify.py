"""Benchmark: verifying wallets against the seed (``vaultstore seed verify``).

Two figures:

- per core: ``WalletDeriver.addresses`` over ``--per-core`` distinct indexes on
  this thread, CPU seconds (``time.process_time``) per wallet, best of
  ``--repeat`` runs: the cost of one wallet on one core, the figure to compare
  across changes on a shared machine where wall times are noisy;
- pool: N synthetic wallets (each with the right EVM and XRP address for its
  index, so every one does the full work) streamed through ``verify_wallets``
  with ``--workers`` processes: wall time, wallets/s, the CPU seconds of this
  process and of the workers, and the peak RSS of this process (workers hold
  one chunk each).

The workers are children of the forkserver, which this process never waits
for, so rusage would miss them: their CPU is read with psutil every 0.1 s
while they run (the last reading of each is kept; up to 0.1 s each is lost).

    .venv/bin/python benchmarks/bench_verify.py --wallets 200000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from collections.abc import Iterator

import psutil

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


def per_core_us(count: int, repeat: int) -> float:
    """CPU µs per wallet for ``addresses`` on this thread, best of ``repeat``."""
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(MNEMONIC))
    best = float("inf")
    for run in range(repeat):
        started = time.process_time()
        for index in range(run * count, (run + 1) * count):
            deriver.addresses(index)
        best = min(best, time.process_time() - started)
    return best / count * 1e6


class DescendantCpu:
    """CPU seconds of this process's descendants, sampled while they live."""

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> DescendantCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self._seen.values())

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.1):
            for child in me.children(recursive=True):
                try:
                    times = child.cpu_times()
                except psutil.Error:
                    continue
                self._seen[child.pid] = times.user + times.system


def pool_run(count: int, workers: int) -> dict[str, float | int]:
    """The pool figures for ``count`` wallets through ``verify_wallets``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with DescendantCpu() as descendants:
        bad = verify_wallets(MNEMONIC, wallets(count), workers=workers)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    own = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "wallets": count,
        "workers": workers,
        "seconds": round(elapsed, 2),
        "walletsPerSecond": round(count / elapsed),
        "projected1MSeconds": round(1_000_000 * elapsed / count),
        "cpuSecondsParent": round(own, 2),
        "cpuSecondsWorkers": round(descendants.seconds, 2),
        "cpuMicrosecondsPerWallet": round((own + descendants.seconds) / count * 1e6, 1),
        "mismatches": len(bad),
        "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wallets", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-core", type=int, default=5000, help="0: skip")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    result: dict[str, object] = {"loadAverage": [round(x, 2) for x in os.getloadavg()]}
    if args.per_core:
        result["microsecondsPerWalletPerCore"] = round(
            per_core_us(args.per_core, args.repeat), 1
        )
    if args.wallets:
        result["pool"] = pool_run(args.wallets, args.workers)
    result["loadAverageAfter"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
