"""Where the pure gate meets time: admits a request, waits for its release, and accounts
for it when its answer is back. Shared by the HTTP and gRPC proxies.

Everything the sidecar holds is bounded: requests per stream (the gate's queue), requests in
all (``max_inflight``), and waiting is cancelled with the app's request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from stagger_sidecar.gate import Gate, Reason, Refusal, Release, StreamGate
from stagger_sidecar.ledger import Claim, Ledger
from stagger_sidecar.metrics import GateMetrics, StreamKey

MAX_MODELS_PER_STREAM = 32
"""Distinct model labels per stream; further names (an app's typos) share "other"."""


class Refused(Exception):
    """The sidecar answers this request itself, with ``reason`` and ``message``."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Held:
    """A request the gate holds until ``release.at`` (and, coordinated, until the ledger
    lets ``claim`` go)."""

    gate: StreamGate
    release: Release
    key: StreamKey
    claim: Claim | None = None


@dataclass
class Ticket:
    gate: StreamGate
    release: Release
    key: StreamKey
    released: float  # when it was actually forwarded
    claim: Claim | None = None


@dataclass(frozen=True)
class Coordination:
    """Coordinated release (:mod:`stagger_sidecar.ledger`): the GPU's shared ledger, how
    early before the GPU is predicted free a request may go, and the longest it waits past
    its slot (None: its slot's body)."""

    ledger: Ledger
    lead_s: float
    max_delay_s: float | None = None


class Keeper:
    def __init__(
        self,
        gate: Gate,
        metrics: GateMetrics,
        *,
        max_inflight: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        coordination: Coordination | None = None,
    ) -> None:
        self.gate = gate
        self.coordination = coordination
        self.bodies: dict[str, float] = {}
        """Measured body per model (Triton's statistics), for the ledger's predictions."""
        # Claim ids are unique across the node's sidecars (pods have their own pid spaces).
        self._claim_ids = (f"{uuid.uuid4().hex[:10]}-{n}" for n in itertools.count())
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.clock = clock
        self.sleep = sleep
        self.inflight = 0
        self.closing = False
        self.completions: Counter[StreamKey] = Counter()
        self.models: dict[str, set[str]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        """A call that is not gated (health, metadata, a stream of requests) starts: counted
        for drain and capacity until :meth:`end`. Raises :class:`Refused` when full or
        shutting down."""
        self._enter()

    def end(self) -> None:
        self._exit()

    def _enter(self) -> None:
        if self.closing:
            raise Refused(Reason.SHUTTING_DOWN, "the sidecar is shutting down")
        if self.inflight >= self.max_inflight:
            raise Refused(
                Reason.QUEUE_FULL, f"the sidecar holds {self.inflight} requests (its maximum)"
            )
        self.inflight += 1
        self._idle.clear()

    def _exit(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self._idle.set()

    def _model_label(self, stream: str, model: str) -> str:
        seen = self.models.setdefault(stream, set())
        if model in seen or len(seen) < MAX_MODELS_PER_STREAM:
            seen.add(model)
            return model
        return "other"

    @asynccontextmanager
    async def passing(self) -> AsyncIterator[None]:
        """A call that is not gated (health, metadata, ...): counted for drain and capacity."""
        self._enter()
        try:
            yield
        finally:
            self._exit()

    async def admit(self, stream: str | None, model: str) -> Ticket:
        """Wait for the request's release; raises :class:`Refused` when the gate refuses it."""
        entered = self.enter(stream, model)
        return entered if isinstance(entered, Ticket) else await self.wait(entered)

    def enter(self, stream: str | None, model: str) -> Ticket | Held:
        """The gate's decision, without waiting: a ticket when the request may go now
        (no task, no loop turn: an app that arrives at its slot pays nothing), else what
        :meth:`wait` waits on. Raises :class:`Refused`."""
        resolved = self.gate.resolve(stream)
        if isinstance(resolved, Refusal):  # no metrics: the name is the app's, unbounded
            raise Refused(resolved.reason, resolved.message)
        key = StreamKey(
            resolved.namespace,
            resolved.name,
            resolved.shard,
            self._model_label(resolved.name, model),
        )
        self._enter()
        now = self.clock()
        decision = resolved.admit(now)
        if isinstance(decision, Refusal):
            self._exit()
            self.metrics.refused(key, decision.reason)
            raise Refused(decision.reason, decision.message)
        claim = self._claim(resolved, decision, model, now)
        if decision.at <= now and (claim is None or self._goes(claim, now)):
            if claim is not None:
                self.metrics.coordinated(key, delay_s=0.0, forced=False)
            resolved.went(decision)
            return Ticket(resolved, decision, key, now, claim)
        return Held(resolved, decision, key, claim)

    def _claim(self, gate: StreamGate, release: Release, model: str, now: float) -> Claim | None:
        """The request's entry in the GPU's ledger; None when not coordinated (no ledger,
        or a request the gate forwards outside any slot)."""
        c = self.coordination
        clock = gate.timetable.clock(now)
        if c is None or release.slot is None or clock is None:
            return None
        busy = min(clock.body_s, self.bodies.get(model, clock.body_s))
        max_delay = clock.body_s if c.max_delay_s is None else c.max_delay_s
        return Claim(next(self._claim_ids), release.at, busy, release.at + max_delay)

    def _goes(self, claim: Claim, now: float) -> bool:
        assert self.coordination is not None
        return self.coordination.ledger.claim(claim, now) is None

    async def wait(self, held: Held) -> Ticket:
        try:
            # Timers may fire early (uvloop rounds to whole milliseconds): never release
            # before the slot, so wait again for what is left.
            while (delay := held.release.at - self.clock()) > 0:
                await self.sleep(delay)
            if held.claim is not None:
                ledger = self.coordination.ledger if self.coordination else None
                assert ledger is not None
                while (again := ledger.claim(held.claim, now := self.clock())) is not None:
                    await self.sleep(again - now)
        except BaseException:  # the app gave up while waiting: free its place and its slot
            held.gate.abandon(held.release)
            self.metrics.refused(held.key, Reason.ABANDONED)
            if held.claim is not None and self.coordination is not None:
                self.coordination.ledger.finish(held.claim.id)
            self._exit()
            raise
        now = self.clock()
        held.gate.went(held.release)
        if held.claim is None:  # a coordinated hold waits past its release on purpose
            self.metrics.released(held.key, lag_s=max(0.0, now - held.release.at))
        else:
            delay = max(0.0, now - held.release.at)
            self.metrics.coordinated(held.key, delay_s=delay, forced=now >= held.claim.deadline)
        return Ticket(held.gate, held.release, held.key, now, held.claim)

    def done(self, ticket: Ticket, failure: Reason | None = None) -> None:
        """The answer is back (``failure``: Triton could not give one)."""
        now = self.clock()
        missed = ticket.gate.finish(ticket.release, now)
        self._exit()
        if ticket.claim is not None and self.coordination is not None:
            self.coordination.ledger.finish(ticket.claim.id)
        if failure is not None:
            self.metrics.refused(ticket.key, failure)
            return
        self.completions[ticket.key] += 1
        self.metrics.completed(
            ticket.key,
            wait_s=ticket.released - ticket.release.arrived,
            service_s=now - ticket.released,
            late=ticket.release.late,
        )
        if missed:
            self.metrics.missed_slot(ticket.key)

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for those in flight; False if some remain."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
