import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagger.core.slots import (
    Slot,
    SlotRequest,
    allowed_offsets,
    candidate_periods,
    collide,
    insert,
    overlaps,
    pack,
    solve,
    spread,
    utilization,
)
from tests.factories import brute_force_overlaps

# Frame periods (ticks at 30 kHz) of common rates: 30, 25, 20, 15, 12.5, 10, 7.5, 5, 2, 1 fps
# and their 2- and 3-shard multiples: the mixes placement produces.
PERIODS = [1000, 1200, 1500, 2000, 2400, 3000, 4000, 6000, 15000, 30000, 1001, 1250]


def requests_strategy(max_n: int = 8) -> st.SearchStrategy[list[SlotRequest]]:
    return st.lists(
        st.tuples(st.sampled_from(PERIODS), st.integers(min_value=30, max_value=600)),
        min_size=1,
        max_size=max_n,
    ).map(lambda xs: [SlotRequest(f"s{i}", b, p) for i, (p, b) in enumerate(xs)])


def slot_strategy() -> st.SearchStrategy[Slot]:
    return st.builds(
        lambda p, b, o: Slot("x", min(b, p), p, o % p),
        st.sampled_from([12, 18, 20, 30, 45, 60]),
        st.integers(1, 20),
        st.integers(0, 10_000),
    )


@given(slot_strategy(), slot_strategy())
def test_pairwise_rule_matches_brute_force(a: Slot, b: Slot) -> None:
    b = Slot("y", b.body, b.period, b.offset)
    assert collide(a, b) == brute_force_overlaps([a, b])


@settings(max_examples=150, deadline=None)
@given(requests_strategy())
def test_packed_tables_never_overlap_and_respect_frame_periods(requests: list[SlotRequest]) -> None:
    table = pack(requests, max_utilization=1.0)
    if table is None:
        return
    assert not overlaps(table)
    assert not brute_force_overlaps(table)
    by_key = {r.key: r for r in requests}
    for s in table:
        assert s.period <= by_key[s.key].frame_period
        assert 0 <= s.offset < s.period
    assert utilization(table) <= 1.0 + 1e-9


@settings(max_examples=100, deadline=None)
@given(requests_strategy())
def test_spread_keeps_tables_valid(requests: list[SlotRequest]) -> None:
    table = pack(requests)
    if table is None:
        return
    spread_table = spread(table)
    assert not brute_force_overlaps(spread_table)
    assert {(s.key, s.period, s.body) for s in spread_table} == {
        (s.key, s.period, s.body) for s in table
    }


@settings(max_examples=100, deadline=None)
@given(requests_strategy(6), requests_strategy(3))
def test_incremental_solve_keeps_existing_offsets_when_a_gap_exists(
    first: list[SlotRequest], more: list[SlotRequest]
) -> None:
    base = solve(first)
    if base is None:
        return
    more = [SlotRequest(f"new{i}", r.body, r.frame_period) for i, r in enumerate(more)]
    result = solve(first + more, {s.key: s for s in base.slots})
    if result is None:
        return
    assert not brute_force_overlaps(list(result.slots))
    if not result.repacked:
        old = {s.key: s for s in base.slots}
        for s in result.slots:
            if s.key in old:
                assert s == old[s.key]
        assert result.offsets_changed == ()


def test_single_period_bodies_are_spread_evenly() -> None:
    # 9 bodies of 10 ticks in 100: the 10 free ticks go one after each body.
    result = solve([SlotRequest(f"s{i}", 10, 100) for i in range(9)], max_utilization=0.9)
    assert result is not None
    offsets = sorted(s.offset for s in result.slots)
    gaps = [(b - a) - 10 for a, b in zip(offsets, [*offsets[1:], offsets[0] + 100], strict=True)]
    assert max(gaps) - min(gaps) <= 1
    assert sum(gaps) == 10


def test_the_study_four_cameras_are_62_5_ms_apart() -> None:
    # 4 streams at 4 fps (7500 ticks), 45 ms bodies (1350 ticks).
    result = solve([SlotRequest(f"cam{i}", 1350, 7500) for i in range(4)])
    assert result is not None
    assert sorted(s.offset for s in result.slots) == [0, 1875, 3750, 5625]


