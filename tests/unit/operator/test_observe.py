"""Sidecar metrics pages (written by the sidecar's own metrics code) into observations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest

from stagger_operator.observe import observe, parse, quantile
from stagger_sidecar.metrics import GateMetrics, StreamKey

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
CAM = StreamKey("default", "cam", 0, "retinanet")
SHARD = ("default", "cam", "0")


def page(m: GateMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    buckets = {0.01: 50.0, 0.02: 90.0, 0.05: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.7, buckets) == pytest.approx(0.015)
    assert quantile(0.99, buckets) == pytest.approx(0.02 + 0.03 * 0.9)
    assert quantile(0.99, {0.01: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.01: 0.0, float("inf"): 5.0}) == 0.01  # beyond the last bound


def test_rates_drops_and_p99_come_from_the_window_between_scrapes() -> None:
    m = GateMetrics()
    for _ in range(100):  # before the window: slow frames that must not count
        m.completed(CAM, wait_s=0.0, service_s=0.9, late=False)
    first = parse([page(m)], T0)
    for i in range(300):
        m.completed(CAM, wait_s=0.002, service_s=0.016 + (0.02 if i % 100 == 0 else 0), late=False)
    for _ in range(3):
        m.refused(CAM, "late")
    m.missed_slot(CAM)
    m.body.labels(**CAM.labels()).set(0.0105)
    second = parse([page(m)], T0 + timedelta(seconds=30))
    o = observe(first, second)[SHARD]
    assert o.fps == pytest.approx(10.0)
    assert o.drop_rate == pytest.approx(3 / 303)
    assert o.slot_misses == 1
    assert o.body_ms == {"retinanet": pytest.approx(10.5)}
    assert o.p99_ms is not None and 18 <= o.p99_ms <= 40  # 1 % of frames took 38 ms


def test_a_restarted_sidecar_and_a_broken_page_do_not_break_the_rest() -> None:
    m = GateMetrics()
    for _ in range(50):
        m.completed(CAM, wait_s=0.0, service_s=0.01, late=False)
    first = parse([page(m)], T0)
    restarted = GateMetrics()
    for _ in range(5):
        restarted.completed(CAM, wait_s=0.0, service_s=0.01, late=False)
    second = parse([page(restarted), "not { a metrics page"], T0 + timedelta(seconds=10))
    o = observe(first, second)[SHARD]
    assert o.forwarded == 5 and o.fps == 0.0  # counted from zero, no rate without a window
    assert observe(None, second)[SHARD].forwarded == 5


def test_a_stream_s_arrival_phase_reaches_the_operator_from_its_sidecar_s_page() -> None:
    """The sidecar publishes its estimate when scraped (GateMetrics.watch_arrivals); the
    operator reads it per shard, and reads no phase where the stream is not periodic."""
    from stagger.core.phase import PhaseEstimate
    from stagger_operator.controller import arrivals
    from tests.factories import stream

    m = GateMetrics()
    m.completed(CAM, wait_s=0.0, service_s=0.01, late=False)
    estimate = {"cam": PhaseEstimate(0.25, 0.1234, 0.0011, 0.99, 40, 38)}
    m.watch_arrivals("default", "cam", 0, lambda: estimate["cam"])
    o = observe(None, parse([page(m)], T0))[SHARD]
    assert (o.arrival_phase_s, o.arrival_spread_s) == (pytest.approx(0.1234), pytest.approx(0.0011))
    assert arrivals({SHARD: o}, [stream("cam", 4.0)]) == {
        ("default", "cam", 0): (pytest.approx(0.1234), pytest.approx(0.0011))
    }
    estimate["cam"] = PhaseEstimate(0.25, None, 0.125, 0.3, 40, 0)  # events, not frames
    o = observe(None, parse([page(m)], T0))[SHARD]
    assert o.arrival_phase_s is None and o.arrival_spread_s is None
    assert arrivals({SHARD: o}, [stream("cam", 4.0)]) == {}


def test_the_generation_each_sidecar_runs_reaches_the_operator() -> None:
    from stagger_operator.controller import running_generations
    from tests.factories import stream

    m = GateMetrics()
    m.completed(CAM, wait_s=0.0, service_s=0.01, late=False)
    m.slot_generation.labels("default", "cam", "0").set(7)
    o = observe(None, parse([page(m)], T0))[SHARD]
    assert o.generation == 7
    assert running_generations({SHARD: o}, [stream("cam", 4.0)]) == {("default", "cam", 0): 7}
    assert running_generations({SHARD: o}, []) == {}  # a stream no longer listed


def test_a_scrape_parses_only_the_samples_it_reads_and_reads_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sidecar's page is mostly series the operator does not read (other histograms,
    ``_created`` stamps). Parsing only the samples ``observe`` reads gives the same
    observations as parsing the whole page, from a fraction of its lines."""
    from stagger.core.phase import PhaseEstimate
    from stagger_operator import observe as module

    m = GateMetrics()
    for i in range(50):
        m.completed(CAM, wait_s=0.003, service_s=0.012 + i * 1e-4, late=i % 10 == 0)
    m.refused(CAM, "late")
    m.missed_slot(CAM)
    m.body.labels(**CAM.labels()).set(0.0104)
    m.slot_generation.labels("default", "cam", "0").set(4)
    m.watch_arrivals("default", "cam", 0, lambda: PhaseEstimate(0.1, 0.02, 0.001, 0.99, 40, 38))
    text = page(m)
    read = module._lines_read(text).splitlines()
    assert len(read) < len(text.splitlines()) / 3
    filtered = [observe(None, parse([text], T0)), observe(parse([text], T0), parse([text], T0))]
    monkeypatch.setattr(module, "_lines_read", lambda whole: whole)
    whole = [observe(None, parse([text], T0)), observe(parse([text], T0), parse([text], T0))]
    assert filtered == whole
    o = filtered[0][SHARD]
    assert (o.dropped, o.slot_misses, o.generation, o.arrival_phase_s) == (1, 1, 4, 0.02)
    assert o.body_ms == {"retinanet": pytest.approx(10.4)} and o.p99_ms is not None
