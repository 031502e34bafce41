"""The capacity model: what a stream is charged (its cost when shared, or its whole body
when exclusive) and how its slot is spaced (the table keeps bodies apart where it can)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagger.core.api import InferenceStream, ModelProfile, SharingMode
from stagger.core.calibration import (
    CalibrationResult,
    body_is_exclusive,
    model_profile,
    recommended_cost_ms,
    throughput_growth,
)
from stagger.core.cluster import Cluster, Gpu, Node
from stagger.core.placement import Plan, PlannerSettings, ProfileBook, Timing, plan, stream_timing
from stagger.core.simulate import Phasing, SimShard, simulate_gpu, simulate_plan
from stagger.core.slots import Slot, overlaps
from stagger.core.timebase import ms_to_ticks_ceil
from tests import factories
from tests.unit.test_placement import check_plan

H200_MIB = 143_771


def stream(name: str, fps: float, body: float | None, cost: float | None = None, **spec):
    fields = {"model": spec.pop("model", "m"), "fps": fps, "memoryMiB": 2048, **spec}
    if body is not None:
        fields["bodyTimeMs"] = body
    if cost is not None:
        fields["costMs"] = cost
    return InferenceStream.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "InferenceStream",
            "metadata": {"name": name, "namespace": "cams"},
            "spec": fields,
        }
    )


def one_gpu(mode: SharingMode = SharingMode.TIME_SLICING) -> Cluster:
    gpu = Gpu(index=0, product="NVIDIA-H200", memoryMiB=H200_MIB, sharing_mode=mode)
    return Cluster(nodes=[Node(name="n", gpus=[gpu])])


def one_at_a_time(
    streams: list[InferenceStream], cluster: Cluster, profiles=(), settings=None
) -> Plan:
    """Each stream applied alone, re-planned on the previous plan (the operator's path);
    stops at the first refusal."""
    previous = None
    applied: list[InferenceStream] = []
    for s in streams:
        result = plan(
            [*applied, s],
            cluster,
            profiles,
            previous=previous,
            settings=settings or PlannerSettings(),
        )
        if not result.for_stream("cams", s.name):
            break
        previous, applied = result, [*applied, s]
    assert previous is not None
    return previous


def one_at_a_time_refusals(streams: list[InferenceStream], profiles=()) -> list:
    """What the planner refuses when ``streams`` are applied one at a time on one GPU."""
    previous, applied, refused = None, [], []
    for s in streams:
        result = plan([*applied, s], one_gpu(), profiles, previous=previous)
        if result.for_stream("cams", s.name):
            previous, applied = result, [*applied, s]
        else:
            refused += [u for u in result.unplaced if u.stream == s.name]
    return refused


def body_windows(p: Plan) -> list[Slot]:
    """Where every shard's whole body runs, as slots in ticks."""
    return [
        Slot(s.key, ms_to_ticks_ceil(s.body_ms, p.tick_hz), s.period_ticks, s.offset_ticks)
        for s in p.shards
    ]


def test_an_exclusive_body_reserves_itself_and_a_shared_one_its_scaled_cost() -> None:
    s = PlannerSettings()
    assert Timing(15.5, 15.5, "spec").reserved_ms(s) == 15.5
    shared = Timing(15.5, 15.5, "spec", cost_ms=11.4).reserved_ms(s)
    assert shared == pytest.approx(11.4 * 0.9)  # the default cap: all of the saturation
    # under a lower cap a cost close to the body never reserves more than the body
    margin = PlannerSettings(throughput_cap=0.95)
    assert Timing(15.5, 15.5, "spec", cost_ms=11.4).reserved_ms(margin) == pytest.approx(10.8)
    assert Timing(10.0, 10.0, "spec", cost_ms=10.0).reserved_ms(margin) == pytest.approx(
        9.474, 1e-3
    )
    assert (
        Timing(10.0, 10.0, "spec", cost_ms=9.9).reserved_ms(PlannerSettings(throughput_cap=0.8))
        == 10.0
    )


@pytest.mark.parametrize(
    ("fps", "body", "cost", "expected"),
    [
        # the H200 CUDA-graph RetinaNet (issue 20): time-sliced 10 and 15 fps, MPS 10 fps
        (10.0, 15.5, 11.4, 8),  # floor(88 / 10)
        (15.0, 15.5, 11.4, 5),  # floor(88 / 15)
        (10.0, 9.8, 6.0, 16),  # floor(167 / 10)
        (10.0, 15.5, None, 5),  # exclusive: whole bodies under the 0.9 cap
    ],
)
def test_identical_streams_admitted_one_at_a_time_fill_the_measured_throughput(
    fps: float, body: float, cost: float | None, expected: int
) -> None:
    streams = [stream(f"c{i}", fps, body, cost) for i in range(30)]
    placed = one_at_a_time(streams, one_gpu())
    assert len(placed.shards) == expected
    assert len(plan(streams, one_gpu()).shards) == expected  # one plan of all agrees
    if cost is not None:
        assert len(placed.shards) == math.floor(1000 / (cost * fps))


@pytest.mark.parametrize(("n", "fps"), [(3, 10.0), (5, 10.0), (6, 10.0), (8, 10.0), (5, 15.0)])
def test_shared_streams_are_spaced_evenly_so_bodies_overlap_least(n: int, fps: float) -> None:
    """One at a time: where n bodies fit in a period they never overlap (an arrival takes a
    gap its whole body fits, or the GPU is re-timed); where they do not, slots are spread
    evenly over the period, so each body overlaps its neighbour by the least amount
    (body - period / n)."""
    placed = one_at_a_time([stream(f"c{i}", fps, 15.5, 11.4) for i in range(n)], one_gpu())
    assert len(placed.shards) == n
    hz = placed.tick_hz
    starts = sorted(s.offset_ticks for s in placed.shards)
    period = placed.shards[0].period_ticks
    gaps = [(b - a) for a, b in zip(starts, [*starts[1:], starts[0] + period], strict=True)]
    overlapping = overlaps(body_windows(placed))
    if n * 15.5 <= period * 1000 / hz:
        assert not overlapping
    else:
        assert max(gaps) - min(gaps) <= 1, gaps  # even, to a tick
        assert len(overlapping) == n  # each body with its neighbour, by the same amount


def test_an_exclusive_body_never_overlaps_another_body() -> None:
    """A truly exclusive body (a lock, a FIFO) keeps exact non-overlap. It joins shared
    streams whose bodies outrun their slots only where all of them fit whole: they are
    re-timed with their whole bodies as slots; a shared stream joins it with its whole body
    as its slot. Where they would not fit whole, it takes another GPU."""
    gpus = [Gpu(index=i, product="NVIDIA-H200", memoryMiB=H200_MIB) for i in range(2)]
    cluster = Cluster(nodes=[Node(name="n", gpus=gpus)])
    shared = [stream(f"s{i}", 10.0, 15.5, 11.4) for i in range(3)]
    lock = stream("lock", 5.0, 45.0, model="ssd")
    for placed in (plan([*shared, lock], cluster), one_at_a_time([*shared, lock], cluster)):
        assert len(placed.shards) == 4
        assert {s.gpu for s in placed.shards} == {0}
        assert all(
            s.body_ticks == ms_to_ticks_ceil(s.body_ms, placed.tick_hz) for s in placed.shards
        )
        assert overlaps(body_windows(placed)) == []
    crowded = [stream(f"s{i}", 10.0, 15.5, 11.4) for i in range(7)]  # 7 x 15.5 ms: too many
    placed = one_at_a_time([*crowded, lock], cluster)
    (held,) = placed.for_stream("cams", "lock")
    assert [s for s in placed.shards if s.gpu == held.gpu and s.stream != "lock"] == []
    placed = one_at_a_time([lock, *shared], cluster)  # the lock came first: they join it
    assert len(placed.shards) == 4
    assert {s.gpu for s in placed.shards} == {0}
    assert all(s.body_ticks == ms_to_ticks_ceil(s.body_ms, placed.tick_hz) for s in placed.shards)
    assert overlaps(body_windows(placed)) == []


def test_an_exclusive_body_with_a_measured_cost_is_charged_its_cost_and_never_overlapped() -> None:
    """The H200 CUDA-graph RetinaNet, time-sliced (issue 20, run 9): a cost of 11.3 ms a
    frame no cheaper than its 11.7 ms knee, so exclusive; charged in full (13.6 ms) the GPU
    took 6 streams where random phases held 7 and its throughput 8. Charged its cost, it
    takes 8, as a shared body of the same cost does; its slots never overlap, spread evenly
    over the period."""
    exclusive = [stream(f"c{i}", 10.0, 13.6, 11.3, exclusiveBody=True) for i in range(12)]
    placed = one_at_a_time(exclusive, one_gpu())
    assert len(placed.shards) == 8 == math.floor(1000 / (11.3 * 10))
    assert all(s.exclusive for s in placed.shards)
    slots = [Slot(s.key, s.body_ticks, s.period_ticks, s.offset_ticks) for s in placed.shards]
    assert overlaps(slots) == []
    starts = sorted(s.offset_ticks for s in placed.shards)
    period = placed.shards[0].period_ticks
    gaps = [(b - a) for a, b in zip(starts, [*starts[1:], starts[0] + period], strict=True)]
    assert max(gaps) - min(gaps) <= 1, gaps  # even, to a tick: the slack goes between bodies
    shared = one_at_a_time([stream(f"c{i}", 10.0, 13.6, 11.3) for i in range(12)], one_gpu())
    assert len(shared.shards) == len(placed.shards)  # the label no longer moves capacity
    assert (
        len(one_at_a_time([stream(f"c{i}", 10.0, 13.6) for i in range(12)], one_gpu()).shards) == 6
    )


def test_a_shared_body_joining_exclusive_ones_with_costs_takes_its_whole_body() -> None:
    """An exclusive body's slot is all of it, cost or not: a shared stream joining a GPU of
    them takes its whole body, and one joins shared bodies that outrun their slots only with
    them widened to their whole bodies."""
    lock = [stream(f"x{i}", 10.0, 13.6, 11.3, exclusiveBody=True) for i in range(3)]
    shared = [stream(f"s{i}", 10.0, 15.5, 9.0) for i in range(2)]
    placed = one_at_a_time([*lock, *shared], one_gpu())
    assert len(placed.shards) == 5
    for s in placed.shards:
        if not s.exclusive:
            assert s.body_ticks == ms_to_ticks_ceil(s.body_ms, placed.tick_hz)
    assert (
        overlaps([Slot(s.key, s.body_ticks, s.period_ticks, s.offset_ticks) for s in placed.shards])
        == []
    )
    gpus = [Gpu(index=i, product="NVIDIA-H200", memoryMiB=H200_MIB) for i in range(2)]
    two = Cluster(nodes=[Node(name="n", gpus=gpus)])
    placed = one_at_a_time([*shared, lock[0]], two)
    assert {s.gpu for s in placed.shards} == {0}
    for s in placed.shards:
        if not s.exclusive:
            assert s.body_ticks == ms_to_ticks_ceil(s.body_ms, placed.tick_hz)
    slots = [Slot(s.key, s.body_ticks, s.period_ticks, s.offset_ticks) for s in placed.shards]
    assert overlaps(slots) == []


MIXED = [("graph", 10.0), ("small", 15.0), ("graph", 5.0), ("small", 30.0), ("graph", 15.0)]


@pytest.mark.parametrize("order", [MIXED, MIXED[::-1]], ids=["as-listed", "reversed"])
def test_a_mixed_fleet_of_exclusive_and_shared_models_shares_one_gpu(order) -> None:
    """The H200 time-sliced profiles of issue 20's mixed fleet: the CUDA-graph RetinaNet
    gains nothing from sharing (exclusive, 13.0 ms), the small detector does (10.4 ms body,
    7.9 ms cost). Applied one at a time they share one GPU, no body overlapping another,
    until the GPU's body time is spent."""
    streams = [
        stream(f"c{i}", fps, 13.0 if model == "graph" else 10.4, None if model == "graph" else 7.9)
        for i, (model, fps) in enumerate(order)
    ]
    placed = one_at_a_time(streams, one_gpu())
    assert {s.stream for s in placed.shards} == {"c0", "c1", "c2", "c3"}
    assert overlaps(body_windows(placed)) == []
    assert sum(s.body_ticks / s.period_ticks for s in placed.shards) <= 0.9
    refused = plan(streams, one_gpu(), previous=placed).unplaced
    assert [u.stream for u in refused] == ["c4"]  # more than the 0.9 of body time left
    assert "GPU-seconds of body per second" in refused[0].reason


def profile(
    model: str, body: float, cost: float, latency: float, *, exclusive: bool = False
) -> ModelProfile:
    label = {"exclusiveBody": True} if exclusive else {}
    return ModelProfile.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": f"{model}-h200"},
            "spec": {
                "model": model,
                "gpuProduct": "NVIDIA-H200",
                "bodyTimeMs": body,
                "costMs": cost,
                "latencyMs": latency,
                **label,
            },
        }
    )


