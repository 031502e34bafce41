"""The slot feed: each sidecar holds a request to the operator that is answered as soon as
its slot contract changes, and says on it what the sidecar measures (where its stream's
requests arrive, which generation it runs).

Why: the kubelet updates a mounted ConfigMap in a running pod only when it re-syncs the pod
(up to 90 s), and the operator reads the sidecars' metrics every 30 s. A table re-timed to
follow the cameras would take over about two and a half minutes after a camera starts. Over
the feed a contract reaches a connected sidecar within milliseconds, so a table that
changes only connected sidecars' releases switches ``effective_after_s`` ahead, and a
sidecar's first phase estimate reaches the planner at once.

The ConfigMap stays the contract of record: the feed serves what the operator has written,
never before the write succeeded, and a sidecar that cannot reach the feed reads its file as
before (its table then waits for the kubelet). Only the Lease holder answers, and before its
first plan it holds requests until that plan is published; a standby replica says 503 and
the sidecar asks again (soon, then less often while no replica holds the Lease).

Protocol (JSON over HTTP; one request per shard pod at a time)::

    POST /v1/slots/{namespace}/{configmap}?wait=S
    {"have": "<version>" | null,
     "arrivals": [{"stream": "cam", "shard": 0, "phaseS": 0.0123, "spreadS": 0.0004}],
     "running": [{"stream": "cam", "shard": 0, "generation": 7}]}

    200 {"version": "<version>", "files": {"slot.json": "..."}}   the ConfigMap differs
                                                                   from ``have`` (at once,
                                                                   or within S seconds)
    204                                                            S passed, no change (or
                                                                   no plan yet)
    404 / 503                                                      not a slot ConfigMap the
                                                                   operator wrote / standby

A sidecar reports only its own shard (the contract in that ConfigMap); anything else is
ignored. What it reports moves slots only within the planner's rules (non-overlap, pins,
``follow_min_gain_ms``): a wrong phase costs its GPU's streams wait, never an overlap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import resource
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from stagger.core.contract import CONTRACT_FILE, SlotAssignment

log = logging.getLogger("stagger.operator")

ShardKey = tuple[str, str, int]  # namespace, stream, shard
ConfigMapKey = tuple[str, str]  # namespace, name

MAX_REQUEST_BYTES = 16 * 1024
MAX_WAIT_S = 60.0
# The feed holds a connection per shard pod; the operator's API clients, watches and
# metrics take about this many other files.
OPEN_FILES_SPARE = 256
PHASE_MOVED_S = 0.001
"""A reported phase this far from the last one is news (estimates move by a fraction of a
millisecond between reports)..."""
PHASE_JUMPED_S = 0.005
"""...and this far, a jump (a camera restarted) to plan for at once; less is drift, which
the planner may take up a little later with other streams' (``on_report(urgent=False)``)."""


