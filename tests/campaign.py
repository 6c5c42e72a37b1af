"""Run the fault and bad-input campaign and print its table (RELIABILITY.md cases).

    .venv/bin/python tests/campaign.py            # the FULL campaign, slow tests too
    .venv/bin/python tests/campaign.py --fast     # the CI subset (not slow)
    CAMPAIGN_KILLS=500 .venv/bin/python tests/campaign.py   # more random kills

Selects every test marked ``@pytest.mark.reliability(N, ...)`` anywhere under
``tests/``, runs it, and prints one row per case: its number, title, how many
tests cover it, and how many passed, failed, are known bugs (strict xfail, see
``tests/test_campaign_known_failures.py``) or were skipped. Extra arguments go
to pytest (for example ``-x`` or ``-k crash``). Exit status: 0 when every case
has at least one test and no test failed, 1 otherwise.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    1: "kill -9 at each write point",
    2: "power cut (unsynced writes lost)",
    3: "torn last journal record",
    4: "corrupt record mid-journal",
    5: "flipped bit in any object",
    6: "truncated/zero/missing/dup object; index rebuilt",
    7: "object over another's name / other repo",
    8: "edited manifest, SHA-256 recomputed",
    9: "old manifest replayed as latest",
    10: "wrong password / weak password",
    11: "KDF parameters lowered in a key file",
    12: "restore on a machine that never saw the vault",
    13: "incremental without parent / chain gap",
    14: "changes after the last full restored exactly",
    15: "disk full (ingest, backup, restore, export)",
    16: "fsync returns EIO",
    17: "S3 errors: 500, 503, timeouts, resets, lost answers",
    18: "S3 unreachable, local also configured: partial",
    19: "two hosts publish at once",
    20: "overlapping runs on one host; stale lock",
    21: "clock moving backwards before prune",
    22: "hostile inputs: bombs, nesting, fuzzed msgpack/JSON",
    23: "bad wallet data, hostile agent ids",
    24: "no secret in logs, errors, output, files",
    25: "loose permissions warned",
}


class CampaignTable:
    """Pytest plugin: maps each selected test to its cases and its outcome."""

    def __init__(self) -> None:
        self.cases: dict[str, list[int]] = {}
        self.outcome: dict[str, str] = {}

    def pytest_collection_finish(self, session: Any) -> None:
        for item in session.items:  # after -m / -k deselection
            numbers: list[int] = []
            for mark in item.iter_markers("reliability"):
                numbers += [int(n) for n in mark.args]
            self.cases[item.nodeid] = sorted(set(numbers))

    def pytest_runtest_logreport(self, report: Any) -> None:
        node = report.nodeid
        if report.failed:
            self.outcome[node] = "failed"
        elif report.skipped and node not in self.outcome:
            known = hasattr(report, "wasxfail")
            self.outcome[node] = "known-bug" if known else "skipped"
        elif report.when == "call" and report.passed and node not in self.outcome:
            self.outcome[node] = "passed"

    def table(self) -> tuple[str, bool]:
        rows: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for node, numbers in self.cases.items():
            for number in numbers:
                rows[number]["tests"] += 1
                rows[number][self.outcome.get(node, "not-run")] += 1
        header = (
            f"{'case':>4}  {'title':52}  {'tests':>5}  {'passed':>6}  "
            f"{'failed':>6}  {'known':>5}  {'skip':>4}  status"
        )
        lines = [header, "-" * len(header)]
        ok = True
        for number, title in CASES.items():
            r = rows.get(number, {})
            tests, passed = r.get("tests", 0), r.get("passed", 0)
            failed = r.get("failed", 0) + r.get("not-run", 0)
            if tests == 0 or failed:
                status, ok = ("MISSING" if tests == 0 else "FAIL"), False
            elif r.get("known-bug", 0):
                status = "PASS + KNOWN BUG" if passed else "KNOWN BUG"
            elif passed == 0:
                status, ok = "SKIPPED", False
            else:
                status = "PASS"
            lines.append(
                f"{number:>4}  {title[:52]:52}  {tests:>5}  {passed:>6}  {failed:>6}  "
                f"{r.get('known-bug', 0):>5}  {r.get('skipped', 0):>4}  {status}"
            )
        return "\n".join(lines), ok


def main(argv: list[str]) -> int:
    fast = "--fast" in argv
    extra = [a for a in argv if a != "--fast"]
    marks = "reliability and not slow" if fast else "reliability"
    sys.path.insert(0, str(ROOT))
    plugin = CampaignTable()
    started = time.monotonic()
    code = pytest.main(
        [
            str(ROOT / "tests"),
            "-m",
            marks,
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            *extra,
        ],
        plugins=[plugin],
    )
    text, ok = plugin.table()
    print()
    print(
        f"vaultstore reliability campaign ({'fast subset' if fast else 'full'}, "
        f"{len(plugin.cases)} tests, {time.monotonic() - started:.0f} s)"
    )
    print(text)
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
