"""Stagger on a laptop: a real tritonserver, one sidecar per stream and a camera simulator,
with no cluster and no GPU. Prints each configuration's latency and drops side by side.

    .venv/bin/python examples/03-local-triton/run.py [--streams 4] [--fps 4] [--body-ms 45]
        [--seconds 15] [--modes synchronized,random,transparent,slot-clock] [--video FILE]
        [--json FILE]

The "GPU" is a lock that the detector's instances share (models/detector): a body holds it,
so two bodies never run at once and a second one waits. Streams are planned onto it with
Stagger's own planner; each stream's sidecar (``python -m stagger_sidecar gate``, as in a
pod) gets the slot contract the operator would write, and its camera sends JPEG frames at
``--fps``, one in flight, dropping those that come due while it waits.

Configurations, one after the other on the same server:

- synchronized: every camera captures at the same instant, straight to Triton
  (pods started together, no Stagger);
- random: each camera at a random phase, straight to Triton (what Kubernetes gives);
- transparent: the same random phases, through the sidecars (no change to the app): each
  sidecar measures where its stream's requests arrive, and the GPU's slot table is
  re-timed to start each body just after its stream's arrival (here a local follower does
  what the operator does, at its pace: ``stagger_testkit.localtriton.LocalFollower``); a
  request is held
  only until its slot. The table switches at an instant no body of the old one runs. The
  figures after it settled are shown apart, with when it did;
- slot-clock: cameras capture at their stream's slot, read from the sidecar
  (``stagger.client.SlotClient``), through the sidecars.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as triton_http
from rich.console import Console
from rich.table import Table

# the checkout's test tooling (stagger_testkit: a local tritonserver, simulated cameras) is
# not in the installed package: this example runs from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stagger.client import SlotClient
from stagger.core.api import InferenceStream
from stagger.core.cluster import Cluster
from stagger.core.contract import SlotAssignment
from stagger.core.placement import Plan, plan, shard_ms
from stagger_testkit.camerasim import (
    Camera,
    CameraLog,
    summarize,
    synthetic_frames,
    video_frames,
)
from stagger_testkit.localtriton import LocalFollower, LocalSidecar, LocalTriton

HERE = Path(__file__).resolve().parent
MODEL = "detector"
MODES = ("synchronized", "random", "transparent", "slot-clock")
NAMESPACE = "local"
CAPTURE_LEAD_S = 0.005
"""Slot-clock cameras capture this long before their slot: encoding the JPEG and the HTTP
request must reach the sidecar before the slot starts, or the frame waits for the next."""


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, default=4, help="cameras (default 4)")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second per camera")
    p.add_argument("--body-ms", type=float, default=45.0, help="the model's exclusive body")
    p.add_argument("--pre-ms", type=float, default=15.0, help="work before the body")
    p.add_argument("--post-ms", type=float, default=15.0, help="work after the body")
    p.add_argument("--seconds", type=float, default=15.0, help="per configuration")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, in this order")
    p.add_argument("--video", help="a video file for the frames (needs opencv-python)")
    p.add_argument("--seed", type=int, default=1, help="for the random phases")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        p.error(f"unknown mode(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    if args.streams < 1 or args.fps <= 0 or args.body_ms <= 0 or args.seconds <= 0:
        p.error("--streams, --fps, --body-ms and --seconds must be positive")
    return args


def plan_streams(args: argparse.Namespace) -> Plan:
    """Place the cameras on one local "GPU" with Stagger's planner, as the operator would."""
    solo_ms = args.pre_ms + args.body_ms + args.post_ms
    streams = [
        InferenceStream.model_validate(
            {
                "apiVersion": "stagger.dev/v1alpha1",
                "kind": "InferenceStream",
                "metadata": {"name": f"cam-{i + 1}", "namespace": NAMESPACE},
                "spec": {
                    "model": MODEL,
                    "fps": args.fps,
                    "bodyTimeMs": args.body_ms,
                    "latencyMs": solo_ms,
                    "memoryMiB": 1,
                },
            }
        )
        for i in range(args.streams)
    ]
    gpu = {"index": 0, "product": "local-cpu", "memoryMiB": 1024}
    cluster = Cluster.model_validate({"nodes": [{"name": "laptop", "gpus": [gpu]}]})
    result = plan(streams, cluster)
    if result.unplaced:
        reasons = "; ".join(f"{u.stream}: {u.reason}" for u in result.unplaced)
        raise SystemExit(f"these streams do not fit on one GPU: {reasons}")
    if any(p.shards > 1 for p in result.shards):
        raise SystemExit("a stream was split into shards; lower --fps or --body-ms")
    return result


