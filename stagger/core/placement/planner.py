"""The placement solver: which GPU each stream (or each of its shards) runs on.

A GPU holds shards while their reserved body time fits under the utilisation cap
(sum of body / slot period <= cap), their memory fits, and the slot solver finds offsets at
which no two bodies overlap. A shard takes every k-th frame of its stream, so its frame
period is k / fps. A stream is split into k shards when one GPU cannot carry its body load
or its solo latency is longer than its frame period (the frame would still be running when
the next one arrives, which the study counts as a drop).

Order and ties are explicit, so the same inputs always give the same plan. Placement is
incremental: given a previous plan, shards stay on their GPU and keep their offsets unless
that GPU no longer holds them (then the lowest-priority shards give way first), and new
shards are inserted into gaps without moving anyone.

Policies: ``binpack`` (first fit: used GPUs first, in node/index order, then the first
unused one; minimises GPUs) and ``spread`` (most free capacity first; spreads risk).
"""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import cast

from stagger.core.api import InferenceStream, ModelProfile, SharingMode
from stagger.core.cluster import Cluster
from stagger.core.placement.demand import Demands, _Demand
from stagger.core.placement.fleet import _Fleet, _Gpu, _matches, _Shard
from stagger.core.placement.model import (
    ROUNDING,
    CalibrationSite,
    GhostKey,
    GpuUsage,
    Move,
    Plan,
    PlannerSettings,
    RunningCalibration,
    ShardKey,
    ShardPlacement,
    Unplaced,
)
from stagger.core.placement.overlap import body_ticks, model_time_share, overlap_ms_per_second
from stagger.core.placement.timing import ProfileBook, stream_timing
from stagger.core.slots import Slot, SlotRequest, insert, max_body, pack, spread
from stagger.core.slots import solve as solve_slots
from stagger.core.timebase import TICK_HZ, ticks_to_ms


