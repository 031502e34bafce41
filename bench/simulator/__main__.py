"""The simulator against the published study: 4 SSD-ResNet streams at 4 fps on one T4.

    python -m bench.simulator [--seconds 600] [--seeds 5]

Published (solo 70-80 ms, body about 45 ms): staggered mean about 83 ms, max 110 ms, no
drops; synchronized mean about 268 ms, about 50 % drops. Prints the simulator's figures
for ideal sharing (contention 0) and for the calibrated contention, side by side.
"""

from __future__ import annotations

import argparse
import sys

from stagger.core.api import InferenceStream
from stagger.core.cluster import Cluster
from stagger.core.placement import Plan, plan
from stagger.core.simulate import STUDY_CONTENTION, Phasing, merge, simulate_plan

PUBLISHED = {
    Phasing.STAGGERED: "mean ~83, max 110, 0 % drops",
    Phasing.SYNCHRONIZED: "mean ~268, ~50 % drops",
    Phasing.RANDOM: "(not published)",
}


def study_plan() -> Plan:
    streams = [
        InferenceStream.model_validate(
            {
                "apiVersion": "stagger.dev/v1alpha1",
                "kind": "InferenceStream",
                "metadata": {"name": f"cam-{i + 1}", "namespace": "study"},
                "spec": {"model": "ssd-resnet50", "fps": 4, "bodyTimeMs": 45, "latencyMs": 75},
            }
        )
        for i in range(4)
    ]
    t4 = Cluster.model_validate(
        {
            "nodes": [
                {"name": "t4", "gpus": [{"index": 0, "product": "Tesla-T4", "memoryMiB": 15360}]}
            ]
        }
    )
    return plan(streams, t4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    p = study_plan()
    print("| phasing | published | contention | mean ms | p99 ms | max ms | drops |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for phasing in Phasing:
        for alpha in (0.0, STUDY_CONTENTION):
            runs = [
                merge(
                    list(
                        simulate_plan(
                            p, phasing, args.seconds, contention={"time-slicing": alpha}, seed=seed
                        ).values()
                    )
                )
                for seed in range(args.seeds)
            ]
            s = merge(runs)
            print(
                f"| {phasing.value} | {PUBLISHED[phasing]} | {alpha:g} | {s.mean_ms:.1f} | "
                f"{s.percentile(99):.1f} | {s.max_ms:.1f} | {100 * s.drop_rate:.1f} % |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