def test_a_shared_stream_whose_deadline_cannot_absorb_one_more_body_keeps_its_whole_body() -> None:
    """Run 29's time-sliced profiles (both shared). A 30 fps stream of the small detector
    whose camera leaves 25.3 ms for a 14.7 ms answer cannot absorb one more RetinaNet body
    (14.9 ms): its slot is its whole body, charged in full, beside shared RetinaNet bodies
    that outrun theirs; joining them, it widens them to their whole bodies (re-timed), so
    no body overlaps another. With its frame period as its deadline it can, and shares."""
    profiles = [profile("graph", 14.9, 11.38, 14.9), profile("small", 9.8, 7.76, 11.64)]
    graph = stream("g", 10.0, None, model="graph")
    tight = stream("t", 30.0, None, model="small", deadlineMs=25.3, latencyMs=14.7)
    loose = stream("l", 30.0, None, model="small")
    placed = one_at_a_time([graph, tight], one_gpu(), profiles)
    (t,) = placed.for_stream("cams", "t")
    (g,) = placed.for_stream("cams", "g")
    assert t.body_ticks == ms_to_ticks_ceil(9.8, placed.tick_hz) and not t.exclusive
    assert g.body_ticks == ms_to_ticks_ceil(14.9, placed.tick_hz)  # widened when t joined
    assert overlaps(body_windows(placed)) == []
    alone = one_at_a_time([graph], one_gpu(), profiles).for_stream("cams", "g")
    assert alone[0].body_ticks < g.body_ticks  # alone, RetinaNet shares: charged its cost
    assert placed.gpus[0].utilization == pytest.approx(
        t.body_ticks / t.period_ticks + g.body_ticks / g.period_ticks
    )
    (shared,) = one_at_a_time([graph, loose], one_gpu(), profiles).for_stream("cams", "l")
    assert shared.body_ticks == ms_to_ticks_ceil(7.76 * 0.9, placed.tick_hz)
    # a GPU too full for its whole body says so, not what its cost would have charged
    others = [stream(f"g{i}", 10.0, None, model="graph") for i in range(7)]
    (refused,) = [u for u in one_at_a_time_refusals([*others, tight], profiles) if u.stream == "t"]
    assert "needs 0.29 GPU-seconds" in refused.reason
    assert "charged whole: its deadline cannot absorb one more body" in refused.reason
    assert "kept apart, it joins 1 matching GPU(s) only with the bodies there widened" in (
        refused.reason
    )
    # and a stream joining a GPU that keeps bodies whole is told it takes its whole body
    small = [stream(f"s{i}", 15.0, None, model="small") for i in range(12)]
    refusals = one_at_a_time_refusals([tight, graph, *small], profiles)
    assert refusals and "there it takes its whole 9.8 ms" in refusals[0].reason


