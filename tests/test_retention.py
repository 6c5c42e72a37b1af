"""The forget policy: rules, dependency closure, clock guards, determinism."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaultstore.errors import InputError
from vaultstore.retention import (
    DEFAULT_POLICY,
    Duration,
    KeepRules,
    Policy,
    SnapshotInfo,
    apply,
    parse_duration,
    plan,
    removal_order,
)

START = datetime(2025, 1, 5, 0, 0, tzinfo=UTC)  # a Sunday


def weekly_and_daily(days: int, start: datetime = START) -> list[SnapshotInfo]:
    """A full every Sunday, an incremental every other day, chained."""
    snaps: list[SnapshotInfo] = []
    last: SnapshotInfo | None = None
    for day in range(days):
        moment = start + timedelta(days=day)
        kind = "full" if moment.weekday() == 6 else "incremental"
        parent = last.id if (last is not None and kind == "incremental") else None
        snap = SnapshotInfo(f"s{day:04d}", day + 1, kind, moment, parent)
        snaps.append(snap)
        last = snap
    return snaps


def chain_closure(snaps: list[SnapshotInfo], ids: set[str]) -> set[str]:
    by_id = {s.id: s for s in snaps}
    result = set(ids)
    for snap_id in ids:
        cur = by_id[snap_id]
        while cur.type == "incremental" and cur.parent is not None:
            cur = by_id[cur.parent]
            result.add(cur.id)
    return result


def test_default_policy_keeps_52_weekly_fulls_and_30_days_of_incrementals() -> None:
    snaps = weekly_and_daily(2 * 365)
    result = plan(snaps, DEFAULT_POLICY, now=snaps[-1].time + timedelta(hours=1))

    fulls = [s for s in snaps if s.type == "full"]
    incs = [s for s in snaps if s.type == "incremental"]
    cutoff = incs[-1].time - timedelta(days=30)
    wanted = {s.id for s in fulls[-52:]} | {s.id for s in incs if s.time >= cutoff}
    assert result.keep_ids == chain_closure(snaps, wanted)
    assert len([s for s in snaps if s.id in result.keep_ids and s.type == "full"]) == 52
    assert result.keep_ids.isdisjoint(result.remove_ids)
    assert result.keep_ids | result.remove_ids == {s.id for s in snaps}


def test_kept_incremental_keeps_its_whole_chain_back_to_the_full() -> None:
    snaps = weekly_and_daily(20)  # fulls on days 0, 7, 14
    policy = Policy(full=KeepRules(), incremental=KeepRules(last=1))
    result = plan(snaps, policy, now=snaps[-1].time)

    # Newest incremental is day 19; its chain is days 14..18.
    assert result.keep_ids == {f"s{d:04d}" for d in range(14, 20)}
    reasons = {d.snapshot.id: d.reasons for d in result.keep}
    assert "parent of s0015" in reasons["s0014"]
    assert "newest full" in reasons["s0014"]


def test_a_full_does_not_keep_the_full_before_it() -> None:
    snaps = weekly_and_daily(15)
    snaps = [
        s
        if s.type != "full" or s.seq == 1
        else SnapshotInfo(s.id, s.seq, s.type, s.time, "s0000")
        for s in snaps
    ]
    result = plan(
        snaps,
        Policy(full=KeepRules(last=1), incremental=KeepRules()),
        now=snaps[-1].time,
    )
    assert "s0000" in result.remove_ids


@pytest.mark.reliability(21)
def test_clock_moving_backwards_keeps_the_newest_and_everything_after_now() -> None:
    snaps = weekly_and_daily(60)
    nothing = Policy(full=KeepRules(), incremental=KeepRules())
    # The clock was set back 10 days after the last backup.
    now = snaps[-1].time - timedelta(days=10)
    result = plan(snaps, nothing, now=now)

    after_now = {s.id for s in snaps if s.time > now}
    assert after_now <= result.keep_ids
    newest = max(snaps, key=lambda s: s.seq)
    newest_full = max((s for s in snaps if s.type == "full"), key=lambda s: s.seq)
    assert {newest.id, newest_full.id} <= result.keep_ids
    assert result.keep_ids == chain_closure(
        snaps, after_now | {newest.id, newest_full.id}
    )
    reasons = {d.snapshot.id: d.reasons for d in result.keep}
    assert any("after now" in r for r in reasons[newest.id])


@pytest.mark.reliability(21)
def test_clock_far_in_the_past_removes_nothing_recent_under_the_defaults() -> None:
    snaps = weekly_and_daily(100)
    result = plan(snaps, DEFAULT_POLICY, now=datetime(2000, 1, 1, tzinfo=UTC))
    assert result.remove_ids == frozenset()


@pytest.mark.reliability(21)
def test_newest_by_time_and_by_sequence_are_both_kept() -> None:
    # Sequence 3 was made after a clock step back: dated earlier than seq 2.
    a = SnapshotInfo("a", 1, "full", START)
    b = SnapshotInfo("b", 2, "incremental", START + timedelta(days=5), "a")
    c = SnapshotInfo("c", 3, "incremental", START + timedelta(days=1), "b")
    result = plan(
        [a, b, c], Policy(full=KeepRules(), incremental=KeepRules()), now=START
    )
    assert result.keep_ids == {"a", "b", "c"}


def test_daily_buckets_keep_the_newest_per_day_and_skip_empty_days() -> None:
    times = [
        datetime(2025, 3, 1, 1, tzinfo=UTC),
        datetime(2025, 3, 1, 20, tzinfo=UTC),
        datetime(2025, 3, 4, 9, tzinfo=UTC),
        datetime(2025, 3, 9, 9, tzinfo=UTC),
        datetime(2025, 3, 9, 10, tzinfo=UTC),
    ]
    snaps = [SnapshotInfo(f"f{i}", i, "full", t) for i, t in enumerate(times)]
    result = plan(snaps, Policy.uniform(KeepRules(daily=3)), now=times[-1])
    assert result.keep_ids == {"f1", "f2", "f4"}


def test_day_boundaries_follow_the_policy_time_zone() -> None:
    # 23:30 UTC on 1 March is 00:30 on 2 March in Berlin.
    a = SnapshotInfo("a", 1, "full", datetime(2025, 3, 1, 22, 0, tzinfo=UTC))
    b = SnapshotInfo("b", 2, "full", datetime(2025, 3, 1, 23, 30, tzinfo=UTC))
    utc = plan([a, b], Policy.uniform(KeepRules(daily=2)), now=b.time)
    berlin = plan(
        [a, b],
        Policy.uniform(KeepRules(daily=2), ZoneInfo("Europe/Berlin")),
        now=b.time,
    )
    assert utc.keep_ids == {"b"}
    assert berlin.keep_ids == {"a", "b"}


def test_monthly_yearly_and_last_rules() -> None:
    snaps = weekly_and_daily(3 * 365)
    fulls_only = [s for s in snaps if s.type == "full"]
    result = plan(
        fulls_only,
        Policy(full=KeepRules(last=2, monthly=6, yearly=3), incremental=KeepRules()),
        now=fulls_only[-1].time,
    )
    months = {
        (s.time.year, s.time.month) for s in fulls_only if s.id in result.keep_ids
    }
    years = {s.time.year for s in fulls_only if s.id in result.keep_ids}
    assert len(months) == 6 + 1  # six months, plus last year's December from yearly
    assert years == set(sorted({s.time.year for s in fulls_only})[-3:])
    assert fulls_only[-1].id in result.keep_ids and fulls_only[-2].id in result.keep_ids


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    snaps = weekly_and_daily(200)
    shuffled = snaps[:]
    random.Random(7).shuffle(shuffled)
    now = snaps[-1].time
    assert plan(snaps, now=now) == plan(shuffled, now=now)


def test_removal_order_deletes_children_before_parents() -> None:
    snaps = weekly_and_daily(120)
    result = plan(snaps, now=snaps[-1].time)
    order = removal_order(result)
    position = {s.id: i for i, s in enumerate(order)}
    for snap in order:
        if snap.parent in position:
            assert position[snap.id] < position[snap.parent]
    deleted: list[str] = []
    assert apply(result, lambda s: deleted.append(s.id)) == [s.id for s in order]
    assert set(deleted) == result.remove_ids


def test_duplicate_ids_are_refused() -> None:
    a = SnapshotInfo("a", 1, "full", START)
    with pytest.raises(InputError, match="listed twice"):
        plan([a, a], now=START)


def test_empty_input_gives_an_empty_plan() -> None:
    result = plan([], now=START)
    assert result.keep == () and result.remove == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", Duration(days=30)),
        ("1y2m", Duration(years=1, months=2)),
        ("6w", Duration(days=42)),
        ("12h", Duration(hours=12)),
        ("1y1m1w1d1h", Duration(1, 1, 8, 1)),
        (" 2D ", Duration(days=2)),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d30", "30", "3x", "1y 2m", "-1d", "1.5d"])
def test_parse_duration_refuses_garbage(text: str) -> None:
    with pytest.raises(InputError, match="invalid duration"):
        parse_duration(text)


def test_duration_before_clamps_month_ends() -> None:
    moment = datetime(2024, 3, 31, 12, tzinfo=UTC)
    assert Duration(months=1).before(moment) == datetime(2024, 2, 29, 12, tzinfo=UTC)
    assert Duration(years=1, months=1).before(moment) == datetime(
        2023, 2, 28, 12, tzinfo=UTC
    )
    assert Duration(days=1, hours=13).before(moment) == datetime(
        2024, 3, 29, 23, tzinfo=UTC
    )
    assert str(Duration(years=1, months=2)) == "1y2m"


def test_negative_counts_are_refused() -> None:
    with pytest.raises(InputError):
        KeepRules(daily=-1)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[SnapshotInfo], Policy, datetime]:
    count = draw(st.integers(min_value=1, max_value=40))
    snaps: list[SnapshotInfo] = []
    moment = START
    for seq in range(1, count + 1):
        moment += timedelta(hours=draw(st.integers(min_value=-48, max_value=200)))
        kind = "full" if seq == 1 or draw(st.booleans()) else "incremental"
        parent = snaps[-1].id if kind == "incremental" else None
        snaps.append(SnapshotInfo(f"x{seq}", seq, kind, moment, parent))
    small = st.integers(min_value=0, max_value=4)
    within = st.none() | st.builds(
        Duration, days=st.integers(min_value=0, max_value=20)
    )
    rules = st.builds(
        KeepRules, last=small, daily=small, weekly=small, monthly=small, within=within
    )
    policy = Policy(full=draw(rules), incremental=draw(rules))
    now = START + timedelta(hours=draw(st.integers(min_value=-100, max_value=10000)))
    return snaps, policy, now


@given(histories())
def test_plan_invariants(case: tuple[list[SnapshotInfo], Policy, datetime]) -> None:
    snaps, policy, now = case
    result = plan(snaps, policy, now=now)
    by_id = {s.id: s for s in snaps}

    assert result.keep_ids | result.remove_ids == set(by_id)
    assert not result.keep_ids & result.remove_ids
    for snap_id in result.keep_ids:
        snap = by_id[snap_id]
        if snap.type == "incremental" and snap.parent is not None:
            assert snap.parent in result.keep_ids
    assert max(snaps, key=lambda s: s.seq).id in result.keep_ids
    assert all(s.id in result.keep_ids for s in snaps if s.time > now)


def test_the_policy_applies_to_each_vault_on_its_own() -> None:
    from datetime import UTC, datetime, timedelta

    from vaultstore.retention import KeepRules, Policy, SnapshotInfo, plan

    start = datetime(2026, 1, 1, tzinfo=UTC)
    snaps = [
        SnapshotInfo(
            f"{vault}-{n}", seq, "full", start + timedelta(days=n), None, vault
        )
        for seq, (vault, n) in enumerate(
            [(v, n) for n in range(5) for v in ("left", "right")], start=1
        )
    ]
    policy = Policy.uniform(KeepRules(last=2))
    result = plan(snaps, policy, now=start + timedelta(days=10))
    assert result.keep_ids == {"left-4", "left-3", "right-4", "right-3"}
