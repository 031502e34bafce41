"""What the operator's statuses say. A stream's: what each shard is charged, its slot's
width (``reservedMs``) beside its body, so a user sees why a stream with a tight deadline
takes more of a GPU. A GpuSchedule's: how much the table's calibrated bodies overlap, and
how much of each second its models need one at a time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stagger.core.api import InferenceStream, ModelProfile, StreamPhase
from stagger.core.cluster import Cluster, Gpu, Node
from stagger.core.placement import plan
from stagger_operator.status import model_time_warnings, schedule_status, stream_status

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def manifest(kind: str, name: str, spec: dict) -> dict:
    meta = {"name": name, **({"namespace": "cams"} if kind == "InferenceStream" else {})}
    return {"apiVersion": "stagger.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def profile(
    model: str,
    body: float,
    cost: float,
    latency: float,
    *,
    solo_compute: float | None = None,
    product: str = "NVIDIA-H200",
    sharing: str = "time-slicing",
) -> ModelProfile:
    return ModelProfile.model_validate(
        manifest(
            "ModelProfile",
            f"{model}-{product.lower()}-{sharing}",
            {
                "model": model,
                "gpuProduct": product,
                "sharingMode": sharing,
                "bodyTimeMs": body,
                "costMs": cost,
                "latencyMs": latency,
                **({"soloComputeMs": solo_compute} if solo_compute else {}),
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
    assert schedule_status(schedule, packed, {}, now=NOW)["bodyOverlapMsPerSecond"] == 192.0
    pair = [
        InferenceStream.model_validate(
            manifest("InferenceStream", f"fast-{i}", {"model": "small", "fps": 30.0})
        )
        for i in range(2)
    ]
    apart = plan(pair, cluster, [profile("small", 9.8, 7.76, 11.64)])
    assert schedule_status(schedule, apart, {}, now=NOW)["bodyOverlapMsPerSecond"] == 0.0


def cameras(n: int, model: str) -> list[InferenceStream]:
    return [
        InferenceStream.model_validate(
            manifest("InferenceStream", f"cam-{i}", {"model": model, "fps": 10.0})
        )
        for i in range(n)
    ]


SCHEDULE = {"spec": {"node": "n", "gpuIndex": 0, "slots": []}}


def model_time(
    solo_compute: float | None,
    *,
    streams: int = 8,
    sharing: str = "time-slicing",
    now: datetime = NOW,
    previous: dict | None = None,
) -> dict:
    """The GpuSchedule status of ``streams`` CUDA-graph RetinaNet streams at 10 fps on one
    H100, profiled as in run 82 (12.03 ms cost; runs 82, 85 and 86 each admitted 8)."""
    h100 = Gpu.model_validate(
        {"index": 0, "product": "NVIDIA-H100", "memoryMiB": 81_559, "sharingMode": sharing}
    )
    graph = profile(
        "graph",
        13.9,
        12.03,
        13.9,
        solo_compute=solo_compute,
        product="NVIDIA-H100",
        sharing=sharing,
    )
    placed = plan(cameras(streams, "graph"), Cluster(nodes=[Node(name="n", gpus=[h100])]), [graph])
    assert len(placed.shards) == streams
    return schedule_status(SCHEDULE, placed, {}, now=now, previous=previous)


@pytest.mark.parametrize(
    ("solo_compute", "streams", "share", "fits"),
    [
        (11.78, 8, 0.9424, True),  # run 82: p99 1.25 x solo
        (13.86, 7, 0.9702, True),  # run 86, one stream fewer: 1.12 x
        (13.56, 8, 1.0848, False),  # run 85: 2.90 x
        (13.86, 8, 1.1088, False),  # run 86: 2.29 x
    ],
)
def test_a_time_sliced_gpu_says_when_its_models_need_more_than_the_whole_second(
    solo_compute: float, streams: int, share: float, fits: bool
) -> None:
    """Runs 82, 85 and 86, one H100 each, 8 streams admitted for about the same cost: the
    profiles' solo compute x 10 fps x the streams on the GPU, and whether the models fit
    the second one at a time; the loop's tail followed it."""
    status = model_time(solo_compute, streams=streams)
    assert status["modelTimeShare"] == share
    (condition,) = status["conditions"]
    assert condition["type"] == "ModelTimeFits"
    if fits:
        assert (condition["status"], condition["reason"]) == ("True", "BodiesRunApart")
    else:
        assert (condition["status"], condition["reason"]) == ("False", "ModelTimeFillsPeriod")
        assert f"{share:.2f} of each second" in condition["message"]
        assert "chargeModelTime" in condition["message"]