class Planner:
    """Places streams on a cluster; one instance per planning run."""

    def __init__(
        self,
        cluster: Cluster,
        profiles: Iterable[ModelProfile] = (),
        settings: PlannerSettings | None = None,
        calibrating: Iterable[RunningCalibration] = (),
    ) -> None:
        self.settings = settings or PlannerSettings()
        self._calibrating: dict[tuple[str, int], set[str]] = {}
        """Models whose calibration Job runs on each GPU (node, index)."""
        for run in calibrating:
            self._calibrating.setdefault((run.node, run.gpu), set()).add(run.model)
        self.cluster = cluster
        self.profiles = tuple(profiles)
        self.book = ProfileBook(self.profiles)
        self.fleet = _Fleet(cluster, self.settings)
        self.demand = Demands(cluster, self.fleet, self.book, self.settings)
        self._lowered: list[_Gpu] = []
        self._pinned: frozenset[ShardKey] = frozenset()
        self._retiring: tuple[ShardPlacement, ...] = ()
        self._undo: list[tuple[_Gpu, list[Slot], bool]] | None = None
        self._was: dict[int, list[Slot]] = {}  # running tables re-timed, as they were
        self._unsettled: set[int] = set()  # GPUs whose table this change decides
        self.retimed: list[ShardKey] = []
        """Shards whose slot a re-timing changed since the last :meth:`plan` (by
        :meth:`add`, or by that plan)."""
        self._reset()

    def _reset(self) -> None:
        """Forget placed shards (a full plan starts from an empty fleet)."""
        if getattr(self, "_gpu_of", None):
            self.fleet = _Fleet(self.cluster, self.settings)
        self._frame_of = self.fleet.frames
        self._frame_of.clear()
        self._shard_meta: dict[ShardKey, tuple[_Shard, _Demand]] = {}
        self._any_outruns = False  # a body outruns its slot: see _whole_bodies, _on_running
        self._gpu_of: dict[ShardKey, _Gpu] = {}
        self._placed_streams: dict[tuple[str, str], list[ShardKey]] = {}
        self._lowered.clear()
        self._lowered_period = 0
        self.retimed = []
        self._was = {}
        self._unsettled = set()
        self._short: set[tuple[str, str]] = set()  # streams that found no room
        self._ghosts: dict[int, list[tuple[Slot, int]]] = {}  # retiring copies by GPU
        self._held: frozenset[Hashable] = frozenset(self._pinned)  # slots nothing may move
        self.unreserved: list[ShardKey] = []
        """Retiring copies whose slot their GPU's table could not hold: their transition
        overlaps until they are gone."""

    # -- demand -------------------------------------------------------------

    def demands(self, stream: InferenceStream) -> tuple[dict[int, _Demand], str]:
        """Per eligible pool, the stream's timing there; or an empty dict and the reason."""
        out, why = self.demand.of(stream)
        # a body outruns its slot (a shared window, or an exclusive label's whole body)
        self._any_outruns = self._any_outruns or any(
            d.whole_ticks > d.body_ticks for d in out.values()
        )
        return out, why

    def calibration_sites(self, stream: InferenceStream) -> tuple[CalibrationSite, ...]:
        """For a stream with no body time anywhere: per eligible pool, the GPU a calibration
        should measure it on. An idle GPU if there is one (a calibration next to running
        streams would disturb them and measure them too), else the least used; ties go to
        fleet order."""
        spec = stream.spec
        if spec.body_time_ms is not None:
            return ()
        pools, _ = self.demand.eligible_pools(
            tuple(sorted(spec.node_selector.items())), spec.gpu_product
        )
        sites = []
        for pool in pools:
            members = [
                g for g in self.fleet.pool_members[pool] if _matches(g.node, spec.node_selector)
            ] or self.fleet.pool_members[pool]
            # where its Job runs, it stays (a new site would start it again); elsewhere, a
            # GPU no other calibration measures (two would each measure half the GPU)
            first = min(
                members,
                key=lambda g: (
                    spec.model not in self._calibrating_on(g),
                    bool(self._calibrating_on(g)),
                    g.util,
                    g.pos,
                ),
            )
            if stream_timing(stream, first.gpu, self.book) is None:
                sites.append(
                    CalibrationSite(
                        first.node.name,
                        first.gpu.index,
                        first.gpu.uuid,
                        first.gpu.product,
                        str(first.gpu.sharing_mode),
                        first.memory_free,
                        len(first.slots),
                    )
                )
        return tuple(sites)

    # -- placing one shard ----------------------------------------------------

    def _admits(
        self, g: _Gpu, request: SlotRequest, d: _Demand, memory: int, *, retime: bool = True
    ) -> bool:
        """Memory and body budget allow the shard here (into a gap: what the table
        reserves; by re-timing: what its shards use, as rounded periods may be undone), and
        no smaller body of its period found no slot here since the table last changed. A
        body kept apart (``_Demand.apart``) joins shared ones whose bodies outrun their
        slots only where all of them fit whole: they are widened, by a re-timing
        (:meth:`_widens`); a shared stream joins a GPU of such bodies with its whole body
        as its slot (:meth:`_whole_bodies`)."""
        if (
            g.memory_free < memory
            or self._servers_past(g, len(g.slots) + 1)
            or self._calibrating_on(g)
        ):
            return False
        if self._widens(g, d):
            if not self._widenable(g):
                return False
            used = self._whole_need(g)
        else:
            used = g.need if retime else g.util
        budget = self.settings.utilization_cap - used
        if request.body / request.frame_period > budget + 1e-12:
            return False
        if request.body >= g.blocked.get(request.frame_period, request.body + 1):
            self._lower(g, request)
            return False
        return True

    def _calibrating_on(self, g: _Gpu) -> set[str]:
        """Models a calibration Job measures on ``g`` now (:class:`RunningCalibration`)."""
        return self._calibrating.get((g.node.name, g.gpu.index), set())

    def _servers_past(self, g: _Gpu, servers: int) -> bool:
        """``servers`` shards (a model server each) are more than ``g`` takes: an MPS GPU
        takes ``mps_servers_per_gpu``."""
        limit = self.settings.mps_servers_per_gpu
        return bool(limit) and g.gpu.sharing_mode is SharingMode.MPS and servers > limit

    def _whole_bodies(self, g: _Gpu) -> bool:
        """Whether a shard joining ``g`` takes its whole body as its slot: ``g`` runs a body
        every other must stay clear of (``_Demand.apart``)."""
        return self._any_outruns and any(
            self._shard_meta[x.key][1].apart for x in g.slots if x.key in self._shard_meta
        )

    def _widens(self, g: _Gpu, d: _Demand) -> bool:
        """Whether a shard of ``d`` joins ``g`` only with every body there widened to its
        whole length: it is kept apart and bodies on ``g`` outrun their slots."""
        return d.apart and any(self._whole_of(x) > x.body for x in g.slots)

    def _whole_of(self, x: Slot) -> int:
        """The whole body of the shard in slot ``x`` (``_Demand.whole_ticks``; an old
        copy's slot as it is)."""
        meta = self._shard_meta.get(cast(ShardKey, x.key))
        return max(x.body, meta[1].whole_ticks) if meta else x.body

    def _whole_need(self, g: _Gpu) -> float:
        """Body time per second the shards on ``g`` would use with their whole bodies."""
        return sum(self._whole_of(x) / self._frame_of.get(x.key, x.period) for x in g.slots)

    def _widenable(self, g: _Gpu) -> bool:
        """No slot that its body outruns is pinned (a pinned slot keeps its width)."""
        return all(x.key not in self._held or self._whole_of(x) == x.body for x in g.slots)

    def _overhang(self, g: _Gpu) -> int:
        """How far the longest body on ``g`` runs past its reserved slot (shared streams)."""
        return max(
            (
                self._shard_meta[x.key][1].whole_ticks - x.body
                for x in g.slots
                if x.key in self._shard_meta
            ),
            default=0,
        )

    def _window_gap(
        self, g: _Gpu, request: SlotRequest, window: int, rounding: float | None
    ) -> Slot | None:
        """A gap where the shard's whole body misses every other body on ``g``, not only
        their reserved slots: a probe as wide as its body plus the longest overhang of the
        others, its slot at the probe's end (so the body before it ends before this one
        starts, and this body ends before the next slot)."""
        overhang = self._overhang(g)
        probe = SlotRequest(request.key, window + overhang, request.frame_period)
        how = "centre" if g.kept else "lane"
        found = insert(g.slots, probe, max_utilization=1.0, how=how, rounding=rounding)
        if found is None:
            return None
        budget = self.settings.utilization_cap - g.util
        if request.body / found.period > budget + 1e-12:
            return None
        return Slot(
            request.key, request.body, found.period, (found.offset + overhang) % found.period
        )

    def _try_gpu(
        self,
        g: _Gpu,
        request: SlotRequest,
        *,
        retime: bool,
        rounding: float | None = None,
        window: int | None = None,
        gap: bool = True,
        widen: bool = False,
    ) -> Slot | None:
        """A slot on ``g`` (admitted by :meth:`_admits`): into a gap (with ``window``, only
        one its whole body fits, see :meth:`_window_gap`), else, when ``retime`` or nothing
        runs on ``g`` yet, by re-packing its table around its pinned shards; with ``gap``
        False, the re-packing only. With ``widen`` (:meth:`_widens`) every shard on ``g``
        is re-packed with its whole body as its slot, never into a gap. ``rounding`` bounds
        how far slot periods may be rounded down (see ``insert``)."""
        budget = self.settings.utilization_cap - g.util
        how = "centre" if g.kept else "lane"
        if not gap or widen:
            slot = None
        elif window is not None:
            slot = self._window_gap(g, request, window, rounding)
        else:
            slot = insert(g.slots, request, max_utilization=budget, how=how, rounding=rounding)
        if slot is not None or (g.kept and not retime):
            return slot
        reqs = [
            SlotRequest(x.key, self._whole_of(x) if widen else x.body, self._frame_of[x.key])
            for x in g.slots
        ] + [request]
        fixed = [x for x in g.slots if x.key in self._held]
        cap = self.settings.utilization_cap
        table = pack(reqs, max_utilization=cap, fixed=fixed, rounding=rounding)
        if table is None:
            if rounding is None:  # the most this GPU can do: remember it
                g.blocked[request.frame_period] = request.body
                self._lower(g, request)
            return None
        if self._undo is not None:
            self._undo.append((g, list(g.slots), g.kept))
        by_key = {x.key: x for x in table}
        g.set_slots([by_key[x.key] for x in g.slots])
        g.kept = False  # its offsets are decided again: spread when the plan is done
        return by_key[request.key]

    def _lower(self, g: _Gpu, request: SlotRequest) -> None:
        """Hide ``g`` from first-fit queries for shards of this frame period at least as
        large as ``request``, which found no slot on it. Shards arrive sorted by period,
        then largest first, so this stays true until the period changes (then
        :meth:`_place_shard` shows every GPU again) or ``g`` does."""
        if self._lowered_period != request.frame_period:
            self._restore_lowered()
            self._lowered_period = request.frame_period
        # Shards with a body of at least ``limit`` cannot fit: the failed one, or anything
        # beyond what the gcd and budget rules leave (so period-incompatible leftovers drop
        # out of the search after one probe instead of one per shard).
        budget = self.settings.utilization_cap - g.util
        limit = min(request.body, max_body(g.slots, request.frame_period, budget) + 1)
        free = min(budget, (limit - 0.5) / request.frame_period)
        self.fleet.trees[g.pool].set(g.pool_pos, free, g.memory_free)
        self._lowered.append(g)

    def _restore_lowered(self) -> None:
        for g in self._lowered:
            self.fleet.refresh(g)
        self._lowered.clear()

    def _candidates(self, demands: Mapping[int, _Demand], shard: _Shard) -> Iterable[_Gpu]:
        """GPUs to try for one shard, in policy order (lazily)."""
        fleet = self.fleet
        spec = shard.stream.spec
        selector = spec.node_selector
        pools = sorted(demands)
        if self.settings.policy == "spread":
            gpus = [g for p in pools for g in fleet.pool_members[p] if _matches(g.node, selector)]
            gpus.sort(key=lambda g: (g.util, -g.memory_free, g.pos))
            yield from gpus
            return
        # binpack: used GPUs that may fit, leftmost first across pools, then unused ones.
        mem = spec.memory_mib
        starts = dict.fromkeys(pools, 0)
        heads: dict[int, int | None] = {}
        for p in pools:
            need = demands[p].shard_util(shard.count)
            heads[p] = fleet.trees[p].first(0, need - 1e-12, mem)
        while True:
            live = [(fleet.pool_members[p][i].pos, p) for p, i in heads.items() if i is not None]
            if not live:
                break
            _, p = min(live)
            i = heads[p]
            assert i is not None
            g = fleet.pool_members[p][i]
            if _matches(g.node, selector):
                yield g
            starts[p] = i + 1
            need = demands[p].shard_util(shard.count)
            heads[p] = fleet.trees[p].first(starts[p], need - 1e-12, mem)
        unused = []
        for p in pools:
            start = fleet.unused_cursor[p]
            while True:
                g2 = fleet.first_unused(p, start)
                if g2 is None:
                    break
                if _matches(g2.node, selector) and not self._calibrating_on(g2):
                    unused.append(g2)
                    break
                start = g2.pool_pos + 1
        yield from sorted(unused, key=lambda g: g.pos)

    def _place_shard(self, shard: _Shard, demands: Mapping[int, _Demand]) -> bool:
        """First fit, in passes that keep the reserved body time close to what is used.
        Running GPUs first: into a gap, else by re-timing, each first where the shard's
        period is harmonic with the GPU's (a multiple or divisor of the gcd of its periods,
        so rate families do not mix) and at (nearly) its own period; then a GPU nothing
        runs on; only then slot periods rounded further down, which reserve more."""
        spec = shard.stream.spec
        frame = next(iter(demands.values())).frame_ticks * shard.count
        if frame != self._lowered_period:  # GPUs hidden for another period are not for this
            self._restore_lowered()
            self._lowered_period = frame
        running: list[tuple[_Gpu, SlotRequest]] = []  # room by budget: in first-fit order
        opened = False  # a GPU nothing runs on was reached
        for g in self._candidates(demands, shard):
            d = demands[g.pool]
            if (
                d.timing.latency_ms
                > d.frame_ticks * shard.count * 1000 / self.settings.tick_hz + 1e-9
            ):
                continue  # this GPU is too slow for the shard's frame period
            if not g.used and not opened:
                opened = True
                if self._on_running(shard, demands, running, ROUNDING):
                    return True
            request = d.shard_request(shard.key, shard.count, whole=self._whole_bodies(g))
            if not self._admits(g, request, d, spec.memory_mib):
                continue
            if g.kept:
                running.append((g, request))
                continue
            # decided in this plan: re-pack
            slot = self._try_gpu(g, request, retime=True, widen=self._widens(g, d))
            if slot is not None:
                self._commit(g, shard, d, slot)
                return True
        if not opened and self._on_running(shard, demands, running, ROUNDING):
            return True
        return self._on_running(shard, demands, running, None)

    def _on_running(
        self,
        shard: _Shard,
        demands: Mapping[int, _Demand],
        running: list[tuple[_Gpu, SlotRequest]],
        rounding: float | None,
    ) -> bool:
        """Place the shard on a running GPU: into a gap before any re-timing (a gap changes
        nobody's slot), harmonic GPUs first each time (when ``rounding`` is set); the first
        GPU in order that takes it. Where bodies are longer than their slots (shared
        streams), a gap the whole body fits comes first, then a re-timing (the table is
        packed and spread evenly again), and only then a gap for the reserved slot alone:
        bodies overlap only where even spacing cannot keep them apart."""

        def harmonic(g: _Gpu, request: SlotRequest) -> bool:
            cycle = math.gcd(*(x.period for x in g.slots))
            return request.frame_period % cycle == 0 or cycle % request.frame_period == 0

        groups = (
            [[x for x in running if harmonic(*x)], [x for x in running if not harmonic(*x)]]
            if rounding is not None
            else [running]
        )
        shared = self._any_outruns and any(
            demands[g.pool].whole_ticks > r.body or self._overhang(g) for g, r in running
        )
        # (re-time, a gap the whole body fits, a gap at all): where bodies outrun their slots,
        # a gap clear of every body, then a re-timing, then a gap for the slot alone
        passes = (
            [(False, True, True), (True, False, False), (False, False, True)]
            if shared
            else [(False, False, True), (True, False, True)]
        )
        for retime, whole, gap in passes:
            for group in groups:
                for g, request in group:
                    d = demands[g.pool]
                    if not self._admits(g, request, d, shard.stream.spec.memory_mib, retime=retime):
                        continue
                    slot = self._try_gpu(
                        g,
                        request,
                        retime=retime,
                        rounding=rounding,
                        window=demands[g.pool].whole_ticks if whole else None,
                        gap=gap,
                        widen=self._widens(g, d),
                    )
                    if slot is not None:
                        self._commit(g, shard, demands[g.pool], slot)
                        return True
        return False

    def _commit(self, g: _Gpu, shard: _Shard, d: _Demand, slot: Slot) -> None:
        spec = shard.stream.spec
        self._frame_of[shard.key] = d.frame_ticks * shard.count
        if any(x.key == slot.key for x in g.slots):  # the GPU was re-packed around it
            g.set_slots([*(x for x in g.slots if x.key != slot.key), slot])
        else:
            g.slots.append(slot)
            g.util += slot.body / slot.period
            g.need += slot.body / self._frame_of[shard.key]
            g.blocked.clear()
        g.memory_free -= spec.memory_mib
        if not g.kept:
            self._unsettled.add(g.pos)
        self._shard_meta[shard.key] = (shard, d)
        self._gpu_of[shard.key] = g
        self.fleet.refresh(g)
        if not g.kept:
            self._advance_unused(g.pool)

    def _advance_unused(self, pool: int) -> None:
        members = self.fleet.pool_members[pool]
        c = self.fleet.unused_cursor[pool]
        while c < len(members) and members[c].used:
            c += 1
        self.fleet.unused_cursor[pool] = c

    def _remove(self, key: ShardKey) -> None:
        g = self._gpu_of.pop(key)
        g.set_slots([x for x in g.slots if x.key != key])
        g.memory_free += self._shard_meta.pop(key)[0].stream.spec.memory_mib
        self._frame_of.pop(key)
        self.fleet.refresh(g)
        if not g.used:
            g.kept = False
            self.fleet.unused_cursor[g.pool] = min(self.fleet.unused_cursor[g.pool], g.pool_pos)

    def _unplaceable_reason(
        self, stream: InferenceStream, demands: Mapping[int, _Demand], k: int
    ) -> str:
        spec = stream.spec
        cap = self.settings.utilization_cap
        eligible = [
            g
            for p in demands
            for g in self.fleet.pool_members[p]
            if _matches(g.node, spec.node_selector)
        ]
        d = demands[min(demands, key=lambda p: demands[p].body_ticks)]
        charged = ticks_to_ms(d.body_ticks, self.settings.tick_hz)
        need = charged * spec.fps / 1000
        per_shard = d.shard_util(k)

        def share(g: _Gpu) -> float:  # where bodies are kept apart it takes its whole body
            whole = self._whole_bodies(g) and d.whole_ticks > d.body_ticks
            return (d.whole_ticks if whole else d.body_ticks) / (d.frame_ticks * k)

        def free(g: _Gpu) -> float:  # a body kept apart widens the bodies it joins
            return cap - (self._whole_need(g) if self._widens(g, d) else g.util)

        kept_whole = [g for g in eligible if share(g) > per_shard]
        widened = [g for g in eligible if self._widens(g, d)]
        largest_free = max((free(g) for g in eligible), default=0.0)
        largest_mem = max((g.memory_free for g in eligible), default=0)
        if spec.memory_mib > max(
            (g.gpu.memory_mib - self.settings.memory_reserve_mib for g in eligible), default=0
        ):
            return (
                f"needs {spec.memory_mib} MiB of GPU memory per shard; the largest matching "
                f"GPU has {max(g.gpu.memory_mib for g in eligible)} MiB"
            )
        body = f"{d.timing.body_ms:g} ms body x {spec.fps:g} fps" + (
            ", charged whole: its deadline cannot absorb one more body"
            if d.tight
            else f", charged {charged:.3g} ms for its {d.timing.cost_ms:g} ms cost as deployed"
            if d.timing.cost_ms is not None
            else ""
        )
        if widened:
            body += (
                f"; kept apart, it joins {len(widened)} matching GPU(s) only with the bodies "
                "there widened to their whole length"
            )
        elif kept_whole:
            whole_ms = ticks_to_ms(d.whole_ticks, self.settings.tick_hz)
            body += (
                f"; on {len(kept_whole)} matching GPU(s) every body is kept whole (a tight "
                f"deadline or an exclusive body there): there it takes its whole {whole_ms:.3g} "
                f"ms, {max(share(g) for g in kept_whole):.2f} of the GPU"
            )
        least = min((share(g) for g in eligible), default=per_shard)  # the least it needs
        if k == 1:
            head = f"needs {need:.2f} GPU-seconds of body per second ({body})"
            where = f"one GPU with >= {least:.2f} free"
        else:
            head = (
                f"needs {need:.2f} GPU-seconds of body per second ({body}); split over {k} shards"
            )
            where = f"{k} GPUs with >= {least:.2f} free each"
        full = sum(self._servers_past(g, len(g.slots) + 1) for g in eligible)
        measured = sum(bool(self._calibrating_on(g)) for g in eligible)
        fits = sum(
            1
            for g in eligible
            if free(g) >= share(g) - 1e-9
            and g.memory_free >= spec.memory_mib
            and not self._servers_past(g, len(g.slots) + 1)
            and not self._calibrating_on(g)
        )
        if fits >= k:
            pinned = any(
                x.key in self._pinned
                for g in eligible
                if free(g) >= share(g) - 1e-9
                for x in g.slots
            )
            return (
                f"{head}, {fits} of the {len(eligible)} matching GPUs have that much free "
                f"but no slot where a {charged:.3g} ms slot misses "
                "every other slot"
                + (
                    " without re-timing shards that were re-timed too recently or whose "
                    "re-timing is still to come (pinned); "
                    "it is tried again when they may move"
                    if pinned
                    else ""
                )
            )
        taken = ""  # matching GPUs that take no new stream whatever their room, and why
        if full:
            taken += (
                f"; the {self.settings.mps_servers_per_gpu} model servers an MPS GPU takes "
                f"(mpsServersPerGpu) already run on {full} of them"
            )
        if measured:
            taken += (
                f"; {measured} of them run a calibration Job, which no stream joins while it "
                "measures (it is tried again when the Job ends)"
            )
        return (
            f"{head}: it needs {where}; {fits} matching GPU(s) have it "
            f"(largest free {max(largest_free, 0):.2f}, largest free memory {largest_mem} MiB)"
            + taken
        )

    # -- the plan -------------------------------------------------------------

    def plan(
        self,
        streams: Sequence[InferenceStream],
        previous: Plan | None = None,
        pinned: Iterable[ShardKey] = (),
        retiring: Iterable[ShardPlacement] = (),
    ) -> Plan:
        """Place ``streams``; with ``previous``, keep what still holds and report moves and
        re-timings. ``pinned`` shards keep their slot when their GPU is re-timed (they were
        re-timed too recently: the operator bounds how often one stream is). ``retiring``
        are old copies of moved shards that still run where they were (make-before-break):
        their slots and memory stay reserved there while their GPU's table holds them."""
        # Planning allocates many small acyclic objects: the cyclic collector would rescan
        # the whole fleet again and again (superlinear at 100k streams), and finds nothing.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._pinned = frozenset(pinned)
            self._retiring = tuple(retiring)
            result = self._plan(streams, previous)
            if previous is not None and self._repairable(streams, previous, result):
                result = self._repair(streams, previous, result) or result
            if previous is None:
                result = self._settled(streams, result)
            return result
        finally:
            if collecting:
                gc.enable()

    def _settled(self, streams: Sequence[InferenceStream], result: Plan) -> Plan:
        """A plan from scratch re-planned on itself until that places nothing more. Placing
        the whole fleet decides each table as it goes, where a re-plan keeps the tables and
        tries a refused stream on them with rounded periods and a re-timing: it can find
        room the first pass did not (a 26 ms body at 15 fps in six shards, found by
        hypothesis). Without this the next re-plan of the same streams re-timed 15 shards
        to admit it: a plan is a fixed point of re-planning, so an operator's periodic
        re-plan changes nothing."""
        while self._short:  # streams that found no room (not those with no body time)
            short = len(self._short)
            result = replace(self._plan(streams, result), moves=(), offsets_changed=())
            if len(self._short) >= short:
                break
        return result

    def _plan(
        self,
        streams: Sequence[InferenceStream],
        previous: Plan | None,
        running: Plan | None = None,
        retiring: Sequence[ShardPlacement] | None = None,
    ) -> Plan:
        """Place ``streams`` keeping ``previous``; moves and re-timings are reported against
        ``running`` (default: ``previous``); ``retiring`` (default: as given to
        :meth:`plan`) old copies reserve their slots."""
        self._reset()
        self._reserve(self._retiring if retiring is None else retiring)
        keys = [(s.namespace, s.name) for s in streams]
        if len(set(keys)) != len(keys):
            dupes = sorted({f"{ns}/{n}" for ns, n in keys if keys.count((ns, n)) > 1})
            raise ValueError(f"streams appear more than once: {', '.join(dupes)}")
        unplaced: list[Unplaced] = []
        ready: list[tuple[InferenceStream, dict[int, _Demand], list[int]]] = []
        uncalibrated: list[tuple[int, InferenceStream]] = []
        for stream in streams:
            demands, why = self.demands(stream)
            if not demands:
                uncalibrated.append((len(unplaced), stream))
                unplaced.append(Unplaced(stream.namespace, stream.name, why))
                continue
            counts, why = self.demand.shard_counts(stream, demands)
            if not counts:
                unplaced.append(Unplaced(stream.namespace, stream.name, why))
                continue
            ready.append((stream, demands, counts))

        todo = self._keep_previous(ready, previous) if previous or self._ghosts else ready
        todo.sort(key=self._order)
        for stream, demands, counts in todo:
            if self._place_stream(stream, demands, counts) is None:
                reason = self._unplaceable_reason(stream, demands, counts[0])
                unplaced.append(Unplaced(stream.namespace, stream.name, reason))
                self._short.add((stream.namespace, stream.name))
        # Where to calibrate is chosen once the placed streams are on their GPUs.
        for i, stream in uncalibrated:
            unplaced[i] = replace(unplaced[i], calibrate_on=self.calibration_sites(stream))
        return self._result(unplaced, running or previous)

    # -- repair: moves that a plan from scratch shows are worth it ------------------------

    def _repairable(self, streams: Sequence[InferenceStream], previous: Plan, result: Plan) -> bool:
        """Worth comparing with a plan from scratch: a stream found no room (capacity, not
        a missing profile or matching node), a GPU was taken into use, or streams left
        (their GPUs may be merged)."""
        if not self.settings.max_repair_moves:
            return False
        present = {(s.namespace, s.name) for s in streams}
        used = {(g.node, g.gpu) for g in result.gpus}
        return (
            bool(self._short)
            or bool(used - {(p.node, p.gpu) for p in previous.shards})
            or any((p.namespace, p.stream) not in present for p in previous.shards)
        )

    def _repair(
        self, streams: Sequence[InferenceStream], previous: Plan, result: Plan
    ) -> Plan | None:
        """Move running shards toward the plan from scratch when it places every stream
        ``result`` places and more, or uses at least two GPUs fewer; laid onto the GPUs so
        that the most running shards stay where they run, within ``max_repair_moves``
        moves, changing no pinned shard. A moved shard's old copy keeps its slot and memory
        where it runs until the new copy takes over, so a move into a GPU that others are
        still leaving waits: this plan makes the moves that can start now, and later plans
        (as old copies go) the rest, toward the same layout. None: keep ``result`` (the
        planner then holds it)."""
        fresh = Planner(self.cluster, self.profiles, self.settings).plan(streams)
        placed = {(p.namespace, p.stream) for p in result.shards}
        better = {(p.namespace, p.stream) for p in fresh.shards}
        if not placed <= better:
            return None  # it would take a running stream's place: first come, first served
        if len(better) == len(placed) and len(fresh.gpus) > len(result.gpus) - 2:
            return None
        return self._toward(fresh, streams, previous, result) or self._drain(
            streams, previous, result
        )

    def _toward(
        self, fresh: Plan, streams: Sequence[InferenceStream], previous: Plan, result: Plan
    ) -> Plan | None:
        """The moves toward ``fresh`` (laid onto the GPUs) that can start now."""
        placed = {(p.namespace, p.stream) for p in result.shards}
        laid = self._lay_onto(fresh, previous)
        was = {p.key: p for p in previous.shards}
        target = {p.key: p for p in laid.shards}
        if sum(1 for k, p in target.items() if k in was and _gpu(p) != _gpu(was[k])) > (
            self.settings.max_repair_moves
        ):
            return None
        if any(
            k in self._pinned
            and (_gpu(p), p.offset_ticks, p.period_ticks)
            != (_gpu(was[k]), was[k].offset_ticks, was[k].period_ticks)
            for k, p in target.items()
            if k in was
        ):
            return None
        staged = dict(target)
        for _ in range(8):
            moving = [was[k] for k, p in staged.items() if k in was and _gpu(p) != _gpu(was[k])]
            if not moving:
                break
            attempt = self._plan(
                streams,
                replace(laid, shards=tuple(staged.values())),
                running=previous,
                retiring=[*self._retiring, *moving],
            )
            stuck = {_gpu(was[k]) for k in self.unreserved if k in was}
            now_placed = {(p.namespace, p.stream) for p in attempt.shards}
            if (
                not stuck
                and {(m.namespace, m.stream, m.shard) for m in attempt.moves}
                == {p.key for p in moving}
                and placed <= now_placed
                and len(attempt.gpus) <= len(result.gpus)  # a step never takes a GPU more
            ):
                return attempt
            # Shards headed for a GPU that cannot hold them beside the old copies still
            # leaving it wait: they stay where they run (new ones stay unplaced).
            gave_way = [
                staged[k]
                for k in {(m.namespace, m.stream, m.shard) for m in attempt.moves}
                - {p.key for p in moving}
                if k in staged
            ]
            holdup = stuck | {_gpu(p) for p in gave_way}
            changed = False
            for k, p in list(staged.items()):
                if _gpu(p) in holdup and (k not in was or _gpu(was[k]) != _gpu(p)):
                    if k in was:
                        staged[k] = was[k]
                    else:
                        del staged[k]
                    changed = True
            if not changed:
                break
        self._plan(streams, previous)  # the planner holds ``result`` again
        return None

    def _drain(
        self, streams: Sequence[InferenceStream], previous: Plan, result: Plan
    ) -> Plan | None:
        """Free the least used GPU that the others can take all shards of (into gaps or by
        re-timing them): moves out of one GPU and into none that is left, so each old copy
        keeps its slot where it runs. A stream that found no room may take the GPU freed.
        One GPU per plan (of the ``DRAIN_TRIES`` least used); later plans free more."""
        placed = {(p.namespace, p.stream) for p in result.shards}
        emptiest = sorted(result.gpus, key=lambda g: (g.utilization, g.shards, g.node, g.gpu))
        for g in emptiest[:DRAIN_TRIES]:
            leaving = [p for p in previous.shards if _gpu(p) == (g.node, g.gpu)]
            if not leaving or len(leaving) > self.settings.max_repair_moves:
                continue
            if any(p.key in self._pinned for p in leaving) or len(leaving) < g.shards:
                continue  # pinned, or shards arriving there in this plan
            without = self.cluster.model_copy(
                update={
                    "nodes": [
                        n.model_copy(
                            update={"gpus": [x for x in n.gpus if (n.name, x.index) != _gpu(g)]}  # type: ignore[arg-type]
                        )
                        for n in self.cluster.nodes
                    ]
                }
            )
            stay = replace(previous, shards=tuple(p for p in previous.shards if p not in leaving))
            other = Planner(without, self.profiles, replace(self.settings, max_repair_moves=0))
            drained = other.plan(streams, stay, self._pinned, self._retiring)
            if placed <= {(p.namespace, p.stream) for p in drained.shards} and len(
                drained.gpus
            ) < len(result.gpus):
                attempt = self._plan(
                    streams, drained, running=previous, retiring=[*self._retiring, *leaving]
                )
                if {(m.namespace, m.stream, m.shard) for m in attempt.moves} == {
                    p.key for p in leaving
                } and len(attempt.gpus) < len(result.gpus):
                    return attempt
                self._plan(streams, previous)
        return None

    def _lay_onto(self, fresh: Plan, running: Plan) -> Plan:
        """``fresh`` with its GPUs' tables assigned to interchangeable GPUs (same pool, node
        labels and memory) so that the most running shards keep their GPU: greedy on the
        shards each pair has in common, ties in fleet order."""
        where = {(g.node.name, g.gpu.index): g for g in self.fleet.gpus}

        def kind(g: _Gpu) -> tuple[object, ...]:
            return (g.pool, tuple(sorted(g.node.labels.items())), g.gpu.memory_mib)

        on = {p.key: where[(p.node, p.gpu)].pos for p in running.shards if (p.node, p.gpu) in where}
        common: dict[tuple[int, int], int] = defaultdict(int)
        bins: dict[int, list[ShardPlacement]] = defaultdict(list)
        for p in fresh.shards:
            b = where[(p.node, p.gpu)].pos
            bins[b].append(p)
            if p.key in on and kind(self.fleet.gpus[on[p.key]]) == kind(self.fleet.gpus[b]):
                common[(b, on[p.key])] += 1
        target: dict[int, int] = {}
        taken: set[int] = set()
        for (b, t), _ in sorted(common.items(), key=lambda x: (-x[1], x[0])):
            if b not in target and t not in taken:
                target[b], taken = t, taken | {t}
        for b in sorted(bins):
            if b in target:
                continue
            free = [
                g.pos
                for g in self.fleet.gpus
                if g.pos not in taken and kind(g) == kind(self.fleet.gpus[b])
            ]
            t = b if b in free else free[0]  # as many GPUs of the kind as bins
            target[b], taken = t, taken | {t}
        shards: list[ShardPlacement] = []
        for b, members in bins.items():
            g = self.fleet.gpus[target[b]]
            shards.extend(
                replace(p, node=g.node.name, gpu=g.gpu.index, gpu_uuid=g.gpu.uuid) for p in members
            )
        return replace(fresh, shards=tuple(shards))

    def _order(
        self, item: tuple[InferenceStream, dict[int, _Demand], list[int]]
    ) -> tuple[object, ...]:
        # Highest priority first; then by shard period so GPUs fill with one harmonic family
        # (size first packs memory-bound fleets tighter but rounds many periods down); then
        # largest shard first (first-fit decreasing), sized by its share of a GPU's body time
        # plus its share of GPU memory, which interleaves body- and memory-heavy streams
        # better than either share alone; then by name, for determinism.
        stream, demands, counts = item
        d = min(demands.values(), key=lambda x: x.body_ticks)
        memory_share = stream.spec.memory_mib / max(1, self.fleet.largest_memory)
        return (
            -stream.spec.priority,
            d.frame_ticks * counts[0],
            -(d.shard_util(counts[0]) / self.settings.utilization_cap + memory_share),
            stream.namespace,
            stream.name,
        )

    def _reserve(self, retiring: Sequence[ShardPlacement]) -> None:
        """Note the old copies still running, by GPU: :meth:`_keep_on_gpu` reserves them."""
        where = {(g.node.name, g.gpu.index): g for g in self.fleet.gpus}
        for p in retiring:
            g = where.get((p.node, p.gpu))
            if g is not None:  # a GPU that is gone runs nothing
                key = ("retiring", *p.key)
                slot = Slot(key, p.body_ticks, p.period_ticks, p.offset_ticks)
                self._ghosts.setdefault(g.pos, []).append((slot, p.memory_mib))
        self._held = self._pinned | {slot.key for v in self._ghosts.values() for slot, _ in v}

    def _keep_previous(
        self,
        ready: list[tuple[InferenceStream, dict[int, _Demand], list[int]]],
        previous: Plan | None,
    ) -> list[tuple[InferenceStream, dict[int, _Demand], list[int]]]:
        """Put shards back where the previous plan had them, if they still hold there, and
        reserve the slots of old copies still running."""
        fleet = self.fleet
        where = {(g.node.name, g.gpu.index): g for g in fleet.gpus}
        shards = previous.shards if previous else ()
        old = {s.key: s for s in shards}
        old_count = {(s.namespace, s.stream): s.shards for s in shards}
        per_gpu: dict[int, list[tuple[_Shard, _Demand, ShardPlacement]]] = defaultdict(list)
        todo = []
        for stream, demands, ranked in ready:
            # A stream keeps its shard count while that count is still one worth trying.
            prev_count = old_count.get((stream.namespace, stream.name))
            counts = ranked
            if prev_count is not None and prev_count in ranked:
                counts = [prev_count] + [c for c in ranked if c != prev_count]
            for i in range(counts[0]):
                p = old.get((stream.namespace, stream.name, i))
                g = where.get((p.node, p.gpu)) if p and p.shards == counts[0] else None
                if p and g and g.pool in demands and _matches(g.node, stream.spec.node_selector):
                    per_gpu[g.pos].append((_Shard(stream, i, counts[0]), demands[g.pool], p))
            todo.append((stream, demands, counts))
        for pos in sorted(per_gpu.keys() | self._ghosts.keys()):
            self._keep_on_gpu(fleet.gpus[pos], per_gpu.get(pos, []))
        for pool in range(len(fleet.pool_keys)):
            self._advance_unused(pool)
        return todo

    def _keep_on_gpu(self, g: _Gpu, members: list[tuple[_Shard, _Demand, ShardPlacement]]) -> None:
        """Keep as many of a GPU's previous shards as still fit, with their offsets where
        possible; the lowest priority (then the last by name) gives way first. Old copies
        still running here keep their slots too when all the shards kept leave room for
        them; else they are not reserved (see :attr:`unreserved`): none gives way to them."""
        members = sorted(members, key=lambda m: (-m[0].stream.spec.priority, m[0].key))
        ghosts = self._ghosts.get(g.pos, [])
        if ghosts:
            table = self._table_of(g, members, ghosts)
            if table is not None:
                self._hold(g, members, ghosts, table)
                return
            self.unreserved.extend(cast(GhostKey, x.key)[1:] for x, _ in ghosts)
        while members:
            table = self._table_of(g, members, [])
            if table is not None:
                self._hold(g, members, [], table)
                return
            members.pop()

    def _table_of(
        self,
        g: _Gpu,
        members: list[tuple[_Shard, _Demand, ShardPlacement]],
        ghosts: list[tuple[Slot, int]],
    ) -> list[Slot] | None:
        """The table of ``g`` holding these shards (at their slots where possible) and these
        old copies (at theirs), or None when memory, the cap or the slots forbid."""
        memory = sum(m[0].stream.spec.memory_mib for m in members) + sum(m for _, m in ghosts)
        if memory > g.memory_free or self._servers_past(g, len(members) + len(ghosts)):
            return None
        # bodies kept apart need every other body clear of theirs (as on a GPU where a
        # shard is placed: see _whole_bodies)
        whole = any(d.apart for _, d, _ in members)
        requests = [d.shard_request(shard.key, shard.count, whole=whole) for shard, d, _ in members]
        requests += [SlotRequest(x.key, x.body, x.period) for x, _ in ghosts]
        previous: dict[Hashable, Slot] = {
            shard.key: Slot(shard.key, p.body_ticks, p.period_ticks, p.offset_ticks)
            for shard, _, p in members
        }
        previous |= {x.key: x for x, _ in ghosts}
        # While old copies run beside new ones the GPU may be booked past the cap, up to
        # all of its time: the cap is a margin, the transition short; no arrival comes then.
        cap = 1.0 if ghosts else self.settings.utilization_cap
        result = solve_slots(requests, previous, max_utilization=cap, pinned=self._held)
        return None if result is None else list(result.slots)

    def _hold(
        self,
        g: _Gpu,
        members: list[tuple[_Shard, _Demand, ShardPlacement]],
        ghosts: list[tuple[Slot, int]],
        table: list[Slot],
    ) -> None:
        for x, _ in ghosts:
            self._frame_of[x.key] = x.period
        for shard, d, _ in members:
            self._frame_of[shard.key] = d.frame_ticks * shard.count
            self._shard_meta[shard.key] = (shard, d)
            self._gpu_of[shard.key] = g
        g.set_slots(table)
        g.kept = True
        g.memory_free -= sum(m[0].stream.spec.memory_mib for m in members)
        g.memory_free -= sum(m for _, m in ghosts)
        self.fleet.refresh(g)

    def _placement(self, g: _Gpu, slot: Slot) -> ShardPlacement:
        shard, d = self._shard_meta[slot.key]  # type: ignore[index]
        spec = shard.stream.spec
        return ShardPlacement(
            namespace=shard.stream.namespace,
            stream=shard.stream.name,
            shard=shard.index,
            shards=shard.count,
            node=g.node.name,
            gpu=g.gpu.index,
            gpu_uuid=g.gpu.uuid,
            product=g.gpu.product,
            fps=spec.fps / shard.count,
            frame_period_ticks=d.frame_ticks * shard.count,
            period_ticks=slot.period,
            offset_ticks=slot.offset,
            body_ticks=slot.body,
            body_ms=d.timing.body_ms,
            latency_ms=d.timing.latency_ms,
            memory_mib=spec.memory_mib,
            priority=spec.priority,
            cost_ms=d.timing.cost_ms,
            exclusive=d.exclusive,
            solo_compute_ms=d.timing.solo_compute_ms,
            max_wait_ms=spec.gate.max_wait_ms,
        )

    def current(self, unplaced: Sequence[Unplaced] = ()) -> Plan:
        """The plan as the planner holds it now."""
        shards: list[ShardPlacement] = []
        gpus: list[GpuUsage] = []
        for g in self.fleet.gpus:
            own = [slot for slot in g.slots if slot.key in self._shard_meta]
            if not own:
                continue  # unused, or only old copies of moved shards left on it
            placed = [self._placement(g, slot) for slot in own]
            shards.extend(placed)
            gpus.append(
                GpuUsage(
                    node=g.node.name,
                    gpu=g.gpu.index,
                    uuid=g.gpu.uuid,
                    product=g.gpu.product,
                    sharing_mode=str(g.gpu.sharing_mode),
                    utilization=round(g.util, 6),
                    memory_mib=g.gpu.memory_mib - self.settings.memory_reserve_mib - g.memory_free,
                    memory_total_mib=g.gpu.memory_mib,
                    shards=len(own),
                    overlap_ms_per_s=self._overlap_ms_per_s(placed),
                    model_time_share=model_time_share(placed, str(g.gpu.sharing_mode)),
                )
            )
        shards.sort(key=lambda x: (x.namespace, x.stream, x.shard))
        return Plan(
            tuple(shards),
            tuple(gpus),
            tuple(sorted(unplaced, key=lambda u: (u.namespace, u.stream))),
            tick_hz=self.settings.tick_hz,
        )

    def _overlap_ms_per_s(self, placed: Sequence[ShardPlacement]) -> float:
        """The GPU's body overlap (:mod:`.overlap`). Slots never overlap, so where every
        whole body lies within its slot (every body charged in full: most fleets) it is 0
        without summing over pairs, which would cost as much as the plan itself."""
        hz = self.settings.tick_hz
        if all(body_ticks(p, hz) <= p.body_ticks for p in placed):
            return 0.0
        return round(overlap_ms_per_second(placed, hz), 3)

    def _result(self, unplaced: list[Unplaced], previous: Plan | None) -> Plan:
        self._settle()
        result = self.current(unplaced)
        if previous is None:
            return result
        moves: list[Move] = []
        offsets_changed: list[ShardKey] = []
        followed: dict[ShardKey, int] = {}
        now = {x.key: x for x in result.shards}
        for p in previous.shards:
            n = now.get(p.key)
            if n is None:
                continue
            if (n.node, n.gpu) != (p.node, p.gpu):
                moves.append(Move(p.namespace, p.stream, p.shard, p.node, p.gpu, n.node, n.gpu))
            elif (n.offset_ticks, n.period_ticks) != (p.offset_ticks, p.period_ticks):
                offsets_changed.append(p.key)
            elif p.arrival_ticks is not None:  # a followed slot left where it was follows on
                followed[p.key] = p.arrival_ticks
        self.retimed = list(offsets_changed)
        shards = tuple(
            replace(x, arrival_ticks=followed[x.key]) if x.key in followed else x
            for x in result.shards
        )
        return replace(
            result,
            shards=shards,
            moves=tuple(moves),
            offsets_changed=tuple(offsets_changed),
        )

    def _settle(self) -> list[ShardKey]:
        """Spread the tables decided in this change (new GPUs, re-timed ones) and mark every
        table as running: later changes insert into its gaps, or re-time it. Returns the
        shards of running tables whose slot changed."""
        changed: list[ShardKey] = []
        for pos in sorted(self._unsettled):
            g = self.fleet.gpus[pos]
            if g.used and not g.kept:
                before = {x.key: (x.offset, x.period) for x in self._was.get(g.pos, ())}
                g.set_slots(spread(g.slots, fixed=self._held))
                changed.extend(
                    x.key  # type: ignore[misc]  # slot keys of placed shards are ShardKeys
                    for x in g.slots
                    if before.get(x.key, (x.offset, x.period)) != (x.offset, x.period)
                )
            g.kept = g.used
        self._was.clear()
        self._unsettled.clear()
        return changed

    # -- incremental changes to a placed fleet --------------------------------

    def add(self, stream: InferenceStream) -> list[ShardPlacement] | Unplaced:
        """Place one more stream into the current plan without moving any other shard to
        another GPU: into gaps of running GPUs, by re-timing one (the shards whose slot
        changed are appended to :attr:`retimed`), or onto a free GPU. Call after
        :meth:`plan`."""
        if (stream.namespace, stream.name) in self._placed_streams:
            raise ValueError(f"stream {stream.namespace}/{stream.name} is already placed")
        demands, why = self.demands(stream)
        counts, why = self.demand.shard_counts(stream, demands) if demands else ([], why)
        if not counts:
            return Unplaced(stream.namespace, stream.name, why)
        placed = self._place_stream(stream, demands, counts)
        self._restore_lowered()
        if placed is None:
            return Unplaced(
                stream.namespace, stream.name, self._unplaceable_reason(stream, demands, counts[0])
            )
        self.retimed.extend(k for k in self._settle() if k not in placed)
        return [self._placement(self._gpu_of[k], self._slot_of(k)) for k in placed]

    def remove(self, namespace: str, name: str) -> int:
        """Take a stream's shards off their GPUs; returns how many there were."""
        keys = self._placed_streams.pop((namespace, name), [])
        for k in keys:
            self._remove(k)
        return len(keys)

    def _slot_of(self, key: ShardKey) -> Slot:
        return next(x for x in self._gpu_of[key].slots if x.key == key)

    def _place_stream(
        self, stream: InferenceStream, demands: Mapping[int, _Demand], counts: list[int]
    ) -> list[ShardKey] | None:
        """All shards of the stream for the first count that fits, or None: then every GPU
        is as it was, re-timings included."""
        for k in counts:
            placed: list[ShardKey] = []
            self._undo = []
            for i in range(k):
                shard = _Shard(stream, i, k)
                if shard.key in self._shard_meta:  # kept from the previous plan
                    placed.append(shard.key)
                    continue
                if not self._place_shard(shard, demands):
                    break
                placed.append(shard.key)
            else:
                for g, slots, _ in self._undo:
                    self._was.setdefault(g.pos, slots)  # the table before this change
                self._undo = None
                self._placed_streams[(stream.namespace, stream.name)] = placed
                return placed
            undo, self._undo = self._undo, None
            for g, slots, kept in reversed(undo):  # the earliest table of each GPU last
                g.set_slots(slots)
                g.kept = kept
                self.fleet.refresh(g)
            # Every shard of this count goes: those placed here and those kept from the
            # previous plan that the loop had not reached.
            for i in range(k):
                key = (stream.namespace, stream.name, i)
                if key in self._shard_meta:
                    self._remove(key)
        return None


DRAIN_TRIES = 3
"""GPUs a plan tries to free, least used first: each try is a plan of the fleet."""


def _gpu(p: ShardPlacement) -> tuple[str, int]:
    return (p.node, p.gpu)


def plan(
    streams: Sequence[InferenceStream],
    cluster: Cluster,
    profiles: Iterable[ModelProfile] = (),
    settings: PlannerSettings | None = None,
    previous: Plan | None = None,
    *,
    pinned: Iterable[ShardKey] = (),
    retiring: Iterable[ShardPlacement] = (),
    calibrating: Iterable[RunningCalibration] = (),
) -> Plan:
    """Place ``streams`` on ``cluster``: see the module docstring."""
    return Planner(cluster, profiles, settings, calibrating).plan(
        streams, previous, pinned, retiring
    )


def shard_ms(p: ShardPlacement, tick_hz: int = TICK_HZ) -> tuple[float, float]:
    """(period, offset) of a placed shard in ms."""
    return ticks_to_ms(p.period_ticks, tick_hz), ticks_to_ms(p.offset_ticks, tick_hz)
