"""`stagger profile` on a real GPU: RetinaNet behind a real tritonserver, profiled
time-sliced and under MPS, next to direct measurements of the same work in one run.

Runs on a lent GPU machine (bench/gpu/README.md says how the files travel):

    python3 -m bench.gpu.calibrate --out OUT_DIR

Direct measurements, for comparison with the profiler's knee (the body):
- ``gpu_ms``: CUDA events around one inference (decode, resize, network, post-processing)
  in this process, no Triton, solo: the GPU time of one inference;
- ``compute_infer_ms``: Triton's own ``compute_infer`` per inference over solo requests
  (statistics extension): the model's execution as Triton sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from stagger_testkit.localtriton import LocalTriton

MODELS = Path(__file__).parent / "models"
MODEL = "detector"
NUMPY_DIR_ENV = "STAGGER_NUMPY_DIR"  # numpy < 2 for Triton's Python backend (README)


def write_frame(path: Path) -> None:
    """A synthetic 1080p camera frame as JPEG: smooth gradients and sensor-like noise."""
    import torch  # noqa: PLC0415 (the GPU machine's)
    import torchvision  # noqa: PLC0415

    g = torch.Generator().manual_seed(7)
    y = torch.linspace(0, 1, 1080)[:, None]
    x = torch.linspace(0, 1, 1920)[None, :]
    base = torch.stack([y * x, y.expand(1080, 1920), x.expand(1080, 1920)]) * 200
    noisy = base + torch.randint(0, 40, (3, 1080, 1920), generator=g)
    jpeg = torchvision.io.encode_jpeg(noisy.clamp(0, 255).to(torch.uint8), quality=90)
    path.write_bytes(jpeg.numpy().tobytes())


def direct_gpu_ms(jpeg_path: Path, runs: int = 100) -> dict[str, float]:
    """One inference's GPU time, without Triton: the model's own code, CUDA events."""
    import torch  # noqa: PLC0415
    import torchvision  # noqa: PLC0415

    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True
    model = (
        torchvision.models.detection.retinanet_resnet50_fpn(
            weights=None, weights_backbone=None, score_thresh=0.05, detections_per_img=100
        )
        .eval()
        .to(device)
    )
    jpeg = torchvision.io.read_file(str(jpeg_path))
    times, walls = [], []
    with torch.inference_mode():
        for i in range(runs + 10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            wall = time.perf_counter()
            start.record()
            image = torchvision.io.decode_jpeg(jpeg, device=device)
            out = model([image.float() / 255])[0]
            end.record()
            out["boxes"].cpu()
            torch.cuda.synchronize()
            if i >= 10:  # warm-up first
                times.append(start.elapsed_time(end))
                walls.append((time.perf_counter() - wall) * 1e3)
    del model
    torch.cuda.empty_cache()
    times.sort()
    walls.sort()
    return {"gpu_p50_ms": times[len(times) // 2], "wall_p50_ms": walls[len(walls) // 2]}


def compute_infer_ms(triton: LocalTriton, jpeg_path: Path, runs: int = 50) -> float:
    """Triton's compute_infer per inference over ``runs`` solo requests."""
    import numpy as np  # noqa: PLC0415
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    client = grpcclient.InferenceServerClient(triton.grpc)
    image = grpcclient.InferInput("IMAGE", [jpeg_path.stat().st_size], "UINT8")
    image.set_data_from_numpy(np.frombuffer(jpeg_path.read_bytes(), dtype=np.uint8))

    def totals() -> tuple[int, int]:
        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
        compute = stats["inference_stats"]["compute_infer"]
        return int(compute.get("count", 0)), int(compute.get("ns", 0))

    count0, ns0 = totals()
    for _ in range(runs):
        client.infer(MODEL, [image])
    count1, ns1 = totals()
    client.close()
    return (ns1 - ns0) / (count1 - count0) / 1e6


