import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagger.core.placement import (
    Plan,
    Planner,
    PlannerSettings,
    RunningCalibration,
    ShardPlacement,
    Unplaced,
    plan,
)
from stagger.core.placement.overlap import overlap_ms_per_second
from stagger.core.slots import Slot
from tests.factories import brute_force_overlaps, cluster, profile, stream


def check_plan(p: Plan, cap: float = 0.9, old_copies: Sequence[ShardPlacement] = ()) -> None:
    """Every invariant a plan must hold, checked independently of the solver. Old copies of
    moved shards still running where they were hold their slot and memory there."""
    per_gpu: dict[tuple[str, int], list[Slot]] = defaultdict(list)
    memory: dict[tuple[str, int], int] = defaultdict(int)
    for s in old_copies:
        per_gpu[(s.node, s.gpu)].append(
            Slot(("old", *s.key), s.body_ticks, s.period_ticks, s.offset_ticks)
        )
        memory[(s.node, s.gpu)] += s.memory_mib
    for s in p.shards:
        per_gpu[(s.node, s.gpu)].append(Slot(s.key, s.body_ticks, s.period_ticks, s.offset_ticks))
        memory[(s.node, s.gpu)] += s.memory_mib
        assert s.period_ticks <= s.frame_period_ticks
        # A frame finishes before the next frame of its shard arrives.
        assert s.latency_ms <= s.frame_period_ticks / 30 + 1e-6
    for gpu, slots in per_gpu.items():
        assert not brute_force_overlaps(slots), gpu
        # Beside old copies a GPU may be booked to all of its time while they go.
        limit = 1.0 if any(x.key[0] == "old" for x in slots) else cap
        assert sum(x.body / x.period for x in slots) <= limit + 1e-9
    for g in p.gpus:
        assert memory[(g.node, g.gpu)] == g.memory_mib <= g.memory_total_mib
        on_gpu = [s for s in p.shards if (s.node, s.gpu) == (g.node, g.gpu)]
        if str(g.sharing_mode) == "mps":  # each a model server, old copies too
            assert len(per_gpu[(g.node, g.gpu)]) <= PlannerSettings().mps_servers_per_gpu
        assert g.overlap_ms_per_s == pytest.approx(
            overlap_ms_per_second(on_gpu, p.tick_hz), abs=1e-3
        )
        if all(s.cost_ms is None for s in on_gpu):  # charged whole bodies: none overlaps
            assert g.overlap_ms_per_s == 0.0, g
    shards_of: dict[tuple[str, str], set[int]] = defaultdict(set)
    counts = {}
    for s in p.shards:
        shards_of[(s.namespace, s.stream)].add(s.shard)
        counts[(s.namespace, s.stream)] = s.shards
    for key, idx in shards_of.items():
        assert idx == set(range(counts[key])), key  # all shards placed, or none


def test_study_scenario_four_cameras_share_one_t4() -> None:
    streams = [stream(f"cam{i}", 4, body=45, latency=75) for i in range(4)]
    p = plan(streams, cluster(("t4", 1)))
    check_plan(p)
    assert not p.unplaced
    assert [
        round(s.offset_ticks / 30, 1) for s in sorted(p.shards, key=lambda s: s.offset_ticks)
    ] == [0.0, 62.5, 125.0, 187.5]


def test_stream_over_one_gpu_is_split_and_each_shard_takes_every_kth_frame() -> None:
    p = plan([stream("big", 30, body=45, latency=60)], cluster(("n", 4)))
    check_plan(p)
    shards = p.for_stream("default", "big")
    assert len(shards) >= 2
    assert {s.fps for s in shards} == {30 / len(shards)}
    assert sum(s.fps for s in shards) == pytest.approx(30)


def test_stream_whose_latency_exceeds_its_frame_period_is_split() -> None:
    # 80 ms solo latency at 30 fps (33 ms frames): 3 shards, each with 100 ms per frame.
    p = plan([stream("slow", 30, body=5, latency=80)], cluster(("n", 1)))
    check_plan(p)
    shards = p.for_stream("default", "slow")
    assert len(shards) == 3
    assert all(s.frame_period_ticks == 3000 for s in shards)


