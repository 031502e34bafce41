"""Integer time ticks.

A tick of 1/30000 s makes the frame period of every common frame rate an exact integer
(30 fps -> 1000 ticks, 25 -> 1200, 29.97 = 30000/1001 -> 1001, 12.5 -> 2400, 7.5 -> 4000),
so slot arithmetic is exact and gcd-based collision rules hold without rounding error.
"""

from __future__ import annotations

import math

TICK_HZ = 30_000
TICKS_PER_MS = TICK_HZ / 1000

# A rate whose period is within this relative distance of an integer tick count is taken
# as exact (29.97 is really 30000/1001: 30000/29.97 = 1001.001).
_EXACT_REL_TOL = 2e-6


def frame_period_ticks(fps: float, tick_hz: int = TICK_HZ) -> int:
    """Frame period in ticks, never longer than the true period (so slots keep up)."""
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    exact = tick_hz / fps
    nearest = round(exact)
    if nearest >= 1 and abs(exact - nearest) <= _EXACT_REL_TOL * exact:
        return int(nearest)
    return max(1, math.floor(exact))


def ms_to_ticks_ceil(ms: float, tick_hz: int = TICK_HZ) -> int:
    """A duration in ticks, rounded up: a body must never be under-reserved."""
    ticks = ms * tick_hz / 1000
    return max(0, math.ceil(ticks - 1e-9))


def ticks_to_ms(ticks: float, tick_hz: int = TICK_HZ) -> float:
    return ticks * 1000 / tick_hz
