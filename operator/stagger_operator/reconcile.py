"""Desired state, computed purely from what the cluster holds and what the planner decided.

The handlers read the cluster (through :mod:`stagger_operator.kube`), call these functions
and write back what they return; nothing here reads the clock or the API.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stagger.core.api import (
    GpuNode,
    GpuSchedule,
    InferenceStream,
    ModelProfile,
    ScheduledSlot,
    SharingMode,
    StreamPhase,
)
from stagger.core.calibration import CalibrationResult, model_profile
from stagger.core.cluster import Cluster
from stagger.core.contract import CONTRACT_FILE, SlotAssignment, effective_at_of
from stagger.core.placement import GpuUsage, Plan, ShardPlacement
from stagger.core.slots import Slot, release_windows, switch_tick
from stagger.core.timebase import TICK_HZ, ticks_to_ms
from stagger_operator import manifests
from stagger_operator.observe import Observation
from stagger_operator.rollout import Rollout
from stagger_operator.settings import OperatorSettings

Obj = dict[str, Any]

GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_MEMORY = "nvidia.com/gpu.memory"
GPU_COUNT = "nvidia.com/gpu.count"
GPU_SHARING = "nvidia.com/gpu.sharing-strategy"
GPU_RESOURCE = "nvidia.com/gpu"


def _ready(node: Obj) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def cluster_from_nodes(
    nodes: Iterable[Obj],
    settings: OperatorSettings,
    gpu_nodes: Iterable[GpuNode] = (),
    now: datetime | None = None,
) -> Cluster:
    """GPU nodes that may take shards: Ready, not cordoned, opted in. Their GPUs come from the
    node agent's GpuNode when it has a fresh one (every GPU by UUID, each sized by the
    memory that processes Stagger does not manage leave free; MIG-enabled GPUs left out),
    else from GPU feature discovery labels (product, memory per GPU, count)."""
    inventories = {g.spec.node: g for g in gpu_nodes}
    out = []
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        meta = node["metadata"]
        labels: dict[str, str] = meta.get("labels") or {}
        if settings.managed_node_label and labels.get(settings.managed_node_label) != "true":
            continue
        if node.get("spec", {}).get("unschedulable") or not _ready(node):
            continue
        sharing = labels.get(GPU_SHARING, "time-slicing")
        mode = sharing if sharing in {m.value for m in SharingMode} else "time-slicing"
        gpus = _agent_gpus(inventories.get(meta["name"]), mode, settings, now)
        if gpus is None:
            gpus = _labelled_gpus(node, labels, mode)
        if gpus:
            out.append({"name": meta["name"], "labels": labels, "gpus": gpus})
    return Cluster.model_validate({"nodes": out})


def _agent_gpus(
    inventory: GpuNode | None, mode: str, settings: OperatorSettings, now: datetime | None
) -> list[Obj] | None:
    """The GPUs a fresh GpuNode lists; None: no usable inventory (fall back to labels)."""
    status = inventory.status if inventory else None
    if status is None or status.nvml != "ok" or status.observed_at is None:
        return None
    if now is not None and (now - status.observed_at).total_seconds() > settings.gpu_node_stale_s:
        return None
    gpus = []
    for g in status.gpus:
        free = g.memory_total_mib - (g.foreign_memory_mib or 0)
        if g.mig_enabled or free <= 0:
            continue
        gpus.append(
            {
                "index": g.index,
                "uuid": g.uuid,
                "product": g.product,
                "memoryMiB": free,
                "sharingMode": "mps" if g.mps_active else mode,
            }
        )
    return gpus


def _labelled_gpus(node: Obj, labels: dict[str, str], mode: str) -> list[Obj]:
    product, memory = labels.get(GPU_PRODUCT), labels.get(GPU_MEMORY)
    capacity = node.get("status", {}).get("capacity", {}).get(GPU_RESOURCE)
    count = labels.get(GPU_COUNT) or capacity
    if not product or not memory or not count:
        return []
    try:
        n_gpus, memory_mib = int(count), int(memory)
    except ValueError:
        return []
    return [
        {"index": i, "product": product, "memoryMiB": memory_mib, "sharingMode": mode}
        for i in range(n_gpus)
    ]


def _recorded(
    slot: ScheduledSlot | SlotAssignment,
    where: tuple[str, int, str | None, str],
    memory_mib: int,
    tick_hz: int,
) -> ShardPlacement:
    """A shard as the cluster records it (a GpuSchedule's slot, or a slot contract): what
    placing it needs again, not how it was planned (fps, latency). ``where``: node, GPU
    index, UUID and product."""
    node, gpu, uuid, product = where
    return ShardPlacement(
        namespace=slot.namespace,
        stream=slot.stream,
        shard=slot.shard,
        shards=slot.shards,
        node=node,
        gpu=gpu,
        gpu_uuid=uuid,
        product=product,
        fps=0.0,
        frame_period_ticks=slot.period_ticks,
        period_ticks=slot.period_ticks,
        offset_ticks=slot.offset_ticks,
        body_ticks=slot.body_ticks,
        body_ms=ticks_to_ms(slot.body_ticks, tick_hz),
        latency_ms=0.0,
        memory_mib=memory_mib,
        priority=0,
    )


def plan_from_schedules(schedules: Iterable[GpuSchedule], tick_hz: int) -> Plan:
    """The plan that the GpuSchedules in the cluster record: what a restarted operator
    hands the planner as ``previous``, so that nothing moves because it restarted."""
    shards = []
    for sched in schedules:
        spec = sched.spec
        for slot in spec.slots:
            where = (spec.node, spec.gpu_index, spec.gpu_uuid, spec.gpu_product or "")
            shards.append(_recorded(slot, where, slot.memory_mib, tick_hz))
    return Plan(tuple(shards), (), (), tick_hz=tick_hz)


@dataclass
class Desired:
    """Everything the operator should find in the cluster after this reconcile."""

    objects: list[Obj] = field(default_factory=list)  # namespaced, owned by their stream
    schedules: list[Obj] = field(default_factory=list)  # cluster-scoped GpuSchedules
    statuses: dict[tuple[str, str], Obj] = field(default_factory=dict)
    fingerprints: dict[tuple[str, str], str] = field(default_factory=dict)
    unchanged: set[tuple[str, str]] = field(default_factory=set)
    """Streams left out because their inputs are what they were (see desired_state)."""
    frozen: set[tuple[str, str]] = field(default_factory=set)
    """(namespace, stream label) whose objects stay as they are: the spec cannot be
    served now (a bad template), so what runs keeps running."""


def _table(shards: Sequence[ShardPlacement]) -> list[tuple[object, ...]]:
    return sorted(
        (x.namespace, x.stream, x.shard, x.shards, x.period_ticks, x.offset_ticks, x.body_ticks)
        for x in shards
    )


def desired_state(
    streams: Sequence[InferenceStream],
    plan: Plan,
    previous: Mapping[str, GpuSchedule],
    settings: OperatorSettings,
    now: datetime,
    *,
    known: Mapping[tuple[str, str], str] | None = None,
    context: Mapping[tuple[str, str], Hashable] | None = None,
    running: Mapping[tuple[str, str, int], int] | None = None,
    retiring: Iterable[ShardPlacement] = (),
) -> Desired:
    """Objects, GpuSchedules and stream statuses for ``plan``. A GPU keeps its epoch; a
    changed slot table gets the next generation, effective ``effective_after_s`` from now.

    Every stream gets a fingerprint of what its objects and status are made from: its
    shards' slots and contracts, why it is unplaced, and ``context``: what the caller saw
    of it (its spec and status as listed, its objects, Ready pods and measurements). A
    stream whose fingerprint is in ``known`` is left out (``unchanged``): its objects and
    status were written from the same inputs before.

    Release windows (``settings.release_windows``) are granted on a GPU whose table has not
    changed, whose switch to it has passed, whose every shard's sidecar reports running its
    generation (``running``: generation per shard, from the sidecars' metrics) and where no
    old copy of a moved shard still runs (``retiring``): windows are computed from the
    table, so every body on the GPU must follow it. A changed table's contracts carry none
    until that holds again; they take effect at its switch instant like any contract."""
    desired = Desired()
    running = running or {}
    haunted = {(r.node, r.gpu) for r in retiring}
    known, context = known or {}, context or {}
    by_gpu: dict[tuple[str, int], list[ShardPlacement]] = defaultdict(list)
    for p in plan.shards:
        by_gpu[(p.node, p.gpu)].append(p)
    modes = {(g.node, g.gpu): g.sharing_mode for g in plan.gpus}
    # Contracts are built only for the streams that are rebuilt; fingerprints use the slots.
    slots: dict[
        tuple[str, str, int],
        tuple[ShardPlacement, datetime, int, datetime, tuple[int, int] | None],
    ] = {}

    def contract(key: tuple[str, str, int]) -> SlotAssignment:
        p, epoch, generation, effective_at, window = slots[key]
        return SlotAssignment.for_shard(
            p,
            tick_hz=settings.tick_hz,
            epoch=epoch,
            generation=generation,
            effective_at=effective_at,
            window=window,
        )

    for (node, gpu), shards in sorted(by_gpu.items()):
        old = previous.get(manifests.schedule_name(node, gpu))
        epoch = old.spec.epoch if old else now.replace(microsecond=0)
        before = _table(plan_from_schedules([old], settings.tick_hz).shards) if old else None
        if old is not None and before == _table(shards):
            generation, effective_at = old.spec.generation, old.spec.effective_at or epoch
        else:
            generation = old.spec.generation + 1 if old else 1
            effective_at = switch_instant(old, epoch, now, settings)
        retimed_at = retimings(old, shards, effective_at)
        desired.schedules.append(
            manifests.gpu_schedule(
                node,
                gpu,
                shards,
                epoch=epoch,
                generation=generation,
                effective_at=effective_at,
                tick_hz=settings.tick_hz,
                sharing_mode=modes.get((node, gpu), "time-slicing"),
                retimed_at=retimed_at,
            )
        )
        windows: Mapping[Hashable, tuple[int, int]] = {}
        if (
            settings.release_windows
            and old is not None
            and generation == old.spec.generation
            and now >= effective_at
            and (node, gpu) not in haunted
            and all(running.get(p.key) == generation for p in shards)
        ):
            windows = release_windows(
                [Slot(p.key, p.body_ticks, p.period_ticks, p.offset_ticks) for p in shards]
            )
        for p in shards:
            slots[p.key] = (p, epoch, generation, effective_at, windows.get(p.key))
    unplaced = {(u.namespace, u.stream): u.reason for u in plan.unplaced}
    by_stream: dict[tuple[str, str], list[ShardPlacement]] = defaultdict(list)
    for p in plan.shards:  # once: a lookup per stream would be quadratic in the fleet
        by_stream[(p.namespace, p.stream)].append(p)
    for stream in streams:
        key = (stream.namespace, stream.name)
        shards = by_stream.get(key, [])
        desired.fingerprints[key] = fingerprint = _fingerprint(
            [slots[p.key] for p in shards],
            unplaced.get(key),
            context.get((stream.namespace, manifests.stream_label(stream.name))),
        )
        if known.get(key) == fingerprint:
            desired.unchanged.add(key)
            continue
        if key in unplaced or not shards:
            reason = unplaced.get(key, "waiting for placement")
            desired.statuses[key] = stream_status(
                stream, [], StreamPhase.UNSCHEDULABLE, reason, now, tick_hz=settings.tick_hz
            )
            continue
        try:
            for p in shards:
                desired.objects.append(manifests.slot_configmap(stream, contract(p.key)))
                if settings.gpu_binding == "dra":
                    desired.objects.append(manifests.resource_claim(stream, p, settings))
                desired.objects.append(manifests.shard_deployment(stream, p, settings))
        except manifests.TemplateError as e:
            desired.objects = [o for o in desired.objects if not _owned_by(o, stream)]
            desired.frozen.add((stream.namespace, manifests.stream_label(stream.name)))
            desired.statuses[key] = stream_status(
                stream,
                shards,
                StreamPhase.PENDING,
                str(e),
                now,
                reason="InvalidTemplate",
                tick_hz=settings.tick_hz,
            )
            continue
        desired.statuses[key] = stream_status(
            stream, shards, StreamPhase.PLACED, "", now, tick_hz=settings.tick_hz
        )
    return desired


def switch_instant(
    old: GpuSchedule | None, epoch: datetime, now: datetime, settings: OperatorSettings
) -> datetime:
    """When a GPU's new slot table takes over on every sidecar: ``effective_after_s`` from
    now or later, not before the previous generation's switch, and at an instant where no
    body of the previous table runs (:func:`stagger.core.slots.switch_tick`), so that no
    body of one table overlaps one of the other, frames in flight included."""
    hz = settings.tick_hz
    ready = now + timedelta(seconds=settings.effective_after_s) - epoch
    earliest = -((-_microseconds(ready) * hz) // 1_000_000)  # ceil: not before ``ready``
    if old is None:
        return effective_at_of(epoch, earliest, hz)
    if old.spec.effective_at is not None:
        earliest = max(earliest, (_microseconds(old.spec.effective_at - epoch) * hz) // 1_000_000)
    table = [
        Slot(i, s.body_ticks, s.period_ticks, s.offset_ticks) for i, s in enumerate(old.spec.slots)
    ]
    return effective_at_of(epoch, switch_tick(table, earliest), hz)


def _microseconds(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def retimings(
    old: GpuSchedule | None, shards: Sequence[ShardPlacement], effective_at: datetime
) -> dict[tuple[str, str, int], datetime]:
    """When each shard's slot on this GPU was last changed by a re-timing: at this table's
    switch if it changes here now, else as the previous table recorded it."""
    if old is None:
        return {}
    before = {(s.namespace, s.stream, s.shard): s for s in old.spec.slots}
    out: dict[tuple[str, str, int], datetime] = {}
    for p in shards:
        was = before.get(p.key)
        if was is None:
            continue  # placed here now: a placement, not a re-timing
        if (was.offset_ticks, was.period_ticks) != (p.offset_ticks, p.period_ticks):
            out[p.key] = effective_at
        elif was.retimed_at is not None:
            out[p.key] = was.retimed_at
    return out


def retiring_copies(
    objects: Iterable[Obj], previous: Plan, streams: Sequence[InferenceStream]
) -> list[ShardPlacement]:
    """Old copies of moved shards, still running where they were until their new copy is
    Ready (make-before-break): each slot ConfigMap whose GPU is not the one the GpuSchedules
    place its shard on now. The planner keeps their slots and memory reserved there."""
    where = {p.key: (p.node, p.gpu) for p in previous.shards}
    memory = {(s.namespace, s.name): s.spec.memory_mib for s in streams}
    out = []
    for obj in objects:
        raw = (obj.get("data") or {}).get(CONTRACT_FILE) if obj.get("kind") == "ConfigMap" else None
        if raw is None:
            continue
        try:
            c = SlotAssignment.model_validate_json(raw)
        except ValueError:
            continue
        key = (c.namespace, c.stream, c.shard)
        if key not in where or where[key] == (c.node, c.gpu_index):
            continue
        memory_mib = memory.get((c.namespace, c.stream), 0)
        out.append(_recorded(c, (c.node, c.gpu_index, c.gpu_uuid, ""), memory_mib, c.tick_hz))
    return out


def pinned_shards(
    schedules: Iterable[GpuSchedule], now: datetime, min_interval_s: float
) -> tuple[set[tuple[str, str, int]], datetime | None]:
    """Shards re-timed less than ``min_interval_s`` ago, which the planner may not re-time
    yet, and when the first of them may be again (None: none is pinned)."""
    pinned: set[tuple[str, str, int]] = set()
    free_at: datetime | None = None
    bound = timedelta(seconds=min_interval_s)
    for sched in schedules:
        for s in sched.spec.slots:
            if s.retimed_at is not None and now < s.retimed_at + bound:
                pinned.add((s.namespace, s.stream, s.shard))
                free_at = min(free_at or s.retimed_at + bound, s.retimed_at + bound)
    return pinned, free_at


def _fingerprint(
    slots: Sequence[tuple[ShardPlacement, datetime, int, datetime, tuple[int, int] | None]],
    unplaced: str | None,
    context: Hashable,
) -> str:
    inputs = (
        # Times by value: the same instant parsed from the API has another tzinfo object.
        [
            (
                p.key,
                p.shards,
                p.node,
                p.gpu,
                p.gpu_uuid,
                p.period_ticks,
                p.offset_ticks,
                p.body_ticks,
            )
            for p, _, _, _, _ in slots
        ],
        [
            (g, epoch.timestamp(), effective.timestamp(), window)
            for _, epoch, g, effective, window in slots
        ],
        unplaced,
        context,
    )
    return hashlib.blake2b(repr(inputs).encode(), digest_size=16).hexdigest()


def _owned_by(obj: Obj, stream: InferenceStream) -> bool:
    refs = obj["metadata"].get("ownerReferences", [])
    return any(r.get("uid") == stream.metadata.uid for r in refs)


def stream_status(
    stream: InferenceStream,
    shards: Sequence[ShardPlacement],
    phase: StreamPhase,
    message: str,
    now: datetime,
    *,
    reason: str | None = None,
    tick_hz: int = TICK_HZ,
) -> Obj:
    """The status subresource of one stream (conditions Placed and Ready)."""
    placed = phase in (StreamPhase.PLACED, StreamPhase.RUNNING)
    hz = tick_hz
    first = shards[0] if shards else None
    extra = f",+{len(shards) - 1}" if len(shards) > 1 else ""
    condition_reason = reason or ("Placed" if placed else "Unschedulable")
    return {
        "phase": phase.value,
        "message": message or (f"placed on {len(shards)} shard(s)" if placed else ""),
        "shardCount": len(shards),
        "node": f"{first.node}{extra}" if first else "",
        "gpu": f"{first.gpu}{extra}" if first else "",
        **({"offsetMs": round(ticks_to_ms(first.offset_ticks, hz), 3)} if first else {}),
        "shards": [
            {
                "index": p.shard,
                "node": p.node,
                "gpu": p.gpu,
                **({"gpuUuid": p.gpu_uuid} if p.gpu_uuid else {}),
                "fps": p.fps,
                "periodMs": round(ticks_to_ms(p.period_ticks, hz), 3),
                "offsetMs": round(ticks_to_ms(p.offset_ticks, hz), 3),
                "bodyMs": p.body_ms,
            }
            for p in shards
        ],
        "conditions": [
            _condition(stream, "Placed", placed, condition_reason, message=message, now=now),
        ],
        **(
            {"observedGeneration": stream.metadata.generation}
            if stream.metadata.generation is not None
            else {}
        ),
    }


def _condition(
    stream: InferenceStream, kind: str, true: bool, reason: str, *, message: str, now: datetime
) -> Obj:
    generation = stream.metadata.generation
    return {
        "type": kind,
        "status": "True" if true else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        **({"observedGeneration": generation} if generation is not None else {}),
    }


def serving_status(
    status: Obj,
    stream: InferenceStream,
    rollout: Rollout,
    observed: Mapping[tuple[str, str, str], Observation],
    *,
    settings: OperatorSettings,
    now: datetime,
) -> Obj:
    """Refine a placed stream's status with what runs: Running once every shard has a Ready
    copy, Degraded when a shard stops serving or drops frames, the Ready condition, moves,
    and what the sidecars measured."""
    if status["phase"] != StreamPhase.PLACED.value:
        return status
    label = manifests.stream_label(stream.name)
    ids = {s["index"]: (stream.namespace, label, str(s["index"])) for s in status["shards"]}
    down = [i for i, sid in ids.items() if sid not in rollout.serving]
    seen = {i: observed[sid] for i, sid in ids.items() if sid in observed}
    for s in status["shards"]:
        o = seen.get(s["index"])
        if o is not None:
            s["observedFps"] = round(o.fps, 3)
            s["dropRate"] = round(o.drop_rate, 6)
            if o.p99_ms is not None:
                s["p99Ms"] = round(o.p99_ms, 3)
    if seen:
        values = list(seen.values())
        forwarded = sum(o.forwarded for o in values)
        dropped = sum(o.dropped for o in values)
        status["observedFps"] = round(sum(o.fps for o in values), 3)
        status["dropRate"] = round(dropped / (forwarded + dropped), 6) if forwarded + dropped else 0
        p99s = [o.p99_ms for o in values if o.p99_ms is not None]
        if p99s:
            status["p99Ms"] = round(max(p99s), 3)
    n = len(ids)
    was_running = stream.status is not None and stream.status.phase in (
        StreamPhase.RUNNING,
        StreamPhase.DEGRADED,
    )
    dropping = sorted(
        (i, o.drop_rate) for i, o in seen.items() if o.drop_rate > settings.degraded_drop_rate
    )
    if not down and dropping:
        i, rate = dropping[0]
        phase, ready, reason = StreamPhase.DEGRADED, True, "Dropping"
        message = (
            f"shard {i} drops {rate:.2%} of its frames "
            f"(threshold {settings.degraded_drop_rate:.2%})"
        )
    elif not down:
        phase, ready, reason = StreamPhase.RUNNING, True, "Serving"
        message = f"running on {n} shard(s)"
    elif was_running:
        phase, ready, reason = StreamPhase.DEGRADED, False, "ShardsNotReady"
        message = f"{n - len(down)}/{n} shards serving; shard {down[0]} has no Ready pod"
    else:
        phase, ready, reason = StreamPhase.PLACED, False, "ShardsStarting"
        message = f"placed on {n} shard(s); {n - len(down)}/{n} pods Ready"
    moving = sorted(i for i, sid in ids.items() if sid in rollout.moving)
    waiting = sorted(i for i, sid in ids.items() if sid in rollout.waiting)
    if moving:
        message += f"; moving shard(s) {', '.join(map(str, moving))} (old copy serves meanwhile)"
    if waiting:
        message += (
            f"; shard(s) {', '.join(map(str, waiting))} wait to move "
            f"(at most {settings.max_moves} moves at a time)"
        )
    status["phase"], status["message"] = phase.value, message
    status["conditions"] = [
        *(c for c in status["conditions"] if c["type"] != "Ready"),
        _condition(stream, "Ready", ready, reason, message=message, now=now),
    ]
    return status


def schedule_status(
    schedule: Obj,
    plan: Plan,
    observed: Mapping[tuple[str, str, str], Observation],
) -> Obj:
    """A GpuSchedule's status: what the plan reserves on the GPU and what its shards'
    sidecars measured (body time per model, slot misses in the last scrape window)."""
    spec = schedule["spec"]
    usage = next(
        (g for g in plan.gpus if (g.node, g.gpu) == (spec["node"], spec["gpuIndex"])), None
    )
    bodies: dict[str, list[float]] = defaultdict(list)
    misses = 0.0
    for slot in spec["slots"]:
        sid = (slot["namespace"], manifests.stream_label(slot["stream"]), str(slot["shard"]))
        o = observed.get(sid)
        if o is not None:
            misses += o.slot_misses
            for model, ms in o.body_ms.items():
                bodies[model].append(ms)
    return {
        "streams": len({(x["namespace"], x["stream"]) for x in spec["slots"]}),
        "utilization": round(usage.utilization, 6) if usage else 0.0,
        "memoryMiB": usage.memory_mib if usage else 0,
        "measuredBodyMs": {m: round(max(v), 3) for m, v in sorted(bodies.items())},
        "slotMisses": int(misses),
    }


def write_failed_status(status: Obj, stream: InferenceStream, problem: str, now: datetime) -> Obj:
    """The API refused one of the stream's objects (admission webhook, quota, a bad field
    in its template): the stream says so; the next reconcile tries again."""
    status["phase"], status["message"] = StreamPhase.PENDING.value, problem
    status["conditions"] = [
        *(c for c in status["conditions"] if c["type"] != "Ready"),
        _condition(stream, "Ready", False, "WriteFailed", message=problem, now=now),
    ]
    return status


def profile_statuses(
    profiles: Sequence[ModelProfile],
    measured: Mapping[tuple[str, int], Mapping[str, float]],
    gpus: Sequence[GpuUsage],
    drift_percent: float,
    now: datetime,
) -> dict[str, Obj]:
    """Each ModelProfile's status from what the sidecars measured on the GPUs it describes
    (same product and sharing mode): the median body there, its drift from ``bodyTimeMs``
    and a ``Drifted`` condition. Profiles with no measurement keep their status."""
    kinds = {(g.node, g.gpu): (g.product, str(g.sharing_mode)) for g in gpus}
    samples: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for where, bodies in measured.items():
        if where in kinds:
            for model, ms in bodies.items():
                samples[(model, *kinds[where])].append(ms)
    out: dict[str, Obj] = {}
    for profile in profiles:
        spec = profile.spec
        seen = samples.get((spec.model, spec.gpu_product, str(spec.sharing_mode)))
        if not seen:
            continue
        observed = statistics.median(seen)
        drift = (observed - spec.body_time_ms) / spec.body_time_ms * 100
        drifted = abs(drift) > drift_percent
        message = (
            f"sidecars measure {observed:.2f} ms on {len(seen)} GPU(s) against bodyTimeMs "
            f"{spec.body_time_ms:g} ({drift:+.0f} %, tolerance {drift_percent:g} %)"
            + (": re-calibrate" if drifted else "")
        )
        old = {c.type: c for c in (profile.status.conditions if profile.status else [])}
        was = old.get("Drifted")
        status = "True" if drifted else "False"
        since = (
            was.last_transition_time
            if was is not None and was.status == status and was.last_transition_time
            else now.replace(microsecond=0)
        )
        out[profile.name] = {
            "observedBodyMs": round(observed, 3),
            "driftPercent": round(drift, 1),
            "conditions": [
                {
                    "type": "Drifted",
                    "status": status,
                    "reason": "BodyDrift" if drifted else "WithinTolerance",
                    "message": message,
                    "lastTransitionTime": since.isoformat().replace("+00:00", "Z"),
                }
            ],
        }
    return out


@dataclass(frozen=True)
class CalibrationOutcome:
    """What a calibration Job came to: a result, a failure, or neither yet (running)."""

    result: CalibrationResult | None = None
    failure: str | None = None


@dataclass
class Calibration:
    jobs: list[Obj] = field(default_factory=list)
    statuses: dict[tuple[str, str], Obj] = field(default_factory=dict)
    profiles: list[ModelProfile] = field(default_factory=list)


def calibration_state(
    streams: Sequence[InferenceStream],
    plan: Plan,
    outcomes: Mapping[tuple[str, str], CalibrationOutcome],
    settings: OperatorSettings,
    now: datetime,
) -> Calibration:
    """For streams that lack only a body time: the calibration Job each needs (one per
    model, GPU and namespace), their status, and the ModelProfiles finished Jobs measured.

    A finished Job stays wanted until its profile places the stream; a failed one stays
    (its TTL removes it, and then it runs again), so a failure is not retried in a loop."""
    out = Calibration()
    by_key = {(s.namespace, s.name): s for s in streams}
    wanted: set[tuple[str, str]] = set()
    for u in plan.unplaced:
        stream = by_key.get((u.namespace, u.stream))
        if stream is None or not u.calibrate_on:
            continue
        site = u.calibrate_on[0]
        target = manifests.CalibrationTarget(
            site.node, site.gpu, site.gpu_uuid, site.product, SharingMode(site.sharing_mode)
        )
        model = stream.spec.model
        where = f"model {model} on {site.product} ({site.sharing_mode})"
        try:
            job = manifests.calibration_job(stream, target, settings)
        except manifests.TemplateError as e:
            out.statuses[(u.namespace, u.stream)] = stream_status(
                stream,
                [],
                StreamPhase.PENDING,
                f"cannot calibrate {where}: {e}",
                now,
                reason="InvalidTemplate",
                tick_hz=settings.tick_hz,
            )
            continue
        name = job["metadata"]["name"]
        if (u.namespace, name) not in wanted:
            wanted.add((u.namespace, name))
            out.jobs.append(job)
        outcome = outcomes.get((u.namespace, name), CalibrationOutcome())
        phase, reason = StreamPhase.CALIBRATING, "Calibrating"
        if outcome.result is not None:
            profile = model_profile(outcome.result, site.product, target.sharing_mode, now)
            out.profiles.append(profile)
            message = (
                f"measured {where}: body {outcome.result.body_time_ms:g} ms; writing "
                f"ModelProfile {profile.name}"
            )
        elif outcome.failure is not None:
            phase, reason = StreamPhase.PENDING, "CalibrationFailed"
            message = (
                f"calibration of {where} failed: {outcome.failure}. It runs again when Job "
                f"{u.namespace}/{name} is gone (kubectl delete job -n {u.namespace} {name}), "
                "or set spec.bodyTimeMs"
            )
        else:
            message = (
                f"measuring the body time of {where} on node {site.node} GPU {site.gpu}: Job {name}"
            )
        out.statuses[(u.namespace, u.stream)] = stream_status(
            stream, [], phase, message, now, reason=reason, tick_hz=settings.tick_hz
        )
    return out


RECALIBRATE = "stagger.dev/recalibrate"
"""Annotation on a ModelProfile: measure it again (any value; the operator sets "drift")."""


@dataclass
class Recalibration:
    jobs: list[Obj] = field(default_factory=list)
    profiles: list[ModelProfile] = field(default_factory=list)  # measured: replace these
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(profile, Normal|Warning, reason, message): progress, on the ModelProfile."""


def recalibration_state(
    profiles: Sequence[ModelProfile],
    streams: Sequence[InferenceStream],
    plan: Plan,
    outcomes: Mapping[tuple[str, str], CalibrationOutcome],
    settings: OperatorSettings,
    *,
    now: datetime,
) -> Recalibration:
    """ModelProfiles annotated ``stagger.dev/recalibrate``: a calibration Job each, on the
    least used GPU of the profile's product and sharing mode (an idle one when there is
    one), with the pod template of a stream of the model (first by namespace and name).
    A finished Job's measurement replaces the profile's spec under the same name."""
    out = Recalibration()
    runs = sorted(streams, key=lambda s: (s.namespace, s.name))
    for profile in profiles:
        if RECALIBRATE not in profile.metadata.annotations:
            continue
        spec = profile.spec
        stream = next(
            (
                s
                for s in runs
                if s.spec.model == spec.model
                and (spec.model_version is None or s.spec.model_version == spec.model_version)
            ),
            None,
        )
        gpus = [
            g
            for g in plan.gpus
            if g.product == spec.gpu_product and str(g.sharing_mode) == str(spec.sharing_mode)
        ]
        if stream is None or not gpus:
            missing = (
                f"no InferenceStream runs model {spec.model}"
                if stream is None
                else f"no {spec.sharing_mode} GPU of product {spec.gpu_product} in the cluster"
            )
            out.events.append(
                (profile.name, "Warning", "RecalibrationBlocked", f"cannot re-calibrate: {missing}")
            )
            continue
        gpu = min(gpus, key=lambda g: (g.utilization, g.shards))
        target = manifests.CalibrationTarget(
            gpu.node, gpu.gpu, gpu.uuid, gpu.product, SharingMode(gpu.sharing_mode)
        )
        try:
            job = manifests.calibration_job(stream, target, settings)
        except manifests.TemplateError as e:
            out.events.append(
                (profile.name, "Warning", "RecalibrationBlocked", f"cannot re-calibrate: {e}")
            )
            continue
        out.jobs.append(job)
        name = job["metadata"]["name"]
        outcome = outcomes.get((stream.namespace, name), CalibrationOutcome())
        if outcome.result is not None:
            measured = model_profile(outcome.result, gpu.product, target.sharing_mode, now)
            measured.metadata.name = profile.name
            out.profiles.append(measured)
            out.events.append(
                (
                    profile.name,
                    "Normal",
                    "Recalibrated",
                    f"body {spec.body_time_ms:g} -> {outcome.result.body_time_ms:g} ms "
                    f"(Job {stream.namespace}/{name} on node {gpu.node} GPU {gpu.gpu})",
                )
            )
        elif outcome.failure is not None:
            out.events.append(
                (
                    profile.name,
                    "Warning",
                    "RecalibrationFailed",
                    f"{outcome.failure}. Delete Job {stream.namespace}/{name} to try again, "
                    f"or remove the {RECALIBRATE} annotation",
                )
            )
        else:
            out.events.append(
                (
                    profile.name,
                    "Normal",
                    "Recalibrating",
                    f"measuring with Job {stream.namespace}/{name} on node {gpu.node} GPU "
                    f"{gpu.gpu}, with the pod template of {stream.namespace}/{stream.name}",
                )
            )
    return out


def drift_recalibrations(
    profiles: Sequence[ModelProfile],
    statuses: Mapping[str, Obj],
    settings: OperatorSettings,
    now: datetime,
) -> list[str]:
    """Calibrated profiles whose new status says Drifted, measured longer ago than the
    cooldown and not yet being re-calibrated: to annotate ``stagger.dev/recalibrate``."""
    if not settings.recalibrate_on_drift:
        return []
    cooldown = timedelta(seconds=settings.recalibration_cooldown_s)
    out = []
    for profile in profiles:
        status = statuses.get(profile.name)
        spec = profile.spec
        if (
            status is None
            or spec.source != "calibration"
            or RECALIBRATE in profile.metadata.annotations
            or (spec.measured_at is not None and now - spec.measured_at < cooldown)
        ):
            continue
        if any(c["type"] == "Drifted" and c["status"] == "True" for c in status["conditions"]):
            out.append(profile.name)
    return out


PROFILER = "stagger-profile"
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


def calibration_outcomes(
    jobs: Iterable[Obj], pods: Iterable[Obj]
) -> dict[tuple[str, str], CalibrationOutcome]:
    """Per calibration Job (namespace, name): what its pods' profiler container reported in
    its termination message, or why the Job failed. A Job that is over always has an
    outcome, so no stream waits on it for ever."""
    by_job: dict[tuple[str, str], list[Obj]] = defaultdict(list)
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        job = next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)
        if job is not None:
            by_job[(pod["metadata"].get("namespace") or "", job)].append(pod)
    out: dict[tuple[str, str], CalibrationOutcome] = {}
    for job in jobs:
        key = (job["metadata"].get("namespace") or "", job["metadata"]["name"])
        out[key] = _outcome(job, by_job.get(key, []))
    return out


def _outcome(job: Obj, pods: list[Obj]) -> CalibrationOutcome:
    last_error = None
    for pod in pods:
        for c in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = (c.get("state") or {}).get("terminated")
            if c.get("name") != PROFILER or not ended:
                continue
            message = (ended.get("message") or "").strip()
            if ended.get("exitCode") != 0:
                last_error = message[-500:] or f"the profiler exited with {ended.get('exitCode')}"
                continue
            try:
                return CalibrationOutcome(result=CalibrationResult.model_validate_json(message))
            except ValueError as e:
                return CalibrationOutcome(
                    failure=f"its result is unreadable ({type(e).__name__}): {message[:200]!r}"
                )
    ended = {
        c.get("type"): c
        for c in (job.get("status") or {}).get("conditions") or []
        if c.get("status") == "True" and c.get("type") in ("Failed", "Complete")
    }
    if "Failed" in ended:
        c = ended["Failed"]
        return CalibrationOutcome(
            failure=last_error or f"{c.get('reason', 'Failed')}: {c.get('message', '')}"
        )
    if "Complete" in ended:
        return CalibrationOutcome(failure="the Job completed without a result")
    return CalibrationOutcome()  # running, or retrying after a failed pod
