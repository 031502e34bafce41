"""How much the calibrated bodies of one GPU's table run at once.

A table holds every shard's charge (its cost as deployed); where the charges fit and the
whole bodies do not, bodies overlap, and on a time-sliced GPU an overlapped frame takes
longer (docs/architecture.md, "What the table overlaps"). This is that overlap, from the table
alone: each body ``body_ms`` long from its slot's start, every frame.

Two shards with periods P1 and P2 (ticks) and g = gcd(P1, P2): over their hyperperiod
every start-to-start distance d ≡ o2 - o1 (mod g) occurs exactly once, so the overlap per
frame of the first is (g / P2) · Σ_d |[0, b1) ∩ [d, d + b2)|, where only the d in
(-b2, b1) count. That is a few hundred terms whatever the frame rates, where walking the
hyperperiod of 29.97 and 25 fps would take thousands of frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from stagger.core.api import SharingMode
from stagger.core.placement.model import ShardKey, ShardPlacement


def body_ticks(shard: ShardPlacement, tick_hz: int) -> int:
    """The shard's whole calibrated body in ticks (not the time reserved for it)."""
    return max(1, round(shard.body_ms * tick_hz / 1e3))


def pair_overlap_ticks(first: ShardPlacement, second: ShardPlacement, tick_hz: int) -> float:
    """Ticks of ``second``'s bodies that overlap each body of ``first``, on average over
    ``first``'s frames."""
    b1, b2 = body_ticks(first, tick_hz), body_ticks(second, tick_hz)
    g = math.gcd(first.period_ticks, second.period_ticks)
    c = second.offset_ticks - first.offset_ticks
    # every d = c + k·g with -b2 < d < b1 (most pairs share a period: one or two terms)
    first_d = c + g * (math.floor((-b2 - c) / g) + 1)
    overlap = sum(min(b1, d + b2) - max(0, d) for d in range(first_d, b1, g))
    return overlap * g / second.period_ticks


def overlap_ms_per_frame(shards: Sequence[ShardPlacement], tick_hz: int) -> dict[ShardKey, float]:
    """Per shard of one GPU, the ms of other bodies that overlap each of its bodies."""
    return {
        s.key: sum(pair_overlap_ticks(s, o, tick_hz) for o in shards if o.key != s.key)
        * 1e3
        / tick_hz
        for s in shards
    }


def overlap_ms_per_second(shards: Iterable[ShardPlacement], tick_hz: int) -> float:
    """Of each second on one GPU, the ms in which two bodies run at once, summed over the
    pairs of shards (three at once count as three pairs). Zero: every body has the GPU to
    itself."""
    on_gpu = list(shards)
    return (
        sum(
            pair_overlap_ticks(a, b, tick_hz) * tick_hz / a.period_ticks
            for i, a in enumerate(on_gpu)
            for b in on_gpu[i + 1 :]
        )
        * 1e3
        / tick_hz
    )


MODEL_TIME_SHARE_LIMIT = 1.0
"""Where bodies take turns, the share of each second the models may need one at a time:
past the whole second their bodies must overlap, and the tail turns. On time-sliced H100s
with CUDA-graph bodies the loop answered at p99 1.12-1.25 x solo at 0.94 and 0.97 (the
profile's solo compute), and at 2.29-2.90 x at 1.08 and 1.11 (docs/architecture.md,
"The models' own time")."""


def model_time_share(shards: Sequence[ShardPlacement], sharing_mode: str) -> float | None:
    """Of each second on one GPU, the share its shards' models need one at a time (Σ solo
    compute × fps). The table's overlap reads whole calibrated bodies, a knee plus a guard,
    which are as long on a GPU whose tail turns as on one whose does not; the model's own
    time tells them apart. None under MPS, where bodies run side by side, and where a
    shard's model has no measured solo compute (a partial sum would read low)."""
    if sharing_mode == SharingMode.MPS or not shards:
        return None
    known = [s.solo_compute_ms for s in shards if s.solo_compute_ms is not None]
    if len(known) < len(shards):
        return None
    return round(sum(c * s.fps for c, s in zip(known, shards, strict=True)) / 1e3, 4)
