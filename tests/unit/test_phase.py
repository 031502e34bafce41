"""Arrival phases (stagger/core/phase.py) and tables aligned to them (slots.align)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagger.core.phase import PhaseTracker, estimate, wait_s
from stagger.core.slots import Slot, SlotRequest, align, overlaps, pack


def circular_error(a: float, b: float, period: float) -> float:
    d = (a - b) % period
    return min(d, period - d)


def camera(
    phase: float,
    period: float,
    n: int,
    *,
    jitter: float = 0.001,
    missing: float = 0.0,
    outliers: float = 0.0,
    seed: int = 1,
    start: float = 1_700_000_000.0,
) -> list[float]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        if rng.random() < missing:
            continue
        t = start + phase + k * period + rng.gauss(0, jitter)
        if rng.random() < outliers:
            t += rng.uniform(0, period)  # held up somewhere on its way
        out.append(t)
    return out


@pytest.mark.parametrize("phase", [0.0, 0.037, 0.0995, 0.050])
def test_the_phase_of_a_jittery_camera_with_lost_frames_and_outliers(phase: float) -> None:
    arrivals = camera(phase, 0.1, 64, jitter=0.001, missing=0.2, outliers=0.05)
    e = estimate(arrivals, 0.1)
    assert e.periodic and e.phase_s is not None
    assert circular_error(e.phase_s, phase, 0.1) < 0.001
    assert 0.0005 < e.spread_s < 0.002  # about the 1 ms of jitter, outliers left out
    assert e.kept < e.samples  # the held-up frames were left out


def test_streams_that_are_not_periodic_at_the_period_claim_no_phase() -> None:
    rng = random.Random(3)
    events = sorted(rng.uniform(0, 30) for _ in range(64))  # event-driven
    assert not estimate(events, 0.1).periodic
    seven_fps = [k / 7 for k in range(64)]  # a camera that runs at 7 fps, not 10
    assert not estimate(seven_fps, 0.1).periodic
    assert not estimate(camera(0.02, 0.1, 5), 0.1).periodic  # too few arrivals yet


def test_a_drifting_clock_is_tracked_within_a_window() -> None:
    """1 ms of drift per second at 10 fps: 64 arrivals lag the truth by about 3.2 ms."""
    tracker = PhaseTracker(0.1, window=64)
    for k in range(600):
        tracker.observe(0.02 + k * 0.1 + 0.001 * (k * 0.1))
    e = tracker.estimate()
    truth = (0.02 + 0.001 * 59.9) % 0.1
    assert e.phase_s is not None and circular_error(e.phase_s, truth, 0.1) < 0.0035


def test_a_camera_that_restarts_at_another_phase_is_found_within_a_window() -> None:
    tracker = PhaseTracker(0.1, window=64)
    for t in camera(0.010, 0.1, 200):
        tracker.observe(t)
    for t in camera(0.060, 0.1, 64, start=1_700_000_020.0):
        tracker.observe(t)
    e = tracker.estimate()
    assert e.phase_s is not None and circular_error(e.phase_s, 0.060, 0.1) < 0.001


def test_wait_is_to_the_slot_at_or_after_the_arrival() -> None:
    assert wait_s(0.03, 0.02, 0.1) == pytest.approx(0.01)
    assert wait_s(0.01, 0.02, 0.1) == pytest.approx(0.09)


def test_slots_start_at_their_streams_phases_where_the_table_allows() -> None:
    table = [Slot(k, 20, 100, 25 * i) for i, k in enumerate("abcd")]
    aligned = align(table, {"a": 0, "b": 5, "c": 50, "d": 52})
    assert aligned is not None and not overlaps(aligned)
    assert {s.key: s.offset for s in aligned} == {"a": 0, "b": 20, "c": 50, "d": 70}


def test_slots_without_a_phase_and_fixed_ones_keep_their_offsets() -> None:
    table = [Slot("a", 20, 100, 0), Slot("b", 20, 100, 40), Slot("c", 20, 100, 70)]
    aligned = align(table, {"b": 5, "c": 10}, fixed=["c"])
    assert aligned is not None
    offsets = {s.key: s.offset for s in aligned}
    assert offsets["a"] == 0 and offsets["c"] == 70 and offsets["b"] == 20
    assert not overlaps(aligned)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([1000, 2000, 3000, 6000]), st.integers(10, 400)),
        min_size=1,
        max_size=10,
    ),
    st.randoms(use_true_random=False),
)
def test_aligned_tables_never_overlap_and_never_wait_longer(specs, rng) -> None:
    requests = [SlotRequest(i, body, period) for i, (period, body) in enumerate(specs)]
    table = pack(requests, max_utilization=0.9)
    if table is None:
        return
    phases = {s.key: rng.randrange(s.period) for s in table if rng.random() < 0.8}
    aligned = align(table, phases)
    assert aligned is not None and not overlaps(aligned)
    assert [(s.key, s.period, s.body) for s in aligned] == [
        (s.key, s.period, s.body) for s in table
    ]

    def waited(t: list[Slot]) -> int:
        return sum((s.offset - phases[s.key]) % s.period for s in t if s.key in phases)

    assert waited(aligned) <= waited(table)
    for s in aligned:
        if s.key not in phases:
            assert s in table  # no phase: not moved


def test_a_lone_stream_waits_nothing() -> None:
    (slot,) = align([Slot("a", 300, 3000, 0)], {"a": 1234}) or []
    assert slot.offset == 1234 and math.isclose(wait_s(slot.offset, 1234, 3000), 0)
