"""The node agent against a fake NVML (the pynvml functions it calls, nothing inside it) and
a fake /proc: inventory, which memory is foreign, MPS, no NVML, when it publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stagger.core.api import GpuNodeStatus
from stagger_sidecar.agent import (
    Agent,
    AgentMetrics,
    AgentSettings,
    ProcessView,
    pod_uid_of,
    read_gpus,
)

MANAGED_POD = "0b7c6a9e-1111-4222-8333-444455556666"
OTHER_POD = "9f9f9f9f-2222-4333-8444-555566667777"
GIB = 1 << 30


class NVMLError(Exception):
    pass


@dataclass
class Proc:
    pid: int
    usedGpuMemory: int | None


@dataclass
class FakeGpu:
    name: str
    uuid: str
    total: int
    used: int
    procs: list[Proc] = field(default_factory=list)
    mig: bool | None = None  # None: not MIG-capable (NVML raises)
    util: int = 40
    mode: int = 0


class FakeNVML:
    """pynvml's surface as the agent uses it."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu], *, broken: str | None = None) -> None:
        self.gpus, self.broken = gpus, broken
        self.lost: set[str] = set()  # UUIDs of GPUs fallen off the bus

    def nvmlInit(self) -> None:
        if self.broken:
            raise NVMLError(self.broken)

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 13000

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self.gpus[i]

    def nvmlDeviceGetUUID(self, g: FakeGpu) -> str:
        return g.uuid

    def nvmlDeviceGetName(self, g: FakeGpu) -> bytes:
        return g.name.encode()  # older pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, g: FakeGpu) -> Any:
        if g.uuid in self.lost:
            raise NVMLError("GPU is lost")
        return type("Memory", (), {"total": g.total, "used": g.used})()

    def nvmlDeviceGetMigMode(self, g: FakeGpu) -> list[int]:
        if g.mig is None:
            raise NVMLError("Not Supported")
        return [int(g.mig), int(g.mig)]

    def nvmlDeviceGetComputeRunningProcesses(self, g: FakeGpu) -> list[Proc]:
        return g.procs

    def nvmlDeviceGetUtilizationRates(self, g: FakeGpu) -> Any:
        return type("Util", (), {"gpu": g.util})()

    def nvmlDeviceGetComputeMode(self, g: FakeGpu) -> int:
        return g.mode


def fake_proc(root: Path, pid: int, comm: str, pod: str | None) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "comm").write_text(comm + "\n")
    cgroup = (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod.replace('-', '_')}"
        ".slice/cri-containerd-abc.scope\n"
        if pod
        else "0::/system.slice/some-daemon.service\n"
    )
    (root / str(pid) / "cgroup").write_text(cgroup)


