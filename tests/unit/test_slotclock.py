"""Slot times from the contract, and switching contracts at their effectiveAt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagger.core.contract import SlotAssignment
from stagger.core.slotclock import SlotClock, Timetable

EPOCH = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def contract(
    generation: int = 1, offset: int = 750, effective: float = 0, **kw: Any
) -> SlotAssignment:
    return SlotAssignment(
        stream="cam",
        namespace="default",
        shard=0,
        shards=1,
        node="n",
        gpu_index=0,
        epoch=EPOCH,
        period_ticks=kw.pop("period", 3000),
        offset_ticks=offset,
        body_ticks=315,
        generation=generation,
        effective_at=EPOCH + timedelta(seconds=effective),
        **kw,
    )


def test_slots_start_at_epoch_plus_offset_plus_n_periods() -> None:
    clock = SlotClock.of(contract())
    t0 = EPOCH.timestamp()
    assert clock.start(0) == pytest.approx(t0 + 0.025)
    assert clock.start(4) == pytest.approx(t0 + 0.425)
    assert clock.period_s == pytest.approx(0.1) and clock.body_s == pytest.approx(0.0105)
    assert clock.index_at_or_after(clock.start(3)) == 3  # a slot starting now counts
    assert clock.next_starts(t0 + 0.03, 2) == [clock.start(1), clock.start(2)]


@settings(max_examples=300)
@given(
    st.integers(1, 90_000),
    st.integers(0, 89_999),
    st.floats(min_value=-1e6, max_value=1e8, allow_nan=False),
)
def test_the_next_slot_is_the_first_at_or_after_any_time(
    period: int, offset: int, dt: float
) -> None:
    clock = SlotClock(EPOCH.timestamp(), 30_000, period, offset % period, 1)
    t = clock.epoch_s + dt
    n = clock.index_at_or_after(t)
    assert clock.start(n) >= t > clock.start(n - 1)


def test_a_new_contract_takes_over_at_its_effective_time_not_before() -> None:
    t0 = EPOCH.timestamp()
    table = Timetable().with_contract(contract(1, offset=0), now=t0)
    assert table.clock(t0) == SlotClock.of(contract(1, offset=0))  # nothing held: at once
    table = table.with_contract(contract(2, offset=1500, effective=5), now=t0 + 1)
    assert table.clock(t0 + 4.999).offset_ticks == 0  # type: ignore[union-attr]
    assert table.clock(t0 + 5).offset_ticks == 1500  # type: ignore[union-attr]
    # A stale file (older generation) read late changes nothing.
    later = table.with_contract(contract(1, offset=0), now=t0 + 6)
    assert later.clock(t0 + 6).offset_ticks == 1500  # type: ignore[union-attr]
    assert Timetable().clock(t0) is None
