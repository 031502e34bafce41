"""What a stream demands of each pool of GPUs (one GPU product and sharing mode): its
timing there and the slot it reserves, the pools its hints allow, and the shard counts worth
trying. It depends on the cluster's shape, never on what is placed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from stagger.core.api import InferenceStream, SharingMode
from stagger.core.cluster import Cluster
from stagger.core.placement.fleet import _Fleet, _matches
from stagger.core.placement.model import PlannerSettings, ShardKey
from stagger.core.placement.timing import ProfileBook, Timing, stream_timing
from stagger.core.slots import SlotRequest
from stagger.core.timebase import frame_period_ticks, ms_to_ticks_ceil


@dataclass
class _Demand:
    """One stream's needs on one pool of GPUs."""

    timing: Timing
    frame_ticks: int
    body_ticks: int
    """Reserved per frame: the slot's width (:meth:`Timing.reserved_ms`)."""
    exclusive: bool
    """The planner keeps every other body off this one, exactly: its slot is all of it, and
    it joins no GPU whose bodies outrun their slots. So for a body without a cost and for a
    stream that declares ``exclusiveBody`` itself (a lock, a FIFO). A profile's exclusive
    label (a measurement: sharing gains nothing) plans as a shared body does, and a tight
    deadline (``Demands._tight``) widens the slot to the whole body, but neither keeps the
    stream off shared ones: the table keeps the bodies apart where a gap allows."""
    tight: bool
    """Its deadline cannot absorb one more body (``Demands._tight``): its slot and its
    charge are its whole body."""
    whole_ticks: int
    """How long its body holds the GPU, which the table keeps clear of the other bodies
    where it can: the body in full (whatever its profile's label), at least the reserved
    time; for a body kept exactly apart, its slot, which is all of it. On a GPU with a body
    kept apart every body takes this as its slot."""

    @property
    def apart(self) -> bool:
        """Every other body on its GPU must stay clear of this one (kept exactly apart, or a
        deadline that cannot absorb one more body): on that GPU every body takes its whole
        length as its slot (``Planner._whole_bodies``)."""
        return self.exclusive or self.tight

    def shard_request(self, key: ShardKey, count: int, *, whole: bool = False) -> SlotRequest:
        """The shard's slot: its reserved time, or with ``whole`` its whole body (on a GPU
        with a body kept apart, which needs every other body clear of its own)."""
        return SlotRequest(
            key, self.whole_ticks if whole else self.body_ticks, self.frame_ticks * count
        )

    def shard_util(self, count: int) -> float:
        return self.body_ticks / (self.frame_ticks * count)


