"""The sidecar's metrics: names, labels and buckets, shared by the sidecar that exports them
and the operator that scrapes them into stream and GpuSchedule status.

Prometheus conventions: base units (seconds), counters end in ``_total``, one label set for
every per-stream series so dashboards can join them.
"""

from __future__ import annotations

PREFIX = "stagger"
STREAM_LABELS = ("namespace", "stream", "shard", "model")

FORWARDED = "stagger_frames_forwarded_total"
"""Inference requests forwarded to Triton (counter)."""
DROPPED = "stagger_frames_dropped_total"
"""Requests refused by the gate, by ``reason`` (counter): busy, late, unavailable, timeout."""
LATE = "stagger_frames_late_total"
"""Requests forwarded after their slot had passed (counter)."""
SLOT_MISSES = "stagger_slot_misses_total"
"""Released inferences that overran their slot: the answer came after the stream's next slot
began (counter)."""
GATE_WAIT = "stagger_gate_wait_seconds"
"""Time a request waited at the gate for its slot (histogram)."""
RELEASE_LAG = "stagger_gate_release_lag_seconds"
"""How long after its release time a held request was forwarded: the sidecar's own timer
and event-loop lag, which starts a body late into the next slot's (histogram; near 0 on a
healthy node; coordinated holds, which wait on purpose, are not counted)."""
SERVICE = "stagger_triton_service_seconds"
"""Triton's service time for a released request (histogram)."""
LATENCY = "stagger_request_latency_seconds"
"""End to end at the sidecar: arrival to response, gate wait included (histogram)."""
COORDINATED_DELAY = "stagger_gate_coordinated_delay_seconds"
"""Coordinated release: how long a request waited past its slot for the GPU's previous body
(histogram; only with a GPU ledger)."""
COORDINATED_FORCED = "stagger_gate_coordinated_forced_total"
"""Coordinated release: requests that went at their longest delay with the GPU still
predicted busy (counter)."""
BODY = "stagger_body_seconds"
"""Body time measured from Triton's statistics (compute_infer per inference; gauge)."""
ACHIEVED_FPS = "stagger_achieved_fps"
"""Inferences completed per second over the last window (gauge)."""

SLOT_GENERATION = "stagger_slot_generation"
"""Generation of the slot contract in force, per stream (gauge)."""
SLOT_RETIMINGS = "stagger_slot_retimings_total"
"""Slot contracts that took effect with another offset or period than the contract before
them, per stream (counter): each can hold one frame up to one extra period."""
SLOT_CONTRACTS_LATE = "stagger_slot_contracts_late_total"
"""Slot contracts read after their switch instant that change what the sidecar releases
(a re-timed slot, a release window no longer granted), per stream (counter). Until it read
one, the sidecar released on the old table while the others of its GPU ran the new: the
kubelet took longer than the operator's ``STAGGER_CONTRACT_PROPAGATION_S``."""
SLOT_FEED_UP = "stagger_slot_feed_up"
"""1 while the operator's slot feed answers the sidecar; 0 after a failed request (gauge;
absent where the sidecar has no feed)."""
SLOT_FILE_ERRORS = "stagger_slot_file_errors_total"
"""Slot files that could not be read or parsed; the last good contract stays (counter)."""
ARRIVAL_PHASE = "stagger_arrival_phase_seconds"
"""Where in its frame period a stream's requests arrive, from the slot epoch (gauge; NaN
while the stream is not periodic or too few requests arrived: stagger/core/phase.py)."""
ARRIVAL_SPREAD = "stagger_arrival_spread_seconds"
"""Circular standard deviation of those arrivals around the phase (gauge)."""
ARRIVAL_PERIODIC = "stagger_arrival_periodic"
"""1 when the stream's arrivals are periodic at its frame period, else 0 (gauge)."""
SLOT_FOLLOWS_ARRIVALS = "stagger_slot_follows_arrivals"
"""1 while the stream's slot follows its arrivals: re-timed to their phase (the contract's
``arrivalTicks``) and they still keep it (stagger.core.phase.still_followed); its gate then
holds frames by the answer the slot promises. 0 otherwise (gauge)."""
TRITON_UP = "stagger_triton_up"
"""1 when Triton answers ready, else 0 (gauge)."""

DROP_REASON = "reason"

RELEASE_LAG_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
"""Finer than latencies: a lag of a few milliseconds already overlaps the next body."""

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    5.0,
)
"""Fine where frames live (a few ms to a few tens of ms), so p99 is resolved to ~10 %."""

