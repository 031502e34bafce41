"""bench.gpu.job's pure parts: the Job it runs is the operator's own for the bench's stream,
and the comparison it prints. The Job's containers run against real tritonservers in
tests/integration/test_calibration_servers.py and in this bench's CPU dry run."""

from pathlib import Path
from typing import Any

import pytest

from bench.gpu.job import compare, parse_args, render
from bench.gpu.loop import repository
from bench.gpu.operator_job import build_job, two_instances
from stagger.core.api import SharingMode
from stagger_operator import manifests

DETECTOR = Path(__file__).parents[2] / "bench" / "gpu" / "models"


def _job(tmp_path: Path, servers: int, free: int | None, running: int = 0) -> dict[str, Any]:
    args = parse_args(["--out", str(tmp_path), "--servers", str(servers)])
    repo = repository(tmp_path, DETECTOR, ["graph"])
    return build_job(
        servers,
        body="graph",
        repo=repo,
        frame=tmp_path / "frame.jpg",
        product="NVIDIA-H100",
        mode=SharingMode.MPS,
        root=tmp_path,
        args=args,
        memory_free_mib=free,
        servers_running=running,
    )


def test_the_job_is_the_operators_own_with_a_copy_of_triton_per_calibration_server(
    tmp_path: Path,
) -> None:
    job = _job(tmp_path, 4, None)
    pod = job["spec"]["template"]["spec"]
    tritons = pod["initContainers"]
    assert len(tritons) == 4
    base = int(tritons[0]["ports"][0]["containerPort"])
    assert [t["args"][-3] for t in tritons[1:]] == [
        f"--http-port={base + manifests.COPY_PORT_STRIDE * i}" for i in (1, 2, 3)
    ]
    profiler = pod["containers"][0]["command"]
    assert f"IMAGE={tmp_path / 'frame.jpg'}" in profiler  # the stream's calibrationInputs
    assert profiler.count("--url") == 4


def test_the_job_runs_as_many_servers_as_the_gpus_free_memory_holds(tmp_path: Path) -> None:
    job = _job(tmp_path, 16, 5000)  # 2 of the bench's 2048 MiB streams
    assert len(job["spec"]["template"]["spec"]["initContainers"]) == 2
    why = job["metadata"]["annotations"][manifests.ANNOTATION_CALIBRATION_SERVERS]
    assert why == "2 Triton servers (5000 MiB of GPU memory free, 2048 MiB a server)"


def test_the_job_beside_the_loops_servers_under_mps_runs_what_mps_takes(tmp_path: Path) -> None:
    """``--calibrate-with job`` under MPS with the loop's 15 servers running: 9 copies, as
    the operator would run beside 15 streams (runs 89-90 ran 15, and 9 and 11 never loaded)."""
    job = _job(tmp_path, 15, 60_000, running=15)
    assert len(job["spec"]["template"]["spec"]["initContainers"]) == 9
    why = job["metadata"]["annotations"][manifests.ANNOTATION_CALIBRATION_SERVERS]
    assert why.startswith("9 Triton servers (an MPS GPU takes 24 model servers")


def test_one_server_gets_a_model_with_two_instances_and_the_loops_is_left_alone(
    tmp_path: Path,
) -> None:
    repo = repository(tmp_path, DETECTOR, ["graph"])
    copy = two_instances(repo)
    assert "count: 2" in (copy / "graph" / "config.pbtxt").read_text()
    assert "count: 1" in (repo / "graph" / "config.pbtxt").read_text()


def test_the_comparison_reads_the_job_against_the_loops_profile() -> None:
    result = {
        "device": "H100",
        "mode": "mps",
        "body": "graph",
        "fps": 10.0,
        "job": {"servers": 16, "costMs": 7.0, "bodyTimeMs": 10.1, "admitted": 13, "seconds": 61},
        "loop": {"servers": 16, "costMs": 6.85, "admitted": 14, "secondsWithStart": 70},
        "jobOneServer": {"error": "RuntimeError('exited 1')"},
    }
    result["comparison"] = compare(result)
    assert result["comparison"] == {
        "jobCostOverLoop": pytest.approx(1.022),
        "jobAdmittedMinusLoop": -1,
    }
    text = render(result)
    assert "jobOneServer   failed: RuntimeError('exited 1')" in text
    assert "job                 16      7.0     10.1      13     61" in text


def test_fewer_than_two_servers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--servers", "1"])
