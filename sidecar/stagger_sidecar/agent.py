"""``stagger-sidecar agent``: the node agent. It reads the node's GPUs through NVML (pynvml),
publishes them as the cluster-scoped GpuNode named after the node (never by patching the
Node) and exports per-GPU metrics. The operator prefers GpuNodes to feature-discovery
labels, and sizes each GPU by the memory that processes it does not manage leave free.

Which processes are Stagger's: those whose cgroup names the UID of a pod on this node
labelled ``app.kubernetes.io/managed-by=stagger`` (the agent runs with the host's PID
namespace to see them). When it cannot see them, foreign memory is reported as unknown.

Without NVML (a node with no GPU or no driver, CI) the agent says so once, publishes
``nvml: unavailable`` with the reason, and idles (or exits 0, by setting): no crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stagger.core import telemetry
from stagger.core.api import GROUP, VERSION, GpuDevice, GpuNode, GpuNodeStatus

log = logging.getLogger("stagger.agent")

MPS_SERVER = "nvidia-cuda-mps-server"
COMPUTE_MODES = {0: "Default", 1: "ExclusiveThread", 2: "Prohibited", 3: "ExclusiveProcess"}
POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)
MIB = 1 << 20


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STAGGER_",
        frozen=True,
        cli_prog_name="stagger-sidecar agent",
        cli_kebab_case=True,
    )

    node_name: str = Field(min_length=1)
    """The node this agent runs on (the chart passes spec.nodeName)."""
    interval_s: float = Field(default=15.0, gt=0)
    """How often the GPUs are read (metrics) and the GpuNode refreshed when it changed."""
    heartbeat_s: float = Field(default=300.0, gt=0)
    """The GpuNode is rewritten at least this often, so the operator can tell it is alive."""
    metrics_address: str = "0.0.0.0:9401"
    without_nvml: Literal["idle", "exit"] = "idle"
    """No NVML on this node: keep serving metrics and wait (idle), or exit 0."""
    proc_root: Path = Path("/proc")
    publish: bool = True
    """Write the GpuNode (off: metrics only)."""
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def product_name(nvml_name: str) -> str:
    """NVML's "NVIDIA H200" as feature discovery labels it: "NVIDIA-H200"."""
    return "-".join(nvml_name.split())


def pod_uid_of(cgroup: str) -> str | None:
    """The pod UID a process's cgroup names (cgroupfs and systemd drivers), if any."""
    match = POD_UID.search(cgroup)
    return match.group(1).replace("_", "-") if match else None


class ProcessView:
    """The host's processes, as far as this container sees them (hostPID)."""

    def __init__(self, proc_root: Path) -> None:
        self.root = proc_root

    def cgroup(self, pid: int) -> str | None:
        try:
            return (self.root / str(pid) / "cgroup").read_text()
        except OSError:
            return None

    def name(self, pid: int) -> str | None:
        try:
            return (self.root / str(pid) / "comm").read_text().strip()
        except OSError:
            return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_gpus(
    nvml: ModuleType | Any, processes: ProcessView, managed_pods: set[str]
) -> tuple[list[GpuDevice], dict[str, float]]:
    """Every GPU of the node, and its utilization (0-1) by UUID. ``nvml`` is pynvml (or a
    stand-in with the same functions); NVML must be initialised."""
    devices, utilization = [], {}
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            mig = bool(nvml.nvmlDeviceGetMigMode(handle)[0])
        except nvml.NVMLError:  # not a MIG-capable GPU
            mig = False
        foreign: int | None = 0
        mps: bool | None = False
        for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            cgroup, name = processes.cgroup(proc.pid), processes.name(proc.pid)
            if cgroup is None or name is None:  # not visible from here
                foreign, mps = None, None
                continue
            mps = mps or name == MPS_SERVER
            if foreign is not None and pod_uid_of(cgroup) not in managed_pods:
                foreign += (proc.usedGpuMemory or 0) // MIB
        with contextlib.suppress(nvml.NVMLError):
            utilization[uuid] = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
        devices.append(
            GpuDevice.model_validate(
                {
                    "index": index,
                    "uuid": uuid,
                    "product": product_name(_text(nvml.nvmlDeviceGetName(handle))),
                    "memoryTotalMiB": memory.total // MIB,
                    "memoryUsedMiB": memory.used // MIB,
                    "foreignMemoryMiB": foreign,
                    "computeMode": COMPUTE_MODES.get(
                        nvml.nvmlDeviceGetComputeMode(handle), "Unknown"
                    ),
                    "migEnabled": mig,
                    "mpsActive": mps,
                }
            )
        )
    return devices, utilization


