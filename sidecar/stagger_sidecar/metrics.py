"""The sidecar's Prometheus metrics, named by :mod:`stagger.core.telemetry` (the operator
scrapes the same names into status)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stagger.core import telemetry as t
from stagger.core.phase import PhaseEstimate


def _base(name: str) -> str:
    # prometheus-client appends "_total" to counters itself.
    return name.removesuffix("_total")


@dataclass(frozen=True)
class StreamKey:
    namespace: str
    stream: str
    shard: int
    model: str

    def labels(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "stream": self.stream,
            "shard": str(self.shard),
            "model": self.model,
        }


@dataclass(frozen=True)
class _Series:
    forwarded: Counter
    late: Counter
    gate_wait: Histogram
    release_lag: Histogram
    service: Histogram
    latency: Histogram


class GateMetrics:
    """Per stream and model: what the gate did with each request, and how long it took."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._series_by_key: dict[StreamKey, _Series] = {}
        labels = list(t.STREAM_LABELS)
        r, buckets = self.registry, t.LATENCY_BUCKETS
        self.forwarded = Counter(
            _base(t.FORWARDED), "Requests forwarded to Triton.", labels, registry=r
        )
        self.dropped = Counter(
            _base(t.DROPPED), "Requests refused by the gate.", [*labels, t.DROP_REASON], registry=r
        )
        self.late = Counter(
            _base(t.LATE), "Requests forwarded after their slot.", labels, registry=r
        )
        self.slot_misses = Counter(
            _base(t.SLOT_MISSES),
            "Released inferences that overran the slot's body.",
            labels,
            registry=r,
        )
        self.gate_wait = Histogram(
            t.GATE_WAIT,
            "Time waited at the gate for the slot.",
            labels,
            buckets=buckets,
            registry=r,
        )
        self.release_lag = Histogram(
            t.RELEASE_LAG,
            "Time from a held request's release time to its forwarding (timer lag).",
            labels,
            buckets=t.RELEASE_LAG_BUCKETS,
            registry=r,
        )
        self.service = Histogram(
            t.SERVICE,
            "Triton's service time for a released request.",
            labels,
            buckets=buckets,
            registry=r,
        )
        self.latency = Histogram(
            t.LATENCY, "Arrival to response at the sidecar.", labels, buckets=buckets, registry=r
        )
        self.coordinated_delay = Histogram(
            t.COORDINATED_DELAY,
            "Time waited past the slot for the GPU's previous body (coordinated release).",
            labels,
            buckets=buckets,
            registry=r,
        )
        self.coordinated_forced = Counter(
            _base(t.COORDINATED_FORCED),
            "Requests released at their longest delay with the GPU still predicted busy.",
            labels,
            registry=r,
        )
        self.body = Gauge(
            t.BODY, "Body time measured from Triton's statistics.", labels, registry=r
        )
        self.achieved_fps = Gauge(
            t.ACHIEVED_FPS, "Inferences completed per second, last window.", labels, registry=r
        )
        self.slot_generation = Gauge(
            t.SLOT_GENERATION,
            "Generation of the slot contract in force.",
            ["namespace", "stream", "shard"],
            registry=r,
        )
        self.slot_retimings = Counter(
            _base(t.SLOT_RETIMINGS),
            "Contracts that took effect with another offset or period than the one before.",
            ["namespace", "stream", "shard"],
            registry=r,
        )
        self.slot_contracts_late = Counter(
            _base(t.SLOT_CONTRACTS_LATE),
            "Contracts read after their switch instant that change what this sidecar "
            "releases (the kubelet was slower than STAGGER_CONTRACT_PROPAGATION_S).",
            ["namespace", "stream", "shard"],
            registry=r,
        )
        self.slot_feed_up = Gauge(
            _base(t.SLOT_FEED_UP),
            "1 while the operator's slot feed answers this sidecar (contracts within a "
            "second); 0: contracts come only through the mounted ConfigMap, up to 90 s late.",
            registry=r,
        )
        self.slot_file_errors = Counter(
            _base(t.SLOT_FILE_ERRORS),
            "Slot files that could not be read or parsed (the last good contract stays).",
            ["file"],
            registry=r,
        )
        self.triton_up = Gauge(t.TRITON_UP, "1 when Triton answers ready.", registry=r)
        stream_labels = ["namespace", "stream", "shard"]
        self.arrival_phase = Gauge(
            t.ARRIVAL_PHASE,
            "Where in its frame period the stream's requests arrive, from the slot epoch.",
            stream_labels,
            registry=r,
        )
        self.arrival_spread = Gauge(
            t.ARRIVAL_SPREAD, "Spread of the arrivals around that phase.", stream_labels, registry=r
        )
        self.arrival_periodic = Gauge(
            t.ARRIVAL_PERIODIC,
            "1 when the stream's arrivals are periodic at its frame period.",
            stream_labels,
            registry=r,
        )
        self.slot_follows_arrivals = Gauge(
            t.SLOT_FOLLOWS_ARRIVALS,
            "1 while the stream's slot was re-timed to its arrivals' phase and they keep it: "
            "its gate holds frames by the answer the slot promises.",
            stream_labels,
            registry=r,
        )
        self._arrivals_watched: set[tuple[str, str, str]] = set()

    def watch_arrivals(
        self,
        namespace: str,
        stream: str,
        shard: int,
        estimate: Callable[[], PhaseEstimate | None],
        followed: Callable[[], bool] | None = None,
    ) -> None:
        """Publish a stream's arrival phase, estimated when the page is scraped, and whether
        its slot follows it (``followed``: the sidecar's gate says)."""
        labels = (namespace, stream, str(shard))
        if labels in self._arrivals_watched:
            return
        self._arrivals_watched.add(labels)

        def phase() -> float:
            e = estimate()
            return e.phase_s if e is not None and e.phase_s is not None else math.nan

        def spread() -> float:
            e = estimate()
            return e.spread_s if e is not None and e.periodic else math.nan

        def periodic() -> float:
            e = estimate()
            return 1.0 if e is not None and e.periodic else 0.0

        self.arrival_phase.labels(*labels).set_function(phase)
        self.arrival_spread.labels(*labels).set_function(spread)
        self.arrival_periodic.labels(*labels).set_function(periodic)
        if followed is not None:
            self.slot_follows_arrivals.labels(*labels).set_function(lambda: float(followed()))

    def _series(self, key: StreamKey) -> _Series:
        # Looking children up by labels costs more than the proxying; do it once per key.
        series = self._series_by_key.get(key)
        if series is None:
            labels = key.labels()
            series = self._series_by_key[key] = _Series(
                forwarded=self.forwarded.labels(**labels),
                late=self.late.labels(**labels),
                gate_wait=self.gate_wait.labels(**labels),
                release_lag=self.release_lag.labels(**labels),
                service=self.service.labels(**labels),
                latency=self.latency.labels(**labels),
            )
        return series

    def completed(self, key: StreamKey, *, wait_s: float, service_s: float, late: bool) -> None:
        series = self._series(key)
        series.forwarded.inc()
        if late:
            series.late.inc()
        series.gate_wait.observe(wait_s)
        series.service.observe(service_s)
        series.latency.observe(wait_s + service_s)

    def released(self, key: StreamKey, *, lag_s: float) -> None:
        """A held request went ``lag_s`` after its release time."""
        self._series(key).release_lag.observe(lag_s)

    def coordinated(self, key: StreamKey, *, delay_s: float, forced: bool) -> None:
        self.coordinated_delay.labels(**key.labels()).observe(delay_s)
        if forced:
            self.coordinated_forced.labels(**key.labels()).inc()

    def refused(self, key: StreamKey, reason: str) -> None:
        self.dropped.labels(**key.labels(), reason=reason).inc()

    def missed_slot(self, key: StreamKey) -> None:
        self.slot_misses.labels(**key.labels()).inc()
