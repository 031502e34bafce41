"""Placement quality and scale, against baselines, on generated fleets.

    python -m bench.placement [--sizes 1000 10000 100000] [--kinds ...] [--json FILE]

For each fleet, in one run: Stagger's plan (GPUs used against the lower bound, solve time,
overlaps checked on every GPU) and three baselines on the same streams:
- one stream per GPU (Kubernetes' default ``nvidia.com/gpu: 1``);
- count-based time-slicing (4 replicas per GPU, no timing): the overload it causes;
- first-fit by body load without the slot check (the same shards, cap and memory): the
  GPUs it uses and how many of them overlap bodies at random phases or have no
  overlap-free table at all.
Then the incremental path: one stream added to the placed 10k fleet (time, moves).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

from bench.placement.fleets import KINDS, FleetKind, cluster, load, lower_bound, streams
from stagger.core.api import InferenceStream
from stagger.core.placement import Plan, Planner, PlannerSettings, _FreeTree, plan
from stagger.core.slots import Slot, SlotRequest, overlaps, pack

CAP = PlannerSettings().utilization_cap
SLICING_REPLICAS = 4


def stagger_run(
    fleet: list[InferenceStream], kind: FleetKind, lb: int
) -> tuple[Plan, dict[str, Any]]:
    c = cluster(int(lb * 1.6) + 16, kind.gpu_memory_mib)
    start = time.perf_counter()
    result = plan(fleet, c)
    seconds = time.perf_counter() - start
    per_gpu: dict[tuple[str, int], list[Slot]] = defaultdict(list)
    for s in result.shards:
        per_gpu[(s.node, s.gpu)].append(Slot(s.key, s.body_ticks, s.period_ticks, s.offset_ticks))
    overlapping = sum(1 for slots in per_gpu.values() if overlaps(slots))
    rounded = sum(1 for s in result.shards if s.period_ticks < s.frame_period_ticks)
    return result, {
        "gpus": len(result.gpus),
        "ratio": len(result.gpus) / lb,
        "seconds": seconds,
        "unplaced": len(result.unplaced),
        "shards": len(result.shards),
        "overlapping_gpus": overlapping,
        "rounded_shards": rounded,
    }


def one_per_gpu(fleet: list[InferenceStream]) -> dict[str, Any]:
    return {"gpus": len(fleet), "overloaded_streams": sum(1 for s in fleet if load(s) > 1)}


def count_time_slicing(fleet: list[InferenceStream], gpu_memory: int) -> dict[str, Any]:
    """k streams per GPU in arrival order, memory permitting; nothing looks at timing."""
    gpus: list[tuple[int, int, float]] = []  # (streams, memory, load)
    for s in fleet:
        n, mem, body = gpus[-1] if gpus else (SLICING_REPLICAS, 0, 0.0)
        if n >= SLICING_REPLICAS or mem + s.spec.memory_mib > gpu_memory:
            gpus.append((1, s.spec.memory_mib, load(s)))
        else:
            gpus[-1] = (n + 1, mem + s.spec.memory_mib, body + load(s))
    over = [g for g in gpus if g[2] > 1.0]
    return {
        "gpus": len(gpus),
        "overloaded_gpus": len(over),
        "streams_on_overloaded": sum(g[0] for g in over),
    }


def first_fit_no_slots(stagger: Plan, gpu_memory: int, seed: int = 0) -> dict[str, Any]:
    """Stagger's own shards, first-fit decreasing by body load under the same cap and
    memory, with no slot check: then check what the GPUs would do."""
    shards = sorted(stagger.shards, key=lambda s: (-s.body_ticks / s.frame_period_ticks, s.key))
    bins: list[list[Any]] = []  # [load, memory, shards]
    room = _FreeTree(len(shards))  # the same first-fit index the planner uses
    for s in shards:
        u = s.body_ticks / s.frame_period_ticks
        i = room.first(0, u - 1e-9, s.memory_mib)
        if i is None or i >= len(bins):
            i = len(bins)
            bins.append([0.0, 0, []])
        b = bins[i]
        b[0] += u
        b[1] += s.memory_mib
        b[2].append(s)
        room.set(i, CAP - b[0], gpu_memory - b[1])
    rng = np.random.default_rng(seed)
    random_overlap = 0
    no_table = 0
    for _, _, members in bins:
        slots = [
            Slot(s.key, s.body_ticks, s.frame_period_ticks, int(rng.integers(s.frame_period_ticks)))
            for s in members
        ]
        random_overlap += bool(overlaps(slots))
        if (
            pack(
                [SlotRequest(s.key, s.body_ticks, s.frame_period_ticks) for s in members],
                max_utilization=1.0,
            )
            is None
        ):
            no_table += 1
    return {
        "gpus": len(bins),
        "overlap_at_random_phases": random_overlap,
        "no_overlap_free_table": no_table,
    }


def incremental(
    fleet: list[InferenceStream], kind: FleetKind, lb: int, tries: int = 20
) -> dict[str, Any]:
    """Add one stream at a time to a placed fleet (then take it away again), as the
    operator does on a create event: time per add, and whether any other shard moved."""
    planner = Planner(cluster(int(lb * 1.6) + 16, kind.gpu_memory_mib))
    before = {s.key: s for s in planner.plan(fleet).shards}
    times, placed = [], 0
    for i, s in enumerate(streams(kind, tries, seed=99)):
        new = s.model_copy(
            update={"metadata": s.metadata.model_copy(update={"name": f"added-{i}"})}
        )
        start = time.perf_counter()
        result = planner.add(new)
        times.append(time.perf_counter() - start)
        placed += isinstance(result, list)
        planner.remove(new.namespace, new.name)
    after = {s.key: s for s in planner.current().shards}
    changed = sum(1 for k, s in before.items() if after.get(k) != s)
    return {
        "median_ms": 1000 * statistics.median(times),
        "max_ms": 1000 * max(times),
        "placed": placed,
        "tries": tries,
        "moved_or_changed": changed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.placement",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--max-heavy", type=int, default=10000, help="largest heavy fleet")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    print(
        "| fleet | streams | median GPU/stream | lower bound | Stagger GPUs (×LB) | solve s "
        "| overlaps | 1/GPU | time-slicing ×4: GPUs, overloaded "
        "| first-fit no slots: GPUs, overlap@random, no table |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.kinds:
        kind = KINDS[name]
        for size in args.sizes:
            if name.startswith("heavy") and size > args.max_heavy:
                continue
            fleet = streams(kind, size)
            lb = lower_bound(fleet, kind.gpu_memory_mib, CAP)
            median = statistics.median(load(s) for s in fleet)
            result, st = stagger_run(fleet, kind, lb)
            base1 = one_per_gpu(fleet)
            ts = count_time_slicing(fleet, kind.gpu_memory_mib)
            ff = first_fit_no_slots(result, kind.gpu_memory_mib)
            row = {
                "fleet": name,
                "streams": size,
                "median_load": median,
                "lower_bound": lb,
                "stagger": st,
                "one_per_gpu": base1,
                "time_slicing": ts,
                "first_fit_no_slots": ff,
            }
            rows.append(row)
            print(
                f"| {name} | {size} | {median:.2f} | {lb} | {st['gpus']} ({st['ratio']:.3f}) | "
                f"{st['seconds']:.2f} | {st['overlapping_gpus']} | {base1['gpus']} | "
                f"{ts['gpus']}, {ts['overloaded_gpus']} GPUs / "
                f"{ts['streams_on_overloaded']} streams | "
                f"{ff['gpus']}, {ff['overlap_at_random_phases']}, {ff['no_overlap_free_table']} |",
                flush=True,
            )
            if st["unplaced"]:
                print(
                    f"  ({st['unplaced']} unplaced: the cluster was sized 1.6 x LB + 16)",
                    flush=True,
                )
    size = 10000 if 10000 in args.sizes else min(args.sizes)
    kind = KINDS["light-80g"]
    fleet = streams(kind, size)
    inc = incremental(fleet, kind, lower_bound(fleet, kind.gpu_memory_mib, CAP))
    print(
        f"\nadd one stream to a placed {size}-stream fleet: median {inc['median_ms']:.2f} ms, "
        f"max {inc['max_ms']:.2f} ms over {inc['tries']} adds ({inc['placed']} placed); "
        f"other shards moved or re-timed: {inc['moved_or_changed']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"fleets": rows, "incremental": inc, "python": sys.version.split()[0]}, f, indent=2
            )
    bad = [
        r
        for r in rows
        if r["stagger"]["overlapping_gpus"] or not math.isfinite(r["stagger"]["ratio"])
    ]
    return 1 if bad or inc["moved_or_changed"] else 0


if __name__ == "__main__":
    sys.exit(main())
