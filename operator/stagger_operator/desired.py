"""What the cluster should hold for a plan: the previous plan read back from GpuSchedules,
each shard's Deployment and slot ConfigMap, each GPU's schedule, when a re-timed table
takes over, and which old copies retire. Pure: the caller reads and writes."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stagger.core.api import (
    GpuSchedule,
    InferenceStream,
    ScheduledSlot,
    StreamPhase,
)
from stagger.core.contract import CONTRACT_FILE, SlotAssignment, effective_at_of
from stagger.core.placement import Plan, ShardPlacement
from stagger.core.slots import Slot, release_windows, switch_tick
from stagger.core.timebase import ticks_to_ms
from stagger_operator import manifests
from stagger_operator.settings import OperatorSettings
from stagger_operator.status import stream_status

Obj = dict[str, Any]


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
        arrival_ticks=slot.arrival_ticks,
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
    contracts: Mapping[tuple[str, str, int], SlotAssignment] | None = None,
    connected: Collection[tuple[str, str, int]] = frozenset(),
) -> Desired:
    """Objects, GpuSchedules and stream statuses for ``plan``. A GPU keeps its epoch; a
    changed slot table gets the next generation, effective ``effective_after_s`` from now,
    or ``contract_propagation_s`` where it changes what a running sidecar releases
    (:func:`next_switch`; ``contracts``: each shard's contract as written, from its
    ConfigMap; ``connected``: shards whose sidecar holds a request on the slot feed).

    Every stream gets a fingerprint of what its objects and status are made from: its
    shards' slots and contracts, why it is unplaced, and ``context``: what the caller saw
    of it (its spec and status as listed, its objects, Ready pods and measurements). A
    stream whose fingerprint is in ``known`` is left out (``unchanged``): its objects and
    status were written from the same inputs before.

    Release windows (``settings.release_windows``): :func:`granted_windows` (``running``:
    generation per shard, from the sidecars' metrics); none on a GPU where an old copy of a
    moved shard still runs (``retiring``), whose body no table accounts for. A contract
    whose window narrows takes effect at the table's switch like any contract."""
    desired = Desired()
    running = running or {}
    haunted = {(r.node, r.gpu) for r in retiring}
    known, context = known or {}, context or {}
    by_gpu: dict[tuple[str, int], list[ShardPlacement]] = defaultdict(list)
    for p in plan.shards:
        by_gpu[(p.node, p.gpu)].append(p)
    since: dict[tuple[str, str, int], datetime] = {}  # when each shard's slots here began
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
        unchanged = old is not None and before == _table(shards)
        written = contracts or {}
        windows: dict[tuple[str, str, int], tuple[int, int]] = {}
        if settings.release_windows and (node, gpu) not in haunted:
            windows = granted_windows(
                old, shards, written, unchanged=unchanged, running=running, now=now
            )
        if old is not None and unchanged:
            generation, effective_at = old.spec.generation, old.spec.effective_at or epoch
        else:
            generation = old.spec.generation + 1 if old else 1
            effective_at = next_switch(
                old,
                shards,
                epoch,
                written,
                windows,
                now=now,
                settings=settings,
                connected=connected,
            )
        retimed_at = retimings(old, shards, effective_at)
        began = slots_since(old, shards, effective_at)
        since.update(began)
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
                since=began,
            )
        )
        for p in shards:
            kept, window = written.get(p.key), windows.get(p.key)
            if kept is not None and (
                unchanged or _kept_as_written(p, kept, epoch, window, settings.tick_hz)
            ):
                # Its releases stay as written: the contract keeps its generation and switch,
                # so a stream that joins the GPU rewrites no other stream's ConfigMap (nor
                # makes every sidecar there switch to a copy of what it runs).
                slots[p.key] = (p, epoch, kept.generation, kept.effective_at, window)
                continue
            switch = shard_switch(
                p,
                kept,
                window,
                unchanged=unchanged,
                switch=effective_at,
                epoch=epoch,
                now=now,
                tick_hz=settings.tick_hz,
            )
            slots[p.key] = (p, epoch, generation, switch, window)
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
            stream,
            shards,
            StreamPhase.PLACED,
            "",
            now,
            tick_hz=settings.tick_hz,
            slots_from={p.shard: since[p.key] for p in shards if since.get(p.key, now) > now},
        )
    return desired


