"""stagger_testkit.kubelet: a container the operator writes, run here as the kubelet would
run it. Its real use (a calibration Job's Triton copies and profiler against real
tritonservers) is tests/integration/test_calibration_servers.py."""

import socket
import sys
from pathlib import Path

import pytest

from stagger_testkit import kubelet


def test_a_container_runs_its_command_then_its_arguments_in_its_own_environment() -> None:
    container = {
        "name": "triton",
        "command": ["tritonserver"],
        "args": ["--http-port=8000"],
        "env": [{"name": "A", "value": "container"}, {"name": "N", "value": 3}],
    }
    assert kubelet.argv(container) == ["tritonserver", "--http-port=8000"]
    env = kubelet.env(container, {"A": "image", "B": "image"})
    assert (env["A"], env["B"], env["N"]) == ("container", "image", "3")  # the container's wins
    assert env["PATH"]  # this process's beneath


def test_an_env_value_only_the_api_server_can_give_is_refused_not_guessed() -> None:
    secret = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    with pytest.raises(ValueError, match="env TOKEN needs the API server"):
        kubelet.env({"name": "app", "env": [secret]})


def test_the_stagger_cli_runs_as_this_python_with_the_termination_log_a_file(
    tmp_path: Path,
) -> None:
    profiler = {
        "name": "stagger-profile",
        "command": ["stagger", "profile", "--result-file", "/dev/termination-log", "-o", "json"],
    }
    log = tmp_path / "termination-log"
    assert kubelet.stagger_command(profiler, log) == [
        sys.executable,
        *("-m", "stagger.cli", "profile", "--result-file", str(log), "-o", "json"),
    ]
    with pytest.raises(ValueError, match="not stagger"):
        kubelet.stagger_command({"name": "triton", "command": ["tritonserver"]}, log)


def test_containers_run_side_by_side_and_are_stopped_on_exit(tmp_path: Path) -> None:
    sleeper = {"command": [sys.executable, "-c", "import time; time.sleep(60)"]}
    with kubelet.running(
        [{"name": "a", **sleeper}, {"name": "b", **sleeper}], logs=tmp_path
    ) as processes:
        assert [p.poll() for p in processes] == [None, None]
    assert all(p.poll() is not None for p in processes)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.log", "b.log"]


def test_a_run_of_free_ports_a_stride_apart() -> None:
    base = kubelet.free_port_run(3, 100)
    for port in (base, base + 100, base + 200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free: binds