def test_bodies_that_join_a_tight_stream_take_their_whole_bodies_under_any_label() -> None:
    """Run 45 on an H200: both profiles read exclusive (their slots are their costs). The
    30 fps stream, whose deadline cannot absorb one more RetinaNet body, is placed first;
    the RetinaNet stream that joins it takes its whole 13.4 ms body as its slot, not its
    10.8 ms charge, so its body never runs into the tight stream's (it did, and the 30 fps
    stream answered 18 frames late)."""
    profiles = [
        profile("graph", 13.4, 11.39, 13.4, exclusive=True),
        profile("small", 9.1, 7.85, 10.5, exclusive=True),
    ]
    tight = stream("t", 30.0, None, model="small", deadlineMs=25.3, latencyMs=13.5)
    graph = stream("g", 15.0, None, model="graph")
    placed = one_at_a_time([tight, graph], one_gpu(), profiles)
    (g,) = placed.for_stream("cams", "g")
    assert g.body_ticks == ms_to_ticks_ceil(13.4, placed.tick_hz)
    assert overlaps(body_windows(placed)) == []
    (alone,) = one_at_a_time([graph], one_gpu(), profiles).for_stream("cams", "g")
    assert alone.body_ticks < g.body_ticks  # alone it is held to its cost


def test_a_profile_labelled_exclusive_still_shares_a_gpu_with_a_shared_model() -> None:
    """Run 35 on an H200: the small detector's profile read exclusive (its cost within 5 %
    of its knee), RetinaNet's shared. The label is a measurement, not a lock: the small
    streams join the RetinaNet ones with their whole bodies as slots, where they were kept
    off that GPU and the mixed fleet got one stream. A stream's own ``exclusiveBody`` is
    still kept exactly apart: RetinaNet's body is widened to its whole length beside it."""
    profiles = [
        profile("graph", 14.7, 11.23, 14.7),
        ModelProfile.model_validate(
            {
                "apiVersion": "stagger.dev/v1alpha1",
                "kind": "ModelProfile",
                "metadata": {"name": "small-h200"},
                "spec": {
                    "model": "small",
                    "gpuProduct": "NVIDIA-H200",
                    "bodyTimeMs": 9.0,
                    "costMs": 7.78,
                    "latencyMs": 10.0,
                    "exclusiveBody": True,
                },
            }
        ),
    ]
    graph = stream("g", 10.0, None, model="graph")
    small = [stream(f"s{i}", 15.0, None, model="small") for i in range(2)]
    placed = one_at_a_time([graph, *small], one_gpu(), profiles)
    assert {s.stream for s in placed.shards} == {"g", "s0", "s1"}
    lock = stream("lock", 15.0, None, model="small", exclusiveBody=True)
    placed = one_at_a_time([graph, lock], one_gpu(), profiles)  # RetinaNet widened for it
    (g,) = placed.for_stream("cams", "g")
    assert g.body_ticks == ms_to_ticks_ceil(14.7, placed.tick_hz)
    assert overlaps(body_windows(placed)) == []