def test_without_a_measured_solo_compute_the_share_is_not_guessed() -> None:
    """A profile from before soloComputeMs (or written by hand): no share, Unknown and how to
    get one. Under MPS bodies run side by side: neither share nor condition."""
    unknown = model_time(None)
    assert "modelTimeShare" not in unknown
    (cond,) = unknown["conditions"]
    assert (cond["status"], cond["reason"]) == ("Unknown", "SoloComputeNotMeasured")
    assert "recalibrate" in cond["message"]
    mps = model_time(12.72, sharing="mps")
    assert "modelTimeShare" not in mps and mps["conditions"] == []


def test_the_condition_keeps_its_transition_time_while_it_holds() -> None:
    """The status is written only when it changes: a condition that holds keeps the time it
    became so (the status is then equal, and not written again), and takes a new one when
    it turns."""
    first = model_time(13.56)
    later = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    assert model_time(13.56, now=later, previous=first) == first
    turned = model_time(11.78, now=later, previous=first)
    assert turned["conditions"][0]["lastTransitionTime"] == "2026-12-06T09:00:00Z"


def test_each_stream_on_a_gpu_whose_models_outgrow_the_second_is_warned_once() -> None:
    """The turn to False warns every stream on that GPU, naming it; a GpuSchedule that was
    False already (written by this replica or the one before a restart) warns only the
    streams that joined it since; one that fits warns nobody."""

    def gpu(*streams: int) -> dict:
        slots = [{"namespace": "cams", "stream": f"cam-{i}", "shard": 0} for i in streams]
        return {"spec": {"node": "n", "gpuIndex": 0, "slots": slots}}

    over, fits = model_time(13.86), model_time(11.78)
    wanted = {"n-0": gpu(1, 0, 1)}
    warned = model_time_warnings(wanted, {"n-0": None}, {"n-0": over})
    assert [who for who, _ in warned] == [("cams", "cam-0"), ("cams", "cam-1")]
    assert warned[0][1].startswith("GPU 0 of n: the models need 1.11 of each second")
    was_over = {"n-0": {**gpu(0, 1), "status": over}}
    assert model_time_warnings(wanted, was_over, {"n-0": over}) == []
    joined = {"n-0": gpu(0, 1, 2)}
    assert [w for w, _ in model_time_warnings(joined, was_over, {"n-0": over})] == [
        ("cams", "cam-2")
    ]
    was_fitting = {"n-0": {**gpu(0, 1), "status": fits}}
    assert model_time_warnings(wanted, {"n-0": None}, {"n-0": fits}) == []
    assert len(model_time_warnings(joined, was_fitting, {"n-0": over})) == 3


@pytest.mark.parametrize(("max_wait_ms", "warned"), [(None, False), (40.0, False), (15.0, True)])
def test_a_followed_slot_says_how_long_its_frames_wait_and_when_max_wait_ungates_them(
    max_wait_ms: float | None, warned: bool
) -> None:
    """A slot re-timed to its camera's arrivals makes every frame wait the same: here
    38.8 ms, run 117's longest table wait. A ``gate.maxWaitMs`` shorter than that sends
    every frame at once, ungated, into the other streams' slots (4 of 8 streams there):
    the stream's status says so, placed and once it runs; a longer one, or none, says
    nothing."""
    import copy
    from dataclasses import replace

    from stagger_operator.rollout import Rollout
    from stagger_operator.settings import OperatorSettings
    from stagger_operator.status import serving_status

    gate = {} if max_wait_ms is None else {"gate": {"maxWaitMs": max_wait_ms}}
    cam = InferenceStream.model_validate(
        manifest("InferenceStream", "cam", {"model": "graph", "fps": 10.0, **gate})
    )
    cluster = Cluster(
        nodes=[Node(name="n", gpus=[Gpu(index=0, product="NVIDIA-H200", memoryMiB=143_771)])]
    )
    (placed,) = plan([cam], cluster, [profile("graph", 14.9, 11.31, 14.9)]).shards
    hz = 30_000
    arrival = (placed.offset_ticks - round(0.0388 * hz)) % placed.period_ticks
    followed = replace(placed, arrival_ticks=arrival)
    status = stream_status(cam, [followed], StreamPhase.PLACED, "", NOW)
    assert status["shards"][0]["slotWaitMs"] == pytest.approx(38.8, abs=0.04)
    running = serving_status(
        copy.deepcopy(status),
        cam,
        Rollout(serving={("cams", "cam", "0")}),
        {},
        settings=OperatorSettings(),
        now=NOW,
    )
    assert running["phase"] == "Running"
    for message in (status["message"], status["conditions"][0]["message"], running["message"]):
        assert ("longer than gate.maxWaitMs (15): every frame goes at once" in message) is warned
    unfollowed = stream_status(cam, [placed], StreamPhase.PLACED, "", NOW)
    assert "slotWaitMs" not in unfollowed["shards"][0]
    assert "maxWaitMs" not in unfollowed["message"]
