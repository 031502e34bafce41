"""kopf handlers: thin delegates. An event only wakes the planner; one loop plans.

Run with ``kopf run -m stagger_operator.handlers --all-namespaces`` (the Helm chart does).
Bursts coalesce: the loop waits until events stop for ``debounce_s`` seconds (at most
``max_delay_s``), then reconciles the whole fleet once (settings in ``OperatorSettings``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config

from stagger_operator.backoff import Backoff
from stagger_operator.controller import Controller, Report
from stagger_operator.feed import SlotFeed, serve
from stagger_operator.feed import stop as stop_feed
from stagger_operator.kube import Kube
from stagger_operator.leader import Elector
from stagger_operator.metrics import OperatorMetrics
from stagger_operator.observe import Snapshot, observe, parse
from stagger_operator.scrape import fetch, targets
from stagger_operator.settings import OperatorSettings

GROUP, VERSION = "stagger.dev", "v1alpha1"
log = logging.getLogger("stagger.operator")


@dataclass
class PlanStats:
    """Counters shared by the planner loop and whoever watches it (kopf gives each handler
    a shallow copy of the memo, so they live in one object, not in memo fields)."""

    plans: int = 0
    last: Report | None = None


def _default_api_client(connections: int) -> client.ApiClient:
    configuration = client.Configuration()
    try:
        config.load_incluster_config(configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = connections  # one per parallel write
    configuration.retries = False  # one retry mechanism: Kube's (429, 5xx, timeouts)
    return client.ApiClient(configuration)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "stagger.dev/finalizer"
    settings.posting.level = logging.WARNING
    memo.setdefault("settings", OperatorSettings())
    api = memo.get("api_client") or _default_api_client(memo.settings.write_concurrency)
    memo.controller = Controller(Kube(api), memo.settings)
    memo.wake = asyncio.Event()
    if memo.settings.feed_address:
        memo.controller.feed = SlotFeed(on_report=_report_waker(memo))
        memo.feed_runner = await serve(memo.controller.feed, memo.settings.feed_address)
    memo.setdefault("stats", PlanStats())
    memo.metrics = OperatorMetrics()
    if memo.settings.metrics_address:
        memo.metrics_stop = memo.metrics.serve(memo.settings.metrics_address)
    memo.node_signatures = {}
    memo.scrape_task = asyncio.create_task(_scrape_loop(memo))
    _lead(memo, not memo.settings.leader_election)
    memo.loop_task = asyncio.create_task(_planner_loop(memo))
    if memo.settings.leader_election:
        memo.lease_task = asyncio.create_task(_lease_loop(memo))
    memo.wake.set()  # plan once at start: rebuild the view from the cluster


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for name in ("lease_task", "loop_task", "scrape_task"):
        task = memo.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    feed_runner = memo.get("feed_runner")
    if feed_runner is not None:
        await stop_feed(memo.controller.feed, feed_runner)
    stop_metrics = memo.get("metrics_stop")
    if stop_metrics is not None:
        await asyncio.to_thread(stop_metrics)
    if memo.get("leader") and memo.settings.leader_election:
        s: OperatorSettings = memo.settings
        await asyncio.to_thread(
            memo.controller.kube.release_lease, s.lease_namespace, s.lease_name, s.identity
        )


@kopf.on.create(GROUP, VERSION, "inferencestreams")
@kopf.on.update(GROUP, VERSION, "inferencestreams", field="spec")
@kopf.on.resume(GROUP, VERSION, "inferencestreams")
async def stream_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.wake.set()


@kopf.on.delete(GROUP, VERSION, "inferencestreams")
def stream_deleted(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Delete what the stream owns now, not when a garbage collector gets to it: its GPU
    slots are free for others as soon as the finalizer goes."""
    memo.controller.delete_stream(namespace or "default", name)
    memo.wake.set()


