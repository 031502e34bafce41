"""The product's own loop on one GPU: calibrate → plan → gate, as a user runs it.

    python3 -m bench.gpu.loop --out OUT --mode time-slicing --bodies eager graph --servers 10
    python3 -m bench.gpu.loop --out OUT --mode mps --mixed --servers 16

Nothing here sets a slot by hand. Per setting (sharing mode × body):

1. ``--servers`` tritonservers on the GPU, one per stream as the operator deploys them, each
   serving the setting's model(s) with one instance;
2. ``stagger profile`` (:func:`stagger.profiler.profile`) against all of them: the sweep on
   the first two, saturation with its clients spread over every server, so ``costMs`` is
   measured at the concurrency the GPU will really have; the result becomes a ModelProfile
   exactly as a calibration Job's does (:func:`stagger.core.calibration.model_profile`);
3. streams applied one at a time, each a re-plan of everything applied so far on the
   previous plan (the operator's path on a create event, :func:`stagger.core.placement.plan`
   with ``previous``), on a one-GPU cluster, until the planner refuses one: ``admitted``;
4. each admitted stream's slot contract from the plan (:meth:`SlotAssignment.for_shard`, what
   the operator mounts), its own sidecar with it, and its camera capturing on its slot
   through the sidecar (``SlotClient``, the app side's integration): the ``loop``;
5. beside it, in the same run and on the same servers: random phases straight to Triton at
   the admitted N and one above it (what the GPU holds with no product; fewer while none of
   those held, more while all did: :func:`next_random_n`), one stream alone
   (solo), and every server's camera back to back (saturation);
6. apps that know nothing of Stagger (``transparent``): cameras at random phases through the
   same sidecars, the slots following them at the operator's pace and with its rules
   (:class:`LocalFollower`); again at random phases' largest 0-drop N where that is fewer
   (``transparentAtRandomN``), and with ``--transparent-packed``, at that N once more with
   the followed slots packed at their reserved width, as the operator's follower did before
   run 104 (``transparentPacked``, for comparison; skipped where the operator keeps no
   spacing, :func:`stagger.core.phase.follow_spacing`, and the table is the same); with
   ``--transparent-unmarked``, at the admitted N right after transparent mode there, with
   contracts that do not say which arrivals their slots follow, every gate holding by its
   measured answers alone, as before run 109 (``transparentUnmarked``, for comparison:
   the GPU is fullest there); with ``--transparent-open``, at the admitted N, the same
   cameras through sidecars whose gates hold nothing (a slot every microsecond, no
   follower: ``transparentOpen``, for comparison: what the way through the sidecar costs
   by itself, apart from what holding for a slot gains); with ``--transparent-max-wait
   MS``, at the admitted N with every stream's ``gate.maxWaitMs`` at MS
   (``transparentMaxWait``, for comparison); with ``--transparent-searched``, at the
   admitted N with the table the simulator finds best for the same cameras, bodies allowed
   to overlap (``transparentSearched``, set by hand, for comparison: whether what the
   simulator says of overlap under MPS holds on the GPU); with ``--phase-draws K``, at the N
   transparent mode is judged at, on K - 1 more draws of camera phases, each beside random
   phases at the same draw (``phaseDraws``, :func:`phase_draws`).

The identical workload is N RetinaNet streams at ``--fps``; ``--mixed`` is a fleet of two
models (RetinaNet at 800 px and the same detector at 416 px, a lighter one) at several
frame rates on one GPU, applied in a fixed order. Targets (:func:`bench.gpu.targets.loop_verdict`)
are judged on the run's own results and saved with them (``admitted``, each target's
``met``). A dry run on a CPU machine uses examples/03's stand-in model (its body holds a lock
all servers share: an exclusive body).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.gpu.calibrate import MODELS, NUMPY_DIR_ENV, gpu_memory_mib, gpu_name, mps, write_frame
from bench.gpu.operator_job import build_job, gpu_memory_free_mib, run_job
from bench.gpu.streams import (
    NO_MPS,
    SATURATION_S,
    SOLO_S,
    START_MARGIN_S,
    log,
    model_env,
    pooled,
    run_cameras,
    servers_down,
)
from bench.gpu.targets import loop_verdict, render_loop
from bench.gpu.waits import bench_phases, table_waits_ms
from bench.simulator import follow as simulated_follow
from stagger.core.api import InferenceStream, InferenceStreamSpec, ModelProfile, SharingMode
from stagger.core.calibration import NoKnee, SweepPoint, model_profile
from stagger.core.cluster import Cluster, Gpu, Node
from stagger.core.contract import SlotAssignment
from stagger.core.phase import quiet_after_s
from stagger.core.placement import Plan, PlannerSettings, plan
from stagger.core.placement.overlap import body_ticks, overlap_ms_per_frame
from stagger.core.telemetry import GATE_WAIT, LATE, RELEASE_LAG
from stagger.profile_cmd import calibration_result
from stagger.profiler import FULL_LOAD_S, Endpoint, ProfileReport, full_load, profile
from stagger_testkit.camerasim import frames_due, lost_frames, phases, stalls
from stagger_testkit.localtriton import (
    LocalFollower,
    LocalSidecar,
    LocalTriton,
    stream_follow_holds,
    stream_follow_spacing,
)

BODIES = {
    # name in the repository: parameters set in the detector's config
    "eager": {"CUDA_GRAPHS": "0"},
    "graph": {"CUDA_GRAPHS": "1"},
    "small": {"CUDA_GRAPHS": "1", "MIN_SIZE": "416"},  # the lighter detector
}
MIXED = [("graph", 10.0), ("small", 15.0), ("graph", 5.0), ("small", 30.0), ("graph", 15.0)]
"""The mixed fleet's streams, applied in this order, round and round."""
DRY_RUN_GPU_MEMORY_MIB = 143_771  # an H200's
SETTLE_S = 10.0
"""Transparent mode: the slots have this long to follow the cameras (issue 21's bound)
before the frames that count."""
RANDOM_ABOVE = 1
"""Random phases are also measured at this many streams above the admitted N: where the GPU
stops holding them with no product."""
RANDOM_BELOW = 2
"""Where random phases lose frames already at the admitted N, they are measured at up to
this many streams fewer, until an N holds: the targets name random phases' largest 0-drop
N, which runs 51, 54, 56 and 57 left unmeasured."""


def next_random_n(drops: Mapping[int, float], admitted: int, servers: int) -> int | None:
    """The next N to measure random phases at, given their drop percentages so far by N
    (None: enough). First the admitted N and ``RANDOM_ABOVE`` more; then, while no N
    measured held with 0 drops, one fewer than the fewest measured (at most
    ``RANDOM_BELOW`` under the admitted N); while every N measured held, one more than the
    most, up to the servers there are. So random's largest 0-drop N is known, or bounded
    where the servers or the bound run out."""
    first = range(max(1, admitted), min(servers, admitted + RANDOM_ABOVE) + 1)
    for n in first:
        if n not in drops:
            return n
    if not drops:
        return None
    if all(d > 0 for d in drops.values()):
        below = min(drops) - 1
        return below if below >= max(1, admitted - RANDOM_BELOW) else None
    if all(d == 0 for d in drops.values()):
        above = max(drops) + 1
        return above if above <= servers else None
    return None


def transparent_again_at(drops: Mapping[int, float], admitted: int) -> int | None:
    """Where transparent mode is measured a second time: at random phases' largest 0-drop N
    when that is below the admitted N (issue 21 compares the two at that N, with the same
    cameras); None where random held the admitted N (the first measurement is at it) or
    held no N measured."""
    held = [n for n, d in drops.items() if d == 0]
    largest = max(held, default=0)
    return largest if 0 < largest < admitted else None


def repository(root: Path, models: Path, bodies: list[str]) -> Path:
    """One model per body, each a copy of ``models/detector`` with one instance (each stream
    has its own server) and the body's parameters. A parameter the model does not have is
    an error (a stand-in has no CUDA graph to turn on), not a silently eager run."""
    repo = root / "models"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    source = models / "detector"
    for body in bodies:
        target = repo / body
        shutil.copytree(source, target)
        config = target / "config.pbtxt"
        text = re.sub(r"count: \d+", "count: 1", config.read_text())
        for key, value in BODIES[body].items():
            pattern = rf'(key: "{key}", value: \{{ string_value: )"[^"]*"'
            text, found = re.subn(pattern, rf'\1"{value}"', text)
            if not found and not (key == "CUDA_GRAPHS" and value == "0"):
                raise ValueError(f"{source}: no {key} parameter for the {body!r} body")
        config.write_text(text)
    return repo


def make_servers(k: int, gpu: int, root: Path, repo: Path, under_mps: bool) -> list[LocalTriton]:
    paths = sysconfig.get_paths()
    numpy_dir = [os.environ[NUMPY_DIR_ENV]] if NUMPY_DIR_ENV in os.environ else []
    models = sum(1 for entry in repo.iterdir() if entry.is_dir())
    return [
        LocalTriton(
            repo,
            log_file=root / f"triton-{i}.log",
            ready_timeout_s=400,
            model_path=[*numpy_dir, paths["purelib"], paths["platlib"]],
            env=model_env(gpu, k * models, under_mps=under_mps)
            # the stand-in model's "GPU": one lock every server shares (a dry run)
            | {"STAGGER_BODY_LOCK": str(root / "stand-in-gpu.lock")},
            extra_args=["--backend-config=python,shm-default-byte-size=16777216"],
        )
        for i in range(k)
    ]


def start_all(servers: list[LocalTriton]) -> None:
    """Start every server at once; the first failure is raised (with the server's words),
    once the others have finished starting (the caller stops them all)."""
    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        for future in [pool.submit(s.start) for s in servers]:
            future.result()


RERUNS = 2
"""Profiles a run takes beyond ``--profiles`` where none of those held."""


