"""Make-before-break: which of the desired objects to write and which old ones to delete.

Objects are named by placement (stream, shard, node, GPU), so a shard that moves gets a new
Deployment beside the old one. The old copy keeps serving until the new one's pod is
Ready, its node stops being usable, or the move times out. At most ``max_moves`` shards
are in such a transition at once: each holds GPU memory in two places while it lasts. A
move beyond the bound waits (its old copy keeps serving) for a later reconcile.

Pure: the controller passes in what it listed (objects, pods) and the clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stagger_operator import manifests

Obj = dict[str, Any]
Key = tuple[str, str | None, str]  # kind, namespace, name
Unit = tuple[str, str, str, str]  # namespace, stream label, shard, GPU label: one placement
ShardId = tuple[str, str, str]  # namespace, stream label, shard


def key_of(obj: Obj) -> Key:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace"), meta["name"])


def unit_of(obj: Obj) -> Unit | None:
    """The placement an object (Deployment, ConfigMap, ResourceClaim, Pod) belongs to."""
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    try:
        return (
            meta.get("namespace") or "",
            labels[manifests.LABEL_STREAM],
            labels[manifests.LABEL_SHARD],
            labels[manifests.LABEL_GPU],
        )
    except KeyError:
        return None


def unit(namespace: str, stream: str, shard: int, node: str, gpu: int) -> Unit:
    return (namespace, manifests.stream_label(stream), str(shard), manifests.gpu_label(node, gpu))


def ready_units(pods: Iterable[Obj]) -> set[Unit]:
    """Placements with a Ready pod that is not being deleted."""
    out: set[Unit] = set()
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            u = unit_of(pod)
            if u is not None:
                out.add(u)
    return out


@dataclass
class Rollout:
    write: list[Obj] = field(default_factory=list)
    delete: list[Key] = field(default_factory=list)
    serving: set[ShardId] = field(default_factory=set)
    """Shards with a Ready copy that stays: the new one, or the old one while it moves."""
    moving: set[ShardId] = field(default_factory=set)
    """Shards whose new copy runs beside the old one until it is Ready."""
    waiting: set[ShardId] = field(default_factory=set)
    """Shards that must move but wait for a free transition (their old copy serves)."""
    retiring: dict[Unit, datetime] = field(default_factory=dict)
    """Old copies kept for a transition, with the time they were first kept."""
    timed_out: set[Unit] = field(default_factory=set)


def rollout(
    desired: Sequence[Obj],
    current: Mapping[Key, Obj],
    ready: set[Unit],
    usable_gpus: set[str],
    *,
    retiring_since: Mapping[Unit, datetime],
    now: datetime,
    max_moves: int,
    move_timeout_s: float,
    frozen: Collection[tuple[str, str]] = (),
    priority: Mapping[tuple[str, str], int] | None = None,
) -> Rollout:
    """Decide writes and deletions. ``frozen`` (namespace, stream label) pairs are left as
    they are: their spec cannot be served now (a bad template), so what runs keeps running.
    ``priority`` orders which waiting moves go first."""
    out = Rollout()
    wanted: dict[Unit, list[Obj]] = defaultdict(list)
    loose: list[Obj] = []  # desired objects outside any placement (none today)
    for obj in desired:
        u = unit_of(obj)
        (wanted[u] if u else loose).append(obj)
    have: dict[Unit, list[Key]] = defaultdict(list)
    for key, obj in current.items():
        u = unit_of(obj)
        if u is None:
            if key not in {key_of(o) for o in desired}:
                out.delete.append(key)
        elif (u[0], u[1]) not in frozen:
            have[u].append(key)
    want_of: dict[ShardId, Unit] = {u[:3]: u for u in wanted}
    old_of: dict[ShardId, list[Unit]] = defaultdict(list)
    for u in have:
        if want_of.get(u[:3]) != u:
            old_of[u[:3]].append(u)

    def alive(u: Unit) -> bool:
        if u not in ready or u[3] not in usable_gpus:
            return False
        if (now - retiring_since.get(u, now)).total_seconds() >= move_timeout_s:
            out.timed_out.add(u)
            return False
        return True

    def retire(units: Iterable[Unit]) -> None:
        for u in units:
            out.delete.extend(have[u])

    new_moves: list[tuple[ShardId, list[Unit]]] = []
    for shard, new in want_of.items():
        olds = old_of.pop(shard, [])
        keep = [u for u in olds if alive(u)] if new not in ready else []
        retire(u for u in olds if u not in keep)
        if new in ready or keep:
            out.serving.add(shard)
        if not keep:
            out.write.extend(wanted[new])
        elif new in have:  # the new copy was created by an earlier reconcile
            out.moving.add(shard)
            out.write.extend(wanted[new])
            out.retiring.update({u: retiring_since.get(u, now) for u in keep})
        else:
            new_moves.append((shard, keep))
    for olds in old_of.values():  # shards no longer placed anywhere
        retire(olds)

    rank = priority or {}
    new_moves.sort(key=lambda m: (-rank.get(m[0][:2], 0), m[0]))
    room = max(0, max_moves - len(out.moving))
    for shard, keep in new_moves:
        if room > 0:  # start the transition: its timeout counts from now
            room -= 1
            out.moving.add(shard)
            out.write.extend(wanted[want_of[shard]])
            out.retiring.update(dict.fromkeys(keep, now))
        else:  # not in transition yet: no timeout runs
            out.waiting.add(shard)
    out.write.extend(loose)
    return out
