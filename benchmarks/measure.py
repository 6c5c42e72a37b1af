"""Run one command as a subprocess and measure it: wall, CPU, peak RSS, bytes.

CPU time and peak RSS come from the kernel's rusage of the waited-for child
(``os.wait4``): ``ru_maxrss`` is in KiB on Linux and covers the child process
itself (the largest of it and any descendants it waited for). Bytes added are
the change of the apparent size of a watched directory (sum of file sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
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
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
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
