"""What the sidecars measured, turned into per-shard observations for the status.

Pure: :mod:`stagger_operator.scrape` fetches the metrics text; this parses it and takes
the difference between two scrapes (rates and the p99 of the window, not since start).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from stagger.core import telemetry as t
from stagger_operator import manifests
from stagger_operator.rollout import ShardId

Series = tuple[str, frozenset[tuple[str, str]]]  # sample name, labels


@dataclass(frozen=True)
class Snapshot:
    """Counters, gauges and histogram buckets of every shard, at one time."""

    at: datetime
    values: Mapping[ShardId, Mapping[Series, float]]


@dataclass(frozen=True)
class Observation:
    fps: float
    forwarded: float
    dropped: float
    slot_misses: float
    p99_ms: float | None
    body_ms: Mapping[str, float] = field(default_factory=dict)  # per model
    at: datetime | None = None
    arrival_phase_s: float | None = None
    """Where in its frame period the stream's requests arrive, from the GPU's epoch (None:
    not periodic, or too few requests yet); ``arrival_spread_s`` around it."""
    arrival_spread_s: float | None = None
    generation: int | None = None
    """The slot contract's generation in force at the sidecar (None: not reported)."""

    @property
    def drop_rate(self) -> float:
        total = self.forwarded + self.dropped
        return self.dropped / total if total else 0.0


READ = (
    t.FORWARDED,
    t.DROPPED,
    t.SLOT_MISSES,
    f"{t.LATENCY}_bucket",
    t.BODY,
    t.SLOT_GENERATION,
    t.ARRIVAL_PHASE,
    t.ARRIVAL_SPREAD,
    t.ARRIVAL_PERIODIC,
)
"""The samples :func:`observe` reads. A sidecar's page holds several times as many lines
(other histograms, ``_created`` stamps); parsing only these keeps a scrape of 10,000
sidecars from costing the operator more than a core."""
_READ_PREFIXES = tuple(f"{name}{end}" for name in READ for end in ("{", " "))


def _lines_read(text: str) -> str:
    """The page's samples that :func:`observe` reads. Without their ``# TYPE`` lines they
    parse as untyped families of the same sample names, labels and values."""
    return "\n".join(line for line in text.splitlines() if line.startswith(_READ_PREFIXES))


def parse(texts: Iterable[str], at: datetime) -> Snapshot:
    """Stagger's series from sidecar metrics pages, grouped by the shard they describe.
    Pages that do not parse are skipped: one broken sidecar must not blind the rest."""
    values: dict[ShardId, dict[Series, float]] = defaultdict(dict)
    for text in texts:
        try:
            families = list(text_string_to_metric_families(_lines_read(text)))
        except ValueError:
            continue
        for family in families:
            if not family.name.startswith(t.PREFIX):
                continue
            for s in family.samples:
                labels = dict(s.labels)
                try:
                    shard: ShardId = (
                        labels.pop("namespace"),
                        manifests.stream_label(labels.pop("stream")),
                        labels.pop("shard"),
                    )
                except KeyError:
                    continue
                values[shard][(s.name, frozenset(labels.items()))] = s.value
    return Snapshot(at, values)


def _total(values: Mapping[Series, float], name: str) -> float:
    return sum(v for (n, _), v in values.items() if n == name)


def _buckets(values: Mapping[Series, float], name: str) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for (n, labels), v in values.items():
        if n == f"{name}_bucket":
            le = dict(labels)["le"]
            out[math.inf if le == "+Inf" else float(le)] += v  # summed over models
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """``q``-quantile from cumulative bucket counts, interpolated within the bucket as
    Prometheus' ``histogram_quantile`` does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return lower  # above the largest finite bucket: its bound is all we know
            inside = count - below
            return lower + (b - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = b, count
    return lower


def observe(before: Snapshot | None, now: Snapshot) -> dict[ShardId, Observation]:
    """Per shard: rates and the latency p99 between two scrapes. A shard without an earlier
    scrape (or whose counters went back: its sidecar restarted) is measured from zero."""
    out: dict[ShardId, Observation] = {}
    dt = (now.at - before.at).total_seconds() if before else 0.0
    for shard, cur in now.values.items():
        prev = before.values.get(shard, {}) if before else {}
        if not prev or _total(cur, t.FORWARDED) < _total(prev, t.FORWARDED):
            prev, window = {}, 0.0
        else:
            window = dt
        delta = {
            n: _total(cur, n) - _total(prev, n) for n in (t.FORWARDED, t.DROPPED, t.SLOT_MISSES)
        }
        b_now, b_prev = _buckets(cur, t.LATENCY), _buckets(prev, t.LATENCY)
        p99 = quantile(0.99, {le: c - b_prev.get(le, 0.0) for le, c in b_now.items()})
        forwarded = delta[t.FORWARDED]
        body = {
            dict(labels).get("model", ""): v * 1e3
            for (n, labels), v in cur.items()
            if n == t.BODY and v > 0
        }
        phase = _total(cur, t.ARRIVAL_PHASE)
        periodic = _total(cur, t.ARRIVAL_PERIODIC) == 1.0 and math.isfinite(phase)
        generations = [v for (n, _), v in cur.items() if n == t.SLOT_GENERATION]
        out[shard] = Observation(
            generation=int(generations[0]) if generations else None,
            arrival_phase_s=phase if periodic else None,
            arrival_spread_s=_total(cur, t.ARRIVAL_SPREAD) if periodic else None,
            fps=forwarded / window if window > 0 else 0.0,
            forwarded=forwarded,
            dropped=delta[t.DROPPED],
            slot_misses=delta[t.SLOT_MISSES],
            p99_ms=None if p99 is None else p99 * 1e3,
            body_ms=body,
            at=now.at,
        )
    return out
