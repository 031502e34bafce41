"""Streams per GPU through the product's data path: per stream a camera client, its own
sidecar and its own tritonserver, as the operator deploys them, N streams on one GPU.

    python3 -m bench.gpu.streams --out OUT --counts 7 8 --gpus 0 1
        [--mps-counts 13 14 15 16 --mps-gpus 2 3] [--frames 3000] [--fps 10] [--post-ms 8]

Each stream is a group of processes, as in a pod: ``tritonserver`` (bench/gpu/models
detector, RetinaNet on the GPU, one instance), ``python -m stagger_sidecar gate`` and
``python -m bench.gpu.camera`` (a 1080p JPEG at 10 fps over gRPC, decoded on the GPU in the
model; one in flight; 8 ms of CPU post-processing per answer). For every N and in one run,
at least ``--frames`` frames per configuration:

- synchronized: every camera at the same phase, straight to Triton;
- random: random phases (what Kubernetes gives today), straight to Triton;
- transparent: the same random phases, through the sidecars (static stagger: each request
  held until its stream's slot);
- slot-clock: cameras capture at their slot (``SlotClient``, ``--lead-ms`` before it),
  through the sidecars;
- on-slot: cameras at their slot's phase, through the sidecars;
- coordinated: the same, through sidecars that share the GPU's ledger (coordinated release,
  ``STAGGER_GPU_LEDGER``): a request also waits while another stream's body is predicted
  to run, at most its slot's body;
- grouped: streams in groups of ``--group`` sharing one slot (they start together),
  ⌈N / group⌉ slots spread over the period, through the sidecars: under time-slicing a GPU
  may serve two overlapping bodies faster than two in turn, so fewer, fuller slots can
  beat N thin ones (experimental);
- direct: the same phases, straight to Triton: the sidecar's cost is on-slot minus direct.

The model reports when it began and ended each request, so every configuration also says
where its frames' time went (before the model, in it, after it) and how much of their model
time other streams' overlapped (``stagger_testkit.camerasim.phases``), with the host's TCP
retransmissions and timeouts over it (all GPUs' runs together).

Slots are the planner's for equal streams: offsets i × period / N, each body period / N
or ``--body-ms`` (the calibrated body, alone on the GPU, when it is shorter).
Also per GPU: solo latency (one camera alone, direct) and the saturation throughput (every
stream's client back to back, closed loop). With several GPUs, the counts are spread over
them and run at once, one N per GPU at a time, so no two configurations share a GPU.
``--mps-gpus`` run under MPS in the same run: the MPS control daemon is started and their
tritonservers connect to it; the other GPUs' processes are pointed at an empty pipe
directory (``CUDA_MPS_PIPE_DIRECTORY``), find no daemon and run time-sliced, as CUDA does
without one. The daemon is stopped after. The run ends with the issue's targets judged on
its results (``bench.gpu.targets``), printed and saved in ``streams.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.gpu.calibrate import MODELS, NUMPY_DIR_ENV, gpu_name, mps, write_frame
from bench.gpu.targets import render, setting, verdict
from stagger.core.contract import SlotAssignment
from stagger.core.telemetry import COORDINATED_DELAY, COORDINATED_FORCED
from stagger.core.timebase import TICK_HZ
from stagger_testkit.camerasim import phases, stalls, summarize
from stagger_testkit.localtriton import LocalSidecar, LocalTriton

CONFIGS = (
    "synchronized",
    "random",
    "transparent",
    "slot-clock",
    "on-slot",
    "coordinated",
    "grouped",
    "direct",
)
ROOT = Path(__file__).resolve().parents[2]
START_MARGIN_S = 5.0  # camera processes start, import and warm up before the first frame
LOCKSTEP_TIMEOUT_S = 900.0
SOLO_S = 10.0
SATURATION_S = 15.0
NO_MPS = "/tmp/stagger-no-mps"  # an empty pipe directory: CUDA finds no daemon there
# The coordinated sidecars' ledger: on tmpfs, as /run on a node.
LEDGER_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
GPU_MEMORY_FOR_MODELS = 0.8
"""The share of a GPU's memory the model processes on it split evenly between them."""


