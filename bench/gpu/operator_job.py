"""The operator's calibration Job, run on this machine as the kubelet would run it: the Job
:func:`stagger_operator.manifests.calibration_job` writes for a bench stream (its Triton
copies, then its own ``stagger profile`` command), and the result the operator would read
from its termination message. ``bench.gpu.job`` compares it with the loop's own profile;
``bench.gpu.loop --calibrate-with job`` plans with it."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu.calibrate import NUMPY_DIR_ENV
from bench.gpu.streams import log, model_env
from stagger.core.api import InferenceStream, SharingMode
from stagger.core.calibration import CalibrationResult
from stagger.profiler import ProfileReport
from stagger_operator import manifests
from stagger_operator.settings import OperatorSettings
from stagger_testkit import kubelet
from stagger_testkit.localtriton import LocalTriton, server_env

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
    """The stream the Job calibrates for: RetinaNet at ``fps``, declaring the GPU memory a
    server holds (so the Job runs copies) and a real frame as its calibration input."""
    return InferenceStream.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "InferenceStream",
            "metadata": {"name": "cam-0", "namespace": "bench", "uid": "uid-cam-0"},
            "spec": {
                "model": body,
                "fps": fps,
                "memoryMiB": memory_mib,
                "calibrationInputs": {"IMAGE": str(frame)},
            },
        }
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
    servers_running: int = 0,
) -> dict[str, Any]:
    """The Job the operator writes for the bench's stream at ``servers`` calibration
    servers, on a GPU with ``memory_free_mib`` free and ``servers_running`` streams'
    servers beside it."""
    base = kubelet.free_port_run(servers, manifests.COPY_PORT_STRIDE)
    env = model_env(args.gpu, args.servers, under_mps=mode is SharingMode.MPS) | {
        "STAGGER_BODY_LOCK": str(root / "stand-in-gpu.lock")  # the dry run's "GPU"
    }
    cam = job_stream(body, args.fps, args.memory_mib, frame)
    triton = LocalTriton(repo, http_port=base, env=env, extra_args=[SHM_ARG]).as_container()
    cam.spec.template = {"spec": {"containers": [triton]}}
    target = manifests.CalibrationTarget(
        "bench", args.gpu, None, product, mode, memory_free_mib, servers_running
    )
    settings = OperatorSettings(triton_http_port=base, calibration_servers=servers)
    return manifests.calibration_job(cam, target, settings)


@dataclass(frozen=True)
class JobRun:
    """What a calibration Job measured: its result (the termination message the operator
    reads), its profiler's whole report, with how many servers, and how long it took
    from its servers' start."""

    result: CalibrationResult
    report: ProfileReport
    servers: int
    servers_why: str
    seconds: float


def run_job(job: dict[str, Any], logs: Path) -> JobRun:
    """A calibration Job's containers run as the kubelet would, each logging under ``logs``:
    every Triton copy at once, then the Job's own profiler, which waits for them."""
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
    done = JobRun(
        result=CalibrationResult.model_validate_json(result_file.read_text()),
        report=ProfileReport.from_json(json.loads(run.stdout)),
        servers=len(pod["initContainers"]),
        servers_why=job["metadata"]["annotations"][manifests.ANNOTATION_CALIBRATION_SERVERS],
        seconds=round(time.monotonic() - began, 1),
    )
    log(f"the Job at {done.servers_why}: took {done.seconds} s")
    return done
