"""The simulator against the H200: what `stagger plan` predicts, beside what the GPU did.

    python -m bench.simulator.gpu [RESULT.json ...] [--seconds 60] [--seeds 5]

Every identical-streams run of ``bench.gpu.loop`` recorded in ``bench/gpu/results`` (by
default) holds the ModelProfile the run calibrated, and what the GPU did with random phases
at two N (the phases drawn from the run's seed, so they can be replayed exactly) and with
the loop at the N the planner admitted. For each, this feeds the simulator what the product
knows, the profile's figures alone, as ``stagger plan`` does: the streams are applied one
at a time to the planner on a one-GPU cluster, the plan is simulated staggered
(:func:`stagger.core.simulate.simulate_plan`), and the random configurations are simulated
with the run's own phases on the same shards (:func:`shards_from_plan`). So the table says
how far the figures a user reads in `stagger plan` are from the GPU's.

The profile's ``latencyMs`` is the model's at Triton; the run's cameras add 2-4 ms of
host time that no profile holds, so simulated latencies are that much below measured ones
where nothing queues.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.gpu.loop import RANDOM_ABOVE, apply_one_at_a_time, cluster_of, stream
from stagger.core.api import ModelProfile, SharingMode
from stagger.core.placement import Plan, PlannerSettings
from stagger.core.simulate import (
    CONTENTION,
    Phasing,
    ShardStats,
    merge,
    shards_from_plan,
    simulate_gpu,
    simulate_plan,
)

RESULTS = Path(__file__).resolve().parents[1] / "gpu" / "results"
LOOP_SEED = 7
"""``bench.gpu.loop``'s default ``--seed``: random phases at N are drawn from seed + N."""


@dataclass(frozen=True)
class Comparison:
    run: str
    mode: str
    body: str
    phasing: str
    n: int
    gpu_drop_percent: float
    gpu_p99_ms: float
    sim: ShardStats

    @property
    def sim_drop_percent(self) -> float:
        return 100 * self.sim.drop_rate


def profile_of(result: dict[str, Any], model: str, product: str, mode: str) -> ModelProfile:
    """The ModelProfile a run applied, rebuilt from its calibration summary."""
    c = result["calibration"]
    spec: dict[str, Any] = {
        "model": model,
        "gpuProduct": product,
        "sharingMode": mode,
        "bodyTimeMs": c["bodyTimeMs"],
        "latencyMs": c["latencyMs"],
    }
    if c.get("soloComputeMs"):
        spec["soloComputeMs"] = c["soloComputeMs"]
    if c.get("costMs") is not None:
        spec["costMs"] = c["costMs"]
        if c.get("exclusiveBody"):
            spec["exclusiveBody"] = True
    return ModelProfile.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": f"{model}-{mode}"},
            "spec": spec,
        }
    )


def simulated(
    placed: Plan, phasing: Phasing, seconds: float, seeds: int, phases_s: list[float] | None
) -> ShardStats:
    """The plan simulated over ``seeds`` seeds; with ``phases_s``, as many streams as there
    are phases, each a copy of the plan's first shard (the streams are identical) started
    at its phase."""
    runs: list[ShardStats] = []
    for seed in range(seeds):
        if phases_s is None:
            runs.extend(simulate_plan(placed, phasing, seconds, seed=seed).values())
            continue
        template = next(iter(shards_from_plan(placed, phasing).values()))[0]
        shards = [replace(template, key=i, phase_s=p, slot=None) for i, p in enumerate(phases_s)]
        alpha = CONTENTION[placed.gpus[0].sharing_mode]
        runs.extend(simulate_gpu(shards, seconds, contention=alpha, seed=seed).values())
    return merge(runs)


def compare(path: Path, seconds: float, seeds: int) -> list[Comparison]:
    """One run's comparisons: the loop and random phases at each N it measured. Runs of the
    mixed fleet, and settings without a calibration, give none. The loop is compared only
    where today's planner admits what the run's did (older runs planned otherwise)."""
    run = json.loads(path.read_text())
    if run.get("kind") != "loop" or run.get("mixed"):
        return []
    mode, fps, product = run["mode"], float(run["fps"]), run["product"]
    recorded = run.get("settings", {})
    cap = recorded.get("throughputCap", PlannerSettings().throughput_cap)
    settings = PlannerSettings(
        throughput_cap=cap,
        mps_throughput_cap=cap,
        charge_model_time=bool(recorded.get("chargeModelTime")),
    )
    cluster = cluster_of(product, SharingMode(mode), 143_771)
    out: list[Comparison] = []
    for body, result in run["results"].items():
        if not (result.get("calibration") or {}).get("bodyTimeMs") or not result.get("random"):
            continue
        profile = profile_of(result, body, product, mode)
        ns = [int(n) for n in result["random"]]
        candidates = [stream(f"cam-{i}", body, fps, 2048) for i in range(max(ns) + RANDOM_ABOVE)]
        placed, applied, _ = apply_one_at_a_time(
            candidates, cluster, [profile], settings, len(candidates)
        )
        if placed is None:
            continue
        measured: list[tuple[str, int, dict[str, Any], ShardStats]] = []
        loop = result.get("loop")
        if loop and len(applied) == result.get("admitted"):
            sim = simulated(placed, Phasing.STAGGERED, seconds, seeds, None)
            measured.append(("loop", len(applied), loop, sim))
            fewer = result.get("loopOneFewer")  # --fewer: the last admitted stream left out
            if fewer and fewer.get("admitted") == len(applied) - 1 and "p99Ms" in fewer:
                one_fewer, _, _ = apply_one_at_a_time(
                    applied[:-1], cluster, [profile], settings, len(applied)
                )
                assert one_fewer is not None  # fewer streams than were placed: all placed
                sim = simulated(one_fewer, Phasing.STAGGERED, seconds, seeds, None)
                measured.append(("loop", len(applied) - 1, fewer, sim))
        for n in ns:
            rng = random.Random(LOOP_SEED + n)  # the run's own phases at this N
            phases_s = [rng.uniform(0, 1 / fps) for _ in range(n)]
            sim = simulated(placed, Phasing.RANDOM, seconds, seeds, phases_s)
            measured.append(("random", n, result["random"][str(n)], sim))
        out.extend(
            Comparison(path.stem, mode, body, phasing, n, gpu["dropPercent"], gpu["p99Ms"], sim)
            for phasing, n, gpu, sim in measured
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulator.gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    paths = args.results or sorted(RESULTS.glob("*loop*.json"))
    print("| run | mode | body | phases | N | GPU: drops · p99 ms | simulated: drops · p99 ms |")
    print("|---|---|---|---|---:|---:|---:|")
    for path in paths:
        for c in compare(path, args.seconds, args.seeds):
            print(
                f"| {c.run} | {c.mode} | {c.body} | {c.phasing} | {c.n} | "
                f"{c.gpu_drop_percent:.2f} % · {c.gpu_p99_ms:.1f} | "
                f"{c.sim_drop_percent:.2f} % · {c.sim.percentile(99):.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