def model_env(gpu: int, processes: int, *, under_mps: bool) -> dict[str, str]:
    """A model server's environment: its GPU, MPS or not, and each model process's share
    of the GPU's memory (the detector holds itself to it: many load at once, and cuDNN's
    kernel search otherwise takes what is free)."""
    return {
        "CUDA_VISIBLE_DEVICES": str(gpu),
        "STAGGER_GPU_MEMORY_SHARE": f"{GPU_MEMORY_FOR_MODELS / processes:.4f}",
    } | ({} if under_mps else {"CUDA_MPS_PIPE_DIRECTORY": NO_MPS})


def tcp_counters() -> dict[str, int]:
    """The host's TCP retransmitted segments and retransmission timeouts so far: a lost
    segment on loopback costs a 200 ms timeout, the size of the stalls seen."""
    counters: dict[str, int] = {}
    for path, names in (
        ("/proc/net/snmp", ("RetransSegs",)),
        ("/proc/net/netstat", ("TCPTimeouts",)),
    ):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            table = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            counters |= {n: int(table[n]) for n in names if n in table}
    return counters


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def model_repository(root: Path, models: Path, *, cuda_graphs: bool = False) -> Path:
    """The detector with one instance (each stream has its own Triton), its body a CUDA
    graph with ``cuda_graphs``. Made afresh: a repository left by an earlier run in the
    same directory may have the other body (it once did, and the run was labeled wrong)."""
    repo = root / "models"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(models, repo)
    config = repo / "detector" / "config.pbtxt"
    text = re.sub(r"count: \d+", "count: 1", config.read_text())
    if cuda_graphs:
        text, found = re.subn(r'(key: "CUDA_GRAPHS", value: \{ string_value: )"0"', r'\1"1"', text)
        if not found:
            raise ValueError(f"{config}: no CUDA_GRAPHS parameter to turn on")
    config.write_text(text)
    return repo


def start_tritons(
    k: int, gpu: int, root: Path, models: Path, *, under_mps: bool, cuda_graphs: bool
) -> list[LocalTriton]:
    paths = sysconfig.get_paths()
    numpy_dir = [os.environ[NUMPY_DIR_ENV]] if NUMPY_DIR_ENV in os.environ else []
    model_path = [*numpy_dir, paths["purelib"], paths["platlib"]]
    repo = model_repository(root, models, cuda_graphs=cuda_graphs)
    servers = [
        LocalTriton(
            repo,
            log_file=root / f"triton-gpu{gpu}-{i}.log",
            ready_timeout_s=400,
            model_path=model_path,
            env=model_env(gpu, k, under_mps=under_mps),
            # A 1080p JPEG is about a MB: a larger shared-memory region between Triton and
            # the Python backend than the 1 MB default, so requests never grow it.
            extra_args=["--backend-config=python,shm-default-byte-size=16777216"],
        )
        for i in range(k)
    ]
    with ThreadPoolExecutor(k) as pool:
        list(pool.map(lambda s: s.start(), servers))
    return servers


