"""Placement quality and scale, against baselines, on generated fleets.

    python -m bench.placement [--sizes 1000 10000 100000] [--kinds ...] [--json FILE]

For each fleet, in one run: Stagger's plan (GPUs used against the lower bound, solve time,
overlaps checked on every GPU) and three baselines on the same streams:
- one stream per GPU (Kubernetes' default ``nvidia.com/gpu: 1``);
- count-based time-slicing (4 replicas per GPU, no timing): the overload it causes;
- first-fit by body load without the slot check (the same shards, cap and memory): the
  GPUs it uses and how many of them overlap bodies at random phases or have no
  overlap-free table at all.
Then the incremental path: one stream added to the placed 10k fleet (time, moves,
re-timings); fleets applied one stream at a time (``Planner.add`` in a shuffled order, the
operator's path for streams that arrive one by one) against one plan of them all; and small
clusters fed random arrivals, groupings and removals through a plan per reconcile, against
a plan from scratch of what is left.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

from bench.placement.fleets import KINDS, FleetKind, cluster, load, lower_bound, streams
from stagger.core.api import InferenceStream
from stagger.core.placement import Plan, Planner, PlannerSettings, plan
from stagger.core.placement.index import _FreeTree
from stagger.core.slots import Slot, SlotRequest, overlaps, pack
from tests.factories import cluster as small_cluster
from tests.factories import stream as small_stream

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


def overlapping_gpus(p: Plan) -> int:
    per_gpu: dict[tuple[str, int], list[Slot]] = defaultdict(list)
    for s in p.shards:
        per_gpu[(s.node, s.gpu)].append(Slot(s.key, s.body_ticks, s.period_ticks, s.offset_ticks))
    return sum(1 for slots in per_gpu.values() if overlaps(slots))


def incremental(
    fleet: list[InferenceStream], kind: FleetKind, lb: int, tries: int = 20
) -> dict[str, Any]:
    """Add one stream at a time to a placed fleet (then take it away again), as the
    operator does on a create event: time per add, and whether any other shard moved to
    another GPU or was re-timed on its own."""
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
    moved = sum(1 for k, s in before.items() if (after[k].node, after[k].gpu) != (s.node, s.gpu))
    retimed = sum(1 for k, s in before.items() if after[k].offset_ticks != s.offset_ticks)
    return {
        "median_ms": 1000 * statistics.median(times),
        "max_ms": 1000 * max(times),
        "placed": placed,
        "tries": tries,
        "moved": moved,
        "retimed": retimed,
    }


def one_at_a_time(kind: FleetKind, size: int, seed: int = 0) -> dict[str, Any]:
    """The fleet applied one stream at a time in a shuffled order (``Planner.add``: into
    gaps, by re-timing a GPU, or onto a new one), against one plan of the whole fleet."""
    fleet = streams(kind, size, seed=seed)
    lb = lower_bound(fleet, kind.gpu_memory_mib, CAP)
    c = cluster(int(lb * 1.6) + 16, kind.gpu_memory_mib)
    start = time.perf_counter()
    batch = plan(fleet, c)
    batch_s = time.perf_counter() - start
    order = fleet[:]
    random.Random(seed + 1).shuffle(order)
    planner = Planner(c)
    planner.plan(order[:1])
    times, refused = [], 0
    for s in order[1:]:
        start = time.perf_counter()
        refused += not isinstance(planner.add(s), list)
        times.append(time.perf_counter() - start)
    after = planner.current()
    return {
        "fleet": kind.name,
        "streams": size,
        "lower_bound": lb,
        "batch_gpus": len(batch.gpus),
        "batch_unplaced": len(batch.unplaced),
        "batch_s": batch_s,
        "gpus": len(after.gpus),
        "ratio": len(after.gpus) / len(batch.gpus),
        "refused": refused,
        "retimed_per_stream": len(planner.retimed) / size,
        "add_median_ms": 1000 * statistics.median(times),
        "add_max_ms": 1000 * max(times),
        "overlapping_gpus": overlapping_gpus(after),
    }


def small_clusters(trials: int, seed: int = 1) -> dict[str, Any]:
    """Random arrivals on 2-6 GPUs (1-30 fps, 1-60 ms bodies, 0-6 GiB): one to three
    streams a reconcile, a removal now and then, each reconcile a plan kept from the last
    (the operator's path); then reconciles with nothing new until nothing changes. Against a
    plan from scratch of the streams left."""
    rng = random.Random(seed)
    out: dict[str, Any] = {
        "trials": trials,
        "batch_all_spare": 0,
        "all_placed_spare": 0,
        "batch_all_full": 0,
        "all_placed_full": 0,
        "same_count": 0,
        "gpus_within_one": 0,
        "more_placed": 0,
        "fewer_placed": 0,
        "moves": 0,
        "max_moves": 0,
        "unsettled": 0,
        "overlapping": 0,
    }
    for _ in range(trials):
        specs = [
            (
                rng.choice([1, 2, 5, 7.5, 10, 12.5, 15, 25, 30]),
                rng.uniform(1, 60),
                rng.uniform(1, 3),
                rng.randint(0, 6000),
            )
            for _ in range(rng.randint(1, 25))
        ]
        fleet = [
            small_stream(f"s{i}", f, body=round(b, 2), latency=round(b * k, 2), memoryMiB=m)
            for i, (f, b, k, m) in enumerate(specs)
        ]
        per_node = rng.randint(1, 3)
        c = small_cluster(("a", per_node), ("b", per_node), memory=24000)
        order = fleet[:]
        rng.shuffle(order)
        present: list[InferenceStream] = []
        now: Plan | None = None
        while order or now is None:
            present += [order.pop() for _ in range(min(len(order), rng.randint(1, 3)))]
            if present and rng.random() < 0.2:
                present.pop(rng.randrange(len(present)))
            now = plan(present, c, previous=now)
            out["moves"] += len(now.moves)
            out["max_moves"] = max(out["max_moves"], len(now.moves))
            out["overlapping"] += bool(overlapping_gpus(now))
        for _ in range(10):  # reconciles with nothing new: repairs go on until none is left
            again = plan(present, c, previous=now)
            if not again.moves and not again.offsets_changed:
                break
            out["moves"] += len(again.moves)
            now = again
        else:
            out["unsettled"] += 1
        batch = plan(present, c)
        placed = len({s.stream for s in now.shards})
        best = len({s.stream for s in batch.shards})
        if best == len(present):
            spare = len(batch.gpus) < 2 * per_node
            out["batch_all_spare" if spare else "batch_all_full"] += 1
            if placed == best:
                out["all_placed_spare" if spare else "all_placed_full"] += 1
        out["more_placed"] += placed > best
        out["fewer_placed"] += placed < best
        if placed == best:
            out["same_count"] += 1
            out["gpus_within_one"] += len(now.gpus) <= len(batch.gpus) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.placement",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--max-heavy", type=int, default=10000, help="largest heavy fleet")
    parser.add_argument(
        "--one-at-a-time", type=int, nargs="+", default=[2000, 10000], metavar="SIZE"
    )
    parser.add_argument("--trials", type=int, default=300, help="small-cluster sequences")
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
            if name.startswith(("heavy", "split")) and size > args.max_heavy:
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
        f"other shards moved: {inc['moved']}, re-timed: {inc['retimed']}"
    )

    print(
        "\n| fleet | streams | one plan: GPUs (s) | one at a time: GPUs (x one plan) | refused "
        "| re-timed shards per stream | add median / max ms | overlaps |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    singles = []
    for name in args.kinds:
        for n in args.one_at_a_time:
            if name.startswith(("heavy", "split")) and n > args.max_heavy:
                continue
            r = one_at_a_time(KINDS[name], n)
            singles.append(r)
            print(
                f"| {name} | {n} | {r['batch_gpus']} ({r['batch_s']:.2f}) | {r['gpus']} "
                f"({r['ratio']:.3f}) | {r['refused']} | {r['retimed_per_stream']:.2f} | "
                f"{r['add_median_ms']:.2f} / {r['add_max_ms']:.1f} | {r['overlapping_gpus']} |",
                flush=True,
            )

    small = small_clusters(args.trials)
    print(
        f"\nsmall clusters, {small['trials']} random sequences of arrivals and removals, a plan "
        f"per reconcile:\n"
        f"- where a plan from scratch places every stream and leaves a GPU free: every "
        f"stream placed in {small['all_placed_spare']} of {small['batch_all_spare']}\n"
        f"- where it needs every GPU: {small['all_placed_full']} of {small['batch_all_full']}\n"
        f"- the same number of streams placed: {small['same_count']} (more: "
        f"{small['more_placed']}, fewer: {small['fewer_placed']}); of those, GPUs within one of "
        f"the plan from scratch: {small['gpus_within_one']}\n"
        f"- moves {small['moves']} in all, at most {small['max_moves']} in one plan; "
        f"unsettled after 10 quiet reconciles: {small['unsettled']}; plans with overlaps: "
        f"{small['overlapping']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "fleets": rows,
                    "incremental": inc,
                    "one_at_a_time": singles,
                    "small_clusters": small,
                    "python": sys.version.split()[0],
                },
                f,
                indent=2,
            )
    bad = [
        r
        for r in rows
        if r["stagger"]["overlapping_gpus"] or not math.isfinite(r["stagger"]["ratio"])
    ]
    bad += [r for r in singles if r["overlapping_gpus"]]
    return 1 if bad or inc["moved"] or small["overlapping"] else 0


if __name__ == "__main__":
    sys.exit(main())