@pytest.mark.parametrize("n", [5, 6, 7, 8])
def test_a_profile_s_exclusive_label_keeps_bodies_as_far_apart_as_the_shared_label(n) -> None:
    """Run 21's RetinaNet profile (13.5 ms body, 11.31 ms cost), labelled exclusive or not,
    streams applied one at a time. Both labels give the same table: at 5-7 the whole bodies
    fit a period and none overlaps, at 8 they must overlap (80 ms/s). With its slot as the
    label's window, 5-7 overlapped 20-60 ms/s: the label let a body run into the next slot
    because sharing gains nothing, where it should keep bodies apart at least as well."""
    streams = [stream(f"c{i}", 10.0, None, model="graph") for i in range(n)]
    tables = {}
    for label in (True, False):
        placed = one_at_a_time(
            streams, one_gpu(), [profile("graph", 13.5, 11.31, 13.5, exclusive=label)]
        )
        (gpu,) = placed.gpus
        tables[label] = (sorted(s.offset_ticks for s in placed.shards), gpu.overlap_ms_per_s)
    assert tables[True] == tables[False]
    assert tables[True][1] == (80.0 if n == 8 else 0.0)


def test_a_profile_s_exclusive_label_simulates_as_the_shared_label_and_a_lock_as_a_whole_body() -> (
    None
):
    """Run 21 (time-sliced CUDA-graph RetinaNet, 13.5 ms body at 11.37 ms cost, labelled
    exclusive by its profile): on the H200, 8 streams through the loop lost no frame, and
    random phases none either. The simulator ran the label as whole bodies plus the
    time-slicing contention, so `stagger plan` predicted 29 % drops for that plan
    (`python -m bench.simulator.gpu`). A measured cost was measured under the contention it
    stands for: it is what a body is worth, whatever the label. Only the stream's own word
    (a lock) keeps it a whole body."""
    streams = [stream(f"c{i}", 10.0, None, model="graph") for i in range(8)]
    simulated = {}
    for label in (True, False):
        placed = one_at_a_time(
            streams, one_gpu(), [profile("graph", 13.5, 11.37, 13.5, exclusive=label)]
        )
        assert len(placed.shards) == 8
        assert not any(s.exclusive for s in placed.shards)
        simulated[label] = simulate_plan(placed, Phasing.STAGGERED, 20)
    assert simulated[True] == simulated[False]
    assert sum(s.dropped for s in simulated[True].values()) == 0
    locks = [stream(f"c{i}", 10.0, None, model="graph", exclusiveBody=True) for i in range(3)]
    placed = one_at_a_time(locks, one_gpu(), [profile("graph", 13.5, 11.37, 13.5)])
    assert len(placed.shards) == 3
    assert all(s.exclusive for s in placed.shards)


