"""A stream with no body time and no ModelProfile: the operator calibrates it with a Job,
turns the Job's result into a ModelProfile and places the stream. kmock has no Job
controller and no kubelet: the tests play both, finishing the Job's pod with the
termination message the profiler writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stagger_operator.calibration import WARNED_CHARS
from tests.emulator import stream
from tests.factories import calibration_result
from tests.integration.conftest import Cluster, start_operator, stop_operator
from tests.integration.test_serving import _phase, phase_of

RESULT = calibration_result()


def uncalibrated(name: str) -> dict[str, Any]:
    body = stream(name)
    del body["spec"]["bodyTimeMs"], body["spec"]["latencyMs"]
    return body


def job_pod(job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The pod the Job controller would create for ``job``, as the kubelet reports it."""
    meta = job["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-x7k2p",
            "namespace": meta["namespace"],
            "uid": f"uid-{name}-pod",
            "resourceVersion": "1",
            "labels": {**meta["labels"], "batch.kubernetes.io/job-name": name},
        },
        "spec": job["spec"]["template"]["spec"],
        "status": status,
    }


async def finish(c: Cluster, job: dict[str, Any], exit_code: int, message: str) -> None:
    """Stand in for the Job controller and the kubelet: the Job's pod ends."""
    meta = job["metadata"]
    name = meta["name"]
    await c.create(
        job_pod(
            job,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": "stagger-profile",
                        "state": {"terminated": {"exitCode": exit_code, "message": message}},
                    }
                ],
            },
        )
    )
    condition = "Complete" if exit_code == 0 else "Failed"
    await c.call(
        c.kube.patch_status,
        "Job",
        meta["namespace"],
        name,
        {
            "conditions": [
                {
                    "type": condition,
                    "status": "True",
                    "reason": "BackoffLimitExceeded" if exit_code else "Completed",
                    "message": "",
                }
            ]
        },
    )


