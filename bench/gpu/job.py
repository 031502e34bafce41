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
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu.calibrate import MODELS, gpu_memory_mib, gpu_name, mps, write_frame
from bench.gpu.loop import (
    DRY_RUN_GPU_MEMORY_MIB,
    apply_one_at_a_time,
    calibrate,
    calibrate_with_job,
    cluster_of,
    make_servers,
    repository,
    start_all,
    stream,
)
from bench.gpu.operator_job import two_instances
from bench.gpu.streams import NO_MPS, log
from stagger.core.api import ModelProfile, SharingMode
from stagger.core.placement import PlannerSettings
from stagger_operator.settings import OperatorSettings

CANDIDATES = 64
"""Streams offered to the planner, one at a time: more than any GPU here admits at 10 fps."""


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
            try:
                profile, summary = calibrate_with_job(
                    args.body,
                    frame=args.frame,
                    product=product,
                    mode=mode,
                    root=root,
                    args=args,
                    servers=servers,
                    repo=models,
                )
            except Exception as e:  # one way's failure is reported, the others kept
                result[key] = {"error": repr(e)}
                log(f"{key}: failed: {e!r}")
                save()
                continue
            result[key] = {
                **{k: summary[k] for k in ("servers", "serversWhy", "gpuMemoryFreeMiB")},
                **{k: summary[k] for k in SUMMARY_KEYS},
                "admitted": admitted(profile, args.body, product, args),
            }
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
