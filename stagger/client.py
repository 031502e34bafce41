"""Slot clock for apps: capture each frame at the stream's slot, so its request never waits
at the gate. Standard library only; any app that can run Python can use it.

    from stagger.client import SlotClient

    clock = SlotClient("http://127.0.0.1:8800")      # the sidecar's HTTP port
    while True:
        clock.wait_for_slot(lead_s=0.004)           # wake 4 ms early: capture + encode
        frame = camera.read()
        triton.infer(...)                           # reaches the gate at the slot start

The clock parameters (epoch, period, offset in ticks) are read from the sidecar's
``/stagger/v1/clock`` and slot times computed locally with the gate's own arithmetic
(:mod:`stagger.core.slotclock`), so waiting costs no request; the
parameters are read again every ``refresh_s`` and when a new contract takes effect.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stagger.core.slotclock import SlotClock as Slots

CLOCK_PATH = "/stagger/v1/clock"


@dataclass(frozen=True)
class Contract:
    """One contract's slot times, as the sidecar describes them."""

    slots: Slots
    effective_at: float

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Contract:
        slots = Slots(
            epoch_s=float(doc["epoch"]),
            tick_hz=int(doc["tickHz"]),
            period_ticks=int(doc["periodTicks"]),
            offset_ticks=int(doc["offsetTicks"]),
            body_ticks=int(doc["bodyTicks"]),
        )
        return cls(slots, float(doc["effectiveAt"]))

    def first_after(self, t: float) -> float:
        """The first slot start strictly after ``t``."""
        return self.slots.start(self.slots.index_at_or_after(math.nextafter(t, math.inf)))


class SlotClient:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8800",
        stream: str | None = None,
        *,
        refresh_s: float = 5.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        query = f"?{urllib.parse.urlencode({'stream': stream})}" if stream else ""
        self.url = url.rstrip("/") + CLOCK_PATH + query
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.sleep = sleep
        self._current: Contract | None = None
        self._pending: Contract | None = None
        self._read_at = -math.inf
        self._last = -math.inf

    def refresh(self) -> None:
        """Read the clock parameters from the sidecar (raises ``OSError`` when it is down,
        ``ValueError`` when it has no slot for the stream)."""
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise ValueError(f"slot clock at {self.url}: {e.code} {detail}") from None
        self._current = Contract.of(doc["clock"])
        self._pending = Contract.of(doc["pending"]) if doc.get("pending") else None
        self._read_at = self.clock()

    def _contract(self, t: float) -> Contract:
        if self._current is None or self.clock() - self._read_at > self.refresh_s:
            self.refresh()
        assert self._current is not None
        if self._pending is not None and t >= self._pending.effective_at:
            self.refresh()  # the new contract is in force: take it from the source
            assert self._current is not None
        return self._current

    def next_slot(self) -> float:
        """The next slot start after now that this clock has not handed out yet."""
        after = max(self.clock(), self._last)
        return self._contract(after).first_after(after)

    def wait_for_slot(self, lead_s: float = 0.0) -> float:
        """Sleep until ``lead_s`` before the next slot; returns that slot's start time.
        Successive calls return successive slots, never the same one twice."""
        slot = self.next_slot()
        delay = slot - lead_s - self.clock()
        if delay > 0:
            self.sleep(delay)
        self._last = slot
        return slot
