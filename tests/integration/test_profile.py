"""`stagger profile` against a real tritonserver: a model whose body is a known exclusive
section (20 ms under a file lock shared by its instances, between 4 ms of free work)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from stagger.cli import main
from stagger.core.api import InferenceStreamSpec
from stagger.core.calibration import (
    CalibrationResult,
    NoKnee,
    body_is_exclusive,
    recommended_cost_ms,
    throughput_growth,
)
from stagger.profiler import Endpoint, ProfileReport, full_load, profile
from stagger_testkit.localtriton import LocalTriton
from tests.integration.sidecar_fixtures import MODELS

BODY_MS = 20.0
QUICK = [
    "--runs",
    "3",
    "--solo-runs",
    "10",
    "--saturation",
    "1",
    "2",
    "--saturation-seconds",
    "1",
    "--full-load-seconds",
    "2",
    "-o",
    "json",
]
STUDY_CSV = """offsetMs,latency1Ms,latency2Ms
0,127.1,125.2
20,105.2,105.5
40,84.8,84.3
45,76.7,82.2
60,78.9,82.7
75,72.2,76.3
100,72.8,73.3
"""


def assert_the_body(knee_ms: float | None, context: object = None) -> None:
    """The knee is the 20 ms the lock is held, within the fit's 2 ms either way; and host
    time can only lengthen it: a sleeping holder wakes late on a busy 2-core VM (22.4 and
    24.4 ms in runs on 2026-12-03, when this model's solo latency also read 2-5 ms over its
    28 ms of sleeps)."""
    assert knee_ms is not None, context
    assert BODY_MS - 2.0 <= knee_ms <= BODY_MS + 5.0, (knee_ms, context)


def assert_labelled_by_its_figures(report: dict) -> None:
    """The recommended exclusiveBody is the rule applied to the report's own knee, cost and
    saturation sweep."""
    low = report["knee_ci_ms"][0] if report["knee_ci_ms"] else None
    growth = throughput_growth(report["saturation"])
    expected = body_is_exclusive(report["knee_ms"], report["effective_body_ms"], low, growth)
    assert report["recommended_exclusive_body"] is expected, report


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_the_profiler_finds_the_known_body(
    triton: LocalTriton, capsys: pytest.CaptureFixture[str], scheme: str, tmp_path: Path
) -> None:
    url = f"{scheme}://{triton.http if scheme == 'http' else triton.grpc}"
    plot = tmp_path / "sweep.png"
    code, out, err = run(
        capsys, "profile", "--url", url, "--model", "exclusive", *QUICK, "--plot", str(plot)
    )
    assert code == 0, err
    report = json.loads(out)
    sweep = [(p["offset_ms"], p["latency1_ms"], p["latency2_ms"]) for p in report["sweep"]]
    assert_the_body(report["knee_ms"], (report["solo_ms"], sweep))
    low, high = report["knee_ci_ms"]
    assert low <= report["knee_ms"] <= high
    # Body-bound on an otherwise idle host, as CI's. Another process on both cores of a
    # 2-core machine makes it CPU-bound: the model's work outside its lock (4 + 4 ms and
    # the Python backend's) then cannot overlap, and 2 clients reached 37-41/s, an
    # effective body of 20.6-27 ms (`xz -T2` beside it, 2026-12-06; 29.98 once beside the
    # device tool's file transfer). The rows say which level fell short.
    assert report["effective_body_ms"] == pytest.approx(BODY_MS, rel=0.15), (
        report["saturation"],
        report["solo_ms"],
    )
    assert report["recommended_body_ms"] >= BODY_MS
    # a lock costs its body; whether it reads exclusive hangs on a knee that host time
    # lengthens (a clean CI run read this lock as shared), so the report must agree with
    # its own figures, and the cost, charged either way, is the body
    assert_labelled_by_its_figures(report)
    # the cost is the throughput's, with the margin where the host ran unsteady
    steady = ProfileReport.from_json(report).steady
    assert report["recommended_cost_ms"] == recommended_cost_ms(
        report["effective_body_ms"], report["recommended_body_ms"], steady=steady
    )
    assert any("charged 1 / 0.95" in w for w in report["warnings"]) is not steady
    # 4 + 20 + 4 ms of the model's own work, plus what Triton's Python backend and this VM
    # add: 1.8-5.6 ms on the 2-core machines (29.8, 31.4, 32.4 and, with both cores busy,
    # 33.6 ms on 2026-12-03; add_one alone 0.7-1.0 ms). Never below the work, and well
    # under one more body (a profiler that queued behind another request would read 48 ms).
    assert 27.5 <= report["solo_ms"]["p50"] < 28 + BODY_MS / 2
    # Triton's own count of the model's time per solo request: the work, not the transfer
    # (the median per request: a mean over them read 38.9 ms with both cores busy)
    assert BODY_MS < report["solo_compute_ms"] <= report["solo_ms"]["p50"]
    # usable as is: a manifest with these figures validates (latency >= body)
    assert report["recommended_latency_ms"] >= report["recommended_body_ms"]
    assert any("saturation used one server" in w for w in report["warnings"])
    assert plot.stat().st_size > 10_000
    assert_full_load_paced_at_the_cost(report, seconds=2.0)


def assert_full_load_paced_at_the_cost(report: dict, seconds: float) -> None:
    """Two streams (one server's two instances) started the recommended cost apart, each
    every two costs, for the seconds asked; the lock is held one body at a time and each
    start comes a cost after the last, so no frame queues behind another's body: they
    answer about as alone. Warned of exactly when its own figures pass the bar."""
    full = report["full_load"]
    cost = report["recommended_cost_ms"]
    assert full["streams"] == 2 and full["spacing_ms"] == cost
    assert full["fps"] == pytest.approx(1e3 / (2 * cost))
    due = seconds * 2 * full["fps"]
    assert due - 3 <= full["frames"] <= due + 2, (full, due)
    solo = report["solo_ms"]["p50"]
    assert BODY_MS < full["p50_ms"] <= 1.5 * solo, (full, report["solo_ms"])
    warned = any(w.startswith("at the load its cost admits") for w in report["warnings"])
    assert warned is (full["missed"] > 0 or full["p99_ms"] > 2 * solo), (full, solo)


def test_full_load_past_what_the_device_sustains_is_measured_and_warned_of(
    triton: LocalTriton,
) -> None:
    """Paced at half the lock's body, two streams ask twice what the lock serves: frames
    wait for the other stream's body, answers come after the next frame was due (missed,
    about every other one: a stream sends again only at its first frame due after the
    answer), and the report built on those figures says so."""

    def make(_: int) -> Endpoint:
        return Endpoint(f"http://{triton.http}", "exclusive")

    solo = make(0)
    solo_p50 = float(np.median([solo.infer() * 1e3 for _ in range(10)]))
    solo.close()
    full = full_load(make, 2, BODY_MS / 2, 2.0)
    assert full["missed"] >= full["frames"] / 4, full
    assert full["p99_ms"] > solo_p50 + BODY_MS / 4, (full, solo_p50)
    report = ProfileReport(
        model="exclusive",
        urls=[triton.http],
        solo_ms={"p50": solo_p50},
        sweep=[],
        knee_ms=None,
        knee_ci_ms=None,
        slope=None,
        level_ms=None,
        full_load=full,
    )
    assert report.full_load_too_slow
    assert any(w.startswith("at the load its cost admits (2 streams") for w in report.warnings())


def test_two_servers_sharing_the_device(
    triton: LocalTriton, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lock = str(tmp_path / "device.lock")  # both servers' instances share one "device"
    with (
        LocalTriton(MODELS, env={"STAGGER_BODY_LOCK": lock}) as a,
        LocalTriton(MODELS, env={"STAGGER_BODY_LOCK": lock}) as b,
    ):
        code, out, err = run(
            capsys,
            "profile",
            "--url",
            a.http,
            "--url",
            b.http,
            "--model",
            "exclusive_single",
            *QUICK,
            # five pairs per offset, not three: two single-instance servers on a 2-core VM
            # read the knee at 24.4 ms once in four idle runs, and as flat once in CI
            "--runs",
            "5",
        )
    assert code == 0, err
    report = json.loads(out)
    assert_the_body(report["knee_ms"], report["no_knee"])
    # saturation spreads its clients over both servers: the shared "device" still serves
    # one body at a time, so the cost is the body: exclusive
    assert report["effective_body_ms"] == pytest.approx(BODY_MS, rel=0.15)
    assert_labelled_by_its_figures(report)
    assert not any("one server" in w for w in report["warnings"])


def test_one_instance_on_one_server_is_refused(
    triton: LocalTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "profile", "--url", triton.http, "--model", "exclusive_single")
    assert code == 1
    assert "1 instance" in err and "queueing, not the body" in err and "--url twice" in err


def test_a_table_report_gives_figures_a_manifest_takes_as_is(
    triton: LocalTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "profile", "--url", triton.http, "--model", "exclusive", *QUICK[:-2]
    )
    assert code == 0, err
    assert "recommended latencyMs" in out and "recommended exclusiveBody" in out
    assert "frames/s fit the model's own time" in out  # from Triton's statistics
    assert "at full load" in out and "2 streams at" in out and "frames missed" in out
    snippet = next(line for line in out.splitlines() if "spec: {bodyTimeMs:" in line)
    spec = yaml.safe_load(snippet)["spec"]
    assert spec["costMs"] <= spec["bodyTimeMs"]
    # On a stream exclusiveBody is its own word, a lock's (kept exactly apart); the
    # profile's label is a measurement, so the line leaves it out and says when to add it.
    assert "exclusiveBody" not in spec
    labelled = "two at once gain nothing" in out
    assert ("# add exclusiveBody: true only for a lock or a FIFO" in out) is labelled
    # taken as is: the figures pass InferenceStream's schema and cross-field (CEL) rules
    InferenceStreamSpec.model_validate({"model": "exclusive", "fps": 10, **spec})


def test_a_model_without_a_body_gets_no_made_up_number(
    triton: LocalTriton, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two inferences of add_one do not slow each other: no knee. Sub-millisecond timing
    noise reads either as flat (then the body is the saturation throughput's, said so) or
    as still falling (then there is no number at all); never a knee."""
    code, out, err = run(capsys, "profile", "--url", triton.http, "--model", "add_one", *QUICK)
    if code == 1:
        assert out == "" and "sweep further" in err and "Mean latency by offset: 0 →" in err
        return
    report = json.loads(out)
    assert code == 0 and report["knee_ms"] is None and report["knee_ci_ms"] is None
    assert "no knee in this sweep" in report["no_knee"]
    assert "Mean latency by offset: 0 →" in report["no_knee"]
    best = max(s["throughput_per_s"] for s in report["saturation"])
    assert report["effective_body_ms"] == pytest.approx(1e3 / best)
    assert report["recommended_body_ms"] == pytest.approx(1e3 / best * 1.15, abs=0.1)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--url", "http://127.0.0.1:1", "--model", "m"], "cannot reach Triton at"),
        (["--url", "ftp://x:1", "--model", "m"], "use http://HOST:PORT or grpc://HOST:PORT"),
        (["--model", "m"], "give --url and --model"),
        # waiting for a server that never comes up ends at the bound, then says why
        (
            ["--url", "http://127.0.0.1:1", "--model", "m", "--wait-ready", "0.3"],
            "1 of 1 servers did not have model 'm' ready within 0.3 s: http://127.0.0.1:1",
        ),
        (["--url", "ftp://x:1", "--model", "m", "--wait-ready", "5"], "use http://HOST:PORT"),
        (["--url", "http://x:1", "--model", "m", "--wait-ready", "-1"], "give seconds, 0 or more"),
        (
            ["--url", "http://x:1", "--model", "m", "--full-load-seconds", "-1"],
            "--full-load-seconds -1: give seconds, 0 or more",
        ),
    ],
)
def test_bad_targets_say_what_is_wrong(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    code, _, err = run(capsys, "profile", *args)
    assert code in (1, 2) and says in err


def test_waiting_for_a_server_that_loads_later_starts_when_its_model_is_ready() -> None:
    """``--wait-ready``: a server started after the profiler began waiting (as a
    calibration Job's copies load side by side) is waited for, then profiled."""
    from stagger.profiler import ProfileError, wait_ready

    server = LocalTriton(MODELS)
    heard: list[tuple[int, int]] = []
    url = f"http://{server.http}"
    with pytest.raises(ProfileError, match="did not have model 'exclusive' ready"):
        wait_ready(
            [url], "exclusive", timeout_s=0.5, poll_s=0.1, waiting=lambda *a: heard.append(a)
        )
    assert heard and heard[-1] == (0, 1)  # not up yet: it was not started
    server._launch()  # started, not yet ready
    try:
        wait_ready([url], "exclusive", timeout_s=60, poll_s=0.1)
        assert server.ready()
    finally:
        server.stop()


def test_unknown_model(triton: LocalTriton, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profile", "--url", triton.http, "--model", "nope")
    assert code == 1 and "'nope' is not ready" in err and "unknown model" in err


def result_of(
    capsys: pytest.CaptureFixture[str], csv: Path, result_file: Path
) -> tuple[CalibrationResult, str]:
    """`stagger profile --from-csv CSV --result-file FILE` as a calibration Job runs it
    (model "ssd", solo p50 72 ms): the result it wrote, and what it printed."""
    args = ["--from-csv", str(csv), "--solo-ms", "72", "--model", "ssd"]
    code, out, err = run(capsys, "profile", *args, "--result-file", str(result_file))
    assert code == 0, err
    return CalibrationResult.model_validate_json(result_file.read_text()), out


def test_a_calibration_result_carries_what_the_profile_warned_of(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A calibration Job's result (its termination message) carries the report's warnings,
    so the operator can raise them: here a host that stalled, both requests of a pair swept
    past the knee over 2 x the solo p50 at once."""
    csv, result_file = tmp_path / "stalled.csv", tmp_path / "termination-log"
    csv.write_text(STUDY_CSV + "100,160.4,151.0\n")
    result, out = result_of(capsys, csv, result_file)
    assert "the host or the GPU stalls" in out
    (warning,) = result.warnings
    assert warning.startswith("the host or the GPU stalls: in 1 of the pairs swept past")
    csv.write_text(STUDY_CSV)
    assert result_of(capsys, csv, result_file)[0].warnings == []


def test_from_csv_reads_a_sweep_recorded_elsewhere(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv = tmp_path / "study.csv"
    csv.write_text(STUDY_CSV)
    code, out, err = run(capsys, "profile", "--from-csv", str(csv), "--solo-ms", "72", "-o", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["knee_ms"] == pytest.approx(45, abs=5)
    assert report["solo_ms"] == {"p50": 72.0}
    code, out, _ = run(capsys, "profile", "--from-csv", str(csv))
    assert code == 0 and "recommended bodyTimeMs" in out
    result_file = tmp_path / "termination-log"
    result, _ = result_of(capsys, csv, result_file)
    assert result.model == "ssd" and result.knee_ms == pytest.approx(45, abs=5)
    assert result.body_time_ms == pytest.approx(result.knee_ms * 1.15, abs=0.1)
    code, _, err = run(capsys, "profile", "--from-csv", str(csv), "--result-file", str(result_file))
    assert code == 2 and "--result-file needs --model" in err

    bad = tmp_path / "bad.csv"
    bad.write_text("offset,lat\n0,1\n")
    code, _, err = run(capsys, "profile", "--from-csv", str(bad))
    assert code == 1 and "missing column(s) offsetMs, latency1Ms, latency2Ms" in err
    bad.write_text("offsetMs,latency1Ms,latency2Ms\n0,1,x\n")
    code, _, err = run(capsys, "profile", "--from-csv", str(bad))
    assert code == 1 and "bad.csv:2: not a number" in err


def test_inputs_come_from_files(triton: LocalTriton, tmp_path: Path) -> None:
    from stagger.profiler import Endpoint, ProfileError

    values = tmp_path / "values.npy"
    np.save(values, np.arange(5, dtype=np.float32))
    endpoint = Endpoint(f"grpc://{triton.grpc}", "add_one", data={"INPUT0": values})
    assert endpoint.inputs[0].shape() == [5]
    assert endpoint.infer() > 0
    zeros = Endpoint(triton.http, "add_one")  # none given: zeros, dynamic dimension as 1
    assert zeros.inputs[0].shape() == [1]
    with pytest.raises(ProfileError, match=r"has no input IMAGE \(its inputs: INPUT0\)"):
        Endpoint(triton.http, "add_one", data={"IMAGE": values})
    raw = tmp_path / "frame.jpg"
    raw.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ProfileError, match=r"a FP32 input takes a \.npy file"):
        Endpoint(triton.http, "add_one", data={"INPUT0": raw})


def test_a_malformed_input_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profile", "--url", "x:1", "--model", "m", "--input", "IMAGE")
    assert code == 1 and "--input 'IMAGE': use NAME=FILE" in err


def test_a_sweep_that_shows_no_knee_carries_its_points(triton: LocalTriton) -> None:
    """A profile that fails on its sweep keeps the sweep it saw, so a caller can record it
    and replay it (bench.gpu.loop writes it to its result). Swept to 1 µs, the offsets
    round to two distinct values: never a knee, whatever the host's timing."""
    with pytest.raises(NoKnee, match="at least 3 distinct offsets") as e:
        profile([triton.http], "exclusive", solo_runs=5, sweep_runs=2, max_offset_ms=0.001)
    assert not e.value.flat
    assert len(e.value.sweep) == 22 and {p.offset_ms for p in e.value.sweep} == {0.0, 0.001}
    # the offsets take turns, forward then backward, so a drift over time is no slope
    offsets = [p.offset_ms for p in e.value.sweep]
    assert offsets[:11] == sorted(offsets[:11]) and offsets[11:] == offsets[10::-1]
