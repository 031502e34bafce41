"""How long a big gRPC request takes to reach the model after its slot opens: straight to
Triton, through the sidecar sent at the slot's start, through the sidecar sent early and
held until it (slot-clock capture), and through a byte-copying TCP relay (the floor of any
extra hop). The ``stamp`` model (tests/models) reports when it began each request.

    python -m bench.sidecar_overhead.held [KB ...]     # default: 64 1024 2048

A slot every 50 ms, 40 ms long (so a request sent at its start is never a period late);
60 requests per path and size, one at a time, each sent on its own slot; p50 of (model
began - slot start) and (answer - slot start), in ms. Used to test whether HTTP/2 flow
control made held requests cross after their release (it does not: Triton grants 4 MB of
window per stream at once, 16 MB after a few calls, so a held JPEG is all in the sidecar
when its slot opens).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from bench.sidecar_overhead.__main__ import open_gate_contract
from stagger.core.contract import SlotAssignment
from stagger_testkit.localtriton import LocalSidecar, LocalTriton, free_port

MODELS = Path(__file__).resolve().parents[2] / "tests" / "models"
PERIOD_S, BODY_S, REQUESTS = 0.050, 0.040, 60


def request(kb: int) -> service_pb2.ModelInferRequest:
    r = service_pb2.ModelInferRequest(model_name="stamp")
    r.inputs.add(name="INPUT0", datatype="FP32", shape=[kb * 256])
    r.raw_input_contents.append(np.zeros(kb * 256, np.float32).tobytes())
    return r


async def on_slots(
    target: str, req: service_pb2.ModelInferRequest, lead_s: float, epoch: float
) -> tuple[float, float]:
    """p50 ms from each slot's start to the model beginning the request, and to its answer."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        for _ in range(20):  # the channel and Triton's windows warm up
            await infer(req, timeout=5)
        began, answered = [], []
        first = math.ceil((time.time() - epoch) / PERIOD_S) + 2
        for i in range(REQUESTS):
            slot = epoch + (first + 2 * i) * PERIOD_S  # every other slot: never one late
            await asyncio.sleep(max(0.0, slot - lead_s - time.time()))
            response = await infer(req, timeout=5)
            answered.append(time.time() - slot)
            began.append(np.frombuffer(response.raw_output_contents[0], np.float64)[0] - slot)
    return float(np.median(began)) * 1e3, float(np.median(answered)) * 1e3


async def main(sizes: list[int]) -> None:
    root = Path(tempfile.mkdtemp(prefix="stagger-held-"))
    triton = LocalTriton(MODELS, log_file=root / "triton.log").start()
    slot_file = root / "slot.json"
    open_gate_contract(slot_file, round(PERIOD_S * 1e6), round(BODY_S * 1e6))
    epoch = SlotAssignment.model_validate_json(slot_file.read_text()).epoch
    sidecar = LocalSidecar("bench", slot_file, triton, namespace="bench").start()
    relay_port = free_port()
    relay = subprocess.Popen(
        [sys.executable, "-m", "bench.sidecar_overhead.relay", str(relay_port), triton.grpc]
    )
    e = epoch.timestamp()
    paths = {
        "direct at slot": (triton.grpc, 0.0),
        "relay at slot": (f"127.0.0.1:{relay_port}", 0.0),
        "sidecar at slot": (sidecar.grpc, 0.0),
        "sidecar, held 10 ms": (sidecar.grpc, 0.010),
    }
    try:
        print("p50 ms after the slot's start: model began / answered")
        for kb in sizes:
            cells = []
            for name, (target, lead) in paths.items():
                began, answered = await on_slots(target, request(kb), lead, e)
                cells.append(f"{name} {began:5.2f} / {answered:5.2f}")
            print(f"{kb:5d} KB | " + " | ".join(cells), flush=True)
    finally:
        relay.terminate()
        sidecar.stop()
        triton.stop()


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [64, 1024, 2048]))
