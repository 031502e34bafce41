"""Faults of the API server, injected into kmock (``tests.emulator.Fault``): the operator's
calls retry what is worth retrying, within bounds, and the end state of a run under faults
equals the fault-free one (every stream placed once, one workload per shard, no two shards
on one slot)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from stagger.core.api import GpuSchedule
from stagger.core.slots import Slot, overlaps
from stagger_operator.kube import Kube
from tests.emulator import Fault, stream
from tests.integration.conftest import Cluster, emulated_cluster, start_operator, stop_operator
from tests.integration.test_operator import all_placed, by_shard


async def test_retry_after_of_a_throttling_api_server_is_honoured(cluster: Cluster) -> None:
    cluster.emulator.faults = [
        Fault("GET", "/inferencestreams", 429, {"Retry-After": "1"}, times=2)
    ]
    slept: list[float] = []
    kube = Kube(cluster.kube.api, sleep=lambda s: (slept.append(s), time.sleep(s))[1])
    assert await cluster.call(kube.list_objects, "InferenceStream") == []
    assert slept == [1.0, 1.0]


async def test_server_errors_are_retried_a_bounded_number_of_times(cluster: Cluster) -> None:
    cluster.emulator.faults = [Fault("GET", "/inferencestreams", 503)]
    slept: list[float] = []
    kube = Kube(cluster.kube.api, retries=3, sleep=slept.append)
    with pytest.raises(ApiException) as raised:
        await cluster.call(kube.list_objects, "InferenceStream")
    assert raised.value.status == 503
    assert len(slept) == 3 and all(0 < s <= 5.0 for s in slept)
    assert cluster.emulator.faults[0].hits == 4


async def test_what_is_the_callers_to_handle_is_not_retried(cluster: Cluster) -> None:
    cluster.emulator.faults = [Fault("PATCH", "/configmaps/", 422, times=1)]
    slept: list[float] = []
    kube = Kube(cluster.kube.api, sleep=slept.append)
    meta = {"name": "a", "namespace": "default"}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
    await cluster.call(kube.apply, cm, None)
    (live,) = await cluster.call(kube.list_objects, "ConfigMap", "default")
    with pytest.raises(ApiException) as raised:
        await cluster.call(kube.apply, {**cm, "data": {"k": "v"}}, live)
    assert raised.value.status == 422 and slept == []


def fingerprint(
    streams: list[dict[str, Any]], deployments: list[dict[str, Any]], scheds: list[GpuSchedule]
) -> tuple[object, ...]:
    """What a run ends with, up to where the plan put things: every stream's phase, one
    workload per shard, the number of slots."""
    phases = sorted((s["metadata"]["name"], (s.get("status") or {}).get("phase")) for s in streams)
    shards = sorted(by_shard(deployments))
    slots = sum(len(s.spec.slots) for s in scheds)
    return phases, shards, slots, len(deployments)


async def run(cluster: Cluster, names: list[str], faults: list[Fault]) -> tuple[object, ...]:
    cluster.emulator.faults = faults
    op = await start_operator(cluster)
    try:
        for n in names:
            await cluster.create(stream(n))
        await cluster.wait_for(lambda: all_placed(cluster, names), timeout=60)
        cluster.emulator.faults = []  # the storm ends; the next reconciles settle
        await cluster.wait_for(lambda: all_placed(cluster, names), timeout=30)
        op.memo.wake.set()
        await cluster.wait_for(lambda: op.memo.stats.plans >= 2, timeout=30)
    finally:
        await stop_operator(op)
    scheds = [GpuSchedule.model_validate(o) for o in await cluster.objects("GpuSchedule")]
    for s in scheds:  # no two shards on one slot, anywhere
        table = [
            Slot((x.stream, x.shard), x.body_ticks, x.period_ticks, x.offset_ticks)
            for x in s.spec.slots
        ]
        assert overlaps(table) == [], s.metadata.name
    deployments = await cluster.objects("Deployment", "default")
    return fingerprint(await cluster.objects("InferenceStream", "default"), deployments, scheds)


NAMES = [f"cam-{i}" for i in range(8)]


async def test_a_storm_of_api_errors_ends_where_a_calm_run_does() -> None:
    async with emulated_cluster() as calm_cluster:
        calm = await run(calm_cluster, NAMES, [])
    storm = [
        Fault("POST", "/deployments", 500, rate=0.3),
        Fault("PATCH", "/configmaps/", 503, rate=0.3),
        Fault("PATCH", "/gpuschedules/", 429, {"Retry-After": "1"}, rate=0.3),
        Fault("GET", "/inferencestreams", 500, rate=0.2),
        Fault("PATCH", "/status", 500, rate=0.3),
    ]
    async with emulated_cluster() as stormy_cluster:
        stormy = await run(stormy_cluster, NAMES, storm)
    assert sum(f.hits for f in storm) >= 5, [(f.method, f.path, f.hits) for f in storm]
    assert stormy == calm