def calibrate(
    servers: list[LocalTriton], body: str, frame: Path, product: str, mode: SharingMode
) -> tuple[ModelProfile, dict[str, Any]]:
    """``stagger profile`` against every server, and the ModelProfile it stands for."""
    began = time.monotonic()
    report = profile(
        [f"grpc://{s.grpc}" for s in servers], body, solo_runs=50, data={"IMAGE": frame}
    )
    result = calibration_result(report, body, "")
    manifest = model_profile(result, product, mode, datetime.now(UTC))
    summary = profile_summary(report, manifest, time.monotonic() - began)
    log(f"profile {body} ({mode}): {summary}")
    return manifest, summary


def calibrate_with_job(
    body: str,
    *,
    frame: Path,
    product: str,
    mode: SharingMode,
    root: Path,
    args: argparse.Namespace,
    servers: int | None = None,
    repo: Path | None = None,
    beside: int = 0,
) -> tuple[ModelProfile, dict[str, Any]]:
    """``--calibrate-with job``: the operator's calibration Job for the body's stream, its
    containers run as the kubelet would (:mod:`bench.gpu.operator_job`): ``--servers``
    copies of Triton (fewer where the GPU's free memory holds fewer at ``--memory-mib``,
    or where ``beside`` leaves fewer under MPS), and the ModelProfile the operator writes
    from its result (:func:`job_measure` says where the loop's own servers are then).
    ``servers`` and ``repo`` set another calibrationServers and model repository
    (``bench.gpu.job``'s one-server Job);
    ``beside`` is how many streams' servers run on the GPU (under MPS each holds CUDA
    contexts the copies then cannot have)."""
    free = gpu_memory_free_mib(args.gpu) if shutil.which("nvidia-smi") else None
    count = servers or args.servers
    job = build_job(
        count,
        body=body,
        repo=repo or root / "models",
        frame=frame,
        product=product,
        mode=mode,
        root=root,
        args=args,
        memory_free_mib=free,
        servers_running=beside,
    )
    done = run_job(job, root / f"job-{body}-{count}")
    manifest = model_profile(done.result, product, mode, datetime.now(UTC))
    summary = profile_summary(done.report, manifest, done.seconds) | {
        "by": "the operator's calibration Job",
        "servers": done.servers,
        "serversWhy": done.servers_why,
        "gpuMemoryFreeMiB": free,
    }
    log(f"profile {body} ({mode}), the operator's Job: {summary}")
    return manifest, summary


def job_measure(
    body: str,
    *,
    servers: list[LocalTriton],
    frame: Path,
    product: str,
    mode: SharingMode,
    root: Path,
    args: argparse.Namespace,
) -> Callable[[], tuple[ModelProfile, dict[str, Any]]] | None:
    """How a body is profiled: the operator's Job under ``--calibrate-with job`` or
    ``job-beside``, else None (the loop's own profile).

    ``job`` is a stream's first calibration: the operator puts it on an idle GPU, so the
    loop's servers are stopped while it runs and started again after (under MPS each holds
    CUDA contexts the Job's copies would otherwise not get: run 92 ran 7 copies beside 17
    and measured the saturation of 7). ``job-beside`` is a re-calibration beside the GPU's
    streams: their servers stay up, idle, and the Job runs what they leave."""
    if args.calibrate_with == "job-beside":
        return lambda: calibrate_with_job(
            body,
            frame=frame,
            product=product,
            mode=mode,
            root=root,
            args=args,
            beside=len(servers),
        )
    if args.calibrate_with != "job":
        return None

    def on_an_idle_gpu() -> tuple[ModelProfile, dict[str, Any]]:
        for s in servers:
            s.stop()
        try:
            return calibrate_with_job(
                body, frame=frame, product=product, mode=mode, root=root, args=args
            )
        finally:
            start_all(servers)

    return on_an_idle_gpu


def profile_summary(
    report: ProfileReport, manifest: ModelProfile, seconds: float
) -> dict[str, Any]:
    """A profile as a result file records it: the report's figures, what the ModelProfile
    says, and the raw sweep (to replay it)."""
    return {
        "seconds": round(seconds, 1),
        "soloP50Ms": round(report.solo_ms["p50"], 2),
        "soloP99Ms": round(report.solo_ms["p99"], 2),
        "soloComputeMs": (
            round(report.solo_compute_ms, 2) if report.solo_compute_ms is not None else None
        ),
        "kneeMs": report.knee_ms,
        "kneeCiMs": report.knee_ci_ms,
        "saturation": report.saturation,
        "costPerFrameMs": report.effective_body_ms,
        "bodyTimeMs": manifest.spec.body_time_ms,
        "costMs": manifest.spec.cost_ms,
        "exclusiveBody": bool(manifest.spec.exclusive_body or manifest.spec.cost_ms is None),
        "latencyMs": manifest.spec.latency_ms,
        "warnings": report.warnings(),
        "kneePastSolo": report.knee_past_solo,
        "stalledPairs": len(report.stalled_pairs()),
        # the profile's own streams paced at the cost: beside the loop's, what it foretold
        "fullLoad": report.full_load,
        "sweep": sweep_rows(report.sweep),
    }


def calibrate_until_one_holds(
    servers: list[LocalTriton],
    body: str,
    frame: Path,
    product: str,
    mode: SharingMode,
    *,
    times: int,
    reruns: int = RERUNS,
    measure: Callable[[], tuple[ModelProfile, dict[str, Any]]] | None = None,
) -> tuple[ModelProfile, dict[str, Any], list[dict[str, Any]]]:
    """``stagger profile`` ``times`` times in a row, each attempt recorded (a failed one with
    its sweep): how often a profile fails, and how much its figures move, on one setting.
    Where none of them gave a profile that holds, up to ``reruns`` more, one at a time until
    one does, as a user who re-runs a failed profile, or one whose report asks for a re-run
    (a knee past the solo latency), does. The first profile that holds is applied; where
    none does, the first that gave a profile. Every attempt failing raises the last
    failure. ``measure`` takes one profile (default: :func:`calibrate` on ``servers``)."""
    attempts: list[dict[str, Any]] = []
    profiles: list[tuple[ModelProfile, dict[str, Any]]] = []
    failure: NoKnee | None = None

    def holds(summary: dict[str, Any]) -> bool:
        return not summary["kneePastSolo"]

    for attempt in range(times + reruns):
        if attempt >= times and any(holds(summary) for _, summary in profiles):
            break
        try:
            manifest, summary = (
                measure() if measure else calibrate(servers, body, frame, product, mode)
            )
        except NoKnee as e:
            failure = e
            attempts.append({"ok": False, "error": str(e), "sweep": sweep_rows(e.sweep)})
            log(f"profile {body} ({mode}) failed: {e}")
            continue
        attempts.append({"ok": True, **summary})
        profiles.append((manifest, summary))
        if not holds(summary):
            log(f"profile {body} ({mode}) asks for a re-run: {summary['warnings']}")
    if not profiles:
        assert failure is not None  # times >= 1
        raise failure
    return (*next((p for p in profiles if holds(p[1])), profiles[0]), attempts)


class HostStalls(RuntimeError):
    """The profile found the host stalling, and the run was asked to stop there."""


def host_stalls(calibration: Mapping[str, Any]) -> str | None:
    """Why a run stops after this profile under ``--stop-on-stalls`` (None: it goes on).
    A host whose swept pairs stalled together loses frames in every configuration, the
    plan's and random phases' alike (runs 59, 60, 62, 66, 67): the run would measure the
    host, not the plan."""
    stalled = calibration.get("stalledPairs") or 0
    if not stalled:
        return None
    return (
        f"stopped after the profile: {stalled} swept pair(s) stalled together; on this host "
        "every configuration measures the stalls, not the plan"
    )


def sweep_rows(points: list[SweepPoint]) -> list[list[float]]:
    """The raw sweep as recorded: (offset, earlier stream's latency, later stream's), ms."""
    return [
        [round(p.offset_ms, 3), round(p.latency1_ms, 3), round(p.latency2_ms, 3)] for p in points
    ]


def stream(name: str, model: str, fps: float, memory_mib: int) -> InferenceStream:
    return InferenceStream.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "InferenceStream",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"model": model, "fps": fps, "memoryMiB": memory_mib},
        }
    )


def apply_one_at_a_time(
    candidates: list[InferenceStream],
    cluster: Cluster,
    profiles: list[ModelProfile],
    settings: PlannerSettings,
    servers: int,
) -> tuple[Plan | None, list[InferenceStream], str]:
    """Apply streams in order, re-planning on the previous plan each time (the operator's
    path), until one is refused or the shards outnumber the servers (one each): the last
    plan, the streams it placed, and why the next was refused (empty when every candidate
    was placed)."""
    previous: Plan | None = None
    applied: list[InferenceStream] = []
    for s in candidates:
        result = plan([*applied, s], cluster, profiles, settings, previous=previous)
        if s.name in {u.stream for u in result.unplaced} or not result.for_stream("bench", s.name):
            why = next((u.reason for u in result.unplaced if u.stream == s.name), "not placed")
            return previous, applied, why
        if len(result.shards) > servers:
            return previous, applied, f"{len(result.shards)} shards, {servers} servers"
        previous, applied = result, [*applied, s]
    return previous, applied, ""


