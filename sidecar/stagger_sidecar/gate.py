"""The gate: when each inference request of a stream may go to Triton. Pure: the caller
passes the time (Unix seconds on the node's clock) and does the waiting.

A request takes the stream's next free slot: the first slot starting at or after its
arrival (or up to a grace before it: the larger of ``grace_s``, the slot's body and its
contract's late window, so a request that arrives while its stream's slot lasts is released
at once) and after the last slot this stream took. It goes at once when it arrives within
the slot's early window (``early_ticks`` before the start: half the free time before the
slot, which no other stream's body can use), else when that window opens: work-conserving
where it is safe (stagger.core.slots.release_windows). Two conditions call for
the stream's policy:

- **busy**: an earlier request of the stream is still waiting or in flight;
- **late**: its slot starts more than ``max_wait`` after it arrived.

A late request goes at once, not at ``max_wait``: it gets no slot either way, and holding
it would only add to its answer's time. Queued behind a request of its stream still held
for its slot, it goes right after that one: requests never overtake one another.

============  =====================================  ==================================
policy        busy                                   late
============  =====================================  ==================================
``wait``      queue for the next free slot           forward at once, ungated
              (at most ``max_queue`` per stream)
``drop``      refuse (reason ``busy``)               refuse (reason ``late``)
``pass``      forward at once, ungated               forward at once, ungated
============  =====================================  ==================================

A **late frame** is late at once (``max_wait`` 0): a request of an idle stream that
arrives after the slot its stream's requests usually take, past that slot's grace, by up
to half a period. Where they usually arrive is their arrival phase (stagger.core.phase);
before there is one, the start of the stream's latest slot if its app read the slot clock
lately (an app that does not is not judged late until it has a phase). Its app is on its
slots and was held up (a host stall, a slow frame before it); waiting a period for the
next slot would cost it the next frame, where going now overlaps the next stream's body
by at most its own. A stream whose usual arrival itself misses its slot is out of phase,
not late: it waits until its slot follows it, unless its answer would come too late.

**Answered after the next frame**: under ``wait`` and ``pass``, a request of an idle
stream not known to be aperiodic goes at once, ungated and counted late, when its slot is
further away than all but ``app_slack_share`` of its slack: the frame period less the time
the stream's answers take and less ``app_way_s``, the way between the app and the gate,
which the gate does not see. What the wait leaves is for the app's own work on each answer
before its next capture and for an answer slower than usual, which the gate does not see
either. Going now, it must still be answered within its slack. Such a slot was not
chosen for this stream's arrivals (an app on its own clock before its slot follows it, a
camera that restarted on another clock, an app's first frame held up past its slot), and
waiting for it would cost the app this frame or the next, for the seconds until the
operator re-times the GPU; going now costs the other streams' slots an overlap, as random
phases do. Before enough requests arrived to tell, the stream is taken at its word,
periodic at the fps it declared, unless it sends faster (a request within half a period of
the one before: a burst, which waits as before). A slot-clock app's first frame, a few ms
past its slot's grace, otherwise waited a whole period and was lost (runs 58 and 64 of
docs/benchmarks.md).
A stream answered too slowly for its frame period either way waits for its slot: going
early would gain it nothing. Under ``drop`` such a request waits for its slot too: refused,
it would not save the next frame, which would be refused the same way, every frame until
the slot follows (for good where it cannot). Where the slot follows the stream's arrivals
(its contract's ``arrival_ticks``, the phase the operator re-timed it to, and the stream's
phase still within ``FOLLOWED_DRIFT_S`` of it), its answers are taken to take what the slot
promises, its body, not what they measured: the operator chose the whole table at once,
each wait within the hold the stream's ``latencyMs`` allows, and its answers are slow only
while other streams' bodies run in its slot. Judged by answers had while the GPU was backed
up, every gate's hold shrank to a few ms, most frames went at once, and the answers stayed
slow: transparent mode answered as random phases did (run 107 of docs/benchmarks.md, on an
H100 whose 8 streams needed 0.98 of each second). A followed slot further away than that
hold allows (a table with no better place for it: cameras that capture together) still
sends the frame at once.

The time its answers take is the 90th percentile of its latest ``ANSWER_WINDOW`` answers
since its requests came periodic: earlier ones include a model's first, cold answers (100
ms for a 60 ms body seen here), which would otherwise count as the stream's own for 16
frames. Before that, it is the stream's latest answer (cold answers come first, so they
stop counting at the first warm one), or its slot's body before any came back. Taken as the
body, a 60 ms model's frame 10.5 ms past a 5 ms body's slot waited for the next slot and
was answered 155 ms after capture, after its camera's next frame (3 runs in 25 of a real-
sidecar test on a loaded 2-core machine). Taken as its quickest answer, a camera whose
first frame was answered in a GPU's quiet moment waited 50 ms for its slot, was answered in
58 ms among eight time-sliced streams and lost every other frame for 1.6 s, until 8
arrivals judged it periodic (run 97).

Without ``max_wait`` a request that finds its stream idle waits at most one period, except
in a stream whose requests are not periodic (event-driven, variable fps: its arrival phase
says so, stagger.core.phase): waiting for a slot buys such a stream nothing, so it waits at
most ``aperiodic_max_wait_share`` of a period: a request whose slot is further away goes
at once, ungated (the ``late`` rules above, with that bound for ``max_wait``). So is a
stream whose last two requests each came after a pause in which a periodic stream is
forgotten: it sends events seconds apart, never 8 together to judge. Requests forwarded
outside a slot are counted late.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from stagger.core.api import GatePolicy
from stagger.core.contract import SlotAssignment
from stagger.core.phase import (
    APP_SLACK_SHARE,
    APP_WAY_S,
    MIN_SAMPLES,
    PhaseEstimate,
    PhaseTracker,
    hold_limit_s,
    quiet_after_s,
    still_followed,
)
from stagger.core.slotclock import SlotClock, Timetable, slot_starts

ANSWER_WINDOW = 16
"""How many of a stream's latest answers say how long its answers take."""
COLD_ANSWERS = 2
"""A stream's first answers come from a model just loaded (95-109 ms where warm ones take
60 ms in the test suite's model): any later answer replaces them."""
JUDGE_EVERY = 8
"""Arrivals between two judgements of a stream's phase (each a pass over its window: 37 µs
warm, 133 µs in a live sidecar, so it is made after an answer, off the next request's way:
:meth:`StreamGate.finish`)."""


