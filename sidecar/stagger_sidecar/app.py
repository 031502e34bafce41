"""The gate process: HTTP and gRPC proxies in front of Triton, the slot-file watcher, Triton's
readiness and statistics, and the metrics listener. ``Sidecar.start()`` binds everything
and returns; ``stop()`` drains in-flight requests first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stagger.core.contract import SlotAssignment
from stagger.core.phase import PhaseEstimate
from stagger_sidecar.feed import FeedClient, Measured
from stagger_sidecar.gate import Gate, StreamGate
from stagger_sidecar.grpc_proxy import GrpcProxy
from stagger_sidecar.http_proxy import HttpLimits, HttpProxy
from stagger_sidecar.keeper import Coordination, Keeper
from stagger_sidecar.ledger import FileLedger
from stagger_sidecar.metrics import GateMetrics, StreamKey
from stagger_sidecar.settings import GateSettings, split_address
from stagger_sidecar.slotfile import SlotFiles
from stagger_sidecar.upstream import (
    CHANNEL_OPTIONS,
    ComputeTotals,
    Upstream,
    body_times,
    compute_totals,
)

log = logging.getLogger("stagger.sidecar")


class Sidecar:
    def __init__(
        self,
        settings: GateSettings,
        *,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = GateMetrics(registry)
        self.gate = Gate(settings.gate_config(), default=settings.stream)
        self.ledger = (
            FileLedger(settings.gpu_ledger, settings.ledger_lead_ms / 1e3)
            if settings.gpu_ledger
            else None
        )
        coordination = (
            Coordination(
                self.ledger,
                settings.ledger_lead_ms / 1e3,
                settings.ledger_max_delay_ms / 1e3 if settings.ledger_max_delay_ms else None,
            )
            if self.ledger
            else None
        )
        self.keeper = Keeper(
            self.gate,
            self.metrics,
            max_inflight=settings.max_inflight,
            clock=clock,
            coordination=coordination,
        )
        self.files = SlotFiles(settings.slot_file)
        self.feed = (
            FeedClient(
                settings.slot_feed,
                measure=self.measured,
                load=self.load_contracts,
                on_connected=lambda up: self.metrics.slot_feed_up.set(int(up)),
                wait_s=settings.slot_feed_wait_s,
            )
            if settings.slot_feed
            else None
        )
        self.ports: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.BaseRunner] = []
        self._grpc: GrpcProxy | None = None
        self._grpc_server: asyncio.Server | None = None
        self._http_server: asyncio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fps_before: Counter[StreamKey] = Counter()
        self._stats_before: dict[str, ComputeTotals] = {}

    # -- readiness -----------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.keeper.closing:
            return False, "shutting down"
        if not self.upstream.ready:
            return False, self.upstream.reason
        now = self.clock()
        waiting = [n for n, g in self.gate.streams.items() if g.timetable.clock(now) is None]
        if waiting or not self.gate.streams:
            return False, f"no slot contract yet for {', '.join(waiting) or 'any stream'}"
        return True, ""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Sidecar:
        s = self.settings
        self._session = aiohttp.ClientSession()  # Triton's readiness and statistics only
        if s.triton_grpc:
            self._channel = grpc.aio.insecure_channel(s.triton_grpc, options=CHANNEL_OPTIONS)
        self.upstream = Upstream(http=s.triton_http, channel=self._channel, session=self._session)
        self.poll_slot_files()
        await self.upstream.check()

        try:
            await self._bind()
        except OSError:  # an address is taken: nothing may go on listening, ready or not
            await self.stop()
            raise

        self._spawn(self.upstream.watch(lambda ok: self.metrics.triton_up.set(int(ok))))
        self._spawn(self._every(s.slot_poll_s, self.poll_slot_files))
        if self.feed is not None:
            self._spawn(self.feed.run())
        self._spawn(self._every(s.stats_interval_s, self.sample_statistics))
        log.info(
            "stagger-sidecar listening",
            extra={
                "http": s.http_address,
                "grpc": s.grpc_address if self._grpc else None,
                "metrics": s.metrics_address,
                "ports": self.ports,
                "triton_http": s.triton_http,
                "triton_grpc": s.triton_grpc,
                "policy": str(s.policy),
            },
        )
        return self

    async def _bind(self) -> None:
        """Every listener bound before any serves: ``/readyz`` answering means the gRPC port
        is there too (a sidecar that lost its gRPC address must never pass for ready)."""
        s, loop = self.settings, asyncio.get_running_loop()
        http = HttpProxy(
            self.keeper,
            self.upstream,
            timeout_s=s.upstream_timeout_s,
            ready=self.ready,
            limits=HttpLimits(
                max_header_bytes=s.http_max_header_bytes,
                max_body_bytes=s.http_max_body_bytes,
                header_timeout_s=s.http_header_timeout_s,
                idle_timeout_s=s.http_idle_timeout_s,
            ),
        )
        self._http = http
        host, port = split_address(s.http_address)
        self._http_server = await loop.create_server(http.protocol, host, port, start_serving=False)
        self.ports["http"] = int(self._http_server.sockets[0].getsockname()[1])
        if s.triton_grpc:
            self._grpc = GrpcProxy(
                self.keeper,
                self.upstream,
                s.triton_grpc,
                timeout_s=s.upstream_timeout_s,
                max_header_bytes=s.http_max_header_bytes,
            )
            host, port = split_address(s.grpc_address)
            self._grpc_server = await loop.create_server(
                self._grpc.protocol, host, port, start_serving=False
            )
            self.ports["grpc"] = int(self._grpc_server.sockets[0].getsockname()[1])
        metrics = web.Application()
        metrics.router.add_get("/metrics", self._metrics)
        self.ports["metrics"] = await self._listen(metrics, s.metrics_address)
        for server in (self._http_server, self._grpc_server):
            if server is not None:
                await server.start_serving()

    async def _listen(self, app: web.Application, address: str) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        host, port = split_address(address)
        site = web.TCPSite(runner, host, port)
        await site.start()
        sockets = runner.addresses
        return int(sockets[-1][1]) if sockets else port

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _every(self, interval_s: float, work: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                result = work()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # one bad round must not stop the loop
                log.exception("periodic task failed")

    async def stop(self) -> None:
        """Refuse new requests, let in-flight ones finish (``drain_timeout_s``), close."""
        drained = await self.keeper.drain(self.settings.drain_timeout_s)
        if not drained:
            log.warning("drain timed out", extra={"inflight": self.keeper.inflight})
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http_server is not None:
            self._http_server.close()
            self._http.close_connections()
            await self._http_server.wait_closed()
        if self._grpc_server is not None and self._grpc is not None:
            self._grpc_server.close()
            self._grpc.close_connections()
            await self._grpc_server.wait_closed()
        for runner in self._runners:
            await runner.cleanup()
        if self._channel is not None:
            await self._channel.close()
        if self._session is not None:
            await self._session.close()
        if self.ledger is not None:
            self.ledger.close()

    # -- periodic work -------------------------------------------------------------------

    def poll_slot_files(self) -> None:
        contracts, problems = self.files.poll()
        now = self.clock()
        for contract in contracts:
            expected = self.settings.stream
            if expected and not self.files.path.is_dir() and contract.stream != expected:
                log.error(
                    "slot file names another stream; keeping the last good contract",
                    extra={
                        "file": str(self.files.path),
                        "stream": contract.stream,
                        "expected": expected,
                    },
                )
                self.metrics.slot_file_errors.labels(file=str(self.files.path)).inc()
                continue
            self._load(contract, now, "file")
        for problem in problems:
            log.error(problem.message, extra={"file": str(problem.file)})
            self.metrics.slot_file_errors.labels(file=str(problem.file)).inc()
        for name, g in self.gate.streams.items():
            current = g.timetable.current(now)
            if current is not None:
                self.metrics.slot_generation.labels(g.namespace, name, str(g.shard)).set(
                    current.generation
                )
            if g.retimed(now):
                self.metrics.slot_retimings.labels(g.namespace, name, str(g.shard)).inc()
            if current is not None:
                self.metrics.watch_arrivals(
                    g.namespace,
                    name,
                    g.shard,
                    functools.partial(self._arrival_now, g),
                    functools.partial(self._follows_now, g),
                )
        if self.feed is not None:
            self.feed.nudge()

    def load_contracts(self, contracts: list[SlotAssignment]) -> None:
        """Contracts the slot feed brought: the ConfigMap's latest, before the kubelet."""
        now = self.clock()
        for contract in contracts:
            self._load(contract, now, "feed")

    def _load(self, contract: SlotAssignment, now: float, source: str) -> None:
        """A contract joins its stream's chain (a generation already there, or older than
        the one in force, changes nothing: the feed and the file bring the same ones)."""
        gate = self.gate.streams.get(contract.stream)
        held = gate.timetable.contracts if gate is not None else ()
        if any(c == contract for c in held):
            return
        self._count_if_late(contract, now, source)
        self.gate.load(contract, now)
        log.info(
            "slot contract read",
            extra={
                "stream": contract.stream,
                "generation": contract.generation,
                "effective_at": contract.effective_at.isoformat(),
                "offset_ticks": contract.offset_ticks,
                "period_ticks": contract.period_ticks,
                "source": source,
            },
        )

    def _arrival_now(self, g: StreamGate) -> PhaseEstimate | None:
        return g.arrival(self.clock())

    def _follows_now(self, g: StreamGate) -> bool:
        return g.follows_arrivals(self.clock())

    def measured(self) -> list[Measured]:
        """What the sidecar reports on the slot feed: each stream's arrival phase and the
        generation in force."""
        now, out = self.clock(), []
        for name, g in self.gate.streams.items():
            if g.arrivals is None:
                continue  # no contract yet: no epoch to measure phases from
            estimate = g.arrival(now)
            current = g.timetable.current(now)
            periodic = estimate is not None and estimate.periodic
            out.append(
                Measured(
                    stream=name,
                    shard=g.shard,
                    period_s=g.arrivals.period_s,
                    phase_s=estimate.phase_s if periodic and estimate else None,
                    spread_s=estimate.spread_s if periodic and estimate else None,
                    generation=current.generation if current is not None else None,
                )
            )
        return out

    def _count_if_late(self, contract: SlotAssignment, now: float, source: str) -> None:
        """A newer contract read after its switch instant, where it changes what this
        sidecar releases: since that instant it released on the old table while the other
        sidecars of its GPU ran the new one."""
        gate = self.gate.streams.get(contract.stream)
        before = gate.timetable.current(now) if gate is not None else None
        late_s = now - contract.effective_at.timestamp()
        if (
            before is None
            or contract.generation <= before.generation
            or late_s <= 0
            or before.releases() == contract.releases()
        ):
            return
        self.metrics.slot_contracts_late.labels(
            contract.namespace, contract.stream, str(contract.shard)
        ).inc()
        why = (
            "the kubelet updated the mounted ConfigMap later than the operator allows "
            "(raise STAGGER_CONTRACT_PROPAGATION_S)"
            if source == "file"
            else "the operator wrote it less than a switch lead ahead (raise "
            "STAGGER_EFFECTIVE_AFTER_S)"
        )
        log.warning(
            f"slot contract read after its switch instant from the {source}: {why}",
            extra={
                "stream": contract.stream,
                "generation": contract.generation,
                "late_s": round(late_s, 3),
            },
        )

    async def sample_statistics(self) -> None:
        """Body time per model from Triton, and achieved fps per stream, over the window."""
        window = self.settings.stats_interval_s
        done = Counter(self.keeper.completions)
        for key in done | self._fps_before:
            fps = (done[key] - self._fps_before[key]) / window
            self.metrics.achieved_fps.labels(**key.labels()).set(fps)
        self._fps_before = done
        try:
            totals = compute_totals(await self.upstream.statistics())
        except (aiohttp.ClientError, TimeoutError, grpc.aio.AioRpcError, ValueError) as e:
            log.debug("Triton statistics unavailable: %s", e)
            return
        bodies = body_times(self._stats_before, totals)
        self._stats_before = totals
        self.keeper.bodies.update(bodies)
        for key in done:
            if key.model in bodies:
                self.metrics.body.labels(**key.labels()).set(bodies[key.model])

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
