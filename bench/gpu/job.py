"""The operator's calibration Job on one GPU, beside the loop's own profile: is a stream
calibrated in the cluster charged what ``bench.gpu.loop`` charges it?

    python3 -m bench.gpu.job --out OUT --mode mps --servers 16 --body graph

``bench.gpu.loop`` profiles in-process, over gRPC, against servers it started itself; in a
cluster the operator's calibration Job does it: copies of the stream's Triton container and
``stagger profile`` over HTTP with the stream's ``calibrationInputs``. In one run, on one
GPU, one after the other:

1. ``job``: the Job the operator writes (:func:`stagger_operator.manifests.calibration_job`)
   for a RetinaNet stream declaring ``--memory-mib`` and a real frame as its
   ``calibrationInputs``, at ``--servers`` calibration servers (the operator's default is
   16), bounded by the GPU's free memory as the operator bounds it. Its containers run as
   the kubelet runs them (:mod:`stagger_testkit.kubelet`): every Triton copy at once, then
   the Job's own ``stagger profile`` command, waiting for them itself;
2. ``loop``: ``bench.gpu.loop``'s profile (:func:`bench.gpu.loop.calibrate`) against
   ``--servers`` servers started as the loop starts them;
3. ``jobOneServer``: the same Job at ``calibrationServers: 1``, its model given two
   instances (one server's sweep needs two executions that can overlap): what a Job charged
   before it ran copies (issue 20's one-server cost), for comparison.

For each: the profile's figures, the seconds from the servers' start to the result (what a
user waits in the cluster, a model's load included), and how many ``--fps`` streams the
planner admits on this GPU with that profile, applied one at a time (the operator's path).
A CPU dry run uses examples/03's stand-in (an exclusive body behind a lock all servers
share).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gpu.calibrate import MODELS, NUMPY_DIR_ENV, gpu_memory_mib, gpu_name, mps, write_frame
from bench.gpu.loop import (
    DRY_RUN_GPU_MEMORY_MIB,
    apply_one_at_a_time,
    calibrate,
    cluster_of,
    make_servers,
    repository,
    start_all,
    stream,
)
from bench.gpu.streams import NO_MPS, log, model_env
from stagger.core.api import InferenceStream, ModelProfile, SharingMode
from stagger.core.calibration import CalibrationResult, model_profile
from stagger.core.placement import PlannerSettings
from stagger_operator import manifests
from stagger_operator.settings import OperatorSettings
from stagger_testkit import kubelet
from stagger_testkit.localtriton import LocalTriton, server_env

CANDIDATES = 64
"""Streams offered to the planner, one at a time: more than any GPU here admits at 10 fps."""
SHM_ARG = "--backend-config=python,shm-default-byte-size=16777216"  # as the loop's servers


def model_path() -> list[str]:
    """Where the servers' Python models import from: the loop's (numpy < 2 first)."""
    paths = sysconfig.get_paths()
    numpy_dir = [os.environ[NUMPY_DIR_ENV]] if NUMPY_DIR_ENV in os.environ else []
    return [*numpy_dir, paths["purelib"], paths["platlib"]]


def two_instances(repo: Path) -> Path:
    """A copy of ``repo`` whose models run two instances each: what one server needs to be
    profiled at all (its sweep overlaps two inferences)."""
    copy = repo.with_name(repo.name + "-two-instances")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repo, copy)
    for config in copy.glob("*/config.pbtxt"):
        config.write_text(re.sub(r"count: 1\b", "count: 2", config.read_text()))
    return copy


def job_stream(body: str, fps: float, memory_mib: int, frame: Path) -> InferenceStream:
    s = stream("cam-0", body, fps, memory_mib)
    return s.model_copy(
        update={"spec": s.spec.model_copy(update={"calibration_inputs": {"IMAGE": str(frame)}})}
    )


def gpu_memory_free_mib(index: int) -> int | None:
    """What the operator reads as the GPU's free memory (None where nvidia-smi cannot say)."""
    query = ["nvidia-smi", "-i", str(index), "--query-gpu=memory.free"]
    out = subprocess.run(
        [*query, "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return int(out) if out.isdigit() else None


def build_job(
    servers: int,
    *,
    body: str,
    repo: Path,
    frame: Path,
    product: str,
    mode: SharingMode,
    root: Path,
    args: argparse.Namespace,
    memory_free_mib: int | None,
) -> dict[str, Any]:
    """The Job the operator writes for the bench's stream at ``servers`` calibration
    servers, on a GPU with ``memory_free_mib`` free."""
    base = kubelet.free_port_run(servers, manifests.COPY_PORT_STRIDE)
    env = model_env(args.gpu, args.servers, under_mps=mode is SharingMode.MPS) | {
        "STAGGER_BODY_LOCK": str(root / "stand-in-gpu.lock")  # the dry run's "GPU"
    }
    cam = job_stream(body, args.fps, args.memory_mib, frame)
    triton = LocalTriton(repo, http_port=base, env=env, extra_args=[SHM_ARG]).as_container()
    cam.spec.template = {"spec": {"containers": [triton]}}
    cam.metadata.uid = "uid-cam-0"  # as read from the API server
    target = manifests.CalibrationTarget("bench", args.gpu, None, product, mode, memory_free_mib)
    settings = OperatorSettings(triton_http_port=base, calibration_servers=servers)
    return manifests.calibration_job(cam, target, settings)


def run_job(job: dict[str, Any], logs: Path) -> tuple[CalibrationResult, dict[str, Any]]:
    """A calibration Job's containers run as the kubelet would, each logging under ``logs``:
    the result (its termination message) and what it took, from the servers' start."""
    began = time.monotonic()
    pod = job["spec"]["template"]["spec"]
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    (logs / "job.json").write_text(json.dumps(job, indent=1))
    result_file = logs / "termination-log"
    with kubelet.running(pod["initContainers"], server_env(model_path()), logs):
        command = kubelet.stagger_command(pod["containers"][0], result_file)
        run = subprocess.run(command, capture_output=True, text=True, check=False)
    (logs / "profile.json").write_text(run.stdout)
    if run.returncode != 0:
        raise RuntimeError(f"the Job's profiler exited {run.returncode}: {run.stderr[-2000:]}")
    result = CalibrationResult.model_validate_json(result_file.read_text())
    report = json.loads(run.stdout)
    summary = {
        "servers": len(pod["initContainers"]),
        "serversWhy": job["metadata"]["annotations"][manifests.ANNOTATION_CALIBRATION_SERVERS],
        "seconds": round(time.monotonic() - began, 1),
        "soloP50Ms": result.solo_p50_ms,
        "soloP99Ms": result.solo_p99_ms,
        "kneeMs": result.knee_ms,
        "saturation": report.get("saturation"),
        "costPerFrameMs": result.effective_body_ms,
        "bodyTimeMs": result.body_time_ms,
        "costMs": result.cost_ms,
        "exclusiveBody": result.exclusive_body,
        "warnings": result.warnings,
    }
    log(f"the Job at {summary['serversWhy']}: {summary}")
    return result, summary


def admitted(profile: ModelProfile, body: str, product: str, args: argparse.Namespace) -> int:
    """How many ``--fps`` streams the planner admits on this GPU with this profile."""
    mode = SharingMode(args.mode)
    settings = PlannerSettings()
    cluster = cluster_of(product, mode, args.gpu_memory_mib)
    candidates = [stream(f"cam-{i}", body, args.fps, args.memory_mib) for i in range(CANDIDATES)]
    _, applied, _ = apply_one_at_a_time(candidates, cluster, [profile], settings, CANDIDATES)
    return len(applied)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--mode", choices=[str(m) for m in SharingMode], default=str(SharingMode.TIME_SLICING)
    )
    p.add_argument("--body", choices=["eager", "graph"], default="graph")
    p.add_argument(
        "--servers",
        type=int,
        default=OperatorSettings.model_fields["calibration_servers"].default,
        help="the Job's calibrationServers, and the loop's servers (default: the operator's)",
    )
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--memory-mib", type=int, default=2048, help="the stream's memoryMiB")
    p.add_argument("--models", type=Path, default=MODELS, help="a repository with `detector`")
    p.add_argument("--frame", type=Path, help="a JPEG (default: a synthetic 1080p frame)")
    p.add_argument("--product", help="GPU product for the profiles (default: nvidia-smi's)")
    args = p.parse_args(argv)
    if args.servers < 2:
        p.error("--servers must be at least 2 (the profile's sweep needs two)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.out / f"job-{args.mode}-{args.body}"
    root.mkdir(parents=True, exist_ok=True)
    if args.frame is None:
        args.frame = args.out / "frame.jpg"
        write_frame(args.frame)
    args.frame = args.frame.resolve()
    args.on_gpu = shutil.which("nvidia-smi") is not None
    device = gpu_name() if args.on_gpu else "no NVIDIA GPU (a dry run)"
    args.gpu_memory_mib = (gpu_memory_mib(args.gpu) if args.on_gpu else None) or (
        DRY_RUN_GPU_MEMORY_MIB
    )
    product = args.product or re.sub(r"\s+", "-", device.split(",")[0].strip())
    mode = SharingMode(args.mode)
    result: dict[str, Any] = {
        "kind": "calibration-job",
        "device": device,
        "product": product,
        "mode": args.mode,
        "body": args.body,
        "fps": args.fps,
        "memoryMiB": args.memory_mib,
        "calibrationServers": args.servers,
        "gpuMemoryMiB": args.gpu_memory_mib,
    }
    report = root / "job.json"

    def save() -> None:
        report.write_text(json.dumps(result, indent=1))

    Path(NO_MPS).mkdir(exist_ok=True)
    if mode is SharingMode.MPS and (why := mps(start=True)) is not None:
        raise SystemExit(f"MPS did not start: {why}")
    try:
        repo = repository(root, args.models, [args.body])
        for key, servers, models in (
            ("job", args.servers, repo),
            ("jobOneServer", 1, two_instances(repo)),
        ):
            if key == "jobOneServer":  # the loop's profile between the two Jobs
                result["loop"] = loop_profile(args, repo, product, root)
                save()
            free = gpu_memory_free_mib(args.gpu) if args.on_gpu else None
            try:
                job = build_job(
                    servers,
                    body=args.body,
                    repo=models,
                    frame=args.frame,
                    product=product,
                    mode=mode,
                    root=root,
                    args=args,
                    memory_free_mib=free,
                )
                job_result, summary = run_job(job, root / f"job-{servers}")
            except Exception as e:  # one way's failure is reported, the others kept
                result[key] = {"error": repr(e)}
                log(f"{key}: failed: {e!r}")
                save()
                continue
            profile = model_profile(job_result, product, mode, datetime.now(UTC))
            summary["gpuMemoryFreeMiB"] = free
            summary["admitted"] = admitted(profile, args.body, product, args)
            result[key] = summary
            save()
    finally:
        if mode is SharingMode.MPS:
            result["mpsStopError"] = mps(start=False)
    result["comparison"] = compare(result)
    save()
    print(render(result), flush=True)
    return 0


def loop_profile(args: argparse.Namespace, repo: Path, product: str, root: Path) -> dict[str, Any]:
    """``bench.gpu.loop``'s profile, on servers started as the loop starts them."""
    mode = SharingMode(args.mode)
    began = time.monotonic()
    servers = make_servers(args.servers, args.gpu, root, repo, mode is SharingMode.MPS)
    try:
        start_all(servers)
        profile, summary = calibrate(servers, args.body, args.frame, product, mode)
    except Exception as e:
        log(f"loop: failed: {e!r}")
        return {"error": repr(e)}
    finally:
        for s in servers:
            s.stop()
    return {
        "servers": len(servers),
        **{k: summary[k] for k in SUMMARY_KEYS if k in summary},
        "secondsWithStart": round(time.monotonic() - began, 1),
        "admitted": admitted(profile, args.body, product, args),
    }


SUMMARY_KEYS = (
    "seconds",
    "soloP50Ms",
    "soloP99Ms",
    "kneeMs",
    "saturation",
    "costPerFrameMs",
    "bodyTimeMs",
    "costMs",
    "exclusiveBody",
    "warnings",
)


def compare(result: dict[str, Any]) -> dict[str, Any]:
    """The Job against the loop: cost ratio and admitted streams, where both measured."""
    job, loop, one = (result.get(k) or {} for k in ("job", "loop", "jobOneServer"))
    out: dict[str, Any] = {}
    for name, way in (("job", job), ("jobOneServer", one)):
        if way.get("costMs") and loop.get("costMs"):
            out[f"{name}CostOverLoop"] = round(way["costMs"] / loop["costMs"], 3)
        if "admitted" in way and "admitted" in loop:
            out[f"{name}AdmittedMinusLoop"] = way["admitted"] - loop["admitted"]
    return out


def render(result: dict[str, Any]) -> str:
    head = f"{result['device']} · {result['mode']} · {result['body']} body · {result['fps']:g} fps"
    rows = [head]
    rows.append(f"{'way':<14}{'servers':>8}{'cost ms':>9}{'body ms':>9}{'admits':>8}{'s':>7}")
    for key in ("job", "loop", "jobOneServer"):
        way = result.get(key) or {}
        if "error" in way:
            rows.append(f"{key:<14} failed: {way['error']}")
            continue
        seconds = way.get("secondsWithStart", way.get("seconds"))
        rows.append(
            f"{key:<14}{way.get('servers', '-'):>8}{way.get('costMs') or '-':>9}"
            f"{way.get('bodyTimeMs', '-'):>9}{way.get('admitted', '-'):>8}{seconds or '-':>7}"
        )
    rows.append(json.dumps(result.get("comparison", {})))
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