class Reason(StrEnum):
    """Why a request was refused (the ``reason`` label of the dropped counter)."""

    BUSY = "busy"
    LATE = "late"
    QUEUE_FULL = "queue_full"
    NO_SLOT = "no_slot"
    UNKNOWN_STREAM = "unknown_stream"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    SHUTTING_DOWN = "shutting_down"
    ABANDONED = "abandoned"
    """The app gave up (closed, reset, cancelled) while its request was held: nobody to
    answer; its slot is given back."""


@dataclass(frozen=True)
class GateConfig:
    policy: GatePolicy = GatePolicy.WAIT
    max_wait_s: float | None = None
    grace_s: float = 0.002
    grace_body_fraction: float = 1.0
    """A request up to this share of its slot's body late still takes the slot: released at
    once, its body overlaps the next slot by at most that much, where waiting a whole period
    would cost a camera's frame. Near saturation slots are a few ms long (6.7 ms for 15
    streams at 10 fps), as long as the jitter of a 1 MB frame's way to the gate: at half the
    body, 16-23 % of frames sent on their slot's start missed it on an H200 under MPS."""
    max_queue: int = 4
    aperiodic_max_wait_share: float | None = 0.5
    """A stream whose arrivals are not periodic waits at most this share of a period
    (None: as long as any other)."""
    app_way_s: float = APP_WAY_S
    """The way between the app and the gate, there and back, which the gate does not see.
    On an H200 host a 1 MB frame took 3.2-4.7 ms from the camera to the model through the
    sidecar and about 1 ms back (bench/gpu runs 54-58, the loop's p50 before and after the
    model)."""
    app_slack_share: float = APP_SLACK_SHARE
    """Of a request's slack (its frame period less its answer and ``app_way_s``), the share
    a wait for its slot leaves its app: for its own work on each answer before its next
    capture (NMS, tracking: 8 ms in the GPU bench's cameras) and for an answer slower than
    the 90th percentile, neither of which the gate sees. Held to the edge of the slack,
    frames lost the next one each time their answer came in slower than that (runs 66-69
    and 93: 4-11 frames of a camera in the seconds before its slot followed it)."""


