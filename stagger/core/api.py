"""The API of Stagger (group ``stagger.dev``, version ``v1alpha1``) as pydantic models.

These models are the single source of truth: the CRD YAML in ``crds/`` is generated from
them (:mod:`stagger.core.crdgen`), the CLI validates manifests with them, and the operator
reads and writes objects through them. Python attributes are snake_case; the wire format
is the Kubernetes camelCase given by each field's alias.

Cross-field rules are declared once (:class:`CrossFieldRule`): their CEL expression goes
into the CRD as ``x-kubernetes-validations`` and their Python predicate runs in pydantic,
so the API server and the CLI refuse the same manifests with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from pydantic.alias_generators import to_camel

GROUP = "stagger.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class Wire(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused, no NaN."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        allow_inf_nan=False,
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as Kubernetes JSON: camelCase, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# Strict numbers: Kubernetes refuses "10" for a number field, so the CLI does too.
PositiveMs = Annotated[float, Field(gt=0, le=3_600_000, strict=True)]
COST_MS_DESCRIPTION = (
    "GPU time one frame really costs when streams share the GPU as deployed "
    "(1000 / saturation throughput with one server per stream, from calibration), in ms. "
    "Charged for admission instead of the body; the body still spaces the slots (see "
    "exclusiveBody). Unset: the body is exclusive and charged in full."
)
EXCLUSIVE_BODY_DESCRIPTION = (
    "The body gains nothing from running beside another on its GPU (a lock, a FIFO, a GPU "
    "that runs one at a time), even though costMs says what it costs: its slot is then "
    "exactly its reserved time and charged costMs. Set on an InferenceStream, it overrides "
    "its ModelProfile's and is kept exactly: no other body overlaps it, and it joins no GPU "
    "whose bodies outrun their slots. From a ModelProfile it is a measurement: its streams "
    "still share a GPU with other models, whose overlap the table keeps off them where it "
    "can. Without costMs a body is always exclusive, kept exactly."
)
NonNegativeMiB = Annotated[int, Field(ge=0, le=16 * 1024 * 1024, strict=True)]
ContainerPath = Annotated[str, Field(pattern=r"^/", min_length=2, max_length=4096)]


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule spanning fields: CEL for the API server, a predicate for pydantic."""

    cel: str
    message: str
    field_path: str
    holds: Callable[[Any], bool]


class ObjectMeta(BaseModel):
    """The part of Kubernetes ObjectMeta that Stagger reads; other fields are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    namespace: str | None = Field(default=None, pattern=DNS_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None


class Condition(Wire):
    """A standard Kubernetes status condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class SharingMode(StrEnum):
    """How streams share one GPU; body time differs between modes, so profiles key on it."""

    TIME_SLICING = "time-slicing"
    MPS = "mps"
    MIG = "mig"
    EXCLUSIVE = "exclusive"


