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
from typing import Any

from stagger.core.slotclock import SlotClock as Slots
from stagger.core.slotclock import first_slot, governing

CLOCK_PATH = "/stagger/v1/clock"


def clock_of(doc: dict[str, Any]) -> Slots:
    """One contract's slots, as the sidecar describes them (``effectiveTick``: its switch
    instant, see :mod:`stagger.core.slotclock`)."""
    epoch, hz = float(doc["epoch"]), int(doc["tickHz"])
    tick = doc.get("effectiveTick")
    if tick is None:  # an older sidecar: the switch instant from effectiveAt, to a tick
        tick = math.floor((float(doc["effectiveAt"]) - epoch) * hz + 1e-3)
    return Slots(
        epoch_s=epoch,
        tick_hz=hz,
        period_ticks=int(doc["periodTicks"]),
        offset_ticks=int(doc["offsetTicks"]),
        body_ticks=int(doc["bodyTicks"]),
        from_ticks=int(tick),
    )


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
        self._chain: list[Slots] = []
        """The contract in force, then the one that takes over at its switch instant."""
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
        self._chain = [clock_of(doc["clock"])]
        if doc.get("pending"):
            self._chain.append(clock_of(doc["pending"]))
        self._read_at = self.clock()

    def _slots(self, t: float) -> list[Slots]:
        if not self._chain or self.clock() - self._read_at > self.refresh_s:
            self.refresh()
        if len(self._chain) > 1 and t >= self._chain[1].switch_s:
            self.refresh()  # the new contract is in force: take it (and any next) from the source
        return self._chain

    def next_slot(self, due: float | None = None) -> float:
        """The app's next slot start: the first at or after ``due`` (when its frame is due;
        by default just after the last slot handed out, one slot a frame) that this clock
        has not handed out yet, the old contract's slots before a switch instant and the
        new one's from it on. An app that asks late still gets that slot when it began
        less than half its body ago (the gate takes a request up to its grace, a body,
        late; the other half is the request's way there): a slow answer before it costs
        nothing rather than a frame. Earlier than that, the first slot after now."""
        chain = self._slots(self.clock())
        now = self.clock()  # after any read of the sidecar: a slot must not begin unseen
        after = math.nextafter(self._last, math.inf)
        if due is not None:
            after = max(after, due)
        elif self._last == -math.inf:
            after = now  # the first slot asked for: none is the app's yet
        after = max(after, now - (governing(chain, now) or chain[0]).body_s / 2)
        found = first_slot(self._slots(after), after)
        assert found is not None
        return found[0]

    def wait_for_slot(self, lead_s: float = 0.0, due: float | None = None) -> float:
        """Sleep until ``lead_s`` before the app's next slot (:meth:`next_slot`); returns
        that slot's start time. Successive calls return successive slots, never the same
        one twice. An app whose frames are due less often than its slots come (a harmonic
        table: docs/sidecar.md) passes ``due``, each frame's own time less the lead."""
        slot = self.next_slot(due)
        delay = slot - lead_s - self.clock()
        if delay > 0:
            self.sleep(delay)
        self._last = slot
        return slot