@dataclass(frozen=True)
class Release:
    """Forward the request at ``at``. ``slot`` is the start of the slot it took (None when
    it goes ungated), ``period`` that slot's period, ``arrived`` when the gate saw it."""

    at: float
    arrived: float
    slot: float | None
    period: float
    late: bool

    @property
    def wait(self) -> float:
        return max(0.0, self.at - self.arrived)


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    message: str


@dataclass
class StreamGate:
    """One stream's slot timetable and what it has taken."""

    name: str
    config: GateConfig
    namespace: str = ""
    shard: int = 0
    timetable: Timetable = field(default_factory=Timetable)
    last_slot: float = -math.inf
    """The latest slot taken: by a request held for it, or by one that went."""
    pending: int = 0  # admitted and not yet finished: waiting or in flight
    _held_slots: list[float] = field(default_factory=list)  # taken, their requests not gone
    _went_slot: float = -math.inf  # the latest slot a request went in (its body ran)
    _last_arrival: float = -math.inf
    _last_gap: float = math.inf
    """How long before the latest request the one before it came (none: forever)."""
    _clock_read_at: float = -math.inf
    """When its app last read the slot clock (``clock_document``)."""
    in_force: tuple[int, int] | None = None  # (offset, period) last seen in force
    arrivals: PhaseTracker | None = None
    """Where in the frame period this stream's requests arrive (its app's own clock)."""
    _judgement: tuple[int, PhaseEstimate] | None = None  # (arrivals seen when judged, phase)
    _answers: deque[float] = field(default_factory=lambda: deque(maxlen=ANSWER_WINDOW))
    """Seconds from each of the latest releases to its answer, since its requests came
    periodic."""
    _latest_answer: float = math.inf
    """Seconds from release to answer of the latest request released at its slot, or of
    one that went at once before any warm one was (none: infinite)."""
    _latest_at_slot: bool = False
    """Whether ``_latest_answer`` is a warm answer to a request released at its slot."""
    _answered: int = 0
    """Answers it has had, its apps' and tables' before included (the first are cold)."""
    _answers_under: tuple[int, int] | None = None
    """The slots (offset, period) its answers were had under: a re-timing forgets them."""
    _answers_since: float = -math.inf
    """Answers to requests released before this instant (under other slots) do not count."""

    def load(self, contract: SlotAssignment, now: float) -> None:
        self.timetable = self.timetable.with_contract(contract, now)
        self.namespace, self.shard = contract.namespace, contract.shard
        period, epoch = contract.frame_period_s, contract.epoch.timestamp()
        if self.arrivals is None or (self.arrivals.period_s, self.arrivals.epoch_s) != (
            period,
            epoch,
        ):  # phases at another period or from another epoch mean nothing here
            self.arrivals = PhaseTracker(period, epoch_s=epoch)
            self._judgement = None

    def _forget_app(self) -> None:
        """A first request, or the first after a pause in which the stream was forgotten
        (its app stopped): what was judged of the app before, its periodicity and its
        answers, is another app's (run 98: the bench's loop cameras' 16 ms answers stood for
        a new camera answered in 58 ms). Its latest answer is kept: the best guess until
        its own comes back."""
        self._judgement = None
        self._answers.clear()

    def _answers_for(self, current: SlotAssignment | None) -> None:
        """Its answers were had under other slots (a re-timing took effect): they are
        forgotten, and until one comes back under these its answers are taken to take its
        slot's body. Answers under the old table say what the old table gave: where a
        followed table settles cameras that overlapped before it (run 98, time-sliced at 8),
        their 60 ms answers would send the frames of every camera more than 23 ms from its
        new slot at once, ungated, and those keep everyone's answers slow, a table in which
        90 % of frames share the model; held, they are answered in the body's time."""
        if current is None:
            return
        slots = (current.offset_ticks, current.period_ticks)
        if slots == self._answers_under:
            return
        if self._answers_under is not None:
            self._answers.clear()
            self._latest_answer, self._latest_at_slot = math.inf, False
            self._answers_since = current.effective_at.timestamp()
        self._answers_under = slots

    def arrival(self, now: float) -> PhaseEstimate | None:
        """The stream's arrival phase at ``now`` (None before its first contract; no phase
        once its requests stopped)."""
        return self.arrivals.estimate(now) if self.arrivals is not None else None

    def retimed(self, now: float) -> bool:
        """True once for each re-timing: a contract with another offset or period than the
        one in force before it has taken effect since the last call."""
        current = self.timetable.current(now)
        if current is None:
            return False
        seen = (current.offset_ticks, current.period_ticks)
        before, self.in_force = self.in_force, seen
        return before is not None and before != seen

    def clock_document(self, now: float, count: int) -> dict[str, object] | None:
        """The slot clock as apps read it: the next slot starts and the clock parameters to
        compute later ones (``stagger.client``), with any contract that takes over later."""
        table = self.timetable.at(now)
        current, upcoming = table.current(now), table.upcoming(now)
        if current is None and upcoming is None:
            return None
        self._clock_read_at = now

        def params(c: SlotAssignment) -> dict[str, object]:
            return {
                "epoch": c.epoch.timestamp(),
                "tickHz": c.tick_hz,
                "periodTicks": c.period_ticks,
                "offsetTicks": c.offset_ticks,
                "bodyTicks": c.body_ticks,
                "generation": c.generation,
                "effectiveAt": c.effective_at.timestamp(),
                "effectiveTick": c.effective_tick,
            }

        shown = current or upcoming
        assert shown is not None
        clock = SlotClock.of(shown)
        return {
            "stream": self.name,
            "namespace": self.namespace,
            "shard": self.shard,
            "now": now,
            "periodS": clock.period_s,
            "bodyS": clock.body_s,
            "next": slot_starts(table.clocks(), now, count),
            "clock": params(shown),
            "pending": params(upcoming) if current is not None and upcoming is not None else None,
            "arrival": _arrival_document(self.arrival(now)),
        }

    def admit(self, now: float) -> Release | Refusal:
        if self.arrivals is not None:
            self.arrivals.observe(now)
            if self.arrivals.observed == 1:
                self._forget_app()
        previous, self._last_arrival = self._last_arrival, now
        gap_before, self._last_gap = self._last_gap, now - previous
        table = self.timetable = self.timetable.at(now)
        self._answers_for(table.current(now))
        clock = table.clock(now)
        if clock is None:
            return Refusal(Reason.NO_SLOT, f"stream {self.name} has no slot assignment yet")
        if table.current(now) is None and clock.switch_s - now > clock.period_s:
            # A shard that joins a GPU by re-timing it starts when every sidecar there has
            # read the new table (the operator's STAGGER_CONTRACT_PROPAGATION_S): holding a
            # request that long would only stall the app; a clear refusal lets it retry.
            return Refusal(
                Reason.NO_SLOT,
                f"stream {self.name} has no slot yet: its first slot starts when its GPU's "
                f"new slot table takes over, in {clock.switch_s - now:.1f} s",
            )
        policy = self.config.policy
        if self.pending and policy is GatePolicy.DROP:
            return Refusal(
                Reason.BUSY, f"stream {self.name}: the previous request is still in flight"
            )
        if self.pending and policy is GatePolicy.PASS:
            return self._take(Release(now, now, None, clock.period_s, late=True))
        if self.pending >= self.config.max_queue:
            return Refusal(
                Reason.QUEUE_FULL,
                f"stream {self.name}: {self.pending} requests already wait for slots "
                f"(max {self.config.max_queue}); the app sends faster than the stream's fps",
            )
        # A slot that began at most its late window (or the grace) ago is still this
        # request's; a window across a pending switch is not used (the next table's slots
        # may begin right at the switch instant).
        late = self.grace_s(clock)
        if table.upcoming(now) is None:
            late = max(late, clock.late_s)
        earliest = max(now - late, math.nextafter(self.last_slot, math.inf))
        found = table.next_slot(earliest)
        assert found is not None  # the last contract's slots never end
        slot, owner = found
        # Released from the start of the slot's early window, never before its contract
        # took effect (slots.release_windows: no other body can be running then).
        opens = max(slot - owner.early_s, owner.switch_s)
        limit = self.config.max_wait_s
        share = self.config.aperiodic_max_wait_share
        if (
            limit is None
            and share is not None
            and (self.aperiodic() or self._sends_events(now - previous, gap_before))
        ):
            limit = share * owner.period_s
        missed = None if self.pending else self._missed_slot(now, slot, late, table)
        if missed is not None:
            # A late frame, not a stream out of phase: waiting for the next slot would cost
            # its app the next frame, so the late rules apply at once.
            limit = 0.0
        after_next = (
            limit is None
            and policy is not GatePolicy.DROP
            and not self.pending
            and self._frames_at(now - previous)
            and self._answered_after_next_frame(slot - now, owner)
        )
        if after_next:  # answered after the app's next frame: the late rules at once
            limit = 0.0
        if limit is not None and slot - now > limit:
            if policy is GatePolicy.DROP:
                if missed is not None:
                    detail = (
                        f"and this request came {(now - missed) * 1e3:.1f} ms after the slot "
                        "its requests usually take"
                    )
                elif self.config.max_wait_s is None:
                    detail = "and its requests are not periodic"
                else:
                    detail = f"beyond maxWaitMs {limit * 1e3:g}"
                return Refusal(
                    Reason.LATE,
                    f"stream {self.name}: the next free slot is {(slot - now) * 1e3:.1f} ms "
                    f"away, {detail}",
                )
            # At once, but never before a request of the stream admitted earlier and still
            # held for its slot: requests do not overtake one another.
            at = max([now, *(math.nextafter(s, math.inf) for s in self._held_slots)])
            return self._take(Release(at, now, None, owner.period_s, late=True))
        self.last_slot = slot
        self._held_slots.append(slot)
        return self._take(Release(max(opens, now), now, slot, owner.period_s, late=False))

    @property
    def frame_s(self) -> float:
        """The app's frame period: how soon its next frame comes."""
        return self.arrivals.period_s if self.arrivals is not None else math.inf

    def follows_arrivals(self, now: float) -> bool:
        """Whether the slot in force at ``now`` follows the stream's arrivals
        (:func:`stagger.core.phase.still_followed`)."""
        clock = self.timetable.clock(now)
        return clock is not None and self._followed(clock)

    def _followed(self, clock: SlotClock) -> bool:
        return still_followed(clock.arrival_ticks, clock.tick_hz, self._judged())

    def _answered_after_next_frame(self, wait_s: float, clock: SlotClock) -> bool:
        """Waiting ``wait_s`` for its slot would use more of the request's slack than its app
        can spare (all but ``app_slack_share`` of it), while going now it would be answered
        before the app's next frame. The answer is the one its slot promises, its body,
        where the slot follows the stream's arrivals
        (:func:`stagger.core.phase.still_followed`; the module's docstring says why), else
        the stream's measured one (:meth:`answer_s`)."""
        hold = hold_limit_s(
            self.frame_s,
            clock.body_s if self._followed(clock) else self.answer_s(clock),
            app_way_s=self.config.app_way_s,
            app_slack_share=self.config.app_slack_share,
        )
        return hold is not None and wait_s > hold

    def answer_s(self, clock: SlotClock) -> float:
        """How long this stream's answers take from release at a slot: the 90th percentile
        of its latest ``ANSWER_WINDOW`` there since its requests came periodic (a frame is
        lost by its own answer, not a typical one); before that its latest answer (a
        model's cold answers come first), or its slot's body before any came back. Only
        answers under the slots in force count (:meth:`_answers_for`), and answers to
        requests that went at once only until a warm one at a slot came (:meth:`finish`)."""
        if not self._answers:
            return self._latest_answer if math.isfinite(self._latest_answer) else clock.body_s
        ordered = sorted(self._answers)  # 16 at most: cheaper than an interpolated quantile
        return ordered[math.ceil(0.9 * len(ordered)) - 1]

    def periodic(self) -> bool:
        """Enough requests arrived to tell, and they come at the frame period."""
        e = self._judged()
        return e is not None and e.samples >= MIN_SAMPLES and e.periodic

    def _usual_arrival(self, now: float, table: Timetable) -> float | None:
        """When this request would usually have arrived, at most half a period before now:
        by the stream's phase; before it has one, the start of its latest slot where its app
        reads the slot clock (it aims at its slots: runs 58, 64 and 65 each lost a camera's
        first or sixth frame, held up past its slot and then a period). None otherwise: a
        stream judged not periodic, one not yet judged whose app does not read the clock
        (a frame period after its previous request was tried: random arrivals read as late
        frames), or a request early for that instant."""
        e = self._judged()
        if self.arrivals is None or e is None:
            return None
        if e.samples >= MIN_SAMPLES:
            if e.phase_s is None or not e.periodic:
                return None
            since = (now - self.arrivals.epoch_s - e.phase_s) % e.period_s
            usual = now - since
        elif self.reads_slot_clock(now):
            found = table.next_slot(now - self.frame_s / 2)
            if found is None or found[0] > now:
                return None  # before its slot: early, not late
            usual = found[0]
        else:
            return None
        return usual if 0 <= now - usual <= self.frame_s / 2 else None

    def reads_slot_clock(self, now: float) -> bool:
        """Its app read the slot clock lately, so its requests aim at its slots: within the
        pause after which a quiet stream is forgotten (``stagger.client`` reads it before
        its first frame and every few seconds; another app on the same sidecar later, as in
        the GPU bench, does not inherit the judgement)."""
        return now - self._clock_read_at <= quiet_after_s(self.frame_s)

    def _frames_at(self, since_previous_s: float) -> bool:
        """Whether the app's next frame comes a frame period after this request: its
        requests are periodic; or too few arrived to tell and it does not send faster than
        its declared fps (taken at its word: the request before came at least half a period
        earlier, or none did)."""
        if self.periodic():
            return True
        return not self.aperiodic() and since_previous_s >= self.frame_s / 2

    def _sends_events(self, gap_s: float, gap_before_s: float) -> bool:
        """Whether the stream sends events rather than frames: this request and the one
        before it each came after a pause in which a periodic stream is forgotten (the
        first request of all follows none). Such a stream is never judged from 8 requests
        (each pause forgets them), so without this it would be taken at its word and wait
        up to a period less its answer for each event. A camera that restarts is not among
        them: the frame before its pause came a frame period after the one before."""
        quiet = quiet_after_s(self.frame_s)
        return math.isfinite(gap_before_s) and gap_before_s > quiet and gap_s > quiet

    def aperiodic(self) -> bool:
        """Enough requests arrived to tell, and they are not periodic at the frame period."""
        e = self._judged()
        return e is not None and e.samples >= MIN_SAMPLES and not e.periodic

    def _judged(self) -> PhaseEstimate | None:
        """The arrival phase, estimated again every ``JUDGE_EVERY`` arrivals, and at each
        arrival until there are enough to judge (those estimates are short). The next
        arrival's is made after an answer where it falls due (:meth:`_judge_ahead`); a
        request makes it itself only where no answer came in between."""
        tracker = self.arrivals
        if tracker is None:
            return None
        if self._judgement is None or _due(self._judgement, tracker.observed):
            self._judge(tracker)
        assert self._judgement is not None
        return self._judgement[1]

    def _judge(self, tracker: PhaseTracker) -> None:
        self._judgement = (tracker.observed, tracker.estimate())

    def _judge_ahead(self) -> None:
        """The judgement the next arrival would make, made now: after an answer, before the
        next request comes (an estimate costs a pass over the window)."""
        tracker, judged = self.arrivals, self._judgement
        if tracker is None or judged is None or judged[1].samples < MIN_SAMPLES:
            return  # short estimates, made as requests come
        if tracker.observed - judged[0] >= JUDGE_EVERY - 1:
            self._judge(tracker)

    def _missed_slot(self, now: float, slot: float, late: float, table: Timetable) -> float | None:
        """The slot this request missed, when it is a late frame: a request at the instant
        the stream's requests usually arrive (at most half a period before now) would have
        taken an earlier slot than ``slot`` (that instant: :meth:`_usual_arrival`). None
        when it is not a late frame: an early request, a stream not periodic, or one whose
        usual arrival already misses its slot (out of phase, until its slot follows it:
        that one waits as before)."""
        usual = self._usual_arrival(now, table)
        if usual is None:
            return None
        found = table.next_slot(max(usual - late, math.nextafter(self.last_slot, math.inf)))
        return found[0] if found is not None and found[0] < slot else None

    def grace_s(self, clock: SlotClock) -> float:
        """How late after a slot's start a request still takes that slot."""
        return max(self.config.grace_s, self.config.grace_body_fraction * clock.body_s)

    def _take(self, release: Release) -> Release:
        self.pending += 1
        return release

    def went(self, release: Release) -> None:
        """The request was forwarded: its slot is used, whatever happens to it next."""
        if release.slot is not None and release.slot in self._held_slots:
            self._held_slots.remove(release.slot)
            self._went_slot = max(self._went_slot, release.slot)

    def abandon(self, release: Release) -> None:
        """The app gave up while the request was held: nothing ran in its slot, so the slot
        is given back. Later requests keep theirs; the next one may take the slot if no
        later slot is still held (a request never goes before one admitted earlier)."""
        self.pending = max(0, self.pending - 1)
        if release.slot is not None and release.slot in self._held_slots:
            self._held_slots.remove(release.slot)
            self.last_slot = max([self._went_slot, *self._held_slots])

    def finish(self, release: Release, now: float) -> bool:
        """The request's response is back. True when it overran its slot: it finished
        after the stream's next slot began."""
        self.pending = max(0, self.pending - 1)
        self._answered += 1
        overran = release.slot is not None and now > release.slot + release.period
        if release.at < self._answers_since:  # released under the slots of before
            return overran
        took = max(0.0, now - release.at)
        # The rule above asks how long a request that waits for its slot is answered: one
        # that went at once may have found the GPU free where its slot is not (run 99: a
        # camera answered in 12 ms that way waited 54 ms for its slot again, was answered
        # there in 59 ms and lost the next frame, four times). Such an answer counts only
        # where no warm answer at a slot came since the slots or the model changed.
        at_slot = release.slot is not None
        if at_slot or not self._latest_at_slot:
            self._latest_answer = took
            self._latest_at_slot = at_slot and self._answered > COLD_ANSWERS
        if at_slot and self.periodic():
            self._answers.append(took)
        self._judge_ahead()
        return overran


