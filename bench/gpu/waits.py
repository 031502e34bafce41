"""What transparent mode can reach at best: the wait each camera's frames get in the table
that follows the cameras (the operator's own ``align``: the least longest wait, then the
least total wait; bodies in a fixed order by arrival, each placed as early as its arrival
and the bodies before it allow).

Each camera waits the same every frame, so with N cameras the longest wait is the wait of
1 / N of all frames: at N <= 100 it sits at or under the p99, and p99 >= solo p50 + the
longest wait bounds what any table gives::

    python3 -m bench.gpu.waits --n 8 --reserved-ms 10.9 --seed 15   # run 6's cameras

``--draws K`` puts that longest wait beside its distribution over K other draws of random
phases: the bench judges transparent mode on one draw (seed 7 + N), and whether a target
is out of reach for its cameras or for cameras in general are different findings::

    python3 -m bench.gpu.waits --n 8 --reserved-ms 11.3 --draws 1000   # runs 105-106
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Hashable

from stagger.core.slots import Slot, align
from stagger.core.timebase import TICK_HZ


def table_waits_ms(
    phases_s: list[float], reserved_ms: float, period_s: float, tick_hz: int = TICK_HZ
) -> list[float]:
    """Each camera's wait (ms, in camera order) in the followed table of N slots of
    ``reserved_ms`` for cameras arriving at ``phases_s`` (seconds into the period)."""
    period = round(period_s * tick_hz)
    width = round(reserved_ms * tick_hz / 1e3)
    n = len(phases_s)
    slots = [Slot(i, width, period, i * period // n) for i in range(n)]
    phases: dict[Hashable, int] = {i: round(p * tick_hz) % period for i, p in enumerate(phases_s)}
    table = align(slots, phases)
    if table is None:
        raise ValueError("the slots do not fit in the period")
    return [round((s.offset - phases[s.key]) % period * 1e3 / tick_hz, 2) for s in table]


def bench_phases(n: int, fps: float, seed: int) -> list[float]:
    """The phases ``bench.gpu.loop`` gives its random and transparent cameras at N."""
    rng = random.Random(seed)
    return [rng.uniform(0, 1.0 / fps) for _ in range(n)]


DRAW_SEED = 10_000
"""Other draws of camera phases take seeds from here on, clear of the bench's own (seed 7 +
N)."""


def longest_waits_ms(n: int, reserved_ms: float, fps: float, draws: int) -> list[float]:
    """The longest wait of the best table for ``draws`` draws of ``n`` random phases
    (seeds ``DRAW_SEED`` on), in ascending order."""
    return sorted(
        max(table_waits_ms(bench_phases(n, fps, DRAW_SEED + d), reserved_ms, 1 / fps))
        for d in range(draws)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, required=True, help="cameras (streams on the GPU)")
    p.add_argument("--reserved-ms", type=float, required=True, help="each slot's reserved time")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--seed", type=int, help="bench.gpu.loop's seed + N (default 7 + N)")
    p.add_argument("--draws", type=int, default=0, help="other draws of random phases")
    args = p.parse_args()
    seed = 7 + args.n if args.seed is None else args.seed
    waits = table_waits_ms(bench_phases(args.n, args.fps, seed), args.reserved_ms, 1 / args.fps)
    print(f"waits (ms, by camera): {waits}")
    print(f"longest {max(waits):g} ms, mean {sum(waits) / len(waits):.1f} ms")
    if args.draws > 0:
        others = longest_waits_ms(args.n, args.reserved_ms, args.fps, args.draws)
        below = sum(w < max(waits) for w in others) / len(others)
        q = [others[min(len(others) - 1, int(f * len(others)))] for f in (0.1, 0.5, 0.9)]
        print(
            f"over {args.draws} other draws: longest wait p10 {q[0]:g}, p50 {q[1]:g}, "
            f"p90 {q[2]:g} ms; this draw's is longer than {below:.0%} of them"
        )


if __name__ == "__main__":
    main()
