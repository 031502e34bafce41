"""The GPUs the cluster offers: Ready, uncordoned, opted-in nodes, each GPU from the node
agent's fresh GpuNode or else from GPU feature discovery labels. Pure: the caller reads
the API and the clock."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from stagger.core.api import (
    GpuNode,
    SharingMode,
)
from stagger.core.cluster import Cluster
from stagger_operator.settings import OperatorSettings

Obj = dict[str, Any]


GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_MEMORY = "nvidia.com/gpu.memory"
GPU_COUNT = "nvidia.com/gpu.count"
GPU_SHARING = "nvidia.com/gpu.sharing-strategy"
GPU_RESOURCE = "nvidia.com/gpu"


def _ready(node: Obj) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def cluster_from_nodes(
    nodes: Iterable[Obj],
    settings: OperatorSettings,
    gpu_nodes: Iterable[GpuNode] = (),
    now: datetime | None = None,
) -> Cluster:
    """GPU nodes that may take shards: Ready, not cordoned, opted in. Their GPUs come from the
    node agent's GpuNode when it has a fresh one (every GPU by UUID, each sized by the
    memory that processes Stagger does not manage leave free; MIG-enabled GPUs left out),
    else from GPU feature discovery labels (product, memory per GPU, count)."""
    inventories = {g.spec.node: g for g in gpu_nodes}
    out = []
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        meta = node["metadata"]
        labels: dict[str, str] = meta.get("labels") or {}
        if settings.managed_node_label and labels.get(settings.managed_node_label) != "true":
            continue
        if node.get("spec", {}).get("unschedulable") or not _ready(node):
            continue
        sharing = labels.get(GPU_SHARING, "time-slicing")
        mode = sharing if sharing in {m.value for m in SharingMode} else "time-slicing"
        gpus = _agent_gpus(inventories.get(meta["name"]), mode, settings, now)
        if gpus is None:
            gpus = _labelled_gpus(node, labels, mode)
        if gpus:
            out.append({"name": meta["name"], "labels": labels, "gpus": gpus})
    return Cluster.model_validate({"nodes": out})


def _agent_gpus(
    inventory: GpuNode | None, mode: str, settings: OperatorSettings, now: datetime | None
) -> list[Obj] | None:
    """The GPUs a fresh GpuNode lists; None: no usable inventory (fall back to labels)."""
    status = inventory.status if inventory else None
    if status is None or status.nvml != "ok" or status.observed_at is None:
        return None
    if now is not None and (now - status.observed_at).total_seconds() > settings.gpu_node_stale_s:
        return None
    gpus = []
    for g in status.gpus:
        free = g.memory_total_mib - (g.foreign_memory_mib or 0)
        if g.mig_enabled or free <= 0:
            continue
        gpus.append(
            {
                "index": g.index,
                "uuid": g.uuid,
                "product": g.product,
                "memoryMiB": free,
                "sharingMode": "mps" if g.mps_active else mode,
            }
        )
    return gpus


def _labelled_gpus(node: Obj, labels: dict[str, str], mode: str) -> list[Obj]:
    product, memory = labels.get(GPU_PRODUCT), labels.get(GPU_MEMORY)
    capacity = node.get("status", {}).get("capacity", {}).get(GPU_RESOURCE)
    count = labels.get(GPU_COUNT) or capacity
    if not product or not memory or not count:
        return []
    try:
        n_gpus, memory_mib = int(count), int(memory)
    except ValueError:
        return []
    return [
        {"index": i, "product": product, "memoryMiB": memory_mib, "sharingMode": mode}
        for i in range(n_gpus)
    ]
