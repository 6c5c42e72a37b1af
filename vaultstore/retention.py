"""Which snapshots to keep: a forget policy in restic's vocabulary.

Pure functions over snapshot descriptors; nothing here touches a repository.
:func:`plan` takes the snapshot list, a :class:`Policy` and the current time
and returns every snapshot once, either kept or removed, each with the reasons.
The same input always gives the same output.

Rules (one :class:`KeepRules` per snapshot type, applied only to snapshots of
that type, newest first):

- ``keep_last N``: the N newest;
- ``keep_daily / keep_weekly / keep_monthly / keep_yearly N``: the newest
  snapshot of each of the N most recent days, ISO weeks, months or years *that
  have a snapshot* (as restic counts them, so a gap or a clock jump does not
  empty the buckets); days are calendar days in the policy's time zone;
- ``keep_within D``: every snapshot whose time lies within the duration ``D``
  (``30d``, ``1y2m``, ``6w``, ``12h``) before the time of the newest snapshot
  of its type (not "now", so a clock that jumps forward deletes nothing).

Invariants added on top of the rules, whatever they say:

- dependencies: an incremental needs its parent chain back to its full, so
  every snapshot a kept incremental depends on is kept ("parent of ...");
  a full depends on nothing (it shares objects with its parent full, but
  prune keeps those by reference, not by chain);
- the clock: a snapshot dated after ``now`` is kept (the clock went back);
  the newest snapshot (by sequence number and by time) and the newest full
  are kept with their chains, so a backup in progress always finds its parent.

The default policy is the seed's: 52 weekly fulls (about one year) and every
incremental within 30 days.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

from vaultstore.errors import InputError

SnapshotType = Literal["full", "incremental"]

_DURATION_PART = re.compile(r"(\d+)([ymwdh])")
_BUCKET_RULES = ("daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Duration:
    """A calendar duration: years and months move the calendar, the rest is time."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def before(self, moment: datetime) -> datetime:
        """The instant this duration before ``moment`` (month ends clamped)."""
        total_months = moment.year * 12 + (moment.month - 1) - self.years * 12
        total_months -= self.months
        year, month = divmod(total_months, 12)
        month += 1
        day = min(moment.day, calendar.monthrange(year, month)[1])
        shifted = moment.replace(year=year, month=month, day=day)
        return shifted - timedelta(days=self.days, hours=self.hours)

    def __str__(self) -> str:
        parts = zip(
            (self.years, self.months, self.days, self.hours), "ymdh", strict=True
        )
        text = "".join(f"{n}{unit}" for n, unit in parts if n)
        return text or "0d"


def parse_duration(text: str) -> Duration:
    """Parse ``1y2m3w4d5h`` (years, months, weeks, days, hours; any subset).

    Raises:
        InputError: empty, unknown unit, or trailing garbage.
    """
    cleaned = text.strip().lower()
    pos = 0
    values = {"y": 0, "m": 0, "w": 0, "d": 0, "h": 0}
    for match in _DURATION_PART.finditer(cleaned):
        if match.start() != pos:
            break
        values[match.group(2)] += int(match.group(1))
        pos = match.end()
    if not cleaned or pos != len(cleaned):
        raise InputError(
            f"invalid duration {text!r}: use numbers with units y, m, w, d, h "
            "(for example 30d or 1y2m)"
        )
    return Duration(
        values["y"], values["m"], values["w"] * 7 + values["d"], values["h"]
    )