def test_deadline_below_profile_latency_is_unschedulable_with_reason() -> None:
    s = stream("late", 10, body=None, model="det", deadlineMs=50)
    p = plan([s], cluster(("n", 1)), [profile("det", "T4", 20, 80)])
    assert p.unplaced[0].reason.startswith("solo latency 80 ms")
    assert "deadlineMs 50" in p.unplaced[0].reason


def test_reasons_name_what_is_missing() -> None:
    c = cluster(("n", 1), labels={"zone": "a"})
    cases = {
        "sel": (stream("sel", 1, nodeSelector={"zone": "b"}), "nodeSelector {zone=b} matches none"),
        "prod": (stream("prod", 1, gpuProduct="H200"), "gpuProduct H200 is on no matching node"),
        "noprof": (
            stream("noprof", 1, body=None, model="x"),
            "no bodyTimeMs and no ModelProfile for model x",
        ),
        "mem": (stream("mem", 1, memoryMiB=20000), "needs 20000 MiB of GPU memory per shard"),
    }
    p = plan([s for s, _ in cases.values()], c)
    reasons = {u.stream: u.reason for u in p.unplaced}
    for name, (_, expected) in cases.items():
        assert expected in reasons[name], reasons[name]


def test_capacity_reason_gives_the_figures() -> None:
    # Two GPUs at 0.6 of body each: a 1.35 GPU-second stream split in 2 needs 0.68 each.
    filler = [stream(f"f{i}", 10, body=60) for i in range(2)]
    big = stream("big", 30, body=45, latency=45, priority=-1)
    p = plan([*filler, big], cluster(("n", 2)), settings=PlannerSettings(max_extra_shards=0))
    (u,) = p.unplaced
    assert u.stream == "big"
    assert "needs 1.35 GPU-seconds of body per second" in u.reason
    assert "split over 2 shards" in u.reason
    assert "largest free 0.30" in u.reason


def test_higher_priority_streams_are_placed_first() -> None:
    streams = [stream(f"s{i}", 10, body=30, priority=i) for i in range(4)]
    p = plan(streams, cluster(("n", 1)))
    assert {s.stream for s in p.shards} == {"s3", "s2", "s1"}
    assert [u.stream for u in p.unplaced] == ["s0"]


def test_profiles_are_chosen_by_product_and_sharing_mode() -> None:
    c = cluster(("mps", 1), product="H200", sharing="mps")
    profiles = [
        profile("det", "H200", 10.5, 18.5),
        profile("det", "H200", 6.2, 18.5, sharing="mps"),
    ]
    p = plan([stream("a", 10, body=None, model="det")], c, profiles)
    assert p.shards[0].body_ms == 6.2


def test_stream_body_overrides_the_profile() -> None:
    p = plan(
        [stream("a", 10, body=3, model="det")], cluster(("n", 1)), [profile("det", "T4", 20, 30)]
    )
    assert p.shards[0].body_ms == 3


def test_same_inputs_in_any_order_give_the_same_plan() -> None:
    streams = [
        stream(f"s{i}", random.Random(i).choice([5, 10, 15, 30]), body=3 + i % 7) for i in range(40)
    ]
    c = cluster(("a", 2), ("b", 2))
    first = plan(streams, c)
    shuffled = streams[:]
    random.Random(7).shuffle(shuffled)
    assert plan(shuffled, c) == first
    check_plan(first)


def test_binpack_uses_fewer_gpus_than_spread() -> None:
    streams = [stream(f"s{i}", 10, body=10) for i in range(6)]
    c = cluster(("n", 4))
    packed = plan(streams, c)
    spread = plan(streams, c, settings=PlannerSettings(policy="spread"))
    check_plan(packed)
    check_plan(spread)
    assert len(packed.gpus) == 1
    assert len(spread.gpus) == 4


def test_a_stream_that_fits_a_gap_moves_and_re_times_nobody() -> None:
    streams = [stream(f"s{i}", [5, 10, 15, 30][i % 4], body=4 + i % 5) for i in range(30)]
    c = cluster(("a", 4))
    before = plan(streams, c)
    after = plan([*streams, stream("new", 10, body=2)], c, previous=before)
    check_plan(after)
    assert after.moves == ()
    assert after.offsets_changed == ()
    old = {s.key: s for s in before.shards}
    for s in after.shards:
        if s.key in old:
            assert (s.node, s.gpu, s.offset_ticks, s.period_ticks) == (
                old[s.key].node,
                old[s.key].gpu,
                old[s.key].offset_ticks,
                old[s.key].period_ticks,
            )


