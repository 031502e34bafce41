"""What each object's status says: streams (placed, serving, unschedulable, why),
GpuSchedules and ModelProfiles. Pure: the caller writes them."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from stagger.core.api import (
    InferenceStream,
    ModelProfile,
    SharingMode,
    StreamPhase,
)
from stagger.core.placement import GpuUsage, Plan, ShardPlacement
from stagger.core.placement.overlap import MODEL_TIME_SHARE_LIMIT
from stagger.core.timebase import TICK_HZ, ticks_to_ms
from stagger_operator import manifests
from stagger_operator.observe import Observation
from stagger_operator.rollout import Rollout
from stagger_operator.settings import OperatorSettings

Obj = dict[str, Any]


def stream_status(
    stream: InferenceStream,
    shards: Sequence[ShardPlacement],
    phase: StreamPhase,
    message: str,
    now: datetime,
    *,
    reason: str | None = None,
    tick_hz: int = TICK_HZ,
    slots_from: Mapping[int, datetime] | None = None,
) -> Obj:
    """The status subresource of one stream (conditions Placed and Ready). ``slots_from``:
    per shard index, when its first slot starts, where that lies ahead (it joined by
    re-timing its GPU)."""
    placed = phase in (StreamPhase.PLACED, StreamPhase.RUNNING)
    hz = tick_hz
    first = shards[0] if shards else None
    extra = f",+{len(shards) - 1}" if len(shards) > 1 else ""
    condition_reason = reason or ("Placed" if placed else "Unschedulable")
    starts = slots_from or {}
    waits_ms = {
        p.shard: round(ticks_to_ms(w, hz), 3)
        for p in shards
        if (w := p.slot_wait_ticks) is not None
    }
    if placed and not message:
        message = f"placed on {len(shards)} shard(s)" + _slots_ahead(starts.values(), now)
    if placed:
        message += _past_max_wait(stream, waits_ms.values())
    return {
        "phase": phase.value,
        "message": message,
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
                "reservedMs": round(ticks_to_ms(p.body_ticks, hz), 3),
                **({"slotsFrom": _timestamp(starts[p.shard])} if p.shard in starts else {}),
                **({"slotWaitMs": waits_ms[p.shard]} if p.shard in waits_ms else {}),
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


def _past_max_wait(stream: InferenceStream, waits_ms: Iterable[float]) -> str:
    """What a message adds where a followed slot waits longer than the stream's
    ``gate.maxWaitMs``: its gate then sends every frame at once, ungated, into the other
    streams' slots (run 117: 4 of 8 streams did, and the GPU answered at 1.10 x the p99)."""
    bound = stream.spec.gate.max_wait_ms
    longest = max(waits_ms, default=None)
    if bound is None or longest is None or longest <= bound:
        return ""
    return (
        f"; its slot follows its frames {longest:.1f} ms after they arrive, "
        f"longer than gate.maxWaitMs ({bound:g}): every frame goes at once, ungated, into "
        "the other streams' slots (raise or unset maxWaitMs)"
    )


def _timestamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _slots_ahead(starts: Iterable[datetime], now: datetime) -> str:
    """What a message adds while a shard's first slot lies ahead: its GPU takes the table
    it joined then (a re-timing's, once every sidecar there can have read it)."""
    ahead = [t for t in starts if t > now]
    if not ahead:
        return ""
    return (
        f"; slots start at {_timestamp(max(ahead))}, when its GPU's new slot table takes over "
        "(its sidecar refuses requests until then)"
    )


def _stamp(now: datetime) -> str:
    """A condition's transition time as the API writes it: whole seconds, UTC as Z."""
    return now.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _condition(
    stream: InferenceStream, kind: str, true: bool, reason: str, *, message: str, now: datetime
) -> Obj:
    generation = stream.metadata.generation
    return {
        "type": kind,
        "status": "True" if true else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _stamp(now),
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
    message += _slots_ahead(
        (datetime.fromisoformat(s["slotsFrom"]) for s in status["shards"] if "slotsFrom" in s),
        now,
    )
    message += _past_max_wait(
        stream, (s["slotWaitMs"] for s in status["shards"] if "slotWaitMs" in s)
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
    *,
    now: datetime,
    previous: Obj | None = None,
) -> Obj:
    """A GpuSchedule's status: what the plan reserves on the GPU, how much its calibrated
    bodies overlap, the share of each second its models need one at a time (and the
    ``ModelTimeFits`` condition), and what its shards' sidecars measured (body time per
    model, slot misses in the last scrape window). ``previous``: the status it has now,
    whose conditions keep their transition times while they hold."""
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
        "bodyOverlapMsPerSecond": usage.overlap_ms_per_s if usage else 0.0,
        **(
            {"modelTimeShare": usage.model_time_share}
            if usage and usage.model_time_share is not None
            else {}
        ),
        "conditions": _model_time_conditions(usage, previous, now),
    }


