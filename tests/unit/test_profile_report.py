"""What `stagger profile` warns about before a user trusts its figures."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest

from stagger.core.calibration import WARNING_CHARS, SweepPoint, recommended_cost_ms
from stagger.profile_cmd import one_at_a_time
from stagger.profiler import Endpoint, ProfileError, ProfileReport, full_load, settled_totals


def report(
    knee_ms: float | None, p50: float, p99: float, sweep: list[SweepPoint] | None = None
) -> ProfileReport:
    return ProfileReport(
        model="small",
        urls=["localhost:8001", "localhost:8002"],
        solo_ms={"p50": p50, "p99": p99},
        sweep=sweep or [],
        knee_ms=knee_ms,
        knee_ci_ms=None if knee_ms is None else (knee_ms - 1, knee_ms + 1),
        slope=None if knee_ms is None else -0.8,
        level_ms=None if knee_ms is None else p50,
    )


def test_a_knee_past_the_solo_latency_is_flagged_as_a_misread_sweep() -> None:
    """Run 48 on an H200: the small detector's knee came out at 15.1 ms, past its 13.2 ms
    solo p50 (a body is part of its request, so none outlasts it): the two servers settled
    2.6 ms apart past the overlap and the fit read the slower one's surplus as a fall. The
    recommended body (17.5 ms) left the mixed fleet 3 streams where a knee within the
    request admits 4 (replayed); the report says re-run."""
    (warning,) = report(15.14, 13.24, 14.22).warnings()
    assert "the knee (15.1 ms) lies past the solo latency (p50 13.2 ms)" in warning
    assert "re-run the profile" in warning
    assert report(8.63, 11.51, 13.57).warnings() == []  # run 47's: a body inside its request
    assert report(None, 11.51, 13.57).warnings() == []  # no knee, nothing to judge


def test_an_unsteady_solo_latency_is_flagged() -> None:
    r = report(20.0, 21.0, 28.0)
    (warning,) = r.warnings()
    assert warning.startswith("solo latency is unsteady (p99 28.0 ms is 1.33 x p50)")
    assert "margin" not in warning  # nothing measured a cost: no margin to speak of
    assert not r.steady and report(20.0, 21.0, 27.0).steady


def test_an_unsteady_measurement_is_charged_a_margin_and_says_so_once() -> None:
    """The cost of an unsteady body, or of one measured on a host that stalled, is charged
    / 0.95 (``UNSTEADY_SHARE``); the warning says so, once however many reasons there are.
    A knee past the solo latency misreads the body, not the cost: still steady."""
    unsteady = report(20.0, 21.0, 28.0)
    unsteady.recommended_cost_ms = recommended_cost_ms(12.0, 20.0, steady=unsteady.steady)
    assert unsteady.recommended_cost_ms == 12.64  # 12 / 0.95, rounded up to 0.01 ms
    (warning,) = unsteady.warnings()
    assert warning.endswith("costMs is charged 1 / 0.95 of the measured cost for it")
    stalls = [SweepPoint(24.0, 45.0, 46.0)]
    both = report(20.0, 21.0, 28.0, stalls)
    both.recommended_cost_ms = 12.64
    assert sum("margin" in w or "charged 1 / 0.95" in w for w in both.warnings()) == 1
    stalling = report(20.0, 21.0, 22.0, stalls)
    stalling.recommended_cost_ms = 12.64
    assert not stalling.steady
    (warning,) = stalling.warnings()
    assert warning.startswith("the host or the GPU stalls")
    assert warning.endswith("costMs is charged 1 / 0.95 of the measured cost for it")
    misread = report(23.0, 21.0, 22.0)
    assert misread.warnings() and misread.steady
    assert recommended_cost_ms(12.0, 20.0, steady=misread.steady) == 12.0


def test_a_host_that_stalls_is_flagged_from_the_sweep() -> None:
    """Run 59 (an H100 whose host stalled every 2-5 s): the 30 solo requests, half a second
    back to back, read p99 17.5 ms against p50 14.4, so no unsteadiness was flagged; but past
    the knee (13.8 ms), where overlap slows neither request, three pairs had both answers
    over 2 x the solo p50 at once (points from its recorded sweep)."""
    stalled = [SweepPoint(21.632, 55.356, 40.737), SweepPoint(14.214, 37.31, 39.443)]
    clean = [SweepPoint(o, 15.2, 15.9) for o in (12.979, 15.142, 17.306, 19.469)]
    overlapping = [SweepPoint(0.0, 29.006, 32.174)]  # before the knee: the bodies overlap
    r = report(13.8, 14.42, 17.5, overlapping + clean + stalled)
    assert r.stalled_pairs() == stalled
    (warning,) = r.warnings()
    assert warning.startswith("the host or the GPU stalls: in 2 of the pairs swept past 13.8 ms")
    assert "up to 55.4 ms" in warning
    one_slow = [SweepPoint(19.469, 58.721, 16.0)]  # one server slow, the other not: no stall
    assert report(13.8, 14.42, 17.5, overlapping + clean + one_slow).warnings() == []
    # no knee: past the solo p50 (14.42 ms), where two requests cannot overlap
    assert report(None, 14.42, 17.5, overlapping + stalled).stalled_pairs() == stalled[:1]
    assert report(None, 14.42, 17.5, [SweepPoint(10.0, 30.0, 31.0)]).stalled_pairs() == []


def test_a_report_read_back_from_its_json_is_the_report_with_the_same_warnings() -> None:
    """A calibration Job's profiler prints the report as JSON; read back, it is the same
    report, and what it derives (its warnings, its stalled pairs) is derived alike."""
    import json

    stalled = [SweepPoint(20.0, 40.0, 41.0), SweepPoint(24.0, 15.0, 15.5)]
    original = report(12.0, 15.0, 21.0, stalled)
    original.saturation = [{"clients": 2.0, "throughput_per_s": 80.0}]
    original.effective_body_ms, original.recommended_cost_ms = 12.5, 12.5
    doc = json.loads(json.dumps(original.to_json()))
    again = ProfileReport.from_json(doc)
    assert again == original
    assert again.warnings() == original.warnings() == doc["warnings"]
    assert len(again.stalled_pairs()) == 1
    no_knee = report(None, 15.0, 16.0)
    assert ProfileReport.from_json(json.loads(json.dumps(no_knee.to_json()))) == no_knee


def test_the_model_s_own_time_per_solo_request_comes_from_triton_s_statistics() -> None:
    """Triton counts each model's executions and the nanoseconds they spent computing
    (input, infer, output). Two readings around the solo requests give the body alone,
    from HTTP's JSON and from gRPC's message as a dict, whose 64-bit counts are strings."""
    from stagger.profiler import compute_totals, solo_compute_ms

    def stats(count: int, ns: int, as_text: bool = False) -> dict[str, Any]:
        def n(x: int) -> int | str:
            return str(x) if as_text else x

        part = {"count": n(count), "ns": n(ns)}
        return {
            "model_stats": [
                {
                    "name": "detector",
                    "version": "1",
                    "inference_stats": {
                        "success": {"count": n(count), "ns": n(ns * 2)},  # queue and all: not it
                        "queue": {"count": n(count), "ns": n(ns)},
                        "compute_input": {"count": n(count), "ns": n(ns // 10)},
                        "compute_infer": part,
                        "compute_output": {"count": n(count), "ns": n(ns // 10)},
                    },
                }
            ]
        }

    for as_text in (False, True):
        before = compute_totals(stats(8, 96_000_000, as_text))
        after = compute_totals(stats(38, 456_000_000, as_text))
        assert before == (8, 115_200_000)
        assert solo_compute_ms(before, after) == 14.4  # 30 requests, 12 ms + 2 x 1.2 ms each
    assert compute_totals({"model_stats": []}) is None  # statistics off: nothing to say
    assert solo_compute_ms(None, (38, 1)) is None
    assert solo_compute_ms((38, 1), (38, 1)) is None  # no request between the two


def test_the_report_says_how_many_frames_a_second_fit_the_model_s_own_time() -> None:
    """Run 86's profile: 13.86 ms alone, 12.12 ms a frame at saturation. 72.2 frames/s fit
    one after another, the GPU sustains 82.5/s: time-sliced, the streams past 72 answer
    later. Run 82's (11.78 ms alone, 12.03 ms a frame): its saturation fits, nothing to add."""
    slow = one_at_a_time(13.86, 12.12)
    assert slow.startswith("up to 72.2 frames/s fit the model's own time")
    assert "the GPU sustains 82.5/s" in slow and "ModelTimeFits" in slow
    assert one_at_a_time(11.78, 12.03) == (
        "up to 84.9 frames/s fit the model's own time, one after another"
    )
    assert "sustains" not in one_at_a_time(11.78, None)  # no throughput measured


