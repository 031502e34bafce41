"""Latency the sidecar adds over calling Triton directly, and the CPU it spends.

    python -m bench.sidecar_overhead [--rates 100 1000] [--seconds 4] [--rounds 3]
                                     [--frame-bytes N] [--json FILE]

A real tritonserver serves ``add_one`` (tests/models: a Python-backend model, a few floats),
or with ``--frame-bytes`` a camera frame's size ``stamp``, which answers one float, as a
detector answers a frame with a few boxes: a video stream's requests are that large (a
1 MB frame on the GPU bench), and a proxy that reads a request whole before sending it on
pays for its size.
The sidecar runs as it does in a pod (``python -m stagger_sidecar gate``, its own process)
with its gate open: the slot period is one 1 MHz tick, so no request waits and only the
proxy's cost (and the gate's bookkeeping) is measured.

An open-loop load generator sends requests at a fixed rate, each at its scheduled time, over
HTTP (pre-built binary-tensor body) and gRPC (pre-serialized ``ModelInferRequest``) — to
Triton directly and through the sidecar in alternating segments of ``--seconds``, repeated
``--rounds`` times, so drift hits both sides alike. Latency is measured per request from
its send to its answer. The sidecar's CPU is read from /proc for the segments that go
through it.

Two more paths, TCP relays that copy bytes and understand nothing (``relay.py``), show the
floor any proxy hop costs on the machine (two more process wake-ups and socket copies per
request): ``relay``, a plain asyncio-streams relay, and ``uvloop_relay``, a uvloop
``Protocol`` that writes each chunk on as it arrives, the least a hop on the sidecar's own
event loop can cost.

Pinning (on a machine with at least 2 CPUs): the sidecar alone on CPU 0; Triton, its model
processes and the load generator on CPU 1. With 4+ CPUs each gets its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from stagger.core.contract import SlotAssignment
from stagger_testkit.localtriton import LocalTriton, free_port

MODELS = Path(__file__).resolve().parents[2] / "tests" / "models"
SMALL_MODEL, FRAME_MODEL = "add_one", "stamp"
SMALL_FRAME_BYTES = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_gate_contract(path: Path, period_ticks: int = 1, body_ticks: int = 1) -> None:
    """The bench stream's slots on a 1 MHz tick from now: by default a slot every
    microsecond, so the gate never holds a request."""
    now = datetime.now(UTC)
    contract = SlotAssignment(
        stream="bench",
        namespace="bench",
        shard=0,
        shards=1,
        node="local",
        gpu_index=0,
        tick_hz=1_000_000,
        epoch=now,
        period_ticks=period_ticks,
        offset_ticks=0,
        body_ticks=body_ticks,
        generation=1,
        effective_at=now,
    )
    path.write_text(contract.model_dump_json(by_alias=True))


def sidecar_env(
    slot: Path, triton: LocalTriton, ports: dict[str, int], **extra: str
) -> dict[str, str]:
    """The bench sidecar's environment, as a pod's: the bench stream's slot file, Triton's
    addresses, its own listeners on ``ports`` (``http``, ``grpc``, ``metrics``), and
    ``extra`` settings."""
    return {
        **os.environ,
        "STAGGER_STREAM": "bench",
        "STAGGER_SLOT_FILE": str(slot),
        "STAGGER_TRITON_HTTP": triton.http,
        "STAGGER_TRITON_GRPC": triton.grpc,
        "STAGGER_HTTP_ADDRESS": f"127.0.0.1:{ports['http']}",
        "STAGGER_GRPC_ADDRESS": f"127.0.0.1:{ports['grpc']}",
        "STAGGER_METRICS_ADDRESS": f"127.0.0.1:{ports['metrics']}",
        "STAGGER_LOG_LEVEL": "WARNING",
        **extra,
    }


def model_for(frame_bytes: int) -> str:
    return SMALL_MODEL if frame_bytes <= SMALL_FRAME_BYTES else FRAME_MODEL


def frame(frame_bytes: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.arange(frame_bytes // 4, dtype=np.float32)


def http_body(frame_bytes: int) -> tuple[bytes, dict[str, str]]:
    values = frame(frame_bytes)
    tensor = values.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [len(values)],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + tensor, headers


def grpc_request(frame_bytes: int, model: str | None = None) -> bytes:
    """A ModelInfer request of ``frame_bytes`` to ``model`` (default :func:`model_for`)."""
    values = frame(frame_bytes)
    request = service_pb2.ModelInferRequest(model_name=model or model_for(frame_bytes))
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[len(values)])
    request.raw_input_contents.append(values.tobytes())
    return bytes(request.SerializeToString())


Sender = Callable[[], Awaitable[None]]


async def open_loop(send: Sender, rate: float, seconds: float) -> tuple[list[float], int]:
    """Send at ``rate`` per second for ``seconds``, each request at its scheduled time;
    returns latencies (s) and the number of errors."""
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            await send()
        except Exception:  # counted, not fatal: the figures report them
            errors += 1
            return
        latencies.append(time.perf_counter() - t0)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, errors


@dataclass
class Targets:
    http: str
    grpc: str


async def senders(
    target: Targets, session: aiohttp.ClientSession, channel: grpc.aio.Channel, frame_bytes: int
) -> dict[str, Sender]:
    body, headers = http_body(frame_bytes)
    url = f"http://{target.http}/v2/models/{model_for(frame_bytes)}/infer"
    request = grpc_request(frame_bytes)
    infer: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer"
    )

    async def http_send() -> None:
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")

    async def grpc_send() -> None:
        await infer(request, timeout=5)

    return {"http": http_send, "grpc": grpc_send}


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.array(values) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


SIDES = ("direct", "relay", "uvloop_relay", "sidecar")


async def measure(
    args: argparse.Namespace,
    targets: dict[str, Targets],
    sidecar_pid: int,
) -> list[dict[str, Any]]:
    options = [("grpc.max_receive_message_length", -1)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        channels = {
            side: grpc.aio.insecure_channel(t.grpc, options=options) for side, t in targets.items()
        }
        try:
            paths = {
                side: await senders(targets[side], session, channels[side], args.frame_bytes)
                for side in SIDES
            }
            for path in paths.values():  # connections up, caches warm
                for send in path.values():
                    await open_loop(send, 200, 1.0)
            return [
                await measure_one(args, paths, sidecar_pid, protocol, rate)
                for protocol in ("http", "grpc")
                for rate in args.rates
            ]
        finally:
            for channel in channels.values():
                await channel.close()


async def measure_one(
    args: argparse.Namespace,
    paths: dict[str, dict[str, Sender]],
    sidecar_pid: int,
    protocol: str,
    rate: float,
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    errors = dict.fromkeys(SIDES, 0)
    cpu = wall = 0.0
    for _ in range(args.rounds):
        for side in SIDES:  # interleaved, so drift hits every side alike
            c0, w0 = cpu_seconds(sidecar_pid), time.perf_counter()
            latencies, failed = await open_loop(paths[side][protocol], rate, args.seconds)
            if side == "sidecar":
                cpu += cpu_seconds(sidecar_pid) - c0
                wall += time.perf_counter() - w0
            samples[side] += latencies
            errors[side] += failed
    p = {side: percentiles(samples[side]) for side in SIDES}

    def added(side: str, q: str) -> float:
        return p[side][q] - p["direct"][q]

    row = {
        "protocol": protocol,
        "rate": rate,
        "requests": {side: len(samples[side]) for side in SIDES},
        "errors": errors,
        **p,
        "added_p50_ms": added("sidecar", "p50_ms"),
        "added_p99_ms": added("sidecar", "p99_ms"),
        "relay_added_p50_ms": added("relay", "p50_ms"),
        "relay_added_p99_ms": added("relay", "p99_ms"),
        "uvloop_relay_added_p50_ms": added("uvloop_relay", "p50_ms"),
        "uvloop_relay_added_p99_ms": added("uvloop_relay", "p99_ms"),
        "sidecar_cores": cpu / wall,
        "cores_per_1000_rps": cpu / wall * 1000 / rate,
    }
    print(
        f"{protocol:4} {rate:5.0f}/s  direct p50 {p['direct']['p50_ms']:.3f} "
        f"p99 {p['direct']['p99_ms']:.3f} | sidecar adds p50 {row['added_p50_ms']:+.3f} "
        f"p99 {row['added_p99_ms']:+.3f} | byte relay adds p50 "
        f"{row['relay_added_p50_ms']:+.3f} p99 {row['relay_added_p99_ms']:+.3f} | uvloop relay "
        f"{row['uvloop_relay_added_p50_ms']:+.3f} / {row['uvloop_relay_added_p99_ms']:+.3f} ms | "
        f"sidecar {row['cores_per_1000_rps']:.3f} core per 1000 rps | errors {errors}",
        flush=True,
    )
    return row


def pinning(mode: str) -> dict[str, set[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none":
        return {"sidecar": set(cpus), "triton": set(cpus), "load": set(cpus)}
    if len(cpus) >= 4:
        return {"sidecar": {cpus[0]}, "triton": {cpus[1], cpus[2]}, "load": {cpus[3]}}
    if len(cpus) >= 2:
        return {"sidecar": {cpus[0]}, "triton": {cpus[1]}, "load": {cpus[1]}}
    return {"sidecar": set(cpus), "triton": set(cpus), "load": set(cpus)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar_overhead")
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--frame-bytes",
        type=int,
        default=SMALL_FRAME_BYTES,
        help="each request's tensor, bytes (default 16: four floats to add_one); larger "
        "goes to stamp, which answers one float, as a detector answers a camera frame",
    )
    parser.add_argument(
        "--pinning",
        choices=["apart", "none"],
        default="apart",
        help="apart: the sidecar on a CPU of its own (default); none: the scheduler decides",
    )
    args = parser.parse_args()
    if args.frame_bytes < 4:
        parser.error("--frame-bytes must be at least 4 (one FP32 value)")

    pins = pinning(args.pinning)
    os.sched_setaffinity(0, pins["load"])
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalTriton(MODELS, cpus=pins["triton"], log_file=Path(tmp) / "triton.log") as triton,
    ):
        slot = Path(tmp) / "slot.json"
        open_gate_contract(slot)
        ports = {name: free_port() for name in ("http", "grpc", "metrics")}
        env = sidecar_env(slot, triton, ports, STAGGER_MAX_QUEUE="1000")
        cpus = pins["sidecar"]
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "stagger_sidecar", "gate"],
            env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # noqa: PLW1509
        )
        relay_ports = {kind: (free_port(), free_port()) for kind in ("relay", "uvloop_relay")}
        relays = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.sidecar_overhead.relay", str(port), upstream]
                + (["--uvloop"] if kind == "uvloop_relay" else []),
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # noqa: PLW1509
            )
            for kind, (http_port, grpc_port) in relay_ports.items()
            for port, upstream in ((http_port, triton.http), (grpc_port, triton.grpc))
        ]
        try:
            deadline = time.monotonic() + 30
            while not _ready(ports["http"]):
                if time.monotonic() > deadline or sidecar.poll() is not None:
                    raise SystemExit("the sidecar did not become ready")
                time.sleep(0.05)  # polling a child's readiness
            targets = {
                "direct": Targets(triton.http, triton.grpc),
                "sidecar": Targets(f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"),
                **{
                    kind: Targets(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
                    for kind, (http_port, grpc_port) in relay_ports.items()
                },
            }
            rows = asyncio.run(measure(args, targets, sidecar.pid))
        finally:
            sidecar.send_signal(signal.SIGTERM)
            sidecar.wait(30)
            for relay in relays:
                relay.terminate()
                relay.wait()
    result = {
        "machine": {"cpus": os.cpu_count(), "pinning": {k: sorted(v) for k, v in pins.items()}},
        "model": model_for(args.frame_bytes),
        "frameBytes": len(frame(args.frame_bytes).tobytes()),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


def _ready(port: int) -> bool:
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return int(r.status) == 200
    except OSError:
        return False


if __name__ == "__main__":
    main()