class _Message(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ArrivalReport(_Message):
    stream: str
    shard: int = Field(ge=0)
    phase_s: float = Field(allow_inf_nan=False)
    spread_s: float = Field(ge=0, allow_inf_nan=False)


class RunningReport(_Message):
    stream: str
    shard: int = Field(ge=0)
    generation: int = Field(ge=1)


class FeedRequest(_Message):
    have: str | None = None
    arrivals: list[ArrivalReport] = Field(default_factory=list, max_length=32)
    running: list[RunningReport] = Field(default_factory=list, max_length=32)


def version_of(data: Mapping[str, str]) -> str:
    """A ConfigMap's data, hashed: equal data, equal version, whoever wrote it."""
    text = json.dumps(dict(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class _Entry:
    version: str
    files: dict[str, str]
    shard: ShardKey
    period_s: float  # the shard's frame period: phases are modulo it


@dataclass(frozen=True)
class Report:
    """What a shard's sidecar last said over the feed."""

    arrival: tuple[float, float] | None  # phase, spread (None: not periodic)
    generation: int | None


@dataclass
class _Sidecar:
    """What the feed knows of the sidecar that asks for one ConfigMap."""

    first: float  # when it first asked
    last: float = -math.inf  # when a request of it last ended
    open: int = 0  # its requests being held now
    report: Report | None = None


class SlotFeed:
    """The feed's state. ``publish`` and the readers (``connected``, ``reports``,
    ``awaiting``) are called from the controller's thread; requests are served on the event
    loop. A shard that moves runs two copies for a while, each with its own ConfigMap: the
    readers describe the copy whose sidecar asked first most recently, the new one."""

    def __init__(
        self,
        *,
        grace_s: float = 2.0,
        on_report: Callable[[bool], None] = lambda urgent: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_s = grace_s
        self.on_report = on_report
        self.monotonic = monotonic
        self._serving = False  # the Lease holder answers; a standby says 503
        self._lock = threading.Lock()
        self._entries: dict[ConfigMapKey, _Entry] = {}
        self._published = False
        self._sidecars: dict[ConfigMapKey, _Sidecar] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: dict[ConfigMapKey, asyncio.Event] = {}
        # Set (and replaced) on the event loop by the first publish and when this replica
        # stops serving: what requests held before the first plan wait for.
        self._hold_ends = asyncio.Event()
        self.requests = 0  # served since start, whatever the answer

    @property
    def serving(self) -> bool:
        return self._serving

    @serving.setter
    def serving(self, serving: bool) -> None:
        """A replica that stops serving (it lost the Lease, or it is shutting down) answers
        the requests it holds at once, as a standby: held until their wait ran out (30 s),
        their sidecars would reach the new Lease holder only then, and a shutdown would
        wait for them before it releases the Lease."""
        was, self._serving = self._serving, serving
        if was and not serving and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stand_down)

    # -- the controller's side -----------------------------------------------------------

    def publish(self, configmaps: Mapping[ConfigMapKey, Mapping[str, str]]) -> None:
        """Every slot ConfigMap as written now (data by namespace and name); waiting
        requests whose ConfigMap changed are answered."""
        changed: list[ConfigMapKey] = []
        with self._lock:
            entries: dict[ConfigMapKey, _Entry] = {}
            for key, data in configmaps.items():
                entry = self._entry(key, data)
                if entry is not None:
                    entries[key] = entry
                    changed += [key] if entry is not self._entries.get(key) else []
            changed += [k for k in self._entries if k not in entries]
            first, self._entries, self._published = not self._published, entries, True
            for gone in [k for k in self._sidecars if k not in entries]:
                del self._sidecars[gone]
        if self._loop is not None:
            if first:
                self._loop.call_soon_threadsafe(self._broadcast)
            if changed:
                self._loop.call_soon_threadsafe(self._notify, changed)

    def update(self, key: ConfigMapKey, data: Mapping[str, str]) -> None:
        """One slot ConfigMap just written: its waiting request is answered now, not after
        the rest of the reconcile's writes (a re-timing switches seconds ahead)."""
        with self._lock:
            entry = self._entry(key, data)
            if entry is None or entry is self._entries.get(key):
                return
            self._entries = {**self._entries, key: entry}
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._notify, [key])

    def _entry(self, key: ConfigMapKey, data: Mapping[str, str]) -> _Entry | None:
        """The feed's entry for a ConfigMap's data: the one it has where the data is the
        same, None where it is not a slot contract."""
        old = self._entries.get(key)
        if old is not None and old.files == data:
            return old
        try:
            c = SlotAssignment.model_validate_json(data[CONTRACT_FILE])
        except (KeyError, ValidationError):
            return None
        shard = (c.namespace, c.stream, c.shard)
        return _Entry(version_of(data), dict(data), shard, c.frame_period_s)

    def connected(self) -> frozenset[ShardKey]:
        """Shards whose sidecar holds a feed request now, or held one within ``grace_s``:
        a contract published now reaches them within about a second."""
        now = self.monotonic()
        return frozenset(k for k, sc in self._current().items() if self._fresh(sc, now))

    def reports(self) -> dict[ShardKey, Report]:
        """What the connected shards' sidecars last reported."""
        now = self.monotonic()
        return {
            k: sc.report
            for k, sc in self._current().items()
            if sc.report is not None and self._fresh(sc, now)
        }

    def awaiting(self, settle_s: float) -> tuple[frozenset[ShardKey], float | None]:
        """Connected shards whose sidecar first asked less than ``settle_s`` ago and has
        reported no arrival phase yet (its app has just started: 8 requests give the first
        estimate), and in how many seconds the first of them stops counting."""
        now = self.monotonic()
        waiting = {
            k: sc.first + settle_s - now
            for k, sc in self._current().items()
            if now - sc.first < settle_s
            and self._fresh(sc, now)
            and (sc.report is None or sc.report.arrival is None)
        }
        return frozenset(waiting), min(waiting.values()) if waiting else None

    def _current(self) -> dict[ShardKey, _Sidecar]:
        """Per shard, the sidecar of its newest copy."""
        out: dict[ShardKey, _Sidecar] = {}
        with self._lock:
            for key, sc in self._sidecars.items():
                entry = self._entries.get(key)
                if entry is not None and (
                    entry.shard not in out or sc.first > out[entry.shard].first
                ):
                    out[entry.shard] = replace(sc)
        return out

    def _fresh(self, sc: _Sidecar, now: float) -> bool:
        return sc.open > 0 or now - sc.last <= self.grace_s

    # -- the sidecars' side --------------------------------------------------------------

    def _notify(self, keys: Iterable[ConfigMapKey]) -> None:
        for key in keys:
            event = self._changed.pop(key, None)
            if event is not None:
                event.set()

    def _broadcast(self) -> None:
        ended, self._hold_ends = self._hold_ends, asyncio.Event()
        ended.set()

    def _stand_down(self) -> None:
        self._broadcast()
        self._notify(list(self._changed))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/v1/slots/{namespace}/{name}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self._loop = asyncio.get_running_loop()
        self.requests += 1
        if not self.serving:
            return _standby()
        key = (request.match_info["namespace"], request.match_info["name"])
        try:
            wait_s = min(max(float(request.query.get("wait", "0")), 0.0), MAX_WAIT_S)
            message = FeedRequest.model_validate_json(await request.read())
        except (ValueError, ValidationError) as e:
            return web.json_response({"reason": f"bad request: {e}"}, status=400)
        deadline = self._loop.time() + wait_s
        while not self._published:
            # The Lease holder before its first plan (a restart, a failover): hold the
            # request for it. Answered at once, every sidecar would ask again at once, all
            # through the first reconcile, the operator's longest.
            hold_ends = self._hold_ends
            try:
                async with asyncio.timeout(deadline - self._loop.time()):
                    await hold_ends.wait()
            except TimeoutError:
                return web.Response(status=204)
            if not self.serving:
                return _standby()
        entry = self._entries.get(key)
        if entry is None:
            return web.json_response(
                {"reason": f"no slot ConfigMap {key[0]}/{key[1]} written by Stagger"},
                status=404,
            )
        with self._lock:
            sidecar = self._sidecars.setdefault(key, _Sidecar(first=self.monotonic()))
            sidecar.open += 1
        self._record(sidecar, entry, message)
        try:
            while entry.version == message.have:
                left = deadline - self._loop.time()
                if left <= 0:
                    return web.Response(status=204)
                event = self._changed.setdefault(key, asyncio.Event())
                try:
                    async with asyncio.timeout(left):
                        await event.wait()
                except TimeoutError:
                    return web.Response(status=204)
                if not self.serving:
                    return _standby()
                latest = self._entries.get(key)
                if latest is None:
                    return web.json_response({"reason": "the ConfigMap is gone"}, status=404)
                entry = latest
            return web.json_response({"version": entry.version, "files": entry.files})
        finally:
            with self._lock:
                sidecar.open -= 1
                sidecar.last = self.monotonic()

    def _record(self, sidecar: _Sidecar, entry: _Entry, message: FeedRequest) -> None:
        """Keep what the sidecar says of its own shard; wake the planner where it moved."""
        shard = entry.shard
        ours = [a for a in message.arrivals if (shard[0], a.stream, a.shard) == shard]
        generations = [
            r.generation for r in message.running if (shard[0], r.stream, r.shard) == shard
        ]
        report = Report(
            arrival=(ours[0].phase_s, ours[0].spread_s) if ours else None,
            generation=generations[0] if generations else None,
        )
        with self._lock:
            before, sidecar.report = sidecar.report, report
        news = _news(before, report, entry.period_s)
        if news is not None:
            self.on_report(news)


def _standby() -> web.Response:
    answer = web.json_response(
        {"reason": "standby replica"}, status=503, headers={"Retry-After": "1"}
    )
    answer.force_close()  # the sidecar's next connection may reach the Lease holder
    return answer


def _news(before: Report | None, now: Report, period_s: float) -> bool | None:
    """Whether a report is news for the planner: None if not, True if it should plan at
    once (a first report, a first phase or none any more, another generation in force, a
    jump), False if it may wait a little (drift)."""
    if before is None or before.generation != now.generation:
        return True
    if (before.arrival is None) != (now.arrival is None):
        return True
    if before.arrival is None or now.arrival is None:
        return None
    apart = abs(before.arrival[0] - now.arrival[0]) % period_s
    moved = min(apart, period_s - apart)
    return None if moved <= PHASE_MOVED_S else moved >= PHASE_JUMPED_S


def take_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit; the soft limits
    before and after.

    Why: the feed holds one connection per shard pod. Container runtimes may start a
    process at a soft limit of 1,024 (containerd 2), and past it the feed's accept loop
    fails on every new connection until one closes, so most sidecars beyond about a
    thousand never reach it. The hard limit is what the runtime grants; asking for it is
    what Go programs do at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # no file limit is infinite
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as e:
            log.warning("Could not raise the open-files limit from %d to %d: %s", soft, wanted, e)
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def stop(feed: SlotFeed, runner: web.AppRunner) -> None:
    """Stop serving: the held requests are answered as a standby would (their sidecars ask
    the Service again a second later), then the listener closes."""
    feed.serving = False
    await runner.cleanup()


async def serve(feed: SlotFeed, address: str) -> web.AppRunner:
    """Start answering on ``address`` (host:port); the caller cleans the runner up."""
    before, after = take_open_files_limit()
    log.info(
        "Slot feed on %s: open-files limit %d (was %d), room for about %d sidecars' requests",
        address,
        after,
        before,
        after - OPEN_FILES_SPARE,
    )
    feed._loop = asyncio.get_running_loop()
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(feed.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or None, int(port)).start()
    return runner
