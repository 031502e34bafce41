"""The detector eager and with its body as a CUDA graph, side by side on one GPU, without
Triton: the same detections first, then each one's time per frame and how much of it the
GPU is busy.

    python3 -m bench.gpu.graphs [--runs 100] [--out graphs.json]

- same function: on fresh random frames (a new random JPEG each), the graph's body
  outputs (class logits, box regression) against the same model's eager ones, by
  ‖graph − eager‖ / ‖eager‖ (both TF32 convolutions: well under 1e-3), the graph's
  static outputs poisoned with NaN before each replay so an unwritten element shows; and
  the final detections' scores;
- time: wall time per frame, JPEG in to detections on the CPU (what a stream's slot must
  hold), p50 and p99 over ``--runs``; the GPU's busy time per frame (the sum of its kernels'
  and copies' durations, torch.profiler) over the p50 wall: the body's density, 1 for a GPU
  that never idles;
- where the wall goes: per phase of ``network.Detector`` (decode, network, and with graphs
  its transform, body and postprocess; to-cpu), the host's time in it and the span of its
  work on the GPU (first start to last end), per frame, from profiled frames (the profiler
  adds its own cost to the host's times).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.gpu.calibrate import MODELS

NETWORK = MODELS / "detector" / "1" / "network.py"
CHECKS = 5
TOLERANCE = 1e-3
PROFILED = 20
PHASES = ("decode", "network", "transform", "body", "postprocess", "to-cpu")


def load_network() -> Any:
    spec = importlib.util.spec_from_file_location("detector_network", NETWORK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_jpeg(generator: Any) -> Any:
    import torch  # noqa: PLC0415 (the GPU machine's)
    import torchvision  # noqa: PLC0415

    frame = torch.randint(0, 255, (3, 1080, 1920), dtype=torch.uint8, generator=generator)
    return torchvision.io.encode_jpeg(frame, quality=90)


def relative_error(got: Any, want: Any) -> float:
    import torch  # noqa: PLC0415

    if not torch.isfinite(got).all():
        return float("nan")
    return float((got.double() - want.double()).norm() / want.double().norm())


def check(graphed: Any, generator: Any) -> dict[str, Any]:
    """The graph computes eager's function, on the same weights (the same model run eager):
    body outputs and detections on fresh frames."""
    import torch  # noqa: PLC0415
    import torchvision  # noqa: PLC0415

    errors: list[float] = []
    score_errors: list[float] = []
    detections = 0
    with torch.inference_mode():
        for _ in range(CHECKS):
            jpeg = random_jpeg(generator)
            image = torchvision.io.decode_jpeg(jpeg, device=graphed.device).float() / 255
            batch = graphed.model.transform([image])[0].tensors
            _, want = graphed._body(batch)  # eager
            features, outputs = graphed._static_out
            for t in [*features, *outputs.values()]:
                t.fill_(float("nan"))
            graphed._static_in.copy_(batch)
            graphed._graph.replay()
            errors += [relative_error(outputs[k], want[k]) for k in want]
            got_scores = graphed.forward(image)["scores"]
            want_scores = graphed.model([image])[0]["scores"]  # torchvision's own call
            detections += len(want_scores)
            if got_scores.shape != want_scores.shape:
                score_errors.append(float("inf"))
            elif len(want_scores):  # random weights may leave none over the threshold
                score_errors.append(relative_error(got_scores, want_scores))
    worst = max(errors)
    return {
        "frames": CHECKS,
        "bodyRelativeErrorMax": worst,
        "detections": detections,
        "scoresRelativeErrorMax": max(score_errors, default=0.0),
        "same": bool(worst < TOLERANCE),  # NaN compares False: an unwritten output fails
    }


def timing(detector: Any, jpeg: Any, runs: int) -> dict[str, Any]:
    import torch  # noqa: PLC0415
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    walls = []
    for _ in range(runs):
        torch.cuda.synchronize()
        began = time.perf_counter()
        detector.detect(jpeg)  # ends with the copy to the CPU: the GPU is done
        walls.append((time.perf_counter() - began) * 1e3)
    walls.sort()
    wall = statistics.median(walls)
    busy_ms: float | None = None
    phases: dict[str, dict[str, float]] = {}
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(PROFILED):
                detector.detect(jpeg)
        events = prof.events()
        # Kernels, copies and sets: the GPU's work. The phases' ranges appear twice, on the
        # host (its time in the phase) and on the GPU (first to last of its work there).
        busy_ms = (
            sum(e.time_range.elapsed_us() for e in events if on_gpu(e) and e.name not in PHASES)
            / 1e3
            / PROFILED
        )
        for phase in PHASES:
            host = [e.time_range.elapsed_us() for e in events if e.name == phase and not on_gpu(e)]
            gpu = [e.time_range.elapsed_us() for e in events if e.name == phase and on_gpu(e)]
            if host:
                phases[phase] = {
                    "hostMs": round(sum(host) / 1e3 / PROFILED, 2),
                    "gpuSpanMs": round(sum(gpu) / 1e3 / PROFILED, 2),
                }
    except Exception as e:  # no CUPTI: the times still count
        print("profiler:", repr(e))
    return {
        "wallP50Ms": round(wall, 2),
        "wallP99Ms": round(walls[min(len(walls) - 1, int(0.99 * len(walls)))], 2),
        "gpuBusyMs": None if busy_ms is None else round(busy_ms, 2),
        "density": None if busy_ms is None else round(busy_ms / wall, 3),
        "phases": phases,
    }


def on_gpu(event: Any) -> bool:
    return bool(event.device_type.name == "CUDA")


def summary(result: dict[str, Any]) -> str:
    """Markdown: the check, then one row per variant and round."""
    check_ = result["check"]
    lines = [
        f"device: {result['device']}; graph body vs eager on {check_['frames']} fresh frames: "
        f"relative error {check_['bodyRelativeErrorMax']:.2g} (same: {check_['same']}), "
        f"{check_['detections']} detections, scores' error {check_['scoresRelativeErrorMax']:.2g}",
        "",
        "| variant | wall p50 ms | wall p99 ms | GPU busy ms | density | "
        + " | ".join(f"{p} host/GPU span ms" for p in PHASES)
        + " |",
        "|---" * (5 + len(PHASES)) + "|",
    ]
    for name, t in result.items():
        if isinstance(t, dict) and "wallP50Ms" in t:
            phases = t["phases"]
            cells = [
                f"{phases[p]['hostMs']}/{phases[p]['gpuSpanMs']}" if p in phases else ""
                for p in PHASES
            ]
            lines.append(
                f"| {name} | {t['wallP50Ms']} | {t['wallP99Ms']} | {t['gpuBusyMs']} | "
                f"{t['density']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    import torch  # noqa: PLC0415

    network = load_network()
    device = torch.device("cuda", 0)
    generator = torch.Generator().manual_seed(int(time.time()))  # fresh frames every run
    eager = network.Detector(device)
    graphed = network.Detector(device, cuda_graphs=True)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device)}
    result["check"] = check(graphed, generator)
    jpeg = random_jpeg(generator)
    # Alternating, twice each: a difference smaller than a variant's own spread is noise.
    for round_ in (1, 2):
        for name, detector in (("eager", eager), ("cuda-graphs", graphed)):
            result[f"{name}-{round_}"] = timing(detector, jpeg, args.runs)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(summary(result))
    if not result["check"]["same"]:
        raise SystemExit("the graph's body does not compute eager's")


if __name__ == "__main__":
    main()
