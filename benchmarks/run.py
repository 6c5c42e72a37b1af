"""vaultstore against restic, borg and plain JSON, on the same state, in one run.

For each fleet size N: generate the state and a 1 % change round
(``generate.py``), run every vaultstore step as a subprocess of the real
command line with the production KDF (``VAULTSTORE_TESTING`` unset), run the
peers (``peers.py``) on the same state, then print a table of figures and of
vaultstore/peer ratios against the targets of DESIGN.md §5, write
``results.json`` and draw ``results.png`` (time and bytes against N).

A vaultstore command that does not exist yet ("No such command") is recorded
as "not available" and the run goes on.

Usage::

    python benchmarks/run.py --agents 10000,100000[,1000000] [--out DIR]
        [--percent 1] [--seed S] [--skip-peers] [--keep-work]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import generate
import peers
from measure import NOT_AVAILABLE, Measurement, dir_size, run_measured

BENCH_PASSWORD = "Bench-Vault-Passw0rd!2026"
CAVEAT = (
    "Reference machine: 2 cores, shared with other work and noisy; absolute "
    "times vary from run to run. Ratios measured in the same run are what count."
)

VAULTSTORE_STEPS = (
    "init",
    "ingest",
    "backup_full",
    "ingest_changes",
    "backup_incremental",
    "backup_full_after",
    "restore",
    "export_json",
    "import_json",
    "check_read_data",
)


def vaultstore_command() -> list[str]:
    """The installed ``vaultstore`` entry point beside this Python."""
    script = Path(sys.executable).parent / "vaultstore"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from vaultstore.cli.main import main; main()"]


def vaultstore_env(vault: Path, repo: Path) -> dict[str, str]:
    """Environment of one vaultstore run: production KDF, password via env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTSTORE_")}
    env.pop("WALLET_BACKUP_PASSWORD", None)
    env.update(
        VAULTSTORE_VAULT=str(vault),
        VAULTSTORE_REPOSITORY=str(repo),
        VAULTSTORE_PASSWORD=BENCH_PASSWORD,
    )
    return env


def make_mnemonic(work: Path) -> Path:
    """A new mnemonic from ``vaultstore seed generate`` (file 0600 in ``work``)."""
    path = work / "mnemonic.txt"
    step = run_measured(
        "vaultstore-seed-generate",
        [*vaultstore_command(), "seed", "generate", "--output", str(path)],
        logs=work / "logs",
    )
    if not step.ok:
        raise SystemExit(f"vaultstore seed generate failed: {step.error}")
    return path


