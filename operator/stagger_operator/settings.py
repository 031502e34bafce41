"""Operator settings: flags (``python -m stagger_operator --help``) and environment
variables ``STAGGER_*`` (the Helm chart sets them); flags win."""

from __future__ import annotations

import socket
import uuid
from typing import Annotated, Literal

from kubernetes.utils import parse_quantity
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stagger import __version__
from stagger.core.placement import PlannerSettings
from stagger.core.timebase import TICK_HZ

GpuBinding = Literal["visible-devices", "dra", "resource", "none"]


ResourceName = Literal["cpu", "memory", "ephemeral-storage"]
Quantity = Annotated[
    str,
    # YAML reads `cpu: 1` as a number; the API takes either, and so do we
    BeforeValidator(
        lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
    ),
]


class ContainerResources(BaseModel):
    """An injected container's ``resources`` (Kubernetes quantities), checked as the API
    server would check them: a bad quantity, or a limit under its request, stops the
    operator at start with the setting's name rather than failing every shard's pod."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    requests: dict[ResourceName, Quantity] = Field(default_factory=dict)
    limits: dict[ResourceName, Quantity] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _quantities(self) -> ContainerResources:
        parsed = {}
        for side, values in (("requests", self.requests), ("limits", self.limits)):
            for name, value in values.items():
                try:
                    parsed[side, name] = parse_quantity(value)  # type: ignore[no-untyped-call]
                except ValueError:
                    raise ValueError(f"{side}.{name}: {value!r} is not a quantity") from None
        for name in self.requests.keys() & self.limits.keys():
            if parsed["limits", name] < parsed["requests", name]:
                raise ValueError(
                    f"limits.{name} ({self.limits[name]}) is below requests.{name} "
                    f"({self.requests[name]})"
                )
        return self

    def manifest(self) -> dict[str, dict[str, str]]:
        """The container's ``resources``, each side only where it names something."""
        sides = (("requests", self.requests), ("limits", self.limits))
        return {side: {str(k): v for k, v in values.items()} for side, values in sides if values}


