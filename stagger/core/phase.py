"""A stream's arrival phase: where in its frame period its requests arrive.

An app that knows nothing of Stagger captures on its own clock; its requests reach the
sidecar at ``phase + k × period`` plus jitter. The phase is a circular quantity (arrival
times modulo the period), so it is estimated as a circular mean: each arrival is a unit
vector at angle 2π × (t mod P) / P, and the phase is the angle of their sum. That is

- **robust to missing frames**: an absent frame adds no vector, the others still point at
  the phase;
- **robust to jitter and outliers**: after a first estimate, arrivals farther from it than
  three robust standard deviations (1.4826 × the median distance), and never farther than
  a quarter period (a frame held up by the network, a retry), are left out and the mean
  taken again;
- **robust to slow drift**: only the last ``window`` arrivals count, so a clock that drifts
  by d per period moves the estimate by about d × window / 2 behind the truth; 64 arrivals
  at 10 fps track a drift of 1 ms per second within 3.2 ms;
- **honest about streams that are not periodic**: the mean resultant length R (1 when
  every arrival is at one phase, about 0 when they are spread over the period) says how
  concentrated the arrivals are. When fewer than three quarters of the arrivals lie near
  the phase, or R of those is below ``min_concentration``, the stream is not periodic at
  this period (variable fps, event-driven), and no phase is claimed.

Pure and deterministic: the caller passes the arrival times.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from stagger.core.placement.overlap import MODEL_TIME_SHARE_LIMIT
from stagger.core.slots import Key, Slot, align, overlaps, wait_cost

if TYPE_CHECKING:
    from stagger.core.placement import Plan, ShardKey, ShardPlacement

MIN_CONCENTRATION = 0.9
"""Mean resultant length of the arrivals near the phase (outliers left out) below which
they are not periodic at the period: 0.9 is a circular spread of about 0.07 period (7 ms
at 10 fps)."""
MIN_SAMPLES = 8
"""Arrivals needed before a phase is claimed."""
MIN_KEPT_SHARE = 0.75
"""A phase is claimed when at least this share of the arrivals lie near it (the rest are
outliers) and those are concentrated (``MIN_CONCENTRATION``)."""
OUTLIER_PERIODS = 0.25
"""Arrivals farther than this share of a period from the first estimate are left out."""
OUTLIER_SDS = 3.0
"""... and those farther than this many robust standard deviations."""
JUMP_FLOOR_S = 0.002
"""The latest arrivals' phase may differ from the window's by this much (or three of their
spreads) before it counts as a jump."""
JUMP_PERIODS = 0.25
"""A slot pinned by a recent re-timing still follows its own stream when that stream would
wait this share of a period less (:func:`follow`)."""
MIN_LIMIT_S = 0.0005
"""The robust limit is never tighter than this (arrivals that agree to a few µs)."""
APP_WAY_S = 0.005
"""The way between an app and its gate, there and back, which the gate does not see
(the sidecar's ``appWayMs``)."""
APP_SLACK_SHARE = 1 / 3
"""Of a request's slack, the share a wait for its slot leaves its app (the sidecar's
``appSlackShare``)."""
QUIET_PERIODS = 10
"""A periodic stream with no arrival for this many periods (and ``QUIET_MIN_S``) has
stopped: its phase is forgotten. Its app may come back on another clock, and an old phase
would be acted on (a re-timing, pinned for a minute) before the new one is known. So are
fewer arrivals than a phase needs (an app's warm-up). A stream judged not periodic keeps
that judgement: its requests come when they come."""
QUIET_MIN_S = 1.0
FOLLOWED_DRIFT_S = 0.010
"""A slot placed after its stream's arrivals still follows them while their phase has
moved less than this from where it was then (:func:`still_followed`): less than the
follower lets it drift before it re-times (its ``min_gain_s``, 5 ms, on the longest wait),
with room for a minute's pin; a camera that restarted on another clock moves it further."""


def quiet_after_s(period_s: float) -> float:
    """How long a stream at ``period_s`` must be quiet to be forgotten (``QUIET_PERIODS``
    periods, and at least ``QUIET_MIN_S``)."""
    return max(QUIET_PERIODS * period_s, QUIET_MIN_S)


@dataclass(frozen=True)
class PhaseEstimate:
    """``phase_s`` in [0, period) from the epoch (None when not periodic or too few
    arrivals), ``spread_s`` the circular standard deviation of the arrivals kept,
    ``concentration`` the mean resultant length of all of them."""

    period_s: float
    phase_s: float | None
    spread_s: float
    concentration: float
    samples: int
    kept: int

    @property
    def periodic(self) -> bool:
        return self.phase_s is not None


def _mean_angle(angles: Iterable[float]) -> tuple[float, float, int]:
    """(mean angle in [0, 2π), mean resultant length, count)."""
    x = y = 0.0
    n = 0
    for a in angles:
        x += math.cos(a)
        y += math.sin(a)
        n += 1
    if n == 0:
        return 0.0, 0.0, 0
    return math.atan2(y, x) % math.tau, math.hypot(x, y) / n, n


def estimate(
    arrivals: Iterable[float],
    period_s: float,
    *,
    epoch_s: float = 0.0,
    min_concentration: float = MIN_CONCENTRATION,
    min_samples: int = MIN_SAMPLES,
) -> PhaseEstimate:
    """The arrival phase of ``arrivals`` (seconds) at ``period_s``, counted from ``epoch_s``."""
    if period_s <= 0:
        raise ValueError(f"period must be positive, got {period_s}")
    scale = math.tau / period_s
    angles = [((t - epoch_s) % period_s) * scale for t in arrivals]
    first, concentration, n = _mean_angle(angles)
    if n < min_samples:
        return PhaseEstimate(period_s, None, period_s / 2, concentration, n, 0)
    distance = [abs((a - first + math.pi) % math.tau - math.pi) for a in angles]
    robust_sd = 1.4826 * statistics.median(distance)
    limit = min(OUTLIER_PERIODS * math.tau, max(OUTLIER_SDS * robust_sd, MIN_LIMIT_S * scale))
    kept = [a for a, d in zip(angles, distance, strict=True) if d <= limit]
    mean, r, k = _mean_angle(kept)
    # Judged on the arrivals kept: one frame held up among 16 must not make a stream
    # aperiodic (all 16 together: R 0.899 for one 36 ms late at 10 fps). Uniform or
    # two-phase arrivals keep about half near any mean and fail the share.
    if k < MIN_KEPT_SHARE * n or r < min_concentration:
        return PhaseEstimate(period_s, None, period_s / 2, concentration, n, 0)
    # circular standard deviation sqrt(-2 ln R), in seconds
    spread = math.sqrt(max(0.0, -2.0 * math.log(max(r, 1e-12)))) / scale
    return PhaseEstimate(period_s, mean / scale, spread, concentration, n, k)


@dataclass
class PhaseTracker:
    """The last ``window`` arrivals of one stream, and its phase from them."""

    period_s: float
    window: int = 64
    epoch_s: float = 0.0
    arrivals: deque[float] = field(default_factory=deque)
    observed: int = 0
    """Arrivals seen since the last reset (the window keeps only the last ``window``)."""

    def forget_if_stopped(self, now: float) -> None:
        """Forget a stream that had no arrival for ``QUIET_PERIODS`` periods (and
        ``QUIET_MIN_S``) up to ``now``, unless its arrivals said it is not periodic: a
        periodic stream stopped, and what comes next is another run; fewer arrivals than a
        judgement needs (an app's warm-up requests) say nothing of what comes next, and
        counted with its frames they would make a camera look aperiodic."""
        limit = quiet_after_s(self.period_s)
        if not self.arrivals or now - self.arrivals[-1] <= limit:
            return
        if (
            len(self.arrivals) < MIN_SAMPLES
            or estimate(self.arrivals, self.period_s, epoch_s=self.epoch_s).periodic
        ):
            self.reset()

    def observe(self, t: float) -> None:
        self.forget_if_stopped(t)
        self.observed += 1
        self.arrivals.append(t)
        while len(self.arrivals) > self.window:
            self.arrivals.popleft()

    def reset(self, period_s: float | None = None) -> None:
        """Forget every arrival (a new period: the old phases mean nothing at it)."""
        self.arrivals.clear()
        self.observed = 0
        if period_s is not None:
            self.period_s = period_s

    def estimate(self, now: float | None = None) -> PhaseEstimate:
        """The phase over the window, unless the latest ``MIN_SAMPLES`` arrivals agree on
        another one: the camera restarted or jumped, and what came before is forgotten (a
        phase jump is found within ``MIN_SAMPLES`` frames, not a whole window's). No phase
        where a periodic stream has been quiet up to ``now`` (it stopped)."""
        if now is not None:
            self.forget_if_stopped(now)
        full = estimate(self.arrivals, self.period_s, epoch_s=self.epoch_s)
        if len(self.arrivals) <= MIN_SAMPLES:
            return full
        recent = list(self.arrivals)[-MIN_SAMPLES:]
        latest = estimate(recent, self.period_s, epoch_s=self.epoch_s)
        if latest.phase_s is None:
            return full
        if full.phase_s is not None:
            d = abs((latest.phase_s - full.phase_s + self.period_s / 2) % self.period_s)
            if abs(d - self.period_s / 2) <= max(3 * latest.spread_s, JUMP_FLOOR_S):
                return full
        self.arrivals = deque(recent)
        return latest


def wait_s(offset_s: float, phase_s: float, period_s: float) -> float:
    """How long a request arriving at ``phase_s`` waits for a slot at ``offset_s`` (both
    modulo ``period_s``): the slot at or after it."""
    return (offset_s - phase_s) % period_s


def follow_spacing(
    shards: Iterable[ShardPlacement], model_time_share: float | None, tick_hz: int
) -> dict[Key, int]:
    """How far apart (ticks, start to start) the operator's follower keeps each shard's
    slot from the next body (:func:`follow_plan`): the model's own time on the busy GPU
    (:func:`busy_model_ms`) where the GPU's bodies take turns (``model_time_share`` not
    None: None under MPS or where a profile has no solo compute) and those times fit the
    second one at a time (at most ``MODEL_TIME_SHARE_LIMIT``), as the planner's even
    spread does. There a slot's reserved time (the cost's share of the second) is shorter
    than its model alone, and slots packed at it chain: each body runs into the next slot
    and time-slicing stretches both (run 100: five followed slots 11 ms apart, bodies of
    11.8-12.8 ms alone, the fourth camera's frames 30 ms in the model at p99). Measured
    beside the packed table in one run (run 104, H100, the bench's eight cameras): p99
    57.8 against 68.5 ms, 0.73 against 0.87 x random phases', the frames' p99 in the
    model 26.2 against 39.1 ms, their longer waits included. Under MPS bodies run side by
    side and spacing only adds waits: none."""
    placed = list(shards)
    if model_time_share is None:
        return {}
    own = {s.key: busy_model_ms(s.solo_compute_ms, s.cost_ms) for s in placed}
    share = sum((own[s.key] or 0.0) * s.fps for s in placed) / 1e3
    apart = {key: spacing_ticks(ms, share, tick_hz) for key, ms in own.items()}
    return {key: ticks for key, ticks in apart.items() if ticks is not None}


def busy_model_ms(solo_compute_ms: float | None, cost_ms: float | None) -> float | None:
    """A model's own time per frame while a GPU whose bodies take turns is busy: its time
    alone (``soloComputeMs``), or its measured cost (each frame's share of the second at
    saturation) where that is less. An idle GPU can run the model slower than a busy one:
    on an H200 the calibration Job read 13.38 ms alone where bodies that overlapped no
    other took 11.3 ms at p50 in the loop, and the cost was 11.38 ms (run 102), so the
    time alone said 8 streams need 1.07 of the second and kept no spacing. On H100s the
    time alone was the lesser (run 104: 11.88 against a cost of 12.04 ms; 11.58 ms busy)."""
    if solo_compute_ms is None:
        return None
    return solo_compute_ms if cost_ms is None else min(solo_compute_ms, cost_ms)


def arrival_ticks(phase_s: float, tick_hz: int, period_ticks: int) -> int:
    """A stream's arrival phase (seconds from the epoch) in ticks within its period: the
    phase a slot placed after its arrivals follows."""
    return math.floor(phase_s * tick_hz) % period_ticks


def still_followed(followed_ticks: int | None, tick_hz: int, e: PhaseEstimate | None) -> bool:
    """Whether a slot placed after its stream's arrivals at ``followed_ticks`` (its
    contract's ``arrivalTicks``) still follows them: the stream is periodic and its phase
    (``e``, from the same epoch) is within ``FOLLOWED_DRIFT_S`` of that one, either way
    round the period."""
    if followed_ticks is None or e is None or e.phase_s is None:
        return False
    moved = (e.phase_s - followed_ticks / tick_hz) % e.period_s
    return min(moved, e.period_s - moved) <= FOLLOWED_DRIFT_S


def hold_limit_s(
    frame_s: float,
    answer_s: float,
    *,
    app_way_s: float = APP_WAY_S,
    app_slack_share: float = APP_SLACK_SHARE,
) -> float | None:
    """The longest a gate holds an idle periodic stream's request for its slot: a slot
    further away would use more than all but ``app_slack_share`` of the request's slack
    (its frame period less its answer and ``app_way_s``), so the request goes at once,
    ungated (the sidecar's gate, "answered after the next frame"). None where there is no
    slack: an answer slower than the frame period waits for its slot whatever it costs."""
    slack = frame_s - answer_s - app_way_s
    if not 0 <= slack < math.inf:
        return None
    return (1 - app_slack_share) * slack


def follow_holds(shards: Iterable[ShardPlacement], tick_hz: int) -> dict[Key, int]:
    """How long (ticks) each shard's gate will hold its requests for its slot
    (:func:`hold_limit_s`, with the stream's ``latencyMs`` for its answer, and no longer
    than its ``gate.maxWaitMs``): a followed table that makes a stream wait longer does not
    gate it, its frames go at once into the other streams' slots. The gate takes its
    answers as measured, so this is its bound while answers take what the profile said.
    A followed slot waits the same for every frame, so a bound it passes sends every frame
    ungated: with maxWaitMs at about one body, 4 of 8 time-sliced streams did, and the
    GPU answered at 1.10 x the p99 of the table without the bound (run 117)."""
    out: dict[Key, int] = {}
    for p in shards:
        hold = hold_limit_s(p.frame_period_ticks / tick_hz, p.latency_ms / 1e3)
        if p.max_wait_ms is not None:
            hold = min(hold if hold is not None else math.inf, p.max_wait_ms / 1e3)
        if hold is not None:
            out[p.key] = math.floor(hold * tick_hz)
    return out


def spacing_ticks(busy_ms: float | None, busy_share: float | None, tick_hz: int) -> int | None:
    """One slot's :func:`follow_spacing`: its model's own time on the busy GPU
    (``busy_ms``) in ticks, or None where the rule keeps none (``busy_share``: the GPU's
    models' busy time over the second)."""
    if busy_ms is None or busy_share is None:
        return None
    if busy_share > MODEL_TIME_SHARE_LIMIT:
        return None
    return math.ceil(busy_ms * tick_hz / 1e3)


def follow(
    slots: Sequence[Slot],
    arrivals: Mapping[Key, PhaseEstimate],
    *,
    tick_hz: int,
    lead_s: float = 0.0,
    min_gain_s: float = 0.005,
    fixed: Iterable[Key] = (),
    spacing: Mapping[Key, int] | None = None,
    holds: Mapping[Key, int] | None = None,
) -> list[Slot] | None:
    """A GPU's table re-timed to its streams' arrival phases, or None when that gains too
    little (the longest wait shorter by less than ``min_gain_s``, and the total wait per
    period shorter by less than that or at a longer longest wait) or no stream has a
    phase.

    A ``fixed`` slot (re-timed too recently) is not moved for the others' sake, but it
    still follows its own stream where, moving alone with every other slot kept, that
    stream would wait ``JUMP_PERIODS`` of a period less: its camera restarted or jumped,
    and it would otherwise wait that much every frame until the pin expires. Slow drift
    never gains that much within a pin.

    A stream's slot should start just after its requests arrive: at its phase plus a margin
    of two spreads (most jittered arrivals still precede the slot) and ``lead_s`` (none by
    default: the gate releases a request at its slot's start and the way on to Triton is
    the same for every stream, so a lead only adds to each wait; it was 2 ms until
    examples/03 measured that, and a later arrival within the slot's grace still takes it).
    Only slots whose period is their stream's arrival period take
    part (a slot period rounded below the frame period repeats at another pace); the others
    and ``fixed`` ones keep their offsets. The objective is the least longest wait, then the
    least total wait, under non-overlap (:func:`stagger.core.slots.align`), each slot kept
    at least its ``spacing`` (ticks, start to start; :func:`follow_spacing`) from the
    next body where the table has room for it and keeps every stream's wait within the
    time its gate holds a request for its slot (``holds``, ticks; :func:`follow_holds`),
    else its own width; a table closer than its spacing where a spaced one has that room
    is re-timed whatever the wait gains, once none of its followed slots is pinned. The
    gain is judged by the wait from each stream's phase itself, so a slot that already
    starts a little after its stream's arrivals is not moved for a changed margin
    (estimates move by a fraction of a millisecond from one read to the next; a table
    chased after them would never settle)."""
    phases: dict[Key, int] = {}
    targets: dict[Key, int] = {}
    for s in slots:
        e = arrivals.get(s.key)
        if e is None or e.phase_s is None:
            continue
        if round(e.period_s * tick_hz) != s.period:
            continue
        margin = 2 * e.spread_s + lead_s
        phases[s.key] = arrival_ticks(e.phase_s, tick_hz, s.period)
        targets[s.key] = math.ceil((e.phase_s + margin) * tick_hz) % s.period
    if not targets:
        return None

    def waits(table: Iterable[Slot], keys: Iterable[Key] = phases) -> tuple[int, int]:
        return wait_cost(table, {k: phases[k] for k in keys})

    held = set(fixed)
    aligned, crowded = None, False
    if spacing:  # the slots as wide as their spacing, where that fits the period
        spaced = [replace(s, body=max(s.body, spacing.get(s.key, 0))) for s in slots]
        aligned = align(spaced, targets, fixed=held)
        if aligned is not None and _past_hold(aligned, phases, holds or {}):
            # Its longer waits would send a stream's frames at once, ungated, into the
            # others' slots every frame (the bench's CPU dry run: one camera of three
            # waited 118 ms where its gate holds 112): the bodies it keeps apart would
            # meet anyway.
            aligned = None
        # A table closer than its spacing where a spaced one fits (one followed before the
        # spacing, or planned so) is re-timed though the spaced one waits longer: its
        # bodies chain (run 104). Once spaced it is not crowded, so this happens once; not
        # while a followed slot is pinned, whose camera's jump comes first (below).
        crowded = aligned is not None and not held & targets.keys() and bool(overlaps(spaced))
    if aligned is None:
        aligned = align(slots, targets, fixed=held)
    table: list[Slot] = list(slots)
    if aligned is not None and (
        crowded or _gains(waits(slots), waits(aligned), min_gain_s * tick_hz)
    ):
        table = aligned
    for s in slots:
        if s.key in targets and s.key in held:
            alone = align(table, {s.key: targets[s.key]})  # every other slot kept
            if alone is not None and (
                waits(table, [s.key])[1] - waits(alone, [s.key])[1] >= JUMP_PERIODS * s.period
            ):
                table = alone
    followed = [replace(s, offset=t.offset) for s, t in zip(slots, table, strict=True)]
    return None if followed == list(slots) else followed


def _past_hold(table: Iterable[Slot], phases: Mapping[Key, int], holds: Mapping[Key, int]) -> bool:
    """Whether a stream in ``table`` would wait longer than its gate holds a request."""
    return any(
        (s.offset - phases[s.key]) % s.period > holds[s.key]
        for s in table
        if s.key in phases and s.key in holds
    )


def _gains(before: tuple[int, int], after: tuple[int, int], min_gain: float) -> bool:
    """Whether (longest wait, total wait) ``after`` is worth a re-timing from ``before``: the
    longest wait shorter by ``min_gain``, or no longer and the total shorter by it."""
    (longest, total), (new_longest, new_total) = before, after
    return longest - new_longest >= min_gain or (
        new_longest <= longest and total - new_total >= min_gain
    )


def follow_plan(
    plan: Plan,
    arrivals: Mapping[ShardKey, tuple[float, float]],
    *,
    pinned: Iterable[ShardKey] = (),
    retiring: Iterable[ShardPlacement] = (),
    awaiting: Iterable[ShardKey] = (),
    lead_s: float = 0.0,
    min_gain_s: float = 0.005,
) -> Plan:
    """``plan`` with each GPU's table re-timed to its streams' arrivals (``arrivals``: per
    shard, its phase from the GPU's epoch and its spread, in seconds), where that saves at
    least ``min_gain_s`` of wait (:func:`follow`). Pinned shards (re-timed too recently)
    and old copies of moved shards (``retiring``, still running where they were) keep
    their slots. A GPU with a shard whose first estimate is still coming (``awaiting``: its
    app has just started) is left as it is until it comes: one re-timing then places every
    stream that started together, where re-timing on each estimate in turn would pin shards
    moved to make room before their own phase was known, in the wrong place. The re-timed
    shards join ``offsets_changed``; the operator then switches their GPU at an instant no
    old body runs, as for any re-timing. Each slot is kept its :func:`follow_spacing`
    from the next body where the GPU's table has room and no stream then waits longer than
    its gate holds a request (:func:`follow_holds`). Each re-timed shard records the
    arrival phase its slot now follows (``arrival_ticks``; its contract's ``arrivalTicks``):
    its gate holds its requests for that slot while they keep that phase
    (:func:`still_followed`)."""
    if not arrivals:
        return plan
    hz = plan.tick_hz
    shares = {(g.node, g.gpu): g.model_time_share for g in plan.gpus}
    held, waiting = set(pinned), set(awaiting)
    by_gpu: dict[tuple[str, int], list[ShardPlacement]] = {}
    for p in plan.shards:
        by_gpu.setdefault((p.node, p.gpu), []).append(p)
    ghosts: dict[tuple[str, int], list[Slot]] = {}
    for r in retiring:
        ghosts.setdefault((r.node, r.gpu), []).append(
            Slot(("retiring", *r.key), r.body_ticks, r.period_ticks, r.offset_ticks)
        )
    moved: dict[ShardKey, int] = {}
    followed: dict[ShardKey, int | None] = {}
    for where, shards in by_gpu.items():
        estimates: dict[Key, PhaseEstimate] = {
            p.key: PhaseEstimate(
                p.frame_period_ticks / hz, *arrivals[p.key], MIN_CONCENTRATION, MIN_SAMPLES, 0
            )
            for p in shards
            if p.key in arrivals
        }
        if not estimates or any(p.key in waiting for p in shards):
            continue
        extra = ghosts.get(where, [])
        table = [Slot(p.key, p.body_ticks, p.period_ticks, p.offset_ticks) for p in shards]
        aligned = follow(
            table + extra,
            estimates,
            tick_hz=hz,
            lead_s=lead_s,
            min_gain_s=min_gain_s,
            fixed=held | {s.key for s in extra},
            spacing=follow_spacing(shards, shares.get(where), hz),
            holds=follow_holds(shards, hz),
        )
        for before, after in zip(table, aligned or (), strict=False):
            if after.offset != before.offset:
                moved[before.key] = after.offset  # type: ignore[index]  # shard keys
                e = estimates.get(before.key)
                followed[before.key] = (  # type: ignore[index]
                    None
                    if e is None or e.phase_s is None
                    else arrival_ticks(e.phase_s, hz, before.period)
                )
    if not moved:
        return plan
    retimed = tuple(
        replace(p, offset_ticks=moved[p.key], arrival_ticks=followed[p.key])
        if p.key in moved
        else p
        for p in plan.shards
    )
    changed = tuple(dict.fromkeys([*plan.offsets_changed, *moved]))
    return replace(plan, shards=retimed, offsets_changed=changed)