def test_a_stream_that_finds_no_gap_re_times_a_gpu_instead_of_taking_another() -> None:
    streams = [stream(f"s{i}", [5, 10, 15, 30][i % 4], body=4 + i % 5) for i in range(30)]
    c = cluster(("a", 4))
    before = plan(streams, c)
    new = stream("new", 10, body=4)
    after = plan([*streams, new], c, previous=before)
    check_plan(after)
    assert after.moves == ()
    (placed,) = after.for_stream("default", "new")
    # Only the GPU it went to was re-timed, and the plan uses the GPUs a batch plan uses.
    assert after.offsets_changed
    changed_on = {(s.node, s.gpu) for s in after.shards if s.key in set(after.offsets_changed)}
    assert changed_on == {(placed.node, placed.gpu)}
    assert len(after.gpus) == len(plan([*streams, new], c).gpus) == len(before.gpus)


@pytest.mark.parametrize(
    ("body", "fps", "batch"), [(45, 4, 5), (14, 10, 6), (8, 10, 11), (6, 30, 5), (3, 15, 20)]
)
def test_identical_streams_one_at_a_time_fill_a_gpu_as_a_batch_plan_does(
    body: float, fps: float, batch: int
) -> None:
    # The table: inserted into gaps only, one at a time held 4, 4, 8, 4, 16.
    streams = [stream(f"s{i:02d}", fps, body=body) for i in range(batch + 1)]
    c = cluster(("n", 1))
    assert len(plan(streams, c).shards) == batch
    planner = Planner(c)
    planner.plan(streams[:1])
    results = [planner.add(s) for s in streams[1:]]
    assert [isinstance(r, list) for r in results] == [True] * (batch - 1) + [False]
    check_plan(planner.current())
    previous = plan(streams[:1], c)  # the operator's path: a plan per arrival
    for k in range(2, batch + 1):
        previous = plan(streams[:k], c, previous=previous)
        assert not previous.unplaced and not previous.moves
        check_plan(previous)


def test_pinned_shards_keep_their_slots_when_their_gpu_is_re_timed() -> None:
    cams = [stream(f"cam{i}", 4, body=45) for i in range(5)]
    c = cluster(("t4", 1))
    three = plan(cams[:3], c)
    four = plan(cams[:4], c, previous=three)
    assert set(four.offsets_changed) <= {s.key for s in three.shards}  # no gap: re-timed
    assert len(four.offsets_changed) == 2  # spread keeps the first at 0: two moved
    # Re-timed a moment ago: the fifth cannot move them again, and only they block it.
    pinned = set(four.offsets_changed)
    blocked = plan(cams, c, previous=four, pinned=pinned)
    assert [u.stream for u in blocked.unplaced] == ["cam4"]
    assert blocked.offsets_changed == ()
    unpinned = plan(cams, c, previous=four)
    assert not unpinned.unplaced
    check_plan(unpinned)
    # A pin holds only the pinned shard: the others still move around it.
    some = {("default", "cam0", 0)}
    around = plan(cams, c, previous=four, pinned=some)
    kept = {s.key: s.offset_ticks for s in four.shards}
    assert {s.key: s.offset_ticks for s in around.shards}[("default", "cam0", 0)] == kept[
        ("default", "cam0", 0)
    ]
    check_plan(around)


def test_a_stream_that_cannot_be_placed_whole_leaves_no_gpu_re_timed() -> None:
    # Each GPU is near full: the two-shard stream's first shard could be had by re-timing
    # GPU 0, its second nowhere; the plan must leave GPU 0's table as it was.
    fill = [stream(f"f{i}", 10, body=20) for i in range(8)]
    c = cluster(("a", 2))
    before = plan(fill, c)
    big = stream("big", 20, body=20, latency=80)  # 2 shards of 0.2 at 10 fps each
    after = plan([*fill, big], c, previous=before)
    assert [u.stream for u in after.unplaced] == ["big"]
    assert after.offsets_changed == () and after.moves == ()


