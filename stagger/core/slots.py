"""The slot solver: offsets on one GPU such that no two bodies ever overlap.

Each shard on a GPU runs its body at ``offset + n * period`` (integer ticks). Two strictly
periodic bodies i, j never collide iff, with g = gcd(P_i, P_j),

    b_i <= (offset_j - offset_i) mod g <= g - b_j

so the offsets that a new shard may take are periodic with period L = lcm of those gcds
(a divisor of its own period): the solver lists the forbidden intervals in [0, L), merges
them and chooses among the allowed ones. This is exact for any mix of periods; coprime
periods (gcd 1) always collide, which is why a shard's period may be rounded *down* to one
harmonic with the periods already on the GPU (a slot period never exceeds the frame period).

Three operations, one mechanism (the allowed-interval search):
- :func:`insert` adds one shard without moving any other, at the centre of the widest gap
  (it maximises this shard's smallest gap): the incremental path.
- :func:`pack` places a whole GPU from scratch, first-fit in the base cycle C (the gcd of
  all periods), so shards of longer periods share a lane on alternate cycles;
  :func:`spread` then stretches the packing so the free time is shared evenly between
  lanes: the utilisation cap is the safety margin, so it is spread, not left in one block.
- :func:`solve` keeps a previous table where it still holds, inserts what is new, and only
  re-times (:func:`retime`: re-packs, changing offsets, never GPUs) when no gap is left.

:func:`switch_tick` says where a running GPU may change from one table to another so that no
body of the old table ever overlaps one of the new.

:func:`overlaps` is the independent checker (the pairwise rule above); tests also check
plans by brute-force simulation over the hyperperiod.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

Key = Hashable


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """A shard that needs a slot: ``body`` ticks (guard included) every ``frame_period``."""

    key: Key
    body: int
    frame_period: int


@dataclass(frozen=True, slots=True)
class Slot:
    """A shard's slot: its body occupies [offset + n * period, ... + body) for every n."""

    key: Key
    body: int
    period: int
    offset: int

    @property
    def utilization(self) -> float:
        return self.body / self.period


@dataclass(frozen=True)
class SolveResult:
    slots: tuple[Slot, ...]
    repacked: bool
    offsets_changed: tuple[Key, ...]


def collide(a: Slot, b: Slot) -> bool:
    """True when the bodies of ``a`` and ``b`` ever overlap."""
    g = math.gcd(a.period, b.period)
    d = (b.offset - a.offset) % g
    return not (a.body <= d <= g - b.body)


def overlaps(slots: Sequence[Slot]) -> list[tuple[Key, Key]]:
    """Every pair of slots whose bodies ever overlap (empty for a valid table).

    With C the gcd of all periods, a body only ever occupies [offset, offset + body) mod C
    of a cycle, so two bodies whose intervals mod C are disjoint never meet: a sweep over
    those intervals finds the candidate pairs, and :func:`collide` decides each exactly."""
    if len(slots) < 2:
        return []
    cycle = math.gcd(*(s.period for s in slots))
    if any(s.body >= cycle for s in slots):
        candidates = [(i, j) for i in range(len(slots)) for j in range(i + 1, len(slots))]
    else:
        spans: list[tuple[int, int, int]] = []
        for i, s in enumerate(slots):
            start = s.offset % cycle
            spans.append((start, start + s.body, i))
            if start + s.body > cycle:  # wraps: also seen from the start of the cycle
                spans.append((start - cycle, start + s.body - cycle, i))
        spans.sort()
        pairs: set[tuple[int, int]] = set()
        active: list[tuple[int, int]] = []  # (end, index)
        for start, end, i in spans:
            active = [(e, j) for e, j in active if e > start]
            for _, j in active:
                if j != i:
                    pairs.add((min(i, j), max(i, j)))
            active.append((end, i))
        candidates = sorted(pairs)
    return [(slots[i].key, slots[j].key) for i, j in candidates if collide(slots[i], slots[j])]


