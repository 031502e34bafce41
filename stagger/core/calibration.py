"""Body time from a two-stream offset sweep: where latency returns to solo.

Two inferences started ``offset`` apart overlap for ``body − offset`` while the offset is
below the body, and lose about that much between them; from the body on they do not
overlap and latency is flat. So latency against offset is a hinge: falling up to the knee,
flat after it. The knee is the body time.

The fit is a two-segment (hinge) regression ``latency = level + slope × min(offset − knee, 0)``
with the knee searched on a fine grid and (level, slope) by iteratively reweighted least
squares with Huber weights, so a few outliers (a GC pause, a frame that hit another
process) do not move it. Both streams share the knee and the level past it (solo); each
has its own slope (time-slicing slows both, a lock or a FIFO queue only the later one).
The confidence interval is a bootstrap over sweep points with a fixed seed: same data,
same answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from stagger.core.api import ModelProfile, SharingMode, Wire

HUBER_K = 1.345  # the usual 95 %-efficiency constant, in robust-scale units
BOOTSTRAP_SEED = 20261121
KNEE_OFFSETS_PAST = 2
"""Swept offsets a knee needs past it (where the sweep never got past the overlap)."""


@dataclass(frozen=True)
class HingeFit:
    knee_ms: float
    level_ms: float  # the steepest stream's latency once the bodies no longer overlap (≈ solo)
    slope: float  # the steepest stream's latency change per ms of offset below the knee
    residual_ms: float  # robust scale of the residuals
    slopes: tuple[float, ...] = ()  # per stream
    levels: tuple[float, ...] = ()  # per stream


@dataclass(frozen=True)
class KneeEstimate:
    fit: HingeFit
    ci_ms: tuple[float, float]  # bootstrap 95 % interval of the knee


class NoKnee(ValueError):
    """The sweep shows no knee; the message says why and what the data look like.
    ``flat``: overlapping costs no more than noise (inferences that barely slow each
    other, as under MPS), as opposed to a sweep too short or too sparse to tell."""

    def __init__(self, message: str, *, flat: bool = False, short: bool = False) -> None:
        super().__init__(message)
        self.flat = flat
        self.short = short
        """The latency still falls at the sweep's end: a longer sweep may find the knee."""
        self.sweep: list[SweepPoint] = []
        """The sweep that showed no knee, where the caller ran one (to replay it)."""


def _robust_scale(residuals: NDArray[np.float64]) -> NDArray[np.float64]:
    """MAD scale per row (floored: a perfect fit must not divide by zero)."""
    scale: NDArray[np.float64] = np.maximum(1.4826 * _median(np.abs(residuals)), 1e-6)
    return scale


