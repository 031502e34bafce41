"""How much a table's calibrated bodies run at once (stagger.core.placement.overlap): the
closed form against a walk over every frame of the hyperperiod, and what a plan reports."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagger.core.api import InferenceStream, SharingMode
from stagger.core.cluster import Cluster, Gpu, Node
from stagger.core.placement import ShardPlacement, plan
from stagger.core.placement.overlap import (
    body_ticks,
    overlap_ms_per_frame,
    overlap_ms_per_second,
)

HZ = 30_000


def shard(i: int, period: int, offset: int, body_ms: float) -> ShardPlacement:
    return ShardPlacement(
        namespace="cams",
        stream=f"cam-{i}",
        shard=0,
        shards=1,
        node="n",
        gpu=0,
        gpu_uuid=None,
        product="NVIDIA-H200",
        fps=HZ / period,
        frame_period_ticks=period,
        period_ticks=period,
        offset_ticks=offset,
        body_ticks=1,
        body_ms=body_ms,
        latency_ms=body_ms,
        memory_mib=0,
        priority=0,
    )


def walked_ms_per_frame(shards: list[ShardPlacement]) -> dict[tuple[str, str, int], float]:
    """Every body of every shard over the hyperperiod, each pair's overlap added up."""
    span = math.lcm(*(s.period_ticks for s in shards))
    bodies = {
        s.key: [
            (t, t + body_ticks(s, HZ))
            for t in range(s.offset_ticks, s.offset_ticks + span, s.period_ticks)
        ]
        for s in shards
    }
    return {
        s.key: sum(
            max(0, min(end, e + shift) - max(begin, b + shift))
            for begin, end in bodies[s.key]
            for other, theirs in bodies.items()
            if other != s.key
            for b, e in theirs
            for shift in range(-2 * span, 3 * span, span)  # bodies longer than a period
        )
        / len(bodies[s.key])
        * 1e3
        / HZ
        for s in shards
    }


tables = st.lists(
    st.tuples(
        st.sampled_from([1000, 1200, 1500, 2000, 3000, 6000]),  # 30 down to 5 fps
        st.floats(0.0, 1.0),
        st.floats(0.5, 45.0),  # bodies up to longer than a 30 fps period
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(tables)
def test_the_overlap_per_frame_is_what_walking_every_frame_of_the_hyperperiod_adds_up(
    drawn: list[tuple[int, float, float]],
) -> None:
    shards = [
        shard(i, period, int(at * (period - 1)), round(body, 1))
        for i, (period, at, body) in enumerate(drawn)
    ]
    walked = walked_ms_per_frame(shards)
    closed = overlap_ms_per_frame(shards, HZ)
    assert closed == pytest.approx(walked, abs=1e-9)
    # each pair once, per second: half of every shard's overlap per frame times its fps
    per_second = sum(ms * s.fps for s, ms in zip(shards, closed.values(), strict=True)) / 2
    assert overlap_ms_per_second(shards, HZ) == pytest.approx(per_second, abs=1e-6)


def test_eight_bodies_longer_than_their_spacing_overlap_their_neighbours_and_no_more() -> None:
    """Run 51's table: 14.9 ms bodies 12.5 ms apart at 10 fps. Each overlaps the one before
    and the one after by 2.4 ms; of each second, 8 pairs x 10 frames x 2.4 ms = 192 ms."""
    shards = [shard(i, 3000, 375 * i, 14.9) for i in range(8)]
    assert list(overlap_ms_per_frame(shards, HZ).values()) == pytest.approx([4.8] * 8)
    assert overlap_ms_per_second(shards, HZ) == pytest.approx(192.0)
    apart = [shard(i, 3000, 375 * i, 12.5) for i in range(8)]
    assert overlap_ms_per_second(apart, HZ) == 0.0
    assert overlap_ms_per_second(shards[:1], HZ) == 0.0


def test_a_30_fps_shard_overlaps_a_5_fps_body_on_one_frame_in_six() -> None:
    """A 40 ms body every 200 ms and a 5 ms one every 33.3 ms, 16.7 ms after it: one fast
    body falls wholly inside each slow one (5 ms per slow frame), so per fast frame 5/6 ms."""
    slow, fast = shard(0, 6000, 0, 40.0), shard(1, 1000, 500, 5.0)
    per_frame = overlap_ms_per_frame([slow, fast], HZ)
    assert per_frame[slow.key] == pytest.approx(5.0)
    assert per_frame[fast.key] == pytest.approx(5.0 / 6)
    assert overlap_ms_per_second([slow, fast], HZ) == pytest.approx(5.0 * 5)


def one_h200() -> Cluster:
    gpu = Gpu(
        index=0, product="NVIDIA-H200", memoryMiB=143_771, sharing_mode=SharingMode.TIME_SLICING
    )
    return Cluster(nodes=[Node(name="n", gpus=[gpu])])


def camera(i: int, body: float, cost: float | None) -> InferenceStream:
    spec = {"model": "graph", "fps": 10, "bodyTimeMs": body, "memoryMiB": 2048}
    return InferenceStream.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "InferenceStream",
            "metadata": {"name": f"cam-{i}", "namespace": "cams"},
            "spec": spec | ({"costMs": cost} if cost is not None else {}),
        }
    )


def test_a_plan_says_per_gpu_how_much_its_bodies_overlap_where_charges_fit_and_bodies_not() -> None:
    """Charged their 11.31 ms cost, 8 streams of 14.9 ms bodies fit one H200 at 10 fps and
    their bodies overlap; charged whole bodies, 6 fit and none overlaps."""
    shared = plan([camera(i, 14.9, 11.31) for i in range(8)], one_h200(), ())
    assert len(shared.shards) == 8
    (gpu,) = shared.gpus
    assert gpu.overlap_ms_per_s == pytest.approx(
        overlap_ms_per_second(shared.shards, shared.tick_hz), abs=1e-3
    )
    assert gpu.overlap_ms_per_s > 100.0
    whole = plan([camera(i, 14.9, None) for i in range(8)], one_h200(), ())
    assert len(whole.shards) == 6
    assert whole.gpus[0].overlap_ms_per_s == 0.0
