"""The slot contract: what the operator hands each shard's sidecar.

It travels as a file (``slot.json``) in a ConfigMap mounted into the shard's pod. A new
generation applies at ``effectiveAt`` on every sidecar of the GPU at once: later than the
kubelet's ConfigMap propagation, so no two sidecars ever run different tables.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from stagger.core.api import Wire
from stagger.core.timebase import TICK_HZ

CONTRACT_FILE = "slot.json"


class SlotAssignment(Wire):
    """One shard's slot: its requests are released at epoch + offset + n * period."""

    stream: str
    namespace: str
    shard: int = Field(ge=0, description="This shard's index i: it takes frames i, i+k, ...")
    shards: int = Field(ge=1, description="Number of shards k the stream is split into.")
    node: str
    gpu_index: int = Field(ge=0)
    gpu_uuid: str | None = None
    tick_hz: int = Field(default=TICK_HZ, gt=0)
    epoch: datetime
    period_ticks: int = Field(gt=0)
    offset_ticks: int = Field(ge=0)
    body_ticks: int = Field(gt=0)
    generation: int = Field(ge=1)
    effective_at: datetime