def profile(triton: LocalTriton, jpeg_path: Path, out: Path, mode: str) -> dict[str, Any]:
    """``stagger profile`` as a user runs it, its JSON report."""
    command = [
        sys.executable,
        "-c",
        "from stagger.cli import main; raise SystemExit(main())",
        "profile",
        "--url",
        f"grpc://{triton.grpc}",
        "--model",
        MODEL,
        "--input",
        f"IMAGE={jpeg_path}",
        "--runs",
        "10",
        "--solo-runs",
        "50",
        "--saturation",
        "1",
        "2",
        "4",
        "8",
        "-o",
        "json",
        "--plot",
        str(out / f"profile-{mode}.png"),
    ]
    print("$", " ".join(command[3:]), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-2000:]}
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def mps(start: bool) -> str | None:
    """Start or stop the MPS control daemon; the error when it cannot."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return "nvidia-cuda-mps-control is not on the PATH"
    run = subprocess.run(
        [control] + (["-d"] if start else []),
        input=None if start else "quit\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        return (run.stderr or run.stdout).strip() or f"exit {run.returncode}"
    time.sleep(1.0 if start else 2.0)  # the daemon has no readiness signal to wait on
    return None


def gpu_name() -> str:
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    return subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()


def gpu_memory_mib(index: int) -> int | None:
    """The GPU's memory as nvidia-smi reports it (None where it cannot say)."""
    query = [
        "nvidia-smi",
        "-i",
        str(index),
        "--query-gpu=memory.total",
        "--format=csv,noheader,nounits",
    ]
    out = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return int(out) if out.isdigit() else None


def triton_server(log: Path) -> LocalTriton:
    """Triton with numpy < 2 first on its models' path, then this Python's packages (torch)."""
    paths = sysconfig.get_paths()
    model_path = [os.environ[NUMPY_DIR_ENV], paths["purelib"], paths["platlib"]]
    return LocalTriton(MODELS, log_file=log, ready_timeout_s=240, model_path=model_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--modes", nargs="+", default=["time-slicing", "mps"])
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    frame = out.parent / "frame.jpg" if out.parent != out else Path("/tmp/frame.jpg")
    write_frame(frame)
    result: dict[str, Any] = {"device": gpu_name(), "frame_bytes": frame.stat().st_size}
    print("device:", result["device"], flush=True)
    result["direct"] = direct_gpu_ms(frame)
    print("direct:", result["direct"], flush=True)
    for mode in args.modes:
        entry: dict[str, Any] = {}
        if mode == "mps" and (why := mps(start=True)) is not None:
            result[mode] = {"error": f"MPS did not start: {why}"}
            continue
        try:
            with triton_server(out / f"triton-{mode}.log") as triton:
                entry["compute_infer_ms"] = compute_infer_ms(triton, frame)
                entry["profile"] = profile(triton, frame, out, mode)
        finally:
            if mode == "mps":
                entry["mps_stop_error"] = mps(start=False)
        result[mode] = entry
        print(mode, json.dumps(entry)[:3000], flush=True)
    (out / "gpu-calibration.json").write_text(json.dumps(result, indent=1))
    print(summary(result), flush=True)


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"device: {result['device']}",
        f"direct, no Triton: GPU {result['direct']['gpu_p50_ms']:.2f} ms per inference "
        f"(wall {result['direct']['wall_p50_ms']:.2f} ms)",
        "| mode | compute_infer | solo p50 | knee (95 % CI) | effective body | bodyTimeMs |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("time-slicing", "mps"):
        entry = result.get(mode) or {}
        report = entry.get("profile") or {}
        if "error" in entry or "error" in report or not report:
            lines.append(f"| {mode} | {entry.get('error') or report.get('error', 'not run')} |")
            continue
        ci = report.get("knee_ci_ms")
        knee = (
            f"{report['knee_ms']:.2f} ({ci[0]:.2f}–{ci[1]:.2f}) ms"
            if report.get("knee_ms") is not None and ci
            else "none (flat sweep)"
        )
        lines.append(
            f"| {mode} | {entry['compute_infer_ms']:.2f} ms | {report['solo_ms']['p50']:.2f} ms "
            f"| {knee} | {report.get('effective_body_ms') or 0:.2f} ms "
            f"| {report.get('recommended_body_ms', 0):g} ms |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
