"""The knee of a two-stream offset sweep: the study's table, synthetic curves, no-knee data."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.knee_fit import STUDY_TABLE_2  # the published study's Table 2
from stagger.core.api import SharingMode
from stagger.core.calibration import (
    MAX_WARNINGS,
    WARNING_CHARS,
    CalibrationResult,
    NoKnee,
    SweepPoint,
    estimate_knee,
    fit_hinge,
    knee_of_sweep,
    levels_apart,
    model_profile,
    overlap_end_ms,
    recommended_body_ms,
)
from tests.factories import calibration_result


def test_the_studys_table_has_its_knee_at_45_ms() -> None:
    estimate = knee_of_sweep([SweepPoint(*row) for row in STUDY_TABLE_2])
    assert estimate.fit.knee_ms == pytest.approx(45, abs=5)
    assert all(-1.5 < s < -0.7 for s in estimate.fit.slopes)  # both slowed, ~1 ms per ms
    low, high = estimate.ci_ms
    assert low <= estimate.fit.knee_ms <= high
    assert recommended_body_ms(estimate.fit.knee_ms, None, guard=0.15) == pytest.approx(
        estimate.fit.knee_ms * 1.15, abs=0.1
    )


def test_a_queue_slows_only_the_later_stream_and_the_knee_holds() -> None:
    """A lock or FIFO (one body waits for the other): stream 1 runs solo throughout."""
    rng = np.random.default_rng(5)
    points = [
        SweepPoint(o, 30 + rng.normal(0, 0.2), 30 + max(20 - o, 0) + rng.normal(0, 0.2))
        for o in np.repeat(np.arange(0, 45, 4.5), 5)
    ]
    fit = knee_of_sweep(points, resamples=50).fit
    assert fit.knee_ms == pytest.approx(20, abs=1.0)
    assert fit.slopes[0] == pytest.approx(0, abs=0.1) and fit.slopes[1] == pytest.approx(
        -1, abs=0.1
    )
    assert fit.level_ms == pytest.approx(30, abs=0.3)


def synthetic(
    body: float, solo: float, noise: float, seed: int, outliers: int = 0
) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    offsets = np.repeat(np.arange(0, 2.5 * body, body / 8), 5)
    latency = solo + np.maximum(body - offsets, 0) + rng.normal(0, noise, len(offsets))
    if outliers:
        idx = rng.choice(len(offsets), outliers, replace=False)
        latency[idx] += rng.uniform(5 * body, 10 * body, outliers)
    return offsets.tolist(), latency.tolist()


def test_an_earlier_stream_slowed_by_time_slicing_does_not_stretch_the_knee() -> None:
    """Time-sliced GPU (the shape measured on an H200): the later arrival slows the earlier
    inference for as long as they overlap at all, so stream 1 rises with the offset and
    drops only past the whole overlap; stream 2 returns to solo at the body."""
    rng = np.random.default_rng(11)
    body, overlap_end = 12.0, 20.0
    points = [
        SweepPoint(
            o,
            (29 + 0.4 * o if o < overlap_end else 20) + rng.normal(0, 0.8),
            20 + max(body - o, 0) * 0.9 + rng.normal(0, 0.8),
        )
        for o in np.repeat(np.arange(0, 34, 3.4), 8)
    ]
    estimate = knee_of_sweep(points, resamples=50)
    assert estimate.fit.knee_ms == pytest.approx(body, abs=2.5)
    assert len(estimate.fit.slopes) == 1  # the later stream's alone


@settings(max_examples=15, deadline=None)
@given(
    body=st.floats(min_value=4, max_value=80),
    noise_fraction=st.floats(min_value=0, max_value=0.05),
    seed=st.integers(0, 2**31),
)
def test_synthetic_knees_are_found(body: float, noise_fraction: float, seed: int) -> None:
    offsets, latencies = synthetic(body, solo=1.5 * body, noise=noise_fraction * body, seed=seed)
    fit = estimate_knee(offsets, latencies, resamples=30).fit
    assert fit.knee_ms == pytest.approx(body, abs=0.08 * body + 0.5)


@pytest.mark.parametrize("resamples", [1, 2, 200])
def test_the_knee_lies_within_its_reported_interval(resamples: int) -> None:
    """Resampled knees can all fall to one side of the fit's (one resample: a point that is
    not the knee); the interval a report gives always holds the knee it gives."""
    offsets, latencies = synthetic(20.0, solo=30.0, noise=1.0, seed=4)
    estimate = estimate_knee(offsets, latencies, resamples=resamples)
    low, high = estimate.ci_ms
    assert low <= estimate.fit.knee_ms <= high
    assert high - low < 10.0


def test_outliers_do_not_move_the_knee() -> None:
    offsets, latencies = synthetic(10.5, solo=18.5, noise=0.3, seed=3, outliers=6)
    assert fit_hinge(offsets, latencies).knee_ms == pytest.approx(10.5, abs=1.0)


def test_a_flat_sweep_has_no_knee_and_says_so() -> None:
    rng = np.random.default_rng(1)
    offsets = list(np.repeat(np.arange(0, 50, 5.0), 3))
    latencies = list(20 + rng.normal(0, 0.2, len(offsets)))
    with pytest.raises(NoKnee, match="does not fall") as e:
        estimate_knee(offsets, latencies)
    assert "Mean latency by offset: 0 →" in str(e.value)
    assert e.value.flat  # the profiler may then take the body from saturation


def test_a_sweep_too_short_for_the_body_says_sweep_further() -> None:
    offsets = [0.0, 5, 10, 15, 20]
    latencies = [60.0 - o for o in offsets]
    with pytest.raises(NoKnee, match="sweep further") as e:
        estimate_knee(offsets, latencies)
    assert not e.value.flat  # saturation would understate a body longer than the sweep


def test_too_few_offsets_is_an_error() -> None:
    with pytest.raises(NoKnee, match="at least 3 distinct offsets"):
        estimate_knee([0, 10, 0, 10], [5, 4, 5, 4])


def test_a_calibration_result_becomes_a_valid_model_profile() -> None:
    result = calibration_result("RetinaNet_R50")
    when = datetime(2026, 11, 21, 14, 0, tzinfo=UTC)
    profile = model_profile(result, "NVIDIA-H200", SharingMode.MPS, when)
    assert profile.name == "retinanet-r50-nvidia-h200-mps"
    spec = profile.spec
    assert (spec.body_time_ms, spec.latency_ms, spec.source) == (12.1, 18.5, "calibration")
    assert spec.body_time_ci_ms == [10.2, 10.9] and spec.measured_at == when
    # A guard that lifts the body over the solo p50 lifts the latency with it (CEL rule).
    tight = result.model_copy(update={"body_time_ms": 19.0})
    assert model_profile(tight, "NVIDIA-H200", SharingMode.MPS, when).spec.latency_ms == 19.0
    # The model's own time alone goes along where the run measured it (a Job's result).
    assert spec.solo_compute_ms is None
    timed = result.model_copy(update={"solo_compute_ms": 11.78})
    assert model_profile(timed, "NVIDIA-H200", SharingMode.MPS, when).spec.solo_compute_ms == 11.78


def test_the_result_fits_a_termination_message() -> None:
    result = CalibrationResult(
        model="m" * 253,
        model_version="12",
        body_time_ms=123.456789,
        knee_ms=107.1234567,
        knee_ci_ms=[100.123456789, 120.123456789],
        solo_p50_ms=150.123456789,
        solo_p99_ms=180.123456789,
        effective_body_ms=99.123456789,
        sweep_pairs=10_000,
        warnings=["× " * (WARNING_CHARS // 2)] * MAX_WARNINGS,  # 2-byte characters, too
    )
    assert len(result.model_dump_json(by_alias=True).encode()) < 4096


def test_a_body_longer_than_the_sweep_still_says_sweep_further_for_both_streams() -> None:
    """A lock held 40 ms, swept to 25: the later stream's own fit puts its knee 0.04 ms
    short of the sweep's end; the two streams together say sweep further."""
    rng = np.random.default_rng(5)
    points = [
        SweepPoint(o, 60.0 + rng.normal(0, 0.5), 60.0 + max(40.0 - o, 0) + rng.normal(0, 0.5))
        for o in np.repeat(np.linspace(0, 25, 11), 5)
    ]
    with pytest.raises(NoKnee, match="sweep further") as e:
        knee_of_sweep(points)
    assert e.value.short


