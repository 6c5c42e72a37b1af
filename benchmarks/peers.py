"""What an operator would use instead of vaultstore, measured on the same state.

* restic and borg (Debian packages ``restic``, ``borgbackup``; installed with
  apt-get when missing), each backing up the state dumped as legacy JSON,
  before and after one change round, then restoring the latest snapshot. Two
  dump layouts: ``big`` (one legacy ``wallet-backup`` file, what the existing
  service writes) and ``shards`` (the same state as 256 legacy files over
  contiguous ranges of agents). Both repositories are encrypted (restic
  always; borg ``repokey-blake2``), passwords via the environment.
* The plain JSON approach of the existing service: build the whole state in
  memory, ``json.dumps`` it (two-space indent), SHA-256 of the compact form,
  write; and back: read, ``json.loads``, recompute the checksum. Each runs in
  its own subprocess so its peak RSS is its own; the subprocess reports the
  time of the measured phase apart from the time spent generating the state.

Usage::

    python benchmarks/peers.py run --agents 100000 --work /tmp/peers [--percent 1]
    python benchmarks/peers.py json-dump --agents N -o FILE   (subprocess step)
    python benchmarks/peers.py json-load FILE                 (subprocess step)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import generate
from measure import Measurement, dir_size, run_measured

PEER_PASSWORD = "Peer-Bench-Passw0rd!"
LAYOUTS = ("big", "shards")
SHARDS = 256


# ---------------------------------------------------------------- tools


def ensure_tools(install: bool = True) -> dict[str, str]:
    """Versions of restic and borg, installing the Debian packages if missing."""
    missing = [tool for tool in ("restic", "borg") if shutil.which(tool) is None]
    if missing and install:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "restic", "borgbackup"],
            check=False,
            env=env,
        )
    versions = {}
    for tool in ("restic", "borg"):
        if shutil.which(tool) is None:
            versions[tool] = "missing"
            continue
        done = subprocess.run(
            [tool, "version" if tool == "restic" else "--version"],
            capture_output=True,
            text=True,
            check=False,
        )
        versions[tool] = done.stdout.strip().splitlines()[0] if done.stdout else "?"
    return versions


def tool_env(work: Path) -> dict[str, str]:
    """Environment for restic and borg: passwords, caches inside ``work``."""
    env = dict(os.environ)
    env.update(
        RESTIC_PASSWORD=PEER_PASSWORD,
        RESTIC_CACHE_DIR=str(work / "restic-cache"),
        BORG_PASSPHRASE=PEER_PASSWORD,
        BORG_BASE_DIR=str(work / "borg-base"),
        BORG_DISPLAY_PASSPHRASE="no",
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
    )
    return env


# ---------------------------------------------------------------- dumps


def write_dumps(
    seed: int, agents: int, percent: float, after: bool, data: Path
) -> None:
    """Dump the state (before or after one change round) in both layouts."""
    rounds = 1 if after else 0
    total = generate.fleet_size(agents, percent, rounds)
    stamp = generate.round_time(rounds + 1)
    big = data / "big"
    big.mkdir(parents=True, exist_ok=True)
    generate.write_legacy(
        big / "wallet-backup.json",
        generate.iter_agents(seed, agents, percent, rounds),
        seed,
        stamp,
    )
    shards = data / "shards"
    if shards.exists():
        shutil.rmtree(shards)
    generate.write_legacy_shards(
        shards,
        generate.iter_agents(seed, agents, percent, rounds),
        total,
        SHARDS,
        seed,
        stamp,
    )


# ---------------------------------------------------------------- restic / borg


def _restic(step: str, layout: str, work: Path, data: Path, logs: Path) -> Measurement:
    repo = work / f"restic-{layout}"
    env = tool_env(work)
    base = ["restic", "-r", str(repo)]
    if step == "init":
        argv = [*base, "init"]
    elif step.startswith("backup"):
        argv = [*base, "backup", "--host", "bench", "--json", layout]
    else:
        target = work / f"restored-restic-{layout}"
        shutil.rmtree(target, ignore_errors=True)
        argv = [*base, "restore", "latest", "--target", str(target)]
    return run_measured(
        f"restic-{layout}-{step}",
        argv,
        env=env,
        cwd=data,
        watch=repo,
        logs=logs,
        parse_json=step.startswith("backup"),
    )


def _borg(step: str, layout: str, work: Path, data: Path, logs: Path) -> Measurement:
    repo = work / f"borg-{layout}"
    env = tool_env(work)
    cwd = data
    if step == "init":
        argv = ["borg", "init", "--encryption=repokey-blake2", str(repo)]
    elif step.startswith("backup"):
        argv = ["borg", "create", "--compression", "lz4", f"{repo}::{step}", layout]
    else:
        cwd = work / f"restored-borg-{layout}"
        shutil.rmtree(cwd, ignore_errors=True)
        cwd.mkdir(parents=True)
        argv = ["borg", "extract", f"{repo}::backup-after"]
    return run_measured(
        f"borg-{layout}-{step}", argv, env=env, cwd=cwd, watch=repo, logs=logs
    )


# ---------------------------------------------------------------- plain JSON


def json_dump(seed: int, agents: int, percent: float, output: Path) -> dict[str, Any]:
    """The legacy approach in one process: whole state in memory, dump, hash."""
    started = time.perf_counter()
    rounds = 1 if percent > 0 else 0
    wallets, records, balances = [], [], {}
    for agent in generate.iter_agents(seed, agents, percent, rounds):
        wallets.append(agent.wallet)
        records.append(agent.lifecycle)
        balances[agent.agent_id] = agent.balances
    backup = {
        "version": "1.0",
        "timestamp": generate.round_time(1),
        "type": "full",
        "encryptedMasterSeed": generate._fake_seed_envelope(seed),
        "wallets": wallets,
        "lifecycleRecords": records,
        "balanceSnapshots": balances,
        "checksum": "",
    }
    built = time.perf_counter()
    cpu_built = _cpu()
    compact = json.dumps(backup, separators=(",", ":"), ensure_ascii=False)
    backup["checksum"] = hashlib.sha256(compact.encode("utf-8")).hexdigest()
    del compact
    text = json.dumps(backup, indent=2, ensure_ascii=False)
    with open(output, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    done = time.perf_counter()
    return {
        "build_s": round(built - started, 3),
        "phase_wall_s": round(done - built, 3),
        "phase_cpu_s": round(_cpu() - cpu_built, 3),
        "bytes": len(text.encode("utf-8")),
    }


def json_load(path: Path) -> dict[str, Any]:
    """Read a legacy file back: parse and verify its checksum, as restore does."""
    started = time.perf_counter()
    cpu0 = _cpu()
    with open(path, encoding="utf-8") as handle:
        backup = json.load(handle)
    expected = backup["checksum"]
    backup["checksum"] = ""
    compact = json.dumps(backup, separators=(",", ":"), ensure_ascii=False)
    actual = hashlib.sha256(compact.encode("utf-8")).hexdigest()
    return {
        "phase_wall_s": round(time.perf_counter() - started, 3),
        "phase_cpu_s": round(_cpu() - cpu0, 3),
        "checksum_ok": actual == expected,
        "wallets": len(backup["wallets"]),
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _json_steps(seed: int, agents: int, work: Path, logs: Path) -> dict[str, Any]:
    script = str(Path(__file__).resolve())
    target = work / "plain-json" / "wallet-backup.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    dump = run_measured(
        "json-dump",
        [
            sys.executable,
            script,
            "json-dump",
            "--agents",
            str(agents),
            "--seed",
            str(seed),
            "-o",
            str(target),
        ],
        watch=target.parent,
        logs=logs,
        parse_json=True,
    )
    load = run_measured(
        "json-load",
        [sys.executable, script, "json-load", str(target)],
        logs=logs,
        parse_json=True,
    )
    for step in (dump, load):
        if step.ok and isinstance(step.output, dict):
            # The figure that compares: the measured phase, not the generator.
            step.extra["process_wall_s"] = step.wall_s
            step.wall_s = step.output["phase_wall_s"]
            step.cpu_s = step.output["phase_cpu_s"]
    shutil.rmtree(target.parent, ignore_errors=True)
    return {"dump": dump.as_dict(), "load": load.as_dict()}


# ---------------------------------------------------------------- driver


def run_peers(
    seed: int, agents: int, percent: float, work: Path, with_json: bool = True
) -> dict[str, Any]:
    """Measure restic, borg (both layouts) and plain JSON on one fleet."""
    work.mkdir(parents=True, exist_ok=True)
    logs, data = work / "logs", work / "data"
    results: dict[str, Any] = {"tools": ensure_tools()}
    started = time.perf_counter()
    write_dumps(seed, agents, percent, False, data)
    results["dump_before_s"] = round(time.perf_counter() - started, 3)
    results["dump_bytes"] = {lay: dir_size(data / lay) for lay in LAYOUTS}
    runners = {"restic": _restic, "borg": _borg}
    steps: dict[str, dict[str, Any]] = {}
    for tool, runner in runners.items():
        for layout in LAYOUTS:
            key = f"{tool}-{layout}"
            steps[key] = {"init": runner("init", layout, work, data, logs).as_dict()}
            steps[key]["backup"] = runner("backup", layout, work, data, logs).as_dict()
    started = time.perf_counter()
    write_dumps(seed, agents, percent, True, data)
    results["dump_after_s"] = round(time.perf_counter() - started, 3)
    for tool, runner in runners.items():
        for layout in LAYOUTS:
            key = f"{tool}-{layout}"
            after = runner("backup-after", layout, work, data, logs)
            steps[key]["backup_after"] = after.as_dict()
            steps[key]["restore"] = runner(
                "restore", layout, work, data, logs
            ).as_dict()
            shutil.rmtree(work / f"restored-{tool}-{layout}", ignore_errors=True)
    results["steps"] = steps
    if with_json:
        results["json"] = _json_steps(seed, agents, work, logs)
    return results


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A short text table of the peer figures."""
    head = f"{'peer step':34} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9}"
    lines = [f"{head} {'bytes added':>13}"]
    rows: list[tuple[str, dict[str, Any]]] = []
    for key, steps in results.get("steps", {}).items():
        for step in ("backup", "backup_after", "restore"):
            rows.append((f"{key} {step}", steps[step]))
    for step, figures in results.get("json", {}).items():
        rows.append((f"plain-json {step}", figures))
    for label, m in rows:
        added = "" if m.get("bytes_added") is None else f"{m['bytes_added']:,}"
        if m["status"] != "ok":
            lines.append(f"{label:34} {m['status']}: {m['error'][-80:]}")
            continue
        lines.append(
            f"{label:34} {m['wall_s']:8.2f} {m['cpu_s']:8.2f} "
            f"{m['peak_rss_mib']:9.1f} {added:>13}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="restic, borg and plain JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--agents", type=int, required=True)
    run.add_argument("--percent", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=generate.DEFAULT_SEED)
    run.add_argument("--work", type=Path, required=True)
    run.add_argument("--no-json", action="store_true")
    dump = sub.add_parser("json-dump")
    dump.add_argument("--agents", type=int, required=True)
    dump.add_argument("--seed", type=int, default=generate.DEFAULT_SEED)
    dump.add_argument("--after-percent", type=float, default=0.0)
    dump.add_argument("-o", "--output", type=Path, required=True)
    load = sub.add_parser("json-load")
    load.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "json-dump":
        print(
            json.dumps(
                json_dump(args.seed, args.agents, args.after_percent, args.output)
            )
        )
    elif args.command == "json-load":
        print(json.dumps(json_load(args.path)))
    else:
        results = run_peers(
            args.seed, args.agents, args.percent, args.work, not args.no_json
        )
        (args.work / "peers.json").write_text(json.dumps(results, indent=2))
        print("\n".join(summary_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
