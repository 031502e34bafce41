"""ModelProfile status (measured body, drift) and calibration Job outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stagger.core.api import InferenceStream, ModelProfile
from stagger.core.placement import GpuUsage, Plan
from stagger_operator.calibration import RECALIBRATE, CalibrationOutcome, drift_recalibrations
from stagger_operator.settings import OperatorSettings
from stagger_operator.status import profile_statuses
from tests.factories import calibration_result

NOW = datetime(2026, 11, 21, 14, 0, tzinfo=UTC)


def profile(
    body: float = 10.5,
    mode: str = "time-slicing",
    status: Any = None,
    *,
    source: str = "manual",
    measured_at: datetime | None = None,
    annotations: dict[str, str] | None = None,
) -> ModelProfile:
    return ModelProfile.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": f"retinanet-h200-{mode}", "annotations": annotations or {}},
            "spec": {
                "model": "retinanet",
                "gpuProduct": "NVIDIA-H200",
                "sharingMode": mode,
                "bodyTimeMs": body,
                "latencyMs": 18.5,
                "source": source,
                **({"measuredAt": measured_at} if measured_at else {}),
            },
            **({"status": status} if status else {}),
        }
    )


def gpu(node: str, index: int, mode: str = "time-slicing", product: str = "NVIDIA-H200"):  # type: ignore[no-untyped-def]
    return GpuUsage(node, index, None, product, mode, 0.5, 1000, 143771, 2)


GPUS = [gpu("a", 0), gpu("a", 1), gpu("b", 0, "mps"), gpu("c", 0, product="NVIDIA-L4")]


def test_the_median_of_matching_gpus_is_compared_with_the_profile() -> None:
    measured = {
        ("a", 0): {"retinanet": 13.0, "other": 99.0},
        ("a", 1): {"retinanet": 13.8},
        ("b", 0): {"retinanet": 6.2},  # MPS: another profile's business
        ("c", 0): {"retinanet": 40.0},  # another product
    }
    out = profile_statuses([profile()], measured, GPUS, 20.0, NOW)
    status = out["retinanet-h200-time-slicing"]
    assert status["observedBodyMs"] == pytest.approx(13.4)
    assert status["driftPercent"] == pytest.approx(27.6)
    (drifted,) = status["conditions"]
    assert (drifted["type"], drifted["status"], drifted["reason"]) == (
        "Drifted",
        "True",
        "BodyDrift",
    )
    assert "13.40 ms on 2 GPU(s)" in drifted["message"] and "re-calibrate" in drifted["message"]


def test_within_tolerance_keeps_its_transition_time_and_unmeasured_profiles_are_left_alone() -> (
    None
):
    earlier = "2026-11-20T09:00:00Z"
    old = {
        "conditions": [
            {
                "type": "Drifted",
                "status": "False",
                "reason": "WithinTolerance",
                "lastTransitionTime": earlier,
            }
        ]
    }
    measured = {("a", 0): {"retinanet": 11.0}}
    out = profile_statuses([profile(status=old), profile(mode="mps")], measured, GPUS, 20.0, NOW)
    (cond,) = out["retinanet-h200-time-slicing"]["conditions"]
    assert cond["status"] == "False" and cond["lastTransitionTime"] == earlier
    assert "retinanet-h200-mps" not in out  # nothing measured on MPS GPUs: no claim


def _job(name: str, failed: bool = False) -> dict[str, Any]:
    conditions = (
        [
            {
                "type": "Failed",
                "status": "True",
                "reason": "DeadlineExceeded",
                "message": "Job was active longer than specified deadline",
            }
        ]
        if failed
        else []
    )
    return {"metadata": {"name": name, "namespace": "ns"}, "status": {"conditions": conditions}}


def _pod(job: str, exit_code: int, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{job}-p", "namespace": "ns", "labels": {"job-name": job}},
        "status": {
            "containerStatuses": [
                {
                    "name": "stagger-profile",
                    "state": {"terminated": {"exitCode": exit_code, "message": message}},
                }
            ]
        },
    }


def _uncalibrated_cam() -> tuple[InferenceStream, Plan]:
    """A stream of 5,000 MiB with no body time, alone on an idle T4 (16,000 MiB), and the
    plan that leaves it to be calibrated."""
    from stagger.core.placement import plan
    from tests.factories import cluster, stream

    cam = stream("cam", 10, body=None, memoryMiB=5000)
    cam.spec.template = {
        "spec": {"containers": [{"name": "triton", "image": "t", "args": ["tritonserver"]}]}
    }
    cam.metadata.uid = "uid-cam"
    return cam, plan([cam], cluster(("gpu-a", 1)))


def test_calibration_outcomes_from_jobs_and_their_pods() -> None:
    from stagger_operator.calibration import calibration_outcomes

    good = calibration_result("m")
    done = _job("empty")
    done["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    jobs = [_job("ok"), _job("retrying"), _job("garbled"), _job("late", failed=True), done]
    pods = [
        _pod("ok", 1, "first try failed"),
        _pod("ok", 0, good.model_dump_json(by_alias=True)),
        _pod("retrying", 1, "Triton not ready yet"),  # the Job has a retry left: running
        _pod("garbled", 0, "not json"),
    ]
    out = calibration_outcomes(jobs, pods)
    assert out[("ns", "ok")].result == good
    assert out[("ns", "retrying")].result is None and out[("ns", "retrying")].failure is None
    assert "unreadable" in (out[("ns", "garbled")].failure or "")  # never waits for ever
    assert "DeadlineExceeded" in (out[("ns", "late")].failure or "")
    assert out[("ns", "empty")].failure == "the Job completed without a result"


def test_drift_asks_to_recalibrate_calibrated_profiles_after_the_cooldown() -> None:
    measured = {("a", 0): {"retinanet": 14.0}}  # +33 %: drifted
    settings = OperatorSettings(recalibration_cooldown_s=3600)
    hour = timedelta(hours=1)
    candidates = {
        "fresh": profile(source="calibration", measured_at=NOW - hour / 2),
        "old": profile(source="calibration", measured_at=NOW - 2 * hour),
        "manual": profile(source="manual"),
        "asked": profile(source="calibration", annotations={RECALIBRATE: "now"}),
    }
    asked = {}
    for label, p in candidates.items():
        statuses = profile_statuses([p], measured, GPUS, 20.0, NOW)
        asked[label] = drift_recalibrations([p], statuses, settings, NOW) == [p.name]
    assert asked == {"fresh": False, "old": True, "manual": False, "asked": False}
    within = profile_statuses([profile(13.5, source="calibration")], measured, GPUS, 20.0, NOW)
    assert drift_recalibrations([profile(13.5, source="calibration")], within, settings, NOW) == []
    off = OperatorSettings(recalibrate_on_drift=False)
    old = candidates["old"]
    statuses = profile_statuses([old], measured, GPUS, 20.0, NOW)
    assert drift_recalibrations([old], statuses, off, NOW) == []


def test_a_recalibration_that_cannot_run_says_why() -> None:
    from stagger.core.placement import Plan
    from stagger_operator.calibration import recalibration_state
    from tests.factories import stream

    asked = profile(annotations={RECALIBRATE: "now"})
    settings = OperatorSettings()
    no_stream = recalibration_state(
        [asked],
        [stream("cam", 10, model="other")],
        Plan((), tuple(GPUS), ()),
        {},
        settings,
        now=NOW,
    )
    no_gpu = recalibration_state(
        [asked], [stream("cam", 10, model="retinanet")], Plan((), (), ()), {}, settings, now=NOW
    )
    for state, why in (
        (no_stream, "no InferenceStream runs model retinanet"),
        (no_gpu, "no time-slicing GPU of product NVIDIA-H200"),
    ):
        assert state.jobs == [] and state.profiles == []
        ((name, kind, reason, message),) = state.events
        assert (name, kind, reason) == (asked.name, "Warning", "RecalibrationBlocked")
        assert why in message
    unasked = recalibration_state(
        [profile()],
        [stream("cam", 10, model="retinanet")],
        Plan((), tuple(GPUS), ()),
        {},
        settings,
        now=NOW,
    )
    assert unasked.jobs == [] and unasked.events == []


def test_what_a_recalibration_warned_of_is_a_warning_on_its_profile() -> None:
    """The Job's result carries stagger profile's warnings (a host that stalls, an unsteady
    body): the Recalibrated Event says them and is a Warning; without them it is Normal."""
    from stagger.core.placement import Plan
    from stagger_operator.calibration import CalibrationOutcome, recalibration_state
    from tests.emulator import TEMPLATE
    from tests.factories import calibration_result, stream

    asked = profile(annotations={RECALIBRATE: "now"})
    cam = stream("cam", 10, model="retinanet", template=TEMPLATE)
    cam.metadata.uid = "uid-cam"  # as read from the API server
    args = ([asked], [cam], Plan((), tuple(GPUS), ()))
    (job,) = recalibration_state(*args, {}, OperatorSettings(), now=NOW).jobs
    key = (job["metadata"]["namespace"], job["metadata"]["name"])
    stalls = "the host or the GPU stalls: in 3 of the pairs swept past 13.8 ms"
    for warnings, kind in (([stalls], "Warning"), ([], "Normal")):
        outcome = CalibrationOutcome(result=calibration_result(warnings=warnings))
        state = recalibration_state(*args, {key: outcome}, OperatorSettings(), now=NOW)
        ((name, event_kind, reason, message),) = state.events
        assert (name, event_kind, reason) == (asked.name, kind, "Recalibrated")
        assert (f"stagger profile warned: {stalls}" in message) == bool(warnings)
    # a failure says with how many servers, and why not more: a one-server profile of a
    # model with one instance fails, and copies are the way out
    one_instance = "stagger profile: model 'retinanet' has 1 instance at http://127.0.0.1:8000"
    failed = {key: CalibrationOutcome(failure=one_instance)}
    state = recalibration_state(*args, failed, OperatorSettings(), now=NOW)
    ((_, event_kind, reason, message),) = state.events
    assert (event_kind, reason) == ("Warning", "RecalibrationFailed")
    servers = job["metadata"]["annotations"]["stagger.dev/calibration-servers"]
    assert servers.startswith("one Triton server (")
    assert message.startswith(f"measuring with {servers} failed: {one_instance}. Delete Job")


def test_a_recalibration_runs_as_many_servers_as_the_gpu_s_free_memory_holds() -> None:
    """The least used GPU of the profile's pool has 7,771 MiB free and the stream holds
    2,500 MiB a server: the Job runs 3 copies of its Triton, not the 16 asked for, and the
    Recalibrating Event says so; on an idle GPU it runs all 16."""
    from stagger.core.placement import Plan
    from stagger_operator import manifests
    from stagger_operator.calibration import recalibration_state
    from tests.factories import stream

    asked = profile(annotations={RECALIBRATE: "now"})
    triton = {"name": "triton", "image": "t", "args": ["tritonserver", "--model-repository=/m"]}
    cam = stream("cam", 10, model="retinanet", memoryMiB=2500)
    cam.spec.template = {"spec": {"containers": [triton]}}
    cam.metadata.uid = "uid-cam"  # as read from the API server
    busy = GpuUsage("a", 0, None, "NVIDIA-H200", "time-slicing", 0.5, 136_000, 143_771, 2)
    idle = GpuUsage("a", 1, None, "NVIDIA-H200", "time-slicing", 0.0, 0, 143_771, 0)
    for gpus, servers in (
        ([busy], "3 Triton servers (7771 MiB of GPU memory free, 2500 MiB a server)"),
        ([busy, idle], "16 Triton servers"),
    ):
        state = recalibration_state(
            [asked], [cam], Plan((), tuple(gpus), ()), {}, OperatorSettings(), now=NOW
        )
        (job,) = state.jobs
        count = int(servers.split(maxsplit=1)[0])
        assert len(job["spec"]["template"]["spec"]["initContainers"]) == count
        assert job["metadata"]["annotations"][manifests.ANNOTATION_CALIBRATION_SERVERS] == servers
        ((_, kind, reason, message),) = state.events
        assert (kind, reason) == ("Normal", "Recalibrating")
        assert f"with {servers}, with the pod template of default/cam" in message


def test_a_recalibration_keeps_the_gpu_its_job_measures_and_shares_none() -> None:
    """The least used GPU changes while a re-calibration runs (a stream leaves another):
    its Job keeps the GPU it measures, as a new one would start it again. A GPU another
    model's Job measures is taken only where no other has room to be measured."""
    from stagger.core.placement import Plan, RunningCalibration
    from stagger_operator.calibration import recalibration_state
    from tests.factories import stream

    asked = profile(annotations={RECALIBRATE: "now"})
    cam = stream("cam", 10, model="retinanet")
    cam.spec.template = {"spec": {"containers": [{"name": "triton", "image": "t"}]}}
    cam.metadata.uid = "uid-cam"
    busy = GpuUsage("a", 0, None, "NVIDIA-H200", "time-slicing", 0.5, 4000, 143_771, 2)
    idle = GpuUsage("a", 1, None, "NVIDIA-H200", "time-slicing", 0.0, 0, 143_771, 0)

    def site(*calibrating: RunningCalibration) -> str:
        state = recalibration_state(
            [asked],
            [cam],
            Plan((), (busy, idle), ()),
            {},
            OperatorSettings(),
            now=NOW,
            calibrating=calibrating,
        )
        (job,) = state.jobs
        return str(job["metadata"]["labels"]["stagger.dev/gpu"])

    assert site() == "a.1"  # the idle one
    assert site(RunningCalibration("a", 0, "retinanet")) == "a.0"  # its Job runs there
    assert site(RunningCalibration("a", 1, "yolo")) == "a.0"  # another model's Job