def test_losing_a_node_moves_only_its_shards_highest_priority_first() -> None:
    streams = [stream(f"s{i}", 10, body=40, priority=i) for i in range(4)]
    both = cluster(("a", 1), ("b", 1))
    before = plan(streams, both)
    assert not before.unplaced
    on_b = {s.stream for s in before.shards if s.node == "b"}
    after = plan(streams, cluster(("a", 1)), previous=before)
    check_plan(after)
    assert {m.stream for m in after.moves} <= on_b
    # 0.4 of body each: two fit on the remaining GPU; the two lowest priorities give way.
    assert sorted(u.stream for u in after.unplaced) == ["s0", "s1"]


def test_fps_change_keeps_the_gpu_when_it_still_fits() -> None:
    streams = [stream(f"s{i}", 10, body=5) for i in range(3)]
    c = cluster(("a", 2))
    before = plan(streams, c)
    changed = [*streams[:2], stream("s2", 15, body=5)]
    after = plan(changed, c, previous=before)
    check_plan(after)
    assert after.moves == ()


def test_duplicate_streams_are_refused() -> None:
    with pytest.raises(ValueError, match="more than once: default/a"):
        plan([stream("a", 1), stream("a", 2)], cluster(("n", 1)))


def test_empty_cluster_gives_a_reason() -> None:
    p = plan([stream("a", 1)], cluster())
    assert p.unplaced[0].reason == "the cluster has no GPUs"


def test_a_plan_from_scratch_is_what_re_planning_it_keeps() -> None:
    """Found by hypothesis: the first pass refused a 26 ms body at 15 fps, which the next
    re-plan of the same streams admitted in six shards by re-timing 15 shards on the tables
    it kept. A plan from scratch is re-planned on itself until that places nothing more,
    so the operator's next re-plan changes nothing."""
    specs = [(1, 1.0, 0)] * 9 + [(1, 1.0, 1), (1, 28.0, 0), (1, 28.0, 0), (1, 28.0, 1)]
    specs += [(1, 54.0, 0), (5, 38.0, 0), (7.5, 42.0, 1), (10, 11.0, 0), (15, 13.0, 0)]
    specs += [(15, 26.0, -1)]
    streams = [
        stream(f"s{i}", fps, body=body, latency=body, memoryMiB=0, priority=prio)
        for i, (fps, body, prio) in enumerate(specs)
    ]
    c = cluster(("a", 1), ("b", 1), memory=24000)
    p = plan(streams, c)
    check_plan(p)
    assert p.unplaced == () and len(p.for_stream("default", "s18")) == 6
    again = plan(streams, c, previous=p)
    assert again.moves == () and again.offsets_changed == ()


fleet_stream = st.tuples(
    st.sampled_from([1, 2, 5, 7.5, 10, 12.5, 15, 25, 30]),
    st.floats(min_value=1, max_value=60),
    st.floats(min_value=1.0, max_value=3.0),
    st.integers(0, 6000),
    st.integers(-1, 1),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(fleet_stream, min_size=1, max_size=25),
    st.integers(1, 3),
    st.sampled_from(["binpack", "spread"]),
)
def test_every_plan_holds_its_invariants(specs: list, gpus_per_node: int, policy: str) -> None:
    streams = [
        stream(f"s{i}", fps, body=body, latency=body * lat, memoryMiB=mem, priority=prio)
        for i, (fps, body, lat, mem, prio) in enumerate(specs)
    ]
    c = cluster(("a", gpus_per_node), ("b", gpus_per_node), memory=24000)
    p = plan(streams, c, settings=PlannerSettings(policy=policy))  # type: ignore[arg-type]
    check_plan(p)
    assert len({(s.namespace, s.stream) for s in p.shards}) + len(p.unplaced) == len(streams)
    # Incremental re-plan of the same input changes nothing.
    again = plan(streams, c, settings=PlannerSettings(policy=policy), previous=p)  # type: ignore[arg-type]
    assert again.moves == () and again.offsets_changed == ()
    before = {s.key: (s.node, s.gpu) for s in p.shards}
    after = {s.key: (s.node, s.gpu) for s in again.shards}
    assert {k: after.get(k) for k in before} == before
    # Re-solving a kept GPU's table from its spread offsets can leave room that the first
    # pass (which spreads only at the end) did not have: only streams that were unplaced
    # may be placed then, never at anyone's expense.
    newly = {k[:2] for k in after.keys() - before.keys()}
    assert newly <= {(u.namespace, u.stream) for u in p.unplaced}