def utilization(slots: Iterable[Slot]) -> float:
    return sum(s.body / s.period for s in slots)


def candidate_periods(frame_period: int, existing: Iterable[int]) -> list[int]:
    """Slot periods to try, longest first: the frame period itself, then the largest
    multiple and the largest divisor of each period already on the GPU that do not exceed it
    (rounding down into a harmonic family, so the gcd with those shards stays large)."""
    return [frame_period, *_rounded_periods(frame_period, existing)]


def _rounded_periods(frame_period: int, existing: Iterable[int]) -> list[int]:
    out = set()
    for p in set(existing):
        if p <= frame_period:
            out.add(p * (frame_period // p))
        else:
            out.add(_largest_divisor_at_most(p, frame_period))
    out.discard(frame_period)
    return sorted(out, reverse=True)


def _periods_to_try(frame_period: int, existing: list[int]) -> Iterator[int]:
    # The frame period first; rounded ones only when it finds no offset (each costs a
    # divisor search, and they reserve more than the shard needs).
    yield frame_period
    yield from _rounded_periods(frame_period, existing)


@functools.lru_cache(maxsize=4096)
def _largest_divisor_at_most(n: int, limit: int) -> int:
    best = 1
    i = 1
    while i * i <= n:
        if n % i == 0:
            if i <= limit:
                best = max(best, i)
            if n // i <= limit:
                best = max(best, n // i)
        i += 1
    return best


def allowed_offsets(
    existing: Sequence[Slot], period: int, body: int
) -> tuple[int, list[tuple[int, int]]]:
    """Offsets in [0, L) at which a body of ``body`` ticks with ``period`` collides with
    none of ``existing``: returns L and the allowed closed intervals [lo, hi], sorted.
    Offsets congruent modulo L are equivalent (L divides ``period``)."""
    if body > period:
        return period, []
    gcds = []
    for s in existing:
        g = math.gcd(s.period, period)
        if s.body + body > g:
            return period, []
        gcds.append(g)
    if not existing:
        return period, [(0, period - 1)]
    span = 1
    for g in gcds:
        span = span * g // math.gcd(span, g)
    forbidden: list[tuple[int, int]] = []
    for s, g in zip(existing, gcds, strict=True):
        width = s.body + body - 1  # integers x with s.offset - body < x < s.offset + s.body
        first = (s.offset - body + 1) % g
        for base in range(first, span + first, g):
            lo = base % span
            hi = lo + width - 1
            if hi < span:
                forbidden.append((lo, hi))
            else:
                forbidden.append((lo, span - 1))
                forbidden.append((0, hi - span))
    forbidden.sort()
    allowed: list[tuple[int, int]] = []
    cursor = 0
    for lo, hi in forbidden:
        if lo > cursor:
            allowed.append((cursor, lo - 1))
        cursor = max(cursor, hi + 1)
    if cursor < span:
        allowed.append((cursor, span - 1))
    return span, allowed


def max_body(existing: Sequence[Slot], frame_period: int, budget: float) -> int:
    """An upper bound on the body (ticks) that :func:`insert` could still place for a shard
    with this frame period: over its candidate periods P', the pairwise rule needs
    b <= gcd(P', P_s) - b_s for every existing slot s, and b / P' must fit the budget.
    Necessary, not sufficient: offsets may still all be taken."""
    periods = [s.period for s in existing]
    best = 0
    for period in _periods_to_try(frame_period, periods):
        bound = math.floor(budget * period + 1e-9)
        for s in existing:
            bound = min(bound, math.gcd(period, s.period) - s.body)
            if bound <= best:
                break
        best = max(best, bound)
    return best


def _widest_gap_centre(span: int, allowed: list[tuple[int, int]]) -> int:
    """The point farthest from any forbidden offset; the ends of [0, L) join up."""
    gaps = list(allowed)
    if len(gaps) > 1 and gaps[0][0] == 0 and gaps[-1][1] == span - 1:
        first, last = gaps.pop(0), gaps.pop()
        gaps.append((last[0], first[1] + span))  # one gap across the wrap
    lo, hi = max(gaps, key=lambda g: (g[1] - g[0], -g[0]))
    return ((lo + hi) // 2) % span


def _lane_first(span: int, allowed: list[tuple[int, int]], cycle: int) -> int:
    """The allowed offset earliest in the base cycle (then earliest overall): bodies stack
    into shared lanes instead of fragmenting the cycle."""
    best: tuple[int, int] | None = None
    for lo, hi in allowed:
        point = lo
        to_next_cycle_start = (-lo) % cycle
        if lo + to_next_cycle_start <= hi:
            point = lo + to_next_cycle_start
        cand = (point % cycle, point)
        if best is None or cand < best:
            best = cand
    assert best is not None
    return best[1] % span


def insert(
    existing: Sequence[Slot],
    request: SlotRequest,
    *,
    max_utilization: float = 1.0,
    how: str = "centre",
    rounding: float | None = None,
) -> Slot | None:
    """A slot for ``request`` that moves none of ``existing``, or None when no period from
    :func:`candidate_periods` has a free offset within ``max_utilization`` of reserved
    body time. ``how`` is "centre" (widest gap) or "lane" (first-fit in the base cycle).
    ``rounding`` limits how much longer than its slot period the frame period may be
    (0.02: 2 %, so at most 2 % more body time reserved than used; None: no limit)."""
    periods = [s.period for s in existing]
    shortest = 0 if rounding is None else request.frame_period / (1 + rounding) - 1e-9
    for period in _periods_to_try(request.frame_period, periods):
        if period < shortest:
            continue
        if request.body / period > max_utilization + 1e-12:
            continue
        span, allowed = allowed_offsets(existing, period, request.body)
        if not allowed:
            continue
        if how == "centre":
            offset = _widest_gap_centre(span, allowed)
        else:
            cycle = math.gcd(period, *periods) if periods else period
            offset = _lane_first(span, allowed, cycle)
        return Slot(request.key, request.body, period, offset)
    return None


def pack_order(requests: Iterable[SlotRequest]) -> list[SlotRequest]:
    """Shortest period first (they need every cycle), then longest body, then key."""
    return sorted(requests, key=lambda r: (r.frame_period, -r.body, repr(r.key)))


def pack(
    requests: Iterable[SlotRequest],
    *,
    max_utilization: float = 1.0,
    fixed: Sequence[Slot] = (),
    rounding: float | None = None,
) -> list[Slot] | None:
    """Place every request from scratch (lane first-fit), or None when they do not fit.
    ``fixed`` slots keep their offsets and the requests are packed around them (requests
    for the keys of fixed slots are taken as placed). ``rounding`` as for :func:`insert`."""
    slots: list[Slot] = list(fixed)
    held = {s.key for s in fixed}
    if utilization(slots) > max_utilization + 1e-12 or (len(slots) > 1 and overlaps(slots)):
        return None
    for request in pack_order(requests):
        if request.key in held:
            continue
        budget = max_utilization - utilization(slots)
        slot = insert(slots, request, max_utilization=budget, how="lane", rounding=rounding)
        if slot is None:
            return None
        slots.append(slot)
    return slots


def spread(slots: Sequence[Slot], fixed: Iterable[Key] = ()) -> list[Slot]:
    """Share the free time of a packed table evenly between its lanes.

    With C the gcd of all periods, each body sits at position p = offset mod C of every
    cycle it runs in. Moving each distinct start position right by an amount that grows with
    its rank keeps the order of bodies within a cycle and keeps every body inside its cycle,
    so two bodies that never met still never meet. Tables with a body that crosses a cycle
    boundary, or with a ``fixed`` slot (one that may not move now), are returned unchanged."""
    held = set(fixed)
    if len(slots) < 2 or any(s.key in held for s in slots):
        return list(slots)
    cycle = math.gcd(*(s.period for s in slots))
    if any(s.offset % cycle + s.body > cycle for s in slots):
        return list(slots)
    starts = sorted({s.offset % cycle for s in slots})
    end = max(s.offset % cycle + s.body for s in slots)
    slack = cycle - end
    shift = {p: (rank * slack) // len(starts) for rank, p in enumerate(starts)}
    out = [replace(s, offset=s.offset + shift[s.offset % cycle]) for s in slots]
    return out if not overlaps(out) else list(slots)


def solve(
    requests: Sequence[SlotRequest],
    previous: Mapping[Key, Slot] | None = None,
    *,
    max_utilization: float = 1.0,
    pinned: Iterable[Key] = (),
) -> SolveResult | None:
    """The slot table of one GPU, or None when the requests cannot share it.

    A previous slot is kept when its shard still asks for the same body and its period is
    still valid for the frame period; new shards are inserted without moving kept ones.
    Only when no gap is left is the GPU re-timed: re-packed from scratch, except that
    ``pinned`` shards (re-timed too recently to move again) keep their slots and the rest
    is packed around them. The shards whose slot changed are in ``offsets_changed``."""
    previous = previous or {}
    kept: list[Slot] = []
    new: list[SlotRequest] = []
    for request in requests:
        old = previous.get(request.key)
        if old is not None and old.body == request.body and old.period <= request.frame_period:
            kept.append(old)
        else:
            new.append(request)
    if kept and not overlaps(kept) and utilization(kept) <= max_utilization + 1e-12:
        slots = list(kept)
        for request in pack_order(new):
            budget = max_utilization - utilization(slots)
            slot = insert(slots, request, max_utilization=budget, how="centre")
            if slot is None:
                break
            slots.append(slot)
        else:
            return SolveResult(tuple(slots), repacked=False, offsets_changed=())
    held = set(pinned)
    fixed = [s for s in kept if s.key in held]
    table = retime(requests, fixed, max_utilization=max_utilization)
    if table is None:
        return None
    changed = tuple(
        s.key
        for s in table
        if s.key in previous
        and (previous[s.key].offset, previous[s.key].period) != (s.offset, s.period)
    )
    return SolveResult(tuple(table), repacked=bool(kept), offsets_changed=changed)


def retime(
    requests: Sequence[SlotRequest], fixed: Sequence[Slot] = (), *, max_utilization: float = 1.0
) -> list[Slot] | None:
    """A new table for a GPU: :func:`pack` around the ``fixed`` slots, then :func:`spread`
    (which leaves a table with fixed slots as packed). None when they do not fit."""
    packed = pack(requests, max_utilization=max_utilization, fixed=fixed)
    if packed is None:
        return None
    return spread(packed, fixed=[s.key for s in fixed])


def switch_tick(table: Sequence[Slot], earliest: int) -> int:
    """The first tick at or after ``earliest`` at which no body of ``table`` is running
    (a body that starts or ends there does not count).

    A slot table switches there: the old table's slots that start before it run, the new
    table's slots from it on. Every old body that started before it has ended by then and
    none of its later ones run, so no old body overlaps a new one at any instant, whatever
    the new table is; within each table bodies never overlap. Exists for any valid table
    (bodies do not overlap, so each one ends where no other runs)."""
    t = earliest
    moved = True
    while moved:
        moved = False
        for s in table:
            start = s.offset + ((t - s.offset) // s.period) * s.period  # the last start <= t
            if start < t < start + s.body:
                t = start + s.body
                moved = True
    return t


def _first_allowed_at_or_after(span: int, allowed: list[tuple[int, int]], target: int) -> int:
    """The smallest x >= ``target`` (an integer, any size) with x mod span allowed."""
    base, rest = divmod(target, span)
    for lo, hi in allowed:
        if hi >= rest:
            return base * span + max(lo, rest)
    return (base + 1) * span + allowed[0][0]


def align(
    slots: Sequence[Slot], phases: Mapping[Key, int], fixed: Iterable[Key] = ()
) -> list[Slot] | None:
    """Offsets for the same slots (periods and bodies kept) that start each body as soon
    after its stream's arrival phase (``phases``: ticks from the epoch, modulo its period)
    as the pairwise rule allows. A slot's wait is (offset - phase) mod period. The objective
    is the least longest wait, then the least total wait (:func:`wait_cost`): the longest
    wait is the fleet's tail (each stream waits the same every frame), and the gate sends a
    frame that would wait more than its app can spare at once, ungated, so one long wait
    costs every stream on the GPU (run 98: a table of least total wait kept one camera
    50 ms from its slot, and its frames went ungated). Slots without a phase and ``fixed``
    ones keep their offsets. Greedy: for each rotation of the slots ordered by phase, each
    takes the first allowed offset at or after its phase; the rotation of least cost wins
    (ties: fewer offsets changed), and the table as it is when no rotation costs less:
    ``align`` never makes the cost higher. None when the kept slots leave no room (they
    overlap)."""
    held = set(fixed)
    kept = [s for s in slots if s.key in held or s.key not in phases]
    if len(kept) > 1 and overlaps(kept):
        return None
    moving = sorted(
        (s for s in slots if s.key not in held and s.key in phases),
        key=lambda s: (phases[s.key] % s.period, repr(s.key)),
    )
    if not moving:
        return list(slots)

    best: tuple[tuple[int, int], int, list[Slot]] | None = (
        None if overlaps(slots) else (wait_cost(slots, phases), 0, list(slots))
    )
    for first in range(len(moving)):
        placed = list(kept)
        for s in moving[first:] + moving[:first]:
            span, allowed = allowed_offsets(placed, s.period, s.body)
            if not allowed:
                break
            phase = phases[s.key] % s.period
            offset = _first_allowed_at_or_after(span, allowed, phase) % s.period
            placed.append(replace(s, offset=offset))
        else:
            table = _in_order(slots, placed)
            cost = wait_cost(table, phases)
            changed = sum(1 for a, b in zip(slots, table, strict=True) if a != b)
            if best is None or (cost, changed) < best[:2]:
                best = (cost, changed, table)
    return None if best is None else best[2]


def wait_cost(table: Iterable[Slot], phases: Mapping[Key, int]) -> tuple[int, int]:
    """(longest wait, total wait) in ticks over the slots with a phase: what :func:`align`
    makes least, in that order."""
    waits = [(s.offset - phases[s.key]) % s.period for s in table if s.key in phases]
    return max(waits, default=0), sum(waits)


def _in_order(slots: Sequence[Slot], placed: Iterable[Slot]) -> list[Slot]:
    by_key = {s.key: s for s in placed}
    return [by_key[s.key] for s in slots]


def release_windows(slots: Sequence[Slot]) -> dict[Key, tuple[int, int]]:
    """Per slot, (early, late) in ticks: a request of its stream may be released up to
    ``early`` before its slot's start, or up to ``late`` after it, without its body meeting
    any other stream's body, however the other streams use their own windows.

    The free time between two bodies belongs half to each: between the end of the nearest
    body before a slot and the slot's start, the later half is its early window and the
    earlier half the other stream's late window; likewise after. For two slots whose
    periods have gcd g, the pairwise rule places both in one cycle of g; each slot's body
    stretched by its windows then spans at most its body plus half of each gap next to it,
    and the two stretched bodies together at most g, so they never meet. A slot alone on
    its GPU gets half the free period each way."""
    out: dict[Key, tuple[int, int]] = {}
    for s in slots:
        before = after = s.period - s.body
        for o in slots:
            if o.key == s.key:
                continue
            g = math.gcd(s.period, o.period)
            before = min(before, (s.offset - (o.offset + o.body)) % g)
            after = min(after, (o.offset - (s.offset + s.body)) % g)
        out[s.key] = (before // 2, after // 2)
    return out