class Resource(Wire):
    """A Kubernetes object of one of Stagger's kinds; subclasses fix kind, spec and status."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    NAMESPACED: ClassVar[bool]
    RULES: ClassVar[tuple[CrossFieldRule, ...]] = ()
    PRINTER_COLUMNS: ClassVar[tuple[dict[str, str | int], ...]] = ()

    metadata: ObjectMeta

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def name(self) -> str:
        return self.metadata.name


# Conditions merge by type under server-side apply, as in every built-in status.
CONDITIONS_LIST: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def check_rules(obj: Any, rules: tuple[CrossFieldRule, ...]) -> None:
    for rule in rules:
        if not rule.holds(obj):
            raise ValueError(f"{rule.field_path}: {rule.message}")


# ---------------------------------------------------------------- InferenceStream


class StreamPhase(StrEnum):
    PENDING = "Pending"
    CALIBRATING = "Calibrating"
    PLACED = "Placed"
    RUNNING = "Running"
    UNSCHEDULABLE = "Unschedulable"
    DEGRADED = "Degraded"


STREAM_RULES: tuple[CrossFieldRule, ...] = (
    CrossFieldRule(
        cel="!has(self.bodyTimeMs) || !has(self.latencyMs) || self.bodyTimeMs <= self.latencyMs",
        message="bodyTimeMs must not exceed latencyMs (the body is part of the solo latency)",
        field_path="spec.bodyTimeMs",
        holds=lambda s: (
            s.body_time_ms is None or s.latency_ms is None or s.body_time_ms <= s.latency_ms
        ),
    ),
    CrossFieldRule(
        cel="!has(self.costMs) || !has(self.bodyTimeMs) || self.costMs <= self.bodyTimeMs",
        message="costMs must not exceed bodyTimeMs (sharing never costs more than the whole "
        "body; leave costMs unset for an exclusive body)",
        field_path="spec.costMs",
        holds=lambda s: s.cost_ms is None or s.body_time_ms is None or s.cost_ms <= s.body_time_ms,
    ),
    CrossFieldRule(
        cel="!has(self.latencyMs) || !has(self.deadlineMs) || self.latencyMs <= self.deadlineMs",
        message="latencyMs exceeds deadlineMs: no placement can finish a frame in time",
        field_path="spec.latencyMs",
        holds=lambda s: (
            s.latency_ms is None or s.deadline_ms is None or s.latency_ms <= s.deadline_ms
        ),
    ),
    CrossFieldRule(
        cel="!has(self.bodyTimeMs) || !has(self.deadlineMs) || self.bodyTimeMs <= self.deadlineMs",
        message="bodyTimeMs exceeds deadlineMs: no placement can finish a frame in time",
        field_path="spec.bodyTimeMs",
        holds=lambda s: (
            s.body_time_ms is None or s.deadline_ms is None or s.body_time_ms <= s.deadline_ms
        ),
    ),
)


class GatePolicy(StrEnum):
    """What the sidecar does with a request whose stream is busy or that is too late for
    its slot (docs/sidecar.md)."""

    WAIT = "wait"
    DROP = "drop"
    PASS = "pass"


class GateSpec(Wire):
    """How the sidecar gates this stream's requests."""

    policy: GatePolicy = Field(
        default=GatePolicy.WAIT,
        description="A request that arrives while the previous one is in flight, or whose "
        "slot is more than maxWaitMs away: wait (queue for the next free slot; a slot more "
        "than maxWaitMs away: go at once, ungated), drop (refuse: KServe 429 / gRPC "
        "RESOURCE_EXHAUSTED) or pass (forward at once, ungated).",
    )
    max_wait_ms: PositiveMs | None = Field(
        default=None,
        description="Longest wait for a slot, in ms. Unset: up to one period (a stream's "
        "frame that arrives between slots waits for the next one).",
    )


