"""One reconcile of the whole fleet: read, plan, compute desired state, write differences.

Every reconcile starts from what the cluster holds (GpuSchedules carry the previous plan),
so a restarted operator reproduces the same plan and moves nothing.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

from stagger.core.api import (
    API_VERSION,
    GpuSchedule,
    InferenceStream,
    InferenceStreamStatus,
    ModelProfile,
    StreamPhase,
)
from stagger.core.cluster import Cluster
from stagger.core.contract import CONTRACT_FILE
from stagger.core.phase import follow_plan
from stagger.core.placement import Move, Plan, RunningCalibration, ShardKey, plan
from stagger.core.timebase import ticks_to_ms
from stagger_operator import manifests
from stagger_operator.calibration import (
    RECALIBRATE,
    Calibration,
    CalibrationOutcome,
    Recalibration,
    calibration_objects,
    calibration_outcomes,
    calibration_state,
    drift_recalibrations,
    is_calibration,
    recalibration_state,
    running_calibrations,
)
from stagger_operator.desired import (
    Desired,
    contracts_in_place,
    desired_state,
    pinned_shards,
    plan_from_schedules,
    retiring_copies,
    written_contracts,
)
from stagger_operator.feed import Report as FeedReport
from stagger_operator.feed import SlotFeed
from stagger_operator.inventory import cluster_from_nodes
from stagger_operator.kube import OWNED_KINDS, InvalidObject, Kube, parse_streams
from stagger_operator.observe import Observation
from stagger_operator.rollout import Rollout, ShardId, Unit, ready_units, rollout, unit_of
from stagger_operator.settings import OperatorSettings
from stagger_operator.status import (
    model_time_warnings,
    profile_statuses,
    schedule_status,
    serving_status,
    write_failed_status,
)

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
    statuses: int = 0  # streams' statuses written (a re-timing's switch passing rewrites many)
    deleted: int = 0
    moving: int = 0
    waiting: int = 0
    unchanged: int = 0  # streams whose inputs had not changed: neither rebuilt nor diffed
    failed: int = 0  # writes the API refused; retried by the next reconcile
    plan: Plan | None = None
    targets: list[tuple[str, str, float, float]] = field(default_factory=list)
    """(namespace, stream, requested fps, deadline s) of every valid stream: for dashboards
    and alerts, which join them with the sidecars' series."""
    profiles: list[tuple[str, str, str, str, float, bool]] = field(default_factory=list)
    """(name, model, GPU product, sharing mode, body s, drifted) of every ModelProfile."""
    calibrating: tuple[RunningCalibration, ...] = ()
    """The GPUs calibration Jobs measure, which take no new stream meanwhile."""
    retimed: list[tuple[str, str, int, str, int]] = field(default_factory=list)
    """(namespace, stream, shard, node, GPU) of every shard whose slot this plan re-timed."""
    wake_after_s: float | None = None
    """Plan again this soon: a pinned shard may be re-timed then, which may place a stream."""


@dataclass
class Snapshot:
    """What one reconcile read from the API, before deciding anything."""

    now: datetime
    full: bool  # a resync: every owned object listed and diffed
    cluster: Cluster
    signatures: dict[tuple[str, str], str]
    streams: list[InferenceStream]
    invalid: list[InvalidObject]
    live: list[InferenceStream]  # not being deleted
    schedules: dict[str, GpuSchedule]
    previous: Plan  # as the GpuSchedules record it
    schedule_objects: dict[str, Obj]
    profiles: list[ModelProfile]
    current: dict[Key, Obj]  # owned objects: listed, or as this controller wrote them
    ready: set[Unit]
    observed: dict[ShardId, Observation]
    jobs: dict[tuple[str, str], Obj]
    outcomes: dict[tuple[str, str], CalibrationOutcome]
    claims: dict[tuple[str, str], Obj] = field(default_factory=dict)  # calibration Jobs' (dra)
    reported: dict[ShardKey, FeedReport] = field(default_factory=dict)  # over the slot feed
    connected: frozenset[ShardKey] = frozenset()  # sidecars holding a slot-feed request
    # Shards just started, whose first phase is coming; until the first stops counting (s).
    awaiting: tuple[frozenset[ShardKey], float | None] = (frozenset(), None)