def test_planner_add_inserts_into_gaps_or_re_times_and_moves_nobody() -> None:
    from stagger.core.placement import Planner

    streams = [stream(f"s{i}", [5, 10, 15, 30][i % 4], body=4 + i % 5) for i in range(30)]
    planner = Planner(cluster(("a", 4)))
    before = planner.plan(streams)
    added = planner.add(stream("gap", 10, body=2))
    assert isinstance(added, list) and len(added) == 1 and planner.retimed == []
    after = planner.current()
    check_plan(after)
    old = {s.key: s for s in before.shards}
    assert all(s == old[s.key] for s in after.shards if s.key in old)
    assert added[0] in after.shards
    again = planner.add(stream("no-gap", 10, body=4))
    assert isinstance(again, list)
    check_plan(planner.current())
    moved = {s.key: s for s in planner.current().shards}
    was = {s.key: s for s in after.shards}  # "gap" is running too by now
    assert all((moved[k].node, moved[k].gpu) == (s.node, s.gpu) for k, s in was.items())
    retimed = {k for k, s in was.items() if moved[k].offset_ticks != s.offset_ticks}
    assert retimed and retimed == set(planner.retimed)


def test_planner_add_reports_why_and_remove_frees_room() -> None:
    from stagger.core.placement import Planner, Unplaced

    planner = Planner(cluster(("a", 1)))
    planner.plan([stream(f"s{i}", 10, body=40) for i in range(2)])
    refused = planner.add(stream("late", 10, body=40))
    assert isinstance(refused, Unplaced)
    assert "needs 0.40 GPU-seconds" in refused.reason
    assert planner.remove("default", "s0") == 1
    assert isinstance(planner.add(stream("late", 10, body=40)), list)
    check_plan(planner.current())
    with pytest.raises(ValueError, match="already placed"):
        planner.add(stream("late", 10, body=40))


@settings(max_examples=60, deadline=None)  # three plans an example: timing is not asserted
@given(
    st.lists(fleet_stream, min_size=1, max_size=25),
    st.sets(st.tuples(st.sampled_from("ab"), st.integers(0, 1)), max_size=3),
    st.sampled_from(["binpack", "spread"]),
)
def test_no_new_shard_goes_where_a_calibration_measures(
    specs: list, measured: set[tuple[str, int]], policy: str
) -> None:
    """Whatever the fleet and whichever GPUs calibration Jobs measure, a plan puts no new
    shard there, and a re-plan keeps the shards that already ran there where they were."""
    streams = [
        stream(f"s{i}", fps, body=body, latency=body * lat, memoryMiB=mem, priority=prio)
        for i, (fps, body, lat, mem, prio) in enumerate(specs)
    ]
    c = cluster(("a", 2), ("b", 2), memory=24000)
    settings = PlannerSettings(policy=policy)  # type: ignore[arg-type]
    calibrating = [RunningCalibration(n, g, "probe") for n, g in sorted(measured)]
    fresh = plan(streams, c, settings=settings, calibrating=calibrating)
    check_plan(fresh)
    assert not {(x.node, x.gpu) for x in fresh.shards} & measured
    before = plan(streams, c, settings=settings)
    again = plan(streams, c, settings=settings, previous=before, calibrating=calibrating)
    check_plan(again)
    kept = {x.key: (x.node, x.gpu) for x in before.shards}
    for x in again.shards:
        assert (x.node, x.gpu) not in measured or kept.get(x.key) == (x.node, x.gpu)


def test_an_uncalibrated_stream_is_calibrated_on_an_idle_gpu() -> None:
    c = cluster(("a", 2), ("b", 1), product="NVIDIA-H200")
    busy = stream("busy", 10, body=20.0, model="other")
    new = stream("new", 10, body=None, model="retinanet")
    result = plan([busy, new], c)
    (u,) = result.unplaced
    assert u.stream == "new" and "no bodyTimeMs and no ModelProfile" in u.reason
    (site,) = u.calibrate_on  # one pool: one product, one sharing mode
    (placed,) = result.shards
    assert (site.node, site.gpu) != (placed.node, placed.gpu)  # not next to running streams
    assert (site.product, site.sharing_mode) == ("NVIDIA-H200", "time-slicing")
    # A stream with a body, or one that is unplaced for another reason, needs none.
    huge = stream("huge", 10, body=20.0, memoryMiB=10**6)
    assert plan([huge], c).unplaced[0].calibrate_on == ()


