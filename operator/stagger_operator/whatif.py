"""What-if against a live cluster: the plan the operator holds, and what adding streams
would change. Reads only; writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stagger.core.api import InferenceStream
from stagger.core.cluster import Cluster
from stagger.core.placement import Plan, Planner, RunningCalibration, ShardPlacement, Unplaced
from stagger_operator.calibration import (
    calibration_objects,
    calibration_outcomes,
    running_calibrations,
)
from stagger_operator.desired import plan_from_schedules
from stagger_operator.inventory import cluster_from_nodes
from stagger_operator.kube import Kube
from stagger_operator.settings import OperatorSettings


@dataclass(frozen=True)
class WhatIf:
    current: Plan
    """The plan for the streams in the cluster, kept where their GpuSchedules put them."""
    after: Plan
    """The same, with the added streams placed: into gaps, or by re-timing a GPU; nothing
    already placed moves to another GPU."""
    added: tuple[ShardPlacement, ...]
    refused: tuple[Unplaced, ...]
    retimed: tuple[ShardPlacement, ...] = ()
    """Running shards whose slot the additions would change (as in ``after``)."""


def live_what_if(
    kube: Kube, settings: OperatorSettings, add: Sequence[InferenceStream] = ()
) -> WhatIf:
    cluster = cluster_from_nodes(kube.list_objects("Node"), settings, kube.list_gpu_nodes())
    streams, _invalid = kube.list_streams(settings.namespaces)
    present = {(s.namespace, s.name) for s in streams}
    clashes = sorted(f"{s.namespace}/{s.name}" for s in add if (s.namespace, s.name) in present)
    if clashes:
        raise ValueError(f"already in the cluster: {', '.join(clashes)}")
    planner = Planner(
        cluster,
        kube.list_profiles(),
        settings.planner(),
        calibrating(kube, settings, cluster),
    )
    previous = plan_from_schedules(kube.list_schedules(), settings.tick_hz)
    current = planner.plan(streams, previous)
    planner.retimed.clear()  # from here on: what the additions change
    added: list[ShardPlacement] = []
    refused: list[Unplaced] = []
    for stream in add:
        result = planner.add(stream)
        if isinstance(result, Unplaced):
            refused.append(result)
        else:
            added.extend(result)
    after = planner.current([*current.unplaced, *refused])
    changed = set(planner.retimed)
    retimed = tuple(s for s in after.shards if s.key in changed)
    return WhatIf(current, after, tuple(added), tuple(refused), retimed)


def calibrating(
    kube: Kube, settings: OperatorSettings, cluster: Cluster
) -> tuple[RunningCalibration, ...]:
    """The GPUs calibration Jobs measure now, as the operator reads them: no stream is
    placed there until they end."""
    jobs = calibration_objects(kube.list_managed("Job"), settings.namespaces)
    if not jobs:
        return ()
    return running_calibrations(jobs, calibration_outcomes(jobs, kube.list_managed("Pod")), cluster)