def granted_windows(
    old: GpuSchedule | None,
    shards: Sequence[ShardPlacement],
    written: Mapping[tuple[str, str, int], SlotAssignment],
    *,
    unchanged: bool,
    running: Mapping[tuple[str, str, int], int],
    now: datetime,
) -> dict[tuple[str, str, int], tuple[int, int]]:
    """Each shard's release window (early, late ticks) in the GPU's table; a shard with
    none is left out.

    Windows are the table's (:func:`stagger.core.slots.release_windows`), so they grow only
    where every body on the GPU is seen to follow the table: the table unchanged, its switch
    passed, every shard's sidecar reporting the contract written for it, in force. Until
    then a shard keeps at most the window its written contract grants, narrowed to the
    table's. A window within both the table its sidecar runs and the one to come meets no
    body of either, so a stream that joins a GPU rewrites only its neighbours' contracts
    (whose windows reached into its slot) and its own, and every other sidecar there keeps
    releasing early; a shard new to the GPU gets its window once its sidecar runs."""
    if old is None:
        return {}
    grows = (
        unchanged
        and now >= (old.spec.effective_at or old.spec.epoch)
        and all(
            _runs_its_contract(p, written.get(p.key), old.spec.generation, running, now)
            for p in shards
        )
    )
    held = {
        p.key: c for p in shards if (c := written.get(p.key)) and (c.early_ticks or c.late_ticks)
    }
    if not grows and not held:
        return {}  # nothing to narrow: the table's windows are not needed (quadratic per GPU)
    table = release_windows(
        [Slot(p.key, p.body_ticks, p.period_ticks, p.offset_ticks) for p in shards]
    )
    if grows:
        return {p.key: table[p.key] for p in shards}
    out = {}
    for key, c in held.items():
        early, late = table[key]
        narrowed = (min(early, c.early_ticks or 0), min(late, c.late_ticks or 0))
        if narrowed != (0, 0):
            out[key] = narrowed
    return out


def next_switch(
    old: GpuSchedule | None,
    shards: Sequence[ShardPlacement],
    epoch: datetime,
    contracts: Mapping[tuple[str, str, int], SlotAssignment],
    windows: Mapping[tuple[str, str, int], tuple[int, int]],
    *,
    now: datetime,
    settings: OperatorSettings,
    connected: Collection[tuple[str, str, int]] = frozenset(),
) -> datetime:
    """When a GPU's changed table takes over.

    Where a shard that stays on the GPU would release otherwise under it than under the
    contract written for it (:func:`releases_changed`), its sidecar must have read the new
    contract by the switch: the kubelet's ConfigMap propagation (``contract_propagation_s``)
    ahead, unless the sidecar holds a request on the slot feed (``connected``), which
    answers it as soon as the contract is written. Otherwise (shards join or leave, or
    every sidecar concerned is connected) a sidecar that reads it late releases what it
    would have anyway, or reads it within a second: ``effective_after_s`` ahead. Never
    before the previous table's switch (:func:`switch_instant`)."""
    lead = settings.effective_after_s
    if releases_changed(old, shards, epoch, contracts, windows, tick_hz=settings.tick_hz) - set(
        connected
    ):
        lead = max(lead, settings.contract_propagation_s)
    return switch_instant(old, epoch, now, lead, settings.tick_hz)


def shard_switch(
    p: ShardPlacement,
    written: SlotAssignment | None,
    window: tuple[int, int] | None,
    *,
    unchanged: bool,
    switch: datetime,
    epoch: datetime,
    now: datetime,
    tick_hz: int,
) -> datetime:
    """When a shard's contract of this table takes effect: the table's switch, except
    where the shard's releases stay as the contract written for it has them and that
    contract's own switch is still to come, which it keeps. The kubelet delivers only a
    ConfigMap's latest version: a sidecar that has not read a coming re-timing when a later
    table is written may only ever read the later one, and must still switch when the others
    expect it to. A window narrowed again (the slot kept) keeps that switch too: within the
    coming table's window, it is safe from that switch on. (On an ``unchanged`` table a
    contract keeps its switch as written.)"""
    if written is None:
        return switch
    if unchanged:
        return written.effective_at
    if written.effective_at <= now:
        return switch
    planned = _as_planned(p, epoch, tick_hz, window)
    return written.effective_at if _within(planned, written) else switch


def releases_changed(
    old: GpuSchedule | None,
    shards: Sequence[ShardPlacement],
    epoch: datetime,
    contracts: Mapping[tuple[str, str, int], SlotAssignment],
    windows: Mapping[tuple[str, str, int], tuple[int, int]],
    *,
    tick_hz: int,
) -> set[tuple[str, str, int]]:
    """The shards that stay on the GPU and would release otherwise under the new table
    than under the contract written for it (its slot re-timed, or its release window
    narrowed or gone: :meth:`SlotAssignment.releases`), or whose contract is unknown."""
    if old is None:
        return set()
    stays = {(s.namespace, s.stream, s.shard) for s in old.spec.slots}
    return {
        p.key
        for p in shards
        if p.key in stays
        and (
            (before := contracts.get(p.key)) is None
            or before.releases() != _as_planned(p, epoch, tick_hz, windows.get(p.key)).releases()
        )
    }


def _kept_as_written(
    p: ShardPlacement,
    written: SlotAssignment,
    epoch: datetime,
    window: tuple[int, int] | None,
    tick_hz: int,
) -> bool:
    """Whether a shard's contract in a changed table is the one written for it but for its
    generation and switch."""
    planned = SlotAssignment.for_shard(
        p,
        tick_hz=tick_hz,
        epoch=epoch,
        generation=written.generation,
        effective_at=written.effective_at,
        window=window,
    )
    return planned == written


