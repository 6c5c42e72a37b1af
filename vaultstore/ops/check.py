"""The ``check`` operation: verify a repository and describe what is damaged."""

from __future__ import annotations

import logging

from vaultstore.repo.repository import CheckReport, Repository

log = logging.getLogger(__name__)


def run_check(repo: Repository, read_data: bool = False) -> CheckReport:
    """Verify every manifest, chain link, pack table and referenced object.

    With ``read_data`` every object's bytes are decrypted and their ids
    recomputed, and every sound snapshot's state is read back as a restore
    would read it and checked against its manifest (digest, agents, counts by
    lifecycle state). The report names each damaged thing and its snapshots.
    """
    report = repo.check(read_data=read_data)
    log.info(
        "check finished: %d problems",
        len(report.problems),
        extra={"event": "repo.check.done", "ok": report.ok, "readData": read_data},
    )
    return report


def report_text(report: CheckReport) -> str:
    """A person-readable rendering of a check report."""
    lines = [
        f"checked {report.snapshots} snapshots, {report.packs} packs, "
        f"{report.objects} objects"
        + (
            f" (all data read, {report.states_verified} snapshot states recomputed)"
            if report.read_data
            else ""
        )
    ]
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    for problem in report.problems:
        lines.append(f"DAMAGED {problem.what}: {problem.message}")
        if problem.snapshots:
            lines.append(
                "  snapshots affected: " + ", ".join(sorted(problem.snapshots))
            )
    lines.append(
        "no problems found" if report.ok else f"{len(report.problems)} problems"
    )
    return "\n".join(lines)
