"""The operator's calibration Job, its containers run here as the Job writes them: copies of
the stream's real ``tritonserver``, each with the Job's own arguments, and the Job's own
``stagger profile`` command against all of them. Only the kubelet is played: each
container's command and arguments become a process, its env its environment."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stagger.core.api import InferenceStream, SharingMode
from stagger.core.calibration import CalibrationResult, model_profile
from stagger_operator import manifests
from stagger_operator.settings import OperatorSettings
from stagger_testkit import kubelet
from stagger_testkit.localtriton import LocalTriton, server_env
from tests.factories import stream
from tests.integration.sidecar_fixtures import MODELS

BODY_MS = 20.0  # the exclusive_single model's section under its lock (test_profile.py)


def _stream(triton: dict[str, Any], inputs: dict[str, str]) -> InferenceStream:
    cam = stream(
        "cam-1",
        10,
        body=None,
        model="exclusive_single",
        memoryMiB=1000,
        calibrationInputs=inputs,
    )
    cam.spec.template = {"spec": {"containers": [triton, {"name": "app", "image": "a"}]}}
    cam.metadata.uid = "uid-cam-1"  # as read from the API server
    return cam


def test_a_calibration_job_measures_over_its_copies_of_triton_as_written(tmp_path: Path) -> None:
    """Three copies of the stream's Triton (a single-instance model whose 20 ms section
    holds a lock all three share: one "device"), started side by side as the kubelet
    starts the Job's sidecars. Each comes up on the port the profiler is given, so the
    flag the Job appends wins over the template's own; the Job's profiler sweeps the first
    two and saturates all three with the stream's own input data (`calibrationInputs`), and
    its result (what the operator reads from the termination message) warns of no single
    server and reads the locked section as the cost."""
    servers = 3
    base = kubelet.free_port_run(servers, manifests.COPY_PORT_STRIDE)
    triton = LocalTriton(
        MODELS,
        http_port=base,
        env={"STAGGER_BODY_LOCK": str(tmp_path / "device.lock")},
        extra_args=["--model-control-mode=explicit", "--load-model=exclusive_single"],
    ).as_container()
    settings = OperatorSettings(triton_http_port=base, calibration_servers=servers)
    target = manifests.CalibrationTarget("node-a", 0, None, "cpu", SharingMode.TIME_SLICING)
    frame = tmp_path / "input0.npy"  # the stream's own data for the model's input
    np.save(frame, np.full(64, 0.5, dtype=np.float32))
    job = manifests.calibration_job(_stream(triton, {"INPUT0": str(frame)}), target, settings)
    pod = job["spec"]["template"]["spec"]
    assert len(pod["initContainers"]) == servers

    with kubelet.running(pod["initContainers"], server_env()) as processes:
        # the profiler starts while the servers still load the model, as in the pod, and
        # waits for them itself: up to the Job's deadline there, 120 s here
        profiler = pod["containers"][0]
        assert profiler["command"][:2] == ["stagger", "profile"]
        assert f"INPUT0={frame}" in profiler["command"]
        result_file = tmp_path / "termination-log"
        command = kubelet.stagger_command(profiler, result_file)
        wait = command.index("--wait-ready") + 1
        assert command[wait] == str(manifests.calibration_wait_s(settings))
        command[wait] = "120"
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stderr
        assert [p.poll() for p in processes] == [None] * servers  # each on its own port

    result = CalibrationResult.model_validate_json(result_file.read_text())
    assert not any("one server" in w for w in result.warnings), result.warnings
    # the shared lock serves one section at a time, whichever server holds it: the cost
    # over three servers is the section
    assert result.effective_body_ms == pytest.approx(BODY_MS, rel=0.15), result
    assert result.cost_ms is not None
    # the model's own time alone, from Triton's statistics over the Job's HTTP, reaches the
    # ModelProfile the operator writes (its GpuSchedules add it up into modelTimeShare)
    assert result.solo_compute_ms is not None and result.solo_compute_ms > BODY_MS, result
    assert result.solo_compute_ms <= result.solo_p50_ms
    written = model_profile(result, "cpu", SharingMode.TIME_SLICING, datetime.now(UTC))
    assert written.spec.solo_compute_ms == result.solo_compute_ms