def _due(judgement: tuple[int, PhaseEstimate], seen: int) -> bool:
    """A judgement made at ``judgement[0]`` arrivals is due again at ``seen``:
    ``JUDGE_EVERY`` arrivals later (or the stream started afresh since), or at any new
    arrival while there were too few to judge (a short estimate)."""
    made, estimate = judgement
    if not 0 <= seen - made < JUDGE_EVERY:
        return True
    return estimate.samples < MIN_SAMPLES and seen != made


def _arrival_document(e: PhaseEstimate | None) -> dict[str, object] | None:
    if e is None:
        return None
    return {
        "periodS": e.period_s,
        "phaseS": e.phase_s,
        "spreadS": e.spread_s,
        "concentration": round(e.concentration, 4),
        "samples": e.samples,
        "periodic": e.periodic,
    }


class Gate:
    """Every stream this sidecar gates, by name; ``default`` serves requests that name none."""

    def __init__(self, config: GateConfig, default: str | None = None) -> None:
        self.config = config
        self.default = default
        self.streams: dict[str, StreamGate] = {}
        if default is not None:  # known before its slot file is read: "no slot yet", not unknown
            self.streams[default] = StreamGate(default, config)

    def load(self, contract: SlotAssignment, now: float) -> StreamGate:
        gate = self.streams.get(contract.stream)
        if gate is None:
            gate = self.streams[contract.stream] = StreamGate(contract.stream, self.config)
        gate.load(contract, now)
        return gate

    def resolve(self, named: str | None) -> StreamGate | Refusal:
        """The stream a request belongs to: the one it names, else the default."""
        name = named or self.default
        if name is None:
            if len(self.streams) == 1:
                return next(iter(self.streams.values()))
            return Refusal(
                Reason.UNKNOWN_STREAM,
                "this sidecar gates several streams: name one in the stagger-stream "
                f"header or metadata (one of {', '.join(sorted(self.streams))})",
            )
        gate = self.streams.get(name)
        if gate is None:
            known = ", ".join(sorted(self.streams)) or "none yet"
            return Refusal(Reason.UNKNOWN_STREAM, f"unknown stream {name!r} (known: {known})")
        return gate