# The node agent's, per GPU (labels: node, gpu, uuid, product).
GPU_LABELS = ("node", "gpu", "uuid", "product")
GPU_UTILIZATION = "stagger_gpu_utilization_ratio"
"""Share of the last sample period the GPU was busy, as NVML reports it (gauge)."""
GPU_MEMORY_USED = "stagger_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "stagger_gpu_memory_total_bytes"
GPU_FOREIGN_MEMORY = "stagger_gpu_foreign_memory_bytes"
"""Memory held by processes Stagger does not manage (gauge; absent when not attributable)."""
NVML_UP = "stagger_nvml_up"
"""1 when the agent reads the GPUs through NVML, else 0 (gauge, label node)."""

# The operator's own (no per-stream labels: the streams' series come from the sidecars).
OPERATOR_RECONCILES = "stagger_operator_reconciles_total"
"""Reconciles run, by ``outcome`` (ok, error) (counter)."""
OPERATOR_RECONCILE_SECONDS = "stagger_operator_reconcile_seconds"
"""How long one reconcile (plan and writes) took (histogram)."""
OPERATOR_MOVES = "stagger_operator_moves_total"
"""Shards the planner moved to another GPU (counter)."""
OPERATOR_RETIMINGS = "stagger_operator_retimings_total"
"""Shards whose slot on their GPU a re-timing changed, by ``node``, ``gpu`` (counter): the
planner re-packs a GPU's offsets when an arrival finds no gap there."""
OPERATOR_STREAMS = "stagger_operator_streams"
"""Streams by ``state``: placed, unschedulable, invalid (gauge)."""
OPERATOR_WRITES = "stagger_operator_writes_total"
"""API writes by ``result``: written, deleted, failed (counter)."""
OPERATOR_LEADER = "stagger_operator_leader"
"""1 on the replica that holds the Lease and plans (gauge)."""
STREAM_TARGET_LABELS = ("namespace", "stream")
STREAM_REQUESTED_FPS = "stagger_stream_requested_fps"
"""The fps a stream asks for (spec.fps), per stream (gauge; from the operator)."""
STREAM_DEADLINE = "stagger_stream_deadline_seconds"
"""A stream's deadline: spec.deadlineMs, else its frame period (gauge; from the operator)."""
PROFILE_LABELS = ("profile", "model", "gpu_product", "sharing_mode")
PROFILE_BODY = "stagger_profile_body_seconds"
"""A ModelProfile's bodyTimeMs (gauge; from the operator)."""
PROFILE_DRIFTED = "stagger_profile_drifted"
"""1 while a ModelProfile's Drifted condition is True (gauge; from the operator)."""
GPU_RESERVED = "stagger_gpu_reserved_ratio"
"""Body time the plan reserves per second on a GPU, by ``node``, ``gpu`` (index),
``product``, ``sharing_mode`` (gauge; from the operator). Compare the node agent's
utilization and the sidecars' measured body."""
GPU_BODY_OVERLAP = "stagger_gpu_body_overlap_ratio"
"""Of each second on a GPU, the time in which two calibrated bodies of the plan run at once
(summed over pairs of shards), by the labels of ``stagger_gpu_reserved_ratio`` (gauge;
from the operator). Zero: every body has the GPU alone. Above zero the charges fit and the
whole bodies do not; a time-sliced GPU's tail grows with it."""
GPU_MODEL_TIME = "stagger_gpu_model_time_ratio"
"""Where bodies take turns (every sharing mode but MPS), the share of each second a GPU's
models need one at a time (its GpuSchedule's ``modelTimeShare``), by the labels of
``stagger_gpu_reserved_ratio`` (gauge; from the operator; absent where a model has no
measured solo compute). Above 1 the bodies must overlap and the tail turns."""
GPU_CALIBRATING = "stagger_gpu_calibrating"
"""1 while a calibration Job measures a GPU, by ``node``, ``gpu`` (index) and ``model`` (gauge;
from the operator): no new stream is placed there until the Job ends."""
SHARD_LABELS = ("namespace", "stream", "shard", "node", "gpu")
SHARD_PLANNED_BODY = "stagger_shard_planned_body_seconds"
"""The body time the plan reserves for each placed shard, where it is placed (gauge; from
the operator). Its labels join the sidecars' per-shard series to their GPU."""