@dataclass
class Demands:
    """Each stream's demand on the pools of ``fleet`` (read for its shape only: pools,
    their GPUs and nodes, the largest GPU memory)."""

    cluster: Cluster
    fleet: _Fleet
    book: ProfileBook
    settings: PlannerSettings
    _eligible_cache: dict[tuple[object, ...], tuple[list[int], str]] = field(
        default_factory=dict, repr=False
    )

    def of(self, stream: InferenceStream) -> tuple[dict[int, _Demand], str]:
        """Per eligible pool, the stream's timing there; or an empty dict and the reason."""
        spec = stream.spec
        pools, why = self.eligible_pools(
            tuple(sorted(spec.node_selector.items())), spec.gpu_product
        )
        if not pools:
            return {}, why
        out: dict[int, _Demand] = {}
        missing: list[str] = []
        frame = frame_period_ticks(spec.fps, self.settings.tick_hz)
        for pool in pools:
            timing = stream_timing(stream, self.fleet.pool_members[pool][0].gpu, self.book)
            if timing is None:
                product, sharing = self.fleet.pool_keys[pool]
                missing.append(f"{product} ({sharing})")
                continue
            hz, guard = self.settings.tick_hz, self.settings.guard_ms
            body = ms_to_ticks_ceil(timing.reserved_ms(self.settings) + guard, hz)
            whole = max(body, ms_to_ticks_ceil(timing.body_ms + guard, hz))
            measured = timing.cost_ms is not None and spec.exclusive_body is not True
            # A measured label must not keep two models off one GPU: only a body nothing
            # measured, or the stream's own word, is kept exactly apart; its slot is all of
            # it. Any other body's whole length is what the table keeps clear where it can,
            # a profile's exclusive label too: sharing gaining nothing is no reason to let
            # it run into the next slot (with its slot as its window, 5-7 streams of an H200
            # profile overlapped 20-60 ms/s where the shared label overlapped none).
            exclusive = timing.exclusive and not measured
            tight = measured and self._tight(stream, timing, pool)
            if tight:
                body = whole  # charged and spaced whole: it runs clear, so in full
            out[pool] = _Demand(timing, frame, body, exclusive, tight, body if exclusive else whole)
        if not out:
            return {}, (
                f"no bodyTimeMs and no ModelProfile for model {spec.model} on "
                f"{', '.join(missing)}: calibrate it or set spec.bodyTimeMs"
            )
        return out, ""

    def _tight(self, stream: InferenceStream, timing: Timing, pool: int) -> bool:
        """Whether a shared stream's frame cannot absorb one more body: on a time-sliced GPU
        an overlapped frame now and then waits for a whole other body (the mixed fleet in
        docs/benchmarks.md), so a stream whose deadline (``deadlineMs``, else its frame
        period) is less than its solo latency plus the longest body profiled on the pool
        takes its whole body as its slot, as it would on a GPU of exclusive bodies. Under
        MPS bodies run side by side and an overlapped frame waits for no whole body."""
        spec = stream.spec
        product, sharing = self.fleet.pool_keys[pool]
        if sharing == str(SharingMode.MPS):
            return False
        # Without a declared deadline a frame has its period, or the periods of the shards
        # its latency splits it into (each shard has a frame in flight of its own).
        period = 1000 / spec.fps
        deadline = (
            spec.deadline_ms
            if spec.deadline_ms is not None
            else period * max(1, math.ceil(timing.latency_ms / period - 1e-9))
        )
        longest = max(timing.body_ms, self.book.longest_body_ms(product, sharing))
        return deadline - timing.latency_ms < longest

    def eligible_pools(
        self, selector: tuple[tuple[str, str], ...], product: str | None
    ) -> tuple[list[int], str]:
        """Pools with a GPU on a node that matches the hints (cached: streams share hints)."""
        key = (selector, product)
        if key not in self._eligible_cache:
            self._eligible_cache[key] = self._find_pools(dict(selector), product)
        return self._eligible_cache[key]

    def _find_pools(self, selector: dict[str, str], product: str | None) -> tuple[list[int], str]:
        if not self.fleet.gpus:
            return [], "the cluster has no GPUs"
        pools = {g.pool for g in self.fleet.gpus if _matches(g.node, selector)}
        if not pools:
            sel = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
            return [], (
                f"nodeSelector {{{sel}}} matches none of the "
                f"{len(self.cluster.nodes)} nodes with GPUs"
            )
        products = sorted({self.fleet.pool_keys[p][0] for p in pools})
        if product is not None:
            pools = {p for p in pools if self.fleet.pool_keys[p][0] == product}
            if not pools:
                return [], (
                    f"gpuProduct {product} is on no matching node "
                    f"(products there: {', '.join(products)})"
                )
        return sorted(pools), ""

    def shard_counts(
        self, stream: InferenceStream, demands: Mapping[int, _Demand]
    ) -> tuple[list[int], str]:
        """Shard counts to try, best first; or [] and why none can work."""
        fps = stream.spec.fps
        cap = self.settings.utilization_cap
        deadline = stream.spec.deadline_ms
        best: int | None = None
        load_split = False
        why = ""
        for d in demands.values():
            if deadline is not None and d.timing.latency_ms > deadline:
                why = (
                    f"solo latency {d.timing.latency_ms:g} ms ({d.timing.source}) exceeds "
                    f"deadlineMs {deadline:g}"
                )
                continue
            k_latency = math.ceil(d.timing.latency_ms * fps / 1000 - 1e-9)
            k_load = math.ceil(d.body_ticks / (cap * d.frame_ticks) - 1e-9)
            k = max(1, k_latency, k_load)
            if best is None or k < best:
                best, load_split = k, k_load >= 2
        if best is None:
            return [], why
        # Fewest shards first; more only when the fewest cannot be placed. A stream that
        # must split for load anyway may take more shards up front when they pack a GPU
        # clearly better (shards near a whole GPU strand the rest of it).
        ranked = list(range(best, best + self.settings.max_extra_shards + 1))
        load = max(d.body_ticks / d.frame_ticks for d in demands.values())
        mem = stream.spec.memory_mib
        gpu_mem = self.fleet.largest_memory

        def efficiency(k: int) -> float:
            # Share of a GPU's cap that k equal shards of this stream fill when GPUs hold
            # only such shards.
            size = load / k
            per_gpu = math.floor(cap / size + 1e-9)
            if mem:
                per_gpu = min(per_gpu, gpu_mem // mem)
            return per_gpu * size / cap if per_gpu else 0.0

        chosen = best
        if load_split:
            for k in ranked[1:]:
                if efficiency(k) >= efficiency(chosen) + 0.05:
                    chosen = k
        # A split stream's shards share GPUs with other streams' shards only where their
        # periods have a large common divisor (two bodies fit a gcd, not a period): take the
        # fewest shards whose period is a multiple of the shard grid, within the extra
        # shards allowed. The shards of heavy fleets then pack like plain bin packing.
        grid = ms_to_ticks_ceil(self.settings.shard_grid_ms, self.settings.tick_hz)
        frame = next(iter(demands.values())).frame_ticks
        if best >= 2 and grid:
            on_grid = next((k for k in ranked if k * frame % grid == 0), None)
            if on_grid is not None:
                chosen = on_grid
        if chosen in ranked:
            ranked.remove(chosen)
        ranked.insert(0, chosen)
        return ranked, ""
