"""One reconcile of the whole fleet: read, plan, compute desired state, write differences.

Every reconcile starts from what the cluster holds (GpuSchedules carry the previous plan),
so a restarted operator reproduces the same plan and moves nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

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
    write_failed_status,
)
from stagger_operator.rollout import ShardId, Unit, ready_units, rollout
from stagger_operator.settings import OperatorSettings

Obj = dict[str, Any]
T = TypeVar("T")
log = logging.getLogger("stagger.operator")
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
    failed: int = 0  # writes the API refused; retried by the next reconcile
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
        # Writes go out in parallel: each waits on the API server, none on another.
        self.pool = ThreadPoolExecutor(settings.write_concurrency, thread_name_prefix="write")
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
        report.moving, report.waiting = len(steps.moving), len(steps.waiting)

        # The plan's record first (a restarted operator starts from it), then workloads:
        # created and updated before anything is deleted, so a moving shard's new copy
        # exists before its old one goes (which waits for the new pod; see rollout).
        observed = self.observed
        current_sched = {o["metadata"]["name"]: o for o in kube.list_managed("GpuSchedule")}
        wanted_sched = {o["metadata"]["name"]: o for o in desired.schedules}
        failed: dict[tuple[str, str], str] = {}  # (namespace, stream label): what failed
        for obj, outcome in self._each(
            lambda o: kube.apply(o, current_sched.get(o["metadata"]["name"])),
            wanted_sched.values(),
        ):
            report.written += outcome is True
            if isinstance(outcome, ApiException):
                report.failed += 1
                log.error("cannot write %s: %s", obj["metadata"]["name"], _why(outcome))
        for obj, outcome in self._each(
            lambda o: kube.apply(o, current.get(_key(o["kind"], o))), steps.write
        ):
            report.written += outcome is True
            if isinstance(outcome, ApiException):
                report.failed += 1
                meta = obj["metadata"]
                failed.setdefault(
                    (meta["namespace"], meta["labels"][manifests.LABEL_STREAM]),
                    f"cannot write {obj['kind']} {meta['name']}: {_why(outcome)}",
                )
        deletions = [
            *steps.delete,
            *(("GpuSchedule", None, n) for n in current_sched.keys() - wanted_sched.keys()),
        ]
        for key, outcome in self._each(lambda k: kube.delete(*k), deletions):
            if isinstance(outcome, ApiException):
                report.failed += 1
                log.error("cannot delete %s %s/%s: %s", *key, _why(outcome))
            else:
                report.deleted += 1

        def schedule_status_write(obj: Obj) -> None:
            name = obj["metadata"]["name"]
            status = schedule_status(obj, result, observed)
            if (current_sched.get(name) or {}).get("status") != status:
                kube.patch_status("GpuSchedule", None, name, status)

        for obj, outcome in self._each(schedule_status_write, wanted_sched.values()):
            if isinstance(outcome, ApiException):
                log.warning(
                    "cannot write the status of %s: %s", obj["metadata"]["name"], _why(outcome)
                )

        by_key = {(x.namespace, x.name): x for x in live}

        def stream_status_write(stream: InferenceStream) -> None:
            status = desired.statuses[(stream.namespace, stream.name)]
            status = serving_status(status, stream, steps, observed, settings=s, now=now)
            problem = failed.get((stream.namespace, manifests.stream_label(stream.name)))
            if problem:
                status = write_failed_status(status, stream, problem, now)
            self._write_status(stream, status, now)

        for stream, outcome in self._each(stream_status_write, live):
            if isinstance(outcome, ApiException):
                log.warning(
                    "cannot write the status of %s/%s: %s",
                    stream.namespace,
                    stream.name,
                    _why(outcome),
                )
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

    def _each(self, fn: Callable[[T], object], items: Iterable[T]) -> list[tuple[T, object]]:
        """``fn`` on every item in parallel: each item with its result or the ApiException it
        raised (one refused write must not stop the others); any other error propagates."""
        items = list(items)
        futures = [self.pool.submit(fn, x) for x in items]
        out: list[tuple[T, object]] = []
        for x, f in zip(items, futures, strict=True):
            try:
                out.append((x, f.result()))
            except ApiException as e:
                out.append((x, e))
        return out

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


def _why(e: ApiException) -> str:
    """The API server's own message (admission webhooks and quotas explain themselves)."""
    try:
        message = json.loads(e.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{e.status} {e.reason}: {message}" if message else f"{e.status} {e.reason}"