class LaggingStatistics:
    """Triton's statistics as a loaded host reads them: an answered execution is counted
    only a few reads later."""

    def __init__(self, readings: list[tuple[int, int] | None]) -> None:
        self.readings, self.reads = readings, 0

    def compute_totals(self) -> tuple[int, int] | None:
        self.reads += 1
        return self.readings[min(self.reads, len(self.readings)) - 1]


def test_statistics_are_read_once_they_count_every_answered_execution() -> None:
    lagging = LaggingStatistics([(9, 900), (9, 900), (10, 1030), (11, 1100)])
    assert settled_totals(cast(Endpoint, lagging), 10) == (10, 1030)
    assert lagging.reads == 3
    # never counted (another client reset them, statistics off): read as they are
    stuck = LaggingStatistics([(3, 30)])
    assert settled_totals(cast(Endpoint, stuck), 10) == (3, 30)
    assert settled_totals(cast(Endpoint, LaggingStatistics([None])), 10) is None


def full_load_figures(p99_ms: float, missed: float = 0.0) -> dict[str, float]:
    return {
        "streams": 9.0,
        "fps": 9.1,
        "spacing_ms": 12.2,
        "frames": 410.0,
        "missed": missed,
        "p50_ms": 16.0,
        "p99_ms": p99_ms,
    }