def test_cost_comes_from_the_profile_that_gave_the_body_and_never_exceeds_it() -> None:
    gpu = Gpu(index=0, product="NVIDIA-H200", memoryMiB=H200_MIB)
    profile = ModelProfile.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": "m-h200"},
            "spec": {
                "model": "m",
                "gpuProduct": "NVIDIA-H200",
                "bodyTimeMs": 15.5,
                "costMs": 11.4,
                "latencyMs": 15.5,
            },
        }
    )
    book = ProfileBook([profile])
    assert stream_timing(stream("a", 10.0, None), gpu, book).cost_ms == 11.4
    # the stream's own body: the profile's cost belongs to the profile's body
    assert stream_timing(stream("b", 10.0, 20.0), gpu, book).cost_ms is None
    # the stream's own cost, over the profile's body
    assert stream_timing(stream("c", 10.0, None, 9.0), gpu, book).cost_ms == 9.0


def test_exclusive_comes_with_the_cost_unless_the_stream_says_so() -> None:
    gpu = Gpu(index=0, product="NVIDIA-H200", memoryMiB=H200_MIB)
    spec = {"model": "m", "gpuProduct": "NVIDIA-H200", "bodyTimeMs": 13.6, "latencyMs": 15.5}
    profile = ModelProfile.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": "m-h200"},
            "spec": {**spec, "costMs": 11.3, "exclusiveBody": True},
        }
    )
    book = ProfileBook([profile])
    from_profile = stream_timing(stream("a", 10.0, None), gpu, book)
    assert (from_profile.cost_ms, from_profile.exclusive) == (11.3, True)
    # the stream's own cost says nothing of exclusivity: its own flag does
    own = stream_timing(stream("b", 10.0, None, 9.0), gpu, book)
    assert (own.cost_ms, own.exclusive) == (9.0, False)
    assert stream_timing(stream("c", 10.0, None, 9.0, exclusiveBody=True), gpu, book).exclusive
    # the stream's own word on exclusivity wins over its profile's, with the profile's cost
    shared = stream_timing(stream("s", 10.0, None, exclusiveBody=False), gpu, book)
    assert (shared.cost_ms, shared.exclusive) == (11.3, False)
    # no cost at all: exclusive, charged in full
    assert stream_timing(stream("d", 10.0, 20.0), gpu, book).exclusive
    with pytest.raises(ValueError, match="valid boolean"):
        stream("e", 10.0, 13.6, 11.3, exclusiveBody="true")


def test_a_cost_above_the_body_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="costMs must not exceed bodyTimeMs"):
        stream("x", 10.0, 10.0, 12.0)


@pytest.mark.parametrize(
    ("effective", "body", "expected"),
    [
        (11.363, 15.6, 11.37),  # the throughput as deployed, rounded up to 0.01 ms
        (6.004, 9.6, 6.01),  # MPS: 0.1 ms would charge 1.6 % more
        (44.0, 43.0, 43.0),  # never above the body
        (None, 15.6, None),  # no saturation measured: nothing to charge but the body
    ],
)
def test_recommended_cost(effective, body, expected) -> None:
    assert recommended_cost_ms(effective, body) == expected


