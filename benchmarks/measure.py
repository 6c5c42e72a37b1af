"""Run one command as a subprocess and measure it: wall, CPU, peak RSS, bytes.

CPU time and peak RSS come from the kernel's rusage of the waited-for child
(``os.wait4``): ``ru_maxrss`` is in KiB on Linux and covers the child process
itself (the largest of it and any descendants it waited for). That misses
processes the child never waits for itself (a ``forkserver`` pool's workers
are the fork server's children), so a sampler also walks the whole process
tree every 50 ms (psutil): ``tree_cpu_s`` is the own CPU of every process
seen, summed (each up to 50 ms short; never below the rusage figure) and
``tree_peak_rss_mib`` the largest sum of resident sizes at one moment (a
backup and its helper process together, say). Bytes added are the change of
the apparent size of a watched directory (sum of file sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NOT_AVAILABLE = "not available"


@dataclass
class Measurement:
    """What one measured command cost, and what it printed."""

    name: str
    status: str = "ok"  # ok | failed | not available | skipped
    wall_s: float = 0.0
    cpu_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    peak_rss_mib: float = 0.0
    tree_cpu_s: float = 0.0
    tree_peak_rss_mib: float = 0.0
    bytes_added: int | None = None
    exit_code: int | None = None
    output: Any = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dir_size(path: Path) -> int:
    """Apparent size in bytes of every file under ``path`` (0 if missing)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    stack = [str(path)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def run_measured(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    watch: Path | None = None,
    logs: Path | None = None,
    parse_json: bool = False,
    stdin: Path | None = None,
) -> Measurement:
    """Run ``argv`` to completion and measure it.

    stdout and stderr go to files under ``logs`` (pipes could fill and stall
    a child that prints a lot); the tail of stderr is kept on failure.
    """
    logs = logs or Path(os.environ.get("TMPDIR", "/tmp"))
    logs.mkdir(parents=True, exist_ok=True)
    safe = name.replace(" ", "_").replace("/", "_")
    out_path, err_path = logs / f"{safe}.stdout", logs / f"{safe}.stderr"
    before = dir_size(watch) if watch is not None else 0
    source = open(stdin, "rb") if stdin is not None else subprocess.DEVNULL
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=source, stdout=out, stderr=err
        )
        tree = _TreeSampler(proc.pid)
        tree.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        tree.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if stdin is not None:
        source.close()  # type: ignore[union-attr]
    result = Measurement(
        name=name,
        wall_s=round(wall, 3),
        user_s=round(usage.ru_utime, 3),
        sys_s=round(usage.ru_stime, 3),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
        exit_code=proc.returncode,
    )
    result.tree_cpu_s = round(max(tree.total_cpu(), result.cpu_s), 3)
    peak = max(tree.peak_rss, usage.ru_maxrss * 1024)
    result.tree_peak_rss_mib = round(peak / 2**20, 1)
    if watch is not None:
        result.bytes_added = dir_size(watch) - before
    stdout = out_path.read_text("utf-8", errors="replace")
    if proc.returncode != 0:
        stderr = err_path.read_text("utf-8", errors="replace")
        result.status = NOT_AVAILABLE if "No such command" in stderr else "failed"
        result.error = stderr.strip()[-600:]
    if parse_json and stdout.strip():
        result.output = _parse_json(stdout)
    return result


class _TreeSampler(threading.Thread):
    """Samples the CPU and resident size of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.cpu: dict[int, float] = {}  # last CPU seen, per descendant
        self.peak_rss = 0
        self._done = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return  # the rusage figures alone
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._done.wait(0.05):
            rss = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            for p in procs:
                try:
                    with p.oneshot():
                        rss += p.memory_info().rss
                        t = p.cpu_times()  # its own, without its children
                        self.cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, rss)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def total_cpu(self) -> float:
        """Each process's own CPU at its last sample, summed: every process
        counted once, each up to one sampling interval short."""
        return sum(self.cpu.values())


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Some tools print one JSON object per line (restic --json): keep the last.
        for line in reversed(text.strip().splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {"unparsed": text[-400:]}
