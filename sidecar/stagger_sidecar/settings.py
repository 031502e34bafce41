"""Gate settings: flags (``stagger-sidecar gate --help``) and ``STAGGER_*`` environment
variables (the operator sets them on the injected container); flags win."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stagger.core.api import GatePolicy
from stagger.core.phase import APP_SLACK_SHARE, APP_WAY_S
from stagger_sidecar.gate import GateConfig


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


class GateSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STAGGER_",
        frozen=True,
        cli_prog_name="stagger-sidecar gate",
        cli_kebab_case=True,
    )

    stream: str | None = None
    """The stream requests belong to when they name none (the operator sets it)."""
    namespace: str = "default"
    """Namespace label for metrics when the slot file does not say."""
    slot_file: Path = Path("/etc/stagger/slot/slot.json")
    """The slot contract the operator mounts; a directory gates every ``*.json`` in it
    (one Triton serving several streams)."""
    slot_poll_s: float = Field(default=0.2, gt=0)
    """How often the slot file is checked for a new contract (the kubelet swaps ConfigMap
    files in place; a stat every 200 ms is cheap and sees it)."""

    slot_feed: str | None = None
    """The operator's slot feed for this shard (``http://…/v1/slots/<namespace>/<configmap>``,
    injected by the operator): the sidecar holds a request there that is answered as soon as
    its contract changes, and says on it where its stream's requests arrive. The mounted
    file stays in use; of the two the newer generation wins. Unset: the file only."""
    slot_feed_wait_s: float = Field(default=30.0, gt=0, le=60)
    """How long one feed request may wait for a change before it is asked again."""
    triton_http: str | None = "127.0.0.1:8000"
    triton_grpc: str | None = "127.0.0.1:8001"
    http_address: str = "0.0.0.0:8800"
    """Where apps send KServe v2 HTTP; also /healthz, /readyz and the slot clock."""
    grpc_address: str = "0.0.0.0:8801"
    metrics_address: str = "0.0.0.0:9400"

    policy: GatePolicy = GatePolicy.WAIT
    max_wait_ms: float | None = Field(default=None, gt=0)
    grace_ms: float = Field(default=2.0, ge=0)
    """A request this soon after a free slot's start takes that slot at once: apps that
    capture at the slot start arrive a little after it."""
    grace_body_fraction: float = Field(default=1.0, ge=0, le=1)
    """... or this share of the slot's body, when that is longer: a request that arrives
    while its slot lasts takes it; jitter of a few ms must not cost a whole period where
    slots are short."""
    max_queue: int = Field(default=4, ge=1)
    """Requests of one stream waiting or in flight at once (``wait`` policy)."""
    aperiodic_max_wait_share: float = Field(default=0.5, gt=0, le=1)
    """Without a max wait, a stream whose requests are not periodic (event-driven,
    variable fps) waits at most this share of a period: a request whose slot is further
    away goes at once, ungated."""
    app_way_ms: float = Field(default=APP_WAY_S * 1e3, ge=0)
    """The way between the app and the gate, there and back, which the gate does not see:
    a request answered later than the frame period less this goes no earlier than its slot
    (it would be late either way)."""
    app_slack_share: float = Field(default=APP_SLACK_SHARE, ge=0, le=1)
    """Of a request's slack (its frame period less its answer and ``app_way_ms``), the share
    a wait for its slot leaves the app, for its own work on each answer and a slow answer: a
    request whose wait would leave less goes at once, ungated."""
    max_inflight: int = Field(default=1024, ge=1)
    """Requests the sidecar holds at once, all streams and pass-through calls together."""
    gpu_ledger: Path | None = None
    """Coordinated release, for time-sliced GPUs: the file the sidecars of this GPU share
    (one per GPU, on a node directory every such pod mounts). A request whose slot has come
    also waits while another stream's body is predicted to run. Unset: static stagger."""
    ledger_lead_ms: float = Field(default=0.0, ge=0)
    """Coordinated release: how long before the GPU is predicted free a request may go
    (a request's way to the model already overlaps the previous body)."""
    ledger_max_delay_ms: float | None = Field(default=None, gt=0)
    """Coordinated release: the longest a request waits past its slot for the GPU (unset:
    its slot's body), so one stalled request never holds the others."""
    upstream_timeout_s: float = Field(default=10.0, gt=0)
    """How long Triton may take to answer before the app gets a timeout error (gRPC: the
    app's own deadline when it is shorter)."""
    http_max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """HTTP: the request line and headers together at most this many bytes (else 431);
    gRPC: a header block at most this many bytes (else the connection ends, GOAWAY)."""
    http_max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """HTTP: a request body at most this many bytes (else 413): a raw 1080p RGB frame in
    FP32 is 24 MiB."""
    http_header_timeout_s: float = Field(default=10.0, gt=0)
    """HTTP: a request's line and headers must arrive within this long (else 408)."""
    http_idle_timeout_s: float = Field(default=120.0, gt=0)
    """HTTP: a keep-alive connection with no request for this long is closed."""
    stats_interval_s: float = Field(default=5.0, gt=0)
    """How often Triton's statistics are read for body time and achieved fps."""
    drain_timeout_s: float = Field(default=20.0, ge=0)
    """On SIGTERM: how long in-flight requests may finish (below the pod's grace period)."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """uvloop roughly halves the proxy's CPU per request (docs/benchmarks.md)."""
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator(
        "http_address", "grpc_address", "metrics_address", "triton_http", "triton_grpc"
    )
    @classmethod
    def _address(cls, v: str | None, info: ValidationInfo) -> str | None:
        if not v and info.field_name in ("triton_http", "triton_grpc"):
            return None  # that upstream is not used
        return _host_port(v or "")

    @model_validator(mode="after")
    def _some_upstream(self) -> GateSettings:
        if not self.triton_http and not self.triton_grpc:
            raise ValueError("set triton_http or triton_grpc (where Triton listens)")
        return self

    def gate_config(self) -> GateConfig:
        return GateConfig(
            policy=self.policy,
            max_wait_s=self.max_wait_ms / 1e3 if self.max_wait_ms else None,
            grace_s=self.grace_ms / 1e3,
            grace_body_fraction=self.grace_body_fraction,
            max_queue=self.max_queue,
            aperiodic_max_wait_share=self.aperiodic_max_wait_share,
            app_way_s=self.app_way_ms / 1e3,
            app_slack_share=self.app_slack_share,
        )


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
