"""Re-timing a running GPU: the switch between two slot tables never lets two bodies overlap.

A table switches at a tick E (``switch_tick``): the old table's slots that start before E run,
the new table's slots from E on. These tests build both tables, pick E, lay out every body
that runs around it and check, tick by tick, that none overlaps another; then they run the
same switch through the sidecar's own arithmetic (contracts, ``effectiveAt`` in
microseconds, the gate's timetable on a float clock) and check it releases exactly those
slots."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stagger.core.contract import SlotAssignment, effective_at_of
from stagger.core.slotclock import Timetable
from stagger.core.slots import Slot, SlotRequest, overlaps, retime, switch_tick
from tests.factories import brute_force_overlaps

PERIODS = [1000, 1200, 1500, 2000, 2400, 3000, 4000, 6000]
EPOCH = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)  # a real Unix time: floats are coarse there


def hyperperiod(slots: list[Slot]) -> int:
    return math.lcm(*(s.period for s in slots)) if slots else 1


def bodies_around(old: list[Slot], new: list[Slot], switch: int) -> list[tuple[int, int, str]]:
    """Every body that runs within a hyperperiod of either side of the switch: the old
    table's that start before it, the new table's from it on."""
    span = max(hyperperiod(old), hyperperiod(new)) + max(s.period for s in old + new)
    out = []
    for s in old:
        first = s.offset + ((switch - span - s.offset) // s.period) * s.period
        for start in range(first, switch, s.period):
            out.append((start, start + s.body, f"old {s.key}"))
    for s in new:
        first = s.offset + (-((s.offset - switch) // s.period)) * s.period  # first >= switch
        for start in range(first, switch + span, s.period):
            out.append((start, start + s.body, f"new {s.key}"))
    return sorted(out)


def first_overlap(bodies: list[tuple[int, int, str]]) -> tuple[str, str] | None:
    end, who = -math.inf, ""
    for start, stop, name in bodies:
        if start < end:
            return who, name
        if stop > end:
            end, who = stop, name
    return None


requests = st.lists(
    st.tuples(st.sampled_from(PERIODS), st.integers(30, 400)), min_size=1, max_size=7
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[Slot], list[Slot]]:
    """A running table and the table a re-timing makes of it: some shards leave, some
    arrive, the rest are re-packed (some of them pinned where they were)."""
    before = [SlotRequest(f"s{i}", b, p) for i, (p, b) in enumerate(draw(requests))]
    old = retime(before, max_utilization=0.9)
    assume(old is not None)
    assert old is not None
    staying = [r for r in before if draw(st.booleans())]
    arriving = [SlotRequest(f"n{i}", b, p) for i, (p, b) in enumerate(draw(requests))]
    pinned = [s for s in old if s.key in {r.key for r in staying} and draw(st.booleans())]
    new = retime(staying + arriving, pinned, max_utilization=0.9)
    assume(new is not None and new)
    assert new is not None
    return old, new


@settings(max_examples=300, deadline=None)
@given(tables(), st.integers(0, 200_000))
def test_no_two_bodies_overlap_across_a_switch(
    pair: tuple[list[Slot], list[Slot]], at: int
) -> None:
    old, new = pair
    assert not brute_force_overlaps(old) and not brute_force_overlaps(new)
    switch = switch_tick(old, at)
    assert at <= switch < at + max(s.body for s in old)  # at most one body later
    assert first_overlap(bodies_around(old, new, switch)) is None


def test_a_switch_anywhere_else_can_overlap() -> None:
    # The checker finds what switch_tick avoids: the old body at [0, 300) is still running
    # at tick 100, where the new table starts a body.
    old = [Slot("a", 300, 1000, 0)]
    new = [Slot("b", 300, 1000, 100)]
    assert first_overlap(bodies_around(old, new, 100)) == ("old a", "new b")
    assert switch_tick(old, 100) == 300
    assert first_overlap(bodies_around(old, new, 300)) is None


def contract(slot: Slot, generation: int, effective_at: datetime, hz: int) -> SlotAssignment:
    return SlotAssignment(
        stream=str(slot.key),
        namespace="ns",
        shard=0,
        shards=1,
        node="n",
        gpu_index=0,
        tick_hz=hz,
        epoch=EPOCH,
        period_ticks=slot.period,
        offset_ticks=slot.offset,
        body_ticks=slot.body,
        generation=generation,
        effective_at=effective_at,
    )


@settings(max_examples=200, deadline=None)
@given(tables(), st.integers(0, 10**9), st.sampled_from([30_000, 1_000_000, 48_000]))
def test_the_sidecars_release_exactly_the_slots_of_the_switch(
    pair: tuple[list[Slot], list[Slot]], at: int, hz: int
) -> None:
    """Through the contract (effectiveAt in microseconds) and each sidecar's timetable on a
    float clock: every stream runs its old slots before the switch and its new ones from
    it, so the GPU runs exactly the bodies checked above."""
    old, new = pair
    switch = switch_tick(old, at)
    effective_at = effective_at_of(EPOCH, switch, hz)
    epoch_s = EPOCH.timestamp()
    released: list[tuple[int, int, str]] = []
    window = max(hyperperiod(old), hyperperiod(new))
    begin = epoch_s + (switch - window) / hz
    end = epoch_s + (switch + window) / hz
    first_contract = effective_at_of(EPOCH, switch - 2 * window, hz)  # in force long before
    leaving = {s.key for s in old} - {s.key for s in new}
    for key in sorted({s.key for s in old} | {s.key for s in new}, key=str):
        table = Timetable()
        was = next((s for s in old if s.key == key), None)
        now = next((s for s in new if s.key == key), None)
        if was is not None:
            table = table.with_contract(contract(was, 1, first_contract, hz), begin)
        if now is not None:
            table = table.with_contract(contract(now, 2, effective_at, hz), begin)
        # A shard that leaves the GPU is deleted with its stream: its pod stops at the switch.
        stop = epoch_s + switch / hz if key in leaving else end
        t = begin
        while (found := table.next_slot(t)) is not None and found[0] < stop:
            start, clock = found
            tick = round((start - epoch_s) * hz)
            assert (
                abs((start - epoch_s) * hz - tick) < 0.5
            )  # 1 MHz ticks: 0.24 of one is a float's step
            released.append((tick, tick + clock.body_ticks, str(key)))
            t = math.nextafter(start, math.inf)
    released.sort()
    expected = [
        (a, b, name.split()[1])
        for a, b, name in bodies_around(old, new, switch)
        if switch - window <= a < switch + window
    ]
    assert released == sorted(expected)


@given(st.integers(-(10**10), 10**10), st.sampled_from([1, 7, 25, 30_000, 48_000, 1_000_000]))
def test_effective_at_round_trips_to_its_tick(tick: int, hz: int) -> None:
    c = contract(Slot("s", 1, 1, 0), 1, effective_at_of(EPOCH, tick, hz), hz)
    assert c.effective_tick == tick
    # effectiveAt is the first microsecond at or after the tick.
    us = (c.effective_at - EPOCH) // timedelta(microseconds=1)
    assert us * hz >= tick * 10**6 > (us - 1) * hz


def test_a_first_contract_has_no_slots_before_its_switch() -> None:
    # A shard that joins a GPU at a re-timing must not run its new slot while the old table
    # still runs: its first slot is the first one at or after the switch.
    slot = Slot("s", 100, 1000, 0)
    effective = effective_at_of(EPOCH, 2500, 30_000)
    table = Timetable().with_contract(contract(slot, 4, effective, 30_000), EPOCH.timestamp())
    found = table.next_slot(EPOCH.timestamp())
    assert found is not None
    assert round((found[0] - EPOCH.timestamp()) * 30_000) == 3000


def test_overlapping_input_is_caught_by_the_checker() -> None:
    assert overlaps([Slot("a", 10, 100, 0), Slot("b", 10, 100, 5)])