class Loop:
    """The admitted streams' sidecars, one per shard (as the operator deploys them), each
    with the contract the plan gives its shard; ``shards[i]`` is the placement behind
    ``sidecars[i]``. A stream split in k shards sends each shard every k-th frame."""

    def __init__(
        self,
        placed: Plan,
        servers: list[LocalTriton],
        root: Path,
        *,
        open_gates: bool = False,
        max_wait_ms: float | None = None,
    ) -> None:
        """``open_gates``: every contract a slot each tick, so no gate holds a request
        (``--transparent-open``). ``max_wait_ms``: every stream's ``spec.gate.maxWaitMs``,
        as the operator injects it (``--transparent-max-wait``)."""
        gate_env = {} if max_wait_ms is None else {"STAGGER_MAX_WAIT_MS": f"{max_wait_ms:g}"}
        epoch = datetime.fromtimestamp(math.floor(time.time()), UTC)
        self.sidecars: list[LocalSidecar] = []
        self.contracts: dict[str, SlotAssignment] = {}
        self.shards = sorted(placed.shards, key=lambda p: (int(p.stream.split("-")[-1]), p.shard))
        self.split = any(p.shards > 1 for p in self.shards)
        self.hz = placed.tick_hz
        # the GPU's models' own time per second, where bodies take turns (None under MPS)
        self.model_time_share = placed.gpus[0].model_time_share if placed.gpus else None
        for p, server in zip(self.shards, servers, strict=False):
            contract = SlotAssignment.for_shard(
                p, tick_hz=placed.tick_hz, epoch=epoch, generation=1, effective_at=epoch
            )
            if open_gates:
                contract = contract.model_copy(
                    update={"period_ticks": 1, "offset_ticks": 0, "body_ticks": 1}
                )
            path = root / f"slot-{p.stream}-{p.shard}.json"
            path.write_text(contract.model_dump_json(by_alias=True))
            self.contracts[p.stream] = contract  # (transparent mode: streams not split)
            self.sidecars.append(
                LocalSidecar(p.stream, path, server, namespace="bench", env=gate_env)
            )
        with ThreadPoolExecutor(max(1, len(self.sidecars))) as pool:
            list(pool.map(LocalSidecar.start, self.sidecars))

    def stop(self) -> None:
        for s in self.sidecars:
            s.stop()

    def release_lags(self) -> dict[str, dict[str, int]]:
        """Each shard's sidecar's release lag so far (:func:`release_lag_counts`), by the
        name :func:`loop_cameras` gives its camera."""
        out = {}
        for p, sidecar in zip(self.shards, self.sidecars, strict=False):
            with urllib.request.urlopen(f"http://{sidecar.metrics}/metrics", timeout=5) as r:
                text = r.read().decode()
            out[p.stream if p.shards == 1 else f"{p.stream}/{p.shard}"] = release_lag_counts(text)
        return out


def release_lag_counts(metrics_text: str) -> dict[str, int]:
    """From a sidecar's metrics, all streams and models together: how many held requests it
    forwarded (``held``) and how many of those more than 1 ms and 5 ms after their release
    time (``over1Ms``, ``over5Ms``); how many requests waited at the gate over 50 ms
    (``waitedOver50Ms``: half a 10 fps period) and how many went outside their slots
    (``late``). A body that starts late runs into the next slot's, so a lag points at the
    sidecar's host, not at the plan; a long wait on a slot-clock camera is the gate's."""
    held, waited, late = 0.0, 0.0, 0.0
    within = {"0.001": 0.0, "0.005": 0.0}
    waited_within = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if family.name == RELEASE_LAG and sample.name.endswith("_count"):
                held += sample.value
            elif family.name == RELEASE_LAG and sample.name.endswith("_bucket"):
                if sample.labels["le"] in within:
                    within[sample.labels["le"]] += sample.value
            elif family.name == GATE_WAIT and sample.name.endswith("_count"):
                waited += sample.value
            elif family.name == GATE_WAIT and sample.name.endswith("_bucket"):
                waited_within += sample.value if sample.labels["le"] == "0.05" else 0.0
            elif sample.name == LATE:
                late += sample.value
    return {
        "held": int(held),
        "over1Ms": int(held - within["0.001"]),
        "over5Ms": int(held - within["0.005"]),
        "waitedOver50Ms": int(waited - waited_within),
        "late": int(late),
    }


def loop_cameras(
    loop: Loop, applied: list[InferenceStream], post_ms: float
) -> list[dict[str, Any]]:
    """One camera per shard, capturing on its shard's slot through its sidecar; a stream
    split in k shards sends each shard every k-th frame. Each camera keeps its stream's
    deadline (``deadlineMs``, else the stream's frame period less ``post_ms``): a shard's
    camera, one frame in flight at fps / k, misses a frame only past k periods, so
    :func:`measure` counts the answers later than the stream's deadline apart."""
    spec_of = {s.name: s.spec for s in applied}
    return [
        {
            "name": p.stream if p.shards == 1 else f"{p.stream}/{p.shard}",
            "url": sidecar.grpc,
            "model": spec_of[p.stream].model,
            "fps": spec_of[p.stream].fps / p.shards,
            "slot_clock": f"http://{sidecar.http}",
            "deadline_ms": stream_deadline_ms(spec_of[p.stream], post_ms),
        }
        for p, sidecar in zip(loop.shards, loop.sidecars, strict=True)
    ]


def direct_cameras(
    loop: Loop, cams: list[dict[str, Any]], lead_ms: float
) -> list[dict[str, Any]] | str:
    """The loop's cameras (``cams``, :func:`loop_cameras`) capturing at the same instants
    (``lead_ms`` before each slot's start, as ``SlotClient`` wakes them) on a fixed phase,
    straight to their stream's Triton: the plan's table without the sidecars
    (``--slots-direct``). Or why not: a fixed phase is counted from the cameras' start, a
    whole second as the contracts' epoch is, so each slot period must divide a second."""
    if loop.split:
        return "a split stream's camera sends to k shards, each its own slots"
    direct = []
    for cam, sidecar, p in zip(cams, loop.sidecars, loop.shards, strict=True):
        c = loop.contracts[p.stream]
        if c.tick_hz % c.period_ticks:
            return f"{p.stream}'s slot period ({c.period_ticks} ticks) does not divide a second"
        period_s = c.period_ticks / c.tick_hz
        at = c.epoch.timestamp() + c.offset_ticks / c.tick_hz - lead_ms / 1e3
        direct.append(
            {k: v for k, v in cam.items() if k != "slot_clock"}
            | {"url": sidecar.triton.grpc, "phase": round(at % period_s, 6)}
        )
    return direct


def stream_deadline_ms(spec: InferenceStreamSpec, post_ms: float) -> float:
    """What a stream's camera leaves for an answer: its ``deadlineMs``, else its frame
    period less its post-processing (what one frame in flight allows)."""
    if spec.deadline_ms is not None:
        return spec.deadline_ms
    return camera_deadline_ms(spec.fps, post_ms)


def camera_deadline_ms(fps: float, post_ms: float) -> float:
    """A camera with one frame in flight and ``post_ms`` of post-processing per answer
    misses its next frame when an answer takes longer than this."""
    return 1e3 / fps - post_ms


def past_deadline(latencies_s: list[float], deadline_ms: float | None) -> int | None:
    """Answered frames later than the deadline (None: the camera has none)."""
    if deadline_ms is None:
        return None
    return sum(1 for x in latencies_s if x * 1e3 > deadline_ms)


def loop_of(
    candidates: list[InferenceStream],
    *,
    servers: list[LocalTriton],
    cluster: Cluster,
    profiles: list[ModelProfile],
    root: Path,
    args: argparse.Namespace,
    tag: str,
    frames: int | None = None,
    settings: PlannerSettings | None = None,
) -> dict[str, Any] | None:
    """The loop for ``candidates`` applied one at a time with ``profiles`` (until one is
    refused, as for the main loop): what it admitted, its slots and the measurement over
    ``frames`` (default ``--frames``), planned with ``settings`` (default the run's). None
    when nothing was admitted."""
    placed, applied, refused = apply_one_at_a_time(
        candidates, cluster, profiles, settings or planner_settings(args), len(servers)
    )
    if placed is None:
        return None
    loop = Loop(placed, servers, root)
    try:
        cams = loop_cameras(loop, applied, args.post_ms)
        result = measure(cams, frames or args.frames, root, f"{tag}-n{len(applied)}", args)
        result["releaseLag"] = loop.release_lags()
    finally:
        loop.stop()
    return {
        "admitted": len(applied),
        "refusedBecause": refused,
        "slots": slots_of(placed),
        **result,
    }


def with_spec(s: InferenceStream, **fields: Any) -> InferenceStream:
    """``s`` with these spec fields (as a manifest spells them) declared, as a user writes
    them; a field given as None is taken out."""
    manifest = s.model_dump(by_alias=True, exclude_none=True)
    manifest["spec"].update(fields)
    manifest["spec"] = {k: v for k, v in manifest["spec"].items() if v is not None}
    return InferenceStream.model_validate(manifest)


def with_deadlines(
    candidates: list[InferenceStream], solo_p50_ms: Mapping[str, float], post_ms: float
) -> list[InferenceStream]:
    """The same streams declaring what their cameras leave for an answer (``deadlineMs``:
    the frame period less the post-processing that follows it) and what one answer takes
    alone as the camera sees it (``latencyMs``: its model's solo p50 at the camera), as a
    user whose app post-processes states them: the planner then knows which streams cannot
    absorb one more body (docs/architecture.md, tight deadlines). A stream whose answer
    alone takes longer than its deadline declares no deadline (the API refuses one it
    could never meet) and is judged by its drops."""
    out = []
    for s in candidates:
        deadline = math.floor(camera_deadline_ms(s.spec.fps, post_ms) * 10) / 10
        latency = math.ceil(solo_p50_ms[s.spec.model] * 10) / 10
        out.append(
            with_spec(s, deadlineMs=deadline if latency <= deadline else None, latencyMs=latency)
        )
    return out


def split_from(candidates: list[InferenceStream], fps: float) -> list[InferenceStream]:
    """The same streams, those at ``fps`` or more declaring a solo latency (``latencyMs``)
    just over their frame period, as a user does to have a stream split: the planner then
    gives it more than one shard (each its own server and sidecar, every k-th frame). Their
    deadline goes: a latency past the period is past any deadline within it."""
    return [
        with_spec(s, latencyMs=math.floor(1e4 / s.spec.fps + 1) / 10, deadlineMs=None)
        if s.spec.fps >= fps
        else s
        for s in candidates
    ]


def exclusive_for(candidates: list[InferenceStream], model: str) -> list[InferenceStream]:
    """The same streams, those of ``model`` declaring ``exclusiveBody: true``, as a user
    overrules the profile's label: the loop with the label fixed, whatever it measured."""
    return [with_spec(s, exclusiveBody=True) if s.spec.model == model else s for s in candidates]


