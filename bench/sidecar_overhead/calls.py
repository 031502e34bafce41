"""One gRPC call at a time, interleaved direct / through the sidecar / through the uvloop
relay: what the sidecar's way adds per request, and with ``--time-callbacks`` where the
live sidecar spends it (its callbacks timed in the running process).

    python -m bench.sidecar_overhead.calls [--frame-bytes 16] [--calls 300] [--time-callbacks]
        [--echo]

The sidecar runs as in a pod (``python -m stagger_sidecar gate``, its gate open) and the
relay as ``relay.py --uvloop``, both alone on CPU 0 where there are two; Triton and this
client on the rest. Calls go 2 ms apart, so the sidecar sleeps between them as it does
between a camera's frames. ``--time-callbacks`` wraps the sidecar's gRPC callbacks with
timestamps (a ``sitecustomize`` on its path) and prints each one's median and p99: the app's
request and Triton's answer as the event loop hands them over, and inside them the header
block's decoding, the gate's decision (``Keeper.enter``) and the call's bookkeeping
(``Keeper.done``). The wrapping costs a little of its own: compare runs with it on.
``--echo`` asks ``add_one``, which answers as large as the request (a model that answers
with a frame or a mask), where a frame otherwise goes to ``stamp`` (one float back, as a
detector's boxes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.sidecar_overhead.__main__ import (
    MODELS,
    SMALL_FRAME_BYTES,
    SMALL_MODEL,
    _ready,
    grpc_request,
    model_for,
    open_gate_contract,
    sidecar_env,
)
from stagger_testkit.localtriton import LocalTriton, free_port

ROOT = Path(__file__).resolve().parents[2]
TIMED = {
    "request": ("stagger_sidecar.grpc_proxy", "GrpcConnection", "data_received"),
    "header block": ("stagger_sidecar.grpc_proxy", "GrpcConnection", "_header_fragment"),
    "gate's decision": ("stagger_sidecar.keeper", "Keeper", "enter"),
    "answer": ("stagger_sidecar.grpc_proxy", "TritonSide", "data_received"),
    "bookkeeping": ("stagger_sidecar.keeper", "Keeper", "done"),
}
TIMING = """
import atexit, importlib, json, time
TIMES = {{}}
def _wrap(name, module, cls, method):
    owner = getattr(importlib.import_module(module), cls)
    inner = getattr(owner, method)
    spent = TIMES.setdefault(name, [])
    def timed(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return inner(self, *a, **k)
        finally:
            spent.append(time.perf_counter() - t0)
    setattr(owner, method, timed)
for name, where in {timed!r}.items():
    _wrap(name, *where)
atexit.register(lambda: open({out!r}, "w").write(json.dumps(TIMES)))
"""


async def interleaved(
    targets: dict[str, str], frame_bytes: int, calls: int, model: str
) -> dict[str, list[float]]:
    """Latencies (s) per target, one call at a time in turn, after 20 warm-up calls each."""
    request = grpc_request(frame_bytes, model)
    channels = {
        k: grpc.aio.insecure_channel(v, options=[("grpc.max_receive_message_length", -1)])
        for k, v in targets.items()
    }
    infer: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {
        k: c.unary_unary("/inference.GRPCInferenceService/ModelInfer") for k, c in channels.items()
    }
    try:
        for call in infer.values():
            for _ in range(20):
                await call(request, timeout=5)
        latencies: dict[str, list[float]] = {k: [] for k in infer}
        for _ in range(calls):
            for k, call in infer.items():
                t0 = time.perf_counter()
                await call(request, timeout=5)
                latencies[k].append(time.perf_counter() - t0)
                await asyncio.sleep(0.002)  # the sidecar sleeps between calls, as between frames
        return latencies
    finally:
        for channel in channels.values():
            await channel.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sidecar_overhead.calls")
    p.add_argument("--frame-bytes", type=int, default=SMALL_FRAME_BYTES)
    p.add_argument("--calls", type=int, default=300, help="calls per target (default 300)")
    p.add_argument("--time-callbacks", action="store_true")
    p.add_argument(
        "--echo",
        action="store_true",
        help="answers as large as the requests (add_one), not one float (stamp)",
    )
    args = p.parse_args()
    if args.frame_bytes < 4 or args.calls < 1:
        p.error("--frame-bytes must be at least 4 (one FP32 value) and --calls at least 1")
    model = SMALL_MODEL if args.echo else model_for(args.frame_bytes)
    print(f"{args.calls} gRPC calls of {args.frame_bytes} bytes to {model}, each way in turn")
    cpus = sorted(os.sched_getaffinity(0))
    apart, rest = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))
    os.sched_setaffinity(0, rest)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalTriton(MODELS, cpus=rest, log_file=Path(tmp) / "triton.log") as triton,
    ):
        slot, times = Path(tmp) / "slot.json", Path(tmp) / "times.json"
        open_gate_contract(slot)
        # The caller's path is kept after the tree's: a GPU machine's packages live there.
        path = [str(ROOT), str(ROOT / "sidecar"), str(ROOT / "operator")]
        path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if args.time_callbacks:
            timing = Path(tmp) / "timing"
            timing.mkdir()
            (timing / "sitecustomize.py").write_text(TIMING.format(timed=TIMED, out=str(times)))
            path.insert(0, str(timing))
        ports = {name: free_port() for name in ("http", "grpc", "metrics", "relay")}
        env = sidecar_env(slot, triton, ports, PYTHONPATH=os.pathsep.join(path))
        pin = lambda: os.sched_setaffinity(0, apart)  # noqa: E731
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "stagger_sidecar", "gate"],
            env=env,
            preexec_fn=pin,  # noqa: PLW1509
        )
        relay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.sidecar_overhead.relay",
                str(ports["relay"]),
                triton.grpc,
                "--uvloop",
            ],
            preexec_fn=pin,  # noqa: PLW1509
        )
        try:
            deadline = time.monotonic() + 30
            while not _ready(ports["http"]):
                if time.monotonic() > deadline or sidecar.poll() is not None:
                    raise SystemExit("the sidecar did not become ready")
                time.sleep(0.05)  # polling a child's readiness
            latencies = asyncio.run(
                interleaved(
                    {
                        "direct": triton.grpc,
                        "sidecar": f"127.0.0.1:{ports['grpc']}",
                        "uvloop relay": f"127.0.0.1:{ports['relay']}",
                    },
                    args.frame_bytes,
                    args.calls,
                    model,
                )
            )
        finally:
            sidecar.terminate()
            sidecar.wait(30)
            relay.terminate()
            relay.wait()
        base = np.percentile(latencies["direct"], [50, 99]) * 1e3
        for name, values in latencies.items():
            q = np.percentile(values, [50, 99]) * 1e3
            print(
                f"{name:13} p50 {q[0]:.3f} p99 {q[1]:.3f} ms, adds {q[0] - base[0]:+.3f} / "
                f"{q[1] - base[1]:+.3f}"
            )
        if args.time_callbacks:
            spent = json.loads(times.read_text()) if times.exists() else {}
            for name in TIMED:
                values = spent.get(name) or [0.0]
                median, p99 = np.percentile(values, [50, 99]) * 1e6
                print(f"  {name:16} median {median:7.1f} µs, p99 {p99:7.1f} ({len(values)} calls)")


if __name__ == "__main__":
    main()