def test_a_calibration_keeps_its_gpu_and_no_two_measure_one_gpu() -> None:
    """A model whose Job runs on a GPU keeps calibrating there, though another GPU is now
    idler (a new site would start its Job again); another model's calibration goes to a GPU
    no Job measures (two would each read half the GPU); a GPU being measured keeps the
    shards it runs."""
    c = cluster(("a", 3), product="NVIDIA-H200")
    running = stream("running", 10, body=20.0, model="other")
    first = plan([running], c)
    assert [(p.node, p.gpu) for p in first.shards] == [("a", 0)]
    new = stream("new", 10, body=None, model="retinanet")
    late = stream("late", 10, body=None, model="yolo")
    measuring = (RunningCalibration("a", 0, "retinanet"),)
    result = plan([running, new, late], c, previous=first, calibrating=measuring)
    sites = {u.stream: (u.calibrate_on[0].node, u.calibrate_on[0].gpu) for u in result.unplaced}
    assert sites == {"new": ("a", 0), "late": ("a", 1)}
    assert [(p.stream, p.gpu) for p in result.shards] == [("running", 0)]
    check_plan(result)


def test_an_old_copy_keeps_its_slot_until_it_is_gone() -> None:
    # cam0 moved away from GPU 0; its old copy runs there until the new one is Ready: an
    # arrival may not take its time, and the GPU is booked for it meanwhile.
    c = cluster(("a", 2))
    cams = [stream(f"cam{i}", 4, body=45) for i in range(4)]
    before = plan(cams, c)
    (gpu,) = {(s.node, s.gpu) for s in before.shards}
    old = next(s for s in before.shards if s.stream == "cam0")
    moved = replace(old, gpu=1 - old.gpu)
    previous = replace(before, shards=(*(s for s in before.shards if s != old), moved))
    planner = Planner(c)
    after = planner.plan([*cams, stream("late", 4, body=45)], previous, retiring=[old])
    check_plan(after, old_copies=[old])
    assert planner.unreserved == []
    on_gpu = [s for s in after.shards if (s.node, s.gpu) == gpu]
    assert all(
        not brute_force_overlaps(
            [
                Slot("old", old.body_ticks, old.period_ticks, old.offset_ticks),
                Slot(s.key, s.body_ticks, s.period_ticks, s.offset_ticks),
            ]
        )
        for s in on_gpu
    )
    usage = next(g for g in after.gpus if (g.node, g.gpu) == gpu)
    assert usage.utilization == pytest.approx(
        sum(s.body_ticks / s.period_ticks for s in on_gpu) + 0.18
    )


def test_an_mps_gpu_takes_only_the_model_servers_its_mps_server_has_contexts_for() -> None:
    """Light streams fit one GPU's budget 30 times over, but an MPS server takes 48 CUDA
    contexts, 2 a Triton server: the 25th would never load its model (runs 89-90). So an
    MPS GPU takes 24 shards, a second GPU the rest; a time-sliced GPU has no such limit."""
    light = [stream(f"cam-{i}", 5, body=2.0, memoryMiB=1000) for i in range(30)]
    one = cluster(("a", 1), memory=81559, sharing="mps")
    result = plan(light, one)
    assert len(result.shards) == 24 and len(result.unplaced) == 6
    assert result.unplaced[0].reason.endswith(
        "; the 24 model servers an MPS GPU takes (mpsServersPerGpu) already run on 1 of them"
    )
    two = plan(light, cluster(("a", 2), memory=81559, sharing="mps"))
    assert not two.unplaced
    assert max(Counter(s.gpu for s in two.shards).values()) == 24
    unlimited = plan(light, one, settings=PlannerSettings(mps_servers_per_gpu=0))
    assert not unlimited.unplaced
    assert not plan(light, cluster(("a", 1), memory=81559)).unplaced  # time-sliced
    # one at a time, as streams are applied, the 25th waits with the same reason
    planner = Planner(one)
    planner.plan(light[:24])
    refused = planner.add(light[24])
    assert isinstance(refused, Unplaced) and "mpsServersPerGpu" in refused.reason
    check_plan(planner.current())