def measure(
    cams: list[dict[str, Any]], frames: int, root: Path, tag: str, args: argparse.Namespace
) -> dict[str, Any]:
    fps_total = sum(c.get("fps", args.fps) for c in cams)
    seconds = math.ceil(frames / fps_total)
    logs = run_cameras(cams, seconds, root, tag, args)
    s = pooled(logs)
    by_camera = {}
    past: int | None = None  # answers later than their stream's deadline, where one is known
    for cam, camera_log in zip(cams, logs, strict=True):
        one = pooled([camera_log])
        own = phases({camera_log["name"]: camera_log.get("calls", [])})
        late = past_deadline(camera_log["latencies_s"], cam.get("deadline_ms"))
        if late is not None:
            past = (past or 0) + late
        by_camera[cam.get("name", camera_log["name"])] = {
            "model": cam.get("model", "detector"),
            "fps": cam.get("fps", args.fps),
            **{k: one[k] for k in ("p50Ms", "p99Ms", "dropPercent", "frames")},
            **({} if late is None else {"pastDeadline": late}),
            # Where its frames' time went: before the model (client, sidecar, Triton's
            # queue), in it, after it; p50 and p99 each.
            **{k: own.get(k) for k in ("beforeMs", "modelMs", "afterMs")},
        }
    s["seconds"] = seconds
    if past is not None:
        s["pastDeadline"] = past
        s["lateFrames"] = late_frames(cams, logs)
    s["collections"] = collections(cams, logs)
    s["streams"] = by_camera
    s["phases"] = phases({x["name"]: x.get("calls", []) for x in logs})
    s["stalls"] = stall_events(cams, logs, args)
    log(
        f"{tag}: p50 {s['p50Ms']} p99 {s['p99Ms']} max {s['maxMs']} drops {s['dropPercent']}% "
        f"of {s['frames']}"
    )
    return s


GC_NEAR_S = 0.05
"""A collection this long before a frame was sent can still hold what runs alongside it."""
LATE_FRAMES_LISTED = 40