def test_a_stream_waiting_for_calibration_is_told_how_many_servers_measure_it() -> None:
    """The planner says where the stream's model can be measured and how much GPU memory
    is free there (16,000 MiB on an idle T4); at 5,000 MiB a server the Job runs 3 copies
    of the stream's Triton, and the stream's Calibrating message says so."""
    from stagger.core.api import StreamPhase
    from stagger_operator.calibration import calibration_state

    cam, planned = _uncalibrated_cam()
    (unplaced,) = planned.unplaced
    assert unplaced.calibrate_on[0].memory_free_mib == 16000
    state = calibration_state([cam], planned, {}, OperatorSettings(), NOW)
    (job,) = state.jobs
    assert len(job["spec"]["template"]["spec"]["initContainers"]) == 3
    status = state.statuses[("default", "cam")]
    assert status["phase"] == StreamPhase.CALIBRATING
    assert (
        "with 3 Triton servers (16000 MiB of GPU memory free, 5000 MiB a server): Job "
        in status["message"]
    )


def test_a_calibration_beside_running_streams_under_mps_runs_only_the_copies_mps_takes() -> None:
    """The only MPS GPU runs 15 streams' servers (30 of MPS's 48 CUDA contexts): the Job
    for a 16th model runs 9 copies, not the 16 asked for, whose last 7 would never load
    (runs 89-90), and the stream's Calibrating message says why."""
    from stagger.core.placement import plan
    from stagger_operator.calibration import calibration_state
    from tests.factories import cluster, stream

    running = [stream(f"cam-{i}", 5, body=2.0, model="light", memoryMiB=2000) for i in range(15)]
    new = stream("new", 10, body=None, memoryMiB=2000)
    new.spec.template = {
        "spec": {"containers": [{"name": "triton", "image": "t", "args": ["tritonserver"]}]}
    }
    new.metadata.uid = "uid-new"
    planned = plan([*running, new], cluster(("gpu-a", 1), memory=81559, sharing="mps"))
    assert len(planned.shards) == 15
    (unplaced,) = planned.unplaced
    assert unplaced.calibrate_on[0].servers == 15
    state = calibration_state([*running, new], planned, {}, OperatorSettings(), NOW)
    (job,) = state.jobs
    assert len(job["spec"]["template"]["spec"]["initContainers"]) == 9
    assert (
        "with 9 Triton servers (an MPS GPU takes 24 model servers (mpsServersPerGpu) and 15 "
        "streams' servers run there)" in state.statuses[("default", "new")]["message"]
    )


