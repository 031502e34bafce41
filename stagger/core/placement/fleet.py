"""The planner's working state: GPUs with their slot tables, shards and the fleet's frame
periods (what each stream demands of a GPU is in :mod:`.demand`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from stagger.core.api import InferenceStream
from stagger.core.cluster import Cluster, Gpu, Node
from stagger.core.placement.index import _RoomIndex
from stagger.core.placement.model import PlannerSettings, ShardKey
from stagger.core.slots import Slot


@dataclass
class _Gpu:
    pos: int
    node: Node
    gpu: Gpu
    pool: int
    pool_pos: int
    memory_free: int
    slots: list[Slot] = field(default_factory=list)
    frames: dict[Hashable, int] = field(default_factory=dict, repr=False)
    """Each placed shard's frame period (the fleet's, shared by its GPUs)."""
    util: float = 0.0
    """Reserved body time per second of ``slots`` (kept in step by :meth:`set_slots`)."""
    need: float = 0.0
    """Body time per second its shards use (at their frame periods): ``util`` less what
    rounded periods reserve beyond it, so what a re-timing may free."""
    kept: bool = False
    """Its table runs (shards from a previous plan): new shards go into its gaps, and it is
    re-timed (re-packed, no shard leaving it) only when a shard finds no gap."""
    blocked: dict[int, int] = field(default_factory=dict)
    """Frame period -> smallest body that found no slot here since the table last changed:
    a larger body with that period cannot fit either, so it is not tried again."""

    @property
    def used(self) -> bool:
        return bool(self.slots)

    def set_slots(self, slots: list[Slot]) -> None:
        self.slots = slots
        self.util = sum(s.body / s.period for s in slots)
        self.need = sum(s.body / self.frames.get(s.key, s.period) for s in slots)
        self.blocked.clear()


@dataclass(frozen=True)
class _Shard:
    stream: InferenceStream
    index: int
    count: int
    key: ShardKey = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.stream.namespace, self.stream.name, self.index))


class _Fleet:
    def __init__(self, cluster: Cluster, settings: PlannerSettings) -> None:
        self.settings = settings
        self.gpus: list[_Gpu] = []
        self.frames: dict[Hashable, int] = {}
        pools: dict[tuple[str, str], int] = {}
        pool_sizes: list[int] = []
        for node in sorted(cluster.nodes, key=lambda n: n.name):
            for gpu in sorted(node.gpus, key=lambda g: g.index):
                pkey = (gpu.product, str(gpu.sharing_mode))
                if pkey not in pools:
                    pools[pkey] = len(pools)
                    pool_sizes.append(0)
                pool = pools[pkey]
                self.gpus.append(
                    _Gpu(
                        pos=len(self.gpus),
                        node=node,
                        gpu=gpu,
                        pool=pool,
                        pool_pos=pool_sizes[pool],
                        memory_free=gpu.memory_mib - settings.memory_reserve_mib,
                        frames=self.frames,
                    )
                )
                pool_sizes[pool] += 1
        self.pool_keys = sorted(pools, key=lambda k: pools[k])
        self.pool_members: list[list[_Gpu]] = [[] for _ in pools]
        for g in self.gpus:
            self.pool_members[g.pool].append(g)
        self.trees = [_RoomIndex(n) for n in pool_sizes]
        self.unused_cursor = [0] * len(pools)
        self.largest_memory = max((g.memory_free for g in self.gpus), default=0)

    def refresh(self, g: _Gpu) -> None:
        # By what its shards use: a shard that finds no gap may get in by a re-timing.
        free = self.settings.utilization_cap - g.need if g.used else -1.0
        self.trees[g.pool].set(g.pool_pos, free, g.memory_free if g.used else -1)

    def first_unused(self, pool: int, start: int = 0) -> _Gpu | None:
        members = self.pool_members[pool]
        for i in range(start, len(members)):
            if not members[i].used:
                return members[i]
        return None


def _matches(node: Node, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())
