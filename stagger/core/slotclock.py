"""When a shard's slots start, on the node's clock: the one computation the sidecar's gate,
its slot-clock endpoint and the app-side client all share.

Slot n starts at ``epoch + (offset + n × period) / tickHz`` seconds. Arithmetic is in
integer ticks from the epoch (exact for any n); only the caller's clock is a float.
A contract takes effect at its ``effectiveAt``: until then the previous one holds, so every
sidecar of a GPU switches tables at the same instant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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

    @classmethod
    def of(cls, contract: SlotAssignment) -> SlotClock:
        return cls(
            epoch_s=contract.epoch.timestamp(),
            tick_hz=contract.tick_hz,
            period_ticks=contract.period_ticks,
            offset_ticks=contract.offset_ticks,
            body_ticks=contract.body_ticks,
        )

    @property
    def period_s(self) -> float:
        return self.period_ticks / self.tick_hz

    @property
    def body_s(self) -> float:
        return self.body_ticks / self.tick_hz

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


@dataclass(frozen=True)
class Timetable:
    """The contract in force and the one that takes over at its ``effectiveAt``."""

    current: SlotAssignment | None = None
    pending: SlotAssignment | None = None

    def with_contract(self, contract: SlotAssignment, now: float) -> Timetable:
        """A newly read contract: in force at once if its time has come (or nothing is in
        force yet), else pending until then. An older generation than the one held is
        ignored: files can be read out of order while the kubelet swaps them."""
        held = self.at(now).current
        if held is not None and contract.generation < held.generation:
            return self.at(now)
        if held is None or contract.effective_at.timestamp() <= now:
            return Timetable(contract, None)
        return Timetable(held, contract)

    def at(self, now: float) -> Timetable:
        """The timetable as of ``now`` (a pending contract whose time has come takes over)."""
        if self.pending is not None and self.pending.effective_at.timestamp() <= now:
            return Timetable(self.pending, None)
        return self

    def clock(self, now: float) -> SlotClock | None:
        current = self.at(now).current
        return SlotClock.of(current) if current is not None else None