def test_an_unsteady_measurement_costs_a_margin_that_admits_what_the_old_cap_did() -> None:
    """Run 68 (an H100 host whose solo latency was unsteady): 12.13 ms a frame. Charged as
    measured against all of the saturation, 8 streams at 10 fps; with the margin, 7, what
    the 0.95 cap admitted (random phases held 6 there, and lost 2.2 % at 8)."""
    steady, unsteady = (recommended_cost_ms(12.13, 14.4, steady=s) for s in (True, False))
    assert (steady, unsteady) == (12.13, 12.77)
    assert recommended_cost_ms(14.0, 14.4, steady=False) == 14.4  # never above the body
    streams = lambda cost: [stream(f"c{i}", 10.0, 14.4, cost) for i in range(12)]  # noqa: E731
    assert len(one_at_a_time(streams(steady), one_gpu()).shards) == 8
    assert len(one_at_a_time(streams(unsteady), one_gpu()).shards) == 7
    old_cap = PlannerSettings(throughput_cap=0.95)
    assert len(one_at_a_time(streams(steady), one_gpu(), settings=old_cap).shards) == 7


@pytest.mark.parametrize(
    ("cost", "solo_compute", "mode", "by_cost", "charged_model_time"),
    [
        (12.12, 13.86, SharingMode.TIME_SLICING, 8, 7),  # run 86: the model needs 1.11 s/s
        (12.03, 11.78, SharingMode.TIME_SLICING, 8, 8),  # run 82: it fits the second
        (6.98, 12.72, SharingMode.MPS, 14, 14),  # run 84: MPS runs bodies side by side
    ],
)
def test_charging_the_model_s_own_time_admits_only_what_fits_one_after_another(
    cost: float, solo_compute: float, mode: SharingMode, by_cost: int, charged_model_time: int
) -> None:
    """``charge_model_time``: on a GPU whose bodies take turns, a stream is charged the
    larger of its cost and its model's own time alone. On run 86's slow H100 the cost admits
    8 (the loop: p99 2.29 x solo) and the model's time 7 (1.12 x); where the model fits the
    second, or under MPS, nothing changes. The GPU then reports its models within it."""
    body = max(cost, solo_compute) + 1.0
    measured = factories.profile(
        "m", "NVIDIA-H200", body, body, str(mode), costMs=cost, soloComputeMs=solo_compute
    )
    streams = [stream(f"c{i}", 10.0, None) for i in range(20)]
    charged = PlannerSettings(charge_model_time=True)
    assert len(one_at_a_time(streams, one_gpu(mode), [measured]).shards) == by_cost
    placed = one_at_a_time(streams, one_gpu(mode), [measured], settings=charged)
    assert len(placed.shards) == charged_model_time
    (gpu,) = placed.gpus
    assert mode is SharingMode.MPS or (gpu.model_time_share or 2.0) <= 1.0


def test_a_model_longer_than_its_body_is_charged_its_own_time() -> None:
    """Run 94's unsteady eager profile: a 14.9 ms body, a 13.62 ms cost, 18.47 ms of the
    model's own time alone. By its cost the plan admits 7 (the run's N, 1.29 of each
    second in the model); with ``charge_model_time`` 5, whose models fit the second. The
    charge was capped at the body, which admitted 6 (1.11 of it)."""
    measured = factories.profile(
        "m", "NVIDIA-H200", 14.9, 19.1, "time-slicing", costMs=13.62, soloComputeMs=18.47
    )
    streams = [stream(f"c{i}", 10.0, None) for i in range(9)]
    gpu = one_gpu(SharingMode.TIME_SLICING)
    assert len(one_at_a_time(streams, gpu, [measured]).shards) == 7
    charged = one_at_a_time(
        streams, gpu, [measured], settings=PlannerSettings(charge_model_time=True)
    )
    assert len(charged.shards) == 5
    assert charged.gpus[0].model_time_share == pytest.approx(0.9235)
    check_plan(charged)


@pytest.mark.parametrize(
    ("knee", "effective", "exclusive"),
    [
        (13.5, 11.36, False),  # the GPU overlaps bodies: cheaper than the knee
        (45.0, 44.0, True),  # a lock: no cheaper than the knee
        (None, 5.97, False),  # MPS, no knee: two at once barely slow each other
        (13.5, None, True),  # no throughput measured: nothing says it shares
    ],
)
def test_a_body_is_exclusive_when_running_two_at_once_gains_nothing(
    knee, effective, exclusive
) -> None:
    assert body_is_exclusive(knee, effective) is exclusive


def test_a_noisy_knee_of_an_exclusive_body_does_not_read_as_sharing() -> None:
    """A lock-bound 20 ms body on a busy machine: the knee came out at 21.9 ms (interval
    from 20.1), the throughput at 20.4 ms a frame. Against the knee's low end that is no
    cheaper: exclusive."""
    assert not body_is_exclusive(21.9, 20.4)  # against the knee alone
    assert body_is_exclusive(21.9, 20.4, knee_low_ms=20.1)


