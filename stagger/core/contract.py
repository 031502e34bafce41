"""The slot contract: what the operator hands each shard's sidecar.

It travels as a file (``slot.json``) in a ConfigMap mounted into the shard's pod, and over
the operator's slot feed as soon as it is written. A new generation applies at
``effectiveAt`` on every sidecar of the GPU at once: later than every sidecar whose
releases it changes can have read it (the kubelet's ConfigMap propagation, or a second on
the feed), so no two sidecars ever run different tables. The switch is exact in ticks:
``effective_tick`` (see :mod:`stagger.core.slotclock`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import Field

from stagger.core.api import Wire
from stagger.core.timebase import TICK_HZ

if TYPE_CHECKING:
    from stagger.core.placement import ShardPlacement

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
    tick_hz: int = Field(
        default=TICK_HZ,
        gt=0,
        le=1_000_000,
        description="Ticks per second; effectiveAt is in microseconds, so a tick is no shorter.",
    )
    epoch: datetime
    period_ticks: int = Field(gt=0)
    frame_period_ticks: int | None = Field(
        default=None,
        gt=0,
        description="The shard's frame period (its app's pace), when longer than its slot "
        "period (a harmonic table); unset: the slot period. The sidecar measures arrival "
        "phases at it.",
    )
    offset_ticks: int = Field(ge=0)
    body_ticks: int = Field(gt=0)
    early_ticks: int | None = Field(
        default=None,
        ge=0,
        description="How long before its slot's start a request may be released: half the "
        "free time before the slot (slots.release_windows); unset: never early.",
    )
    late_ticks: int | None = Field(
        default=None,
        ge=0,
        description="How long after its slot's start a request still takes it (with the "
        "gate's grace, the larger): half the free time after the slot's body.",
    )
    arrival_ticks: int | None = Field(
        default=None,
        ge=0,
        description="The arrival phase (ticks from the epoch, within the frame period) this "
        "slot was re-timed to follow: while the stream's requests keep it, its gate holds "
        "them for their slot as long as the slot's body leaves the app time, whatever their "
        "measured answers took (the table was chosen for every stream of the GPU at once). "
        "Unset: the slot was placed without its arrivals.",
    )
    generation: int = Field(ge=1)
    effective_at: datetime

    @property
    def frame_period_s(self) -> float:
        """How often the stream's app sends a frame: its arrivals' period."""
        return (self.frame_period_ticks or self.period_ticks) / self.tick_hz

    @property
    def effective_tick(self) -> int:
        """The switch instant in ticks from the epoch: ``effectiveAt`` floored to a tick,
        exactly (integer microseconds), so that :func:`effective_at_of` round-trips."""
        return (_microseconds(self.effective_at - self.epoch) * self.tick_hz) // 1_000_000

    def releases(self) -> tuple[object, ...]:
        """Everything a sidecar's releases depend on (not the generation, nor when it takes
        effect). Two generations that agree here may switch at any instant: a sidecar that
        reads the new one late releases nothing the new table does not expect. Where they
        differ (a re-timed slot, a release window no longer granted), every running sidecar
        must read the new one before its switch instant."""
        return (
            self.epoch,
            self.tick_hz,
            self.period_ticks,
            self.offset_ticks,
            self.body_ticks,
            self.early_ticks or 0,
            self.late_ticks or 0,
        )

    @classmethod
    def for_shard(
        cls,
        p: ShardPlacement,
        *,
        tick_hz: int,
        epoch: datetime,
        generation: int,
        effective_at: datetime,
        window: tuple[int, int] | None = None,
    ) -> SlotAssignment:
        """The contract of a placed shard on its GPU's timeline, with its release window
        (early, late ticks) when the operator grants one."""
        return cls(
            stream=p.stream,
            namespace=p.namespace,
            shard=p.shard,
            shards=p.shards,
            node=p.node,
            gpu_index=p.gpu,
            gpu_uuid=p.gpu_uuid,
            tick_hz=tick_hz,
            epoch=epoch,
            period_ticks=p.period_ticks,
            frame_period_ticks=(
                p.frame_period_ticks if p.frame_period_ticks != p.period_ticks else None
            ),
            offset_ticks=p.offset_ticks,
            body_ticks=p.body_ticks,
            generation=generation,
            effective_at=effective_at,
            early_ticks=window[0] if window else None,
            late_ticks=window[1] if window else None,
            arrival_ticks=p.arrival_ticks,
        )


def _microseconds(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def effective_at_of(epoch: datetime, tick: int, tick_hz: int) -> datetime:
    """The ``effectiveAt`` whose switch instant is ``tick``: rounded *up* to a microsecond,
    which floors back to ``tick`` for any tick no shorter than a microsecond."""
    if not 0 < tick_hz <= 1_000_000:
        raise ValueError(f"tick_hz must be in (0, 1000000], got {tick_hz}")
    return epoch + timedelta(microseconds=-((-tick * 1_000_000) // tick_hz))