@dataclass(frozen=True)
class KeepRules:
    """restic-style keep rules for one snapshot type; zero means "not used"."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None

    def __post_init__(self) -> None:
        for name in ("last", *_BUCKET_RULES):
            if getattr(self, name) < 0:
                raise InputError(f"keep_{name} must not be negative")

    def is_empty(self) -> bool:
        """True when no rule keeps anything."""
        counts = (self.last, self.daily, self.weekly, self.monthly, self.yearly)
        return not any(counts) and self.within is None

    def describe(self) -> dict[str, int | str]:
        """The rules in use, as ``keep_*`` names for display."""
        shown: dict[str, int | str] = {}
        for name in ("last", *_BUCKET_RULES):
            if getattr(self, name):
                shown[f"keep_{name}"] = getattr(self, name)
        if self.within is not None:
            shown["keep_within"] = str(self.within)
        return shown


def _default_full() -> KeepRules:
    return KeepRules(weekly=52)


def _default_incremental() -> KeepRules:
    return KeepRules(within=Duration(days=30))


@dataclass(frozen=True)
class Policy:
    """Keep rules for fulls and for incrementals, and the calendar's time zone."""

    full: KeepRules = field(default_factory=_default_full)
    incremental: KeepRules = field(default_factory=_default_incremental)
    tz: tzinfo = UTC

    @classmethod
    def uniform(cls, rules: KeepRules, tz: tzinfo = UTC) -> Policy:
        """One rule set for every snapshot, whatever its type (restic's way)."""
        return cls(full=rules, incremental=rules, tz=tz)


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class SnapshotInfo:
    """What retention needs to know about one snapshot."""

    id: str
    seq: int
    type: SnapshotType
    time: datetime
    parent: str | None = None
    # The vault that took it: the policy applies to each vault's snapshots on
    # their own, as restic applies it per host (several vaults may share a
    # repository).
    group: str = ""


@dataclass(frozen=True)
class Decision:
    """One snapshot and why it is kept or removed."""

    snapshot: SnapshotInfo
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """The outcome of a policy: every snapshot appears in exactly one list."""

    keep: tuple[Decision, ...]
    remove: tuple[Decision, ...]

    @property
    def keep_ids(self) -> frozenset[str]:
        """Ids of kept snapshots."""
        return frozenset(d.snapshot.id for d in self.keep)

    @property
    def remove_ids(self) -> frozenset[str]:
        """Ids of removed snapshots."""
        return frozenset(d.snapshot.id for d in self.remove)

    def as_dict(self) -> dict[str, list[dict[str, object]]]:
        """JSON-ready form, newest first."""
        return {
            "keep": [_decision_dict(d) for d in self.keep],
            "remove": [_decision_dict(d) for d in self.remove],
        }


def _decision_dict(decision: Decision) -> dict[str, object]:
    snap = decision.snapshot
    return {
        "id": snap.id,
        "seq": snap.seq,
        "type": snap.type,
        "time": snap.time.isoformat(),
        "parent": snap.parent,
        "reasons": list(decision.reasons),
    }


def _aware(moment: datetime) -> datetime:
    # Descriptors come from manifests, which store UTC; a naive time is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _bucket_key(rule: str, moment: datetime) -> tuple[int, ...]:
    if rule == "daily":
        return (moment.year, moment.month, moment.day)
    if rule == "weekly":
        iso = moment.isocalendar()
        return (iso.year, iso.week)
    if rule == "monthly":
        return (moment.year, moment.month)
    return (moment.year,)


def _newest_first(snapshots: Iterable[SnapshotInfo]) -> list[SnapshotInfo]:
    return sorted(snapshots, key=lambda s: (_aware(s.time), s.seq, s.id), reverse=True)


def _apply_rules(
    snapshots: Sequence[SnapshotInfo],
    rules: KeepRules,
    tz: tzinfo,
    reasons: dict[str, list[str]],
) -> None:
    """Add rule reasons for one type's snapshots (given newest first)."""
    if not snapshots:
        return
    remaining = {rule: getattr(rules, rule) for rule in _BUCKET_RULES}
    last_bucket: dict[str, tuple[int, ...] | None] = dict.fromkeys(_BUCKET_RULES)
    cutoff = None
    if rules.within is not None:
        cutoff = rules.within.before(_aware(snapshots[0].time))
    for index, snap in enumerate(snapshots):
        moment = _aware(snap.time)
        local = moment.astimezone(tz)
        if index < rules.last:
            reasons[snap.id].append(f"last {rules.last}")
        for rule in _BUCKET_RULES:
            bucket = _bucket_key(rule, local)
            if remaining[rule] > 0 and bucket != last_bucket[rule]:
                last_bucket[rule] = bucket
                remaining[rule] -= 1
                reasons[snap.id].append(f"{rule} {getattr(rules, rule)}")
        if cutoff is not None and moment >= cutoff:
            reasons[snap.id].append(f"within {rules.within}")