SIDECAR_RESOURCES = ContainerResources(
    requests={"cpu": "50m", "memory": "64Mi"}, limits={"memory": "128Mi"}
)
"""The sidecar's default: it relays a stream's requests at 0.1-0.5 core per 1000 a second
(docs/benchmarks.md, sidecar overhead) and idles at 0.002 core. No CPU limit: a throttled
proxy adds its throttling to every answer's tail."""


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STAGGER_",
        frozen=True,
        cli_prog_name="stagger-operator",
        cli_kebab_case=True,  # --utilization-cap 0.8; flags override the environment
    )

    utilization_cap: float = Field(default=0.9, gt=0, le=1)
    throughput_cap: float = Field(default=PlannerSettings().throughput_cap, gt=0, le=1)
    """Share of a GPU's measured saturation throughput that streams with a costMs may take
    (time-sliced, and every mode but MPS)."""
    mps_throughput_cap: float = Field(default=PlannerSettings().mps_throughput_cap, gt=0, le=1)
    """The same share on an MPS GPU."""
    charge_model_time: bool = PlannerSettings().charge_model_time
    """Charge streams on GPUs whose bodies take turns the larger of their cost and their
    model's own time alone (``PlannerSettings.charge_model_time``)."""
    mps_servers_per_gpu: int = Field(default=PlannerSettings().mps_servers_per_gpu, ge=0)
    """Most model servers (shards, and a calibration Job's copies beside them) an MPS GPU
    takes (``PlannerSettings.mps_servers_per_gpu``; 0: no limit)."""
    guard_ms: float = Field(default=0.0, ge=0)
    policy: Literal["binpack", "spread"] = "binpack"
    max_extra_shards: int = Field(default=PlannerSettings().max_extra_shards, ge=0)
    shard_grid_ms: float = Field(default=PlannerSettings().shard_grid_ms, ge=0)
    """A stream that must split takes, within the extra shards, a count whose slot period is
    a multiple of this, so that split streams share GPUs (0: off)."""
    max_repair_moves: int = Field(default=PlannerSettings().max_repair_moves, ge=0)
    """Shards a plan may move to other GPUs to place a stream that found no room, or to
    free GPUs, where a plan from scratch shows it can (0: never move for that)."""
    tick_hz: int = Field(default=TICK_HZ, gt=0, le=1_000_000)

    gpu_binding: GpuBinding = "visible-devices"
    """How a shard's pod is pinned to its GPU (docs/operations.md weighs the modes)."""
    managed_node_label: str | None = "stagger.dev/managed"
    """Only nodes with this label set to "true" are used (None: every GPU node). With
    ``visible-devices`` the device plugin does not account for our pods: keep those nodes
    for Stagger."""
    dra_device_class: str = "gpu.nvidia.com"
    gpu_node_stale_s: float = Field(default=900.0, gt=0)
    """A GpuNode (the node agent's inventory) older than this is not trusted: the node's
    feature-discovery labels describe its GPUs instead."""
    allowed_service_accounts: list[str] = Field(default_factory=lambda: ["default"])
    """Service accounts a stream's pod template may name. The operator creates the pods on
    the stream author's behalf: without this, anyone who may write an InferenceStream
    could run pods as any account of its namespace. ``["*"]``: any."""

    sidecar_image: str = f"stagger/sidecar:{__version__}"
    sidecar_resources: ContainerResources = SIDECAR_RESOURCES
    """The injected sidecar's requests and limits (JSON in ``STAGGER_SIDECAR_RESOURCES``).
    A pod whose own containers are Guaranteed (requests equal to limits) stays Guaranteed
    only where these are too: set requests equal to limits for cpu and memory."""
    sidecar_http_port: int = 8800
    sidecar_grpc_port: int = 8801
    sidecar_metrics_port: int = 9400
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    calibration_timeout_s: int = Field(default=900, gt=0)
    """A calibration Job still running after this long is stopped (activeDeadlineSeconds)."""
    calibration_servers: int = Field(default=16, ge=1, le=64)
    """Copies of a stream's Triton a calibration Job runs on its GPU (fewer where the GPU's
    free memory holds fewer at the stream's memoryMiB; one where it declares none), so that
    the cost it measures is the GPU's saturation with one server per stream, as streams are
    deployed. Under MPS the throughput still grew from 8 servers to 16 on an H100 (140 to
    146 frames/s); 1: the cost of one server's instances, which the profile then warns of."""

    effective_after_s: float = Field(default=5.0, gt=0)
    """A new slot table applies this long after it is written (or a little later, where no
    body of the old table runs), where no running sidecar's releases change: shards join
    (a new pod reads its contract as it starts) or leave."""
    contract_propagation_s: float = Field(default=120.0, gt=0)
    """How long the kubelet may take to update a mounted ConfigMap in a running pod: it
    re-syncs each pod every ``syncFrequency`` (1 min by default) plus up to half again as
    jitter, 90 s at most, and the sync itself and its watch of the ConfigMap take a little
    more; 30 s of margin. A table that
    changes what running sidecars release (a re-timed slot, a release window no longer
    granted) applies no earlier than this after it is written, so every sidecar of the GPU
    has read it by its switch instant. A sidecar that reads one late counts it
    (``stagger_slot_contracts_late_total``)."""
    retime_min_interval_s: float = Field(default=60.0, ge=0)
    """A shard whose slot a re-timing changed keeps it at least this long: a GPU is then
    re-timed around it (0: no bound). A re-timing can hold one frame of the stream up to
    one extra period in transparent mode, so this bounds what re-timings cost a stream."""
    follow_arrivals: bool = True
    """Re-time GPUs so that each stream's slot starts just after its requests arrive, as
    its sidecar measures them (apps that do not capture on the slot clock)."""
    follow_settle_s: float = Field(default=10.0, ge=0)
    """A shard whose sidecar reached the slot feed less than this long ago and has not
    reported an arrival phase yet holds its GPU's following until it does (its app has
    just started): cameras started together are then re-timed once, together (0: never
    wait)."""
    follow_drift_s: float = Field(default=5.0, ge=0)
    """A stream's arrival phase that drifted (moved by less than 5 ms), as its sidecar says
    on the slot feed, is planned for at most this often; a first phase or a jump, at once."""
    release_windows: bool = True
    """Grant each slot release windows (half the free time on each side) once every sidecar
    of its GPU runs the GPU's current table: requests in them go at once, safely."""
    follow_min_gain_ms: float = Field(default=5.0, ge=0)
    """A GPU is re-timed to its streams' arrivals only when that shortens its longest wait
    by at least this much, or its wait per frame period summed over its streams at no
    longer a longest wait."""
    debounce_s: float = Field(default=0.1, ge=0)
    """A change is planned once no other change came for this long (bursts coalesce)..."""
    max_delay_s: float = Field(default=1.0, ge=0)
    """...or once it has waited this long, however busy the API is."""
    resync_s: float = Field(default=60.0, gt=0)
    """A full reconcile at least this often, changes or not (repairs drift)."""
    max_moves: int = Field(default=10, ge=1)
    """Shards in a make-before-break move at once (each holds GPU memory in two places
    while its new copy starts); further moves wait, their old copy serving."""
    move_timeout_s: float = Field(default=300.0, gt=0)
    """A new copy not Ready after this long: the old copy is removed anyway."""
    scrape_interval_s: float = Field(default=30.0, gt=0)
    """How often the sidecars' metrics are read into status (observed fps, drops, p99)."""
    scrape_timeout_s: float = Field(default=2.0, gt=0)
    drift_percent: float = Field(default=20.0, gt=0)
    """A ModelProfile whose body, as the sidecars measure it, differs from its bodyTimeMs by
    more than this gets Drifted=True and a Warning Event: re-calibrate it."""
    recalibrate_on_drift: bool = True
    """A calibrated ModelProfile (source: calibration) that drifts is measured again, as if
    annotated stagger.dev/recalibrate; manual profiles only get the Event and condition."""
    recalibration_cooldown_s: float = Field(default=3600.0, ge=0)
    """No drift-triggered re-calibration sooner than this after the profile's measuredAt."""
    degraded_drop_rate: float = Field(default=0.001, ge=0, le=1)
    """A running stream dropping more than this share of its frames is Degraded."""
    retry_base_s: float = Field(default=1.0, gt=0)
    """A failed reconcile (or refused writes) is retried after about this long, doubling
    with each failure in a row up to ``retry_max_s`` (with jitter)."""
    retry_max_s: float = Field(default=60.0, gt=0)
    write_concurrency: int = Field(default=16, ge=1, le=256)
    """API writes in flight at once during a reconcile."""
    leader_election: bool = True
    """Only the holder of the Lease plans and writes; other replicas stand by."""
    lease_name: str = "stagger-operator"
    lease_namespace: str = "stagger-system"  # the chart sets the operator's own namespace
    lease_duration_s: int = Field(default=15, ge=1)
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    metrics_address: str | None = "0.0.0.0:9400"
    """Where the operator's metrics (/metrics) listen; empty: nowhere."""
    feed_address: str | None = None
    """Where the slot feed listens (the chart: 0.0.0.0:8082); None: no feed, contracts
    reach sidecars only through their mounted ConfigMap (docs/architecture.md)."""
    feed_url: str | None = None
    """How sidecars reach the slot feed (the chart: its Service's URL); injected into each
    shard's sidecar as ``STAGGER_SLOT_FEED``. None: sidecars do not use it."""
    health_address: str = "0.0.0.0:8080"
    """Where the liveness endpoint (/healthz) listens; the kubelet probes it on the pod IP."""
    log_format: Literal["json", "plain"] = "json"
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty: all."""

    def planner(self) -> PlannerSettings:
        return PlannerSettings(
            utilization_cap=self.utilization_cap,
            throughput_cap=self.throughput_cap,
            mps_throughput_cap=self.mps_throughput_cap,
            charge_model_time=self.charge_model_time,
            mps_servers_per_gpu=self.mps_servers_per_gpu,
            guard_ms=self.guard_ms,
            policy=self.policy,
            max_extra_shards=self.max_extra_shards,
            shard_grid_ms=self.shard_grid_ms,
            max_repair_moves=self.max_repair_moves,
            tick_hz=self.tick_hz,
        )
