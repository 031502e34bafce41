"""Faults of the API server, injected into kmock (``tests.emulator.Fault``): the operator's
calls retry what is worth retrying, within bounds, and the end state of a run under faults
equals the fault-free one (every stream placed once, one workload per shard, no two shards
on one slot)."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from stagger.core.api import GpuSchedule
from stagger.core.slots import Slot, overlaps
from stagger_operator.kube import Kube
from tests.emulator import Fault, stream
from tests.integration.conftest import (
    Cluster,
    Operator,
    emulated_cluster,
    operator_process,
    start_operator,
    stop_operator,
)
from tests.integration.test_operator import all_placed, by_shard


async def test_retry_after_of_a_throttling_api_server_is_honoured(cluster: Cluster) -> None:
    cluster.emulator.faults = [
        Fault("GET", "/inferencestreams", 429, {"Retry-After": "1"}, times=2)
    ]
    slept: list[float] = []
    kube = Kube(cluster.client_as("operator"), sleep=lambda s: (slept.append(s), time.sleep(s))[1])
    assert await cluster.call(kube.list_objects, "InferenceStream") == []
    assert slept == [1.0, 1.0]


async def test_server_errors_are_retried_a_bounded_number_of_times(cluster: Cluster) -> None:
    cluster.emulator.faults = [Fault("GET", "/inferencestreams", 503)]
    slept: list[float] = []
    kube = Kube(cluster.client_as("operator"), retries=3, sleep=slept.append)
    with pytest.raises(ApiException) as raised:
        await cluster.call(kube.list_objects, "InferenceStream")
    assert raised.value.status == 503
    assert len(slept) == 3 and all(0 < s <= 5.0 for s in slept)
    assert cluster.emulator.faults[0].hits == 4


async def test_what_is_the_callers_to_handle_is_not_retried(cluster: Cluster) -> None:
    cluster.emulator.faults = [Fault("PATCH", "/configmaps/", 422, times=1)]
    slept: list[float] = []
    kube = Kube(cluster.client_as("operator"), sleep=slept.append)
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
    except BaseException:
        await stop_operator(op)
        raise
    return await settled(cluster, op, names)


async def settled(cluster: Cluster, op: Operator, names: list[str]) -> tuple[object, ...]:
    """Let ``op`` settle (every stream placed, one more plan on top), stop it, check that no
    two shards share a slot anywhere, and fingerprint the end state."""
    try:
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
HOUR = timedelta(hours=1)


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


async def killed_after(names: list[str], writes: int | None, directory: Path) -> tuple[object, ...]:
    """Streams applied, then an operator process SIGKILLed right after its ``writes``-th
    write (what it sends in between is refused, as if it had died on the spot), then a
    fresh one started: the end state. ``None``: not killed."""
    async with emulated_cluster() as cluster:
        for n in names:
            await cluster.create(stream(n))
        if writes is not None:
            cluster.emulator.writes_left["first"] = writes
            first = operator_process(
                cluster, directory / f"first-{writes}", "first", STAGGER_LEASE_DURATION_S="1"
            )
            try:
                await cluster.wait_for(lambda: "first" in cluster.emulator.dead, timeout=60)
            finally:
                first.kill()
                await asyncio.to_thread(first.wait)
        cluster.emulator.writes_left["second"] = 10**9
        second = await start_operator(cluster, token="second", lease_duration_s=1)
        end = await settled(cluster, second, names)
        KILLED_WRITES["calm"] = 10**9 - cluster.emulator.writes_left["second"]
        return end


KILLED_WRITES: dict[str, int] = {}


async def test_an_operator_killed_between_writes_ends_where_a_calm_run_does(
    tmp_path: Path,
) -> None:
    """Killed after its first write, and at seeded random points of its work (between a
    Deployment and its ConfigMap, a GpuSchedule and a status...), then restarted: every
    stream placed once, one workload per shard, the same slots; nothing lost or doubled."""
    names = NAMES[:5]
    calm = await killed_after(names, None, tmp_path)
    total = KILLED_WRITES["calm"]
    assert total >= 10, total  # the calm run's writes, among which the kills fall
    points = [1, *random.Random(23).sample(range(2, total), 2)]
    for k in points:
        assert await killed_after(names, k, tmp_path) == calm, f"killed after write {k} of {total}"


async def test_replicas_racing_for_the_lease_never_plan_at_once(tmp_path: Path) -> None:
    """Replicas as processes: two from the start, their nodes' clocks an hour apart either
    way; streams applied one at a time; the leader SIGKILLed twice and a fresh replica
    started each time (30 min ahead, then on time). Every Deployment, ConfigMap and
    GpuSchedule write comes from the Lease's holder at that moment, a successor takes over
    after each kill, and the streams all end placed."""
    names = NAMES[:6]
    skews = {"a": HOUR, "b": -HOUR, "c": HOUR / 2, "d": timedelta(0)}
    lease = {"STAGGER_LEASE_DURATION_S": "1"}
    async with emulated_cluster() as cluster:
        emulator = cluster.emulator
        emulator.planner_writes = []
        replicas = {
            t: operator_process(cluster, tmp_path / t, t, skew=skews[t], **lease)
            for t in ("a", "b")
        }
        try:
            for round_, fresh in enumerate(("c", "d", None)):
                for n in names[2 * round_ : 2 * round_ + 2]:
                    await cluster.create(stream(n))
                    await asyncio.sleep(0.2)
                await cluster.wait_for(
                    lambda r=round_: all_placed(cluster, names[: 2 * r + 2]), timeout=60
                )
                if fresh is None:
                    break
                leader = emulator.lease_holder()
                assert leader in replicas, (leader, list(replicas))
                # the leader stamps renewTime on its own (skewed) clock
                renewed = datetime.fromisoformat(emulator.lease_spec()["renewTime"])
                assert abs(renewed - (datetime.now(UTC) + skews[leader])) < timedelta(minutes=1)
                killed = replicas.pop(leader)
                killed.kill()  # SIGKILL: no clean shutdown, the Lease is not given back
                await asyncio.to_thread(killed.wait)
                replicas[fresh] = operator_process(
                    cluster, tmp_path / fresh, fresh, skew=skews[fresh], **lease
                )
        finally:
            for process in replicas.values():
                process.terminate()
            for process in replicas.values():  # off the loop: the emulator serves them
                await asyncio.to_thread(process.wait, 30)
    wrong = [(token, holder) for token, holder in emulator.planner_writes if token != holder]
    assert wrong == [], wrong
    planners = {token for token, _ in emulator.planner_writes}
    assert len(planners) >= 3, planners  # the first leader and two successors planned