@pytest.mark.parametrize(
    ("knee", "low", "growth", "exclusive"),
    [
        # the H200 CUDA-graph RetinaNet, time-sliced, on 2026-12-03: one cost (11.4 ms), knees
        # from 11.3 to 16.3 ms; the throughput grew 1.27x past two clients
        (12.67, 11.9, 1.27, False),  # the sweep shows sharing the knee's low end hid
        (12.67, 11.9, None, True),  # no two-client point: the knee's low end decides
        (11.30, 10.6, 1.27, True),  # a knee this low: no cheaper than it, exclusive
        # a lock whose clients' own work outruns it: throughput grows past two clients, but
        # its cost is its knee, so it stays exclusive
        (10.0, 9.5, 3.9, True),
    ],
)
def test_throughput_growing_past_two_clients_is_evidence_of_sharing(
    knee, low, growth, exclusive
) -> None:
    assert body_is_exclusive(knee, 11.36 if knee > 11 else 9.9, low, growth) is exclusive


def test_throughput_growth_is_the_best_over_two_clients() -> None:
    sweep = [
        {"clients": 1.0, "throughput_per_s": 63.9},
        {"clients": 2.0, "throughput_per_s": 69.4},
        {"clients": 10.0, "throughput_per_s": 88.0},
    ]
    assert throughput_growth(sweep) == pytest.approx(88.0 / 69.4)
    assert throughput_growth(sweep[:1]) is None


H200_GRAPH_PROFILES = {
    # bench/gpu/results/2026-12-03-loop-time-slicing*.json: the time-sliced CUDA-graph
    # RetinaNet profiled five times, one cost, knees from 11.7 to 16.3 ms
    # run: (knee, knee interval low end, cost per frame, guarded body, saturation sweep)
    "run 1": (16.25, None, 11.455, 18.7, [61.7, 77.1, 84.0, 86.4, 87.3]),
    "run 4": (12.67, None, 11.363, 14.6, [63.9, 69.4, 80.6, 87.0, 88.0]),
    "run 6": (12.26, 11.85, 11.350, 14.1, [70.4, 74.9, 84.3, 86.9, 88.1]),
    "run 9": (11.74, 11.20, 11.280, 13.6, [65.2, 71.9, 83.8, 88.6, 88.7]),
}


@pytest.mark.parametrize("run", sorted(H200_GRAPH_PROFILES))
def test_every_recorded_profile_of_one_model_admits_what_its_throughput_holds(run) -> None:
    """Replayed through calibration and the planner: shared or exclusive, each of the
    model's five H200 profiles admits floor(throughput / fps) = 8 at 10 fps. Charged
    its guarded body, an exclusive profile admitted 6 (runs 4 and 9)."""
    knee, low, cost, body, sweep = H200_GRAPH_PROFILES[run]
    levels = [
        {"clients": c, "throughput_per_s": t} for c, t in zip([1, 2, 4, 8, 10], sweep, strict=True)
    ]
    result = CalibrationResult(
        model="graph",
        body_time_ms=body,
        knee_ms=knee,
        knee_ci_ms=[low, knee + 1] if low else None,
        solo_p50_ms=15.5,
        solo_p99_ms=17.2,
        effective_body_ms=cost,
        cost_ms=recommended_cost_ms(cost, body),
        exclusive_body=body_is_exclusive(knee, cost, low, throughput_growth(levels)),
        sweep_pairs=60,
    )
    profile = model_profile(result, "NVIDIA-H200", SharingMode.TIME_SLICING, datetime.now(UTC))
    streams = [stream(f"c{i}", 10.0, None, model="graph") for i in range(12)]
    placed = one_at_a_time(streams, one_gpu(), [profile])
    assert len(placed.shards) == 8
    assert len(placed.shards) == math.floor(max(sweep) / 10)


def test_the_mps_profile_of_run_7_admits_16() -> None:
    """Issue 20, H200 run 7: MPS, a 6.004 ms cost. Rounded up to 6.1 ms and charged against
    a 0.98 cap, 16 streams needed 2,704 ticks of the 2,700 the 0.9 utilisation cap leaves,
    and the planner stopped at 15 where random phases held 16. At 0.01 ms it admits 16 (runs
    16 and 22: 0 drops), at 0.98 as at today's 1.0; at 0.95, ⌊0.95 × 166.6 / 10⌋ = 15, in
    either mode."""
    cost = recommended_cost_ms(6.004, 9.6)
    streams = [stream(f"c{i}", 10.0, 9.6, cost) for i in range(20)]
    mps = one_gpu(SharingMode.MPS)
    assert len(plan(streams, mps).shards) == 16
    assert len(one_at_a_time(streams, mps).shards) == 16
    assert len(plan(streams, mps, settings=PlannerSettings(mps_throughput_cap=0.98)).shards) == 16
    assert len(plan(streams, mps, settings=PlannerSettings(mps_throughput_cap=0.95)).shards) == 15
    assert len(plan(streams, one_gpu()).shards) == 16
    assert len(plan(streams, one_gpu(), settings=PlannerSettings(throughput_cap=0.95)).shards) == 15


