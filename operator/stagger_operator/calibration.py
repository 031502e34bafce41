"""Calibration as the operator runs it: which models need a calibration Job, what a
finished Job reported, when a measured body has drifted from its profile. Pure: the
caller reads Jobs and pods and writes profiles."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stagger.core.api import (
    InferenceStream,
    ModelProfile,
    SharingMode,
    StreamPhase,
)
from stagger.core.calibration import CalibrationResult, model_profile
from stagger.core.cluster import Cluster
from stagger.core.placement import Plan, RunningCalibration
from stagger_operator import manifests
from stagger_operator.settings import OperatorSettings
from stagger_operator.status import stream_status

Obj = dict[str, Any]


@dataclass(frozen=True)
class CalibrationOutcome:
    """What a calibration Job came to: a result, a failure, or neither yet (running)."""

    result: CalibrationResult | None = None
    failure: str | None = None
    podless_s: float | None = None
    """Running with no pod yet, this long after the Job was created (None: it has one, or
    its age is not known)."""
    pod: str = ""
    """Its running pod's name ("" where it has none)."""
    restarted: tuple[str, ...] = ()
    """Its Triton containers that have restarted: their server exited, most often because
    the model did not load."""

    def progress(self, job: Obj) -> str:
        """What a running Job's stream is told beside "measuring": where to look when it has
        no pod, or when its servers restart (the profiler would wait for them until its
        deadline, up to 15 minutes, before it says so)."""
        return self.waiting_for_pod(job) or self.servers_restarting(job)

    def servers_restarting(self, job: Obj) -> str:
        """For a Job some of whose Triton servers restarted: which, and where to read why."""
        if not self.restarted:
            return ""
        ns = job["metadata"].get("namespace") or ""
        return (
            f"; {len(self.restarted)} of its Triton servers restarted ({', '.join(self.restarted)})"
            f": kubectl logs -n {ns} {self.pod} -c {self.restarted[0]} --previous says why (out "
            'of GPU memory: raise the stream\'s memoryMiB; under MPS "busy or unavailable": '
            "lower the operator's mpsServersPerGpu)"
        )

    def waiting_for_pod(self, job: Obj) -> str:
        """For a Job that created no pod for ``NO_POD_S``: where to look, else nothing. An
        admission that refuses its pod (a LimitRange's min against its copies' zero
        requests, a ResourceQuota, Pod Security) shows only in the Job's events, and the Job
        would otherwise wait out its deadline with "measuring"."""
        if self.podless_s is None or self.podless_s < NO_POD_S:
            return ""
        ns, name = job["metadata"].get("namespace") or "", job["metadata"]["name"]
        return (
            f"; it has created no pod in {self.podless_s:.0f} s: kubectl describe job -n {ns} "
            f"{name} says why (a LimitRange's min, a ResourceQuota, Pod Security admission)"
        )


NO_POD_S = 60.0
"""A calibration Job with no pod this long after its creation is told apart: the Job
controller creates its pod within seconds unless admission refuses it."""


@dataclass
class Calibration:
    jobs: list[Obj] = field(default_factory=list)
    claims: list[Obj] = field(default_factory=list)
    """Under ``dra``, each Job's GPU claim (created before the Job, deleted with it)."""
    statuses: dict[tuple[str, str], Obj] = field(default_factory=dict)
    profiles: list[ModelProfile] = field(default_factory=list)
    warnings: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """Per stream, what its calibration warned of: one Warning Event on the stream each."""


WARNED_CHARS = 800  # with its prefix, under the 1 KiB events.k8s.io allows a note