def _runs_its_contract(
    p: ShardPlacement,
    written: SlotAssignment | None,
    generation: int,
    running: Mapping[tuple[str, str, int], int],
    now: datetime,
) -> bool:
    """Whether the shard's sidecar runs the contract written for it, in force (the table's
    generation where none was read)."""
    if written is None:
        return running.get(p.key) == generation
    return now >= written.effective_at and running.get(p.key) == written.generation


def _as_planned(
    p: ShardPlacement, epoch: datetime, tick_hz: int, window: tuple[int, int] | None
) -> SlotAssignment:
    """A shard's contract in a changed table, for what it releases (its generation and
    switch are not decided yet)."""
    return SlotAssignment.for_shard(
        p, tick_hz=tick_hz, epoch=epoch, generation=1, effective_at=epoch, window=window
    )


def _within(planned: SlotAssignment, written: SlotAssignment) -> bool:
    """Whether ``planned`` releases what ``written`` does, or the same slot with a window
    within its window."""
    return (
        planned.releases()[:-2] == written.releases()[:-2]
        and (planned.early_ticks or 0) <= (written.early_ticks or 0)
        and (planned.late_ticks or 0) <= (written.late_ticks or 0)
    )


def switch_instant(
    old: GpuSchedule | None, epoch: datetime, now: datetime, lead_s: float, hz: int
) -> datetime:
    """When a GPU's new slot table takes over on every sidecar: ``lead_s`` from now
    (:func:`next_switch`) or later, not before the previous generation's switch, and at
    an instant where no body of the previous table runs
    (:func:`stagger.core.slots.switch_tick`), so that no body of one table overlaps one of
    the other, frames in flight included."""
    ready = now + timedelta(seconds=lead_s) - epoch
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


def written_contracts(objects: Iterable[Obj]) -> list[SlotAssignment]:
    """The slot contracts in ``objects``' ConfigMaps (one that does not parse is left out)."""
    out = []
    for obj in objects:
        raw = (obj.get("data") or {}).get(CONTRACT_FILE) if obj.get("kind") == "ConfigMap" else None
        if raw is None:
            continue
        try:
            out.append(SlotAssignment.model_validate_json(raw))
        except ValueError:
            continue
    return out


def contracts_in_place(
    contracts: Iterable[SlotAssignment], previous: Plan
) -> dict[tuple[str, str, int], SlotAssignment]:
    """Each shard's contract on the GPU the GpuSchedules place it on: what its sidecar
    runs there (an old copy's, on another GPU, is not)."""
    where = {p.key: (p.node, p.gpu) for p in previous.shards}
    return {
        (c.namespace, c.stream, c.shard): c
        for c in contracts
        if where.get((c.namespace, c.stream, c.shard)) == (c.node, c.gpu_index)
    }


def slots_since(
    old: GpuSchedule | None, shards: Sequence[ShardPlacement], effective_at: datetime
) -> dict[tuple[str, str, int], datetime]:
    """When each shard's slots on this GPU began: as the previous table recorded it, or at
    this table's switch for a shard that joins with it (unknown for a slot recorded before
    the field existed)."""
    before = {(s.namespace, s.stream, s.shard): s for s in old.spec.slots} if old else {}
    out: dict[tuple[str, str, int], datetime] = {}
    for p in shards:
        was = before.get(p.key)
        if was is None:
            out[p.key] = effective_at
        elif was.since is not None:
            out[p.key] = was.since
    return out


def retiring_copies(
    contracts: Iterable[SlotAssignment], previous: Plan, streams: Sequence[InferenceStream]
) -> list[ShardPlacement]:
    """Old copies of moved shards, still running where they were until their new copy is
    Ready (make-before-break): each slot contract whose GPU is not the one the GpuSchedules
    place its shard on now. The planner keeps their slots and memory reserved there."""
    where = {p.key: (p.node, p.gpu) for p in previous.shards}
    memory = {(s.namespace, s.name): s.spec.memory_mib for s in streams}
    out = []
    for c in contracts:
        key = (c.namespace, c.stream, c.shard)
        if key not in where or where[key] == (c.node, c.gpu_index):
            continue
        memory_mib = memory.get((c.namespace, c.stream), 0)
        out.append(_recorded(c, (c.node, c.gpu_index, c.gpu_uuid, ""), memory_mib, c.tick_hz))
    return out


def pinned_shards(
    schedules: Iterable[GpuSchedule], now: datetime, min_interval_s: float
) -> tuple[set[tuple[str, str, int]], datetime | None]:
    """Shards re-timed less than ``min_interval_s`` ago (from the switch that re-timed
    them, so a re-timing still to come pins them too), which the planner may not re-time
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