class InferenceStreamSpec(Wire):
    """What one video stream needs: a model at a frame rate, with its timing."""

    model: str = Field(
        min_length=1,
        max_length=253,
        description="Triton model name that serves every frame of this stream.",
    )
    model_version: str | None = Field(
        default=None,
        pattern=r"^[0-9]+$",
        max_length=20,
        description="Triton model version; the server's version policy applies when unset.",
    )
    fps: float = Field(
        gt=0,
        le=1000,
        strict=True,
        description="Frames per second the stream must sustain.",
    )
    body_time_ms: PositiveMs | None = Field(
        default=None,
        description="GPU-exclusive part of one inference (the forward pass), in ms. "
        "Overrides the ModelProfile; measured on the node by calibration when unset.",
    )
    cost_ms: PositiveMs | None = Field(default=None, description=COST_MS_DESCRIPTION)
    exclusive_body: StrictBool | None = Field(default=None, description=EXCLUSIVE_BODY_DESCRIPTION)
    latency_ms: PositiveMs | None = Field(
        default=None,
        description="Solo end-to-end latency of one frame, in ms (ModelProfile when unset).",
    )
    memory_mib: NonNegativeMiB = Field(
        default=0,
        alias="memoryMiB",
        description="GPU memory one shard of this stream holds, in MiB.",
    )
    deadline_ms: PositiveMs | None = Field(
        default=None,
        description="Optional end-to-end bound per frame, in ms (what the app leaves for an "
        "answer: the frame period less its own post-processing). On a time-sliced GPU, a "
        "stream whose deadline is less than its latencyMs plus the longest body profiled "
        "there cannot absorb one more body: its slot is its whole body, charged in full. "
        "Unset: the frame period.",
    )
    priority: int = Field(
        default=0,
        ge=-1_000_000,
        le=1_000_000,
        strict=True,
        description="Higher priority streams are placed first; lower ones give way first "
        "when capacity shrinks.",
    )
    gpu_product: str | None = Field(
        default=None,
        max_length=253,
        description="Only GPUs of this product (as in nvidia.com/gpu.product), e.g. NVIDIA-H200.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Only nodes whose labels match all of these.",
    )
    gate: GateSpec = Field(
        default_factory=GateSpec,
        description="How the sidecar treats requests that cannot take their slot.",
    )
    template: dict[str, Any] | None = Field(
        default=None,
        description="Pod template (Triton and app containers) that serves one shard. "
        "Checked by the operator at reconcile time; not needed for planning.",
        json_schema_extra={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    )
    calibration_inputs: dict[str, ContainerPath] = Field(
        default_factory=dict,
        max_length=16,
        description="Data for the model's inputs when the operator calibrates it, by input "
        "name: an absolute path of a file the Triton container sees (the profiler mounts its "
        "volumes read-only), a .npy array or, for a BYTES or UINT8 input, the file's bytes "
        "(a camera frame as JPEG). Inputs not named get zeros of the model's shapes, which "
        "a model that decodes its frames cannot take.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> InferenceStreamSpec:
        check_rules(self, STREAM_RULES)
        return self


class ShardStatus(Wire):
    """Where one shard runs and when its body starts on its GPU."""

    index: int = Field(ge=0)
    node: str
    gpu: int = Field(ge=0, description="GPU index on the node.")
    gpu_uuid: str | None = None
    fps: float = Field(description="Frames per second this shard takes (every k-th frame).")
    period_ms: float
    offset_ms: float
    body_ms: float
    reserved_ms: float | None = Field(
        default=None,
        description="GPU time reserved for each frame (the slot's width, what admission "
        "charges): costMs scaled to the throughput cap, or the whole body when the body is "
        "exclusive without a cost or the deadline cannot absorb one more body.",
    )
    slots_from: datetime | None = Field(
        default=None,
        description="When the shard's first slot starts on its GPU, where that lay ahead "
        "when it was placed: a shard that joins by re-timing its GPU starts when every "
        "sidecar there can have read the new table (the operator's "
        "STAGGER_CONTRACT_PROPAGATION_S); its sidecar refuses requests until then.",
    )
    slot_wait_ms: float | None = Field(
        default=None,
        description="Where this shard's slot follows its stream's arrivals (apps on their "
        "own clock): how long each frame waits at its gate for the slot, ms (the slot's "
        "start less the arrival phase it follows). A gate.maxWaitMs shorter than this sends "
        "every frame at once, ungated. Unset: the slot does not follow arrivals.",
    )
    observed_fps: float | None = None
    drop_rate: float | None = None
    p99_ms: float | None = None


class InferenceStreamStatus(Wire):
    phase: StreamPhase = StreamPhase.PENDING
    message: str = ""
    shard_count: int = 0
    node: str = Field(default="", description="Node of the first shard (+N when split).")
    gpu: str = Field(default="", description="GPU index of the first shard (+N when split).")
    offset_ms: float | None = None
    shards: list[ShardStatus] = Field(
        default_factory=list,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["index"],
        },
    )
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    observed_fps: float | None = None
    drop_rate: float | None = None
    p99_ms: float | None = None
    observed_generation: int | None = None


class InferenceStream(Resource):
    """A video stream to serve: applied by users, placed and staggered by the operator."""

    KIND = "InferenceStream"
    PLURAL = "inferencestreams"
    SHORT_NAMES = ("istream",)
    NAMESPACED = True
    RULES = STREAM_RULES
    PRINTER_COLUMNS = (
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "FPS", "type": "number", "jsonPath": ".spec.fps"},
        {"name": "Shards", "type": "integer", "jsonPath": ".status.shardCount"},
        {"name": "Node", "type": "string", "jsonPath": ".status.node"},
        {"name": "GPU", "type": "string", "jsonPath": ".status.gpu"},
        {
            "name": "Offset",
            "type": "number",
            "jsonPath": ".status.offsetMs",
            "description": "Body start of the first shard within its slot period, ms",
        },
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )

    api_version: Literal["stagger.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["InferenceStream"]
    spec: InferenceStreamSpec
    status: InferenceStreamStatus | None = None


# ---------------------------------------------------------------- ModelProfile

PROFILE_RULES: tuple[CrossFieldRule, ...] = (
    CrossFieldRule(
        cel="self.bodyTimeMs <= self.latencyMs",
        message="bodyTimeMs must not exceed latencyMs (the body is part of the solo latency)",
        field_path="spec.bodyTimeMs",
        holds=lambda s: s.body_time_ms <= s.latency_ms,
    ),
    CrossFieldRule(
        cel="!has(self.costMs) || self.costMs <= self.bodyTimeMs",
        message="costMs must not exceed bodyTimeMs (sharing never costs more than the whole "
        "body; leave costMs unset for an exclusive body)",
        field_path="spec.costMs",
        holds=lambda s: s.cost_ms is None or s.cost_ms <= s.body_time_ms,
    ),
)


class ModelProfileSpec(Wire):
    """Measured timing of one model on one GPU product in one sharing mode."""

    model: str = Field(min_length=1, max_length=253, description="Triton model name.")
    model_version: str | None = Field(default=None, pattern=r"^[0-9]+$", max_length=20)
    gpu_product: str = Field(
        min_length=1, max_length=253, description="GPU product, as in nvidia.com/gpu.product."
    )
    sharing_mode: SharingMode = Field(default=SharingMode.TIME_SLICING)
    body_time_ms: PositiveMs = Field(description="Body time (GPU-exclusive part), ms.")
    cost_ms: PositiveMs | None = Field(default=None, description=COST_MS_DESCRIPTION)
    exclusive_body: StrictBool | None = Field(default=None, description=EXCLUSIVE_BODY_DESCRIPTION)
    latency_ms: PositiveMs = Field(description="Solo end-to-end latency, ms.")
    solo_compute_ms: PositiveMs | None = Field(
        default=None,
        description=(
            "The model's own time per request when it runs alone (Triton's compute input, "
            "infer and output), ms; calibration measures it. On a time-sliced GPU its "
            "streams' soloComputeMs x fps add up to the GpuSchedule's modelTimeShare."
        ),
    )
    body_time_ci_ms: list[float] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="95 % confidence interval of the body time, [low, high] ms.",
    )
    source: Literal["calibration", "manual", "imported"] = "manual"
    measured_at: datetime | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> ModelProfileSpec:
        check_rules(self, PROFILE_RULES)
        return self


