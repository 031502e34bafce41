"""Body time from a two-stream offset sweep: where latency returns to solo.

Two inferences started ``offset`` apart overlap for ``body − offset`` while the offset is
below the body, and each loses about that much; from the body on they do not overlap and
latency is flat. So latency against offset is a hinge: falling with slope ≈ −1 up to the
knee, flat after it. The knee is the body time.

The fit is a two-segment (hinge) regression ``latency = level + slope × min(offset − knee, 0)``
with the knee searched on a fine grid and (level, slope) by iteratively reweighted least
squares with Huber weights, so a few outliers (a GC pause, a frame that hit another
process) do not move it. Both streams' latencies share one knee. The confidence interval is
a bootstrap over sweep points with a fixed seed: same data, same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

HUBER_K = 1.345  # the usual 95 %-efficiency constant, in robust-scale units
BOOTSTRAP_SEED = 20261121


@dataclass(frozen=True)
class HingeFit:
    knee_ms: float
    level_ms: float  # latency once the bodies no longer overlap (≈ solo)
    slope: float  # latency change per ms of offset below the knee (≈ −1)
    residual_ms: float  # robust scale of the residuals


@dataclass(frozen=True)
class KneeEstimate:
    fit: HingeFit
    ci_ms: tuple[float, float]  # bootstrap 95 % interval of the knee


class NoKnee(ValueError):
    """The sweep shows no knee; the message says why and what the data look like."""


def _robust_scale(residuals: NDArray[np.float64]) -> NDArray[np.float64]:
    """MAD scale per row (floored: a perfect fit must not divide by zero)."""
    scale: NDArray[np.float64] = np.maximum(1.4826 * np.median(np.abs(residuals), axis=-1), 1e-6)
    return scale


def _hinges(
    x: NDArray[np.float64], y: NDArray[np.float64], knees: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """For every candidate knee at once: Huber-weighted fit (iteratively reweighted least
    squares) of y = level + slope × min(x − knee, 0). Returns level, slope and robust loss
    (ms²) per knee."""
    z = np.minimum(x[None, :] - knees[:, None], 0.0)  # (knees, points)
    w = np.ones_like(z)
    for _ in range(30):
        sw, swz, swzz = w.sum(1), (w * z).sum(1), (w * z * z).sum(1)
        swy, swzy = (w * y).sum(1), (w * z * y).sum(1)
        det = sw * swzz - swz * swz
        flat = det <= 1e-12 * np.maximum(sw * swzz, 1e-300)  # knee at or below every offset
        safe = np.where(flat, 1.0, det)
        level = np.where(flat, swy / sw, (swzz * swy - swz * swzy) / safe)
        slope = np.where(flat, 0.0, (sw * swzy - swz * swy) / safe)
        residuals = y[None, :] - level[:, None] - slope[:, None] * z
        u = np.abs(residuals) / (HUBER_K * _robust_scale(residuals))[:, None]
        new = np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-12))
        if np.allclose(new, w, atol=1e-6):
            break
        w = new
    scale = _robust_scale(residuals)
    r = np.abs(residuals) / scale[:, None]
    loss = np.where(r <= HUBER_K, 0.5 * r**2, HUBER_K * r - 0.5 * HUBER_K**2).sum(1)
    return level, slope, loss * scale**2


def fit_hinge(
    offsets_ms: NDArray[np.float64] | list[float], latencies_ms: NDArray[np.float64] | list[float]
) -> HingeFit:
    """The best hinge for (offset, latency) points (both streams' points together): the
    knee on a grid over the swept range, then refined around the best (1/4000 of it)."""
    x = np.asarray(offsets_ms, dtype=np.float64)
    y = np.asarray(latencies_ms, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("offsets and latencies must be two lists of the same length")
    distinct = np.unique(x)
    if len(distinct) < 3:
        raise NoKnee(f"a sweep needs at least 3 distinct offsets, got {len(distinct)}")
    lo, hi = float(distinct[0]), float(distinct[-1])

    def best_of(knees: NDArray[np.float64]) -> tuple[float, float, float]:
        level, slope, loss = _hinges(x, y, knees)
        i = int(np.argmin(loss))  # ties: the first, the smaller knee
        return float(knees[i]), float(level[i]), float(slope[i])

    coarse, _, _ = best_of(np.linspace(lo, hi, 201))
    step = (hi - lo) / 200
    knee, level, slope = best_of(np.linspace(max(lo, coarse - step), min(hi, coarse + step), 41))
    residuals = y - level - slope * np.minimum(x - knee, 0)
    return HingeFit(knee, level, slope, float(_robust_scale(residuals)))


def estimate_knee(
    offsets_ms: list[float], latencies_ms: list[float], *, resamples: int = 200
) -> KneeEstimate:
    """The knee with a bootstrap interval, or :class:`NoKnee` when the data show none:
    latency does not fall as the offset grows, or still falls at the end of the sweep."""
    x = np.asarray(offsets_ms, dtype=np.float64)
    y = np.asarray(latencies_ms, dtype=np.float64)
    fit = fit_hinge(x, y)
    lo, hi = float(x.min()), float(x.max())
    drop = -fit.slope * (fit.knee_ms - lo)  # how much overlap costs at the smallest offset
    noise = max(fit.residual_ms, 1e-3)
    summary = _summary(x, y)
    if fit.slope >= 0 or drop < 3 * noise:
        raise NoKnee(
            "latency does not fall as the offset grows (overlap costs "
            f"{drop:.2f} ms against noise {noise:.2f} ms): no knee in this sweep. {summary}"
        )
    if fit.knee_ms >= hi - 1e-9:
        raise NoKnee(
            f"latency still falls at the largest offset ({hi:g} ms): the body is longer "
            f"than the sweep; sweep further. {summary}"
        )
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    knees = []
    points = np.arange(len(x))
    for _ in range(resamples):
        pick = rng.choice(points, size=len(points), replace=True)
        if len(np.unique(x[pick])) < 3:
            continue
        knees.append(fit_hinge(x[pick], y[pick]).knee_ms)
    low, high = np.percentile(knees, [2.5, 97.5]) if knees else (fit.knee_ms, fit.knee_ms)
    return KneeEstimate(fit, (float(low), float(high)))


def _summary(x: NDArray[np.float64], y: NDArray[np.float64]) -> str:
    means = {float(o): float(np.mean(y[x == o])) for o in np.unique(x)}
    return "Mean latency by offset: " + ", ".join(f"{o:g} → {m:.1f}" for o, m in means.items())