def test_a_calibration_job_that_created_no_pod_for_a_minute_says_where_to_look() -> None:
    """Admission can refuse a Job's pod (a LimitRange's min against the Triton copies' zero
    requests, a ResourceQuota): the Job then creates none, shows it only in its events, and
    waits out its deadline. A minute on, the stream's message says so and where to look;
    a Job younger than that, or one with a pod, says nothing more."""
    from stagger.core.api import StreamPhase
    from stagger_operator.calibration import (
        NO_POD_S,
        CalibrationOutcome,
        calibration_outcomes,
        calibration_state,
    )

    def created(name: str, seconds_ago: float) -> dict[str, Any]:
        job = _job(name)
        at = NOW - timedelta(seconds=seconds_ago)
        job["metadata"]["creationTimestamp"] = at.isoformat().replace("+00:00", "Z")
        return job

    stuck, young, running = created("stuck", 90), created("young", 10), created("running", 300)
    pod = {"metadata": {"name": "running-p", "namespace": "ns", "labels": {"job-name": "running"}}}
    out = calibration_outcomes([stuck, young, running], [pod], NOW)
    assert out[("ns", "stuck")].podless_s == pytest.approx(90)
    assert out[("ns", "stuck")].waiting_for_pod(stuck) == (
        "; it has created no pod in 90 s: kubectl describe job -n ns stuck says why "
        "(a LimitRange's min, a ResourceQuota, Pod Security admission)"
    )
    assert out[("ns", "young")].waiting_for_pod(young) == ""  # under NO_POD_S
    assert out[("ns", "running")].podless_s is None
    assert calibration_outcomes([stuck], [])[("ns", "stuck")].podless_s is None  # no clock
    garbled = created("garbled", 0)
    garbled["metadata"]["creationTimestamp"] = "yesterday"
    assert calibration_outcomes([garbled], [], NOW)[("ns", "garbled")] == CalibrationOutcome()

    cam, planned = _uncalibrated_cam()
    (job,) = calibration_state([cam], planned, {}, OperatorSettings(), NOW).jobs
    key = (job["metadata"]["namespace"], job["metadata"]["name"])
    waiting = {key: CalibrationOutcome(podless_s=NO_POD_S + 5)}
    state = calibration_state([cam], planned, waiting, OperatorSettings(), NOW)
    status = state.statuses[("default", "cam")]
    assert status["phase"] == StreamPhase.CALIBRATING
    assert status["message"].endswith(
        f"it has created no pod in 65 s: kubectl describe job -n default {key[1]} says why "
        "(a LimitRange's min, a ResourceQuota, Pod Security admission)"
    )