def test_each_sharing_mode_is_charged_against_its_own_throughput_cap() -> None:
    settings = PlannerSettings(throughput_cap=0.9, mps_throughput_cap=0.6)
    assert settings.throughput_cap_under(SharingMode.MPS) == 0.6
    for mode in (SharingMode.TIME_SLICING, SharingMode.MIG, SharingMode.EXCLUSIVE):
        assert settings.throughput_cap_under(mode) == 0.9
    shared = Timing(15.0, 15.0, "spec", cost_ms=6.0, sharing=SharingMode.MPS)
    assert shared.reserved_ms(settings) == pytest.approx(6.0 * 0.9 / 0.6)
    with pytest.raises(ValueError, match="throughput caps"):
        PlannerSettings(mps_throughput_cap=1.2)


def test_what_calibration_reports_is_usable_as_is() -> None:
    """A ModelProfile from a calibration whose guarded body exceeds the solo p50 (15.5 ms
    over 15.3 ms) validates: latency is raised to the body, the cost carried."""
    result = CalibrationResult(
        model="m",
        body_time_ms=15.5,
        knee_ms=13.5,
        solo_p50_ms=15.3,
        solo_p99_ms=16.0,
        effective_body_ms=11.36,
        cost_ms=11.4,
        sweep_pairs=100,
    )
    manifest = model_profile(result, "NVIDIA-H200", SharingMode.TIME_SLICING, datetime.now(UTC))
    assert (manifest.spec.body_time_ms, manifest.spec.cost_ms) == (15.5, 11.4)
    assert manifest.spec.latency_ms == 15.5
    s = stream("x", 10.0, manifest.spec.body_time_ms, manifest.spec.cost_ms)
    assert s.spec.cost_ms == 11.4
    assert manifest.spec.exclusive_body is None  # shared: the field is left out
    exclusive = result.model_copy(update={"exclusive_body": True})
    manifest = model_profile(exclusive, "NVIDIA-H200", SharingMode.TIME_SLICING, datetime.now(UTC))
    assert manifest.to_wire()["spec"]["exclusiveBody"] is True
    # what a calibration Job reports still fits its termination message (4 KiB)
    assert len(exclusive.model_dump_json(by_alias=True)) < 4096
    # an older Job's report (no exclusiveBody) keeps its meaning: a cost means shared
    old = CalibrationResult.model_validate_json(result.model_dump_json(exclude={"exclusive_body"}))
    assert old.exclusive_body is False


def test_the_simulator_serves_shared_bodies_at_their_measured_throughput() -> None:
    """n equal shared bodies back to back: the simulated GPU completes one frame per cost,
    the throughput the cost stands for; exclusive ones one per body (plus contention)."""
    n, body, cost = 4, 0.0155, 0.0114

    def served(cost_s: float | None, contention: float) -> float:
        shards = [
            SimShard(
                i,
                frame_period_s=0.001,
                phase_s=0.0,
                body_s=body,
                pre_s=0.0,
                post_s=0.0,
                jitter_cv=0.0,
                cost_s=cost_s,
            )
            for i in range(n)
        ]
        stats = simulate_gpu(shards, 2.0, contention=contention)
        return sum(s.completed for s in stats.values()) / 2.0

    assert served(cost, 0.32) == pytest.approx(1 / cost, rel=0.03)
    assert served(None, 0.0) == pytest.approx(1 / body, rel=0.03)
    assert served(None, 0.32) == pytest.approx(1 / (body * 1.32), rel=0.03)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([5.0, 10.0, 15.0, 30.0]),
            st.floats(2.0, 30.0).map(lambda x: round(x, 1)),
            st.floats(0.3, 1.0),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_shared_fleets_stay_under_the_throughput_cap_and_slots_never_overlap(specs) -> None:
    streams = [
        stream(f"c{i}", fps, body, round(max(0.1, body * share), 1))
        for i, (fps, body, share) in enumerate(specs)
    ]
    gpus = [Gpu(index=i, product="NVIDIA-H200", memoryMiB=H200_MIB) for i in range(3)]
    cluster = Cluster(nodes=[Node(name="n", gpus=gpus)])
    for placed in (plan(streams, cluster), one_at_a_time(streams, cluster)):
        for gpu in {s.gpu for s in placed.shards}:
            on = [s for s in placed.shards if s.gpu == gpu]
            hz = placed.tick_hz / 1000
            charged = sum(s.cost_ms / (s.period_ticks / hz) for s in on)
            assert charged <= PlannerSettings().throughput_cap + 1e-9
            slots = [Slot(s.key, s.body_ticks, s.period_ticks, s.offset_ticks) for s in on]
            assert not overlaps(slots)
