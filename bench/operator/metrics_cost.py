"""What the operator's own metrics cost at fleet scale: a reconcile's update (on the event
loop, where the slot feed and the watches are served) and a scrape (the metrics thread).

    python -m bench.operator.metrics_cost [--streams 10000]
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry, generate_latest

from stagger.core.placement import GpuUsage, Plan, ShardPlacement
from stagger_operator.controller import Report
from stagger_operator.metrics import OperatorMetrics


def report(streams: int, per_gpu: int = 27) -> Report:
    """A fleet of ``streams`` one-shard streams, ``per_gpu`` to a GPU, 8 GPUs a node."""
    shards = tuple(
        ShardPlacement(
            namespace="ns",
            stream=f"s{i:05d}",
            shard=0,
            shards=1,
            node=f"n{i // (8 * per_gpu)}",
            gpu=(i // per_gpu) % 8,
            gpu_uuid=f"GPU-{i // per_gpu}",
            product="NVIDIA-H200",
            fps=10.0,
            frame_period_ticks=3000,
            period_ticks=3000,
            offset_ticks=0,
            body_ticks=100,
            body_ms=5.0,
            latency_ms=20.0,
            memory_mib=1024,
            priority=0,
        )
        for i in range(streams)
    )
    gpus = tuple(
        GpuUsage(f"n{j // 8}", j % 8, f"GPU-{j}", "NVIDIA-H200", "time-slicing", 0.8, 1, 1, 1, 1.0)
        for j in range(-(-streams // per_gpu))
    )
    r = Report(placed=streams)
    r.plan = Plan(shards=shards, gpus=gpus, unplaced=())
    r.targets = [("ns", p.stream, 10.0, 0.1) for p in shards]
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    args = parser.parse_args()
    metrics = OperatorMetrics(CollectorRegistry())
    changed = report(args.streams)
    same = Report(placed=args.streams)
    same.targets = changed.targets
    metrics.reconciled(changed, 0.1)
    t0 = time.perf_counter()
    metrics.reconciled(changed, 0.1)
    t1 = time.perf_counter()
    metrics.reconciled(same, 0.1)
    t2 = time.perf_counter()
    text = generate_latest(metrics.registry)
    t3 = time.perf_counter()
    print(
        f"{args.streams} streams: a reconcile's update {1e3 * (t1 - t0):.0f} ms with a new plan, "
        f"{1e3 * (t2 - t1):.0f} ms without; a scrape {1e3 * (t3 - t2):.0f} ms "
        f"({len(text) // 1024} KiB)"
    )


if __name__ == "__main__":
    main()
