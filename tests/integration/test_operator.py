"""The operator end to end against kmock: apply, delete, bad input, restart, node loss, burst."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stagger.core.api import GpuSchedule
from stagger_operator.leader import Elector
from stagger_testkit.localtriton import free_port
from tests.emulator import node, stream
from tests.integration.conftest import Cluster, Operator, start_operator, stop_operator


async def statuses(c: Cluster) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o.get("status") or {} for o in await c.objects("InferenceStream")
    }


async def all_placed(c: Cluster, names: list[str]) -> dict[str, dict[str, Any]] | None:
    st = await statuses(c)
    return st if all(st.get(n, {}).get("phase") == "Placed" for n in names) else None


def by_shard(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Objects keyed by (stream, shard): their names also carry a placement hash."""
    out = {}
    for o in objects:
        labels = o["metadata"]["labels"]
        out[(labels["stagger.dev/stream"], labels["stagger.dev/shard"])] = o
    return out


async def schedules(c: Cluster) -> list[GpuSchedule]:
    return [GpuSchedule.model_validate(o) for o in await c.objects("GpuSchedule")]


async def test_applied_streams_get_workloads_schedules_and_status(
    cluster: Cluster, operator: Operator
) -> None:
    names = ["cam-1", "cam-2", "cam-3"]
    for n in names:
        await cluster.create(stream(n))
    st = await cluster.wait_for(lambda: all_placed(cluster, names))
    deployments = by_shard(await cluster.objects("Deployment", "default"))
    assert set(deployments) == {(n, "0") for n in names}
    configmaps = by_shard(await cluster.objects("ConfigMap", "default"))
    scheds = await schedules(cluster)
    assert scheds, "a GpuSchedule per used GPU"
    slots = {
        (x.stream, x.shard): (s.spec.node, s.spec.gpu_index, x.offset_ticks)
        for s in scheds
        for x in s.spec.slots
    }
    for n in names:
        status = st[n]
        node_name, gpu, offset = slots[(n, 0)]
        assert (status["node"], status["gpu"]) == (node_name, str(gpu))
        assert status["conditions"][0]["type"] == "Placed"
        contract = json.loads(configmaps[(n, "0")]["data"]["slot.json"])
        assert (contract["node"], contract["gpuIndex"], contract["offsetTicks"]) == (
            node_name,
            gpu,
            offset,
        )
        pod_spec = deployments[(n, "0")]["spec"]["template"]["spec"]
        assert pod_spec["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [node_name]
    events = await cluster.objects("Event", "default")
    assert {e["reason"] for e in events} >= {"Placed"}


async def test_each_plan_s_log_line_counts_the_statuses_it_wrote(
    cluster: Cluster, operator: Operator, caplog: pytest.LogCaptureFixture
) -> None:
    """Stream statuses are written apart from objects (`writes`): the per-plan line says
    how many (`statuses`), so a plan that rewrites many statuses and no object is seen.
    The line comes once the plan's reconcile returns, after its statuses are visible (a
    clean CI run read the log between the two and found no line): wait for both."""
    caplog.set_level(logging.INFO, logger="stagger.operator")
    names = ["cam-1", "cam-2"]
    for n in names:
        await cluster.create(stream(n))
    await cluster.wait_for(lambda: all_placed(cluster, names))

    def plans() -> list[logging.LogRecord]:
        return [r for r in caplog.records if hasattr(r, "plan")]

    # each stream's Placed status, counted by the lines of the plans that wrote them
    await cluster.wait_for(lambda: sum(getattr(r, "statuses", 0) for r in plans()) >= len(names))
    assert all(isinstance(getattr(r, "statuses", None), int) for r in plans())


async def test_what_a_stream_stops_asking_for_is_removed_from_its_deployment(
    cluster: Cluster, operator: Operator
) -> None:
    """Exact writes: a label, a nodeSelector entry and a limit removed from the stream's
    template leave the Deployment; what others set on it (kubectl annotate) stays."""
    template = {
        "metadata": {"labels": {"team": "retail"}},
        "spec": {
            "nodeSelector": {"zone": "a"},
            "containers": [
                {
                    "name": "triton",
                    "image": "example/tritonserver:24.10",
                    "resources": {"limits": {"memory": "4Gi", "cpu": "2"}},
                }
            ],
        },
    }
    await cluster.create(stream("cam-1", template=template))
    await cluster.wait_for(lambda: all_placed(cluster, ["cam-1"]))

    async def deployment() -> dict[str, Any]:
        (d,) = await cluster.objects("Deployment", "default")
        return d

    first = await deployment()
    pod = first["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "retail"
    assert pod["spec"]["nodeSelector"]["zone"] == "a"
    # kubectl annotate, by someone else
    path = f"/apis/apps/v1/namespaces/default/deployments/{first['metadata']['name']}"
    annotate = {"metadata": {"annotations": {"owner": "platform-team"}}}
    await cluster.call(
        lambda: cluster.kube._call("PATCH", path, annotate, "application/merge-patch+json")
    )

    plain = {
        "metadata": {},
        "spec": {
            "containers": [
                {
                    "name": "triton",
                    "image": "example/tritonserver:24.10",
                    "resources": {"limits": {"cpu": "2"}},
                }
            ]
        },
    }
    (current,) = await cluster.objects("InferenceStream", "default")
    await cluster.call(cluster.kube.apply, stream("cam-1", template=plain), current)

    async def cleaned() -> dict[str, Any] | None:
        d = await deployment()
        pod = d["spec"]["template"]
        triton = next(c for c in pod["spec"]["containers"] if c["name"] == "triton")
        gone = (
            "team" not in (pod["metadata"].get("labels") or {})
            and "zone" not in (pod["spec"].get("nodeSelector") or {})
            and "memory" not in triton["resources"]["limits"]
        )
        return d if gone else None

    after = await cluster.wait_for(cleaned)
    triton = next(
        c for c in after["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"
    )
    assert triton["resources"]["limits"] == {"cpu": "2"}
    assert after["metadata"]["annotations"]["owner"] == "platform-team"


async def test_deleting_a_stream_removes_what_it_owns_and_frees_its_slot(
    cluster: Cluster, operator: Operator
) -> None:
    for n in ("keep", "gone"):
        await cluster.create(stream(n))
    await cluster.wait_for(lambda: all_placed(cluster, ["keep", "gone"]))
    await cluster.call(cluster.kube.delete, "InferenceStream", "default", "gone")

    async def cleaned() -> bool:
        names = set(by_shard(await cluster.objects("Deployment", "default")))
        cms = set(by_shard(await cluster.objects("ConfigMap", "default")))
        in_slots = {x.stream for s in await schedules(cluster) for x in s.spec.slots}
        return names == cms == {("keep", "0")} and in_slots == {"keep"}

    await cluster.wait_for(cleaned)


async def test_bad_streams_get_a_status_and_others_are_still_served(
    cluster: Cluster, operator: Operator
) -> None:
    bare = stream("bare")
    del bare["spec"]["template"]
    await cluster.create(bare)
    await cluster.create(stream("huge", memoryMiB=999_999))
    await cluster.create(stream("fine"))

    async def settled() -> dict[str, dict[str, Any]] | None:
        st = await statuses(cluster)
        return (
            st if {"bare", "huge", "fine"} <= {k for k, v in st.items() if v.get("phase")} else None
        )

    st = await cluster.wait_for(settled)
    assert st["bare"]["phase"] == "Pending"
    assert "spec.template is required" in st["bare"]["message"]
    assert st["huge"]["phase"] == "Unschedulable"
    assert "needs 999999 MiB" in st["huge"]["message"]
    assert st["fine"]["phase"] == "Placed"
    assert set(by_shard(await cluster.objects("Deployment", "default"))) == {("fine", "0")}


async def test_restart_reproduces_the_same_plan(cluster: Cluster) -> None:
    op = await start_operator(cluster)
    names = [f"s{i}" for i in range(8)]
    try:
        for i, n in enumerate(names):
            await cluster.create(stream(n, fps=[5, 10, 15][i % 3], body=20, latencyMs=30))
        await cluster.wait_for(lambda: all_placed(cluster, names))
        before = {(s.spec.node, s.spec.gpu_index): s.spec for s in await schedules(cluster)}
    finally:
        await stop_operator(op)
    op = await start_operator(cluster)
    try:
        await cluster.wait_for(lambda: op.memo.stats.plans >= 1)
        after = {(s.spec.node, s.spec.gpu_index): s.spec for s in await schedules(cluster)}
    finally:
        await stop_operator(op)
    assert after == before  # same GPUs, offsets, epochs and generations


async def test_node_going_not_ready_moves_its_shards(cluster: Cluster, operator: Operator) -> None:
    # Three streams of 0.6 GPU each: one per GPU, on three of the four GPUs.
    priority = {"x": 1, "y": 2, "z": 3}
    for n in ("x", "y", "z"):
        await cluster.create(stream(n, fps=10, body=60, latencyMs=70, priority=priority[n]))
    st = await cluster.wait_for(lambda: all_placed(cluster, ["x", "y", "z"]))
    on_a = [n for n in ("x", "y", "z") if st[n]["node"] == "gpu-a"]
    assert on_a, st
    await cluster.call(cluster.kube.apply, node("gpu-a", ready=False), node("gpu-a"))

    async def moved() -> dict[str, dict[str, Any]] | None:
        now = await statuses(cluster)
        placed = [n for n in ("x", "y", "z") if now[n].get("phase") == "Placed"]
        return None if any(now[n]["node"] == "gpu-a" for n in placed) else now

    now = await cluster.wait_for(moved)
    phases = sorted(now[n]["phase"] for n in ("x", "y", "z"))
    assert phases == ["Placed", "Placed", "Unschedulable"]  # gpu-b has room for two
    # Of the streams that lost their GPU, the lowest priority gives way.
    left_out = next(n for n in ("x", "y", "z") if now[n]["phase"] == "Unschedulable")
    assert left_out in on_a and priority[left_out] == min(priority[n] for n in on_a)

    async def moved_event() -> bool:  # posted after the statuses: wait for it
        return "Moved" in {e["reason"] for e in await cluster.objects("Event", "default")}

    await cluster.wait_for(moved_event)


async def test_a_burst_of_200_streams_is_planned_a_handful_of_times(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.wait_for(lambda: operator.memo.stats.plans >= 1)  # the start-up plan
    start = operator.memo.stats.plans
    names = [f"b{i:03d}" for i in range(200)]
    # Sent as a client sends a burst: several calls in flight (kubectl apply -f DIR; one
    # after another they took 16 s here on a busy machine, a trickle planned 11 times:
    # each plan takes what came while the last one ran)
    began = time.monotonic()
    await asyncio.gather(*(cluster.create(stream(n, fps=2, body=2)) for n in names))
    sent_s = time.monotonic() - began
    await cluster.wait_for(lambda: all_placed(cluster, names), timeout=120)
    await cluster.wait_for(lambda: operator.memo.stats.plans > start)  # counted after writes
    plans = operator.memo.stats.plans - start
    assert 1 <= plans <= 10, (plans, f"sent in {sent_s:.1f} s")


class Replica:
    """An elector with its own clocks: a monotonic one the test steps, and a wall clock
    ``skew`` away from the others' (what renewTime is written with)."""

    def __init__(self, name: str, skew_s: float, duration_s: int = 10) -> None:
        from datetime import UTC, datetime, timedelta

        self.mono = 0.0
        self.elector = Elector(
            name,
            duration_s,
            monotonic=lambda: self.mono,
            wall=lambda: datetime.now(UTC) + timedelta(seconds=skew_s),
        )

    async def hold(self, c: Cluster, lease: tuple[str, str] = ("stagger-system", "probe")) -> bool:
        held: bool = await c.call(self.elector.try_hold, c.kube, *lease)
        return held


@pytest.mark.parametrize("skew_s", [-3600.0, 3600.0], ids=["behind", "ahead"])
async def test_clock_skew_never_makes_two_leaders(cluster: Cluster, skew_s: float) -> None:
    """client-go's rule: a holder is gone only once this replica has seen its record
    unchanged for a lease duration on its own clock. With renewTime compared against the
    local clock, a replica an hour ahead took a fresh lease at once."""
    a, b = Replica("a", 0.0), Replica("b", skew_s)
    assert await a.hold(cluster)
    for _ in range(5):  # a renews every 4 s; b tries as often, its clock an hour off
        a.mono += 4
        b.mono += 4
        assert await a.hold(cluster)
        assert not await b.hold(cluster)
    # a stops renewing (a crash): b takes over a whole duration after it last saw a change
    b.mono += 9
    assert not await b.hold(cluster)
    b.mono += 1
    assert await b.hold(cluster)
    (lease,) = await cluster.objects("Lease", "stagger-system")
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1
    a.mono += 100  # a comes back: b renews, so a stands by however long a was away
    b.mono += 4
    assert await b.hold(cluster)
    assert not await a.hold(cluster)


async def test_a_restarted_replica_waits_out_a_lease_it_has_not_seen_renewed(
    cluster: Cluster,
) -> None:
    """A fresh replica knows nothing of the holder's last renewal: it waits a whole duration
    from its first look, even when the holder's renewTime reads as long past."""
    old = Replica("old", -7200.0)  # its renewTime reads two hours ago to the others
    assert await old.hold(cluster)
    new = Replica("new", 0.0)
    assert not await new.hold(cluster)
    new.mono += 9.9
    assert not await new.hold(cluster)
    new.mono += 0.2
    assert await new.hold(cluster)


async def test_only_the_lease_holder_plans(cluster: Cluster) -> None:
    # Another replica holds the operator's Lease for 4 s and then stops renewing (a crash).
    lease = ("stagger-system", "stagger-operator")
    assert await Replica("other-replica", 0.0, duration_s=4).hold(cluster, lease)
    op = await start_operator(cluster, lease_duration_s=2, identity="replica-1")
    try:
        await cluster.create(stream("cam-1"))
        await asyncio.sleep(1.0)  # an absence cannot be waited for: give it time to go wrong
        assert op.memo.stats.plans == 0  # standing by while the other's lease is fresh
        await cluster.wait_for(lambda: all_placed(cluster, ["cam-1"]))  # took over, planned
        # Statuses are written during a reconcile, the count after it: wait, do not race.
        await cluster.wait_for(lambda: op.memo.stats.plans >= 1)
        held = {o["metadata"]["name"]: o for o in await cluster.objects("Lease", lease[0])}
        assert held[lease[1]]["spec"]["holderIdentity"] == "replica-1"
        assert held[lease[1]]["spec"]["leaseTransitions"] == 1
    finally:
        await stop_operator(op)
    # A clean shutdown gives the Lease back: a successor need not wait it out.
    held = {o["metadata"]["name"]: o for o in await cluster.objects("Lease", lease[0])}
    assert held[lease[1]]["spec"]["holderIdentity"] is None


async def test_the_operator_exports_its_own_metrics(cluster: Cluster) -> None:
    port = free_port()
    op = await start_operator(cluster, metrics_address=f"127.0.0.1:{port}")
    try:
        await cluster.create(stream("cam", fps=10, body=10.5))
        await cluster.create(stream("huge", memoryMiB=10**7))  # more memory than any GPU has

        async def scraped() -> dict[str, float] | None:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            values = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for f in text_string_to_metric_families(text)
                for sample in f.samples
            }
            placed = values.get(("stagger_operator_streams", (("state", "placed"),)))
            waiting = values.get(("stagger_operator_streams", (("state", "unschedulable"),)))
            return values if (placed, waiting) == (1, 1) else None

        values = await cluster.wait_for(scraped)
        assert values[("stagger_operator_reconciles_total", (("outcome", "ok"),))] >= 1
        assert values[("stagger_operator_reconcile_seconds_count", ())] >= 1
        assert values[("stagger_operator_writes_total", (("result", "written"),))] >= 3
        assert values[("stagger_operator_leader", ())] == 1
        cam = (("namespace", "default"), ("stream", "cam"))
        assert values[("stagger_stream_requested_fps", cam)] == 10
        assert values[("stagger_stream_deadline_seconds", cam)] == 0.1  # the frame period
    finally:
        await stop_operator(op)


async def test_a_join_switches_soon_and_a_re_timing_waits_for_the_kubelet(cluster: Cluster) -> None:
    """The kubelet may deliver a changed ConfigMap to a running pod a minute late. A camera
    that joins in a gap leaves every running sidecar's slot as it was, so its GPU's new
    table takes over after ``effective_after_s`` (1 s here); one that needs the GPU
    re-timed changes running sidecars' slots, so the switch waits
    ``contract_propagation_s`` (30 s here), judged from the contracts the operator wrote."""
    solo = node("solo", gpus=1)
    solo["metadata"]["labels"]["pool"] = "solo"
    await cluster.create(solo)
    op = await start_operator(cluster, effective_after_s=1, contract_propagation_s=30)

    async def switch_ahead_s(name: str) -> float:
        await cluster.create(
            stream(name, fps=4, body=36, latencyMs=60, nodeSelector={"pool": "solo"})
        )
        await cluster.wait_for(lambda: all_placed(cluster, [name]))
        (sched,) = await schedules(cluster)
        return (sched.spec.effective_at - datetime.now(UTC)).total_seconds()

    try:
        for i in range(4):  # into gaps, 62.5 ms apart
            assert await switch_ahead_s(f"cam-{i}") < 5
        assert await switch_ahead_s("cam-4") > 20  # no gap left: the GPU is re-timed
        (sched,) = await schedules(cluster)
        assert any(x.retimed_at is not None for x in sched.spec.slots)
    finally:
        await stop_operator(op)


async def test_cameras_applied_one_at_a_time_fill_a_gpu_by_re_timing_it(cluster: Cluster) -> None:
    """Six 36 ms bodies at 4 fps fit one GPU (0.864 of it). Applied one by one, the first
    four go into gaps (evenly, 62.5 ms apart) and leave none for the fifth: the operator
    re-times the GPU instead of taking another. What it re-timed is pinned for the
    interval (3 s here), so the sixth, which needs another re-timing, waits for it and is
    placed by the planner's wake-up. (The kubelet's ConfigMap propagation, which a
    re-timing waits out before it takes over, is 0.5 s here: kmock delivers at once.)"""
    solo = node("solo", gpus=1)
    solo["metadata"]["labels"]["pool"] = "solo"
    await cluster.create(solo)
    op = await start_operator(cluster, retime_min_interval_s=3, contract_propagation_s=0.5)
    names = [f"cam-{i}" for i in range(6)]

    def camera(name: str) -> dict[str, Any]:
        return stream(name, fps=4, body=36, latencyMs=60, nodeSelector={"pool": "solo"})

    try:
        for n in names[:5]:
            await cluster.create(camera(n))
            await cluster.wait_for(lambda n=n: all_placed(cluster, [n]))
        (sched,) = await schedules(cluster)
        assert len(sched.spec.slots) == 5 and sched.spec.generation == 5
        retimed = {x.stream for x in sched.spec.slots if x.retimed_at is not None}
        assert retimed, "the fifth found no gap: the GPU was re-timed"
        assert {x.retimed_at for x in sched.spec.slots} - {None} == {sched.spec.effective_at}

        async def retimed_events() -> set[str] | None:
            events = await cluster.objects("Event", "default")
            got = {e["involvedObject"]["name"] for e in events if e["reason"] == "Retimed"}
            return got if got >= retimed else None

        await cluster.wait_for(retimed_events)
        # Each re-timed sidecar gets the table's generation and switch instant in its
        # contract; one the re-timing left where it was keeps the contract it runs, no
        # later (a join's switch may still be to come).
        switch = sched.to_wire()["spec"]["effectiveAt"]
        for cm in await cluster.objects("ConfigMap", "default"):
            contract = json.loads(cm["data"]["slot.json"])
            if contract["stream"] in retimed:
                assert (contract["generation"], contract["effectiveAt"]) == (5, switch)
            elif contract["stream"] == names[4]:  # it joined with this table
                assert contract["generation"] == 5 and contract["effectiveAt"] <= switch
            else:
                assert contract["generation"] < 5 and contract["effectiveAt"] <= switch

        await cluster.create(camera(names[5]))

        async def waiting() -> str | None:
            status = (await statuses(cluster)).get(names[5], {})
            return status.get("message") if status.get("phase") == "Unschedulable" else None

        assert "re-timed too recently" in await cluster.wait_for(waiting)
        await cluster.wait_for(lambda: all_placed(cluster, names), timeout=20)
        (sched,) = await schedules(cluster)
        assert sorted(x.stream for x in sched.spec.slots) == names  # one GPU holds all six
    finally:
        await stop_operator(op)


async def test_an_mps_gpu_takes_no_more_model_servers_than_its_mps_server_takes(
    cluster: Cluster,
) -> None:
    """An MPS GPU's server takes a fixed number of CUDA clients (48 contexts, 2 a Triton
    server: 24 by default; 3 here). Light streams fit its time many times over, but the
    operator places only that many there; the next one is Unschedulable and says why."""
    mps = node("mps-a", gpus=1)
    mps["metadata"]["labels"] |= {"nvidia.com/gpu.sharing-strategy": "mps", "pool": "mps"}
    await cluster.create(mps)
    op = await start_operator(cluster, mps_servers_per_gpu=3)
    try:
        names = [f"light-{i}" for i in range(4)]
        for n in names:
            await cluster.create(stream(n, body=2.0, nodeSelector={"pool": "mps"}))

        async def settled() -> dict[str, dict[str, Any]] | None:
            st = await statuses(cluster)
            phases = sorted(st.get(n, {}).get("phase", "") for n in names)
            return st if phases == ["Placed"] * 3 + ["Unschedulable"] else None

        st = await cluster.wait_for(settled)
        (refused,) = [st[n] for n in names if st[n]["phase"] == "Unschedulable"]
        assert refused["message"].endswith(
            "; the 3 model servers an MPS GPU takes (mpsServersPerGpu) already run on 1 of them"
        )
        assert {st[n].get("node") for n in names if st[n]["phase"] == "Placed"} == {"mps-a"}
    finally:
        await stop_operator(op)