@pytest.fixture
def node(tmp_path: Path) -> FakeNVML:
    fake_proc(tmp_path, 100, "tritonserver", MANAGED_POD)  # ours
    fake_proc(tmp_path, 200, "python3", OTHER_POD)  # someone else's pod
    fake_proc(tmp_path, 300, "nvidia-cuda-mps-server", None)
    busy = FakeGpu(
        "NVIDIA H200",
        "GPU-aaaa",
        141 * GIB,
        30 * GIB,
        [Proc(100, 20 * GIB), Proc(200, 6 * GIB), Proc(300, GIB // 2)],
    )
    idle = FakeGpu("NVIDIA H200", "GPU-bbbb", 141 * GIB, GIB // 2, mig=False, mode=3)
    return FakeNVML([busy, idle])


def test_cgroup_paths_name_their_pod() -> None:
    assert pod_uid_of(f"0::/kubepods/burstable/pod{MANAGED_POD}/abc") == MANAGED_POD
    systemd = f"0::/kubepods-besteffort-pod{MANAGED_POD.replace('-', '_')}.slice/x.scope"
    assert pod_uid_of(systemd) == MANAGED_POD
    assert pod_uid_of("0::/system.slice/sshd.service") is None


def test_inventory_and_foreign_memory(node: FakeNVML, tmp_path: Path) -> None:
    gpus, utilization = read_gpus(node, ProcessView(tmp_path), {MANAGED_POD})
    busy, idle = gpus
    assert (busy.index, busy.uuid, busy.product) == (0, "GPU-aaaa", "NVIDIA-H200")
    assert (busy.memory_total_mib, busy.memory_used_mib) == (141 * 1024, 30 * 1024)
    # Someone else's pod (6 GiB) and the MPS server (0.5 GiB) are foreign; ours is not.
    assert busy.foreign_memory_mib == 6 * 1024 + 512
    assert busy.mps_active is True and busy.mig_enabled is False
    assert idle.foreign_memory_mib == 0 and idle.mps_active is False
    assert idle.compute_mode == "ExclusiveProcess"
    assert utilization == {"GPU-aaaa": 0.4, "GPU-bbbb": 0.4}


def test_processes_out_of_sight_make_foreign_memory_unknown(node: FakeNVML, tmp_path: Path) -> None:
    node.gpus[0].procs.append(Proc(999, GIB))  # no /proc/999: no hostPID, say, or gone
    (busy, _), _ = read_gpus(node, ProcessView(tmp_path), {MANAGED_POD})
    assert busy.foreign_memory_mib is None and busy.mps_active is None


def settings(tmp_path: Path, **overrides: Any) -> AgentSettings:
    return AgentSettings(node_name="gpu-1", proc_root=tmp_path, heartbeat_s=300, **overrides)


def test_publishes_on_change_and_on_heartbeat(node: FakeNVML, tmp_path: Path) -> None:
    published: list[GpuNodeStatus] = []
    now = [datetime(2026, 11, 21, 12, 0, tzinfo=UTC)]
    registry = CollectorRegistry()
    agent = Agent(
        settings(tmp_path),
        node,
        published.append,
        lambda: [MANAGED_POD],
        AgentMetrics(registry),
        clock=lambda: now[0],
    )
    assert agent.start()
    agent.tick()
    assert len(published) == 1 and published[0].nvml == "ok"
    assert (
        published[0].driver_version == "580.159.04" and published[0].cuda_driver_version == "13.0"
    )
    now[0] += timedelta(seconds=15)
    node.gpus[0].used += 100 << 20  # ours grew a little: nothing to tell
    agent.tick()
    assert len(published) == 1
    node.gpus[0].procs.append(Proc(200, 8 * GIB))  # another tenant took 8 GiB more
    agent.tick()
    assert len(published) == 2 and published[1].gpus[0].foreign_memory_mib == 14 * 1024 + 512
    now[0] += timedelta(seconds=301)
    agent.tick()
    assert len(published) == 3  # heartbeat
    labels = {"node": "gpu-1", "gpu": "0", "uuid": "GPU-aaaa", "product": "NVIDIA-H200"}
    assert (
        registry.get_sample_value("stagger_gpu_foreign_memory_bytes", labels)
        == (14 * 1024 + 512) << 20
    )
    assert registry.get_sample_value("stagger_gpu_utilization_ratio", labels) == 0.4
    assert registry.get_sample_value("stagger_nvml_up", {"node": "gpu-1"}) == 1


def test_without_nvml_it_says_so_and_keeps_running(tmp_path: Path) -> None:
    published: list[GpuNodeStatus] = []
    broken = FakeNVML([], broken="NVML Shared Library Not Found")
    registry = CollectorRegistry()
    agent = Agent(settings(tmp_path), broken, published.append, list, AgentMetrics(registry))
    assert not agent.start()
    for _ in range(3):
        status = agent.tick()
    assert status.nvml == "unavailable" and status.gpus == []
    assert "NVML is not available on this node: NVML Shared Library Not Found" in status.message
    assert len(published) == 1  # once, not every round
    assert registry.get_sample_value("stagger_nvml_up", {"node": "gpu-1"}) == 0


def test_a_failing_api_does_not_stop_the_agent(node: FakeNVML, tmp_path: Path) -> None:
    calls = []

    def down(status: GpuNodeStatus) -> None:
        calls.append(status)
        raise ConnectionError("API server unreachable")

    agent = Agent(settings(tmp_path), node, down, list, AgentMetrics(CollectorRegistry()))
    agent.start()
    agent.tick()
    agent.tick()
    assert len(calls) == 2  # not marked published: tried again next round


def test_nvml_failing_mid_run_and_a_gpu_disappearing(node: FakeNVML, tmp_path: Path) -> None:
    """A GPU falls off the bus: NVML errors while the driver still lists it (published as
    unavailable, with NVML's words; the GPU series go, not frozen at their last values),
    then the node has one GPU fewer (published, its series gone), all without a restart."""
    published: list[GpuNodeStatus] = []
    registry = CollectorRegistry()
    agent = Agent(
        settings(tmp_path), node, published.append, lambda: [MANAGED_POD], AgentMetrics(registry)
    )
    assert agent.start()
    assert [g.uuid for g in agent.tick().gpus] == ["GPU-aaaa", "GPU-bbbb"]
    gone = {"node": "gpu-1", "gpu": "1", "uuid": "GPU-bbbb", "product": "NVIDIA-H200"}
    assert registry.get_sample_value("stagger_gpu_memory_total_bytes", gone) is not None

    node.lost.add("GPU-bbbb")
    status = agent.tick()
    assert status.nvml == "unavailable" and "GPU is lost" in status.message
    assert published[-1] == status
    assert registry.get_sample_value("stagger_nvml_up", {"node": "gpu-1"}) == 0
    assert registry.get_sample_value("stagger_gpu_memory_total_bytes", gone) is None

    node.gpus.pop()  # the driver dropped it
    status = agent.tick()
    assert status.nvml == "ok" and [g.uuid for g in status.gpus] == ["GPU-aaaa"]
    assert published[-1] == status and len(published) == 3
    assert registry.get_sample_value("stagger_nvml_up", {"node": "gpu-1"}) == 1
    assert registry.get_sample_value("stagger_gpu_memory_total_bytes", gone) is None
    kept = {**gone, "gpu": "0", "uuid": "GPU-aaaa"}
    assert registry.get_sample_value("stagger_gpu_memory_total_bytes", kept) == 141 * GIB
