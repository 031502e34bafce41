"""CPU time of the knee fit behind `stagger profile` (`knee_of_sweep`: the hinge fit and
its bootstrap interval), on the published study's 7-offset table and on a synthetic sweep
of 20 offsets × 3 runs (120 latencies, the size of a quick profile):

    python -m bench.knee_fit [--repeat 3]

Prints, per sweep, the best of ``--repeat`` wall and CPU times (``time.process_time``,
every thread's: numpy's BLAS may use more than one) and the knee and interval the fit
gave, so two trees measured one after another can be compared by time and checked for
equal results (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.knee_fit import STUDY_TABLE_2
from stagger.core.calibration import SweepPoint, knee_of_sweep


def synthetic_sweep(seed: int = 1) -> list[SweepPoint]:
    """A 20 ms body: the later stream waits for it, the earlier one slows a third as much."""
    rng = np.random.default_rng(seed)
    return [
        SweepPoint(
            float(o),
            40 + max(20 - o, 0) * 0.3 + rng.normal(0, 0.5),
            40 + max(20 - o, 0) * 0.9 + rng.normal(0, 0.5),
        )
        for o in np.arange(0, 40, 2.0)
        for _ in range(3)
    ]


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text}: give 1 or more")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.knee_fit", description=__doc__)
    parser.add_argument("--repeat", type=_positive, default=3, help="runs per sweep (best taken)")
    args = parser.parse_args(argv)
    print(f"| sweep | latencies | wall s · CPU s (best of {args.repeat}) | knee ms | interval ms |")
    print("|---|---|---|---|---|")
    sweeps = {"study": [SweepPoint(*r) for r in STUDY_TABLE_2], "synthetic": synthetic_sweep()}
    for name, points in sweeps.items():
        wall = cpu = float("inf")
        for _ in range(args.repeat):
            began, began_cpu = time.perf_counter(), time.process_time()
            estimate = knee_of_sweep(points)
            wall = min(wall, time.perf_counter() - began)
            cpu = min(cpu, time.process_time() - began_cpu)
        low, high = estimate.ci_ms
        print(
            f"| {name} | {2 * len(points)} | {wall:.2f} · {cpu:.2f} | {estimate.fit.knee_ms:.4f} "
            f"| {low:.4f}–{high:.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