def _model_time_conditions(
    usage: GpuUsage | None, previous: Obj | None, now: datetime
) -> list[Obj]:
    """``ModelTimeFits`` where bodies take turns: True while the models need at most
    ``MODEL_TIME_SHARE_LIMIT`` (the whole) of each second one at a time, False above it
    (their bodies must overlap: the tail turns), Unknown where a model has no measured solo
    compute. None under MPS, where bodies run side by side, or on an empty GPU."""
    if usage is None or usage.shards == 0 or usage.sharing_mode == str(SharingMode.MPS):
        return []
    share = usage.model_time_share
    if share is None:
        status, reason = "Unknown", "SoloComputeNotMeasured"
        message = (
            "not every stream on this GPU has a ModelProfile with soloComputeMs (calibration "
            "measures it; bodies set by hand have none): re-calibrate a profile from before "
            "it (annotation stagger.dev/recalibrate) to know whether their bodies can run apart"
        )
    elif share <= MODEL_TIME_SHARE_LIMIT:
        status, reason = "True", "BodiesRunApart"
        message = (
            f"the models need {share:.2f} of each second one at a time "
            "(at most the whole second: their bodies can run apart)"
        )
    else:
        status, reason = "False", "ModelTimeFillsPeriod"
        message = (
            f"the models need {share:.2f} of each second one at a time, more than the whole "
            "second: their bodies must overlap and frames answer later (recorded: p99 "
            "2.3-2.9 x solo, no frame lost). To trade a stream for the tail, set the "
            "operator's chargeModelTime"
        )
    was = next(
        (c for c in (previous or {}).get("conditions") or [] if c.get("type") == "ModelTimeFits"),
        None,
    )
    since = (
        was["lastTransitionTime"]
        if was is not None and was.get("status") == status and was.get("lastTransitionTime")
        else _stamp(now)
    )
    return [
        {
            "type": "ModelTimeFits",
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }
    ]


def model_time_warnings(
    schedules: Mapping[str, Obj],
    current: Mapping[str, Obj | None],
    statuses: Mapping[str, Obj],
) -> list[tuple[tuple[str, str], str]]:
    """Per stream (namespace, name), the Warning its owner gets, naming the GPU, where its
    GPU's ``ModelTimeFits`` is False (``statuses``, about to be written) and the stream was
    not on it while it was False already (``current``: the GpuSchedules as the API has
    them). So each stream is told once per turn, a stream that joins such a GPU is told
    too, and a restarted operator tells nobody twice: the written objects remember."""
    out: list[tuple[tuple[str, str], str]] = []
    for name, status in sorted(statuses.items()):
        if _model_time_status(status) != "False":
            continue
        spec = schedules[name]["spec"]
        before = current.get(name) or {}
        told = (
            _streams_of(before.get("spec") or {})
            if _model_time_status(before.get("status")) == "False"
            else set()
        )
        message = next(c["message"] for c in status["conditions"] if c["type"] == "ModelTimeFits")
        where = f"GPU {spec['gpuIndex']} of {spec['node']}"
        out += [(s, f"{where}: {message}") for s in sorted(_streams_of(spec) - told)]
    return out


def _streams_of(spec: Obj) -> set[tuple[str, str]]:
    return {(s["namespace"], s["stream"]) for s in spec.get("slots") or []}


def _model_time_status(status: Obj | None) -> str | None:
    return next(
        (
            c.get("status")
            for c in (status or {}).get("conditions") or []
            if c.get("type") == "ModelTimeFits"
        ),
        None,
    )


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