def _pin_newest(
    snapshots: Sequence[SnapshotInfo], now: datetime, reasons: dict[str, list[str]]
) -> None:
    """Clock guards: the newest snapshots and anything after ``now`` stay."""
    by_seq = max(snapshots, key=lambda s: (s.seq, s.id))
    reasons[by_seq.id].append("newest snapshot")
    by_time = _newest_first(snapshots)[0]
    if by_time.id != by_seq.id:
        reasons[by_time.id].append("newest snapshot by time")
    fulls = [s for s in snapshots if s.type == "full"]
    if fulls:
        reasons[max(fulls, key=lambda s: (s.seq, s.id)).id].append("newest full")
    for snap in snapshots:
        if _aware(snap.time) > now:
            reasons[snap.id].append("dated after now (clock went back?)")


def _close_over_parents(
    snapshots: Sequence[SnapshotInfo], reasons: dict[str, list[str]]
) -> None:
    """Keep every snapshot a kept incremental depends on."""
    by_id = {s.id: s for s in snapshots}
    pending = [s for s in snapshots if reasons[s.id]]
    while pending:
        snap = pending.pop()
        if snap.type != "incremental" or snap.parent is None:
            continue
        parent = by_id.get(snap.parent)
        if parent is None:
            # Already gone: nothing to keep; `check` reports the broken chain.
            continue
        note = f"parent of {snap.id}"
        if not reasons[parent.id]:
            pending.append(parent)
        if note not in reasons[parent.id]:
            reasons[parent.id].append(note)


def plan(
    snapshots: Iterable[SnapshotInfo],
    policy: Policy = DEFAULT_POLICY,
    *,
    now: datetime,
) -> Plan:
    """Decide, for every snapshot, keep or remove, with reasons.

    Raises:
        InputError: two descriptors share an id, or a type is unknown.
    """
    ordered = _newest_first(snapshots)
    _check_descriptors(ordered)
    reasons: dict[str, list[str]] = {s.id: [] for s in ordered}
    if not ordered:
        return Plan((), ())

    for group in sorted({s.group for s in ordered}):
        members = [s for s in ordered if s.group == group]
        for kind, rules in (
            ("full", policy.full),
            ("incremental", policy.incremental),
        ):
            of_kind = [s for s in members if s.type == kind]
            _apply_rules(of_kind, rules, policy.tz, reasons)
        _pin_newest(members, _aware(now), reasons)
    _close_over_parents(ordered, reasons)

    keep = tuple(Decision(s, tuple(reasons[s.id])) for s in ordered if reasons[s.id])
    remove = tuple(
        Decision(s, (_removal_reason(s, policy),)) for s in ordered if not reasons[s.id]
    )
    return Plan(keep, remove)


def _check_descriptors(snapshots: Sequence[SnapshotInfo]) -> None:
    seen: set[str] = set()
    for snap in snapshots:
        if snap.id in seen:
            raise InputError(f"snapshot {snap.id} listed twice", snapshot=snap.id)
        if snap.type not in ("full", "incremental"):
            raise InputError(f"snapshot {snap.id} has unknown type {snap.type!r}")
        seen.add(snap.id)


def _removal_reason(snap: SnapshotInfo, policy: Policy) -> str:
    rules = policy.full if snap.type == "full" else policy.incremental
    if rules.is_empty():
        return f"no keep rule for {snap.type} snapshots"
    shown = ", ".join(f"{k} {v}" for k, v in rules.describe().items())
    return f"matches none of {shown}; nothing kept depends on it"


def removal_order(plan_: Plan) -> list[SnapshotInfo]:
    """Snapshots to delete, dependents first (highest sequence first).

    Deleting a child before its parent means a run interrupted half-way never
    leaves an incremental whose parent is already gone.
    """
    return sorted((d.snapshot for d in plan_.remove), key=lambda s: -s.seq)


def apply(
    plan_: Plan,
    delete: Callable[[SnapshotInfo], None],
) -> list[str]:
    """Delete the plan's removals in a safe order; returns the deleted ids."""
    deleted = []
    for snap in removal_order(plan_):
        delete(snap)
        deleted.append(snap.id)
    return deleted