class ModelProfileStatus(Wire):
    observed_body_ms: float | None = Field(
        default=None, description="Body time measured by the sidecars, ms."
    )
    drift_percent: float | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)


class ModelProfile(Resource):
    """Body and solo latency of a model on a GPU product; shared by all its streams."""

    KIND = "ModelProfile"
    PLURAL = "modelprofiles"
    SHORT_NAMES = ("mprof",)
    NAMESPACED = False
    RULES = PROFILE_RULES
    PRINTER_COLUMNS = (
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Product", "type": "string", "jsonPath": ".spec.gpuProduct"},
        {"name": "Sharing", "type": "string", "jsonPath": ".spec.sharingMode"},
        {"name": "Body", "type": "number", "jsonPath": ".spec.bodyTimeMs"},
        {"name": "Cost", "type": "number", "jsonPath": ".spec.costMs"},
        {"name": "Exclusive", "type": "boolean", "jsonPath": ".spec.exclusiveBody"},
        {"name": "Latency", "type": "number", "jsonPath": ".spec.latencyMs"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )

    api_version: Literal["stagger.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelProfile"]
    spec: ModelProfileSpec
    status: ModelProfileStatus | None = None


# ---------------------------------------------------------------- GpuSchedule


class ScheduledSlot(Wire):
    """One shard's slot on the GPU: its body starts at epoch + offset + n * period."""

    stream: str
    namespace: str
    shard: int = Field(ge=0)
    shards: int = Field(ge=1)
    period_ticks: int = Field(gt=0)
    offset_ticks: int = Field(ge=0)
    body_ticks: int = Field(gt=0)
    memory_mib: int = Field(default=0, ge=0, alias="memoryMiB")
    retimed_at: datetime | None = Field(
        default=None,
        description=(
            "When a re-timing last changed this slot on this GPU (the generation's "
            "effectiveAt); it is not re-timed again within the operator's minimum interval."
        ),
    )
    since: datetime | None = Field(
        default=None,
        description=(
            "When this shard's slots on this GPU began: the effectiveAt of the table it "
            "joined. Until then its sidecar has no slot."
        ),
    )
    arrival_ticks: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The arrival phase (ticks from the epoch, within the stream's frame period) "
            "this slot was re-timed to follow; while its requests keep that phase, its gate "
            "judges how long to hold them for it by the slot's body, not by measured "
            "answers. Unset: placed without its stream's arrivals."
        ),
    )


class GpuScheduleSpec(Wire):
    """The slot table of one GPU, written by the operator."""

    node: str
    gpu_index: int = Field(ge=0)
    gpu_uuid: str | None = None
    gpu_product: str | None = None
    sharing_mode: SharingMode = SharingMode.TIME_SLICING
    tick_hz: int = Field(default=30_000, gt=0, le=1_000_000)
    epoch: datetime = Field(description="Instant from which every slot on this GPU counts.")
    generation: int = Field(default=1, ge=1, description="Bumped on every change of the table.")
    effective_at: datetime | None = Field(
        default=None, description="Instant at which this generation applies on every sidecar."
    )
    slots: list[ScheduledSlot] = Field(default_factory=list)


