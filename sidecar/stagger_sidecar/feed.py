"""The sidecar's end of the operator's slot feed (``stagger_operator.feed``): one request at a
time, held by the operator until this shard's contract changes, carrying what the sidecar
measures. A report that moves (a new phase estimate, another generation in force) is sent
at once: the request in flight is dropped and asked again with it.

The feed only speeds things up. Whatever goes wrong with it (no operator, a standby
replica, a network policy), the mounted ConfigMap still brings every contract, later; the
sidecar's metrics say whether it is connected (``stagger_slot_feed_up``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from pydantic import ValidationError

from stagger.core.contract import SlotAssignment

log = logging.getLogger("stagger.sidecar")

PHASE_MOVED_S = 0.001
"""A phase estimate this far from the one last sent is sent again at once."""
ANSWERED, STANDBY, FAILED = "answered", "standby", "failed"


@dataclass(frozen=True)
class Measured:
    """What the sidecar says of one stream it gates."""

    stream: str
    shard: int
    period_s: float
    phase_s: float | None  # None: not periodic (yet)
    spread_s: float | None
    generation: int | None  # the contract in force

    def moved_from(self, sent: Measured) -> bool:
        if (self.generation, self.phase_s is None) != (sent.generation, sent.phase_s is None):
            return True
        if self.phase_s is None or sent.phase_s is None:
            return False
        apart = abs(self.phase_s - sent.phase_s) % self.period_s
        return min(apart, self.period_s - apart) > PHASE_MOVED_S


def moved(now: list[Measured], sent: list[Measured]) -> bool:
    before = {(m.stream, m.shard): m for m in sent}
    return len(now) != len(sent) or any(
        (m.stream, m.shard) not in before or m.moved_from(before[(m.stream, m.shard)]) for m in now
    )


def request_body(have: str | None, measured: list[Measured]) -> dict[str, object]:
    return {
        "have": have,
        "arrivals": [
            {"stream": m.stream, "shard": m.shard, "phaseS": m.phase_s, "spreadS": m.spread_s}
            for m in measured
            if m.phase_s is not None and m.spread_s is not None
        ],
        "running": [
            {"stream": m.stream, "shard": m.shard, "generation": m.generation}
            for m in measured
            if m.generation is not None
        ],
    }


class FeedClient:
    """``measure`` says what the sidecar measures now; ``load`` takes contracts the feed
    brought. ``nudge`` (called on the sidecar's poll tick) sends a report that moved."""

    def __init__(
        self,
        url: str,
        *,
        measure: Callable[[], list[Measured]],
        load: Callable[[list[SlotAssignment]], None],
        on_connected: Callable[[bool], None] = lambda _: None,
        wait_s: float = 30.0,
        retry_s: float = 1.0,
        retry_max_s: float = 10.0,
    ) -> None:
        self.url, self.measure, self.load = url, measure, load
        self.on_connected = on_connected
        self.wait_s, self.retry_s, self.retry_max_s = wait_s, retry_s, retry_max_s
        self.have: str | None = None
        self.sent: list[Measured] = []
        self._moved = asyncio.Event()

    def nudge(self) -> None:
        if moved(self.measure(), self.sent):
            self._moved.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.wait_s + 10, connect=5)
        failures = standbys = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self._moved.clear()
                self.sent = self.measure()
                ask = asyncio.create_task(self._ask(session, request_body(self.have, self.sent)))
                nudged = asyncio.create_task(self._moved.wait())
                try:
                    await asyncio.wait({ask, nudged}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    ask.cancel()  # the sidecar stops: the request goes with it
                    raise
                finally:
                    nudged.cancel()
                if not ask.done():
                    ask.cancel()  # the report moved: ask again with it
                    continue
                outcome = ask.result()
                if outcome is ANSWERED:
                    failures = standbys = 0
                    continue
                if outcome is STANDBY:
                    # The Service sent us to a standby replica: soon, on a new connection,
                    # to find the Lease holder; less and less often while we keep reaching
                    # standbys (a failover: none holds it), so thousands of sidecars do not
                    # keep the replicas busy saying 503.
                    standbys += 1
                    delay = min(self.retry_max_s, self.retry_s / 4 * 2 ** min(standbys - 1, 6))
                else:
                    failures += 1
                    delay = min(self.retry_max_s, self.retry_s * 2 ** min(failures - 1, 6))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _ask(self, session: aiohttp.ClientSession, body: dict[str, object]) -> str:
        """One request: ANSWERED (ask again at once), STANDBY or FAILED."""
        try:
            async with session.post(self.url, params={"wait": f"{self.wait_s:g}"}, json=body) as r:
                if r.status == 204:
                    self.on_connected(True)
                    return ANSWERED
                if r.status != 200:
                    self.on_connected(False)
                    log.debug("slot feed answered %d: %s", r.status, (await r.text())[:200])
                    return STANDBY if r.status == 503 else FAILED
                answer = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            self.on_connected(False)
            log.debug("slot feed unreachable: %s", e)
            return FAILED
        self.on_connected(True)
        contracts = []
        try:
            for name, text in sorted(dict(answer["files"]).items()):
                if name.endswith(".json"):
                    contracts.append(SlotAssignment.model_validate_json(text))
            version = str(answer["version"])
        except (KeyError, TypeError, ValidationError, json.JSONDecodeError) as e:
            log.warning("slot feed sent what is not a slot contract: %s", e)
            return FAILED
        self.load(contracts)
        self.have = version
        return ANSWERED
