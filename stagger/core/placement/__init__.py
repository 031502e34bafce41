"""The placement solver: which GPU each stream (or each of its shards) runs on, and at
which offset of its slot table. One idea per module:

- ``model``: what a plan is (settings, placements, GPU use, what was left out, moves);
- ``timing``: what a stream costs on a GPU (body, cost, solo latency; profiles);
- ``index``: search structures (free capacity, GPUs with room by frame period);
- ``fleet``: the planner's working state (GPUs and their tables, shards);
- ``demand``: what a stream demands of each pool of GPUs (timing, slot widths, eligible
  pools, shard counts to try);
- ``overlap``: how much a GPU's calibrated bodies run at once (per shard, per second);
- ``planner``: the ``Planner`` and ``plan()``.
"""

from stagger.core.api import SharingMode
from stagger.core.placement.model import (
    CalibrationSite,
    GpuUsage,
    Move,
    Plan,
    PlannerSettings,
    RunningCalibration,
    ShardKey,
    ShardPlacement,
    Unplaced,
)
from stagger.core.placement.planner import Planner, plan, shard_ms
from stagger.core.placement.timing import ProfileBook, Timing, stream_timing

__all__ = [
    "CalibrationSite",
    "GpuUsage",
    "Move",
    "Plan",
    "Planner",
    "PlannerSettings",
    "ProfileBook",
    "RunningCalibration",
    "ShardKey",
    "ShardPlacement",
    "SharingMode",
    "Timing",
    "Unplaced",
    "plan",
    "shard_ms",
    "stream_timing",
]