class GpuScheduleStatus(Wire):
    streams: int = 0
    utilization: float = Field(default=0.0, description="Reserved body time per second.")
    memory_mib: int = Field(default=0, alias="memoryMiB")
    measured_body_ms: dict[str, float] = Field(default_factory=dict)
    slot_misses: int = 0
    body_overlap_ms_per_second: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Of each second, the ms in which two calibrated bodies of this table run at "
            "once (summed over pairs of shards). 0: every body has the GPU alone; above 0 the "
            "streams' costs fit and their whole bodies do not, so frames that overlap "
            "take longer (most on a time-sliced GPU)."
        ),
    )
    model_time_share: float | None = Field(
        default=None,
        ge=0,
        description=(
            "GPUs whose bodies take turns (every sharing mode but MPS): of each second, the "
            "share its streams' models need one at a time (their ModelProfiles' "
            "soloComputeMs x fps, summed). Above 0.96 their bodies cannot all run apart and "
            "frames answer later (condition ModelTimeFits). Unset: a model on it has no "
            "soloComputeMs, or the GPU runs MPS (bodies side by side)."
        ),
    )
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)


class GpuSchedule(Resource):
    """Per-GPU view: which shards share the GPU and when each body runs."""

    KIND = "GpuSchedule"
    PLURAL = "gpuschedules"
    SHORT_NAMES = ("gsched",)
    NAMESPACED = False
    PRINTER_COLUMNS = (
        {"name": "Node", "type": "string", "jsonPath": ".spec.node"},
        {"name": "GPU", "type": "integer", "jsonPath": ".spec.gpuIndex"},
        {"name": "Streams", "type": "integer", "jsonPath": ".status.streams"},
        {"name": "Util", "type": "number", "jsonPath": ".status.utilization"},
        {"name": "Overlap", "type": "number", "jsonPath": ".status.bodyOverlapMsPerSecond"},
        {"name": "ModelTime", "type": "number", "jsonPath": ".status.modelTimeShare"},
        {"name": "Generation", "type": "integer", "jsonPath": ".spec.generation"},
        # the instant its table took or takes over (a date column would read "<invalid>"
        # while it lies ahead, as a re-timing's does for STAGGER_CONTRACT_PROPAGATION_S)
        {"name": "Switch", "type": "string", "jsonPath": ".spec.effectiveAt", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )

    api_version: Literal["stagger.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["GpuSchedule"]
    spec: GpuScheduleSpec
    status: GpuScheduleStatus | None = None


# ---------------------------------------------------------------- GpuNode


class GpuDevice(Wire):
    """One GPU as NVML sees it on its node."""

    index: int = Field(ge=0)
    uuid: str = Field(min_length=1)
    product: str = Field(min_length=1, description="As in nvidia.com/gpu.product (dashes).")
    memory_total_mib: int = Field(ge=0, alias="memoryTotalMiB")
    memory_used_mib: int = Field(ge=0, alias="memoryUsedMiB")
    foreign_memory_mib: int | None = Field(
        default=None,
        ge=0,
        alias="foreignMemoryMiB",
        description="Memory of processes Stagger does not manage; null: not attributable "
        "(the agent cannot see the processes).",
    )
    compute_mode: str = Field(default="Default", description="NVML compute mode.")
    mig_enabled: bool = False
    mps_active: bool | None = Field(default=None, description="An MPS server runs on it.")


class GpuNodeSpec(Wire):
    node: str = Field(min_length=1, max_length=253, description="The Node this describes.")


class GpuNodeStatus(Wire):
    nvml: Literal["ok", "unavailable"] = "ok"
    message: str = ""
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: list[GpuDevice] = Field(default_factory=list)
    observed_at: datetime | None = None


class GpuNode(Resource):
    """The GPUs of one node, published by the node agent (never by patching the Node)."""

    KIND = "GpuNode"
    PLURAL = "gpunodes"
    SHORT_NAMES = ("gnode",)
    NAMESPACED = False
    PRINTER_COLUMNS = (
        {"name": "NVML", "type": "string", "jsonPath": ".status.nvml"},
        {"name": "Driver", "type": "string", "jsonPath": ".status.driverVersion"},
        {"name": "Observed", "type": "date", "jsonPath": ".status.observedAt"},
    )

    api_version: Literal["stagger.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["GpuNode"]
    spec: GpuNodeSpec
    status: GpuNodeStatus | None = None


RESOURCES: tuple[type[Resource], ...] = (InferenceStream, ModelProfile, GpuSchedule, GpuNode)
KINDS: dict[str, type[Resource]] = {r.KIND: r for r in RESOURCES}
