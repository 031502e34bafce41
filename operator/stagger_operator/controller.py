"""One reconcile of the whole fleet: read, plan, compute desired state, write differences.

Every reconcile starts from what the cluster holds (GpuSchedules carry the previous plan),
so a restarted operator reproduces the same plan and moves nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stagger.core.api import InferenceStream, InferenceStreamStatus, StreamPhase
from stagger.core.placement import Move, Plan, plan
from stagger_operator import manifests
from stagger_operator.kube import OWNED_KINDS, Kube
from stagger_operator.observe import Observation
from stagger_operator.reconcile import (
    cluster_from_nodes,
    desired_state,
    plan_from_schedules,
    schedule_status,
    serving_status,
)
from stagger_operator.rollout import ShardId, Unit, ready_units, rollout
from stagger_operator.settings import OperatorSettings

Obj = dict[str, Any]
Key = tuple[str, str | None, str]  # kind, namespace, name


@dataclass
class Report:
    streams: int = 0
    placed: int = 0
    unplaced: int = 0
    invalid: int = 0
    moves: list[Move] = field(default_factory=list)
    written: int = 0
    deleted: int = 0
    moving: int = 0
    waiting: int = 0
    plan: Plan | None = None


def _key(kind: str, obj: Obj) -> Key:
    meta = obj["metadata"]
    return (kind, meta.get("namespace"), meta["name"])


class Controller:
    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.retiring: dict[Unit, datetime] = {}  # old copies kept while their shard moves
        self.observed: dict[ShardId, Observation] = {}  # from the sidecars' metrics

    def reconcile(self) -> Report:
        s, kube, now = self.settings, self.kube, self.clock()
        report = Report()
        cluster = cluster_from_nodes(kube.list_objects("Node"), s)
        streams, invalid = kube.list_streams(s.namespaces)
        live = [x for x in streams if not (x.metadata.model_extra or {}).get("deletionTimestamp")]
        schedules = {x.name: x for x in kube.list_schedules()}
        previous = plan_from_schedules(schedules.values(), s.tick_hz)
        result = plan(live, cluster, kube.list_profiles(), s.planner(), previous=previous)
        desired = desired_state(live, result, schedules, s, now)
        report.plan, report.moves = result, list(result.moves)
        report.streams, report.invalid = len(streams), len(invalid)
        report.placed = len({(p.namespace, p.stream) for p in result.shards})
        report.unplaced = len(result.unplaced)

        current = {
            _key(k, o): o
            for k in self._owned_kinds()
            for o in kube.list_managed(k)
            if self._watched(o["metadata"].get("namespace"))
        }
        pods = [
            p for p in kube.list_managed("Pod") if self._watched(p["metadata"].get("namespace"))
        ]
        steps = rollout(
            desired.objects,
            current,
            ready_units(pods),
            {manifests.gpu_label(n.name, g.index) for n in cluster.nodes for g in n.gpus},
            retiring_since=self.retiring,
            now=now,
            max_moves=s.max_moves,
            move_timeout_s=s.move_timeout_s,
            frozen=desired.frozen,
            priority={(x.namespace, manifests.stream_label(x.name)): x.spec.priority for x in live},
        )
        self.retiring = steps.retiring
        # Create and update before deleting: a moving shard's new copy exists before its
        # old one goes (which waits for the new pod to be Ready; see rollout).
        for obj in steps.write:
            report.written += kube.apply(obj, current.get(_key(obj["kind"], obj)))
        for key in steps.delete:
            kube.delete(*key)
            report.deleted += 1
        report.moving, report.waiting = len(steps.moving), len(steps.waiting)

        observed = self.observed
        current_sched = {o["metadata"]["name"]: o for o in kube.list_managed("GpuSchedule")}
        wanted_sched = {o["metadata"]["name"]: o for o in desired.schedules}
        for name, obj in wanted_sched.items():
            report.written += kube.apply(obj, current_sched.get(name))
            status = schedule_status(obj, result, observed)
            if (current_sched.get(name) or {}).get("status") != status:
                kube.patch_status("GpuSchedule", None, name, status)
        for name in current_sched.keys() - wanted_sched.keys():
            kube.delete("GpuSchedule", None, name)
            report.deleted += 1

        by_key = {(x.namespace, x.name): x for x in live}
        for stream in live:
            status = desired.statuses[(stream.namespace, stream.name)]
            status = serving_status(status, stream, steps, observed, settings=s, now=now)
            self._write_status(stream, status, now)
        for u in sorted(steps.timed_out):
            owner = next((x for x in live if manifests.stream_label(x.name) == u[1]), None)
            if owner is not None and owner.namespace == u[0]:
                self._event(
                    owner,
                    "Warning",
                    "MoveTimedOut",
                    f"shard {u[2]}: the new copy was not Ready within {s.move_timeout_s:g} s; "
                    f"removed the old copy on {u[3]} anyway",
                    now,
                )
        for bad in invalid:
            self.kube.patch_status(
                "InferenceStream",
                bad.namespace,
                bad.name,
                {
                    "phase": StreamPhase.UNSCHEDULABLE.value,
                    "message": f"invalid spec: {bad.problem}",
                },
            )
        for move in result.moves:
            stream = by_key[(move.namespace, move.stream)]
            self._event(
                stream,
                "Normal",
                "Moved",
                (
                    f"shard {move.shard} moved from {move.from_node} GPU {move.from_gpu} to "
                    f"{move.to_node} GPU {move.to_gpu}"
                ),
                now,
            )
        return report

    def delete_stream(self, namespace: str, name: str) -> int:
        """Delete every object the operator made for one stream; returns how many."""
        label = manifests.stream_label(name)
        deleted = 0
        for kind in self._owned_kinds():
            for obj in self.kube.list_managed(kind):
                meta = obj["metadata"]
                if (
                    meta.get("namespace") == namespace
                    and (meta.get("labels") or {}).get(manifests.LABEL_STREAM) == label
                ):
                    self.kube.delete(kind, namespace, meta["name"])
                    deleted += 1
        return deleted

    def _owned_kinds(self) -> list[str]:
        return [
            k for k in OWNED_KINDS if k != "ResourceClaim" or self.settings.gpu_binding == "dra"
        ]

    def _watched(self, namespace: str | None) -> bool:
        """Objects in namespaces this operator does not watch are not its to delete."""
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def _write_status(self, stream: InferenceStream, status: Obj, now: datetime) -> None:
        old = stream.status
        new = InferenceStreamStatus.model_validate(status)
        if old is not None:
            # A condition keeps its transition time while its status does not change.
            before = {c.type: c for c in old.conditions}
            for c in new.conditions:
                prev = before.get(c.type)
                if prev is not None and prev.status == c.status:
                    c.last_transition_time = prev.last_transition_time
            if old.to_wire() == new.to_wire():
                return
        self.kube.patch_status("InferenceStream", stream.namespace, stream.name, new.to_wire())
        if old is None or old.phase != new.phase:
            kind = (
                "Warning"
                if new.phase in (StreamPhase.UNSCHEDULABLE, StreamPhase.PENDING)
                else "Normal"
            )
            self._event(stream, kind, new.phase.value, new.message, now)

    def _event(
        self, stream: InferenceStream, kind: str, reason: str, message: str, now: datetime
    ) -> None:
        stamp = now.isoformat().replace("+00:00", "Z")
        suffix = hashlib.sha256(f"{reason}{message}{stamp}".encode()).hexdigest()[:10]
        self.kube.create_event(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{stream.name}.{suffix}", "namespace": stream.namespace},
                "involvedObject": {
                    "apiVersion": "stagger.dev/v1alpha1",
                    "kind": "InferenceStream",
                    "name": stream.name,
                    "namespace": stream.namespace,
                    "uid": stream.metadata.uid,
                },
                "type": kind,
                "reason": reason,
                "message": message,
                "source": {"component": "stagger-operator"},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }
        )