def _median(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """``np.median(a, axis=-1)``, the same numbers, without its per-call overhead: the
    bootstrap calls it some 10,000 times on rows of a few dozen points."""
    n = a.shape[-1]
    half = n // 2
    part = np.partition(a, [half - 1, half] if n % 2 == 0 else [half], axis=-1)
    if n % 2:
        return part[..., half]
    middle: NDArray[np.float64] = (part[..., half - 1] + part[..., half]) / 2.0
    return middle


def _hinges(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    member: NDArray[np.float64],
    knees: NDArray[np.float64],
    own_levels: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """For every sweep and every candidate knee at once: Huber-weighted fit (iteratively
    reweighted least squares) of y = level + slope[stream] × min(x − knee, 0): past the
    knee every stream runs alone, at one level, or with ``own_levels`` at its own
    (:func:`levels_apart`). ``x``, ``y`` are (sweeps, points), ``member`` (sweeps, points,
    streams) one-hot (a stream a sweep lacks: a zero column, its slope 0), ``knees``
    (sweeps, knees). Returns levels and slopes (sweeps, knees, streams) and robust loss
    (ms², (sweeps, knees)). Each sweep reweights until its own fits settle."""
    sweeps, n = x.shape
    z = np.minimum(x[:, None, :] - knees[:, :, None], 0.0)  # (sweeps, knees, points)
    streams = member.shape[2]
    level_of = member if own_levels else np.ones((sweeps, n, 1))
    k = level_of.shape[2]
    # Columns: the level (each stream's, with own_levels), then each stream's slope term:
    # column j is gen[..., j] × z^power[j]. Each knee's weighted normal equations are then
    # sums over points of w × z^e × (a product of two generators): a few matrix products
    # for all knees, not one small product per knee.
    gen = np.concatenate([level_of, member], axis=2)  # (sweeps, points, p)
    power = np.array([0] * k + [1] * streams)
    p = gen.shape[2]
    pairs = (gen[..., :, None] * gen[..., None, :]).reshape(sweeps, n, p * p)
    order = (power[:, None] + power[None, :]).reshape(p * p)
    by_power = [pairs * (order == e) for e in range(3)]  # (sweeps, points, p²) each
    own = [gen * (power == e) for e in range(2)]  # (sweeps, points, p) each
    ridge = np.eye(p) * 1e-9
    diagonal = np.arange(p) * (p + 1)
    w = np.ones_like(z)
    coef = np.zeros((*z.shape[:2], p))
    residuals = np.zeros_like(z)
    todo = np.arange(sweeps)
    for _ in range(15):  # Huber IRLS settles in a few rounds
        zt, wt, yt = z[todo], w[todo], y[todo][:, None, :]
        wz = wt * zt
        normal = wt @ by_power[0][todo] + wz @ by_power[1][todo] + (wz * zt) @ by_power[2][todo]
        # A stream with no point below the knee has no slope to fit: a tiny ridge keeps the
        # system solvable and its slope at 0.
        trace = normal[..., diagonal].sum(axis=-1)
        normal = normal.reshape(*zt.shape[:2], p, p) + ridge * (1 + trace)[..., None, None]
        rhs = (wt * yt) @ own[0][todo] + (wz * yt) @ own[1][todo]
        c = np.linalg.solve(normal, rhs[..., None])[..., 0]
        fitted = c @ own[0][todo].transpose(0, 2, 1) + zt * (c @ own[1][todo].transpose(0, 2, 1))
        r = yt - fitted
        u = np.abs(r) / (HUBER_K * _robust_scale(r))[..., None]
        with np.errstate(divide="ignore"):  # u = 0: weight 1
            new = np.minimum(1.0, 1.0 / u)
        coef[todo], residuals[todo] = c, r
        # np.allclose per sweep (weights are positive), without its overhead
        settled = (np.abs(new - wt) <= 1e-4 + 1e-5 * wt).all(axis=(1, 2))
        w[todo[~settled]] = new[~settled]
        todo = todo[~settled]
        if not len(todo):
            break
    scale = _robust_scale(residuals)
    r = np.abs(residuals) / scale[..., None]
    loss = np.where(r <= HUBER_K, 0.5 * r**2, HUBER_K * r - 0.5 * HUBER_K**2).sum(-1)
    levels = coef[..., :k] if own_levels else np.repeat(coef[..., :1], streams, axis=-1)
    return levels, coef[..., k:], loss * scale**2


KNEE_GRID = 201
"""Candidate knees over the swept range; the best is refined on 41 around it."""
_FIT_CHUNK = 2_000_000
"""Sweeps fitted together hold at most this many (knee, point) values per array."""


def _best_knees(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    member: NDArray[np.float64],
    max_knee_ms: float | None,
    own_levels: bool,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The best knee of each sweep (rows of ``x``, ``y``, each with 3 or more distinct
    offsets): a grid over its swept range (up to ``max_knee_ms`` where that is less),
    then refined. Returns knees (sweeps,), levels and slopes (sweeps, streams)."""
    lo, hi = x.min(axis=1), x.max(axis=1)
    if max_knee_ms is not None:
        hi = np.maximum(lo, np.minimum(hi, max_knee_ms))
    rows = np.arange(len(x))

    def best_of(
        knees: NDArray[np.float64],
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        levels, slopes, loss = _hinges(x, y, member, knees, own_levels)
        i = np.argmin(loss, axis=1)  # ties: the first, the smaller knee
        return knees[rows, i], levels[rows, i], slopes[rows, i]

    coarse, _, _ = best_of(np.linspace(lo, hi, KNEE_GRID, axis=1))
    step = (hi - lo) / (KNEE_GRID - 1)
    return best_of(
        np.linspace(np.maximum(lo, coarse - step), np.minimum(hi, coarse + step), 41, axis=1)
    )


def fit_hinge(
    offsets_ms: NDArray[np.float64] | list[float],
    latencies_ms: NDArray[np.float64] | list[float],
    streams: NDArray[np.int64] | list[int] | None = None,
    max_knee_ms: float | None = None,
    own_levels: bool = False,
) -> HingeFit:
    """The best hinge for (offset, latency) points. With ``streams`` (which stream each
    point is of) the knee and the level past it are shared (each stream its own level with
    ``own_levels``) and each stream has its own slope: under time-slicing both streams slow
    down, with a lock or a FIFO queue only the later one. The knee is searched on a grid
    over the swept range (up to ``max_knee_ms`` where that is less), then refined."""
    x = np.asarray(offsets_ms, dtype=np.float64)
    y = np.asarray(latencies_ms, dtype=np.float64)
    g = np.zeros(len(x), dtype=np.int64) if streams is None else np.asarray(streams)
    if x.shape != y.shape or x.shape != g.shape or x.ndim != 1:
        raise ValueError("offsets, latencies and streams must be lists of the same length")
    distinct = np.unique(x)
    if len(distinct) < 3:
        raise NoKnee(f"a sweep needs at least 3 distinct offsets, got {len(distinct)}")
    member = (g[:, None] == np.unique(g)[None, :]).astype(np.float64)
    knees, best_levels, best_slopes = _best_knees(
        x[None], y[None], member[None], max_knee_ms, own_levels
    )
    knee = float(knees[0])
    levels, slopes = [float(v) for v in best_levels[0]], [float(v) for v in best_slopes[0]]
    fitted = member @ np.asarray(levels) + (member @ np.asarray(slopes)) * np.minimum(x - knee, 0)
    steepest = int(np.argmin(slopes))
    return HingeFit(
        knee,
        levels[steepest],
        slopes[steepest],
        float(_robust_scale(y - fitted)),
        tuple(slopes),
        tuple(levels),
    )


def _bootstrap_knees(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    g: NDArray[np.int64],
    *,
    resamples: int,
    max_knee_ms: float | None,
    own_levels: bool,
    progress: Callable[[int], None] | None = None,
) -> NDArray[np.float64]:
    """The knee of each resample of the points (drawn with a fixed seed; one with fewer
    than 3 distinct offsets is left out), fitted as :func:`fit_hinge` fits the sweep.
    ``progress(n)``: n more resamples done."""
    advance = progress or (lambda n: None)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    points = np.arange(len(x))
    picks = [rng.choice(points, size=len(points), replace=True) for _ in range(resamples)]
    picks = [p for p in picks if len(np.unique(x[p])) >= 3]
    advance(resamples - len(picks))
    if not picks:
        return np.empty(0)
    chosen = np.array(picks)
    member = (g[chosen][..., None] == np.unique(g)[None, None, :]).astype(np.float64)
    per_chunk = max(1, _FIT_CHUNK // (KNEE_GRID * len(x)))
    knees = []
    for i in range(0, len(chosen), per_chunk):
        part = chosen[i : i + per_chunk]
        fitted = _best_knees(x[part], y[part], member[i : i + per_chunk], max_knee_ms, own_levels)
        knees.append(fitted[0])
        advance(len(part))
    return np.concatenate(knees)


def estimate_knee(
    offsets_ms: list[float],
    latencies_ms: list[float],
    streams: list[int] | None = None,
    *,
    resamples: int = 200,
    overlap_end_ms: float | None = None,
    own_levels: bool = False,
    progress: Callable[[int], None] | None = None,
) -> KneeEstimate:
    """The knee with a bootstrap interval, or :class:`NoKnee` when the data show none:
    latency does not fall as the offset grows, or still falls at the end of the sweep.
    ``overlap_end_ms``: an offset from which on the two inferences no longer overlap (see
    :func:`overlap_end_ms`); the knee lies at or before it, and a sweep that reached it is
    never too short. ``own_levels``: each stream settles at its own level past the knee
    (:func:`levels_apart`). ``progress(n)``: n more resamples fitted."""
    x = np.asarray(offsets_ms, dtype=np.float64)
    y = np.asarray(latencies_ms, dtype=np.float64)
    g = np.zeros(len(x), dtype=np.int64) if streams is None else np.asarray(streams)
    fit = fit_hinge(x, y, g, overlap_end_ms, own_levels)
    lo, hi = float(x.min()), float(x.max())
    drop = -fit.slope * (fit.knee_ms - lo)  # how much overlap costs at the smallest offset
    noise = max(fit.residual_ms, 1e-3)
    summary = _summary(x, y)
    if fit.slope >= 0 or drop < 3 * noise:
        raise NoKnee(
            "latency does not fall as the offset grows (overlap costs "
            f"{drop:.2f} ms against noise {noise:.2f} ms): no knee in this sweep. {summary}",
            flat=True,
        )
    # A knee with fewer than two swept offsets past it cannot be told from a fall that
    # goes on past the sweep (a 20 ms lock swept to 16 ms once gave 15.99 ms), unless the
    # sweep got past the end of the overlap, where nothing falls any more.
    beyond = int(np.sum(np.unique(x) > fit.knee_ms + 1e-9))
    if beyond < KNEE_OFFSETS_PAST and (overlap_end_ms is None or overlap_end_ms > hi):
        raise NoKnee(
            f"latency still falls at the largest offset ({hi:g} ms): the body is longer "
            f"than the sweep; sweep further. {summary}",
            short=True,
        )
    knees = _bootstrap_knees(
        x,
        y,
        g,
        resamples=resamples,
        max_knee_ms=overlap_end_ms,
        own_levels=own_levels,
        progress=progress,
    )
    low, high = np.percentile(knees, [2.5, 97.5]) if len(knees) else (fit.knee_ms, fit.knee_ms)
    # The knee is a grid search's argmin, not a smooth statistic: its resamples can all
    # fall to one side of it (20.85 ms against an interval ending at 20.82, a clean CI run
    # of tests/integration/test_profile.py). The report's interval always holds its knee.
    low, high = min(float(low), fit.knee_ms), max(float(high), fit.knee_ms)
    return KneeEstimate(fit, (low, high))


def _summary(x: NDArray[np.float64], y: NDArray[np.float64]) -> str:
    means = {float(o): float(np.mean(y[x == o])) for o in np.unique(x)}
    return "Mean latency by offset: " + ", ".join(f"{o:g} → {m:.1f}" for o, m in means.items())


@dataclass(frozen=True)
class SweepPoint:
    """One run of the two-stream sweep: stream 2 started ``offset_ms`` after stream 1."""

    offset_ms: float
    latency1_ms: float
    latency2_ms: float


def overlap_end_ms(points: Sequence[SweepPoint]) -> float | None:
    """The smallest swept offset from which on, at every larger offset too, the later
    request went out after the earlier one's answer had come back (in at least half the
    runs): past it the two inferences do not overlap at all, so no body can reach beyond
    it. None when the sweep never got there.

    Why: under MPS the earlier stream slows for the whole overlap of the two requests, a
    few ms less each ms of offset, and a hinge fit of that shallow fall can put its knee
    at the sweep's end, past the point where they stop overlapping (an H200 profile of
    RetinaNet said "sweep further" at 26.2 ms, its solo latency 16 ms)."""
    end = None
    for offset in sorted({p.offset_ms for p in points}, reverse=True):
        if float(np.median([p.latency1_ms for p in points if p.offset_ms == offset])) > offset:
            break
        end = offset
    return end


def knee_of_sweep(
    points: list[SweepPoint],
    *,
    resamples: int = 200,
    progress: Callable[[int], None] | None = None,
) -> KneeEstimate:
    """Both streams' latencies share the knee; each has its own slope, and its own level
    past the knee where the servers settle apart (:func:`levels_apart`).

    The later stream is the one that waits for the earlier one's body, so it always
    counts. The earlier one counts too unless its latency *rises* with the offset before
    the knee: under time-slicing a later arrival slows the earlier inference for as long
    as they overlap at all, so its curve returns to solo at the end of the whole overlap,
    not of the body (seen with RetinaNet on an H200, docs/benchmarks.md).

    ``progress(n)``: n more of the up to 2 × ``resamples`` bootstrap fits done."""
    offsets = [p.offset_ms for p in points]
    end = overlap_end_ms(points)
    later = estimate_knee(
        offsets,
        [p.latency2_ms for p in points],
        [0] * len(points),
        resamples=resamples,
        overlap_end_ms=end,
        progress=progress,
    )
    before = [p for p in points if p.offset_ms < later.fit.knee_ms]
    if len({p.offset_ms for p in before}) >= 3:
        x = np.array([p.offset_ms for p in before])
        rise = float(np.polyfit(x, [p.latency1_ms for p in before], 1)[0]) * float(np.ptp(x))
        if rise > later.fit.residual_ms:
            return later
    latencies = [p.latency1_ms for p in points] + [p.latency2_ms for p in points]
    streams = [0] * len(points) + [1] * len(points)
    return estimate_knee(
        offsets * 2,
        latencies,
        streams,
        resamples=resamples,
        overlap_end_ms=end,
        own_levels=levels_apart(points, end),
        progress=progress,
    )


LEVELS_APART = 3.0
"""How many noise scales apart the two streams' latencies must settle, past the end of the
overlap, for each to get its own level in the knee's fit."""
POINTS_PAST_OVERLAP = 6
"""Runs past the end of the overlap needed to tell the two levels apart."""


def levels_apart(points: Sequence[SweepPoint], end: float | None) -> bool:
    """Whether the two servers settle at different latencies once their inferences no
    longer overlap (at offsets from ``end`` on, each runs alone): their medians there differ
    by more than :data:`LEVELS_APART` robust scales, over at least
    :data:`POINTS_PAST_OVERLAP` runs. Two servers on one GPU can differ: in run 48 on an
    H200 they settled at 14.8 and 12.2 ms, and one level for both read the slower one's
    surplus as a fall that went on, putting the knee at 15.1 ms, past the solo latency
    (13.2 ms), where both fell until about 10 ms. Without that evidence the streams share
    one level, which a short sweep needs (the study's table has two runs past its overlap)."""
    if end is None:
        return False
    past = [p for p in points if p.offset_ms >= end]
    if len(past) < POINTS_PAST_OVERLAP:
        return False
    first = np.array([p.latency1_ms for p in past])
    second = np.array([p.latency2_ms for p in past])
    # one noise scale for both: each about its own median
    spread = np.concatenate([first - np.median(first), second - np.median(second)])
    scale = float(_robust_scale(spread))
    return abs(float(np.median(first) - np.median(second))) > LEVELS_APART * scale


def recommended_body_ms(knee_ms: float, effective_body_ms: float | None, guard: float) -> float:
    """What to put in ``bodyTimeMs``: the larger of the knee and the saturation figure
    (1 / maximum throughput), plus a guard, rounded up to 0.1 ms. The study measured 45 ms
    and used 60."""
    base = max(knee_ms, effective_body_ms or 0.0)
    return math.ceil(base * (1 + guard) * 10 - 1e-9) / 10


EXCLUSIVE_SHARE = 0.95
"""A frame's cost under sharing within 5 % of the solo knee: sharing does not make the GPU
serve more, so the body is taken as exclusive (its slot is never overlapped)."""


GROWTH_PAST_TWO = 1.1
"""Throughput with the most clients at least this many times that with two: the GPU keeps
overlapping work past two clients, which a lock or a FIFO (full with two) never does."""


def throughput_growth(saturation: Sequence[Mapping[str, float]]) -> float | None:
    """The saturation sweep's best throughput over its throughput with two clients (None
    without a two-client point)."""
    two = [r["throughput_per_s"] for r in saturation if r["clients"] == 2]
    if not two or two[0] <= 0:
        return None
    return max(r["throughput_per_s"] for r in saturation) / two[0]


UNSTEADY_SHARE = 0.95
"""An unsteady measurement (a solo latency whose p99 is far above its p50, or a host that
stalled during the sweep) is charged its cost per frame / this: the margin every measured
cost had when the planner's time-sliced cap was 0.95. A steady one is charged as measured,
and the planner fills a GPU up to its saturation: replayed over the 35 recorded GPU runs of
the loop in which random phases held some N, that admits at least random's N in 29 (21 at
the caps of 0.95 and 0.98; docs/benchmarks.md, "One cap, a margin for an unsteady
measurement")."""


def recommended_cost_ms(
    effective_body_ms: float | None, body_ms: float, *, steady: bool = True
) -> float | None:
    """What to put in ``costMs``: 1 / maximum throughput with the servers as deployed
    (/ ``UNSTEADY_SHARE`` when the measurement was not ``steady``), rounded up to 0.01 ms
    and at most the body; None when nothing measured it. Finer than the body's 0.1 ms: the
    cost is charged against the GPU's saturation, and 0.1 ms of a 6 ms cost (MPS on an
    H200) is 1.7 % of it (16 streams then missed a 0.98 cap by 4 ticks in 2,700)."""
    if effective_body_ms is None:
        return None
    cost = effective_body_ms if steady else effective_body_ms / UNSTEADY_SHARE
    return min(body_ms, math.ceil(cost * 100 - 1e-9) / 100)


def body_is_exclusive(
    knee_ms: float | None,
    effective_body_ms: float | None,
    knee_low_ms: float | None = None,
    growth: float | None = None,
) -> bool:
    """Whether the body must never overlap another (``exclusiveBody``): a frame's cost as
    deployed is no cheaper than the solo knee, so running two at once gains nothing (a lock,
    a FIFO, a time-sliced GPU that runs one body after another). The knee is taken at the
    low end of its interval (``knee_low_ms``) so that a noisy knee of an exclusive body does
    not read as sharing, unless the sweep's throughput kept growing past two clients
    (``growth`` >= ``GROWTH_PAST_TWO``). With no knee (MPS: two inferences barely slow each
    other) the body shares. With no throughput measured there is no cost to compare: the
    body is taken as exclusive and charged in full."""
    if effective_body_ms is None:
        return True
    if knee_ms is None:
        return False
    shares_past_two = growth is not None and growth >= GROWTH_PAST_TWO
    knee = knee_ms if knee_low_ms is None or shares_past_two else min(knee_ms, knee_low_ms)
    return effective_body_ms >= EXCLUSIVE_SHARE * knee


WARNING_CHARS = 480
MAX_WARNINGS = 4
"""At most this many warnings of at most this many characters ride in a result: with the
longest model name the whole still fits a termination message."""


class CalibrationResult(Wire):
    """What one calibration run reports: small enough for a Kubernetes termination message
    (4 KiB), so a calibration Job needs no write access to the API."""

    model: str = Field(min_length=1, max_length=253)
    model_version: str | None = None
    body_time_ms: float = Field(gt=0, description="Recommended bodyTimeMs (guard included).")
    knee_ms: float | None = Field(default=None, gt=0, description="None: no knee (MPS).")
    knee_ci_ms: list[float] | None = Field(default=None, min_length=2, max_length=2)
    solo_p50_ms: float = Field(gt=0)
    solo_p99_ms: float = Field(gt=0)
    effective_body_ms: float | None = None
    solo_compute_ms: float | None = Field(
        default=None, gt=0, description="The model's own time per solo request (Triton's)."
    )
    cost_ms: float | None = Field(
        default=None, gt=0, description="Recommended costMs; None: nothing measured it."
    )
    exclusive_body: bool = Field(
        default=False, description="Recommended exclusiveBody (always so without a cost)."
    )
    sweep_pairs: int = Field(ge=0)
    warnings: list[Annotated[str, Field(max_length=WARNING_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_WARNINGS,
        description="What stagger profile warned of (unsteady, stalls, ...), each cut short.",
    )


_NAME_INVALID = re.compile(r"[^a-z0-9.-]+")


def profile_name(model: str, gpu_product: str, sharing_mode: SharingMode) -> str:
    """A DNS-1123 name per (model, GPU product, sharing mode): one profile each."""
    raw = f"{model}-{gpu_product}-{sharing_mode}".lower()
    name = _NAME_INVALID.sub("-", raw).strip("-.")[:253].rstrip("-.")
    return name or "profile"


def model_profile(
    result: CalibrationResult,
    gpu_product: str,
    sharing_mode: SharingMode,
    measured_at: datetime,
) -> ModelProfile:
    """The ModelProfile a calibration run stands for. Solo latency is the run's p50, raised
    to the body when the guard made the body the larger (the body is part of the latency)."""
    return ModelProfile.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": profile_name(result.model, gpu_product, sharing_mode)},
            "spec": {
                "model": result.model,
                **({"modelVersion": result.model_version} if result.model_version else {}),
                "gpuProduct": gpu_product,
                "sharingMode": str(sharing_mode),
                "bodyTimeMs": result.body_time_ms,
                **({"costMs": result.cost_ms} if result.cost_ms is not None else {}),
                **(
                    {"exclusiveBody": True}
                    if result.cost_ms is not None and result.exclusive_body
                    else {}
                ),
                "latencyMs": max(result.solo_p50_ms, result.body_time_ms),
                **(
                    {"soloComputeMs": result.solo_compute_ms}
                    if result.solo_compute_ms is not None
                    else {}
                ),
                **({"bodyTimeCiMs": list(result.knee_ci_ms)} if result.knee_ci_ms else {}),
                "source": "calibration",
                "measuredAt": measured_at,
            },
        }
    )