def run_vaultstore(
    work: Path,
    state: Path,
    changes: Path,
    mnemonic: Path | None,
    profile: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Every vaultstore step on one fleet, each as a measured subprocess."""
    vs = vaultstore_command()
    vault, repo, logs = work / "vault", work / "repo", work / "logs"
    env = vaultstore_env(vault, repo)
    export = work / "export" / "wallet-backup.json"
    export.parent.mkdir(parents=True, exist_ok=True)
    # import-json creates the vault it imports into (seed from the file).
    fresh_vault = work / "vault-import"
    fresh_env = vaultstore_env(fresh_vault, work / "repo-import")
    init = ["init", "--mnemonic-stdin", "--json"] if mnemonic else ["init", "--json"]
    plan: list[tuple[str, list[str], dict[str, str], Path | None]] = [
        ("init", init, env, repo),
        ("ingest", ["ingest", str(state), "--json"], env, vault),
        ("backup_full", ["backup", "--full", "--json"], env, repo),
        ("ingest_changes", ["ingest", str(changes), "--json"], env, vault),
        ("backup_incremental", ["backup", "--incremental", "--json"], env, repo),
        ("backup_full_after", ["backup", "--full", "--json"], env, repo),
        (
            "restore",
            ["restore", "latest", "--target", str(work / "restored"), "--json"],
            env,
            work / "restored",
        ),
        (
            "export_json",
            ["export-json", "latest", "-o", str(export), "--json"],
            env,
            export.parent,
        ),
        ("import_json", ["import-json", str(export), "--json"], fresh_env, fresh_vault),
        ("check_read_data", ["check", "--read-data", "--json"], env, repo),
    ]
    results: dict[str, Any] = {}
    for name, args, step_env, watch in plan:
        command = [*vs, *args]
        prof = work / "profiles" / f"{name}.prof"
        if name in profile:
            prof.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "cProfile", "-o", str(prof)]
            command += ["-m", "vaultstore", *args]
        step = run_measured(
            f"vaultstore-{name}",
            command,
            env=step_env,
            cwd=work,
            watch=watch,
            logs=logs,
            parse_json=True,
            stdin=mnemonic if name == "init" else None,
        )
        if name in profile and prof.exists():
            step.extra["profiled"] = True
            step.extra["profile_top"] = profile_top(prof)
        results[name] = step.as_dict()
        _say(f"  vaultstore {name:20} {_brief(step)}")
        if "profile_top" in step.extra:
            _say("\n".join(f"      {line}" for line in step.extra["profile_top"]))
    results["sizes"] = {"vault": dir_size(vault), "repository": dir_size(repo)}
    return results


def profile_top(path: Path, count: int = 15) -> list[str]:
    """The functions with the most own time in a cProfile dump, as text lines."""
    import pstats

    stats = pstats.Stats(str(path))
    rows = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2],
        reverse=True,
    )
    lines = [f"{'own s':>8} {'cum s':>8} {'calls':>9}  function"]
    for (file, line, func), (_, calls, own, cum, _) in rows[:count]:
        where = f"{Path(file).name}:{line}({func})" if line else func
        lines.append(f"{own:8.2f} {cum:8.2f} {calls:9d}  {where}")
    return lines


def _brief(step: Measurement) -> str:
    if step.status != "ok":
        first = step.error.splitlines()[-1] if step.error else ""
        return f"{step.status} ({first[:100]})"
    added = "" if step.bytes_added is None else f", {step.bytes_added:,} B added"
    cost = f"{step.wall_s:.2f} s, cpu {step.cpu_s:.2f} s"
    return f"{cost}, {step.peak_rss_mib:.0f} MiB{added}"


def _say(text: str) -> None:
    print(text, flush=True)


def generate_inputs(
    work: Path, seed: int, agents: int, percent: float, mnemonic: Path | None
) -> dict[str, Any]:
    """State and change NDJSON files, timed (generator figures, not a target)."""
    script = str(Path(__file__).with_name("generate.py"))
    state, changes = work / "state.ndjson", work / "changes.ndjson"
    common = ["--agents", str(agents), "--seed", str(seed)]
    if mnemonic is not None:
        common += ["--mnemonic-file", str(mnemonic)]
    gen_state = run_measured(
        "generate-state",
        [sys.executable, script, "state", *common, "-o", str(state)],
        logs=work / "logs",
        parse_json=True,
    )
    gen_changes = run_measured(
        "generate-changes",
        [sys.executable, script, "changes", *common, "--percent", str(percent)]
        + ["-o", str(changes)],
        logs=work / "logs",
        parse_json=True,
    )
    for step in (gen_state, gen_changes):
        if not step.ok:
            raise SystemExit(f"generator failed: {step.error}")
    return {
        "state": gen_state.as_dict(),
        "changes": gen_changes.as_dict(),
        "state_bytes": state.stat().st_size,
        "changes_bytes": changes.stat().st_size,
    }


# ---------------------------------------------------------------- ratios


def _fig(step: dict[str, Any] | None, key: str) -> float | None:
    if not step or step.get("status") != "ok":
        return None
    value = step.get(key)
    return None if value is None else float(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Each DESIGN.md §5 target: vaultstore figure, peer figures, ratio, met?"""
    vs = run.get("vaultstore", {})
    steps = run.get("peers", {}).get("steps", {})
    plain = run.get("peers", {}).get("json", {})

    def peer(key: str, step: str, fig: str) -> float | None:
        return _fig(steps.get(key, {}).get(step), fig)

    full_s = _fig(vs.get("backup_full"), "wall_s")
    full_b = _fig(vs.get("backup_full"), "bytes_added")
    incr_b = _fig(vs.get("backup_incremental"), "bytes_added")
    incr_s = _fig(vs.get("backup_incremental"), "wall_s")
    full2_b = _fig(vs.get("backup_full_after"), "bytes_added")
    restore_s = _fig(vs.get("restore"), "wall_s")
    rss = [
        _fig(vs.get(name), "peak_rss_mib")
        for name in VAULTSTORE_STEPS
        if _fig(vs.get(name), "peak_rss_mib") is not None
    ]
    peak = max(rss) if rss else None

    def peer_incr_share(key: str) -> float | None:
        return _ratio(
            peer(key, "backup_after", "bytes_added"), peer(key, "backup", "bytes_added")
        )

    rows = [
        {
            "target": "first full backup time <= borg",
            "vaultstore": full_s,
            "peers": {
                "borg-big": peer("borg-big", "backup", "wall_s"),
                "restic-big": peer("restic-big", "backup", "wall_s"),
                "plain-json": _fig(plain.get("dump"), "wall_s"),
            },
            "ratio": _ratio(full_s, peer("borg-big", "backup", "wall_s")),
            "limit": 1.0,
        },
        {
            "target": "incremental bytes added <= 1.5 % of first full",
            "vaultstore": _ratio(incr_b, full_b),
            "peers": {k: peer_incr_share(k) for k in steps},
            "ratio": _ratio(incr_b, full_b),
            "limit": 0.015,
        },
        {
            "target": "incremental time <= 1 s",
            "vaultstore": incr_s,
            "peers": {k: peer(k, "backup_after", "wall_s") for k in steps},
            "ratio": incr_s,
            "limit": 1.0,
        },
        {
            "target": "full after changes bytes added <= 3 % of first full",
            "vaultstore": _ratio(full2_b, full_b),
            "peers": {},
            "ratio": _ratio(full2_b, full_b),
            "limit": 0.03,
        },
        {
            "target": "full restore time <= restic",
            "vaultstore": restore_s,
            "peers": {
                "restic-big": peer("restic-big", "restore", "wall_s"),
                "borg-big": peer("borg-big", "restore", "wall_s"),
                "plain-json load": _fig(plain.get("load"), "wall_s"),
            },
            "ratio": _ratio(restore_s, peer("restic-big", "restore", "wall_s")),
            "limit": 1.0,
        },
        {
            "target": "peak memory, any command <= 300 MiB",
            "vaultstore": peak,
            "peers": {
                "restic-big": peer("restic-big", "backup", "peak_rss_mib"),
                "borg-big": peer("borg-big", "backup", "peak_rss_mib"),
                "plain-json dump": _fig(plain.get("dump"), "peak_rss_mib"),
            },
            "ratio": peak,
            "limit": 300.0,
        },
    ]
    for row in rows:
        ratio = row["ratio"]
        row["met"] = None if ratio is None else ratio <= row["limit"]
    return rows


# ---------------------------------------------------------------- output


def _num(value: float | None, fmt: str = "{:.3g}") -> str:
    return "n/a" if value is None else fmt.format(value)


def table(run: dict[str, Any]) -> str:
    """Figures and ratios of one fleet size as text."""
    lines = [f"\n=== N = {run['agents']:,} agents ===", CAVEAT, ""]
    head = f"{'vaultstore step':22} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9}"
    lines.append(f"{head} {'bytes added':>14}")
    for name in VAULTSTORE_STEPS:
        step = run["vaultstore"].get(name)
        if step is None:
            continue
        if step["status"] != "ok":
            lines.append(f"{name:22} {step['status']}")
            continue
        added = "" if step["bytes_added"] is None else f"{step['bytes_added']:,}"
        lines.append(
            f"{name:22} {step['wall_s']:8.2f} {step['cpu_s']:8.2f} "
            f"{step['peak_rss_mib']:9.1f} {added:>14}"
        )
    if "peers" in run:
        lines += ["", *peers.summary_lines(run["peers"])]
    lines += ["", f"{'target (DESIGN.md §5)':52} {'vaultstore':>11} {'met':>5}  peers"]
    for row in run["targets"]:
        met = {None: "n/a", True: "yes", False: "NO"}[row["met"]]
        others = ", ".join(f"{k} {_num(v)}" for k, v in row["peers"].items())
        lines.append(
            f"{row['target']:52} {_num(row['vaultstore']):>11} {met:>5}  {others}"
        )
    return "\n".join(lines)


def chart(runs: list[dict[str, Any]], path: Path) -> None:
    """Time and bytes added against N, log-log, vaultstore and peers."""
    try:
        import matplotlib
    except ImportError:
        print(f"no chart: matplotlib is missing (pip install -e '.[bench]'); {path}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [run["agents"] for run in runs]
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5))

    def series(getter: Any) -> list[float]:
        return [getter(run) or float("nan") for run in runs]

    def vs(step: str, fig_key: str) -> Any:
        return lambda run: _fig(run["vaultstore"].get(step), fig_key)

    def pr(key: str, step: str, fig_key: str) -> Any:
        return lambda run: _fig(
            run.get("peers", {}).get("steps", {}).get(key, {}).get(step), fig_key
        )

    time_lines = {
        "vaultstore full": vs("backup_full", "wall_s"),
        "vaultstore incremental": vs("backup_incremental", "wall_s"),
        "vaultstore restore": vs("restore", "wall_s"),
        "vaultstore ingest": vs("ingest", "wall_s"),
        "restic backup (big file)": pr("restic-big", "backup", "wall_s"),
        "restic 2nd backup": pr("restic-big", "backup_after", "wall_s"),
        "borg backup (big file)": pr("borg-big", "backup", "wall_s"),
        "borg 2nd backup": pr("borg-big", "backup_after", "wall_s"),
        "restic restore": pr("restic-big", "restore", "wall_s"),
        "plain JSON dump": lambda r: _fig(
            r.get("peers", {}).get("json", {}).get("dump"), "wall_s"
        ),
    }
    byte_lines = {
        "vaultstore full": vs("backup_full", "bytes_added"),
        "vaultstore incremental": vs("backup_incremental", "bytes_added"),
        "vaultstore full after 1%": vs("backup_full_after", "bytes_added"),
        "restic 1st (big file)": pr("restic-big", "backup", "bytes_added"),
        "restic 2nd (big file)": pr("restic-big", "backup_after", "bytes_added"),
        "restic 2nd (shards)": pr("restic-shards", "backup_after", "bytes_added"),
        "borg 1st (big file)": pr("borg-big", "backup", "bytes_added"),
        "borg 2nd (big file)": pr("borg-big", "backup_after", "bytes_added"),
        "borg 2nd (shards)": pr("borg-shards", "backup_after", "bytes_added"),
    }
    for axis, lines, label in (
        (ax_t, time_lines, "wall time (s)"),
        (ax_b, byte_lines, "bytes added to the repository"),
    ):
        for name, getter in lines.items():
            values = series(getter)
            if any(v == v for v in values):  # not all NaN
                axis.plot(sizes, values, marker="o", label=name)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("agents (N)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    fig.suptitle("vaultstore vs restic, borg, plain JSON (2 shared cores: noisy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "caveat": CAVEAT,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": _git_head(),
    }


def _git_head() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,
    )
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="10000,100000", help="comma-separated")
    parser.add_argument("--percent", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=generate.DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-json", action="store_true", help="no plain JSON peer")
    parser.add_argument("--keep-work", action="store_true")
    parser.add_argument(
        "--profile",
        default="",
        help="comma-separated vaultstore steps to run under cProfile (their "
        "times then include the profiler's overhead); the top functions by own "
        "time go to the output and results.json, the dumps to work/profiles",
    )
    parser.add_argument(
        "--random-addresses",
        action="store_true",
        help="faster generation; restore and import-json then refuse the "
        "wallets (their addresses do not derive from the vault's seed)",
    )
    args = parser.parse_args(argv)
    sizes = [int(float(x)) for x in args.agents.split(",") if x.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "percent": args.percent,
        "runs": [],
    }
    if not args.skip_peers:
        results["machine"]["tools"] = peers.ensure_tools()
    for agents in sizes:
        work = args.out / f"work-{agents}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _say(f"N = {agents:,}: generating state and {args.percent} % changes")
        run: dict[str, Any] = {"agents": agents}
        mnemonic = None if args.random_addresses else make_mnemonic(work)
        run["generate"] = generate_inputs(
            work, args.seed, agents, args.percent, mnemonic
        )
        run["vaultstore"] = run_vaultstore(
            work,
            work / "state.ndjson",
            work / "changes.ndjson",
            mnemonic,
            frozenset(x.strip() for x in args.profile.split(",") if x.strip()),
        )
        if not args.skip_peers:
            _say("  peers: restic, borg, plain JSON")
            run["peers"] = peers.run_peers(
                args.seed, agents, args.percent, work / "peers", not args.skip_json
            )
        run["targets"] = targets(run)
        results["runs"].append(run)
        _say(table(run))
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    chart(results["runs"], args.out / "results.png")
    _say(f"\nwrote {args.out / 'results.json'} and {args.out / 'results.png'}")
    _say(_status_note(results))
    return 0


def _status_note(results: dict[str, Any]) -> str:
    missing = sorted(
        {
            name
            for run in results["runs"]
            for name, step in run["vaultstore"].items()
            if isinstance(step, dict) and step.get("status") == NOT_AVAILABLE
        }
    )
    if not missing:
        return CAVEAT
    return f"vaultstore steps not available yet: {', '.join(missing)}\n{CAVEAT}"


if __name__ == "__main__":
    sys.exit(main())