def mps_shaped_sweep(seed: int) -> list[SweepPoint]:
    """The shape four H200 profiles of CUDA-graph RetinaNet under MPS showed: the later
    stream levels off within a few ms, the earlier one falls a quarter ms per ms over the
    whole overlap of the two requests (to 18 ms, about its own latency), swept to 26.2 ms."""
    rng = np.random.default_rng(seed)
    return [
        SweepPoint(
            o,
            17.5 + max(18 - o, 0) * 0.25 + rng.normal(0, 1.0),
            17.0 + max(5 - o, 0) + rng.normal(0, 1.0),
        )
        for o in np.repeat(np.linspace(0, 26.2, 11), 5)
    ]


def test_the_knee_never_lies_past_where_the_requests_stop_overlapping() -> None:
    """A shallow fall fitted with noise could put the knee at the sweep's end ("sweep
    further", seeds 8 and 112) or well past the end of any overlap (seed 5: 25.7 ms) where
    the later request went out after the earlier one's answer was back. No body reaches
    there."""
    for seed in [5, 8, 112, *range(20)]:
        points = mps_shaped_sweep(seed)
        end = overlap_end_ms(points)
        assert end is not None and 18 <= end <= 21, (seed, end)
        estimate = knee_of_sweep(points, resamples=0)
        assert estimate.fit.knee_ms <= end, seed