def test_a_new_shard_goes_to_the_centre_of_the_widest_gap() -> None:
    existing = [Slot("a", 10, 100, 0), Slot("b", 10, 100, 30)]
    slot = insert(existing, SlotRequest("c", 10, 100))
    assert slot is not None
    # Free: [10, 30) and [40, 100); the widest gap's allowed starts are 40..90 -> 65.
    assert slot.offset == 65


def test_coprime_periods_always_collide_so_the_period_is_rounded_down() -> None:
    existing = [Slot("ntsc", 60, 1001, 0)]
    slot = insert(existing, SlotRequest("pal", 60, 1200))
    assert slot is not None
    assert math.gcd(slot.period, 1001) >= 120
    assert slot.period <= 1200
    assert not collide(existing[0], slot)


def test_candidate_periods_never_exceed_the_frame_period() -> None:
    for frame in PERIODS:
        for p in candidate_periods(frame, PERIODS):
            assert 0 < p <= frame
        assert candidate_periods(frame, PERIODS)[0] == frame


def test_mixed_harmonic_periods_share_lanes() -> None:
    # One 30 fps, two 15 fps, three 10 fps with equal bodies fill exactly three lanes.
    reqs = [SlotRequest("a", 300, 1000)]
    reqs += [SlotRequest(f"b{i}", 300, 2000) for i in range(2)]
    reqs += [SlotRequest(f"c{i}", 300, 3000) for i in range(3)]
    table = pack(reqs)
    assert table is not None
    assert not brute_force_overlaps(table)
    assert len({s.offset % 1000 for s in table}) == 3


def test_over_full_gpu_is_refused() -> None:
    assert pack([SlotRequest(f"s{i}", 30, 100) for i in range(4)]) is None
    assert solve([SlotRequest(f"s{i}", 30, 100) for i in range(4)], max_utilization=0.9) is None


def test_body_longer_than_period_has_no_offset() -> None:
    assert allowed_offsets([], 100, 120)[1] == []
    assert insert([], SlotRequest("x", 120, 100)) is None


def test_solve_reports_offsets_changed_when_it_must_repack() -> None:
    # Centre insertion fragments a period of 100 so that the last body needs a repack.
    first = solve([SlotRequest(f"s{i}", 10, 100) for i in range(3)])
    assert first is not None
    spaced = {
        s.key: Slot(s.key, s.body, s.period, o)
        for s, o in zip(first.slots, (0, 40, 75), strict=True)
    }
    result = solve(
        [SlotRequest(f"s{i}", 10, 100) for i in range(3)] + [SlotRequest("n", 45, 100)], spaced
    )
    assert result is not None and result.repacked
    assert set(result.offsets_changed) <= set(spaced)
    assert result.offsets_changed
    assert not brute_force_overlaps(list(result.slots))


@pytest.mark.parametrize("max_utilization", [0.5, 0.9])
def test_utilization_budget_is_respected(max_utilization: float) -> None:
    table = pack(
        [SlotRequest(f"s{i}", 10, 100) for i in range(10)], max_utilization=max_utilization
    )
    assert table is None
    table = pack(
        [SlotRequest(f"s{i}", 10, 100) for i in range(int(max_utilization * 10))],
        max_utilization=max_utilization,
    )
    assert table is not None and utilization(table) <= max_utilization + 1e-9


@settings(max_examples=200, deadline=None)
@given(requests_strategy(6), st.sampled_from(PERIODS), st.integers(10, 900), st.floats(0.05, 1.0))
def test_max_body_never_understates_what_insert_can_place(
    requests: list[SlotRequest], frame_period: int, body: int, budget: float
) -> None:
    from stagger.core.slots import max_body

    table = pack(requests)
    if table is None:
        return
    slot = insert(table, SlotRequest("new", body, frame_period), max_utilization=budget)
    if slot is not None:
        assert body <= max_body(table, frame_period, budget)