def gc_spans(cams: list[dict[str, Any]], logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every garbage collection of 1 ms or more the cameras saw: their own (``camera``) and
    their Triton processes' (``model``, the longest per answer), each with its camera."""
    spans = []
    for cam, camera_log in zip(cams, logs, strict=True):
        name = cam.get("name", camera_log["name"])
        for begin, end in camera_log.get("gc", []):
            spans.append({"where": "camera", "camera": name, "begin": begin, "end": end})
        for _sent, _count, _seconds, begin, end in camera_log.get("modelGc", []):
            spans.append({"where": "model", "camera": name, "begin": begin, "end": end})
    return spans


def collections(cams: list[dict[str, Any]], logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per camera, its own and its model's garbage collections of 1 ms or more: how many,
    and the longest (ms)."""
    out: dict[str, Any] = {}
    for span in gc_spans(cams, logs):
        one = out.setdefault(span["camera"], {}).setdefault(
            span["where"], {"count": 0, "longestMs": 0.0}
        )
        one["count"] += 1
        one["longestMs"] = max(one["longestMs"], round((span["end"] - span["begin"]) * 1e3, 2))
    return out


def late_frames(cams: list[dict[str, Any]], logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each answer later than its camera's deadline (sent to answered), with which of the
    camera's frames it was (``frame``: 0 is its first after the warm-up), where its time
    went and every collection of 1 ms or more, in any camera or model process, that ran
    from shortly before it was sent to its answer (``startMs``: from when it was sent):
    whether a late frame follows a pause in some process or not."""
    spans = gc_spans(cams, logs)
    out = []
    for cam, camera_log in zip(cams, logs, strict=True):
        deadline = cam.get("deadline_ms")
        if deadline is None:
            continue
        for frame, (sent, began, ended, answered) in enumerate(camera_log.get("calls", [])):
            if None in (sent, began, ended, answered) or (answered - sent) * 1e3 <= deadline:
                continue
            out.append(
                {
                    "camera": cam.get("name", camera_log["name"]),
                    "frame": frame,
                    "sent": round(sent, 3),
                    "beforeMs": round((began - sent) * 1e3, 1),
                    "modelMs": round((ended - began) * 1e3, 1),
                    "afterMs": round((answered - ended) * 1e3, 1),
                    "collections": [
                        {
                            "where": g["where"],
                            "camera": g["camera"],
                            "startMs": round((g["begin"] - sent) * 1e3, 1),
                            "ms": round((g["end"] - g["begin"]) * 1e3, 1),
                        }
                        for g in spans
                        if g["end"] > sent - GC_NEAR_S and g["begin"] < answered
                    ],
                }
            )
    return sorted(out, key=lambda f: f["sent"])[:LATE_FRAMES_LISTED]


def stall_events(
    cams: list[dict[str, Any]], logs: list[dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Frames that cost their camera its next frame (answer and post-processing longer than
    the shortest frame period), grouped into events with the streams they hit: one stream
    at a time points at its own path, all at once at the GPU or the host."""
    fastest = max(c.get("fps", args.fps) for c in cams)
    names = {f"cam-{i}": c.get("name", f"cam-{i}") for i, c in enumerate(cams)}
    events = stalls(logs, threshold_s=camera_deadline_ms(fastest, args.post_ms) / 1e3)
    for e in events:
        e["cameras"] = [names.get(n, n) for n in e["cameras"]]
    return events


def solo(server: LocalTriton, model: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    logs = run_cameras([{"url": server.grpc, "model": model}], SOLO_S, root, f"solo-{model}", args)
    return pooled(logs)


def saturation(
    servers: list[LocalTriton], model: str, root: Path, args: argparse.Namespace
) -> float:
    """Every server's camera back to back (closed loop, separate processes): inferences/s."""
    cams = [{"url": s.grpc, "model": model, "closed_loop": True} for s in servers]
    answered = run_cameras(cams, SATURATION_S, root, f"saturation-{model}", args)
    return round(sum(int(x["answered"]) for x in answered) / SATURATION_S, 2)


def fleet_saturation(
    servers: list[LocalTriton],
    applied: list[InferenceStream],
    profiles: list[ModelProfile],
    root: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The admitted streams' servers back to back together, each with its own stream's
    model: inferences/s per model, and ``costShare``, the GPU time those inferences cost
    by the profiles' ``costMs`` per second. Near 1 when the costs add up (the GPU did what
    the planner charges); below 1 when the fleet together cost the GPU more than the sum
    (the planner then under-charges it)."""
    if not applied:
        return {}
    cams = [
        {"url": servers[i].grpc, "model": s.spec.model, "closed_loop": True}
        for i, s in enumerate(applied)
    ]
    answered = run_cameras(cams, SATURATION_S, root, "saturation-fleet", args)
    per_model: dict[str, float] = {}
    for cam, result in zip(cams, answered, strict=True):
        model = str(cam["model"])
        per_model[model] = per_model.get(model, 0.0) + int(result["answered"]) / SATURATION_S
    rates = {m: round(r, 2) for m, r in per_model.items()}
    costs = {p.spec.model: p.spec.cost_ms for p in profiles}
    share = None  # nothing measured a cost: nothing to add up
    if all(costs[m] is not None for m in per_model):
        share = round(sum(r * (costs[m] or 0.0) / 1e3 for m, r in per_model.items()), 3)
    log(f"fleet saturation: {rates} inferences/s, costing {share} of the GPU by costMs")
    return {"perSecond": rates, "costShare": share}


def stage_windows(
    servers: list[LocalTriton],
    body: str,
    frame: Path,
    calibration: Mapping[str, Any],
    windows: int,
) -> list[dict[str, Any]] | str:
    """The profile's own full-load stage (its streams, spaced by its cost) ``windows`` times
    in a row on these servers, each as long as a calibration Job's (``--stage-windows``),
    over HTTP as the Job's profiler sends: how much one stage of that length says of the
    loop. Or why not: a profile recorded before the stage."""
    full = calibration.get("fullLoad")
    if not full:
        return "the profile ran no full-load stage"

    def endpoint(i: int) -> Endpoint:
        return Endpoint(f"http://{servers[i % len(servers)].http}", body, data={"IMAGE": frame})

    out = [
        full_load(endpoint, int(full["streams"]), float(full["spacing_ms"]), FULL_LOAD_S)
        for _ in range(windows)
    ]
    solo = calibration.get("soloP50Ms")
    p99s = ", ".join(f"{w['p99_ms']:.1f}" for w in out)
    over = [round(w["p99_ms"] / solo, 2) for w in out] if solo else None
    log(
        f"{body}: the full-load stage {windows} times on the loop's servers: p99 {p99s} ms "
        f"({over} x the profile's solo), "
        f"missed {sum(int(w['missed']) for w in out)} of {sum(int(w['frames']) for w in out)}"
    )
    return out


def cluster_of(product: str, mode: SharingMode, memory_mib: int) -> Cluster:
    gpu = Gpu(index=0, uuid="GPU-bench", product=product, memory_mib=memory_mib, sharing_mode=mode)
    return Cluster(nodes=[Node(name="bench", gpus=[gpu])])


def identical(
    body: str,
    *,
    servers: list[LocalTriton],
    frame: Path,
    product: str,
    mode: SharingMode,
    root: Path,
    args: argparse.Namespace,
    out: dict[str, Any],
    save: Callable[[], None],
) -> dict[str, Any]:
    """N identical streams of one body: the loop at the admitted N, random phases at N and
    above, solo and saturation, side by side. Fills ``out`` and calls ``save`` after every
    measurement, so a run cut short keeps what it measured."""
    manifest, calibration, attempts = calibrate_until_one_holds(
        servers,
        body,
        frame,
        product,
        mode,
        times=args.profiles,
        measure=job_measure(
            body, servers=servers, frame=frame, product=product, mode=mode, root=root, args=args
        ),
    )
    if args.stop_on_stalls and (why := host_stalls(calibration)):
        out["calibration"] = calibration
        raise HostStalls(why)
    settings = planner_settings(args)
    cluster = cluster_of(product, mode, args.gpu_memory_mib)
    candidates = [stream(f"cam-{i}", body, args.fps, args.memory_mib) for i in range(len(servers))]
    placed, applied, refused = apply_one_at_a_time(
        candidates, cluster, [manifest], settings, len(servers)
    )
    admitted = len(applied)
    log(f"{body}: the planner admitted {admitted} of {len(servers)} ({refused or 'all placed'})")
    out.update(
        body=body,
        calibration=calibration,
        profiles=attempts,
        admitted=admitted,
        refusedBecause=refused,
        slots=slots_of(placed),
        loop=None,
        random={},
    )
    save()
    out["solo"] = solo(servers[0], body, root, args)
    out["saturationPerS"] = saturation(servers, body, root, args)
    out["fleetSaturation"] = fleet_saturation(servers, applied, [manifest], root, args)
    log(f"{body}: solo p50 {out['solo']['p50Ms']} ms, saturation {out['saturationPerS']}/s")
    save()
    if placed is not None and admitted:
        loop = Loop(placed, servers, root)
        try:
            cams = loop_cameras(loop, applied, args.post_ms)
            out["loop"] = measure(cams, args.frames, root, f"{body}-loop-n{admitted}", args)
            out["loop"]["releaseLag"] = loop.release_lags()
            save()
            if args.slots_direct:  # right after the loop: the same host, the same minute
                direct = direct_cameras(loop, cams, args.lead_ms)
                tag = f"{body}-slots-direct-n{admitted}"
                out["slotsDirect"] = (
                    {"skipped": direct}
                    if isinstance(direct, str)
                    else measure(direct, args.frames, root, tag, args)
                )
                save()
            if args.stage_windows:
                windows = stage_windows(
                    servers, body, frame, out["calibration"], args.stage_windows
                )
                out["stageWindows"] = {"skipped": windows} if isinstance(windows, str) else windows
                save()
            if not loop.split:  # a camera's frames to k shards: not what transparent mode is
                out["transparent"] = transparent(loop, body, root, args)
                save()
        finally:
            loop.stop()
        if args.transparent_unmarked and out.get("transparent"):
            # at the admitted N, right after transparent mode: the GPU at its fullest, where
            # answers at followed slots are slowest (run 107's gates stopped holding at its
            # admitted 8); at random's N, fewer where the host stalls (run 109: 5 of 7), both
            # rules hold alike
            out["transparentUnmarked"] = transparent_on(
                placed, servers, body, root, args, unmarked=True
            )
            save()
        if args.transparent_max_wait is not None and out.get("transparent"):
            # at the admitted N beside the product's own run there (besideProduct)
            out["transparentMaxWait"] = transparent_on(
                placed, servers, body, root, args, max_wait_ms=args.transparent_max_wait
            ) | {"maxWaitMs": args.transparent_max_wait}
            save()
        if args.transparent_open and out.get("transparent"):
            # at the admitted N beside the product's own run there (besideProduct)
            out["transparentOpen"] = transparent_on(
                placed, servers, body, root, args, open_gates=True
            )
            save()
        if args.transparent_searched and out.get("transparent"):
            # at the admitted N beside the product's own run there (besideProduct)
            out["transparentSearched"] = transparent_searched(
                placed, servers, body, root, args, out=out
            )
            save()
    gpu: dict[str, Any] = {
        "servers": servers,
        "cluster": cluster,
        "profiles": [manifest],
        "root": root,
        "args": args,
    }
    if args.fewer and admitted >= 2:
        # whether the GPU held one stream fewer where it did not hold what was admitted
        out["loopOneFewer"] = loop_of(candidates[: admitted - 1], tag=f"{body}-loop", **gpu)
        save()
    if args.also_cap is not None:
        out["loopAtCap"] = loop_at_cap(candidates, admitted, tag=f"{body}-loop-cap", **gpu)
        save()
    at_cap = (out.get("loopAtCap") or {}).get("admitted", 0) if args.also_cap else 0
    while (
        n := next_random_n(_drops(out["random"]), admitted, len(servers))
        or (at_cap if at_cap > admitted and at_cap not in out["random"] else None)
    ) is not None:  # random phases beside the loop at the other cap's N too
        out["random"][n] = random_phases(
            servers[:n], body, seed=args.seed + n, frames=args.frames, root=root, args=args
        )
        save()
    again = transparent_again_at(_drops(out["random"]), admitted)
    judged = placed
    if out.get("transparent") and again is not None:
        judged, _, _ = apply_one_at_a_time(
            candidates[:again], cluster, [manifest], settings, len(servers)
        )
        if judged is not None:
            # run 128 was cut by the device's limit in this configuration, with its stop
            why = past_budget(transparent_estimate_s(again, args.frames, args), args)
            if why is not None:
                log(f"{body}: transparent mode at random phases' N = {again} not begun: {why}")
            out["transparentAtRandomN"] = (
                {"skipped": why}
                if why is not None
                else transparent_on(judged, servers, body, root, args)
            )
            save()
    if args.transparent_packed and out.get("transparent") and judged is not None:
        share = judged.gpus[0].model_time_share if judged.gpus else None
        if not stream_follow_spacing(judged.shards, share, judged.tick_hz):
            out["transparentPacked"] = {
                "skipped": "the operator keeps no spacing here, so its table is the packed "
                "one: MPS, no solo compute, or models that need more than the second one at "
                f"a time ({share})"
            }
        else:
            out["transparentPacked"] = transparent_on(
                judged, servers, body, root, args, packed=True
            )
        save()
    if args.phase_draws > 1 and out.get("transparent") and judged is not None:
        out["phaseDraws"] = []
        for draw in phase_draws(judged, servers, body, root, args):
            if "stopped" in draw:
                out["phaseDrawsStopped"] = draw["stopped"]
                log(f"{body}: no further draw of phases: {draw['stopped']}")
            else:
                out["phaseDraws"].append(draw)
            save()
    return out


DRAW_SEED_STEP = 1000
"""``--phase-draws``: the j-th other draw of camera phases at N takes seed + N + j x this."""


def phase_draws(
    judged: Plan, servers: list[LocalTriton], body: str, root: Path, args: argparse.Namespace
) -> Iterator[dict[str, Any]]:
    """``--phase-draws K``: transparent mode judged on K - 1 more draws of camera phases at
    the N it is judged at, each beside random phases at the same draw straight to Triton
    (``--draw-frames`` frames each). The bench's own draw (seed + N) is one draw of random
    phases; whether issue 21's target is out of reach for it or in general are different
    findings (at N = 8 its longest wait is longer than in 91 % of draws, ``bench.gpu.waits
    --draws``)."""
    n = len(judged.shards)
    took_s = draw_estimate_s(n, args)
    for j in range(1, args.phase_draws):
        if (why := past_budget(took_s, args)) is not None:
            yield {"stopped": why}
            return
        began = time.monotonic()
        seed = args.seed + n + DRAW_SEED_STEP * j
        at_random = random_phases(
            servers[:n], body, seed=seed, frames=args.draw_frames, root=root, args=args
        )
        followed = transparent_on(
            judged, servers, body, root, args, seed=seed, frames=args.draw_frames
        )
        took_s = max(took_s, time.monotonic() - began)
        yield {"seed": seed, "random": at_random, "transparent": followed}


def draw_estimate_s(n: int, args: argparse.Namespace) -> float:
    """What one other draw takes before any did: random phases' frames, then transparent
    mode's settling and frames, each with its cameras' start (run 107, 8 streams and 1,000
    frames on an H100: 49 s, as this says)."""
    random_s = math.ceil(args.draw_frames / (n * args.fps)) + START_MARGIN_S
    return float(random_s + transparent_estimate_s(n, args.draw_frames, args))


def transparent_estimate_s(n: int, frames: int, args: argparse.Namespace) -> float:
    """What transparent mode on ``n`` cameras takes: their start, the table's settling and
    ``frames`` frames once settled (run 128, 7 streams and 3,000 frames: 59 s; this says
    61 s)."""
    frames_s = math.ceil(frames / (n * args.fps))
    quiet_s = quiet_after_s(1.0 / float(args.fps))
    return float(frames_s + START_MARGIN_S + SETTLE_S + quiet_s + 2.0)


def past_budget(draw_s: float, args: argparse.Namespace) -> str | None:
    """Why no further draw starts under ``--within`` (None: it fits): one that would end
    past it is not begun, so the run stops with its verdicts instead of being cut by the
    limit of the machine it runs on (runs 107 and 108 lost their last draws that way)."""
    if args.within is None:
        return None
    left = args.within - (time.monotonic() - args.began)
    if draw_s + WRAP_UP_S <= left:
        return None
    return (
        f"--within {args.within:g} s: {max(0.0, left):.0f} s left, a draw takes about "
        f"{draw_s:.0f} s and the servers' stop {WRAP_UP_S:g} s"
    )


WRAP_UP_S = 15.0
"""What the bench needs after its last measurement: the servers' stop and the verdicts."""


def random_phases(
    servers: list[LocalTriton],
    body: str,
    *,
    seed: int,
    frames: int,
    root: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One camera per server at a random phase (``seed``), straight to Triton: no product."""
    n = len(servers)
    phases = bench_phases(n, args.fps, seed)
    cams = [
        {"url": s.grpc, "model": body, "phase": p} for s, p in zip(servers, phases, strict=True)
    ]
    tag = f"{body}-random-n{n}" + ("" if seed == args.seed + n else f"-seed{seed}")
    return measure(cams, frames, root, tag, args)


def loop_at_cap(
    candidates: list[InferenceStream],
    admitted: int,
    *,
    servers: list[LocalTriton],
    cluster: Cluster,
    profiles: list[ModelProfile],
    root: Path,
    args: argparse.Namespace,
    tag: str,
) -> dict[str, Any]:
    """``--also-cap``: the loop planned at another throughput cap, what a user who sets
    ``throughputCap`` gets, measured where that cap admits more than the run's own
    (``admitted``); where it admits no more, only what it admits."""
    cap = float(args.also_cap)
    settings = PlannerSettings(
        throughput_cap=cap, mps_throughput_cap=cap, charge_model_time=args.charge_model_time
    )
    _, applied, _ = apply_one_at_a_time(candidates, cluster, profiles, settings, len(servers))
    if len(applied) <= admitted:
        return {"cap": cap, "admitted": len(applied), "measured": False}
    result = loop_of(
        candidates,
        servers=servers,
        cluster=cluster,
        profiles=profiles,
        root=root,
        args=args,
        tag=tag,
        settings=settings,
    )
    assert result is not None  # it admitted more than the run's own cap did
    return {"cap": cap, "measured": True, **result}


def _drops(runs: Mapping[int, Mapping[str, Any]]) -> dict[int, float]:
    return {n: float(run["dropPercent"]) for n, run in runs.items()}


def transparent_on(
    placed: Plan,
    servers: list[LocalTriton],
    body: str,
    root: Path,
    args: argparse.Namespace,
    **variant: Any,
) -> dict[str, Any]:
    """:func:`transparent` through fresh sidecars with ``placed``'s contracts (open ones
    where ``variant`` says ``open_gates``; with ``max_wait_ms``, each gate's bound)."""
    loop = Loop(
        placed,
        servers,
        root,
        open_gates=bool(variant.get("open_gates")),
        max_wait_ms=variant.get("max_wait_ms"),
    )
    try:
        return transparent(loop, body, root, args, **variant)
    finally:
        loop.stop()


SEARCH_SECONDS, SEARCH_SEEDS = 10.0, 2
"""What ``--transparent-searched`` simulates each table it tries for: 20 s in all."""


def transparent_searched(
    placed: Plan,
    servers: list[LocalTriton],
    body: str,
    root: Path,
    args: argparse.Namespace,
    *,
    out: dict[str, Any],
) -> dict[str, Any]:
    """``--transparent-searched``: transparent mode at the admitted N with the table the
    simulator finds best for these cameras, bodies allowed to overlap
    (:func:`bench.simulator.follow.search_waits`, from this run's profile and its
    transparent record ``out``), for comparison. Under MPS the search trades waits for
    overlap the follower's rule forbids (docs/benchmarks.md, "Any table, not only the
    follower's"); this measures whether the GPU agrees."""
    found = simulated_follow.setting({"fps": args.fps, "mode": args.mode, "results": {body: out}})
    if found is None:
        return {"skipped": "the profile has no solo compute: the simulator has no model time"}
    s = found[2]
    phases_s = bench_phases(s.n, s.fps, args.seed + s.n)
    waits = simulated_follow.search_waits(s, phases_s, SEARCH_SECONDS, SEARCH_SEEDS)
    log(f"{body}: the searched table's waits {[round(w * 1e3, 1) for w in waits]} ms")
    return transparent_on(placed, servers, body, root, args, waits_s=waits) | {
        "searchedWaitsMs": [round(w * 1e3, 3) for w in waits]
    }


def transparent(
    loop: Loop,
    body: str,
    root: Path,
    args: argparse.Namespace,
    *,
    packed: bool = False,
    unmarked: bool = False,
    open_gates: bool = False,
    max_wait_ms: float | None = None,
    seed: int | None = None,
    frames: int | None = None,
    waits_s: list[float] | None = None,
) -> dict[str, Any]:
    """Apps that know nothing of Stagger: cameras on their own clocks at the random phases
    of the random configuration at the same N, through the sidecars, whose slots follow the
    cameras (:class:`LocalFollower` doing the operator's part). The whole run, and the
    frames due once the table settled (a period after its last re-timing), within
    ``SETTLE_S``. ``packed``: the followed slots packed at their reserved width, as the
    operator's follower did before run 104 (``--transparent-packed``, for comparison).
    ``unmarked``: contracts that do not say which arrivals their slots follow, so every
    gate holds by its measured answers alone, as before run 109 (``--transparent-unmarked``).
    ``open_gates``: ``loop``'s gates hold nothing and no follower runs: the way through
    the sidecars alone (``--transparent-open``; every frame counts, nothing settles).
    ``max_wait_ms``: the gates' bound ``loop`` was started with (``--transparent-max-wait``;
    it names the run).
    ``seed`` and ``frames``: another draw of phases (:func:`phase_draws`).
    ``waits_s``: each camera's slot that long after its arrivals, set once, overlap allowed
    (:func:`transparent_searched`)."""
    n = len(loop.sidecars)
    period = 1.0 / args.fps
    # the random configuration's phases at this N (seed + N), or another draw's
    arrivals = bench_phases(n, args.fps, args.seed + n if seed is None else seed)
    cams = [
        {"url": s.grpc, "model": body, "phase": p}
        for s, p in zip(loop.sidecars, arrivals, strict=True)
    ]
    seconds = SETTLE_S + math.ceil((frames or args.frames) / (n * args.fps))
    apart = {} if packed else stream_follow_spacing(loop.shards, loop.model_time_share, loop.hz)
    # the operator plans each stream with its spec's gate.maxWaitMs, and its follower keeps
    # every wait within it where a table does (stagger.core.phase.follow_holds)
    holds = stream_follow_holds([replace(p, max_wait_ms=max_wait_ms) for p in loop.shards], loop.hz)
    follower = LocalFollower(
        loop.sidecars,
        loop.contracts,
        follow_spacing=apart,
        follow_holds=holds,
        mark_arrivals=not unmarked,
        follow_waits=None
        if waits_s is None
        else {s.stream: w for s, w in zip(loop.sidecars, waits_s, strict=True)},
    )
    flags = (
        ("-packed", packed),
        ("-unmarked", unmarked),
        ("-open", open_gates),
        ("-searched", waits_s is not None),
    )
    variant = "".join(name for name, on in flags if on)
    if max_wait_ms is not None:
        variant += f"-maxwait{max_wait_ms:g}"
    tag = f"{body}-transparent{variant}-n{n}" + (f"-seed{seed}" if seed else "")
    # The loop's cameras went through these sidecars a moment ago. The apps here are new
    # ones on their own clocks: start them once the sidecars have forgotten those (a
    # periodic stream quiet for QUIET_PERIODS periods), as new pods would know nothing.
    forgotten = time.time() + quiet_after_s(period) + 2.0
    while follower.arrivals():
        if time.time() > forgotten:
            raise RuntimeError("the sidecars still report the loop's arrival phases")
        time.sleep(0.2)
    with contextlib.nullcontext() if open_gates else follower:
        logs = run_cameras(cams, seconds, root, tag, args)
    gates = loop.release_lags()  # whether the gates held the frames or sent them at once
    first = min((min(x["captured_at"], default=math.inf) for x in logs), default=0.0)
    settle = follower.switches[-1] + period if follower.switches else first
    steady = [
        {
            "latencies_s": [
                lat
                for at, lat in zip(x["captured_at"], x["latencies_s"], strict=True)
                if at >= settle
            ],
            "due": frames_due(x["start"] + x["phase"], period, settle, x["start"] + seconds),
            "errors": {},
        }
        for x in logs
    ]
    whole, after = pooled(logs), pooled(steady)
    whole["lostFrames"] = lost_frames(logs, period, first)
    # Where the settled frames' time went, per camera: before the model is the table's wait
    # (tableWaitsMs, same order) plus what the client, the sidecar and Triton's queue add.
    settled_calls = {x["name"]: [c for c in x.get("calls", []) if c[0] >= settle] for x in logs}
    after["phases"] = phases(settled_calls)
    after["beforeMsByCamera"] = [
        phases({name: calls}).get("beforeMs") for name, calls in settled_calls.items()
    ]
    log(
        f"{tag}: {len(follower.switches)} re-timing(s), steady "
        f"{settle - first:.1f} s after the start; then p50 {after['p50Ms']} p99 "
        f"{after['p99Ms']} drops {after['dropPercent']}% of {after['frames']}"
    )
    if open_gates:
        return {
            "retimings": 0,
            "settledAfterS": 0.0,
            "whole": whole,
            "steady": after,
            "gates": gates,
        }
    return {
        "retimings": len(follower.switches),
        "settledAfterS": round(settle - first, 2),
        # the best any table under the follower's rule gives these phases: each camera's
        # wait every frame. At the width alone the floor read 0.59 x random's for run 104's
        # cameras, where the spaced table it ran could not get under 0.67 x.
        "tableWaitsMs": best_followed_waits_ms(
            arrivals,
            loop.shards[0].body_ticks,
            spacing=apart,
            holds=holds,
            period_s=period,
            hz=loop.hz,
        ),
        # the followed slots' spacing, start to start, by camera (none: their width)
        **({"spacingMs": {str(k): t * 1e3 / loop.hz for k, t in apart.items()}} if apart else {}),
        # the table the follower left, by camera: its slots' starts into the period
        "followedOffsetsMs": [
            round(loop.contracts[s.stream].offset_ticks * 1e3 / loop.hz, 3) for s in loop.sidecars
        ],
        # the arrivals each followed slot was placed after, as its contract says (None:
        # placed without them; every one under --transparent-unmarked)
        "followedArrivalsMs": [
            None
            if (mark := loop.contracts[s.stream].arrival_ticks) is None
            else round(mark * 1e3 / loop.hz, 3)
            for s in loop.sidecars
        ],
        "whole": whole,
        "steady": after,
        # each camera's sidecar over the whole run: "late" counts the frames it sent
        # outside their slots (run 107's gates sent most at once: bench.gpu.targets says so)
        "gates": gates,
    }


def best_followed_waits_ms(
    arrivals: list[float],
    width: int,
    *,
    spacing: Mapping[Hashable, int],
    holds: Mapping[Hashable, int],
    period_s: float,
    hz: int,
) -> list[float]:
    """Each camera's wait (ms, camera order) in the best table under the follower's rule
    (``stagger.core.phase.follow``): slots their spacing apart where it keeps one and no
    camera then waits longer than its gate holds a request, else at their width. The bench's
    streams are alike, so one width and one hold stand for all."""
    if spacing:
        spaced = table_waits_ms(arrivals, max(width, *spacing.values()) * 1e3 / hz, period_s, hz)
        if not holds or max(spaced) <= min(holds.values()) * 1e3 / hz:
            return spaced
    return table_waits_ms(arrivals, width * 1e3 / hz, period_s, hz)


def mixed(
    *,
    servers: list[LocalTriton],
    frame: Path,
    product: str,
    mode: SharingMode,
    root: Path,
    args: argparse.Namespace,
    out: dict[str, Any],
    save: Callable[[], None],
) -> dict[str, Any]:
    """A fleet of two models at several frame rates applied one at a time on one GPU: the
    loop for the streams admitted, random phases for the same streams beside it. Fills
    ``out`` and saves as :func:`identical` does."""
    models = sorted({m for m, _ in MIXED})
    manifests, calibrations, attempts = [], {}, {}
    for model in models:
        manifest, calibrations[model], attempts[model] = calibrate_until_one_holds(
            servers,
            model,
            frame,
            product,
            mode,
            times=args.profiles,
            measure=job_measure(
                model,
                servers=servers,
                frame=frame,
                product=product,
                mode=mode,
                root=root,
                args=args,
            ),
        )
        manifests.append(manifest)
    cluster = cluster_of(product, mode, args.gpu_memory_mib)
    out["solo"] = {m: solo(servers[0], m, root, args) for m in models}
    candidates = with_deadlines(
        [stream(f"cam-{i}", *MIXED[i % len(MIXED)], args.memory_mib) for i in range(len(servers))],
        {m: out["solo"][m]["p50Ms"] for m in models},
        args.post_ms,
    )
    placed, applied, refused = apply_one_at_a_time(
        candidates,
        cluster,
        manifests,
        planner_settings(args),
        len(servers),
    )
    log(f"mixed: the planner admitted {len(applied)} of {len(servers)} ({refused or 'all'})")
    out.update(
        calibration=calibrations,
        # every attempt where a model took more than one (a failed or misread profile)
        profiles={m: a for m, a in attempts.items() if len(a) > 1},
        admitted=len(applied),
        gpusPlanned=len({(p.node, p.gpu) for p in placed.shards}) if placed else 0,
        refusedBecause=refused,
        fleet=[
            {
                "name": s.name,
                "model": s.spec.model,
                "fps": s.spec.fps,
                "deadlineMs": s.spec.deadline_ms,
                "latencyMs": s.spec.latency_ms,
            }
            for s in applied
        ],
        slots=slots_of(placed),
    )
    save()
    out["fleetSaturation"] = fleet_saturation(servers, applied, manifests, root, args)
    save()
    if placed is None:
        return out
    loop = Loop(placed, servers, root)
    try:
        cams = loop_cameras(loop, applied, args.post_ms)
        out["loop"] = measure(cams, args.frames, root, f"mixed-loop-n{len(applied)}", args)
        out["loop"]["releaseLag"] = loop.release_lags()
        save()
    finally:
        loop.stop()
    variants = {  # the loop again, for comparison: one stream fewer; fast streams split;
        # one model's streams declared exclusive
        "loopOneFewer": candidates[: len(applied) - 1] if args.fewer and len(applied) >= 2 else [],
        "loopSplit": split_from(candidates, args.split_from_fps) if args.split_from_fps else [],
        "loopDeclaredExclusive": (
            exclusive_for(candidates, args.declare_exclusive) if args.declare_exclusive else []
        ),
    }
    for key, streams in variants.items():
        if streams:
            out[key] = loop_of(
                streams,
                servers=servers,
                cluster=cluster,
                profiles=manifests,
                root=root,
                args=args,
                tag=f"mixed-{key}",
            )
            save()
    if args.alone:
        out["tightestAlone"] = tightest_alone(
            applied,
            servers=servers,
            cluster=cluster,
            profiles=manifests,
            seconds=out["loop"]["seconds"],
            root=root,
            args=args,
        )
        save()
    # Random phases for the admitted streams, and with the next one the planner refused
    # (where a server is left): whether doing nothing holds more than the plan admits.
    above = candidates[: min(len(applied) + 1, len(candidates), len(servers))]
    rng = random.Random(args.seed)
    every = [
        {
            "name": s.name,
            "url": servers[i].grpc,
            "model": s.spec.model,
            "fps": s.spec.fps,
            "phase": rng.uniform(0, 1 / s.spec.fps),
        }
        for i, s in enumerate(above)
    ]
    cams = every[: len(applied)]
    out["random"] = measure(cams, args.frames, root, f"mixed-random-n{len(applied)}", args)
    if len(every) > len(cams):
        save()
        out["randomOneMore"] = measure(
            every, args.frames, root, f"mixed-randomOneMore-n{len(every)}", args
        )
    if variants["loopOneFewer"]:  # random phases beside the loop at one fewer, too
        save()
        fewer = cams[: len(applied) - 1]
        out["randomOneFewer"] = measure(
            fewer, args.frames, root, f"mixed-randomOneFewer-n{len(fewer)}", args
        )
    return out


def tightest_alone(
    applied: list[InferenceStream],
    *,
    servers: list[LocalTriton],
    cluster: Cluster,
    profiles: list[ModelProfile],
    seconds: float,
    root: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The admitted stream with the least time for an answer, alone on the GPU for as long
    as the fleet was measured: through its own sidecar (the loop with only it) and straight
    to Triton (no product). What it misses alone is the floor no placement can beat, so a
    fleet's losses are judged against it (docs/benchmarks.md, the mixed fleet)."""
    tightest = tightest_stream(applied, args.post_ms)
    deadline = stream_deadline_ms(tightest.spec, args.post_ms)
    frames = math.ceil(tightest.spec.fps * seconds)
    camera = {
        "name": tightest.name,
        "url": servers[0].grpc,
        "model": tightest.spec.model,
        "fps": tightest.spec.fps,
        "deadline_ms": deadline,
    }
    return {
        "stream": tightest.name,
        "deadlineMs": deadline,
        "loop": loop_of(
            [tightest],
            servers=servers,
            cluster=cluster,
            profiles=profiles,
            root=root,
            args=args,
            tag="mixed-alone-loop",
            frames=frames,
        ),
        "straight": measure([camera], frames, root, "mixed-alone-straight-n1", args),
    }


def tightest_stream(streams: list[InferenceStream], post_ms: float) -> InferenceStream:
    """The stream that leaves the least time for an answer (the first of equals)."""
    return min(streams, key=lambda s: stream_deadline_ms(s.spec, post_ms))


def planner_settings(args: argparse.Namespace) -> PlannerSettings:
    """The product's planner settings, with ``--throughput-cap`` as the cap of ``--mode``
    and ``--charge-model-time`` as the operator's ``chargeModelTime``."""
    return PlannerSettings(
        throughput_cap=args.throughput_cap,
        mps_throughput_cap=args.throughput_cap,
        charge_model_time=args.charge_model_time,
    )


def slots_of(placed: Plan | None) -> list[dict[str, Any]]:
    """Each shard's slot, and how much other bodies overlap its body in the plan
    (:func:`body_overlaps`)."""
    if placed is None:
        return []
    hz = placed.tick_hz
    overlap = body_overlaps(placed)
    return [
        {
            "stream": p.stream,
            "offsetMs": round(p.offset_ticks * 1e3 / hz, 3),
            "periodMs": round(p.period_ticks * 1e3 / hz, 3),
            "reservedMs": round(p.body_ticks * 1e3 / hz, 3),
            "bodyMs": p.body_ms,
            **overlap[p.key],
        }
        for p in sorted(placed.shards, key=lambda p: p.offset_ticks)
    ]


def body_overlaps(placed: Plan) -> dict[tuple[str, str, int], dict[str, float]]:
    """Per shard, what the plan lets other bodies overlap of its own, each body ``bodyMs``
    long from its slot's start: the share of its frames overlapped over the hyperperiod
    (``overlappedShare``) and the overlap per frame (``overlapMsPerFrame``, the product's
    :func:`overlap_ms_per_frame`). On a time-sliced GPU an overlapped frame now and then
    takes a whole body longer, so this is where a plan's tail comes from
    (docs/benchmarks.md, the mixed fleet)."""
    hz = placed.tick_hz
    shards = placed.shards
    per_frame_ms = overlap_ms_per_frame(shards, hz)
    span = math.lcm(*(p.period_ticks for p in shards)) if shards else 1
    bodies = {
        p.key: [
            (start, start + body_ticks(p, hz))
            for start in range(p.offset_ticks, p.offset_ticks + span, p.period_ticks)
        ]
        for p in shards
    }

    def overlapped(key: tuple[str, str, int], begin: int, end: int) -> bool:
        return any(
            min(end, other_end + shift) > max(begin, other_begin + shift)
            for other, others in bodies.items()
            if other != key
            for other_begin, other_end in others
            for shift in (-span, 0, span)  # the table repeats: bodies wrap around
        )

    return {
        p.key: {
            "overlappedShare": round(
                sum(overlapped(p.key, *body) for body in bodies[p.key]) / len(bodies[p.key]), 3
            ),
            "overlapMsPerFrame": round(per_frame_ms[p.key], 2),
        }
        for p in shards
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=[str(SharingMode.TIME_SLICING), str(SharingMode.MPS)])
    p.add_argument("--bodies", nargs="+", choices=["eager", "graph"], default=["eager", "graph"])
    p.add_argument("--mixed", action="store_true", help="the mixed fleet instead")
    p.add_argument("--servers", type=int, default=10, help="tritonservers: the most streams")
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=3000, help="frames per configuration")
    p.add_argument("--memory-mib", type=int, default=2048, help="GPU memory per stream")
    p.add_argument(
        "--gpu-memory-mib",
        type=int,
        help=f"the GPU's memory (default: nvidia-smi's, {DRY_RUN_GPU_MEMORY_MIB} in a dry run)",
    )
    p.add_argument("--post-ms", type=float, default=8.0)
    p.add_argument("--lead-ms", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--throughput-cap",
        type=float,
        help="the planner's share of saturation it admits (default: the product's for --mode)",
    )
    p.add_argument(
        "--charge-model-time",
        action="store_true",
        help="plan as the operator does with chargeModelTime: true (each stream charged the "
        "larger of its cost and its model's own time alone, where bodies take turns)",
    )
    p.add_argument(
        "--fewer",
        action="store_true",
        help="also run the loop with the last admitted stream left out",
    )
    p.add_argument(
        "--also-cap",
        type=float,
        metavar="CAP",
        help="also run the loop planned at this throughput cap, where it admits more streams "
        "than the mode's own (what a user who sets throughputCap gets), with random phases "
        "at its N beside it, for comparison",
    )
    p.add_argument(
        "--alone",
        action="store_true",
        help="--mixed: also measure the stream with the tightest deadline alone on the GPU, "
        "through its sidecar and straight to Triton (the floor its losses are judged by)",
    )
    p.add_argument(
        "--split-from-fps",
        type=float,
        help="--mixed: also run the loop with the streams at this fps or more split in "
        "shards (they declare a latencyMs just over their frame period), for comparison",
    )
    p.add_argument(
        "--declare-exclusive",
        metavar="MODEL",
        help="--mixed: also run the loop with this model's streams declaring exclusiveBody: "
        "true (the label fixed, whatever the profile says), for comparison",
    )
    p.add_argument(
        "--profiles",
        type=int,
        default=1,
        help="profile each body this many times in a row, each recorded; the first that "
        f"holds is applied (where none does, up to {RERUNS} more until one does: a failed "
        "profile, or one whose report asks for a re-run)",
    )
    p.add_argument(
        "--transparent-packed",
        action="store_true",
        help="also run transparent mode, at the N it is judged at, with the followed slots "
        "packed at their reserved width, as the operator's follower did before run 104 (for "
        "comparison; skipped where the operator keeps no spacing)",
    )
    p.add_argument(
        "--transparent-unmarked",
        action="store_true",
        help="also run transparent mode at the admitted N, right after its own run there, "
        "with contracts that do not say which arrivals their slots follow, so every gate "
        "holds by its measured answers alone, as before run 109 (for comparison)",
    )
    p.add_argument(
        "--transparent-searched",
        action="store_true",
        help="also run transparent mode at the admitted N with the table the simulator finds "
        "best for the same cameras, bodies allowed to overlap (bench.simulator.follow "
        "--search; set by hand, for comparison)",
    )
    p.add_argument(
        "--transparent-open",
        action="store_true",
        help="also run the transparent cameras at the admitted N through sidecars whose gates "
        "hold nothing (a slot every microsecond, no follower): the way through the sidecar "
        "alone, beside what holding for a slot gains (for comparison)",
    )
    p.add_argument(
        "--transparent-max-wait",
        type=float,
        metavar="MS",
        help="also run transparent mode at the admitted N with every stream's gate.maxWaitMs "
        "at MS (a frame whose slot is further goes at once, ungated), as a user bounds a "
        "stream's wait (for comparison; e.g. about one body)",
    )
    p.add_argument(
        "--slots-direct",
        action="store_true",
        help="also run the loop's cameras, right after it, capturing at the same slot instants "
        "straight to Triton: the plan's table without the way through the sidecars (for "
        "comparison)",
    )
    p.add_argument(
        "--stage-windows",
        type=int,
        default=0,
        metavar="K",
        help="also run the profile's own full-load stage K times on the loop's servers right "
        f"after the loop, each {FULL_LOAD_S:g} s as a calibration Job's: how much one stage "
        "says of the loop (for comparison)",
    )
    p.add_argument(
        "--phase-draws",
        type=int,
        default=1,
        metavar="K",
        help="judge transparent mode on K draws of camera phases at the N it is judged at: "
        "the bench's own and K - 1 more, each beside random phases at the same draw "
        "(phaseDraws; default 1: the bench's own only)",
    )
    p.add_argument(
        "--draw-frames",
        type=int,
        default=1500,
        help="frames for each of --phase-draws' other draws, random and transparent alike",
    )
    p.add_argument(
        "--within",
        type=float,
        metavar="SECONDS",
        help="the run's wall-clock budget from its start: neither transparent mode at "
        "random phases' N nor a further --phase-draws draw begins that would end past it "
        "(a device command's limit; default: none)",
    )
    p.add_argument(
        "--calibrate-with",
        choices=["profiler", "job", "job-beside"],
        default="profiler",
        help="how each body is profiled: stagger profile in-process over gRPC against the "
        "loop's servers (profiler), or the operator's calibration Job, its containers run as "
        "the kubelet would, --servers copies of Triton: on the idle GPU, the loop's servers "
        "stopped meanwhile, as a stream's first calibration (job), or beside the loop's "
        "idle servers, as a re-calibration beside a GPU's streams (job-beside)",
    )
    p.add_argument(
        "--stop-on-stalls",
        action="store_true",
        help="stop a body's run after its profile where the profile finds the host stalling "
        "(device time is better spent on another host)",
    )
    p.add_argument("--models", type=Path, default=MODELS, help="a repository with `detector`")
    p.add_argument("--frame", type=Path, help="a JPEG (default: a synthetic 1080p frame)")
    p.add_argument("--product", help="GPU product for the profiles (default: nvidia-smi's)")
    args = p.parse_args(argv)
    args.mode = args.mode or str(SharingMode.TIME_SLICING)
    if args.throughput_cap is None:
        args.throughput_cap = PlannerSettings().throughput_cap_under(SharingMode(args.mode))
    if args.also_cap is not None and not 0 < args.also_cap <= 1:
        p.error("--also-cap must be in (0, 1], as throughputCap is")
    if args.also_cap is not None and args.mixed:
        p.error("--also-cap compares N identical streams: leave out --mixed")
    if args.profiles < 1:
        p.error("--profiles must be at least 1")
    if args.stage_windows < 0:
        p.error("--stage-windows must be 0 or more")
    if args.phase_draws < 1 or args.draw_frames < 1:
        p.error("--phase-draws and --draw-frames must be at least 1")
    if args.within is not None and args.within <= 0:
        p.error("--within must be a positive number of seconds")
    if args.transparent_max_wait is not None and args.transparent_max_wait <= 0:
        p.error("--transparent-max-wait must be a positive number of ms, as gate.maxWaitMs is")
    args.began = time.monotonic()
    if args.frame is not None and not args.frame.is_file():
        p.error(f"--frame {args.frame}: no such file")
    if args.servers < 2:
        p.error("--servers must be at least 2 (the profile's sweep needs two)")
    # a comparison that would change no stream would measure the loop twice under a new name
    fleet_fps, fleet_models = {f for _, f in MIXED}, {m for m, _ in MIXED}
    if (args.split_from_fps is not None or args.declare_exclusive or args.alone) and not args.mixed:
        p.error(
            "--split-from-fps, --declare-exclusive and --alone compare mixed fleets: add --mixed"
        )
    if args.split_from_fps is not None and not 0 < args.split_from_fps <= max(fleet_fps):
        p.error(f"--split-from-fps must be in (0, {max(fleet_fps):g}]: no stream runs faster")
    if args.declare_exclusive and args.declare_exclusive not in fleet_models:
        p.error(
            f"--declare-exclusive: the mixed fleet's models are {', '.join(sorted(fleet_models))}"
        )
    return args


def main() -> None:
    args = parse_args()
    out: Path = args.out
    root = out / f"{args.mode}{'-mixed' if args.mixed else ''}"
    root.mkdir(parents=True, exist_ok=True)
    if args.frame is None:
        args.frame = out / "frame.jpg"
        write_frame(args.frame)
    # the calibration Job's inputs are paths in its pod: absolute (a relative one is refused)
    args.frame = args.frame.resolve()
    on_gpu = shutil.which("nvidia-smi") is not None
    device = gpu_name() if on_gpu else "no NVIDIA GPU (a dry run)"
    if args.gpu_memory_mib is None:  # the planner places by memory too: an H100's, not an H200's
        args.gpu_memory_mib = (
            gpu_memory_mib(args.gpu) if on_gpu else None
        ) or DRY_RUN_GPU_MEMORY_MIB
    product = args.product or re.sub(r"\s+", "-", device.split(",")[0].strip())
    mode = SharingMode(args.mode)
    bodies = sorted({m for m, _ in MIXED}) if args.mixed else args.bodies
    result: dict[str, Any] = {
        "kind": "loop",
        "device": device,
        "product": product,
        "mode": args.mode,
        "fps": args.fps,
        "framesPerConfiguration": args.frames,
        "servers": args.servers,
        "settings": {
            "utilizationCap": PlannerSettings().utilization_cap,
            "throughputCap": args.throughput_cap,
            "chargeModelTime": args.charge_model_time,
            "gpuMemoryMiB": args.gpu_memory_mib,
        },
        "results": {},
    }
    report = root / "loop.json"
    Path(NO_MPS).mkdir(exist_ok=True)
    if mode is SharingMode.MPS and (why := mps(start=True)) is not None:
        raise SystemExit(f"MPS did not start: {why}")
    servers: list[LocalTriton] = []
    try:
        repo = repository(root, args.models, bodies)
        log(f"{device}: starting {args.servers} tritonservers ({args.mode}) with {bodies}")
        servers = make_servers(args.servers, args.gpu, root, repo, mode is SharingMode.MPS)
        try:
            start_all(servers)
        except Exception as e:
            result["error"] = f"the tritonservers did not start: {e}"
            log(result["error"])
            report.write_text(json.dumps(result, indent=1))
            raise
        work = ["mixed"] if args.mixed else bodies

        def save() -> None:
            report.write_text(json.dumps(result, indent=1))

        for what in work:
            done: dict[str, Any] = {}
            result["results"][what] = done
            try:
                if what == "mixed":
                    mixed(
                        servers=servers,
                        frame=args.frame,
                        product=product,
                        mode=mode,
                        root=root,
                        args=args,
                        out=done,
                        save=save,
                    )
                else:
                    identical(
                        what,
                        servers=servers,
                        frame=args.frame,
                        product=product,
                        mode=mode,
                        root=root,
                        args=args,
                        out=done,
                        save=save,
                    )
            except Exception as e:  # one setting's failure is reported, the others kept
                done["error"] = f"{e!r}; {servers_down(servers)}"
                if isinstance(e, NoKnee):  # the sweep that showed none, to replay it
                    done["sweep"] = sweep_rows(e.sweep)
                log(f"{what}: failed: {done['error']}")
            save()
    finally:
        for s in servers:
            s.stop()
        if mode is SharingMode.MPS:
            result["mpsStopError"] = mps(start=False)
    result["targets"] = loop_verdict(result)
    report.write_text(json.dumps(result, indent=1))
    print(render_loop(result["targets"]), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