def model_repository(root: Path, args: argparse.Namespace) -> Path:
    """models/detector with one instance per stream and the times asked for."""
    repo = root / "models"
    shutil.copytree(HERE / "models", repo)
    config = repo / MODEL / "config.pbtxt"
    text = re.sub(r"count: \d+", f"count: {args.streams}", config.read_text())
    for key, value in (
        ("PRE_MS", args.pre_ms),
        ("BODY_MS", args.body_ms),
        ("POST_MS", args.post_ms),
    ):
        text = re.sub(rf'(key: "{key}", value: {{ string_value: ")[^"]*', rf"\g<1>{value:g}", text)
    config.write_text(text)
    return repo


def sender(url: str) -> Any:
    """A Triton HTTP client per thread: tritonclient.http runs on gevent, whose connections
    belong to the thread that made them."""
    local = threading.local()

    def send(frame: bytes) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = triton_http.InferenceServerClient(url, network_timeout=10.0)
        image = triton_http.InferInput("IMAGE", [len(frame)], "UINT8")
        image.set_data_from_numpy(np.frombuffer(frame, dtype=np.uint8))
        return local.client.infer(MODEL, [image]).as_numpy("DETECTIONS")

    return send


def frames(args: argparse.Namespace) -> list[bytes]:
    """A few seconds of frames, encoded up front: the cameras share this process, and
    encoding at capture time would steal CPU from one another."""
    source = video_frames(args.video) if args.video else synthetic_frames()
    return list(itertools.islice(source, max(1, round(3 * args.fps))))


def run_mode(
    mode: str,
    args: argparse.Namespace,
    triton: LocalTriton,
    sidecars: list[LocalSidecar],
    contracts: dict[str, SlotAssignment],
) -> tuple[list[CameraLog], list[float]]:
    """The cameras' logs, and when the follower's re-timings took effect (transparent)."""
    rng = random.Random(args.seed)
    period = 1.0 / args.fps
    together = rng.uniform(0, period)  # synchronized cameras share a phase, not the epoch's
    phases = [rng.uniform(0, period) for _ in sidecars]  # random and transparent share them
    cameras = []
    clip = frames(args)
    for i, sidecar in enumerate(sidecars):
        through = sidecar.http if mode in ("transparent", "slot-clock") else triton.http
        cameras.append(
            Camera(
                f"cam-{i + 1}",
                args.fps,
                send=sender(through),
                frames=itertools.cycle(clip),
                phase_s=phases[i] if mode in ("random", "transparent") else together,
                slot_clock=SlotClient(f"http://{sidecar.http}") if mode == "slot-clock" else None,
                lead_s=CAPTURE_LEAD_S,
            )
        )
    with ExitStack() as stack, ThreadPoolExecutor(len(cameras)) as pool:
        follower = (
            stack.enter_context(LocalFollower(sidecars, contracts))
            if mode == "transparent"
            else None
        )
        # One frame each first, not counted: connections, the slot clock, first-call costs.
        list(pool.map(lambda c: c.send(clip[0]), cameras))
        start = math.ceil(time.time()) + 1.0  # every camera's clock starts on this second
        logs = list(pool.map(lambda c: c.run(start, args.seconds), cameras))
    return logs, (follower.switches if follower else [])