def clipped(text: str, limit: int = WARNED_CHARS) -> str:
    """``text`` within ``limit`` characters, saying so where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def warned(result: CalibrationResult) -> str:
    """What ``stagger profile`` warned of in a finished Job, as one message ("" for none)."""
    return clipped("; ".join(result.warnings))


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
            site.node,
            site.gpu,
            site.gpu_uuid,
            site.product,
            SharingMode(site.sharing_mode),
            site.memory_free_mib,
            site.servers,
        )
        model = stream.spec.model
        where = f"model {model} on {site.product} ({site.sharing_mode})"
        try:
            job = manifests.calibration_job(stream, target, settings)
            claims = _claims(stream, target, settings)
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
            out.claims += claims
        outcome = outcomes.get((u.namespace, name), CalibrationOutcome())
        phase, reason = StreamPhase.CALIBRATING, "Calibrating"
        if outcome.result is not None:
            profile = model_profile(outcome.result, site.product, target.sharing_mode, now)
            out.profiles.append(profile)
            message = (
                f"measured {where}: body {outcome.result.body_time_ms:g} ms; writing "
                f"ModelProfile {profile.name}"
            )
            if outcome.result.warnings:
                # one Event each: joined, three (a stall, an unsteady body, slow at full
                # load) pass the WARNED_CHARS kept of a note, and the last one's advice,
                # at its end, was cut
                out.warnings[(u.namespace, u.stream)] = tuple(
                    f"calibration of {where}: {clipped(w)}" for w in outcome.result.warnings
                )
        elif outcome.failure is not None:
            phase, reason = StreamPhase.PENDING, "CalibrationFailed"
            message = (
                f"calibration of {where} with {_servers(job)} failed: {outcome.failure}."
                f"{what_to_change(outcome.failure)} It runs again when Job "
                f"{u.namespace}/{name} is gone (kubectl delete job -n {u.namespace} {name}), "
                "or set spec.bodyTimeMs"
            )
        else:
            message = (
                f"measuring the body time of {where} on node {site.node} GPU {site.gpu} with "
                f"{_servers(job)}: Job {name}" + outcome.progress(job)
            )
        out.statuses[(u.namespace, u.stream)] = stream_status(
            stream, [], phase, message, now, reason=reason, tick_hz=settings.tick_hz
        )
    return out


NOT_LOADED = re.compile(r"(\d+) of (\d+) servers did not have model .* ready within")
"""How ``stagger profile --wait-ready`` names servers that never loaded the model."""


def what_to_change(failure: str) -> str:
    """Where some of a Job's copies of Triton loaded the model and others did not, the
    likely cause is the GPU (its memory, or a share another tenant took): what to change.
    The profiler names the servers; the way out is the operator's or the stream's."""
    m = NOT_LOADED.search(failure)
    if m is None or int(m.group(1)) >= int(m.group(2)):
        return ""
    return (
        " Copies that never loaded may not fit the GPU: raise the stream's memoryMiB to what "
        "one server takes (fewer copies then run), or lower the operator's calibrationServers."
    )


def _servers(job: Obj) -> str:
    """How many Triton servers a calibration Job measures with, as its annotation says."""
    return str(job["metadata"]["annotations"][manifests.ANNOTATION_CALIBRATION_SERVERS])


RECALIBRATE = "stagger.dev/recalibrate"
"""Annotation on a ModelProfile: measure it again (any value; the operator sets "drift")."""


@dataclass
class Recalibration:
    jobs: list[Obj] = field(default_factory=list)
    claims: list[Obj] = field(default_factory=list)  # as Calibration's
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
    calibrating: Sequence[RunningCalibration] = (),
) -> Recalibration:
    """ModelProfiles annotated ``stagger.dev/recalibrate``: a calibration Job each, on the
    least used GPU of the profile's product and sharing mode (an idle one when there is
    one; one no other calibration measures where there is one), with the pod template of a
    stream of the model (first by namespace and name); a Job already measuring the model
    keeps its GPU (``calibrating``), as a new GPU would start it again. A finished Job's
    measurement replaces the profile's spec under the same name."""
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
        measuring = {(r.node, r.gpu) for r in calibrating}
        gpu = min(
            gpus,
            key=lambda g: (
                RunningCalibration(g.node, g.gpu, spec.model) not in calibrating,
                (g.node, g.gpu) in measuring,
                g.utilization,
                g.shards,
            ),
        )
        target = manifests.CalibrationTarget(
            gpu.node,
            gpu.gpu,
            gpu.uuid,
            gpu.product,
            SharingMode(gpu.sharing_mode),
            gpu.memory_total_mib - gpu.memory_mib,
            gpu.shards,
        )
        try:
            job = manifests.calibration_job(stream, target, settings)
            claims = _claims(stream, target, settings)
        except manifests.TemplateError as e:
            out.events.append(
                (profile.name, "Warning", "RecalibrationBlocked", f"cannot re-calibrate: {e}")
            )
            continue
        out.jobs.append(job)
        out.claims += claims
        name = job["metadata"]["name"]
        outcome = outcomes.get((stream.namespace, name), CalibrationOutcome())
        if outcome.result is not None:
            measured = model_profile(outcome.result, gpu.product, target.sharing_mode, now)
            measured.metadata.name = profile.name
            out.profiles.append(measured)
            warning = warned(outcome.result)
            out.events.append(
                (
                    profile.name,
                    "Warning" if warning else "Normal",
                    "Recalibrated",
                    f"body {spec.body_time_ms:g} -> {outcome.result.body_time_ms:g} ms "
                    f"(Job {stream.namespace}/{name} on node {gpu.node} GPU {gpu.gpu})"
                    + (f"; stagger profile warned: {warning}" if warning else ""),
                )
            )
        elif outcome.failure is not None:
            out.events.append(
                (
                    profile.name,
                    "Warning",
                    "RecalibrationFailed",
                    f"measuring with {_servers(job)} failed: {outcome.failure}."
                    f"{what_to_change(outcome.failure)} Delete Job "
                    f"{stream.namespace}/{name} to try again, "
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
                    f"{gpu.gpu} with {_servers(job)}, with the pod template of "
                    f"{stream.namespace}/{stream.name}" + outcome.progress(job),
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
    jobs: Iterable[Obj], pods: Iterable[Obj], now: datetime | None = None
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
        out[key] = _outcome(job, by_job.get(key, []), now)
    return out


def _claims(
    stream: InferenceStream, target: manifests.CalibrationTarget, settings: OperatorSettings
) -> list[Obj]:
    """The calibration Job's GPU claim, where the binding is ``dra``."""
    if settings.gpu_binding != "dra":
        return []
    return [manifests.calibration_claim(stream, target, settings)]


def calibration_objects(managed: Iterable[Obj], namespaces: Sequence[str]) -> list[Obj]:
    """The operator's calibration objects (its Jobs, or under ``dra`` their GPU claims)
    among its managed objects of one kind, in the namespaces it watches (all where
    ``namespaces`` is empty)."""
    return [
        o
        for o in managed
        if is_calibration(o) and (not namespaces or o["metadata"].get("namespace") in namespaces)
    ]


def is_calibration(obj: Obj) -> bool:
    """A calibration Job's object (the Job, or its GPU claim), not a shard's."""
    return manifests.LABEL_CALIBRATION in (obj["metadata"].get("labels") or {})


def running_calibrations(
    jobs: Iterable[Obj],
    outcomes: Mapping[tuple[str, str], CalibrationOutcome],
    cluster: Cluster,
) -> tuple[RunningCalibration, ...]:
    """The calibration Jobs still measuring, and the GPU each measures (from its labels):
    the planner keeps new streams off those GPUs until they end. A Job with a result or a
    failure no longer loads its GPU, nor one with no pod ``NO_POD_S`` after its creation
    (admission refused it: its stream's message says so), nor one whose GPU is not in the
    cluster."""
    gpus = {
        manifests.gpu_label(n.name, g.index): (n.name, g.index)
        for n in cluster.nodes
        for g in n.gpus
    }
    out = []
    for job in jobs:
        meta = job["metadata"]
        outcome = outcomes.get((meta.get("namespace") or "", meta["name"]), CalibrationOutcome())
        where = gpus.get((meta.get("labels") or {}).get(manifests.LABEL_GPU, ""))
        model = (meta.get("annotations") or {}).get(manifests.ANNOTATION_CALIBRATION_MODEL)
        podless = outcome.podless_s is not None and outcome.podless_s >= NO_POD_S
        if outcome.result is None and outcome.failure is None and not podless and where and model:
            out.append(RunningCalibration(*where, model))
    return tuple(sorted(out, key=lambda r: (r.node, r.gpu, r.model)))


def _outcome(job: Obj, pods: list[Obj], now: datetime | None) -> CalibrationOutcome:
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
    created = job["metadata"].get("creationTimestamp")
    if not pods and now is not None and created:
        try:
            born = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        except ValueError:  # not the API server's RFC 3339: no age, no hint
            return CalibrationOutcome()
        return CalibrationOutcome(podless_s=max(0.0, (now - born).total_seconds()))
    return _running(pods)  # running, or retrying after a failed pod


def _running(pods: list[Obj]) -> CalibrationOutcome:
    """A running Job's pod, with the Triton containers (native sidecars: init containers
    that keep running) that have restarted."""
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "Pending", "Running"):
            continue  # a failed pod the Job retries with another
        restarted = tuple(
            str(c.get("name"))
            for c in status.get("initContainerStatuses") or []
            if int(c.get("restartCount") or 0) > 0
        )
        return CalibrationOutcome(pod=str(pod["metadata"].get("name") or ""), restarted=restarted)
    return CalibrationOutcome()