@kopf.on.event("", "v1", "nodes")
async def node_event(
    name: str, body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    # Node status changes every few seconds (heartbeats); only what placement reads counts.
    signature = None if type == "DELETED" else _node_signature(body)
    if memo.node_signatures.get(name) != signature:
        memo.node_signatures[name] = signature
        memo.wake.set()


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": "stagger"})
async def pod_event(
    name: str, namespace: str | None, body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    # A shard's pod turning Ready (or not) decides Running/Degraded and ends moves.
    pod = None if type == "DELETED" else dict(body)
    if memo.controller.pod_changed(namespace or "", name, pod):
        memo.wake.set()


@kopf.on.event("batch", "v1", "jobs", labels={"stagger.dev/calibration": kopf.PRESENT})
async def calibration_job_event(memo: kopf.Memo, **_: Any) -> None:
    # A calibration Job finished (or failed): read its result into a ModelProfile.
    memo.wake.set()


@kopf.on.event(GROUP, VERSION, "modelprofiles")
async def profile_event(memo: kopf.Memo, **_: Any) -> None:
    memo.wake.set()


@kopf.on.event(GROUP, VERSION, "gpunodes")
async def gpu_node_event(
    name: str, body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    # The agent rewrites its GpuNode every heartbeat; only the inventory counts.
    status = dict(body.get("status") or {})
    status.pop("observedAt", None)
    signature = None if type == "DELETED" else repr(sorted(status.items()))
    key = f"gpunode/{name}"
    if memo.node_signatures.get(key) != signature:
        memo.node_signatures[key] = signature
        memo.wake.set()


def _node_signature(body: kopf.Body) -> tuple[Any, ...]:
    labels = body.get("metadata", {}).get("labels") or {}
    ready = [
        c.get("status")
        for c in body.get("status", {}).get("conditions", [])
        if c.get("type") == "Ready"
    ]
    capacity = body.get("status", {}).get("capacity", {}).get("nvidia.com/gpu")
    return (
        tuple(sorted(labels.items())),
        body.get("spec", {}).get("unschedulable"),
        tuple(ready),
        capacity,
    )


async def _lease_loop(memo: kopf.Memo) -> None:
    """Hold the Lease while alive; renew at a third of its duration. Gaining it wakes the
    planner; losing it (a stalled renew) stops planning at the next cycle. Whether another
    holder is gone is timed on this replica's own clock (``leader.Elector``)."""
    s: OperatorSettings = memo.settings
    kube = memo.controller.kube
    # The wall clock that stamps renewTime: this node's (tests skew it per replica; the
    # Elector never compares it with another replica's).
    wall = memo.get("wall_clock") or (lambda: datetime.now(UTC))
    elector = Elector(s.identity, s.lease_duration_s, wall=wall)
    while True:
        try:
            held = await asyncio.to_thread(elector.try_hold, kube, s.lease_namespace, s.lease_name)
        except Exception:
            log.exception("cannot reach the Lease %s/%s", s.lease_namespace, s.lease_name)
            held = False
        if held != memo.leader:
            log.info(
                "%s the Lease %s/%s", "holding" if held else "lost", s.lease_namespace, s.lease_name
            )
            _lead(memo, held)
            if held:
                memo.wake.set()
        await asyncio.sleep(s.lease_duration_s / 3)


def _report_waker(memo: kopf.Memo) -> Callable[[bool], None]:
    """What a sidecar reports on the slot feed wakes the planner: at once where it is
    urgent (a camera started or jumped, a table took over), else at most once every
    ``follow_drift_s`` (cameras' clocks drift: at 10,000 of them, planning on each move
    would keep the planner busy for nothing)."""
    pending: list[asyncio.TimerHandle] = []

    def wake(urgent: bool) -> None:
        if urgent:
            memo.wake.set()
        elif not pending or pending[0].cancelled() or pending[0].when() < loop.time():
            pending[:] = [loop.call_later(memo.settings.follow_drift_s, memo.wake.set)]

    loop = asyncio.get_running_loop()
    return wake


def _lead(memo: kopf.Memo, held: bool) -> None:
    """This replica holds the Lease (plans, answers the slot feed) or stands by."""
    memo.leader = held
    if memo.controller.feed is not None:
        memo.controller.feed.serving = held
    if held:
        memo.metrics.leader.set(1)
    else:
        memo.metrics.standby()


async def _scrape_loop(memo: kopf.Memo) -> None:
    """Read the sidecars' metrics on a timer into the controller's observations; the next
    reconcile writes them into stream and GpuSchedule status."""
    s: OperatorSettings = memo.settings
    controller: Controller = memo.controller
    before: Snapshot | None = None
    while True:
        await asyncio.sleep(s.scrape_interval_s)
        if not memo.leader:
            before = None
            continue
        try:
            pods = await asyncio.to_thread(controller.kube.list_managed, "Pod")
            urls = targets(pods, s.sidecar_metrics_port)
            pages = await fetch(urls, s.scrape_timeout_s)
            now = await asyncio.to_thread(parse, pages, datetime.now(UTC))  # off the loop
        except Exception:
            log.exception(
                "scraping the sidecars failed; trying again in %.0f s", s.scrape_interval_s
            )
            continue
        controller.observed = observe(before, now)
        before = now
        log.debug("scraped %d of %d sidecars", len(pages), len(urls))
        memo.wake.set()


async def _planner_loop(memo: kopf.Memo) -> None:
    loop = asyncio.get_running_loop()
    s: OperatorSettings = memo.settings
    retry = Backoff(base_s=s.retry_base_s, cap_s=s.retry_max_s)
    # asyncio.timeout rather than wait_for, whose 3.11 version can swallow a cancellation
    # that lands as the wait ends: the loop would then outlive the operator's shutdown.
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(memo.settings.resync_s):
                await memo.wake.wait()
        started = loop.time()
        while loop.time() - started < memo.settings.max_delay_s:  # let a burst finish
            memo.wake.clear()
            try:
                async with asyncio.timeout(memo.settings.debounce_s):
                    await memo.wake.wait()
            except TimeoutError:
                break
        memo.wake.clear()
        if not memo.leader:
            continue  # a standby replica: the Lease holder plans
        began = loop.time()
        try:
            report = await asyncio.to_thread(memo.controller.reconcile)
        except Exception:
            delay = retry.next_delay()
            log.exception("reconcile failed; retrying in %.1f s", delay)
            memo.metrics.failed(loop.time() - began)
            loop.call_later(delay, memo.wake.set)
            continue
        memo.metrics.reconciled(report, loop.time() - began)
        memo.stats.plans += 1
        memo.stats.last = report
        if report.moving:  # a move that never gets Ready must still end at its timeout
            loop.call_later(memo.settings.move_timeout_s, memo.wake.set)
        if report.failed:  # refused writes: statuses say why; try again soon, not hot
            loop.call_later(retry.next_delay(), memo.wake.set)
        else:
            retry.succeeded()
        if report.wake_after_s is not None:  # a pinned slot frees: a re-timing may place more
            loop.call_later(report.wake_after_s + 0.1, memo.wake.set)
        # With ``kopf run --log-format=json`` (the chart's default) the extra fields become
        # JSON fields: dashboards and log queries read them without parsing the message.
        fields = {
            "plan": memo.stats.plans,
            "seconds": round(loop.time() - began, 3),
            "streams": report.streams,
            "placed": report.placed,
            "unschedulable": report.unplaced,
            "invalid": report.invalid,
            "moves": len(report.moves),
            "retimed": len(report.retimed),
            "moving": report.moving,
            "waiting": report.waiting,
            "writes": report.written,
            "statuses": report.statuses,
            "deletions": report.deleted,
            "failed_writes": report.failed,
        }
        log.info(" ".join(f"{k}={v}" for k, v in fields.items()), extra=fields)
