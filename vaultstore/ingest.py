"""Ingest NDJSON change events into the journal.

Input: UTF-8, one JSON object per line (LF or CRLF), camelCase fields as in the
legacy format; blank lines are ignored. Each line is one event:

    {"kind":"wallet","wallet":{...legacy wallet...}}
    {"kind":"lifecycle","record":{...legacy lifecycle record...}}
    {"kind":"balances","agentId":"...","balances":[...legacy balance entries...]}
    {"kind":"remove","agentId":"..."}

Any line may also carry ``"time"`` (ms since the epoch) for the event's time;
otherwise the time of ingest is used. Other keys are refused.

Semantics (upsert): ``wallet`` replaces the agent's wallet, ``lifecycle`` its
lifecycle record (the first record of an agent may be in any state, later ones
must be a valid transition or the same state; archived is final),
``balances`` replaces its balance list, ``remove`` removes the agent (a
tombstone in the journal). A line that would not change the agent's record is
counted as skipped and takes no LSN, so ingesting the same input twice leaves
the same state and appends nothing the second time. (An input that changes
one agent's field more than once, or removes an agent and creates it again,
replays those intermediate steps on a second run; it still ends in the same
state.)

**Bad input rule: all or nothing.** One run is one journal transaction. The
first malformed line (bad JSON, unknown kind, wrong type, missing or unknown
field, invalid transition) stops the run with one ``InputError`` (exit code 7)
whose message names the line number and the field, and *nothing* of that run
is written — the lines before it included. Fix the line and run again.

Lines are streamed; rows are written to SQLite in batches inside the single
transaction (SQLite spills them to its write-ahead log), so memory stays flat
however large the input is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vaultstore.errors import InputError, NotFoundError
from vaultstore.journal import Event, Journal

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 << 20

# kind -> (required top-level keys besides "kind", key of the payload)
_SHAPES: dict[str, tuple[frozenset[str], str]] = {
    "wallet": (frozenset({"wallet"}), "wallet"),
    "lifecycle": (frozenset({"record"}), "record"),
    "balances": (frozenset({"agentId", "balances"}), "balances"),
    "remove": (frozenset({"agentId"}), ""),
}


@dataclass
class IngestReport:
    """What one ingest run did."""

    events_read: int = 0
    applied: int = 0
    skipped: int = 0
    last_lsn: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "eventsRead": self.events_read,
            "applied": self.applied,
            "skipped": self.skipped,
            "lastLsn": self.last_lsn,
        }


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every line: json.loads with options builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def parse_event(line: bytes | str) -> Event:
    """One NDJSON line as an Event (payload not yet validated).

    Raises:
        InputError: the line is not a JSON object of a known kind and shape.
    """
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        obj = _DECODER.decode(text)
    except RecursionError as exc:
        raise InputError("json: nested too deeply", field="json") from exc
    except ValueError as exc:
        raise InputError(f"json: not valid JSON ({exc})", field="json") from exc
    if not isinstance(obj, dict):
        raise InputError("json: a line must be a JSON object", field="json")
    kind = obj.get("kind")
    shape = _SHAPES.get(kind) if isinstance(kind, str) else None
    if shape is None:
        raise InputError(
            f"kind: unknown event kind {kind!r} (expected one of "
            + ", ".join(_SHAPES)
            + ")",
            field="kind",
        )
    required, payload_key = shape
    _check_top_level(obj, required)
    time_ms = obj.get("time")
    if time_ms is not None and (
        type(time_ms) is not int or time_ms < 0  # bool is not an int here
    ):
        raise InputError("time: must be a non-negative integer (ms)", field="time")
    payload = obj[payload_key] if payload_key else None
    agent_id: Any
    if kind in ("wallet", "lifecycle"):
        agent_id = payload.get("agentId") if isinstance(payload, dict) else None
    else:
        agent_id = obj["agentId"]
    # A non-string agentId is caught by validation, which names the field.
    return Event(str(kind), agent_id, payload, time_ms)


def _check_top_level(obj: dict[str, Any], required: frozenset[str]) -> None:
    for key in required:
        if key not in obj:
            raise InputError(f"{key}: is missing", field=key)
    for key in obj:
        if key != "kind" and key != "time" and key not in required:
            raise InputError(f"{key}: is not a known field for this kind", field=key)


def _numbered(lines: Iterable[bytes | str]) -> Iterator[tuple[int, bytes | str]]:
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_BYTES:
            raise InputError(
                f"line {number}: longer than {MAX_LINE_BYTES} bytes", line=number
            )
        if line.strip():
            yield number, line


def ingest_lines(
    journal: Journal, lines: Iterable[bytes | str], *, legacy: bool = False
) -> IngestReport:
    """Apply NDJSON ``lines`` to ``journal`` in one transaction (all or nothing).

    Raises:
        InputError: a line is malformed; its message names the line and field,
            and nothing of this run is written.
        TransitionError: a line's lifecycle change is not allowed (same rule).
    """
    report = IngestReport()
    with journal.writer(legacy=legacy) as writer:
        for number, line in _numbered(lines):
            report.events_read += 1
            try:
                writer.add(parse_event(line))
            except InputError as exc:
                raise type(exc)(
                    f"line {number}: {exc.message}", line=number, **exc.fields
                ) from exc
    report.applied, report.skipped, report.last_lsn = (
        writer.applied,
        writer.skipped,
        writer.lsn,
    )
    log.info(
        "ingested %d events: %d applied, %d unchanged",
        report.events_read,
        report.applied,
        report.skipped,
        extra={"event": "ingest.done", **report.as_dict()},
    )
    return report


def _read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    while line := stream.readline(MAX_LINE_BYTES + 1):
        yield line


def ingest_stream(
    journal: Journal, stream: IO[bytes], *, legacy: bool = False
) -> IngestReport:
    """Ingest NDJSON from a binary stream (see :func:`ingest_lines`)."""
    return ingest_lines(journal, _read_lines(stream), legacy=legacy)


def ingest_file(
    journal: Journal, path: Path | str, *, legacy: bool = False
) -> IngestReport:
    """Ingest an NDJSON file (see :func:`ingest_lines`).

    Raises:
        NotFoundError: the file cannot be opened.
    """
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise NotFoundError(
            f"cannot open {path}: {exc.strerror}", path=str(path)
        ) from exc
    with stream:
        return ingest_stream(journal, stream, legacy=legacy)
