"""The operator's own metrics (names in ``stagger.core.telemetry``), on a registry of its
own so that several operators in one process (the tests) do not collide."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stagger.core import telemetry
from stagger.core.placement import Plan, RunningCalibration
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
        self.plan_series = PlanSeries()
        r.register(self.plan_series)
        for outcome in ("ok", "error"):
            self.reconciles.labels(outcome)
        for result in ("written", "status", "deleted", "failed"):
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
        self.writes.labels("status").inc(report.statuses)  # streams' statuses
        self.writes.labels("deleted").inc(report.deleted)
        self.writes.labels("failed").inc(report.failed)
        self.plan_series.update(report)

    def standby(self) -> None:
        """Lost the Lease: the plan's series are the new leader's to export. Left here they
        would go stale and double every stream and GPU on dashboards."""
        self.leader.set(0)
        self.streams.clear()
        self.plan_series.clear()

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


class PlanSeries(Collector):
    """The series of what exists (per stream, profile, GPU and shard), built from the
    latest reconcile's report when scraped. A reconcile only keeps the report: setting
    them as gauges took 0.3 s of the event loop per reconcile at 10,000 streams, where the
    slot feed and the watches are served. Streams, profiles, GPUs and shards that are gone
    lose their series with the report that no longer has them."""

    def __init__(self) -> None:
        self._plan: Plan | None = None
        self._targets: list[tuple[str, str, float, float]] = []
        self._profiles: list[tuple[str, str, str, str, float, bool]] = []
        self._calibrating: tuple[RunningCalibration, ...] = ()

    def update(self, report: Report) -> None:
        if report.plan is not None:  # None: the plan did not change
            self._plan = report.plan
        self._targets, self._profiles = report.targets, report.profiles
        self._calibrating = report.calibrating

    def clear(self) -> None:
        self._plan, self._targets, self._profiles, self._calibrating = None, [], [], ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        plan, targets, profiles = self._plan, self._targets, self._profiles  # one report's
        calibrating = GaugeMetricFamily(
            telemetry.GPU_CALIBRATING,
            "A calibration Job measures the GPU",
            labels=["node", "gpu", "model"],
        )
        for run in self._calibrating:
            calibrating.add_metric([run.node, str(run.gpu), run.model], 1)
        fps = GaugeMetricFamily(
            telemetry.STREAM_REQUESTED_FPS, "Requested fps", labels=telemetry.STREAM_TARGET_LABELS
        )
        deadline = GaugeMetricFamily(
            telemetry.STREAM_DEADLINE, "Deadline", labels=telemetry.STREAM_TARGET_LABELS
        )
        for namespace, stream, frames, deadline_s in targets:
            fps.add_metric([namespace, stream], frames)
            deadline.add_metric([namespace, stream], deadline_s)
        body = GaugeMetricFamily(
            telemetry.PROFILE_BODY, "Profile body", labels=telemetry.PROFILE_LABELS
        )
        drifted = GaugeMetricFamily(
            telemetry.PROFILE_DRIFTED, "Profile drifted", labels=telemetry.PROFILE_LABELS
        )
        for name, model, product, mode, body_s, drift in profiles:
            body.add_metric([name, model, product, mode], body_s)
            drifted.add_metric([name, model, product, mode], int(drift))
        gpu_labels = ["node", "gpu", "product", "sharing_mode"]
        reserved = GaugeMetricFamily(
            telemetry.GPU_RESERVED, "Reserved body per second", labels=gpu_labels
        )
        overlap = GaugeMetricFamily(
            telemetry.GPU_BODY_OVERLAP,
            "Time per second two calibrated bodies run at once",
            labels=gpu_labels,
        )
        model_time = GaugeMetricFamily(
            telemetry.GPU_MODEL_TIME,
            "Share of each second the models need one at a time",
            labels=gpu_labels,
        )
        planned = GaugeMetricFamily(
            telemetry.SHARD_PLANNED_BODY, "Planned body", labels=telemetry.SHARD_LABELS
        )
        if plan is not None:
            for g in plan.gpus:
                where = [g.node, str(g.gpu), g.product, g.sharing_mode]
                reserved.add_metric(where, g.utilization)
                overlap.add_metric(where, g.overlap_ms_per_s / 1e3)
                if g.model_time_share is not None:
                    model_time.add_metric(where, g.model_time_share)
            for p in plan.shards:
                shard = [p.namespace, p.stream, str(p.shard), p.node, str(p.gpu)]
                planned.add_metric(shard, p.body_ms / 1e3)
        yield from (fps, deadline, body, drifted, reserved, overlap, model_time, planned)
        yield calibrating