class Sidecars:
    """One sidecar per stream with the slot contracts for N equal streams: N slots, or
    ⌈N / group⌉ slots that ``group`` streams share."""

    def __init__(
        self,
        tritons: list[LocalTriton],
        gpu: int,
        root: Path,
        fps: float,
        *,
        body_ms: float | None,
        name: str = "slot",
        group: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        n = len(tritons)
        slots = math.ceil(n / group)
        period = round(TICK_HZ / fps)
        body = period // slots
        if body_ms is not None:
            body = min(body, round(body_ms * TICK_HZ / 1e3))
        offsets = [i // group * period // slots for i in range(n)]
        self.epoch = datetime.fromtimestamp(math.floor(time.time()), UTC)
        self.offsets_s = [offset / TICK_HZ for offset in offsets]
        self.sidecars = []
        for i, triton in enumerate(tritons):
            contract = SlotAssignment(
                stream=f"cam-{i}",
                namespace="bench",
                shard=0,
                shards=1,
                node="bench",
                gpu_index=gpu,
                tick_hz=TICK_HZ,
                epoch=self.epoch,
                period_ticks=period,
                offset_ticks=offsets[i],
                body_ticks=body,
                generation=1,
                effective_at=self.epoch,
            )
            # Each set its own files: a running sidecar reloads its file when it changes.
            slot = root / f"{name}-gpu{gpu}-{i}.json"
            slot.write_text(contract.model_dump_json(by_alias=True))
            self.sidecars.append(
                LocalSidecar(f"cam-{i}", slot, triton, namespace="bench", env=env or {})
            )
        try:
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(LocalSidecar.start, self.sidecars))
        except Exception:
            self.stop()
            raise
        self.http = [s.http for s in self.sidecars]
        self.grpc = [s.grpc for s in self.sidecars]

    def stop(self) -> None:
        for sidecar in self.sidecars:
            sidecar.stop()

    def coordination(self) -> dict[str, float]:
        """What coordinated release did, all streams together (from the sidecars' metrics)."""
        totals = {COORDINATED_FORCED: 0.0, f"{COORDINATED_DELAY}_count": 0.0}
        totals[f"{COORDINATED_DELAY}_sum"] = 0.0
        delayed_bucket = 0.0  # requests released within the first bucket (1 ms) of their slot
        for sidecar in self.sidecars:
            with urllib.request.urlopen(f"http://{sidecar.metrics}/metrics", timeout=5) as r:
                text = r.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in totals:
                        totals[sample.name] += sample.value
                    elif (
                        sample.name == f"{COORDINATED_DELAY}_bucket"
                        and sample.labels.get("le") == "0.001"
                    ):
                        delayed_bucket += sample.value
        count = totals[f"{COORDINATED_DELAY}_count"]
        return {
            "requests": count,
            "delayedOver1msPercent": round(100 * (count - delayed_bucket) / count, 2)
            if count
            else 0.0,
            "meanDelayMs": round(1e3 * totals[f"{COORDINATED_DELAY}_sum"] / count, 3)
            if count
            else 0.0,
            "forced": totals[COORDINATED_FORCED],
        }


class Lockstep:
    """Every GPU's measurements start at one time and last as long: on an H200 host, whole
    host stalls of 150-300 ms hit every GPU's streams at once, each time one GPU's
    configuration ended and its processes changed; in lockstep no configuration is running
    when another's processes change. A GPU that fails breaks the lockstep for the others
    (they go on alone)."""

    def __init__(self, parties: int) -> None:
        self._start = 0.0
        self._barrier = threading.Barrier(parties, action=self._set_start)

    def _set_start(self) -> None:
        self._start = math.ceil(time.time() + START_MARGIN_S)

    def start(self) -> float:
        """The common start time of the next measurement (waits for every GPU)."""
        try:
            self._barrier.wait(timeout=LOCKSTEP_TIMEOUT_S)
        except threading.BrokenBarrierError:
            return math.ceil(time.time() + START_MARGIN_S)
        return self._start

    def leave(self) -> None:
        self._barrier.abort()


def run_cameras(
    cameras: list[dict[str, Any]],
    seconds: float,
    root: Path,
    tag: str,
    args: argparse.Namespace,
    *,
    lockstep: Lockstep | None = None,
) -> list[dict[str, Any]]:
    """Start one camera process per entry (url, phase, slot_clock, closed_loop; fps and
    model where not ``args.fps`` and the detector), at one start time (every GPU's, in
    lockstep); their logs."""
    start = lockstep.start() if lockstep else math.ceil(time.time() + START_MARGIN_S)
    processes, outs = [], []
    for i, cam in enumerate(cameras):
        out = root / f"{tag}-cam{i}.json"
        command = [
            sys.executable,
            "-m",
            "bench.gpu.camera",
            "--url",
            cam["url"],
            "--frame",
            str(args.frame),
            "--start",
            str(start),
            "--seconds",
            str(seconds),
            "--fps",
            str(cam.get("fps", args.fps)),
            "--model",
            cam.get("model", "detector"),
            "--phase",
            str(cam.get("phase", 0.0)),
            "--post-ms",
            str(args.post_ms),
            "--name",
            f"cam-{i}",
            "--out",
            str(out),
        ]
        if cam.get("slot_clock"):
            command += ["--slot-clock", cam["slot_clock"], "--lead-ms", str(args.lead_ms)]
        if cam.get("closed_loop"):
            command.append("--closed-loop")
        processes.append(subprocess.Popen(command))
        outs.append(out)
    for process in processes:
        process.wait()
    logs = []
    for out, process in zip(outs, processes, strict=True):
        if process.returncode != 0 or not out.exists():
            raise RuntimeError(f"{tag}: camera exited with {process.returncode}")
        logs.append(json.loads(out.read_text()))
    return logs


def servers_down(tritons: list[LocalTriton], lines: int = 5) -> str:
    """Which tritonservers exited, with the end of their logs."""
    down = []
    for i, t in enumerate(tritons):
        code = t.process.poll() if t.process else None
        if code is not None:
            log_ = t.log_file.read_text(errors="replace") if t.log_file else ""
            tail = " | ".join(log_.strip().splitlines()[-lines:])
            down.append(f"tritonserver {i} exited with {code}: {tail}")
    return "; ".join(down) or "every tritonserver still running"


def pooled(logs: list[dict[str, Any]]) -> dict[str, Any]:
    result = summarize([x for log in logs for x in log["latencies_s"]], sum(x["due"] for x in logs))
    errors: dict[str, int] = {}
    for log_ in logs:
        for kind, count in log_["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    answered_fps = [len(x["latencies_s"]) for x in logs]
    return result | {"errors": errors, "answeredPerStream": answered_fps}


def worker(
    gpu: int,
    counts: list[int],
    under_mps: bool,
    args: argparse.Namespace,
    out: Path,
    *,
    lockstep: Lockstep | None,
) -> dict[str, Any]:
    root = out / f"gpu{gpu}"
    root.mkdir(parents=True, exist_ok=True)
    mode = "mps" if under_mps else "time-slicing"
    cuda_graphs = gpu in args.graph_gpus
    model = "cuda-graphs" if cuda_graphs else "eager"
    result: dict[str, Any] = {"gpu": gpu, "mode": mode, "model": model, "counts": {}}
    log(f"gpu {gpu} ({mode}, {model}): starting {max(counts)} tritonservers for N = {counts}")
    try:
        tritons = start_tritons(
            max(counts), gpu, root, args.models, under_mps=under_mps, cuda_graphs=cuda_graphs
        )
    except BaseException:
        if lockstep:
            lockstep.leave()
        raise
    try:
        solo = run_cameras(
            [{"url": tritons[0].grpc}], SOLO_S, root, "solo", args, lockstep=lockstep
        )
        result["solo"] = pooled(solo) | {"phases": phases({"solo": solo[0].get("calls", [])})}
        closed = [{"url": t.grpc, "closed_loop": True} for t in tritons]
        answered = run_cameras(closed, SATURATION_S, root, "saturation", args, lockstep=lockstep)
        result["saturation"] = {
            "streams": len(tritons),
            "inferencesPerSecond": round(sum(x["answered"] for x in answered) / SATURATION_S, 2),
        }
        log(f"gpu {gpu}: solo {result['solo']['p50Ms']} ms, saturation {result['saturation']}")
        for n in counts:
            result["counts"][n] = measure_count(n, tritons[:n], gpu, root, args, lockstep=lockstep)
            (root / "partial.json").write_text(json.dumps(result, indent=1))
    except BaseException as e:
        if lockstep:
            lockstep.leave()
        if isinstance(e, RuntimeError):  # a camera failed: say which servers had died
            raise RuntimeError(f"{e}; {servers_down(tritons)}") from e
        raise
    finally:
        for t in tritons:
            t.stop()
    return result


def measure_count(
    n: int,
    tritons: list[LocalTriton],
    gpu: int,
    root: Path,
    args: argparse.Namespace,
    *,
    lockstep: Lockstep | None,
) -> dict[str, Any]:
    # In lockstep every N runs as long as the smallest needs for its frames.
    fewest = min([*args.counts, *args.mps_counts]) if lockstep else n
    seconds = math.ceil(args.frames / (fewest * args.fps))
    period = 1.0 / args.fps
    rng = random.Random(args.seed + n)
    random_phases = [rng.uniform(0, period) for _ in range(n)]
    sidecars = Sidecars(tritons, gpu, root, args.fps, body_ms=args.body_ms)
    other: Sidecars | None = None  # a configuration's own set of sidecars, beside the first
    results: dict[str, Any] = {"seconds": seconds}
    try:
        for config in args.configs:
            if config in ("coordinated", "grouped"):
                env = {}
                if config == "coordinated":  # sharing a fresh ledger
                    ledger = LEDGER_DIR / f"stagger-bench-gpu{gpu}-n{n}-{os.getpid()}.json"
                    ledger.unlink(missing_ok=True)
                    env = {"STAGGER_GPU_LEDGER": str(ledger)}
                group = args.group if config == "grouped" else 1
                other = Sidecars(
                    tritons,
                    gpu,
                    root,
                    args.fps,
                    body_ms=args.body_ms,
                    name=config,
                    group=group,
                    env=env,
                )
            cams: list[dict[str, Any]] = []
            for i, t in enumerate(tritons):
                if config == "synchronized":
                    cams.append({"url": t.grpc, "phase": 0.0})
                elif config == "random":
                    cams.append({"url": t.grpc, "phase": random_phases[i]})
                elif config == "transparent":
                    cams.append({"url": sidecars.grpc[i], "phase": random_phases[i]})
                elif config == "slot-clock":
                    clock = f"http://{sidecars.http[i]}"
                    cams.append({"url": sidecars.grpc[i], "slot_clock": clock})
                elif config == "on-slot":
                    cams.append({"url": sidecars.grpc[i], "phase": sidecars.offsets_s[i]})
                elif config in ("coordinated", "grouped"):
                    assert other is not None
                    cams.append({"url": other.grpc[i], "phase": other.offsets_s[i]})
                else:  # direct, on the slots' phases
                    cams.append({"url": t.grpc, "phase": sidecars.offsets_s[i]})
            tcp = tcp_counters()
            logs = run_cameras(cams, seconds, root, f"n{n}-{config}", args, lockstep=lockstep)
            s = results[config] = pooled(logs)
            s["achievedFps"] = round(s["answered"] / (n * seconds), 2)
            s["tcp"] = {k: v - tcp.get(k, 0) for k, v in tcp_counters().items()}
            # Slower than a frame period: which cameras each such stall hit, and when.
            s["stalls"] = stalls(logs, threshold_s=period)
            s["phases"] = ph = phases({x["name"]: x.get("calls", []) for x in logs})
            if config == "coordinated":
                assert other is not None
                s["coordination"] = other.coordination()
            if other is not None:
                other.stop()
                other = None
            log(
                f"gpu {gpu} N={n} {config}: p50 {s['p50Ms']} p99 {s['p99Ms']} "
                f"max {s['maxMs']} drops {s['dropPercent']}% of {s['frames']} | "
                f"before/model/after p50 {ph.get('beforeMs')}/{ph.get('modelMs')}/"
                f"{ph.get('afterMs')} ms, model alone {ph.get('modelMsAlone')} overlapped "
                f"{ph.get('modelMsOverlapped')} ({ph.get('overlappedFrames')} of frames) | "
                f"stalls {len(s['stalls'])} | tcp {s['tcp']}"
                + (f" | coordination {s['coordination']}" if "coordination" in s else "")
            )
    finally:
        sidecars.stop()
        if other is not None:
            other.stop()
    return results


def assign(
    counts: list[int], gpus: list[int], configs: int, frames: int, fps: float
) -> dict[int, list[int]]:
    """Counts to GPUs, longest first onto the least loaded: the run ends with the last GPU."""
    load = dict.fromkeys(gpus, 0.0)
    plan: dict[int, list[int]] = {g: [] for g in gpus}
    for n in sorted(counts, key=lambda n: -frames / (n * fps)):
        g = min(gpus, key=lambda g: load[g])
        plan[g].append(n)
        load[g] += configs * (frames / (n * fps) + START_MARGIN_S)
    return {g: sorted(ns) for g, ns in plan.items() if ns}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--counts", type=int, nargs="*", default=[], help="time-sliced")
    p.add_argument("--mps-counts", type=int, nargs="*", default=[])
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--post-ms", type=float, default=8.0)
    p.add_argument("--lead-ms", type=float, default=2.0)
    p.add_argument(
        "--body-ms",
        type=float,
        help="the slots' body (calibrated, alone on the GPU; default: the whole slot, "
        "period / N); offsets stay i x period / N",
    )
    p.add_argument("--group", type=int, default=2, help="streams that share one slot in `grouped`")
    p.add_argument("--gpus", type=int, nargs="*", help="time-sliced (default: 0 with --counts)")
    p.add_argument("--mps-gpus", type=int, nargs="*", default=[])
    p.add_argument(
        "--graph-gpus",
        type=int,
        nargs="*",
        default=[],
        help="GPUs (of --gpus or --mps-gpus) whose detectors run their body as a CUDA graph",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--models", type=Path, default=MODELS, help="a repository with `detector`")
    p.add_argument("--frame", type=Path, help="a JPEG (default: a synthetic 1080p frame)")
    args = p.parse_args(argv)
    if args.gpus is None:  # GPU 0 by default, unless only MPS GPUs are measured
        args.gpus = [0] if args.counts else []
    if set(args.gpus) & set(args.mps_gpus):
        p.error("a GPU is either time-sliced (--gpus) or under MPS (--mps-gpus)")
    if not (args.counts and args.gpus) and not (args.mps_counts and args.mps_gpus):
        p.error("give --counts with --gpus, or --mps-counts with --mps-gpus")
    if stray := set(args.graph_gpus) - set(args.gpus) - set(args.mps_gpus):
        p.error(f"--graph-gpus {sorted(stray)} are in neither --gpus nor --mps-gpus")
    if args.group < 1:
        p.error(f"--group must be at least 1, not {args.group}")
    if args.body_ms is not None and args.body_ms <= 0:
        p.error(f"--body-ms must be positive, not {args.body_ms:g}")
    return args


def main() -> None:
    args = parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.frame is None:
        args.frame = out / "frame.jpg"
        write_frame(args.frame)
    plan = assign(args.counts, args.gpus, len(args.configs), args.frames, args.fps) | assign(
        args.mps_counts, args.mps_gpus, len(args.configs), args.frames, args.fps
    )
    result: dict[str, Any] = {
        "device": gpu_name() if shutil.which("nvidia-smi") else "no NVIDIA GPU (a dry run)",
        "mpsGpus": args.mps_gpus,
        "fps": args.fps,
        "postMs": args.post_ms,
        "framesPerConfiguration": args.frames,
        "assignment": plan,
        "gpus": {},
    }
    log("device:", result["device"], "MPS on:", args.mps_gpus, "assignment:", plan)
    Path(NO_MPS).mkdir(exist_ok=True)
    if args.mps_gpus and (why := mps(start=True)) is not None:
        raise SystemExit(f"MPS did not start: {why}")
    lock = threading.Lock()
    report = out / "streams.json"
    try:
        # Lockstep needs as many measurements on every GPU.
        same = len({len(ns) for ns in plan.values()}) == 1
        lockstep = Lockstep(len(plan)) if same and len(plan) > 1 else None
        log("lockstep:", bool(lockstep))
        with ThreadPoolExecutor(len(plan)) as pool:
            futures = {
                g: pool.submit(worker, g, ns, g in args.mps_gpus, args, out, lockstep=lockstep)
                for g, ns in plan.items()
            }
            for g, future in futures.items():
                try:
                    done = future.result()
                except Exception as e:  # one GPU's failure is reported, the others kept
                    done = {"error": repr(e)}
                with lock:
                    result["gpus"][g] = done
                report.write_text(json.dumps(result, indent=1))
    finally:
        if args.mps_gpus:
            result["mpsStopError"] = mps(start=False)
    result["targets"] = verdict(result)
    report.write_text(json.dumps(result, indent=1))
    print(table(result), render(result["targets"]), sep="\n\n", flush=True)


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per N and configuration, the solo and saturation lines above."""
    lines = [f"device: {result['device']}"]
    rows = []
    for g, r in sorted(result["gpus"].items()):
        if "error" in r:
            lines.append(f"GPU {g}: {r['error']}")
            continue
        lines.append(
            f"GPU {g} ({setting(r)}): solo p50 {r['solo']['p50Ms']} ms, saturation "
            f"{r['saturation']['inferencesPerSecond']}/s with {r['saturation']['streams']} streams"
        )
        for n, configs in r["counts"].items():
            for config, s in configs.items():
                if config == "seconds":
                    continue
                rows.append(
                    f"| {setting(r)} | {n} | {config} | {s['p50Ms']} | {s['p99Ms']} | "
                    f"{s['maxMs']} | {s['dropPercent']} | {s['achievedFps']} | {s['frames']} "
                    f"| GPU {g} |"
                )
    lines += [
        "| mode | N | configuration | p50 ms | p99 ms | max ms | drop % | fps | frames | GPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *sorted(rows, key=_row_order),
    ]
    return "\n".join(lines)


def _row_order(row: str) -> tuple[str, int, int]:
    cells = [c.strip() for c in row.strip("|").split("|")]
    return cells[0], int(cells[1]), CONFIGS.index(cells[2])


if __name__ == "__main__":
    main()
