"""One stream's camera client, its own process as in a pod: a JPEG frame at ``--fps``, sent
over gRPC to Triton or to the stream's sidecar, one in flight, then ``--post-ms`` of CPU
post-processing (NMS, tracking: a busy loop) before the next capture. Writes its
``stagger_testkit.camerasim.CameraLog`` as JSON.

    python3 -m bench.gpu.camera --url HOST:PORT --frame F.jpg --start UNIX --seconds S
        [--fps 10] [--phase S | --slot-clock http://SIDECAR] [--lead-ms 2] [--post-ms 8]
        [--closed-loop] [--model detector] --out LOG.json

``--closed-loop`` sends back to back for ``--seconds`` instead (saturation).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from stagger.client import SlotClient
from stagger_testkit.camerasim import Camera

DEFAULT_MODEL = "detector"


def busy(seconds: float) -> None:
    """CPU work of a set length, as a detector's post-processing is."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--frame", type=Path, required=True)
    p.add_argument("--start", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--phase", type=float, default=0.0)
    p.add_argument("--slot-clock")
    p.add_argument("--lead-ms", type=float, default=2.0)
    p.add_argument("--post-ms", type=float, default=8.0)
    p.add_argument("--closed-loop", action="store_true")
    p.add_argument("--name", default="cam")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Triton model (default detector)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    client = grpcclient.InferenceServerClient(args.url)
    jpeg = np.frombuffer(args.frame.read_bytes(), dtype=np.uint8)

    # Per call: sent, model began, model ended, answered (None where unknown): where each
    # frame's time went (stagger_testkit.camerasim.phases).
    calls: list[list[float | None]] = []
    # Garbage collections of 1 ms or more, [start, end] Unix s: this process's (``gc``) and,
    # where the model reports them, its Triton process's as each answer brought them
    # (``modelGc``: [sent, count, seconds, longest's start, longest's end]).
    collections: list[list[float]] = []
    model_collections: list[list[float]] = []
    collecting_since = [0.0]

    def collected(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            collecting_since[0] = time.time()
        elif time.time() - collecting_since[0] >= 1e-3:
            collections.append([collecting_since[0], time.time()])

    gc.callbacks.append(collected)

    def send(frame: bytes) -> object:
        image = grpcclient.InferInput("IMAGE", [jpeg.size], "UINT8")
        image.set_data_from_numpy(jpeg)
        sent = time.time()
        call: list[float | None] = [sent, None, None, None]
        calls.append(call)
        result = client.infer(args.model, [image], client_timeout=10.0)
        call[3] = time.time()
        times = result.as_numpy("TIMES")  # the stand-in model of examples/03 has none
        if times is not None:
            call[1:3] = times.tolist()
        model_gc = result.as_numpy("GC")  # nor a GC output
        if model_gc is not None and model_gc[0] > 0:
            model_collections.append([sent, *model_gc.tolist()])
        return result.as_numpy("DETECTIONS")

    def post(_: object) -> None:
        busy(args.post_ms / 1e3)

    send(b"")  # warm-up, not counted: the channel, the first call
    if args.closed_loop:
        time.sleep(max(0.0, args.start - time.time()))
        done, end = 0, args.start + args.seconds
        while time.time() < end:
            send(b"")
            done += 1
        args.out.write_text(json.dumps({"name": args.name, "answered": done}))
        return
    camera = Camera(
        args.name,
        args.fps,
        send=send,
        frames=itertools.repeat(b""),  # the same JPEG each time: its bytes are `jpeg`
        phase_s=args.phase,
        slot_clock=SlotClient(args.slot_clock) if args.slot_clock else None,
        lead_s=args.lead_ms / 1e3,
        post=post,
    )
    log = camera.run(args.start, args.seconds)
    args.out.write_text(
        json.dumps(
            {
                "name": log.name,
                # its grid: frames due at start + phase + k / fps (a settled window's count)
                "start": args.start,
                "phase": args.phase,
                "due": log.due,
                "latencies_s": log.latencies_s,
                "captured_at": log.captured_at,
                "errors": log.errors,
                "calls": calls[1:],  # not the warm-up
                "gc": collections,
                "modelGc": model_collections,
            }
        )
    )


if __name__ == "__main__":
    main()
