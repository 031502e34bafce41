"""Pure reconcile: nodes to GPUs, schedules to a previous plan, plan to desired state."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from stagger.core.api import GpuNode, GpuSchedule, StreamPhase
from stagger.core.contract import SlotAssignment
from stagger.core.placement import plan
from stagger.core.slots import Slot, release_windows, switch_tick
from stagger_operator.desired import (
    contracts_in_place,
    desired_state,
    pinned_shards,
    plan_from_schedules,
    retiring_copies,
    written_contracts,
)
from stagger_operator.inventory import cluster_from_nodes
from stagger_operator.rollout import Rollout
from stagger_operator.settings import OperatorSettings
from stagger_operator.status import serving_status, stream_status
from tests.factories import cluster, stream

NOW = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)
TEMPLATE = {"spec": {"containers": [{"name": "triton", "image": "example/tritonserver:24.10"}]}}


def node(
    name: str,
    *,
    ready: bool = True,
    cordoned: bool = False,
    managed: bool = True,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    gfd = {
        "nvidia.com/gpu.product": "NVIDIA-H200",
        "nvidia.com/gpu.memory": "143771",
        "nvidia.com/gpu.count": "2",
    }
    if managed:
        gfd["stagger.dev/managed"] = "true"
    return {
        "metadata": {"name": name, "labels": {**gfd, **(labels or {})}},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "capacity": {"nvidia.com/gpu": "2"},
        },
    }


def test_only_ready_uncordoned_managed_gpu_nodes_count() -> None:
    nodes = [
        node("a"),
        node("b", ready=False),
        node("c", cordoned=True),
        node("d", managed=False),
        {
            "metadata": {"name": "cpu", "labels": {"stagger.dev/managed": "true"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        },
    ]
    c = cluster_from_nodes(nodes, OperatorSettings())
    assert [n.name for n in c.nodes] == ["a"]
    assert [(g.index, g.product, g.memory_mib) for g in c.nodes[0].gpus] == [
        (0, "NVIDIA-H200", 143771),
        (1, "NVIDIA-H200", 143771),
    ]
    everyone = cluster_from_nodes(nodes, OperatorSettings(managed_node_label=None))
    assert [n.name for n in everyone.nodes] == ["a", "d"]


def test_sharing_strategy_label_sets_the_mode() -> None:
    c = cluster_from_nodes(
        [node("m", labels={"nvidia.com/gpu.sharing-strategy": "mps"})], OperatorSettings()
    )
    assert c.nodes[0].gpus[0].sharing_mode == "mps"


def gpu_node(name: str, *, observed: datetime = NOW, nvml: str = "ok") -> GpuNode:
    gib = 1024
    device = {"product": "NVIDIA-H200", "memoryTotalMiB": 141 * gib, "memoryUsedMiB": gib}
    return GpuNode.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "GpuNode",
            "metadata": {"name": name},
            "spec": {"node": name},
            "status": {
                "nvml": nvml,
                "observedAt": observed,
                "gpus": [
                    {**device, "index": 0, "uuid": "GPU-0", "foreignMemoryMiB": 0},
                    # another tenant holds 40 GiB of GPU 1: it offers only the rest
                    {**device, "index": 1, "uuid": "GPU-1", "foreignMemoryMiB": 40 * gib},
                    {**device, "index": 2, "uuid": "GPU-2", "migEnabled": True},
                    {**device, "index": 3, "uuid": "GPU-3", "mpsActive": True},
                ],
            },
        }
    )


def test_the_agent_inventory_wins_over_labels_while_it_is_fresh() -> None:
    settings = OperatorSettings(gpu_node_stale_s=900)
    c = cluster_from_nodes([node("a")], settings, [gpu_node("a")], NOW)
    assert [(g.index, g.uuid, g.memory_mib, g.sharing_mode) for g in c.nodes[0].gpus] == [
        (0, "GPU-0", 141 * 1024, "time-slicing"),
        (1, "GPU-1", 101 * 1024, "time-slicing"),
        (3, "GPU-3", 141 * 1024, "mps"),  # MIG GPU 2 is not Stagger's to share
    ]
    for stale in (
        gpu_node("a", observed=NOW - timedelta(seconds=901)),
        gpu_node("a", nvml="unavailable"),
        gpu_node("other-node"),
    ):
        labelled = cluster_from_nodes([node("a")], settings, [stale], NOW)
        assert [(g.index, g.uuid) for g in labelled.nodes[0].gpus] == [(0, None), (1, None)]
    # The inventory never adds a node that is not Ready, cordoned or opted out.
    assert cluster_from_nodes([node("a", ready=False)], settings, [gpu_node("a")], NOW).nodes == []


def schedules_of(desired: Any) -> dict[str, GpuSchedule]:
    return {s["metadata"]["name"]: GpuSchedule.model_validate(s) for s in desired.schedules}


def with_uid(s: Any, uid: str) -> Any:
    s.metadata.uid = uid
    return s


def test_epoch_is_kept_and_generation_bumps_only_when_the_table_changes() -> None:
    c = cluster(("n", 1))
    a = with_uid(stream("a", 10, body=5, template=TEMPLATE), "ua")
    first = desired_state([a], plan([a], c), {}, OperatorSettings(), NOW)
    prev = schedules_of(first)
    later = NOW + timedelta(minutes=5)
    same = desired_state([a], plan([a], c), prev, OperatorSettings(), later)
    (sched,) = schedules_of(same).values()
    assert sched.spec.generation == 1 and sched.spec.epoch == NOW
    b = with_uid(stream("b", 10, body=5, template=TEMPLATE), "ub")
    restored = plan_from_schedules(prev.values(), 30_000)
    running = contracts_in_place(written_contracts(first.objects), restored)
    grown = desired_state(
        [a, b],
        plan([a, b], c, previous=restored),
        prev,
        OperatorSettings(),
        later,
        contracts=running,
    )
    (sched,) = schedules_of(grown).values()
    assert sched.spec.generation == 2
    assert sched.spec.epoch == NOW
    # b joins and a's slot stays: a's sidecar may read the new generation late
    assert sched.spec.effective_at == later + timedelta(seconds=5)


def test_a_stream_that_joins_beside_others_changes_none_of_their_contracts() -> None:
    """b joins a's GPU in a free gap and a's slot stays: a keeps the contract its sidecar
    runs, generation and switch, so its ConfigMap and status are not written again (every
    arrival rewrote every ConfigMap on its GPU: 18 writes per arrival at 1,000 streams).
    Windows come back once each sidecar runs its own contract: a's generation 1, b's 2."""
    c = cluster(("n", 1))
    a = with_uid(stream("a", 10, body=5, template=TEMPLATE), "ua")
    b = with_uid(stream("b", 10, body=5, template=TEMPLATE), "ub")
    settings = OperatorSettings()
    first = desired_state([a], plan([a], c), {}, settings, NOW)
    prev = schedules_of(first)
    restored = plan_from_schedules(prev.values(), 30_000)
    written = contracts_in_place(written_contracts(first.objects), restored)
    later = NOW + timedelta(minutes=5)
    grown = plan([a, b], c, previous=restored)
    assert not grown.offsets_changed
    joined = desired_state([a, b], grown, prev, settings, later, contracts=written)
    (sched,) = schedules_of(joined).values()
    assert sched.spec.generation == 2
    contracts = {x.stream: x for x in written_contracts(joined.objects)}
    assert contracts["a"] == written[("default", "a", 0)]
    assert (contracts["b"].generation, contracts["b"].effective_at) == (2, sched.spec.effective_at)
    skipped = desired_state(
        [a, b], grown, prev, settings, later, contracts=written, known=first.fingerprints
    )
    assert ("default", "a") in skipped.unchanged
    # a contract that differs in anything but its releases is written again
    stale = written[("default", "a", 0)].model_copy(update={"gpu_uuid": "GPU-before"})
    fixed = desired_state(
        [a, b], grown, prev, settings, later, contracts={("default", "a", 0): stale}
    )
    (a_now,) = [x for x in written_contracts(fixed.objects) if x.stream == "a"]
    assert a_now.gpu_uuid != "GPU-before" and a_now.generation == 2

    after = sched.spec.effective_at + timedelta(seconds=1)
    now_written = {contract_key(x): x for x in contracts.values()}
    windowed = desired_state(
        [a, b],
        plan_from_schedules([sched], 30_000),
        {sched.metadata.name: sched},
        settings,
        after,
        contracts=now_written,
        running={("default", "a", 0): 1, ("default", "b", 0): 2},
    )
    granted = {x.stream: (x.generation, x.early_ticks) for x in written_contracts(windowed.objects)}
    assert granted["a"][0] == 1 and granted["b"][0] == 2
    assert granted["a"][1] and granted["b"][1]


def windowed_gpu(n: int) -> tuple[Any, list[Any], dict[str, GpuSchedule], Any, datetime]:
    """n 10 fps streams with 5 ms bodies on one GPU, each sidecar running its contract and
    the table's release windows granted: the cluster, streams, schedules, written
    contracts and the time."""
    c = cluster(("n", 1))
    cams = [with_uid(stream(f"c{i}", 10, body=5, template=TEMPLATE), f"u{i}") for i in range(n)]
    settings = OperatorSettings()
    placed, first, prev, later = placed_a_minute_ago(cams, c, settings)
    running = {p.key: 1 for p in placed.shards}
    written = {contract_key(x): x for x in written_contracts(first.objects)}
    granted = desired_state(cams, placed, prev, settings, later, running=running, contracts=written)
    return c, cams, prev, {contract_key(x): x for x in written_contracts(granted.objects)}, later


def placed_a_minute_ago(
    cams: list[Any], c: Any, settings: OperatorSettings
) -> tuple[Any, Any, dict[str, GpuSchedule], datetime]:
    """``cams`` planned and written at NOW: the plan, what was written, its schedules, and
    a minute later (the table's switch passed)."""
    placed = plan(cams, c)
    first = desired_state(cams, placed, {}, settings, NOW)
    return placed, first, schedules_of(first), NOW + timedelta(minutes=1)


def test_a_stream_that_joins_a_windowed_gpu_narrows_only_its_neighbours_windows() -> None:
    """Windows are kept across a join where the new table leaves them room: the streams
    whose windows reached into the newcomer's slot get them narrowed to the new table's
    (a new contract, switching with the table), the others keep their contracts as their
    sidecars run them, and the newcomer gets none until its sidecar runs. Before, a join
    withdrew every window on the GPU, rewriting every ConfigMap there twice (withdrawn,
    granted again) and waiting for the kubelet wherever the feed was off."""
    c, cams, prev, written, later = windowed_gpu(4)
    assert all(x.early_ticks and x.late_ticks for x in written.values())
    newcomer = with_uid(stream("new", 10, body=5, template=TEMPLATE), "un")
    restored = plan_from_schedules(prev.values(), 30_000)
    grown = plan([*cams, newcomer], c, previous=restored)
    assert not grown.offsets_changed  # it joins a gap
    joined = desired_state(
        [*cams, newcomer], grown, prev, OperatorSettings(), later, contracts=written
    )
    (sched,) = schedules_of(joined).values()
    after = {contract_key(x): x for x in written_contracts(joined.objects)}
    table = release_windows(
        [Slot(p.key, p.body_ticks, p.period_ticks, p.offset_ticks) for p in grown.shards]
    )
    narrowed = {k for k, x in written.items() if table[k] != (x.early_ticks, x.late_ticks)}
    assert len(narrowed) == 2  # the slots either side of the newcomer's
    for key, was in written.items():
        now = after[key]
        if key in narrowed:
            assert (now.early_ticks, now.late_ticks) == table[key]
            assert (now.generation, now.effective_at) == (2, sched.spec.effective_at)
        else:
            assert now == was  # the same contract: its ConfigMap is not written again
    fresh = after[("default", "new", 0)]
    assert (fresh.early_ticks, fresh.late_ticks) == (None, None)
    # once every sidecar runs its contract, the newcomer's window comes, nothing else moves
    running = {k: x.generation for k, x in after.items()}
    settled = desired_state(
        [*cams, newcomer],
        grown,
        schedules_of(joined),
        OperatorSettings(),
        sched.spec.effective_at + timedelta(seconds=1),
        running=running,
        contracts=after,
    )
    final = {contract_key(x): x for x in written_contracts(settled.objects)}
    assert {k for k in final if final[k] != after[k]} == {("default", "new", 0)}
    assert (final[("default", "new", 0)].early_ticks, final[("default", "new", 0)].late_ticks) == (
        table[("default", "new", 0)]
    )


def test_granted_windows_stay_while_a_sidecar_restarts() -> None:
    """A sidecar that restarts reports no generation for a while; the table is the same,
    and the sidecar reads its contract as it starts, so every window stays as written
    (before, every contract on the GPU was rewritten without one, then granted again)."""
    c, cams, prev, written, later = windowed_gpu(3)
    restored = plan_from_schedules(prev.values(), 30_000)
    running = {k: x.generation for k, x in written.items()}
    running.pop(next(iter(running)))
    again = desired_state(
        cams,
        plan(cams, c, previous=restored),
        prev,
        OperatorSettings(),
        later + timedelta(seconds=30),
        running=running,
        contracts=written,
    )
    assert {contract_key(x): x for x in written_contracts(again.objects)} == written


def test_a_window_narrowed_again_before_its_switch_keeps_that_switch() -> None:
    """Two streams join one after the other within a switch's lead. A neighbour whose
    window the first join narrowed, and the second narrows again, keeps the first switch:
    its sidecar may only ever read the later contract (the kubelet delivers a ConfigMap's
    latest version), and must not keep its old, wider window past the first newcomer's
    first slot. Within both tables' windows, the narrower one is safe from that switch."""
    c, cams, prev, written, later = windowed_gpu(2)
    first_in = with_uid(stream("x", 10, body=5, template=TEMPLATE), "ux")
    restored = plan_from_schedules(prev.values(), 30_000)
    grown = plan([*cams, first_in], c, previous=restored)
    joined = desired_state(
        [*cams, first_in], grown, prev, OperatorSettings(), later, contracts=written
    )
    (sched,) = schedules_of(joined).values()
    after = {contract_key(x): x for x in written_contracts(joined.objects)}
    second_in = with_uid(stream("y", 10, body=5, template=TEMPLATE), "uy")
    again = plan([*cams, first_in, second_in], c, previous=plan_from_schedules([sched], 30_000))
    soon = later + timedelta(seconds=1)  # before the first switch
    twice = desired_state(
        [*cams, first_in, second_in],
        again,
        schedules_of(joined),
        OperatorSettings(),
        soon,
        contracts=after,
    )
    (sched2,) = schedules_of(twice).values()
    assert sched2.spec.effective_at > sched.spec.effective_at
    final = {contract_key(x): x for x in written_contracts(twice.objects)}
    again_narrowed = [
        key
        for key in written
        if (final[key].early_ticks, final[key].late_ticks)
        != (after[key].early_ticks, after[key].late_ticks)
    ]
    assert again_narrowed  # the second newcomer sits beside one of the first's neighbours
    for key in again_narrowed:
        was, now = after[key], final[key]
        assert (now.early_ticks or 0) <= (was.early_ticks or 0)
        assert (now.late_ticks or 0) <= (was.late_ticks or 0)
        assert was.effective_at > soon  # narrowed by the first join, its switch to come
        assert now.effective_at == was.effective_at


def test_a_table_that_changes_what_a_running_sidecar_releases_waits_for_the_kubelet() -> None:
    """The kubelet updates a mounted ConfigMap in a running pod within its sync period (1
    min by default) plus its cache's propagation: a sidecar may read a new contract a
    minute after it was written. Where it would then release otherwise than the new table
    expects, the switch lies ``contract_propagation_s`` ahead; where it would release the
    same (a shard joins beside it, keeping its slot), ``effective_after_s``."""
    c = cluster(("n", 1))
    a = with_uid(stream("a", 10, body=5, template=TEMPLATE), "ua")
    b = with_uid(stream("b", 10, body=5, template=TEMPLATE), "ub")
    settings = OperatorSettings(effective_after_s=5, contract_propagation_s=90)
    first = desired_state([a], plan([a], c), {}, settings, NOW)
    prev = schedules_of(first)
    restored = plan_from_schedules(prev.values(), 30_000)
    later = NOW + timedelta(minutes=5)
    grown = plan([a, b], c, previous=restored)
    (contract,) = written_contracts(first.objects)

    def switch_after(running: dict) -> timedelta:
        (sched,) = schedules_of(
            desired_state([a, b], grown, prev, settings, later, contracts=running)
        ).values()
        return sched.spec.effective_at - later

    assert switch_after({contract_key(contract): contract}) == timedelta(seconds=5)
    assert switch_after({}) == timedelta(seconds=90)  # what a's sidecar runs is unknown
    # a alone had half the free period each way; b's slot narrows that, so a's sidecar
    # must read its new window before b's body runs
    early, late = release_windows(
        [Slot("a", contract.body_ticks, contract.period_ticks, contract.offset_ticks)]
    )["a"]
    alone = contract.model_copy(update={"early_ticks": early, "late_ticks": late})
    assert switch_after({contract_key(alone): alone}) == timedelta(seconds=90)
    # a window clear of b's slot is kept as it is: a releases the same under both tables
    clear = contract.model_copy(update={"early_ticks": 300, "late_ticks": 300})
    assert switch_after({contract_key(clear): clear}) == timedelta(seconds=5)
    (moved,) = [p for p in grown.shards if p.stream == "a"]
    retimed = replace(
        grown,
        shards=(
            *(p for p in grown.shards if p.stream != "a"),
            replace(moved, offset_ticks=moved.offset_ticks + 30),
        ),
    )
    desired = desired_state(
        [a, b], retimed, prev, settings, later, contracts={contract_key(contract): contract}
    )
    (sched,) = schedules_of(desired).values()
    assert sched.spec.effective_at - later >= timedelta(seconds=90)
    # b joined with that table: its status says when its slots start, a's has slots already
    since = {s.stream: s.since for s in sched.spec.slots}
    assert since == {"a": NOW + timedelta(seconds=5), "b": sched.spec.effective_at}
    joined = desired.statuses[("default", "b")]
    starts = datetime.fromisoformat(joined["shards"][0]["slotsFrom"])
    assert abs(starts - sched.spec.effective_at) < timedelta(milliseconds=1)
    assert "slots start at" in joined["message"]
    stayed = desired.statuses[("default", "a")]
    assert "slotsFrom" not in stayed["shards"][0] and "slots start" not in stayed["message"]


def test_a_re_timing_of_sidecars_on_the_slot_feed_switches_soon() -> None:
    """A sidecar that holds a request on the slot feed gets a new contract as it is
    written: where every shard whose releases change is connected, the re-timed table
    switches ``effective_after_s`` ahead; one shard that is not keeps the long lead."""
    c = cluster(("n", 1))
    a = with_uid(stream("a", 10, body=5, template=TEMPLATE), "ua")
    b = with_uid(stream("b", 10, body=5, template=TEMPLATE), "ub")
    settings = OperatorSettings(effective_after_s=5, contract_propagation_s=90)
    first = desired_state([a, b], plan([a, b], c), {}, settings, NOW)
    prev = schedules_of(first)
    later = NOW + timedelta(minutes=5)
    restored = plan_from_schedules(prev.values(), 30_000)
    retimed = replace(
        restored,
        shards=tuple(replace(p, offset_ticks=p.offset_ticks + 30) for p in restored.shards),
    )
    written = {contract_key(c): c for c in written_contracts(first.objects)}

    def switch_after(connected: set[tuple[str, str, int]]) -> timedelta:
        desired = desired_state(
            [a, b], retimed, prev, settings, later, contracts=written, connected=connected
        )
        (sched,) = schedules_of(desired).values()
        return sched.spec.effective_at - later

    both = {("default", "a", 0), ("default", "b", 0)}
    assert switch_after(both) == timedelta(seconds=5)
    assert switch_after({("default", "a", 0)}) == timedelta(seconds=90)
    assert switch_after(set()) == timedelta(seconds=90)


def test_a_running_stream_says_its_slots_start_later_only_while_they_do() -> None:
    """A stream that joined by re-timing its GPU may have Ready pods before its first slot:
    its status says when slots start until then, and no longer after."""
    c = cluster(("n", 1))
    a = with_uid(stream("a", 10, body=5, template=TEMPLATE), "ua")
    at = NOW + timedelta(seconds=90)
    placed = stream_status(
        a, list(plan([a], c).shards), StreamPhase.PLACED, "", NOW, slots_from={0: at}
    )
    assert placed["message"].startswith("placed on 1 shard(s); slots start at")
    serving = Rollout(serving={("default", "a", "0")})
    for now, says in ((NOW + timedelta(seconds=30), True), (at, False)):
        status = serving_status(
            copy.deepcopy(placed), a, serving, {}, settings=OperatorSettings(), now=now
        )
        assert status["phase"] == "Running"
        assert ("slots start at" in status["message"]) is says, status["message"]


def contract_key(c: SlotAssignment) -> tuple[str, str, int]:
    return (c.namespace, c.stream, c.shard)


def test_a_re_timed_table_takes_over_where_no_old_body_runs_and_pins_what_it_moved() -> None:
    c = cluster(("t4", 1))
    cams = [with_uid(stream(f"cam{i}", 4, body=45, template=TEMPLATE), f"u{i}") for i in range(4)]
    settings = OperatorSettings()
    three = plan(cams[:3], c)
    prev = schedules_of(desired_state(cams[:3], three, {}, settings, NOW))
    later = NOW + timedelta(seconds=100.04)  # + 120 s falls inside a body of the old table
    four = plan(cams, c, previous=plan_from_schedules(prev.values(), 30_000))
    assert four.offsets_changed  # no gap for the fourth: the GPU was re-timed
    (sched,) = schedules_of(desired_state(cams, four, prev, settings, later)).values()
    (old,) = prev.values()
    table = [Slot(s.stream, s.body_ticks, s.period_ticks, s.offset_ticks) for s in old.spec.slots]
    ready = round((later + timedelta(seconds=120) - old.spec.epoch).total_seconds() * 30_000)
    switch = round((sched.spec.effective_at - sched.spec.epoch).total_seconds() * 30_000)
    assert switch_tick(table, ready) == switch > ready  # the end of the body running then
    assert sched.spec.generation == 2
    retimed = {s.stream: s.retimed_at for s in sched.spec.slots if s.retimed_at}
    assert set(retimed) == {k[1] for k in four.offsets_changed}
    assert set(retimed.values()) == {sched.spec.effective_at}
    # Those shards are pinned for the interval, and the operator knows when they free up.
    at = sched.spec.effective_at
    pinned, free_at = pinned_shards([sched], at + timedelta(seconds=59), 60)
    assert pinned == set(four.offsets_changed) and free_at == at + timedelta(seconds=60)
    assert pinned_shards([sched], at + timedelta(seconds=60), 60) == (set(), None)
    assert pinned_shards([sched], at, 0) == (set(), None)


def test_a_shard_whose_re_timing_is_to_come_keeps_its_switch_in_later_tables() -> None:
    """The kubelet delivers only a ConfigMap's latest version: a sidecar that has not read a
    coming re-timing when a later table is written may only ever read the later one. So a
    shard whose slot the later table leaves as the coming one has it keeps that one's switch
    instant in its contract, and switches with the others; the shards the coming re-timing
    moved stay pinned until then. A shard the later table re-times takes the later switch;
    one whose slot no table moves keeps the contract it runs, generation and switch."""
    c = cluster(("t4", 1))
    cams = [with_uid(stream(f"cam{i}", 4, body=45, template=TEMPLATE), f"u{i}") for i in range(4)]
    settings = OperatorSettings()
    first = desired_state(cams[:3], plan(cams[:3], c), {}, settings, NOW)
    prev = schedules_of(first)
    later = NOW + timedelta(minutes=5)
    four = plan(cams, c, previous=plan_from_schedules(prev.values(), 30_000))
    assert four.offsets_changed
    written = contracts_in_place(
        written_contracts(first.objects), plan_from_schedules(prev.values(), 30_000)
    )
    retimed = desired_state(cams, four, prev, settings, later, contracts=written)
    (sched,) = schedules_of(retimed).values()
    switch = sched.spec.effective_at
    assert switch - later >= timedelta(seconds=120)
    moved = set(four.offsets_changed)
    pinned, free_at = pinned_shards([sched], later, 0)  # pinned until the switch, at least
    assert pinned == moved and free_at == switch

    just_before = switch - timedelta(seconds=2)
    restored = plan_from_schedules([sched], 30_000)
    running = contracts_in_place(written_contracts(retimed.objects), restored)
    three = plan(cams[:3], c, previous=restored, pinned=pinned)  # cam3 leaves
    assert three.offsets_changed == ()
    (kept,) = [p for p in three.shards if p.stream == "cam0"]
    # and, as an unpinned shard could be, cam0 re-timed (a millisecond on)
    nudged = replace(
        three,
        shards=(
            *(p for p in three.shards if p.stream != "cam0"),
            replace(kept, offset_ticks=kept.offset_ticks + 30),
        ),
    )
    for table, retimes in ((three, False), (nudged, True)):
        desired = desired_state(
            cams[:3],
            table,
            {sched.metadata.name: sched},
            settings,
            just_before,
            contracts=running,
        )
        (after,) = schedules_of(desired).values()
        assert after.spec.generation == sched.spec.generation + 1
        assert after.spec.effective_at > switch
        contracts = {c.stream: c for c in written_contracts(desired.objects)}
        for name in ("cam1", "cam2"):
            assert contracts[name].effective_at == switch, name
        if retimes:
            assert contracts["cam0"].effective_at == after.spec.effective_at
            assert contracts["cam0"].generation == after.spec.generation
            assert after.spec.effective_at - just_before >= timedelta(seconds=120)
        else:
            assert contracts["cam0"] == running[("default", "cam0", 0)]
    # once the switch has passed, a changed table whose slots stay changes no contract: each
    # keeps what its sidecar runs (cam3 left; nothing to rewrite but the GpuSchedule)
    past = switch + timedelta(seconds=1)
    desired = desired_state(
        cams[:3], three, {sched.metadata.name: sched}, settings, past, contracts=running
    )
    (after,) = schedules_of(desired).values()
    assert after.spec.generation == sched.spec.generation + 1
    assert {(c.namespace, c.stream, c.shard): c for c in written_contracts(desired.objects)} == {
        k: c for k, c in running.items() if k[1] != "cam3"
    }


def test_restart_reproduces_the_same_plan_from_schedules() -> None:
    c = cluster(("n", 2))
    streams = [
        with_uid(stream(f"s{i}", [5, 10, 15][i % 3], body=8, template=TEMPLATE), f"u{i}")
        for i in range(12)
    ]
    before = plan(streams, c)
    desired = desired_state(streams, before, {}, OperatorSettings(), NOW)
    restored = plan_from_schedules(schedules_of(desired).values(), 30_000)
    after = plan(streams, c, previous=restored)
    assert after.moves == () and after.offsets_changed == ()
    assert {s.key: (s.node, s.gpu, s.offset_ticks) for s in after.shards} == {
        s.key: (s.node, s.gpu, s.offset_ticks) for s in before.shards
    }


def test_statuses_say_placed_unschedulable_or_what_is_wrong_with_the_template() -> None:
    c = cluster(("n", 1))
    ok = with_uid(stream("ok", 10, body=5, template=TEMPLATE), "u1")
    no_template = with_uid(stream("bare", 10, body=5), "u2")
    too_big = with_uid(stream("huge", 10, body=5, template=TEMPLATE, memoryMiB=99999), "u3")
    desired = desired_state(
        [ok, no_template, too_big], plan([ok, no_template, too_big], c), {}, OperatorSettings(), NOW
    )
    st = desired.statuses
    assert st[("default", "ok")]["phase"] == "Placed"
    assert st[("default", "ok")]["conditions"][0]["status"] == "True"
    assert st[("default", "bare")]["phase"] == "Pending"
    assert "spec.template is required" in st[("default", "bare")]["message"]
    assert st[("default", "bare")]["conditions"][0]["reason"] == "InvalidTemplate"
    assert st[("default", "huge")]["phase"] == "Unschedulable"
    assert "needs 99999 MiB" in st[("default", "huge")]["message"]
    owners = {o["metadata"]["ownerReferences"][0]["uid"] for o in desired.objects}
    assert owners == {"u1"}


def test_controller_only_cleans_up_in_the_namespaces_it_watches() -> None:
    from stagger_operator.controller import Controller

    class NoKube:  # the namespace rule needs no API
        pass

    scoped = Controller(NoKube(), OperatorSettings(namespaces=["retail"]))  # type: ignore[arg-type]
    assert scoped._watched("retail") and not scoped._watched("logistics")
    everywhere = Controller(NoKube(), OperatorSettings())  # type: ignore[arg-type]
    assert everywhere._watched("logistics")


def test_streams_whose_inputs_did_not_change_are_left_out_until_something_does() -> None:
    c = cluster(("n", 2))
    a = with_uid(stream("a", 10, body=5, template=TEMPLATE), "ua")
    b = with_uid(stream("b", 10, body=5, template=TEMPLATE), "ub")
    first = desired_state([a, b], plan([a, b], c), {}, OperatorSettings(), NOW)
    prev = schedules_of(first)
    again = desired_state(
        [a, b],
        plan([a, b], c, previous=plan_from_schedules(prev.values(), 30_000)),
        prev,
        OperatorSettings(),
        NOW,
        known=first.fingerprints,
    )
    assert again.unchanged == {("default", "a"), ("default", "b")}
    assert not again.objects and not again.statuses
    # b changes; and what the controller saw of a's pods changes: both are rebuilt.
    b2 = with_uid(stream("b", 12, body=5, template=TEMPLATE), "ub")
    changed = desired_state(
        [a, b2],
        plan([a, b2], c, previous=plan_from_schedules(prev.values(), 30_000)),
        prev,
        OperatorSettings(),
        NOW,
        known=first.fingerprints,
        context={("default", "a"): (("ready", "a-pod"),)},
    )
    assert not changed.unchanged and set(changed.statuses) == {("default", "a"), ("default", "b")}


def test_old_copies_are_the_slot_configmaps_whose_gpu_the_schedules_moved_on_from() -> None:
    c = cluster(("n", 2))
    cams = [with_uid(stream(f"cam{i}", 4, body=45, template=TEMPLATE), f"u{i}") for i in range(2)]
    before = plan(cams, c)
    objects = desired_state(cams, before, {}, OperatorSettings(), NOW).objects
    assert (
        retiring_copies(written_contracts(objects), before, cams) == []
    )  # every copy is where it belongs
    moved = next(s for s in before.shards if s.stream == "cam0")
    elsewhere = replace(moved, gpu=1 - moved.gpu)
    now = replace(before, shards=(*(s for s in before.shards if s != moved), elsewhere))
    (old,) = retiring_copies(written_contracts(objects), now, cams)
    assert (old.stream, old.node, old.gpu, old.offset_ticks, old.body_ticks) == (
        "cam0",
        moved.node,
        moved.gpu,
        moved.offset_ticks,
        moved.body_ticks,
    )


def test_release_windows_are_granted_once_every_sidecar_runs_the_gpu_s_table() -> None:
    """Windows are computed from the table, so they are written only where no body on the
    GPU can follow another: the table unchanged, its switch passed, every shard's sidecar
    reporting its generation, no old copy of a moved shard on the GPU."""
    import json

    from stagger.core.contract import CONTRACT_FILE

    c = cluster(("t4", 1))
    cams = [with_uid(stream(f"cam{i}", 4, body=45, template=TEMPLATE), f"u{i}") for i in range(3)]
    s = OperatorSettings()
    placed, first, prev, later = placed_a_minute_ago(cams, c, s)
    all_running = {p.key: 1 for p in placed.shards}

    def windows(desired: Any) -> dict[str, tuple[int | None, int | None]]:
        out = {}
        for obj in desired.objects:
            if obj["kind"] == "ConfigMap":
                doc = json.loads(obj["data"][CONTRACT_FILE])
                out[doc["stream"]] = (doc.get("earlyTicks"), doc.get("lateTicks"))
        return out

    assert set(windows(first).values()) == {(None, None)}  # a new table: none yet
    granted = desired_state(cams, placed, prev, s, later, running=all_running)
    table = [Slot(p.stream, p.body_ticks, p.period_ticks, p.offset_ticks) for p in placed.shards]
    assert windows(granted) == release_windows(table)
    assert all(early > 0 and late > 0 for early, late in windows(granted).values())
    one_behind = all_running | {placed.shards[0].key: 0}
    for desired in (
        desired_state(cams, placed, prev, s, later, running=one_behind),
        desired_state(cams, placed, prev, s, later, running={}),
        desired_state(
            cams,
            placed,
            prev,
            s,
            later,
            running=all_running,
            retiring=[replace(placed.shards[0], stream="moved-away")],
        ),
        desired_state(cams, placed, prev, replace_settings(s), later, running=all_running),
    ):
        assert set(windows(desired).values()) == {(None, None)}


def replace_settings(s: OperatorSettings) -> OperatorSettings:
    return s.model_copy(update={"release_windows": False})