def test_a_calibration_job_whose_servers_restart_says_which_and_where_to_read_why() -> None:
    """A copy of Triton whose model does not load exits, and the kubelet restarts it (a
    native sidecar); the profiler would wait for it until its deadline. The stream is told
    at once which servers restarted and where their logs say why (runs 88-90: "busy or
    unavailable" under MPS). A failed pod the Job replaces says nothing."""
    from stagger.core.api import StreamPhase
    from stagger_operator.calibration import calibration_outcomes, calibration_state

    cam, planned = _uncalibrated_cam()
    (job,) = calibration_state([cam], planned, {}, OperatorSettings(), NOW).jobs
    name = job["metadata"]["name"]

    def pod(phase: str, restarts: dict[str, int]) -> dict[str, Any]:
        return {
            "metadata": {"name": f"{name}-x", "namespace": "default", "labels": {"job-name": name}},
            "status": {
                "phase": phase,
                "initContainerStatuses": [
                    {"name": n, "restartCount": r} for n, r in restarts.items()
                ],
            },
        }

    steady = pod("Running", {"triton": 0, "triton-copy-1": 0, "triton-copy-2": 0})
    crashing = pod("Running", {"triton": 0, "triton-copy-1": 2, "triton-copy-2": 1})
    failed = pod("Failed", {"triton": 0, "triton-copy-1": 3, "triton-copy-2": 0})
    key = ("default", name)
    assert calibration_outcomes([job], [steady], NOW)[key].restarted == ()
    assert calibration_outcomes([job], [failed], NOW)[key].restarted == ()
    outcomes = calibration_outcomes([job], [crashing], NOW)
    assert outcomes[key].restarted == ("triton-copy-1", "triton-copy-2")
    status = calibration_state([cam], planned, outcomes, OperatorSettings(), NOW).statuses[
        ("default", "cam")
    ]
    assert status["phase"] == StreamPhase.CALIBRATING
    assert status["message"].endswith(
        f"; 2 of its Triton servers restarted (triton-copy-1, triton-copy-2): kubectl logs -n "
        f"default {name}-x -c triton-copy-1 --previous says why (out of GPU memory: raise the "
        "stream's memoryMiB; under MPS \"busy or unavailable\": lower the operator's "
        "mpsServersPerGpu)"
    )