def significant(status: GpuNodeStatus) -> object:
    """What a change of must be published: the inventory, memory to 256 MiB."""
    return (
        status.nvml,
        status.message,
        tuple(
            (
                g.uuid,
                g.product,
                g.memory_total_mib,
                (g.foreign_memory_mib or 0) // 256,
                g.mig_enabled,
                g.mps_active,
                g.compute_mode,
            )
            for g in status.gpus
        ),
    )


class Agent:
    """Reads the GPUs every ``interval_s``; publishes through ``publish(status)`` when
    something significant changed or the heartbeat is due."""

    def __init__(
        self,
        settings: AgentSettings,
        nvml: ModuleType | Any,
        publish: Callable[[GpuNodeStatus], object],
        managed_pods: Callable[[], Iterable[str]],
        metrics: AgentMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.nvml = nvml
        self.publish = publish
        self.managed_pods = managed_pods
        self.metrics = metrics
        self.clock = clock
        self.processes = ProcessView(settings.proc_root)
        self.nvml_error: str | None = None
        self._published: object = None
        self._published_at: datetime | None = None

    def start(self) -> bool:
        """Initialise NVML; False (and the reason kept and logged once) when it cannot."""
        try:
            self.nvml.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.nvml_error = f"NVML is not available on this node: {e}"
            log.warning("%s; no GPUs published", self.nvml_error)
            self.metrics.nvml_up(self.settings.node_name, False)
            return False
        self.metrics.nvml_up(self.settings.node_name, True)
        return True

    def status(self) -> GpuNodeStatus:
        now = self.clock()
        if self.nvml_error is not None:
            return GpuNodeStatus(nvml="unavailable", message=self.nvml_error, observed_at=now)
        try:
            gpus, utilization = read_gpus(self.nvml, self.processes, set(self.managed_pods()))
            driver = _text(self.nvml.nvmlSystemGetDriverVersion())
            cuda = self.nvml.nvmlSystemGetCudaDriverVersion()
        except self.nvml.NVMLError as e:  # a driver gone wrong: say so, keep running
            self.metrics.nvml_up(self.settings.node_name, False)
            self.metrics.gpus(self.settings.node_name, [], {})  # unknown, not the last values
            return GpuNodeStatus(nvml="unavailable", message=f"NVML failed: {e}", observed_at=now)
        self.metrics.nvml_up(self.settings.node_name, True)
        self.metrics.gpus(self.settings.node_name, gpus, utilization)
        return GpuNodeStatus(
            nvml="ok",
            driver_version=driver,
            cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}",
            gpus=gpus,
            observed_at=now,
        )

    def tick(self) -> GpuNodeStatus:
        """One round: read, and publish when due."""
        status = self.status()
        now = status.observed_at or self.clock()
        due = (
            self._published_at is None
            or (now - self._published_at).total_seconds() >= self.settings.heartbeat_s
        )
        if due or significant(status) != self._published:
            try:
                self.publish(status)
            except Exception as e:  # the API is down: try again next round
                log.warning("cannot publish GpuNode %s: %s", self.settings.node_name, e)
            else:
                self._published, self._published_at = significant(status), now
        return status

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.tick)
            try:
                async with asyncio.timeout(self.settings.interval_s):
                    await stop.wait()
            except TimeoutError:
                continue


