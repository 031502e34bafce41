"""What the operator's statuses say. A stream's: what each shard is charged, its slot's
width (``reservedMs``) beside its body, so a user sees why a stream with a tight deadline
takes more of a GPU. A GpuSchedule's: how much the table's calibrated bodies overlap."""

from __future__ import annotations

from datetime import UTC, datetime

from stagger.core.api import InferenceStream, ModelProfile, StreamPhase
from stagger.core.cluster import Cluster, Gpu, Node
from stagger.core.placement import plan
from stagger_operator.status import schedule_status, stream_status


def manifest(kind: str, name: str, spec: dict) -> dict:
    meta = {"name": name, **({"namespace": "cams"} if kind == "InferenceStream" else {})}
    return {"apiVersion": "stagger.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def profile(model: str, body: float, cost: float, latency: float) -> ModelProfile:
    return ModelProfile.model_validate(
        manifest(
            "ModelProfile",
            f"{model}-h200",
            {
                "model": model,
                "gpuProduct": "NVIDIA-H200",
                "bodyTimeMs": body,
                "costMs": cost,
                "latencyMs": latency,
            },
        )
    )


def test_each_shard_reports_the_time_reserved_for_it_beside_its_body() -> None:
    """Run 29's profiles: a 14.9 ms RetinaNet body is profiled on the GPU, so a 30 fps
    stream with 10.6 ms to spare cannot absorb one: on its GPU every body is kept whole,
    the 10 fps stream's too; alone, that one is charged its cost."""
    profiles = [profile("small", 9.8, 7.76, 11.64), profile("graph", 14.9, 11.38, 14.9)]
    streams = [
        InferenceStream.model_validate(manifest("InferenceStream", name, spec))
        for name, spec in (
            ("tight", {"model": "small", "fps": 30.0, "deadlineMs": 25.3, "latencyMs": 14.7}),
            ("loose", {"model": "small", "fps": 10.0}),
        )
    ]
    cluster = Cluster(
        nodes=[Node(name="n", gpus=[Gpu(index=0, product="NVIDIA-H200", memoryMiB=143_771)])]
    )
    placed = plan(streams, cluster, profiles)
    now = datetime(2026, 12, 4, tzinfo=UTC)
    reported = {
        s.name: stream_status(s, placed.for_stream("cams", s.name), StreamPhase.PLACED, "", now)[
            "shards"
        ][0]
        for s in streams
    }
    assert {n: (r["bodyMs"], r["reservedMs"]) for n, r in reported.items()} == {
        "tight": (9.8, 9.8),  # its deadline cannot absorb one more body: charged whole
        "loose": (9.8, 9.8),  # beside it: whole as well
    }
    alone = plan(streams[1:], cluster, profiles).for_stream("cams", "loose")
    (shard,) = stream_status(streams[1], alone, StreamPhase.PLACED, "", now)["shards"]
    assert (shard["bodyMs"], shard["reservedMs"]) == (9.8, 7.0)  # its cost, scaled: 7.76 x 0.9


def test_a_gpu_schedule_says_how_much_its_calibrated_bodies_run_at_once() -> None:
    """Run 51: 8 RetinaNet streams charged their 11.31 ms cost fit one H200 at 10 fps, and
    their 14.9 ms bodies 12.5 ms apart overlap 2.4 ms at each end: 192 ms of every second.
    Two 30 fps streams of a 9.8 ms body fit apart: 0."""
    cluster = Cluster(
        nodes=[Node(name="n", gpus=[Gpu(index=0, product="NVIDIA-H200", memoryMiB=143_771)])]
    )
    schedule = {"spec": {"node": "n", "gpuIndex": 0, "slots": []}}
    cameras = [
        InferenceStream.model_validate(
            manifest("InferenceStream", f"cam-{i}", {"model": "graph", "fps": 10.0})
        )
        for i in range(8)
    ]
    packed = plan(cameras, cluster, [profile("graph", 14.9, 11.31, 14.9)])
    assert len(packed.shards) == 8
    assert schedule_status(schedule, packed, {})["bodyOverlapMsPerSecond"] == 192.0
    pair = [
        InferenceStream.model_validate(
            manifest("InferenceStream", f"fast-{i}", {"model": "small", "fps": 30.0})
        )
        for i in range(2)
    ]
    apart = plan(pair, cluster, [profile("small", 9.8, 7.76, 11.64)])
    assert schedule_status(schedule, apart, {})["bodyOverlapMsPerSecond"] == 0.0
