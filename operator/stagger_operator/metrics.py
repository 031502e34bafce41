"""The operator's own metrics (names in ``stagger.core.telemetry``), on a registry of its
own so that several operators in one process (the tests) do not collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stagger.core import telemetry
from stagger_operator.controller import Report

RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            telemetry.OPERATOR_RECONCILES, "Reconciles run", ["outcome"], registry=r
        )
        self.seconds = Histogram(
            telemetry.OPERATOR_RECONCILE_SECONDS,
            "Reconcile duration",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.moves = Counter(telemetry.OPERATOR_MOVES, "Shards moved", registry=r)
        self.retimings = Counter(
            telemetry.OPERATOR_RETIMINGS,
            "Shards whose slot a re-timing changed",
            ["node", "gpu"],
            registry=r,
        )
        self.streams = Gauge(telemetry.OPERATOR_STREAMS, "Streams by state", ["state"], registry=r)
        self.writes = Counter(telemetry.OPERATOR_WRITES, "API writes", ["result"], registry=r)
        self.leader = Gauge(telemetry.OPERATOR_LEADER, "Holds the Lease", registry=r)
        targets = telemetry.STREAM_TARGET_LABELS
        self.fps = Gauge(telemetry.STREAM_REQUESTED_FPS, "Requested fps", targets, registry=r)
        self.deadline = Gauge(telemetry.STREAM_DEADLINE, "Deadline", targets, registry=r)
        profiles = telemetry.PROFILE_LABELS
        self.body = Gauge(telemetry.PROFILE_BODY, "Profile body", profiles, registry=r)
        self.drifted = Gauge(telemetry.PROFILE_DRIFTED, "Profile drifted", profiles, registry=r)
        self.reserved = Gauge(
            telemetry.GPU_RESERVED,
            "Reserved body per second",
            ["node", "gpu", "product", "sharing_mode"],
            registry=r,
        )
        self.body_overlap = Gauge(
            telemetry.GPU_BODY_OVERLAP,
            "Time per second two calibrated bodies run at once",
            ["node", "gpu", "product", "sharing_mode"],
            registry=r,
        )
        self.planned_body = Gauge(
            telemetry.SHARD_PLANNED_BODY, "Planned body", telemetry.SHARD_LABELS, registry=r
        )
        for outcome in ("ok", "error"):
            self.reconciles.labels(outcome)
        for result in ("written", "deleted", "failed"):
            self.writes.labels(result)

    def reconciled(self, report: Report, seconds: float) -> None:
        self.reconciles.labels("ok").inc()
        self.seconds.observe(seconds)
        self.moves.inc(len(report.moves))
        for *_, node, gpu in report.retimed:
            self.retimings.labels(node, str(gpu)).inc()
        self.streams.labels("placed").set(report.placed)
        self.streams.labels("unschedulable").set(report.unplaced)
        self.streams.labels("invalid").set(report.invalid)
        self.writes.labels("written").inc(report.written)
        self.writes.labels("deleted").inc(report.deleted)
        self.writes.labels("failed").inc(report.failed)
        for gauge in (self.fps, self.deadline, self.body, self.drifted):
            gauge.clear()  # streams and profiles that are gone lose their series
        if report.plan is not None:
            self.reserved.clear()
            self.body_overlap.clear()
            self.planned_body.clear()
            for g in report.plan.gpus:
                where = (g.node, str(g.gpu), g.product, g.sharing_mode)
                self.reserved.labels(*where).set(g.utilization)
                self.body_overlap.labels(*where).set(g.overlap_ms_per_s / 1e3)
            for p in report.plan.shards:
                shard = (p.namespace, p.stream, str(p.shard), p.node, str(p.gpu))
                self.planned_body.labels(*shard).set(p.body_ms / 1e3)
        for namespace, stream, fps, deadline_s in report.targets:
            self.fps.labels(namespace, stream).set(fps)
            self.deadline.labels(namespace, stream).set(deadline_s)
        for name, model, product, mode, body_s, drifted in report.profiles:
            self.body.labels(name, model, product, mode).set(body_s)
            self.drifted.labels(name, model, product, mode).set(int(drifted))

    def standby(self) -> None:
        """Lost the Lease: the plan's series are the new leader's to export. Left here they
        would go stale and double every stream and GPU on dashboards."""
        self.leader.set(0)
        for gauge in (
            self.streams,
            self.fps,
            self.deadline,
            self.body,
            self.drifted,
            self.reserved,
            self.body_overlap,
            self.planned_body,
        ):
            gauge.clear()

    def failed(self, seconds: float) -> None:
        self.reconciles.labels("error").inc()
        self.seconds.observe(seconds)

    def serve(self, address: str) -> Callable[[], None]:
        """Listen for scrapes at HOST:PORT; returns how to stop."""
        host, _, port = address.rpartition(":")
        server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)

        def stop() -> None:
            server.shutdown()
            thread.join(timeout=5)

        return stop