class AgentMetrics:
    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Gauge  # noqa: PLC0415

        registry = registry or REGISTRY
        labels = telemetry.GPU_LABELS
        self._up = Gauge(telemetry.NVML_UP, "NVML readable", ["node"], registry=registry)
        self._util = Gauge(telemetry.GPU_UTILIZATION, "GPU busy share", labels, registry=registry)
        self._used = Gauge(telemetry.GPU_MEMORY_USED, "GPU memory used", labels, registry=registry)
        self._total = Gauge(telemetry.GPU_MEMORY_TOTAL, "GPU memory", labels, registry=registry)
        self._foreign = Gauge(
            telemetry.GPU_FOREIGN_MEMORY,
            "GPU memory of unmanaged processes",
            labels,
            registry=registry,
        )
        self._series: set[tuple[str, str, str, str]] = set()

    def nvml_up(self, node: str, up: bool) -> None:
        self._up.labels(node).set(int(up))

    def gpus(self, node: str, gpus: list[GpuDevice], utilization: dict[str, float]) -> None:
        """The GPUs' series now; those of GPUs no longer read (gone, or NVML failing) are
        removed, so a dashboard shows no ghost GPU with its last values."""
        current = {(node, str(g.index), g.uuid, g.product) for g in gpus}
        for gone in self._series - current:
            for gauge in (self._used, self._total, self._foreign, self._util):
                with contextlib.suppress(KeyError):
                    gauge.remove(*gone)
        self._series = current
        for g in gpus:
            labels = (node, str(g.index), g.uuid, g.product)
            self._used.labels(*labels).set(g.memory_used_mib * MIB)
            self._total.labels(*labels).set(g.memory_total_mib * MIB)
            if g.foreign_memory_mib is not None:
                self._foreign.labels(*labels).set(g.foreign_memory_mib * MIB)
            if g.uuid in utilization:
                self._util.labels(*labels).set(utilization[g.uuid])


class Publisher:
    """The agent's only contact with the Kubernetes API: its own GpuNode (owned by its Node,
    so it goes when the Node goes) and the Stagger pods on its node."""

    def __init__(self, api: Any, node: str) -> None:
        from kubernetes import client  # noqa: PLC0415 (only where the API is used)

        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.exception = client.ApiException
        self.node = node
        self._exists = False

    def managed_pods(self) -> list[str]:
        pods = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}",
            label_selector="app.kubernetes.io/managed-by=stagger",
        )
        return [p.metadata.uid for p in pods.items if p.metadata and p.metadata.uid]

    def __call__(self, status: GpuNodeStatus) -> None:
        if not self._exists:
            self._create()
        body = {"status": status.model_dump(mode="json", by_alias=True, exclude_none=True)}
        self.custom.patch_cluster_custom_object_status(
            GROUP, VERSION, GpuNode.PLURAL, self.node, body
        )

    def _create(self) -> None:
        node = self.core.read_node(self.node)
        uid = node.metadata.uid if node.metadata else None
        owner = {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": uid}
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": GpuNode.KIND,
            "metadata": {"name": self.node, "ownerReferences": [owner]},
            "spec": {"node": self.node},
        }
        try:
            self.custom.create_cluster_custom_object(GROUP, VERSION, GpuNode.PLURAL, body)
        except self.exception as e:
            if e.status != 409:  # it exists from an earlier run: fine
                raise
        self._exists = True


async def run_agent(settings: AgentSettings) -> int:
    """The agent's process: metrics listener, NVML, the loop; 0 when stopped (SIGTERM)."""
    import signal  # noqa: PLC0415

    import pynvml  # noqa: PLC0415
    from kubernetes import client, config  # noqa: PLC0415
    from prometheus_client import start_http_server  # noqa: PLC0415

    host, _, port = settings.metrics_address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"))
    metrics = AgentMetrics()
    publish: Callable[[GpuNodeStatus], object] = lambda _status: None  # noqa: E731
    managed: Callable[[], Iterable[str]] = list
    if settings.publish:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        publisher = Publisher(client.ApiClient(), settings.node_name)
        publish, managed = publisher, publisher.managed_pods
    agent = Agent(settings, pynvml, publish, managed, metrics)
    if not agent.start() and settings.without_nvml == "exit":
        agent.tick()  # say so on the GpuNode, then leave quietly
        return 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)
    if agent.nvml_error is None:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return 0