def test_a_body_that_slows_at_full_load_is_flagged_though_it_looked_steady() -> None:
    """Time-sliced on an H100 the eager RetinaNet's solo p99 was 1.03 x its p50 and its
    sweep looked as the CUDA graph's did, but its admitted streams answered at 2.25 and
    2.33 x solo (runs 79, 83): what the full-load stage measures, the profile says."""
    steady = report(12.3, 13.0, 13.4)
    assert steady.steady and steady.warnings() == []
    steady.full_load = full_load_figures(p99_ms=30.3)
    (warning,) = steady.warnings()
    assert warning.startswith(
        "at the load its cost admits (9 streams at 9.1 fps, starts 12.2 ms apart, as a full "
        "GPU's table starts them) answers took 30.3 ms at p99, 2.33 x the solo p50, and 0 of "
        "410 frames were missed"
    )
    assert "an eager model gains from a CUDA graph; a lower throughputCap" in warning
    assert "of each second" not in warning  # no solo compute measured: nothing to say of it
    # the model's own time fills 9 x 9.1 x 12.6 ms = 1.03 of each second: said, with the fix
    steady.solo_compute_ms = 12.6
    assert steady.full_load_model_time_share == pytest.approx(12.6 * 9 * 9.1 / 1e3)
    (warning,) = steady.warnings()
    assert (
        "a CUDA graph; the model alone needs 1.03 of each second at this load (if time-sliced, "
        "chargeModelTime admits only what fits); a lower throughputCap admits fewer"
    ) in warning
    # a calibration Job's result keeps WARNING_CHARS of each: the whole, at the largest
    # figures a calibration gives (64 servers, 5-digit latencies)
    steady.full_load = {
        "streams": 64.0,
        "fps": 999.9,
        "spacing_ms": 12345.6,
        "frames": 99999.0,
        "missed": 99999.0,
        "p50_ms": 16.0,
        "p99_ms": 12345.6,
    }
    steady.solo_compute_ms = 999.0
    (longest,) = steady.warnings()
    assert "of each second" in longest and len(longest) <= WARNING_CHARS
    steady.full_load = full_load_figures(p99_ms=30.3)
    steady.solo_compute_ms = 11.0  # 0.90 of the second: it fits, so nothing of it
    assert "of each second" not in steady.warnings()[0]
    steady.solo_compute_ms = None
    # within the bar, nothing; one missed frame is enough, however quick the rest
    steady.full_load = full_load_figures(p99_ms=25.9)
    assert steady.warnings() == [] and not steady.full_load_too_slow
    steady.full_load = full_load_figures(p99_ms=15.0, missed=1)
    assert steady.full_load_too_slow and "1 of 410 frames were missed" in steady.warnings()[0]