@dataclass
class Decision:
    """What a reconcile will make true, computed from a snapshot without an API call."""

    result: Plan
    desired: Desired
    calibration: Calibration
    recalibration: Recalibration
    steps: Rollout


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
        self.fingerprints: dict[tuple[str, str], str] = {}  # of streams written as wanted
        self._recalibration_said: dict[str, tuple[str, str]] = {}  # last Event per profile
        # what each stream was last warned of by its calibration
        self._calibration_warned: dict[tuple[str, str], tuple[str, ...]] = {}
        self.objects: dict[Key, Obj] | None = None  # owned objects: listed, then as written
        self.pods: dict[tuple[str, str], set[Unit]] = {}  # Ready placements, per pod
        self._parsed: dict[tuple[str, str], tuple[str, InferenceStream]] = {}
        self._monotonic = time.monotonic
        self._last_full = -math.inf
        self.observed: dict[ShardId, Observation] = {}  # from the sidecars' metrics
        self.feed: SlotFeed | None = None  # where the sidecars wait for their contracts

    def reconcile(self) -> Report:
        # A reconcile allocates many small acyclic objects while holding the whole fleet:
        # the cyclic collector would rescan it again and again (seconds at 10k streams).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._reconcile()
        finally:
            if collecting:
                gc.enable()

    def _reconcile(self) -> Report:
        """Snapshot (read), decide (pure: plan, desired state, rollout), act (write)."""
        report = Report()
        snap = self._snapshot()
        decision = self._decide(snap, report)
        self._act(snap, decision, report)
        if snap.full:
            self._last_full = self._monotonic()
        return report

    def _snapshot(self) -> Snapshot:
        """Everything this reconcile reads from the API, read first."""
        s, kube, now = self.settings, self.kube, self.clock()
        cluster = cluster_from_nodes(kube.list_objects("Node"), s, kube.list_gpu_nodes(), now)
        # Between resyncs, a stream whose inputs are what they were is not rebuilt or
        # diffed (its fingerprint says so), the owned objects are what this controller last
        # wrote, and pods are what their watch events said; a resync lists and diffs
        # everything, repairing drift.
        full = self._monotonic() - self._last_full >= s.resync_s or self.objects is None
        raw_streams = kube.list_stream_objects(s.namespaces)
        signatures = {_named(o): _signature(o) for o in raw_streams}
        streams, invalid = self._parse(raw_streams, signatures)
        live = [x for x in streams if not (x.metadata.model_extra or {}).get("deletionTimestamp")]
        schedules = {x.name: x for x in kube.list_schedules()}
        if full or self.objects is None:
            self.objects = {
                _key(k, o): o
                for k in self._owned_kinds()
                for o in kube.list_managed(k)
                if self._watched(o["metadata"].get("namespace")) and not is_calibration(o)
            }
            self.pods = {
                (p["metadata"]["namespace"], p["metadata"]["name"]): ready_units([p])
                for p in kube.list_managed("Pod")
                if self._watched(p["metadata"].get("namespace"))
            }
        jobs = {_named(j): j for j in calibration_objects(kube.list_managed("Job"), s.namespaces)}
        claims = {}  # the calibration Jobs' GPU claims, listed as the Jobs are
        if s.gpu_binding == "dra":
            managed = kube.list_managed("ResourceClaim")
            claims = {_named(c): c for c in calibration_objects(managed, s.namespaces)}
        return Snapshot(
            now=now,
            full=full,
            cluster=cluster,
            signatures=signatures,
            streams=streams,
            invalid=invalid,
            live=live,
            schedules=schedules,
            previous=plan_from_schedules(schedules.values(), s.tick_hz),
            schedule_objects={o["metadata"]["name"]: o for o in kube.list_managed("GpuSchedule")},
            profiles=kube.list_profiles(),
            current=dict(self.objects),
            ready={u for units in list(self.pods.values()) for u in units},
            observed=self.observed,
            jobs=jobs,
            claims=claims,
            outcomes=calibration_outcomes(
                jobs.values(), kube.list_managed("Pod") if jobs else [], now
            ),
            reported=self.feed.reports() if self.feed else {},
            connected=self.feed.connected() if self.feed else frozenset(),
            awaiting=self.feed.awaiting(s.follow_settle_s) if self.feed else (frozenset(), None),
        )

    def _decide(self, snap: Snapshot, report: Report) -> Decision:
        """The plan and everything that follows from it, from the snapshot alone (and this
        controller's memory of what it wrote): no API call."""
        s, now, live = self.settings, snap.now, snap.live
        pinned, free_at = pinned_shards(snap.schedules.values(), now, s.retime_min_interval_s)
        written = written_contracts(snap.current.values())
        retiring = retiring_copies(written, snap.previous, live)
        measuring = running_calibrations(snap.jobs.values(), snap.outcomes, snap.cluster)
        result = plan(
            live,
            snap.cluster,
            snap.profiles,
            s.planner(),
            previous=snap.previous,
            pinned=pinned,
            retiring=retiring,
            calibrating=measuring,
        )
        if s.follow_arrivals:
            result = follow_plan(
                result,
                arrivals(snap.observed, live, snap.reported),
                pinned=pinned,
                retiring=retiring,
                awaiting=snap.awaiting[0],
                min_gain_s=s.follow_min_gain_ms / 1e3,
            )
        if free_at is not None and (result.unplaced or s.follow_arrivals):
            # A pinned shard may be re-timed then: to place a stream, or to follow a phase
            # that moved less than a jump while it was pinned (no report comes to say so).
            report.wake_after_s = max(0.0, (free_at - now).total_seconds())
        if s.follow_arrivals and snap.awaiting[1] is not None:  # then follow without it
            waits = [w for w in (report.wake_after_s, snap.awaiting[1]) if w is not None]
            report.wake_after_s = min(waits)
        desired = desired_state(
            live,
            result,
            snap.schedules,
            s,
            now,
            known={} if snap.full else self.fingerprints,
            context=_context(
                snap.signatures,
                snap.current,
                snap.ready,
                snap.observed,
                jobs=snap.jobs,
                outcomes=snap.outcomes,
            ),
            running=running_generations(snap.observed, live, snap.reported),
            retiring=retiring,
            contracts=contracts_in_place(written, snap.previous),
            connected=snap.connected,
        )
        calibration = calibration_state(live, result, snap.outcomes, s, now)
        recalibration = recalibration_state(
            snap.profiles, live, result, snap.outcomes, s, now=now, calibrating=measuring
        )
        named_jobs = {_named(j) for j in calibration.jobs}
        calibration.jobs += [j for j in recalibration.jobs if _named(j) not in named_jobs]
        named_claims = {_named(c) for c in calibration.claims}
        calibration.claims += [c for c in recalibration.claims if _named(c) not in named_claims]
        for named, status in calibration.statuses.items():
            if named not in desired.unchanged:
                desired.statuses[named] = status
        report.plan, report.moves = result, list(result.moves)
        report.calibrating = measuring
        report.streams, report.invalid = len(snap.streams), len(snap.invalid)
        report.targets = [
            (x.namespace, x.name, x.spec.fps, (x.spec.deadline_ms or 1e3 / x.spec.fps) / 1e3)
            for x in live
        ]
        report.placed = len({(p.namespace, p.stream) for p in result.shards})
        report.unplaced = len(result.unplaced)
        report.unchanged = len(desired.unchanged)
        left_alone = desired.frozen | {
            (ns, manifests.stream_label(name)) for ns, name in desired.unchanged
        }
        cluster = snap.cluster
        steps = rollout(
            desired.objects,
            snap.current,
            snap.ready,
            {manifests.gpu_label(n.name, g.index) for n in cluster.nodes for g in n.gpus},
            retiring_since=self.retiring,
            now=now,
            max_moves=s.max_moves,
            move_timeout_s=s.move_timeout_s,
            frozen=left_alone,
            priority={(x.namespace, manifests.stream_label(x.name)): x.spec.priority for x in live},
        )
        self.retiring = steps.retiring
        report.moving, report.waiting = len(steps.moving), len(steps.waiting)
        return Decision(result, desired, calibration, recalibration, steps)

    def _act(self, snap: Snapshot, decision: Decision, report: Report) -> None:
        """Write what the decision differs from the snapshot in, then statuses and Events."""
        s, kube, now, live = self.settings, self.kube, snap.now, snap.live
        result, desired, steps = decision.result, decision.desired, decision.steps
        current, observed, profiles = snap.current, snap.observed, snap.profiles
        assert self.objects is not None
        # The plan's record first (a restarted operator starts from it), then workloads:
        # created and updated before anything is deleted, so a moving shard's new copy
        # exists before its old one goes (which waits for the new pod; see rollout).
        current_sched = snap.schedule_objects
        wanted_sched = {o["metadata"]["name"]: o for o in desired.schedules}
        failed: dict[tuple[str, str], str] = {}  # (namespace, stream label): what failed
        for obj, outcome in self._each(
            lambda o: kube.apply(o, current_sched.get(o["metadata"]["name"])),
            [o for n, o in wanted_sched.items() if kube.differs(o, current_sched.get(n))],
        ):
            report.written += outcome is True
            if isinstance(outcome, ApiException):
                report.failed += 1
                log.error("cannot write %s: %s", obj["metadata"]["name"], _why(outcome))
        # Slot ConfigMaps first, each handed to the slot feed as soon as it is written: a
        # re-timing of sidecars on the feed switches effective_after_s after it was decided.
        writes = [o for o in steps.write if kube.differs(o, current.get(_key(o["kind"], o)))]
        writes.sort(key=lambda o: o["kind"] != "ConfigMap")
        for obj, outcome in self._each(
            lambda o: kube.apply(o, current.get(_key(o["kind"], o))), writes
        ):
            report.written += outcome is True
            if outcome is True:
                self.objects[_key(obj["kind"], obj)] = kube.as_written(obj)
                if self.feed is not None and obj["kind"] == "ConfigMap":
                    meta = obj["metadata"]
                    self.feed.update((meta["namespace"], meta["name"]), obj["data"])
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
                self.objects.pop(key, None)

        if self.feed is not None:  # only what the API has: the ConfigMap is the record
            self.feed.publish(
                {
                    (ns or "", name): o["data"]
                    for (kind, ns, name), o in self.objects.items()
                    if kind == "ConfigMap" and CONTRACT_FILE in (o.get("data") or {})
                }
            )

        # Statuses are computed here and only the changed ones are sent off.
        previous_sched = {
            name: (current_sched.get(name) or {}).get("status") for name in wanted_sched
        }
        all_sched = {
            name: schedule_status(obj, result, observed, now=now, previous=previous_sched[name])
            for name, obj in wanted_sched.items()
        }
        sched_statuses = [
            (name, status)
            for name, status in all_sched.items()
            if (current_sched.get(name) or {}).get("status") != status
        ]
        for (name, _), outcome in self._each(
            lambda x: kube.patch_status("GpuSchedule", None, *x), sched_statuses
        ):
            if isinstance(outcome, ApiException):
                log.warning("cannot write the status of %s: %s", name, _why(outcome))

        drifted = self._profile_statuses(profiles, wanted_sched, all_sched, result, now)
        report.profiles = [
            (
                p.name,
                p.spec.model,
                p.spec.gpu_product,
                str(p.spec.sharing_mode),
                p.spec.body_time_ms / 1e3,
                p.name in drifted,
            )
            for p in profiles
        ]
        self._calibrate(decision.calibration, snap.jobs, snap.claims, profiles, report)
        self._recalibrate(decision.recalibration, profiles, report, now)

        by_key = {(x.namespace, x.name): x for x in live}
        for named, warnings in decision.calibration.warnings.items():
            said = self._calibration_warned.get(named, ())
            self._calibration_warned[named] = warnings
            for warning in warnings:
                if warning not in said:  # once, not every reconcile
                    self._event(by_key[named], "Warning", "CalibrationWarning", warning, now)
        self._calibration_warned = {
            k: v for k, v in self._calibration_warned.items() if k in by_key
        }
        for named, warning in model_time_warnings(wanted_sched, current_sched, all_sched):
            if named in by_key:
                self._event(by_key[named], "Warning", "ModelTimeExceeded", warning, now)

        changed = []
        in_transition = {sid[:2] for sid in steps.moving | steps.waiting}
        for stream in live:
            named, label = (stream.namespace, stream.name), manifests.stream_label(stream.name)
            if named in desired.unchanged:
                continue
            if (stream.namespace, label) in failed or (stream.namespace, label) in in_transition:
                self.fingerprints.pop(named, None)  # not settled: rebuild next time
            else:
                self.fingerprints[named] = desired.fingerprints[named]
            status = desired.statuses[(stream.namespace, stream.name)]
            status = serving_status(status, stream, steps, observed, settings=s, now=now)
            problem = failed.get((stream.namespace, manifests.stream_label(stream.name)))
            if problem:
                status = write_failed_status(status, stream, problem, now)
            new = self._status_change(stream, status)
            if new is not None:
                changed.append((stream, new))
        for (stream, _), outcome in self._each(
            lambda x: self._write_status(x[0], x[1], now), changed
        ):
            if isinstance(outcome, ApiException):
                log.warning(
                    "cannot write the status of %s/%s: %s",
                    stream.namespace,
                    stream.name,
                    _why(outcome),
                )
            else:
                report.statuses += 1
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
        for bad in snap.invalid:
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
        self._retimed_events(
            result=result,
            previous=snap.previous,
            schedules=wanted_sched,
            streams=by_key,
            report=report,
            now=now,
        )

    def _retimed_events(
        self,
        *,
        result: Plan,
        previous: Plan,
        schedules: dict[str, Obj],
        streams: dict[tuple[str, str], InferenceStream],
        report: Report,
        now: datetime,
    ) -> None:
        """A Normal Event on each stream whose slot this plan re-timed: from what to what,
        from when, and which arrivals it made room for."""
        hz = self.settings.tick_hz
        before = {p.key: p for p in previous.shards}
        after = {p.key: p for p in result.shards}
        arrivals: dict[tuple[str, int], list[str]] = defaultdict(list)
        for p in result.shards:
            was = before.get(p.key)
            if was is None or (was.node, was.gpu) != (p.node, p.gpu):
                arrivals[(p.node, p.gpu)].append(f"{p.namespace}/{p.stream}")
        for key in result.offsets_changed:
            was, now_at = before[key], after[key]
            stream = streams.get(key[:2])
            if stream is None:
                continue
            report.retimed.append((*key, now_at.node, now_at.gpu))
            sched = schedules.get(manifests.schedule_name(now_at.node, now_at.gpu), {})
            effective = (sched.get("spec") or {}).get("effectiveAt", "the next switch")
            made_room = sorted(set(arrivals.get((now_at.node, now_at.gpu), [])))
            why = f" to make room for {', '.join(made_room)}" if made_room else ""
            self._event(
                stream,
                "Normal",
                "Retimed",
                (
                    f"shard {key[2]} on {now_at.node} GPU {now_at.gpu}: offset "
                    f"{ticks_to_ms(was.offset_ticks, hz):g} -> "
                    f"{ticks_to_ms(now_at.offset_ticks, hz):g} ms, period "
                    f"{ticks_to_ms(now_at.period_ticks, hz):g} ms, from {effective}{why}"
                ),
                now,
            )

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

    def pod_changed(self, namespace: str, name: str, pod: Obj | None) -> bool:
        """A pod's watch event (None: deleted); keeps readiness current between resyncs.
        True when the pod's readiness changed (pod status churns far more often)."""
        key = (namespace, name)
        before = self.pods.get(key)
        if pod is None:
            self.pods.pop(key, None)
            return bool(before)
        now = ready_units([pod])
        self.pods[key] = now
        return before != now

    def _parse(
        self, raw: list[Obj], signatures: dict[tuple[str, str], str]
    ) -> tuple[list[InferenceStream], list[InvalidObject]]:
        """Validated streams; one whose object has not changed is not validated again."""
        good: list[InferenceStream] = []
        fresh: list[Obj] = []
        parsed: dict[tuple[str, str], tuple[str, InferenceStream]] = {}
        for obj in raw:
            named = _named(obj)
            hit = self._parsed.get(named)
            if hit is not None and hit[0] == signatures[named]:
                good.append(hit[1])
                parsed[named] = hit
            else:
                fresh.append(obj)
        new, invalid = parse_streams(fresh)
        for stream in new:
            named = (stream.namespace, stream.name)
            parsed[named] = (signatures[named], stream)
        self._parsed = parsed
        return good + new, invalid

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

    @staticmethod
    def _status_change(stream: InferenceStream, status: Obj) -> InferenceStreamStatus | None:
        """The status to write, or None when the stream already has it."""
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
                return None
        return new

    def _calibrate(
        self,
        calibration: Calibration,
        jobs: dict[tuple[str, str], Obj],
        claims: dict[tuple[str, str], Obj],
        profiles: list[ModelProfile],
        report: Report,
    ) -> None:
        """Start the calibration Jobs wanted (under ``dra``, each GPU claim first), remove
        those no longer wanted with their claims, and write the ModelProfiles that finished
        Jobs measured (never over an existing one)."""
        kube = self.kube
        # the claims first: a Job's pod names its claim
        self._create_and_prune("ResourceClaim", calibration.claims, claims, report)
        self._create_and_prune("Job", calibration.jobs, jobs, report)
        existing = {p.name for p in profiles}
        for profile in calibration.profiles:
            if profile.name in existing:
                continue
            existing.add(profile.name)
            try:
                kube.apply(profile.to_wire(), None)
                report.written += 1
                log.info(
                    "calibrated",
                    extra={"profile": profile.name, "body_ms": profile.spec.body_time_ms},
                )
            except ApiException as e:
                report.failed += 1
                log.error("cannot write ModelProfile %s: %s", profile.name, _why(e))

    def _create_and_prune(
        self,
        kind: str,
        wanted: list[Obj],
        existing: dict[tuple[str, str], Obj],
        report: Report,
    ) -> None:
        """Create the calibration objects of ``kind`` wanted and missing; delete those no
        longer wanted. Each refusal is logged and counted; the others go on."""
        by_name = {_named(o): o for o in wanted}
        for key, obj in by_name.items():
            if key not in existing:
                try:
                    self.kube.apply(obj, None)
                    report.written += 1
                except ApiException as e:
                    report.failed += 1
                    log.error("cannot create calibration %s %s/%s: %s", kind, *key, _why(e))
        for key in existing.keys() - by_name.keys():
            try:
                self.kube.delete(kind, *key)
                report.deleted += 1
            except ApiException as e:
                log.error("cannot delete calibration %s %s/%s: %s", kind, *key, _why(e))

    def _recalibrate(
        self,
        recalibration: Recalibration,
        profiles: list[ModelProfile],
        report: Report,
        now: datetime,
    ) -> None:
        """Replace the profiles re-measured (dropping the annotation that asked for it), and
        say how each re-calibration goes, once per change, in Events on its profile."""
        by_name = {p.name: p for p in profiles}
        for measured in recalibration.profiles:
            old = by_name.get(measured.name)
            wire = measured.to_wire()
            wire["metadata"]["annotations"] = {RECALIBRATE: None}  # merge patch: remove
            try:
                self.kube.apply(wire, old.to_wire() if old else None)
                report.written += 1
            except ApiException as e:
                report.failed += 1
                log.error("cannot write ModelProfile %s: %s", measured.name, _why(e))
        for name, kind, reason, message in recalibration.events:
            if self._recalibration_said.get(name) == (reason, message) or name not in by_name:
                continue
            self._recalibration_said[name] = (reason, message)
            self._event(by_name[name], kind, reason, message, now)

    def _profile_statuses(
        self,
        profiles: list[ModelProfile],
        schedules: dict[str, Obj],
        statuses: dict[str, Obj],
        result: Plan,
        now: datetime,
    ) -> set[str]:
        """Measured body and drift on each ModelProfile; a Warning Event when one drifts.
        Returns the profiles that are drifted now."""
        measured = {
            (obj["spec"]["node"], obj["spec"]["gpuIndex"]): statuses[name]["measuredBodyMs"]
            for name, obj in schedules.items()
        }
        wanted = profile_statuses(profiles, measured, result.gpus, self.settings.drift_percent, now)
        by_name = {p.name: p for p in profiles}
        for name, status in wanted.items():
            profile = by_name[name]
            before = profile.status.to_wire() if profile.status else {}
            if before == status:
                continue
            try:
                self.kube.patch_status("ModelProfile", None, name, status)
            except ApiException as e:
                log.warning("cannot write the status of ModelProfile %s: %s", name, _why(e))
                continue
            was = next(
                (
                    c.status
                    for c in (profile.status.conditions if profile.status else [])
                    if c.type == "Drifted"
                ),
                None,
            )
            drifted = status["conditions"][0]
            if drifted["status"] == "True" and was != "True":
                self._event(profile, "Warning", "BodyDrift", drifted["message"], now)
        for name in drift_recalibrations(profiles, wanted, self.settings, now):
            profile = by_name[name]
            ask: Obj = {
                "apiVersion": API_VERSION,
                "kind": "ModelProfile",
                "metadata": {"name": name, "annotations": {RECALIBRATE: "drift"}},
            }
            try:
                self.kube.apply(ask, profile.to_wire())
            except ApiException as e:
                log.warning("cannot ask to re-calibrate ModelProfile %s: %s", name, _why(e))
        return {
            p.name
            for p in profiles
            if any(
                c["type"] == "Drifted" and c["status"] == "True"
                for c in (
                    wanted[p.name]["conditions"]
                    if p.name in wanted
                    else [c.to_wire() for c in (p.status.conditions if p.status else [])]
                )
            )
        }

    def _write_status(
        self, stream: InferenceStream, new: InferenceStreamStatus, now: datetime
    ) -> None:
        old = stream.status
        self.kube.patch_status("InferenceStream", stream.namespace, stream.name, new.to_wire())
        if old is None or old.phase != new.phase:
            kind = (
                "Warning"
                if new.phase in (StreamPhase.UNSCHEDULABLE, StreamPhase.PENDING)
                else "Normal"
            )
            self._event(stream, kind, new.phase.value, new.message, now)

    def _event(
        self,
        obj: InferenceStream | ModelProfile,
        kind: str,
        reason: str,
        message: str,
        now: datetime,
    ) -> None:
        """An Event about a stream (in its namespace) or a profile (cluster-scoped: in
        ``default``)."""
        namespace = obj.metadata.namespace
        involved = {
            "apiVersion": API_VERSION,
            "kind": obj.KIND,
            "name": obj.name,
            "namespace": namespace,
            "uid": obj.metadata.uid,
        }
        self._object_event(
            involved, namespace or "default", kind=kind, reason=reason, message=message, now=now
        )

    def _object_event(
        self,
        involved: Obj,
        namespace: str,
        *,
        kind: str,
        reason: str,
        message: str,
        now: datetime,
    ) -> None:
        """An Event about ``involved`` (cluster-scoped objects' events go to ``default``)."""
        stamp = now.isoformat().replace("+00:00", "Z")
        suffix = hashlib.sha256(f"{reason}{message}{stamp}".encode()).hexdigest()[:10]
        self.kube.create_event(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{involved['name']}.{suffix}", "namespace": namespace},
                "involvedObject": {k: v for k, v in involved.items() if v is not None},
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


def _named(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def _signature(obj: Obj) -> str:
    """What a stream's outputs depend on in its object (the rest is the API's bookkeeping)."""
    meta = obj["metadata"]
    return repr(
        (
            meta.get("uid"),
            meta.get("generation"),
            meta.get("deletionTimestamp"),
            obj.get("spec"),
            obj.get("status"),
        )
    )


def _context(
    signatures: dict[tuple[str, str], str],
    current: dict[Key, Obj],
    ready: set[Unit],
    observed: dict[ShardId, Observation],
    *,
    jobs: dict[tuple[str, str], Obj],
    outcomes: dict[tuple[str, str], CalibrationOutcome],
) -> dict[tuple[str, str], Hashable]:
    """Per (namespace, stream label): what this reconcile saw of the stream (its spec and
    status as listed), its objects, Ready pods and measurements; part of its fingerprint
    (see ``desired_state``)."""
    seen: dict[tuple[str, str], list[Hashable]] = defaultdict(list)
    for (namespace, name), signature in signatures.items():
        seen[(namespace, manifests.stream_label(name))].append(("stream", signature))
    for key, obj in current.items():
        u = unit_of(obj)
        if u is not None:
            seen[u[:2]].append(("object", *key))
    for u in ready:
        seen[u[:2]].append(("ready", *u))
    for sid, o in observed.items():
        seen[sid[:2]].append(("observed", sid[2], o.at))
    for named, job in jobs.items():  # a calibration Job's outcome, on the stream it names
        label = (job["metadata"].get("labels") or {}).get(manifests.LABEL_STREAM)
        if label is not None:
            outcome = repr(outcomes.get(named))
            seen[(named[0], label)].append(("calibration", named[1], outcome))
    return {k: tuple(sorted(v, key=repr)) for k, v in seen.items()}


def _per_shard(
    observed: dict[ShardId, Observation], streams: Iterable[InferenceStream]
) -> Iterable[tuple[ShardKey, Observation]]:
    """The sidecars' observations keyed by the shards of the streams listed (the metrics
    name a stream by its label, which may be shortened)."""
    names = {(s.namespace, manifests.stream_label(s.name)): s.name for s in streams}
    for (namespace, label, shard), o in observed.items():
        name = names.get((namespace, label))
        if name is not None and shard.isdigit():
            yield (namespace, name, int(shard)), o


def arrivals(
    observed: dict[ShardId, Observation],
    streams: Iterable[InferenceStream],
    reported: Mapping[ShardKey, FeedReport] | None = None,
) -> dict[ShardKey, tuple[float, float]]:
    """Per shard, where its requests arrive (phase and spread, from its GPU's epoch), as
    its sidecar last said: over the slot feed where it is connected (``reported``), else in
    its metrics. Only the shards whose arrivals are periodic."""
    out = {
        key: (o.arrival_phase_s, o.arrival_spread_s)
        for key, o in _per_shard(observed, streams)
        if o.arrival_phase_s is not None and o.arrival_spread_s is not None
    }
    for key, r in (reported or {}).items():
        if r.arrival is None:
            out.pop(key, None)
        else:
            out[key] = r.arrival
    return out


def running_generations(
    observed: dict[ShardId, Observation],
    streams: Iterable[InferenceStream],
    reported: Mapping[ShardKey, FeedReport] | None = None,
) -> dict[ShardKey, int]:
    """Per shard, the generation of the slot contract its sidecar last said is in force
    (over the slot feed where it is connected, else in its metrics)."""
    out = {
        key: o.generation for key, o in _per_shard(observed, streams) if o.generation is not None
    }
    out |= {k: r.generation for k, r in (reported or {}).items() if r.generation is not None}
    return out
