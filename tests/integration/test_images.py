"""The shipped images, as built by ``make images`` (buildah, no daemon), run as their uid.

``make test`` builds them first and sets ``STAGGER_IMAGES=1``: then a missing image fails
here. Run alone without it (``pytest tests/integration/test_images.py``), the module is
skipped with the reason.

Each image runs in a buildah container on the host's network (chroot isolation): the
operator against kmock on loopback, the sidecar in front of the real tritonserver, the agent
on a machine with no NVML. After each run the container's root filesystem is checked: the
process wrote nothing the pod could not (the chart mounts the root filesystem read-only;
only the operator gets a writable /tmp).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from stagger import __version__
from stagger.core.contract import SlotAssignment
from stagger_testkit.localtriton import LocalTriton
from tests.emulator import stream
from tests.factories import slot_contract
from tests.integration.conftest import OPERATOR_ON_KMOCK, Cluster, kubeconfig
from tests.waiting import until

if not os.environ.get("STAGGER_IMAGES"):
    pytest.skip(
        "the images are not built: `make images` builds them (`make test` does, then sets "
        "STAGGER_IMAGES=1)",
        allow_module_level=True,
    )

UID = "65532:65532"
BUILDAH_ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
OPERATOR = f"stagger/operator:{__version__}"
SIDECAR = f"stagger/sidecar:{__version__}"


def buildah(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["buildah", *args],
        env=BUILDAH_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Container:
    """A buildah working container of an image; ``start`` runs a command in it."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.name = buildah("from", "--pull-never", image).strip()
        self.started = time.time()

    def command(self, argv: list[str], env: dict[str, str], volumes: dict[Path, str]) -> list[str]:
        mounts = [a for src, dst in volumes.items() for a in ("-v", f"{src}:{dst}:ro")]
        setenv = [f"{k}={v}" for k, v in env.items()]
        return [
            "buildah", "run", "--isolation", "chroot", "--network", "host", "--user", UID,
            *mounts, self.name, "--", "env", *setenv, *argv,
        ]  # fmt: skip

    def start(
        self, argv: list[str], env: dict[str, str], volumes: dict[Path, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(argv, env, volumes or {}),
            env=BUILDAH_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def written(self, scratch: frozenset[str] = frozenset()) -> list[str]:
        """Files the run wrote, outside the top-level folders in ``scratch`` (what the pod
        mounts writable) and the mount points buildah makes."""
        root = Path(buildah("mount", self.name).strip())
        try:
            return sorted(
                str(p.relative_to(root))
                for top in root.iterdir()
                if top.name not in {"proc", "sys", "dev", "run", "etc", *scratch}
                for p in ([top] if top.is_file() else top.rglob("*"))
                if p.is_file() and not p.is_symlink() and p.stat().st_mtime > self.started
            )
        finally:
            buildah("umount", self.name)

    def remove(self) -> None:
        buildah("rm", self.name)


@contextmanager
def running(
    image: str, argv: list[str], env: dict[str, str], volumes: dict[Path, str] | None = None
) -> Iterator[tuple[Container, subprocess.Popen[str]]]:
    container = Container(image)
    process = container.start(argv, env, volumes)
    try:
        yield container, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        container.remove()


def output(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.read() if process.poll() is not None else "(still running)"


@pytest.mark.parametrize(
    ("image", "entrypoint", "title", "has", "lacks"),
    [
        (OPERATOR, "stagger-operator", "stagger-operator", "kopf", "tritonclient"),
        (SIDECAR, "stagger-sidecar", "stagger-sidecar", "tritonclient", "kopf"),
    ],
)
def test_each_image_is_labelled_and_runs_its_command_as_a_user(
    image: str, entrypoint: str, title: str, has: str, lacks: str
) -> None:
    config = json.loads(buildah("inspect", "--type", "image", image))
    oci = config["OCIv1"]["config"]
    assert oci["User"] == UID
    assert oci["Entrypoint"] == [entrypoint]
    labels = oci["Labels"]
    assert labels["org.opencontainers.image.title"] == title
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] not in {"", "unknown"}
    assert labels["org.opencontainers.image.source"].startswith("https://")
    # only its own extra: the other process's dependencies are not installed
    probe = "import importlib.util as u, sys; print(*(bool(u.find_spec(m)) for m in sys.argv[1:]))"
    with running(image, ["python3", "-c", probe, has, lacks, "stagger_testkit"], {}) as (_, p):
        p.wait(60)
        assert output(p).split() == ["True", "False", "False"]
    with running(image, [entrypoint, "--help"], {}) as (_, p):
        p.wait(60)
        assert p.returncode == 0, output(p)
    with running(image, ["stagger", "--version"], {}) as (_, p):
        p.wait(60)
        assert output(p).strip() == f"stagger {__version__}"


async def test_the_operator_image_places_a_stream_against_kmock(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = kubeconfig(tmp_path / "kube", cluster.kube.api.configuration.host)
    env = {
        "KUBECONFIG": "/kube/config",
        "STAGGER_LEADER_ELECTION": "false",
        "STAGGER_HEALTH_ADDRESS": f"127.0.0.1:{free_port()}",
        "STAGGER_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "STAGGER_DEBOUNCE_S": "0.05",
    }
    argv = ["python3", "-c", OPERATOR_ON_KMOCK]
    with running(OPERATOR, argv, env, {config: "/kube"}) as (container, process):
        await cluster.create(stream("cam-1"))

        async def placed() -> dict[str, Any] | None:
            assert process.poll() is None, output(process)
            (s,) = await cluster.objects("InferenceStream", "default")
            return s if s.get("status", {}).get("phase") == "Placed" else None

        placed_stream = await cluster.wait_for(placed, timeout=60)
        schedules = await cluster.objects("GpuSchedule")
        maps = await cluster.objects("ConfigMap", "default")
        (deployment,) = await cluster.objects("Deployment", "default")
        assert placed_stream["status"]["shards"]
        assert schedules and any("cam-1" in m["metadata"]["name"] for m in maps)
        containers = deployment["spec"]["template"]["spec"]["containers"]
        images = {c["name"]: c["image"] for c in containers}
        init = deployment["spec"]["template"]["spec"].get("initContainers", [])
        images |= {c["name"]: c["image"] for c in init}
        assert SIDECAR in images.values(), images  # the sidecar image just built
        process.terminate()
        process.wait(15)
        assert container.written(scratch=frozenset({"tmp"})) == []  # the chart mounts /tmp


def triton_inputs(client: Any, value: float) -> list[Any]:
    tensor = client.InferInput("INPUT0", [1], "FP32")
    tensor.set_data_from_numpy(np.array([value], dtype=np.float32))
    return [tensor]


async def test_the_sidecar_image_serves_triton_over_http_and_grpc(
    triton: LocalTriton, tmp_path: Path
) -> None:
    slots = tmp_path / "slot"
    slots.mkdir(mode=0o755)
    contract: SlotAssignment = slot_contract()
    (slots / "slot.json").write_text(contract.model_dump_json(by_alias=True))
    (slots / "slot.json").chmod(0o644)
    http, grpc, metrics = (f"127.0.0.1:{free_port()}" for _ in range(3))
    env = {
        "STAGGER_STREAM": "cam",
        "STAGGER_SLOT_FILE": "/slot/slot.json",
        "STAGGER_TRITON_HTTP": triton.http,
        "STAGGER_TRITON_GRPC": triton.grpc,
        "STAGGER_HTTP_ADDRESS": http,
        "STAGGER_GRPC_ADDRESS": grpc,
        "STAGGER_METRICS_ADDRESS": metrics,
    }
    with running(SIDECAR, ["stagger-sidecar", "gate"], env, {slots: "/slot"}) as (
        container,
        process,
    ):
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert process.poll() is None, output(process)
                try:
                    async with session.get(f"http://{http}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, timeout_s=60)
            via_http = triton_http.InferenceServerClient(http)
            answer = await asyncio.to_thread(
                via_http.infer, "add_one", triton_inputs(triton_http, 1.0)
            )
            assert answer.as_numpy("OUTPUT0").tolist() == [2.0]
            via_grpc = triton_grpc.InferenceServerClient(grpc)
            answer = await asyncio.to_thread(
                via_grpc.infer, "add_one", triton_inputs(triton_grpc, 2.0)
            )
            assert answer.as_numpy("OUTPUT0").tolist() == [3.0]
            async with session.get(f"http://{metrics}/metrics") as r:
                text = await r.text()
            assert r.status == 200 and "stagger_" in text
        process.terminate()
        process.wait(15)
        assert container.written() == []


def test_the_agent_image_without_nvml_says_so_once_and_exits() -> None:
    env = {
        "STAGGER_NODE_NAME": "gpu-a",
        "STAGGER_WITHOUT_NVML": "exit",
        "STAGGER_PUBLISH": "false",  # no API server here: metrics only
        "STAGGER_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    with running(SIDECAR, ["stagger-sidecar", "agent"], env) as (container, process):
        process.wait(60)
        text = output(process)
        assert process.returncode == 0, text
        assert text.lower().count("nvml") >= 1
        said = [line for line in text.splitlines() if "NVML" in line or "nvml" in line]
        assert len(said) == 1, said  # once, not a loop
        assert container.written() == []