def test_the_overlap_ends_where_every_later_request_follows_the_earlier_answer() -> None:
    points = [
        SweepPoint(0, 30, 40),
        SweepPoint(10, 30, 30),
        SweepPoint(20, 25, 30),  # no overlap here, but again at 30: not yet the end
        SweepPoint(30, 31, 30),
        SweepPoint(30, 29, 30),
        SweepPoint(30, 33, 30),  # median 31 > 30
        SweepPoint(40, 30, 30),
        SweepPoint(50, 30, 30),
    ]
    assert overlap_end_ms(points) == 40
    assert overlap_end_ms(points[:6]) is None  # the sweep never got past the overlap


def test_a_lock_swept_short_of_its_body_never_shows_a_knee_at_the_sweep_s_end() -> None:
    """A 20 ms lock swept to 16 ms: the requests still overlap at every offset, so the body
    may be longer than the sweep. Noise put the fit's knee 0.05-0.3 ms short of the end in
    5 seeds of 300 (here; on a real tritonserver, 15.99 ms once in 12 profiles); a knee
    needs two swept offsets past it there."""
    for seed in [8, 95, 143, 221, 278, *range(20)]:
        rng = np.random.default_rng(seed)
        points = [
            SweepPoint(o, 28 + rng.normal(0, 0.5), 28 + max(20 - o, 0) + rng.normal(0, 0.5))
            for o in np.repeat(np.linspace(0, 16, 11), 5)
        ]
        with pytest.raises(NoKnee, match="sweep further") as e:
            knee_of_sweep(points, resamples=0)
        assert e.value.short, seed


def two_servers_settling_apart(seed: int, apart_ms: float) -> list[SweepPoint]:
    """Run 48's shape on an H200 (time-sliced, small detector): both streams slow while the
    bodies overlap and fall until a 10 ms knee, then settle at their own servers' solo
    latencies, ``apart_ms`` apart, with a slow drift in the slower one that one shared
    level reads as a fall going on."""
    rng = np.random.default_rng(seed)
    knee = 10.0
    return [
        SweepPoint(
            o,
            12.2 + apart_ms * (1.1 - 0.01 * o) + max(knee - o, 0) * 0.8 + rng.normal(0, 0.5),
            12.2 + max(knee - o, 0) * 0.9 + rng.normal(0, 0.5),
        )
        for o in np.repeat(np.arange(0, 21, 2.0), 5)
    ]


def test_servers_that_settle_apart_each_get_their_own_level() -> None:
    """Two servers whose solo latencies differ past the overlap: each stream's level is its
    own, so the knee stays where both stop falling; servers that settle together share one
    level (the study's table, with two runs past its overlap, keeps its 45 ms)."""
    for seed in range(5):
        points = two_servers_settling_apart(seed, apart_ms=2.5)
        assert levels_apart(points, overlap_end_ms(points)), seed
        estimate = knee_of_sweep(points, resamples=0)
        assert estimate.fit.knee_ms == pytest.approx(10, abs=1.0), seed
        assert estimate.fit.levels[0] - estimate.fit.levels[1] == pytest.approx(2.6, abs=0.6)
        together = two_servers_settling_apart(seed, apart_ms=0.0)
        assert not levels_apart(together, overlap_end_ms(together)), seed
    study = [SweepPoint(*row) for row in STUDY_TABLE_2]
    assert not levels_apart(study, overlap_end_ms(study))


def test_run_48s_misread_sweep_now_reads_a_knee_within_the_request() -> None:
    """The recorded sweep itself: one level gave 15.1 ms, past the 13.2 ms solo p50."""
    path = (
        Path(__file__).parents[2]
        / "bench/gpu/results/2026-12-04-loop-mixed-time-slicing-6-servers.json"
    )
    small = json.loads(path.read_text())["results"]["mixed"]["calibration"]["small"]
    points = [SweepPoint(*row) for row in small["sweep"]]
    assert small["kneeMs"] == pytest.approx(15.14, abs=0.01)  # as the run read it
    estimate = knee_of_sweep(points, resamples=0)
    assert 10 <= estimate.fit.knee_ms <= 12 < small["soloP50Ms"]


@pytest.mark.parametrize("resamples", [1, 30])
def test_the_bootstrap_reports_every_resample_done(resamples: int) -> None:
    """What the profile's "knee fit" stage shows: each resample once, those left out for
    too few distinct offsets included, and the same knee and interval as without it."""
    offsets, latencies = synthetic(20.0, solo=30.0, noise=1.0, seed=4)
    done: list[int] = []
    reported = estimate_knee(offsets, latencies, resamples=resamples, progress=done.append)
    assert sum(done) == resamples and all(n >= 0 for n in done)
    assert reported == estimate_knee(offsets, latencies, resamples=resamples)
