"""When a shard's slots start, on the node's clock: the one computation the sidecar's gate,
its slot-clock endpoint and the app-side client all share.

Slot n starts at ``epoch + (offset + n × period) / tickHz`` seconds. Arithmetic is in
integer ticks from the epoch (exact for any n); only the caller's clock is a float.

A contract governs the slots that start from its **switch instant** (``effectiveAt``,
floored to a tick: ``SlotAssignment.effective_tick``) until the next generation's switch
instant. So a slot table changes at one instant on every sidecar of a GPU: slots that start
before it are the old table's, slots that start at or after it the new one's, and a first
contract has no slots before its switch instant. The operator places that instant where no
body of the old table is running (``stagger.core.slots.switch_tick``), so no body of the
old table overlaps one of the new, frames in flight across the switch included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only attributes are read: apps import this module without pydantic
    from stagger.core.contract import SlotAssignment


@dataclass(frozen=True)
class SlotClock:
    epoch_s: float  # Unix time of the GPU's epoch
    tick_hz: int
    period_ticks: int
    offset_ticks: int
    body_ticks: int
    from_ticks: int | None = None
    """The switch instant, in ticks from the epoch: this clock's slots start there (None:
    they always ran)."""
    early_ticks: int = 0
    late_ticks: int = 0
    """The release window around each slot start (``SlotAssignment.early_ticks``, ...)."""
    arrival_ticks: int | None = None
    """The arrival phase its slot was re-timed to follow (``SlotAssignment.arrival_ticks``)."""

    @classmethod
    def of(cls, contract: SlotAssignment) -> SlotClock:
        return cls(
            epoch_s=contract.epoch.timestamp(),
            tick_hz=contract.tick_hz,
            period_ticks=contract.period_ticks,
            offset_ticks=contract.offset_ticks,
            body_ticks=contract.body_ticks,
            from_ticks=contract.effective_tick,
            early_ticks=contract.early_ticks or 0,
            late_ticks=contract.late_ticks or 0,
            arrival_ticks=contract.arrival_ticks,
        )

    @property
    def early_s(self) -> float:
        return self.early_ticks / self.tick_hz

    @property
    def late_s(self) -> float:
        return self.late_ticks / self.tick_hz

    @property
    def period_s(self) -> float:
        return self.period_ticks / self.tick_hz

    @property
    def body_s(self) -> float:
        return self.body_ticks / self.tick_hz

    @property
    def switch_s(self) -> float:
        """The switch instant in seconds, by the same formula as :meth:`start`: a slot and a
        switch instant of one epoch compare exactly (distinct ticks are distinct floats)."""
        if self.from_ticks is None:
            return -math.inf
        return self.epoch_s + self.from_ticks / self.tick_hz

    def start(self, n: int) -> float:
        """When slot ``n`` starts (seconds, the same clock as ``epoch_s``)."""
        return self.epoch_s + (self.offset_ticks + n * self.period_ticks) / self.tick_hz

    def index_at_or_after(self, t: float) -> int:
        """The first slot that starts at or after ``t``."""
        ticks = (t - self.epoch_s) * self.tick_hz - self.offset_ticks
        n = math.ceil(ticks / self.period_ticks - 1e-9)  # a slot starting at t counts
        # Guard float rounding at the boundary with the exact integer schedule.
        while self.start(n - 1) >= t:
            n -= 1
        while self.start(n) < t:
            n += 1
        return n

    def next_starts(self, t: float, count: int = 1) -> list[float]:
        n = self.index_at_or_after(t)
        return [self.start(n + i) for i in range(count)]


def first_slot(chain: Sequence[SlotClock], t: float) -> tuple[float, SlotClock] | None:
    """The first slot that starts at or after ``t`` over a chain of contracts (ascending
    generation): each clock's slots from its switch instant until the next one's. Returns
    the slot's start and the clock it belongs to; None when the chain is empty."""
    for i, clock in enumerate(chain):
        end = chain[i + 1].switch_s if i + 1 < len(chain) else math.inf
        if end <= t:
            continue
        start = clock.start(clock.index_at_or_after(max(t, clock.switch_s)))
        if start < end:
            return start, clock
    return None


def slot_starts(chain: Sequence[SlotClock], t: float, count: int) -> list[float]:
    """The next ``count`` slot starts at or after ``t`` over a chain (see :func:`first_slot`)."""
    out: list[float] = []
    while len(out) < count and (found := first_slot(chain, t)) is not None:
        out.append(found[0])
        t = math.nextafter(found[0], math.inf)
    return out


def governing(chain: Sequence[SlotClock], t: float) -> SlotClock | None:
    """The clock whose switch instant is the latest at or before ``t``: the table in force."""
    current = None
    for clock in chain:
        if clock.switch_s <= t:
            current = clock
    return current


@dataclass(frozen=True)
class Timetable:
    """The contracts a shard has read that still matter, in ascending generation: the one in
    force and those waiting for their switch instant."""

    contracts: tuple[SlotAssignment, ...] = ()
    _clocks: tuple[SlotClock, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The gate asks on every request: build the clocks once per chain.
        object.__setattr__(self, "_clocks", tuple(SlotClock.of(c) for c in self.contracts))

    def with_contract(self, contract: SlotAssignment, now: float) -> Timetable:
        """A newly read contract joins the chain. A generation the chain already has, or one
        older than the contract in force, changes nothing: files can be read out of order
        while the kubelet swaps them."""
        table = self.at(now)
        held = table.current(now)
        if held is not None and contract.generation < held.generation:
            return table
        if any(c.generation == contract.generation for c in table.contracts):
            others = tuple(c for c in table.contracts if c.generation != contract.generation)
        else:
            others = table.contracts
        chain = sorted((*others, contract), key=lambda c: c.generation)
        return Timetable(tuple(chain)).at(now)

    def at(self, now: float) -> Timetable:
        """The chain as of ``now``: contracts superseded before ``now`` are dropped."""
        chain = self.contracts
        clocks = self.clocks()
        keep = 0
        for i in range(1, len(chain)):
            if clocks[i].switch_s <= now:
                keep = i
        return self if keep == 0 else Timetable(chain[keep:])

    def clocks(self) -> tuple[SlotClock, ...]:
        return self._clocks

    def current(self, now: float) -> SlotAssignment | None:
        """The contract in force at ``now`` (None before the first one's switch instant)."""
        found = None
        for contract, clock in zip(self.contracts, self.clocks(), strict=True):
            if clock.switch_s <= now:
                found = contract
        return found

    def upcoming(self, now: float) -> SlotAssignment | None:
        """The first contract whose switch instant is still to come."""
        return next(
            (c for c, k in zip(self.contracts, self.clocks(), strict=True) if k.switch_s > now),
            None,
        )

    def clock(self, now: float) -> SlotClock | None:
        """The clock in force at ``now``, else the first one to come (None: no contract)."""
        clocks = self.clocks()
        return governing(clocks, now) or (clocks[0] if clocks else None)

    def next_slot(self, t: float) -> tuple[float, SlotClock] | None:
        """The first slot starting at or after ``t`` and the clock it belongs to."""
        return first_slot(self.clocks(), t)