def after(logs: list[CameraLog], t: float, end: float) -> list[CameraLog]:
    """The same cameras, counting only frames due from ``t`` on."""
    out = []
    for log in logs:
        kept = [(a, x) for a, x in zip(log.captured_at, log.latencies_s, strict=True) if a >= t]
        part = CameraLog(log.name, log.fps, due=math.floor((end - t) * log.fps + 1e-9))
        part.captured_at = [a for a, _ in kept]
        part.latencies_s = [x for _, x in kept]
        out.append(part)
    return out


def report(results: dict[str, list[CameraLog]], args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "streams": args.streams,
        "fps": args.fps,
        "bodyMs": args.body_ms,
        "soloMs": args.pre_ms + args.body_ms + args.post_ms,
        "seconds": args.seconds,
        "modes": {},
    }
    for mode, logs in results.items():
        pooled = summarize([x for log in logs for x in log.latencies_s], sum(x.due for x in logs))
        doc["modes"][mode] = {"all": pooled, "streams": {x.name: x.summary() for x in logs}}
    return doc


def show(doc: dict[str, Any]) -> None:
    console = Console()
    title = (
        f"{doc['streams']} cameras × {doc['fps']:g} fps, body {doc['bodyMs']:g} ms, "
        f"solo {doc['soloMs']:g} ms, {doc['seconds']:g} s each"
    )
    table = Table(
        "CONFIGURATION", "STREAM", "FRAMES", "p50 ms", "p99 ms", "max ms", "DROPS", title=title
    )
    for mode, result in doc["modes"].items():
        rows = [*result["streams"].items(), ("all", result["all"])]
        for name, s in rows:
            table.add_row(
                mode if name == "all" else "",
                name,
                str(s["frames"]),
                *(f"{s[k]:.1f}" if s[k] is not None else "-" for k in ("p50Ms", "p99Ms", "maxMs")),
                f"{s['dropPercent']:.1f}%",
                end_section=name == "all",
            )
    console.print(table)


def main() -> None:
    args = arguments()
    planned = plan_streams(args)
    placements = planned.shards
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stagger-local-")))
        triton = stack.enter_context(
            LocalTriton(
                model_repository(tmp, args),
                env={"STAGGER_BODY_LOCK": str(tmp / "gpu.lock")},
                log_file=tmp / "tritonserver.log",
            )
        )
        epoch = datetime.fromtimestamp(math.floor(time.time()), UTC)
        sidecars = []
        contracts: dict[str, SlotAssignment] = {}
        for p in placements:
            slot = tmp / f"{p.stream}.slot.json"
            contract = contracts[p.stream] = SlotAssignment.for_shard(
                p, tick_hz=planned.tick_hz, epoch=epoch, generation=1, effective_at=epoch
            )
            slot.write_text(contract.model_dump_json(by_alias=True))
            sidecars.append(LocalSidecar(p.stream, slot, triton, namespace=p.namespace))
            stack.callback(sidecars[-1].stop)
        with ThreadPoolExecutor(len(sidecars)) as pool:
            list(pool.map(LocalSidecar.start, sidecars))
        for p in placements:
            period_ms, offset_ms = shard_ms(p)
            print(f"{p.stream}: slot every {period_ms:.0f} ms at offset {offset_ms:.1f} ms")
        results = {}
        settled: dict[str, float] = {}
        for mode in args.modes.split(","):
            print(f"running {mode} for {args.seconds:g} s ...", flush=True)
            logs, switches = run_mode(mode, args, triton, sidecars, contracts)
            results[mode] = logs
            if switches:
                first = min(min(log.captured_at, default=math.inf) for log in logs)
                end = first + args.seconds
                # a switch can hold the frame in flight at it a period: steady from the next
                steady = switches[-1] + 1.0 / args.fps
                settled[mode] = steady - first
                results[f"{mode}, after it settled"] = after(logs, steady, end)
                print(
                    f"{mode}: the table was re-timed to the arrivals {len(switches)} time(s), "
                    f"steady {settled[mode]:.1f} s after the start",
                    flush=True,
                )
    doc = report(results, args)
    doc["settledAfterS"] = settled
    show(doc)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
