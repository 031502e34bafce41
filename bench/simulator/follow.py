"""The followed table, simulated: slots packed at their reserved width, against slots kept
the model's own time apart (``stagger.core.phase.follow_spacing``), for the cameras of a
recorded transparent run.

    python -m bench.simulator.follow [RESULT.json ...] [--seconds 40] [--seeds 3]

For each run of ``bench.gpu.loop`` with a transparent record (by default every one in
``bench/gpu/results`` whose profile has ``soloComputeMs``), the bench's cameras (the
random configuration's phases at N, seed 7 + N) are followed from the planner's even table
by the operator's own :func:`stagger.core.phase.follow`, once without spacing (the
operator's follower before run 104) and once with the spacing it now keeps
(:func:`stagger.core.phase.follow_spacing`; none under MPS, or past the whole second). Each
table is simulated with its bodies taking the model's own time on the busy GPU
(:func:`stagger.core.phase.busy_model_ms`) and worth the
measured cost when they share the GPU (:func:`stagger.core.simulate.simulate_gpu`). Each
camera waits its slot's wait every frame, so its tail is that wait plus its simulated p99
in the model; the worst camera's is the table's p99, shown over random phases' p99 as the
run measured it, beside what the run measured for each table it ran (run 104 ran both).

It predicts; the GPU measures. On run 100's table at the reserved width it gives 63.1 ms
for the worst camera, where the run measured 63.8 ms (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from stagger.core.phase import (
    PhaseEstimate,
    busy_model_ms,
    follow,
    hold_limit_s,
    spacing_ticks,
)
from stagger.core.simulate import CONTENTION, SimShard, simulate_gpu
from stagger.core.slots import Slot

RESULTS = Path(__file__).resolve().parents[1] / "gpu" / "results"
LOOP_SEED = 7  # bench.gpu.loop's default --seed: the cameras' phases at N from seed + N
TICK_HZ = 1_000_000
LEAD_S = 0.002  # follow's default: the way from the gate to Triton
HOST_MS = 0.5  # the sidecar and Triton on either side of the model, each way


def followed(
    phases_s: list[float], width: int, period: int, spacing: int | None, hold: int | None = None
) -> tuple[list[int], list[float]]:
    """The offsets (ticks) the operator's follower gives the cameras from the planner's
    even table, and each camera's wait (s) from its arrival to its slot; ``hold``: how long
    each camera's gate holds a request (ticks, :func:`stagger.core.phase.follow_holds`)."""
    n = len(phases_s)
    table = [Slot(i, width, period, i * period // n) for i in range(n)]
    arrivals: dict[Hashable, PhaseEstimate] = {
        i: PhaseEstimate(period / TICK_HZ, p, 0.0, 0.99, 64, 64) for i, p in enumerate(phases_s)
    }
    gaps: dict[Hashable, int] = dict.fromkeys(range(n), spacing) if spacing else {}
    holds: dict[Hashable, int] = dict.fromkeys(range(n), hold) if hold is not None else {}
    result = follow(table, arrivals, tick_hz=TICK_HZ, spacing=gaps, holds=holds) or table
    offsets = [s.offset for s in result]
    waits = [
        ((o / TICK_HZ) - p) % (period / TICK_HZ) for o, p in zip(offsets, phases_s, strict=True)
    ]
    return offsets, waits


def simulate(
    offsets: list[int],
    waits_s: list[float],
    *,
    period: int,
    body_s: float,
    cost_s: float,
    contention: float,
    seconds: float,
    seeds: int,
) -> dict[str, float]:
    """The table's frames in the model (p50, p99) and its worst camera's wait + p99."""
    per_camera: dict[int, list[float]] = {}
    for seed in range(seeds):
        shards = [
            SimShard(
                i,
                period / TICK_HZ,
                (o / TICK_HZ - HOST_MS / 1e3) % (period / TICK_HZ),
                body_s,
                HOST_MS / 1e3,
                HOST_MS / 1e3,
                slot=(o / TICK_HZ, period / TICK_HZ),
                cost_s=cost_s,
            )
            for i, o in enumerate(offsets)
        ]
        stats = simulate_gpu(shards, seconds, contention=contention, seed=seed)
        for i, s in enumerate(stats.values()):  # in the shards' order
            per_camera.setdefault(i, []).extend(s.latencies_ms)
    every = [x for v in per_camera.values() for x in v]
    worst = max(waits_s[i] * 1e3 + float(np.percentile(v, 99)) for i, v in per_camera.items())
    return {
        "longestWaitMs": max(waits_s) * 1e3,
        "modelP50Ms": float(np.percentile(every, 50)),
        "modelP99Ms": float(np.percentile(every, 99)),
        "worstCameraP99Ms": worst,
    }


def compare(path: Path, seconds: float, seeds: int) -> dict[str, Any] | None:
    """Both tables for one run, or None where it has no transparent record or no solo
    compute."""
    run = json.loads(path.read_text())
    for body, r in run.get("results", {}).items():
        t, c = r.get("transparent"), r.get("calibration") or {}
        if not t or "steady" not in t or not c.get("soloComputeMs") or not r.get("slots"):
            continue
        n, fps, mode = len(t["followedOffsetsMs"]), float(run["fps"]), run["mode"]
        period = round(TICK_HZ / fps)
        rng = random.Random(LOOP_SEED + n)
        phases = [rng.uniform(0, 1 / fps) for _ in range(n)]
        width = round(r["slots"][0]["reservedMs"] * TICK_HZ / 1e3)
        # follow_spacing's own time on the busy GPU, and their share of the second at N
        busy = busy_model_ms(c["soloComputeMs"], c.get("costMs"))
        share = None if mode == "mps" or busy is None else n * busy * fps / 1e3
        apart = spacing_ticks(busy, share, TICK_HZ)
        latency = c.get("latencyMs")  # older runs' profiles may not say
        hold_s = None if latency is None else hold_limit_s(1 / fps, latency / 1e3)
        hold = None if hold_s is None else math.floor(hold_s * TICK_HZ)
        random_p99 = r["random"][str(n)]["p99Ms"] if str(n) in r["random"] else None
        tables: dict[str, dict[str, float | None]] = {}
        measured = measured_p99_ms(r)
        for name, spacing in (("reserved width", None), ("model's own time", apart)):
            if name != "reserved width" and spacing is None:
                continue  # the operator keeps no spacing there: the same table
            tables[name] = {
                "measuredP99Ms": measured.get(name),
                **simulate(
                    *followed(phases, width, period, spacing, hold),
                    period=period,
                    body_s=(busy or c["soloComputeMs"]) / 1e3,
                    cost_s=c["costMs"] / 1e3,
                    contention=CONTENTION[mode],
                    seconds=seconds,
                    seeds=seeds,
                ),
            }
        return {
            "run": path.stem,
            "body": body,
            "mode": mode,
            "n": n,
            "share": share,
            "randomP99Ms": random_p99,
            "tables": tables,
        }
    return None


def measured_p99_ms(r: dict[str, Any]) -> dict[str, float]:
    """The settled p99 the run measured for each table it ran: transparent mode's table is
    the spaced one where the follower kept a spacing (``spacingMs``; the operator's since
    run 104), else the packed one; ``transparentPacked`` (``--transparent-packed``) and,
    in older runs, ``transparentSpaced`` (``--transparent-spaced``) are the other."""
    out: dict[str, float] = {}
    own = r["transparent"]
    out["model's own time" if own.get("spacingMs") else "reserved width"] = own["steady"]["p99Ms"]
    for key, name in (
        ("transparentPacked", "reserved width"),
        ("transparentSpaced", "model's own time"),
    ):
        if "steady" in r.get(key, {}):
            out[name] = r[key]["steady"]["p99Ms"]
    return out


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | mode · N · models' time | table | longest wait ms | simulated in the model "
        "p50 / p99 ms | worst camera p99 ms (× random's) | measured transparent p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for name, s in r["tables"].items():
            ratio = (
                f" ({s['worstCameraP99Ms'] / r['randomP99Ms']:.2f} ×)" if r["randomP99Ms"] else ""
            )
            share = "-" if r["share"] is None else f"{r['share']:.2f}"
            lines.append(
                f"| {r['run']} | {r['mode']} · {r['n']} · {share} | {name} | "
                f"{s['longestWaitMs']:.1f} | {s['modelP50Ms']:.1f} / {s['modelP99Ms']:.1f} | "
                f"{s['worstCameraP99Ms']:.1f}{ratio} | {s['measuredP99Ms'] or '-'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    paths = args.results or sorted(RESULTS.glob("*loop*.json"))
    rows = []
    for path in paths:
        try:
            row = compare(path, args.seconds, args.seeds)
        except (OSError, ValueError, KeyError) as e:  # JSONDecodeError is a ValueError
            parser.error(f"{path}: not a result of bench.gpu.loop: {type(e).__name__}: {e}")
        if row is not None:
            rows.append(row)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