def test_a_job_whose_copies_did_not_all_load_says_what_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The profiler names the copies of Triton that never loaded the model (its own
    message, made here by ``wait_ready``): where some did and some did not, the GPU is the
    likely cause, and the stream's message says what to change. Where none loaded, the model
    or the image is, and it says nothing more."""
    import stagger.profiler
    from stagger.core.placement import CalibrationSite, Plan, Unplaced
    from stagger_operator.calibration import CalibrationOutcome, calibration_state
    from tests.emulator import TEMPLATE
    from tests.factories import stream

    urls = [f"http://127.0.0.1:{8000 + 100 * i}" for i in range(3)]
    monkeypatch.setattr(stagger.profiler, "_model_ready", lambda url, m, v: url == urls[0])

    def failure(ready: list[str]) -> str:
        with pytest.raises(stagger.profiler.ProfileError) as e:
            stagger.profiler.wait_ready(ready, "retinanet", timeout_s=0)
        return str(e.value)

    cam = stream("cam", 10, model="retinanet", template=TEMPLATE, memoryMiB=2048)
    cam.metadata.uid = "uid-cam"  # as read from the API server
    site = CalibrationSite("a", 0, "GPU-a0", "NVIDIA-H200", "time-slicing", 80_000)
    plan = Plan((), (), (Unplaced(cam.namespace, "cam", "no body time", calibrate_on=(site,)),))
    settings = OperatorSettings()
    (job,) = calibration_state([cam], plan, {}, settings, NOW).jobs
    key = (job["metadata"]["namespace"], job["metadata"]["name"])
    for ready, hinted in ((urls, True), (urls[1:], False)):
        said = failure(ready)
        outcome = {key: CalibrationOutcome(failure=said)}
        status = calibration_state([cam], plan, outcome, settings, NOW).statuses[
            (cam.namespace, "cam")
        ]
        message = status["conditions"][0]["message"]
        assert said in message
        assert ("raise the stream's memoryMiB" in message) is hinted, message


def test_a_stream_applied_while_another_calibrates_leaves_the_job_and_its_gpu_alone() -> None:
    """A stream of an uncalibrated model gets a Job on the first idle GPU; a calibrated
    stream applied next would have taken that GPU (first fit), moving the calibration to
    another GPU: its Job deleted and started again, the new stream measured with the
    model. The running Job keeps its GPU: the new stream goes to the other GPU, the Job
    stays as it is, and a stream that finds no other GPU says it waits for the Job."""
    from stagger.core.placement import plan
    from stagger_operator.calibration import calibration_state, running_calibrations
    from tests.factories import cluster, stream

    cam, _ = _uncalibrated_cam()
    two = cluster(("gpu-a", 2))
    settings = OperatorSettings()
    (job,) = calibration_state([cam], plan([cam], two), {}, settings, NOW).jobs
    running = running_calibrations([job], {}, two)
    assert [(r.node, r.gpu, r.model) for r in running] == [("gpu-a", 0, "m")]
    light = stream("light", 10, body=5.0, model="other", memoryMiB=1000)
    after = plan([cam, light], two, calibrating=running)
    assert [(p.stream, p.gpu) for p in after.shards] == [("light", 1)]
    (same,) = calibration_state([cam, light], after, {}, settings, NOW).jobs
    assert same["metadata"]["name"] == job["metadata"]["name"]
    # without it (as before), the new stream took the GPU being measured
    assert [(p.stream, p.gpu) for p in plan([cam, light], two).shards] == [("light", 0)]
    # one GPU: the new stream waits for the Job, and says so
    one = cluster(("gpu-a", 1))
    waiting = plan([cam, light], one, calibrating=running_calibrations([job], {}, one))
    (refused,) = [u for u in waiting.unplaced if u.stream == "light"]
    assert refused.reason.endswith(
        "; 1 of them run a calibration Job, which no stream joins while it measures (it is "
        "tried again when the Job ends)"
    )
    # a Job that finished loads its GPU no more, nor one admission refused a pod for a minute
    key = ("default", job["metadata"]["name"])
    done = {key: CalibrationOutcome(result=calibration_result())}
    assert running_calibrations([job], done, two) == ()
    assert running_calibrations([job], {key: CalibrationOutcome(podless_s=30.0)}, two) == running
    assert running_calibrations([job], {key: CalibrationOutcome(podless_s=60.0)}, two) == ()


def test_a_warning_too_long_for_an_event_says_it_was_cut() -> None:
    from stagger_operator.calibration import WARNED_CHARS, clipped

    assert clipped("short") == "short"
    cut = clipped("x" * (WARNED_CHARS + 50))
    assert len(cut) == WARNED_CHARS and cut.endswith("…")
    assert clipped("y" * WARNED_CHARS) == "y" * WARNED_CHARS