async def test_an_uncalibrated_stream_is_measured_profiled_and_placed(cluster: Cluster) -> None:
    op = await start_operator(cluster)
    try:
        await cluster.create(uncalibrated("cam-1"))
        await cluster.create(uncalibrated("cam-2"))  # same model: one Job for both
        status = await cluster.wait_for(lambda: _phase(cluster, "cam-1", "Calibrating"))
        assert "measuring the body time of model retinanet on NVIDIA-H200" in status["message"]
        (job,) = await cluster.wait_for(lambda: cluster.objects("Job", "default"))
        assert job["metadata"]["name"] in status["message"]
        pod = job["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == ["stagger-profile"]
        await cluster.wait_for(lambda: _phase(cluster, "cam-2", "Calibrating"))
        # a calibrated stream applied meanwhile goes to a GPU the Job does not measure (first
        # fit took the Job's, and the Job moved), and the Job stays as it is
        await cluster.create(stream("lobby", model="yolo"))
        placed = await cluster.wait_for(lambda: _phase(cluster, "lobby", "Placed"))
        measured = job["metadata"]["labels"]["stagger.dev/gpu"]
        assert f"{placed['node']}.{placed['gpu']}" != measured
        (still,) = await cluster.objects("Job", "default")
        assert still["metadata"]["name"] == job["metadata"]["name"]

        await finish(cluster, job, 0, RESULT.model_dump_json(by_alias=True))
        (profile,) = await cluster.wait_for(lambda: cluster.objects("ModelProfile"))
        assert profile["metadata"]["name"] == "retinanet-nvidia-h200-time-slicing"
        spec = profile["spec"]
        assert (spec["bodyTimeMs"], spec["latencyMs"], spec["source"]) == (
            12.1,
            18.5,
            "calibration",
        )
        for name in ("cam-1", "cam-2"):
            placed = await cluster.wait_for(lambda n=name: _phase(cluster, n, "Placed"))
            assert placed["shards"][0]["bodyMs"] == 12.1

        async def job_gone() -> bool:
            return not await cluster.objects("Job", "default")

        await cluster.wait_for(job_gone)  # done: cleaned up
    finally:
        await stop_operator(op)


async def test_what_the_profile_warned_of_reaches_each_stream_it_measured_once(
    cluster: Cluster,
) -> None:
    """A calibration whose `stagger profile` warned (here: the host stalls) still writes
    its profile and places the streams, and each stream that waited for it gets one
    Warning Event saying so (`kubectl describe inferencestream`), not one per reconcile."""
    stalls = "the host or the GPU stalls: in 3 of the pairs swept past 13.8 ms" + "." * 300
    # as long as the full-load stage writes one (each within what a Job's result keeps):
    # joined, the two passed what one Event's note takes, and the advice at the end was cut
    slow = (
        "at the load its cost admits (9 streams at 9.1 fps) answers took 77.1 ms "
        + ("x" * 360)
        + " a lower throughputCap admits fewer"
    )
    assert len(f"{stalls}; {slow}") > WARNED_CHARS
    op = await start_operator(cluster)
    try:
        await cluster.create(uncalibrated("cam-1"))
        await cluster.create(uncalibrated("cam-2"))
        (job,) = await cluster.wait_for(lambda: cluster.objects("Job", "default"))
        warned = calibration_result(warnings=[stalls, slow])
        await finish(cluster, job, 0, warned.model_dump_json(by_alias=True))
        for name in ("cam-1", "cam-2"):
            await cluster.wait_for(lambda n=name: _phase(cluster, n, "Placed"))

        async def warnings() -> list[dict[str, Any]]:
            return [
                e
                for e in await cluster.objects("Event", "default")
                if e["reason"] == "CalibrationWarning"
            ]

        async def both_warned() -> bool:
            return len(await warnings()) >= 4

        await cluster.wait_for(both_warned)
        await cluster.create(uncalibrated("cam-3"))  # one more reconcile or two
        await cluster.wait_for(lambda: _phase(cluster, "cam-3", "Placed"))
        events = await warnings()
        names = sorted(e["involvedObject"]["name"] for e in events)
        assert names == ["cam-1", "cam-1", "cam-2", "cam-2"]  # each warning once per stream
        for e in events:
            assert e["type"] == "Warning"
            assert e["involvedObject"]["kind"] == "InferenceStream" and e["involvedObject"]["uid"]
            assert "calibration of model retinanet on NVIDIA-H200 (time-slicing)" in e["message"]
        for name in ("cam-1", "cam-2"):
            said = {
                e["message"].split(": ", 1)[1]
                for e in events
                if e["involvedObject"]["name"] == name
            }
            assert said == {stalls, slow}  # whole, the advice at the end of each included
    finally:
        await stop_operator(op)


async def test_a_failed_calibration_says_why_and_is_not_retried_in_a_loop(
    cluster: Cluster,
) -> None:
    op = await start_operator(cluster)
    try:
        await cluster.create(uncalibrated("cam"))
        (job,) = await cluster.wait_for(lambda: cluster.objects("Job", "default"))
        await finish(
            cluster,
            job,
            1,
            "stagger profile: model 'retinanet' is not ready at "
            "http://127.0.0.1:8000: unknown model",
        )
        status = await cluster.wait_for(lambda: _phase(cluster, "cam", "Pending"))
        # with how many servers, and why not more: a one-server profile fails on a model
        # with one instance, and the user's way out is to let the Job run copies
        servers = job["metadata"]["annotations"]["stagger.dev/calibration-servers"]
        assert servers.startswith("one Triton server (")
        assert (
            f"calibration of model retinanet on NVIDIA-H200 (time-slicing) with {servers} failed"
            in (status["message"])
        )
        assert "unknown model" in status["message"] and "kubectl delete job" in status["message"]
        placed = next(c for c in status["conditions"] if c["type"] == "Placed")
        assert placed["reason"] == "CalibrationFailed"
        assert len(await cluster.objects("Job", "default")) == 1  # kept: no retry loop
        assert await cluster.objects("ModelProfile") == []
        assert (await phase_of(cluster, "cam"))["phase"] == "Pending"
    finally:
        await stop_operator(op)


def calibrated_profile(body: float, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "stagger.dev/v1alpha1",
        "kind": "ModelProfile",
        "metadata": {
            "name": "retinanet-h200",  # a name of the user's: kept when re-measured
            "uid": "uid-profile",
            "resourceVersion": "1",
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": {
            "model": "retinanet",
            "gpuProduct": "NVIDIA-H200",
            "sharingMode": "time-slicing",
            "bodyTimeMs": body,
            "latencyMs": 18.5,
            "source": "manual",
        },
    }


async def test_an_annotated_profile_is_measured_again_and_replaced(cluster: Cluster) -> None:
    await cluster.create(calibrated_profile(9.0))
    op = await start_operator(cluster)
    try:
        await cluster.create(uncalibrated("cam"))
        placed = await cluster.wait_for(lambda: _phase(cluster, "cam", "Placed"))
        assert placed["shards"][0]["bodyMs"] == 9.0
        assert await cluster.objects("Job", "default") == []

        (current,) = await cluster.objects("ModelProfile")
        ask = calibrated_profile(9.0, **{"stagger.dev/recalibrate": "now"})
        await cluster.call(cluster.kube.apply, ask, current)
        (job,) = await cluster.wait_for(lambda: cluster.objects("Job", "default"))
        assert placed["shards"][0]["node"] in str(job["spec"]["template"]["spec"]["affinity"])

        await finish(cluster, job, 0, RESULT.model_dump_json(by_alias=True))

        async def remeasured() -> dict[str, Any] | None:
            (p,) = await cluster.objects("ModelProfile")
            return p if p["spec"]["bodyTimeMs"] == 12.1 else None

        profile = await cluster.wait_for(remeasured)
        assert profile["metadata"]["name"] == "retinanet-h200"
        assert profile["spec"]["source"] == "calibration" and profile["spec"]["measuredAt"]
        assert "stagger.dev/recalibrate" not in (profile["metadata"].get("annotations") or {})

        async def job_gone() -> bool:
            return not await cluster.objects("Job", "default")

        await cluster.wait_for(job_gone)

        async def replanned() -> bool:
            status = await phase_of(cluster, "cam")
            return status.get("phase") == "Placed" and status["shards"][0]["bodyMs"] == 12.1

        await cluster.wait_for(replanned)  # the stream now runs on the new body
        reasons = {e["reason"] for e in await cluster.objects("Event", "default")}
        assert {"Recalibrating", "Recalibrated"} <= reasons
    finally:
        await stop_operator(op)


async def test_a_calibration_job_that_created_no_pod_says_where_to_look(
    cluster: Cluster,
) -> None:
    """Admission refused the Job's pod (kmock has no Job controller: the Job simply has
    none, two minutes after its creation); the stream's message says so and names the
    `kubectl describe job` that shows why, instead of "measuring" until the deadline."""
    op = await start_operator(cluster)
    try:
        await cluster.create(uncalibrated("cam"))
        # One reconcile creates the Job and then writes the stream's status: wait for both.
        (job,) = await cluster.wait_for(lambda: cluster.objects("Job", "default"))
        status = await cluster.wait_for(lambda: _phase(cluster, "cam", "Calibrating"))
        assert "created no pod" not in status["message"]
        born = datetime.now(UTC) - timedelta(minutes=2)
        dated = {**job, "metadata": {**job["metadata"]}}
        dated["metadata"]["creationTimestamp"] = born.strftime("%Y-%m-%dT%H:%M:%SZ")
        await cluster.call(cluster.kube.apply, dated, job)  # as the API server dates it
        await cluster.create(uncalibrated("cam-2"))  # one more reconcile

        async def told() -> dict[str, Any] | None:
            status = await phase_of(cluster, "cam")
            return status if "created no pod" in status.get("message", "") else None

        status = await cluster.wait_for(told)
        assert status["phase"] == "Calibrating"
        name = job["metadata"]["name"]
        assert f"kubectl describe job -n default {name} says why" in status["message"]
    finally:
        await stop_operator(op)


async def test_a_calibration_job_whose_servers_restart_names_them(cluster: Cluster) -> None:
    """The kubelet restarts a copy of Triton whose model did not load (a native sidecar);
    the operator reads the Job's running pod through the API and the stream is told at
    once which servers restarted, instead of "measuring" until the profiler's deadline."""
    op = await start_operator(cluster)
    try:
        await cluster.create(uncalibrated("cam"))
        (job,) = await cluster.wait_for(lambda: cluster.objects("Job", "default"))
        tritons = [c["name"] for c in job["spec"]["template"]["spec"]["initContainers"]]
        pod = job_pod(
            job,
            {
                "phase": "Running",
                "initContainerStatuses": [
                    {"name": c, "restartCount": 2 if c == tritons[-1] else 0} for c in tritons
                ],
            },
        )
        await cluster.create(pod)

        async def told() -> dict[str, Any] | None:
            status = await phase_of(cluster, "cam")
            return status if "restarted" in status.get("message", "") else None

        status = await cluster.wait_for(told)
        assert status["phase"] == "Calibrating"
        assert f"1 of its Triton servers restarted ({tritons[-1]})" in status["message"]
        assert (
            f"kubectl logs -n default {pod['metadata']['name']} -c {tritons[-1]} --previous"
            in (status["message"])
        )
    finally:
        await stop_operator(op)


def gpu_node(name: str) -> dict[str, Any]:
    """The node agent's inventory of a node: two H200s, with the UUIDs a dra claim names."""
    gpu = {"product": "NVIDIA-H200", "memoryTotalMiB": 143771, "memoryUsedMiB": 0}
    return {
        "apiVersion": "stagger.dev/v1alpha1",
        "kind": "GpuNode",
        "metadata": {"name": name},
        "spec": {"node": name},
        "status": {
            "nvml": "ok",
            "observedAt": datetime.now(UTC).isoformat(),
            "gpus": [{**gpu, "index": i, "uuid": f"GPU-{name}-{i}"} for i in range(2)],
        },
    }


async def test_under_dra_a_calibration_job_claims_its_gpu_and_gives_it_back(
    cluster: Cluster,
) -> None:
    """gpuBinding dra: the Job's GPU claim is created with it (the claim first: the pod
    names it), the Job's servers share it, and both go once the profile places the stream,
    whose shard then claims its own GPU."""
    for name in ("gpu-a", "gpu-b"):
        await cluster.create(gpu_node(name))
    op = await start_operator(cluster, gpu_binding="dra")
    try:
        await cluster.create(uncalibrated("cam-1"))
        await cluster.wait_for(lambda: _phase(cluster, "cam-1", "Calibrating"))
        (job,) = await cluster.wait_for(lambda: cluster.objects("Job", "default"))
        (claim,) = await cluster.objects("ResourceClaim", "default")
        pod = job["spec"]["template"]["spec"]
        assert pod["resourceClaims"] == [
            {"name": "stagger-gpu", "resourceClaimName": claim["metadata"]["name"]}
        ]
        node_name, gpu = job["metadata"]["labels"]["stagger.dev/gpu"].rsplit(".", 1)
        selector = claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]
        assert f'uuid == "GPU-{node_name}-{gpu}"' in selector["cel"]["expression"]
        assert all(
            c["resources"]["claims"] == [{"name": "stagger-gpu"}] for c in pod["initContainers"]
        )

        await finish(cluster, job, 0, RESULT.model_dump_json(by_alias=True))
        await cluster.wait_for(lambda: _phase(cluster, "cam-1", "Placed"))

        async def only_the_shards_claim() -> list[dict[str, Any]] | None:
            jobs = await cluster.objects("Job", "default")
            claims = await cluster.objects("ResourceClaim", "default")
            calibrating = [
                c for c in claims if "stagger.dev/calibration" in c["metadata"]["labels"]
            ]
            return None if jobs or calibrating or not claims else claims

        (shard_claim,) = await cluster.wait_for(only_the_shards_claim)
        assert shard_claim["metadata"]["labels"]["stagger.dev/stream"] == "cam-1"
    finally:
        await stop_operator(op)
