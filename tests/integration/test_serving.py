"""Pods and sidecar metrics against kmock: Running, observed fps/drops/p99, GpuSchedule
status, and make-before-break moves. The tests create the pods (kmock has no kubelet); the
metrics pages come from the sidecar's own metrics code over real HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import start_http_server

from stagger_sidecar.metrics import GateMetrics, StreamKey
from tests.emulator import stream
from tests.integration.conftest import Cluster, run_pod, start_operator, stop_operator
from tests.integration.test_operator import by_shard, statuses


@pytest.fixture
def sidecar_metrics() -> Iterator[tuple[GateMetrics, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = GateMetrics()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    yield metrics, port
    server.shutdown()
    thread.join(5)


async def create_profile(c: Cluster, **spec: float) -> None:
    """The H200's ModelProfile of the streams' model (``retinanet``)."""
    await c.create(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": "retinanet-h200", "uid": "uid-profile", "resourceVersion": "1"},
            "spec": {"model": "retinanet", "gpuProduct": "NVIDIA-H200", **spec},
        }
    )


async def phase_of(c: Cluster, name: str) -> dict[str, Any]:
    return (await statuses(c)).get(name, {})


async def test_ready_pods_make_a_stream_running_with_what_its_sidecar_measured(
    cluster: Cluster, sidecar_metrics: tuple[GateMetrics, int]
) -> None:
    metrics, port = sidecar_metrics
    op = await start_operator(cluster, scrape_interval_s=0.3, sidecar_metrics_port=port)
    try:
        await cluster.create(stream("cam", fps=10, body=10.5))
        await cluster.wait_for(lambda: _phase(cluster, "cam", "Placed"))
        assert (await phase_of(cluster, "cam"))["conditions"][-1]["reason"] == "ShardsStarting"
        (deployment,) = await cluster.objects("Deployment", "default")
        await run_pod(cluster, deployment)
        st = await cluster.wait_for(lambda: _phase(cluster, "cam", "Running"))
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("True", "Serving")

        # The sidecar serves frames at 20 fps, 16 ms each; later it starts dropping.
        key = StreamKey("default", "cam", 0, "retinanet")
        metrics.body.labels(**key.labels()).set(0.0104)
        dropping = asyncio.Event()

        async def frames() -> None:
            while True:
                metrics.completed(key, wait_s=0.002, service_s=0.016, late=False)
                if dropping.is_set():
                    metrics.refused(key, "late")
                    metrics.missed_slot(key)
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(frames())

        async def observed() -> dict[str, Any] | None:
            st = await phase_of(cluster, "cam")
            return st if st.get("shards", [{}])[0].get("observedFps") else None

        st = await cluster.wait_for(observed)
        assert 5 <= st["shards"][0]["observedFps"] <= 25  # 20 fps, over 0.3 s windows
        assert 2 <= st["p99Ms"] <= 25 and st["dropRate"] == 0
        dropping.set()
        st = await cluster.wait_for(lambda: _phase(cluster, "cam", "Degraded"))
        assert "drops" in st["message"]

        async def schedule_status() -> dict[str, Any] | None:
            (sched,) = await cluster.objects("GpuSchedule")
            status = sched.get("status") or {}
            return status if status.get("slotMisses") else None

        status = await cluster.wait_for(schedule_status)
        assert status["measuredBodyMs"] == {"retinanet": 10.4}
        assert status["streams"] == 1 and status["utilization"] > 0
        assert status["bodyOverlapMsPerSecond"] == 0.0  # one stream: its body has the GPU
        feeder.cancel()
    finally:
        await stop_operator(op)


async def _phase(c: Cluster, name: str, phase: str) -> dict[str, Any] | None:
    st = await phase_of(c, name)
    return st if st.get("phase") == phase else None


async def test_a_moving_shard_keeps_serving_until_its_new_copy_is_ready(cluster: Cluster) -> None:
    op = await start_operator(cluster, max_moves=1)
    try:
        # Two streams of 0.4 GPU share one GPU; growing "b" to 0.55 makes it move.
        for n in ("a", "b"):
            await cluster.create(stream(n, fps=10, body=40, latencyMs=50))
        await cluster.wait_for(lambda: _both(cluster, "Placed"))
        first = by_shard(await cluster.objects("Deployment", "default"))
        for d in first.values():
            await run_pod(cluster, d)
        await cluster.wait_for(lambda: _both(cluster, "Running"))
        old = first[("b", "0")]
        grown = stream("b", fps=10, body=55, latencyMs=65)
        current = next(
            o
            for o in await cluster.objects("InferenceStream", "default")
            if o["metadata"]["name"] == "b"
        )
        await cluster.call(cluster.kube.apply, grown, current)

        async def two_copies() -> list[dict[str, Any]] | None:
            copies = [
                d
                for d in await cluster.objects("Deployment", "default")
                if d["metadata"]["labels"]["stagger.dev/stream"] == "b"
            ]
            return copies if len(copies) == 2 else None

        copies = await cluster.wait_for(two_copies)
        new = next(d for d in copies if d["metadata"]["name"] != old["metadata"]["name"])

        async def reported_moving() -> bool:  # the status is written after the new copy
            st = await phase_of(cluster, "b")
            return st["phase"] == "Running" and "moving shard(s) 0" in st["message"]

        await cluster.wait_for(reported_moving)
        await run_pod(cluster, new)

        async def old_gone() -> bool:
            names = {d["metadata"]["name"] for d in await cluster.objects("Deployment", "default")}
            return old["metadata"]["name"] not in names and new["metadata"]["name"] in names

        await cluster.wait_for(old_gone)

        async def settled() -> bool:  # the status is written after the old copy goes
            st = await phase_of(cluster, "b")
            return st["phase"] == "Running" and "moving" not in st["message"]

        await cluster.wait_for(settled)
    finally:
        await stop_operator(op)


async def _both(c: Cluster, phase: str) -> bool:
    st = await statuses(c)
    return all(st.get(n, {}).get("phase") == phase for n in ("a", "b"))


async def test_a_refused_write_is_reported_on_its_stream_and_others_are_served(
    cluster: Cluster,
) -> None:
    # An admission webhook or quota in namespace "locked" refuses every Deployment.
    refusal = {"kind": "Status", "message": 'exceeded quota: "gpu-pods"', "code": 403}
    cluster.emulator["post /apis/apps/v1/namespaces/locked/deployments"] << 403 << refusal
    op = await start_operator(cluster)
    try:
        await cluster.create(stream("blocked", namespace="locked"))
        await cluster.create(stream("fine"))

        async def settled() -> dict[str, Any] | None:
            locked = {
                o["metadata"]["name"]: o.get("status") or {}
                for o in await cluster.objects("InferenceStream", "locked")
            }
            fine = await phase_of(cluster, "fine")
            return locked if locked["blocked"].get("phase") and fine.get("phase") else None

        st = (await cluster.wait_for(settled))["blocked"]
        assert st["phase"] == "Pending"
        assert "cannot write Deployment" in st["message"] and "exceeded quota" in st["message"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "WriteFailed"
        assert (await phase_of(cluster, "fine"))["phase"] == "Placed"

        async def reported() -> bool:
            last = op.memo.stats.last
            return last is not None and last.failed >= 1

        await cluster.wait_for(reported)
    finally:
        await stop_operator(op)


async def test_a_profile_whose_measured_body_drifts_says_so(
    cluster: Cluster, sidecar_metrics: tuple[GateMetrics, int]
) -> None:
    metrics, port = sidecar_metrics
    await create_profile(cluster, bodyTimeMs=10.5, latencyMs=18.5)
    op = await start_operator(cluster, scrape_interval_s=0.3, sidecar_metrics_port=port)
    try:
        cam = stream("cam")
        del cam["spec"]["bodyTimeMs"], cam["spec"]["latencyMs"]  # the profile's to give
        await cluster.create(cam)
        await cluster.wait_for(lambda: _phase(cluster, "cam", "Placed"))
        (deployment,) = await cluster.objects("Deployment", "default")
        await run_pod(cluster, deployment)
        key = StreamKey("default", "cam", 0, "retinanet")
        metrics.body.labels(**key.labels()).set(0.0135)  # 29 % over the profile

        async def drifted() -> dict[str, Any] | None:
            (profile,) = await cluster.objects("ModelProfile")
            status = profile.get("status") or {}
            conditions = status.get("conditions") or [{}]
            return status if conditions[0].get("status") == "True" else None

        status = await cluster.wait_for(drifted)
        assert status["observedBodyMs"] == 13.5 and status["driftPercent"] == pytest.approx(28.6)

        # The Event is posted after the status that triggers it (controller: status first,
        # then the event): wait for it rather than race it.
        async def drift_event() -> bool:
            return any(
                e["reason"] == "BodyDrift" and e["involvedObject"]["kind"] == "ModelProfile"
                for e in await cluster.objects("Event", "default")
            )

        await cluster.wait_for(drift_event)
        metrics.body.labels(**key.labels()).set(0.0110)  # back within 20 %

        async def settled() -> bool:
            (profile,) = await cluster.objects("ModelProfile")
            return profile["status"]["conditions"][0]["status"] == "False"

        await cluster.wait_for(settled)
    finally:
        await stop_operator(op)


async def test_slots_follow_where_the_sidecars_see_requests_arrive_then_windows_open(
    cluster: Cluster, sidecar_metrics: tuple[GateMetrics, int]
) -> None:
    """Three 4 fps cameras on one GPU, their apps on their own clocks: their sidecars
    report arrivals at 20, 90 and 160 ms of the period. The operator re-times the GPU so
    that each slot starts just after its camera's arrivals; once every sidecar reports the
    new table's generation, it grants the slots their release windows. Each stream's
    status shows how long its frames wait for the followed slot; the one whose
    ``gate.maxWaitMs`` is shorter than that is told its frames all go ungated."""
    from stagger.core.api import GpuSchedule
    from stagger.core.phase import PhaseEstimate, wait_s
    from tests.emulator import node

    metrics, port = sidecar_metrics
    solo = node("solo", gpus=1)
    solo["metadata"]["labels"]["pool"] = "solo"
    await cluster.create(solo)
    op = await start_operator(
        cluster,
        scrape_interval_s=0.3,
        sidecar_metrics_port=port,
        retime_min_interval_s=0,
        contract_propagation_s=0.5,
    )
    names, phases = ["cam-0", "cam-1", "cam-2"], [0.020, 0.090, 0.160]
    try:
        for n in names:
            gate = {"gate": {"maxWaitMs": 1}} if n == "cam-2" else {}
            await cluster.create(
                stream(n, fps=4, body=45, latencyMs=60, nodeSelector={"pool": "solo"}, **gate)
            )
        await cluster.wait_for(lambda: _all(cluster, names, "Placed"))
        for d in await cluster.objects("Deployment", "default"):
            await run_pod(cluster, d)
        for n, phase in zip(names, phases, strict=True):
            metrics.completed(StreamKey("default", n, 0, "m"), wait_s=0, service_s=0.06, late=False)
            estimate = PhaseEstimate(0.25, phase, 0.001, 0.99, 40, 40)
            metrics.watch_arrivals("default", n, 0, lambda e=estimate: e)

        async def followed() -> GpuSchedule | None:
            (o,) = await cluster.objects("GpuSchedule")
            sched = GpuSchedule.model_validate(o)
            hz = sched.spec.tick_hz
            waits = [
                wait_s(s.offset_ticks / hz, phases[names.index(s.stream)], 0.25)
                for s in sched.spec.slots
            ]
            return sched if all(0 <= w < 0.01 for w in waits) else None

        sched = await cluster.wait_for(followed)
        for n in names:  # every sidecar now runs the new table
            metrics.slot_generation.labels("default", n, "0").set(sched.spec.generation)

        async def windows() -> dict[str, Any] | None:
            contracts = [
                json.loads(cm["data"]["slot.json"])
                for cm in await cluster.objects("ConfigMap", "default")
            ]
            granted = all(c.get("earlyTicks") and c.get("lateTicks") for c in contracts)
            return {c["stream"]: c for c in contracts} if granted else None

        contracts = await cluster.wait_for(windows)
        assert {c["generation"] for c in contracts.values()} == {sched.spec.generation}
        # Each slot records the arrivals it was re-timed to follow, and so does its
        # contract: its gate waits for it while they keep that phase.
        hz = sched.spec.tick_hz
        marks = {n: math.floor(phase * hz) for n, phase in zip(names, phases, strict=True)}
        assert {s.stream: s.arrival_ticks for s in sched.spec.slots} == marks
        assert {n: c["arrivalTicks"] for n, c in contracts.items()} == marks
        waits = {
            s.stream: (s.offset_ticks - marks[s.stream]) % s.period_ticks for s in sched.spec.slots
        }

        async def told() -> dict[str, dict[str, Any]] | None:
            st = await statuses(cluster)
            shown = {n: st[n]["shards"][0].get("slotWaitMs") for n in names}
            return st if all(v is not None for v in shown.values()) else None

        st = await cluster.wait_for(told)
        for n in names:
            assert st[n]["shards"][0]["slotWaitMs"] == pytest.approx(waits[n] / hz * 1e3, abs=1e-3)
            ungated = "longer than gate.maxWaitMs (1): every frame goes at once" in st[n]["message"]
            assert ungated is (n == "cam-2"), st[n]["message"]
    finally:
        await stop_operator(op)


async def _all(c: Cluster, names: list[str], phase: str) -> bool:
    st = await statuses(c)
    return all(st.get(n, {}).get("phase") == phase for n in names)


async def test_streams_on_a_gpu_whose_models_need_more_than_the_second_are_warned(
    cluster: Cluster,
) -> None:
    """Run 86's profile (12.12 ms cost, 13.86 ms solo compute): four 20 fps streams fit one
    H200 by their cost, and their models need 1.11 of each second one at a time. The GPU's
    schedule says so (modelTimeShare, ModelTimeFits False) and each stream gets a Warning
    naming its GPU, once."""
    await create_profile(
        cluster, bodyTimeMs=14.6, costMs=12.12, latencyMs=15.6, soloComputeMs=13.86
    )
    op = await start_operator(cluster)
    try:
        names = [f"cam-{i}" for i in range(4)]
        for name in names:
            cam = stream(name, fps=20)
            del cam["spec"]["bodyTimeMs"], cam["spec"]["latencyMs"]  # the profile's to give
            await cluster.create(cam)

        async def over() -> dict[str, Any] | None:
            for sched in await cluster.objects("GpuSchedule"):
                status = sched.get("status") or {}
                if status.get("streams") == 4 and status.get("conditions"):
                    return status
            return None

        status = await cluster.wait_for(over)
        assert status["modelTimeShare"] == 1.1088
        (fits,) = status["conditions"]
        assert (fits["type"], fits["status"]) == ("ModelTimeFits", "False")

        async def warned() -> list[dict[str, Any]] | None:
            events = [
                e
                for e in await cluster.objects("Event", "default")
                if e["reason"] == "ModelTimeExceeded"
            ]
            return events if len(events) >= len(names) else None

        events = await cluster.wait_for(warned)
        assert sorted(e["involvedObject"]["name"] for e in events) == names
        assert all(e["type"] == "Warning" and "1.11 of each second" in e["message"] for e in events)
    finally:
        await stop_operator(op)