def test_the_full_load_figures_survive_the_json_a_job_writes() -> None:
    r = report(12.3, 13.0, 13.4)
    r.full_load = full_load_figures(p99_ms=30.3)
    again = ProfileReport.from_json(r.to_json())
    assert again.full_load == r.full_load and again.warnings() == r.warnings()
    # a report written before the stage existed reads as one that did not run it
    old = {k: v for k, v in r.to_json().items() if k != "full_load"}
    assert ProfileReport.from_json(old).full_load is None


def test_full_load_refuses_a_pace_of_nothing() -> None:
    """A cost of 0 would send without end; no server is asked anything."""

    def make(_: int) -> Endpoint:
        raise AssertionError("no server is asked")

    with pytest.raises(ProfileError, match="2 streams 0 ms apart paces nothing"):
        full_load(make, 2, 0.0, 1.0)


class PacedEndpoint:
    """Answers in ``answer_s``; the ``fail_at``-th request of it fails as Triton's would."""

    def __init__(self, answer_s: float, fail_at: int | None = None) -> None:
        self.answer_s, self.fail_at, self.sent = answer_s, fail_at, 0
        self.closed_in: list[threading.Thread] = []
        self.client = self

    def is_server_live(self) -> bool:
        return True

    def infer(self) -> float:
        self.sent += 1
        if self.sent == self.fail_at:
            raise ProfileError("model 'm' failed at http://b:8000: out of memory")
        time.sleep(self.answer_s)
        return self.answer_s

    def close(self) -> None:
        self.closed_in.append(threading.current_thread())


def test_full_load_paces_each_stream_and_counts_an_answer_past_its_next_frame_as_a_miss() -> None:
    """Two streams 20 ms apart, each every 40 ms, for 0.4 s: 10 frames due each. The quick
    one answers every frame; the slow one (50 ms, past its next frame) sends every other
    frame and misses the rest. A client is per thread: each stream's thread closes its own,
    and the caller the one the endpoint was made with."""
    quick, slow = PacedEndpoint(0.005), PacedEndpoint(0.05)
    endpoints = [quick, slow]
    out = full_load(lambda i: cast(Endpoint, endpoints[i]), 2, 20.0, 0.4)
    assert out["streams"] == 2 and out["fps"] == pytest.approx(25.0)
    assert quick.sent == 10 and slow.sent == 5, (quick.sent, slow.sent)
    assert out["frames"] == 20 and out["missed"] == 5
    assert 5.0 <= out["p50_ms"] < 50.0 and out["p99_ms"] >= 50.0
    for endpoint in endpoints:
        assert len(endpoint.closed_in) == 2
        assert threading.main_thread() in endpoint.closed_in


def test_full_load_sends_the_frames_due_whatever_the_clocks_magnitude(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Due times are counted from the start, not summed a period at a time: near 1,500 s of
    a monotonic clock (and past 65,536 s, a host up 18 hours: a clean CI run), 0.04 s
    summed ten times falls just short of 0.4 s, and the stage sent an 11th frame of 10."""
    real = time.perf_counter
    start = real()
    monkeypatch.setattr(time, "perf_counter", lambda: real() - start + 1500.0)
    quick = PacedEndpoint(0.002)
    out = full_load(lambda i: cast(Endpoint, quick), 1, 40.0, 0.4)
    assert quick.sent == 10 and out["frames"] == 10 and out["missed"] == 0, quick.sent


def test_a_server_failing_at_full_load_ends_the_stage_with_its_words() -> None:
    endpoints = [PacedEndpoint(0.002), PacedEndpoint(0.002, fail_at=3)]
    with pytest.raises(ProfileError, match="out of memory"):
        full_load(lambda i: cast(Endpoint, endpoints[i]), 2, 10.0, 5.0)
    # the other stream stopped too, well before its 5 s: about as many frames as the failed one
    assert endpoints[0].sent <= 5, endpoints[0].sent
