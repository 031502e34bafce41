"""The kubelet's part in a pod the operator writes, played on this machine: each container's
command and arguments become a process, its ``env`` its environment (over this process's
and what the image would provide), and the termination log a file. Used where the pod's
own containers can run here (a calibration Job's copies of ``tritonserver`` and its
``stagger profile``), so what runs is what the operator wrote, not a re-typed copy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stagger_testkit.localtriton import free_port

TERMINATION_LOG = "/dev/termination-log"

Obj = dict[str, Any]


def argv(container: Mapping[str, Any]) -> list[str]:
    """What the container runs: its command, then its arguments."""
    return [*(container.get("command") or []), *(container.get("args") or [])]


def env(container: Mapping[str, Any], image_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The container's environment: this process's, the image's, then the container's own
    ``env`` values (a ``valueFrom`` needs an API server: refused, not guessed)."""
    own: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" not in item:
            raise ValueError(f"{container.get('name')}: env {item['name']} needs the API server")
        own[item["name"]] = str(item["value"])
    return {**os.environ, **(image_env or {}), **own}


@contextmanager
def running(
    containers: list[Obj], image_env: Mapping[str, str] | None = None, logs: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start every container at once (as the kubelet starts native sidecars without a
    startup probe), each logging to ``logs/<name>.log``; stopped on exit."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for c in containers:
            out = open(logs / f"{c['name']}.log", "ab") if logs else subprocess.DEVNULL  # noqa: SIM115
            try:
                processes.append(
                    subprocess.Popen(
                        argv(c), env=env(c, image_env), stdout=out, stderr=subprocess.STDOUT
                    )
                )
            finally:
                if logs:
                    out.close()  # type: ignore[union-attr]
        yield processes
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def stagger_command(container: Mapping[str, Any], termination_log: Path) -> list[str]:
    """A container that runs the ``stagger`` CLI, as this Python runs it, its termination
    log at ``termination_log``."""
    command = argv(container)
    if command[:1] != ["stagger"]:
        raise ValueError(f"{container.get('name')}: runs {command[:1]}, not stagger")
    rest = [str(termination_log) if a == TERMINATION_LOG else a for a in command[1:]]
    return [sys.executable, "-m", "stagger.cli", *rest]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_run(count: int, stride: int) -> int:
    """A port p such that p, p + stride, ... (count of them) are all free now: a pod's
    containers that take ports a fixed stride apart, as a calibration Job's copies do."""
    for _ in range(50):
        base = free_port()
        ports = [base + stride * i for i in range(count)]
        if all(p < 65536 and _free(p) for p in ports):
            return base
    raise RuntimeError(f"no {count} free ports {stride} apart")
