"""The operator's metrics from a reconcile report: counters add up, per-stream and
per-profile series follow what exists (gone ones disappear)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from stagger.core.placement import GpuUsage, Plan, RunningCalibration, ShardPlacement
from stagger_operator.controller import Report
from stagger_operator.metrics import OperatorMetrics

PROFILE = ("retinanet-h200", "retinanet", "NVIDIA-H200", "time-slicing")


def test_a_report_becomes_series() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    first = Report(placed=2, unplaced=1, written=5, statuses=3, failed=1)
    first.targets = [("retail", "cam-1", 10.0, 0.1), ("retail", "cam-2", 5.0, 0.05)]
    first.profiles = [(*PROFILE, 0.0121, True)]
    metrics.reconciled(first, 0.3)
    second = Report(placed=1, written=2)
    second.targets = [("retail", "cam-1", 10.0, 0.1)]  # cam-2 was deleted
    metrics.reconciled(second, 0.1)
    metrics.failed(0.05)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("stagger_operator_reconciles_total", outcome="ok") == 2
    assert value("stagger_operator_reconciles_total", outcome="error") == 1
    assert value("stagger_operator_reconcile_seconds_count") == 3
    assert value("stagger_operator_writes_total", result="written") == 7
    assert value("stagger_operator_writes_total", result="failed") == 1
    assert value("stagger_operator_writes_total", result="status") == 3
    assert value("stagger_operator_streams", state="placed") == 1
    assert value("stagger_stream_requested_fps", namespace="retail", stream="cam-1") == 10
    assert value("stagger_stream_deadline_seconds", namespace="retail", stream="cam-2") is None
    labels = dict(zip(("profile", "model", "gpu_product", "sharing_mode"), PROFILE, strict=True))
    assert value("stagger_profile_drifted", **labels) is None  # the profile is gone too
    metrics.reconciled(first, 0.2)
    assert value("stagger_profile_drifted", **labels) == 1
    assert value("stagger_profile_body_seconds", **labels) == 0.0121


def test_the_plan_becomes_per_gpu_and_per_shard_series() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    usage = GpuUsage(
        "gpu-a", 1, "GPU-1", "NVIDIA-H200", "time-slicing", 0.45, 2048, 143771, 1, 192.0, 0.94
    )
    shard = ShardPlacement(
        namespace="retail",
        stream="cam-1",
        shard=0,
        shards=1,
        node="gpu-a",
        gpu=1,
        gpu_uuid="GPU-1",
        product="NVIDIA-H200",
        fps=10.0,
        frame_period_ticks=1000,
        period_ticks=1000,
        offset_ticks=250,
        body_ticks=450,
        body_ms=18.1,
        latency_ms=20.0,
        memory_mib=2048,
        priority=0,
    )
    report = Report(placed=1, calibrating=(RunningCalibration("gpu-b", 0, "yolo"),))
    report.plan = Plan(shards=(shard,), gpus=(usage,), unplaced=())
    metrics.reconciled(report, 0.1)
    measured = {"node": "gpu-b", "gpu": "0", "model": "yolo"}
    assert registry.get_sample_value("stagger_gpu_calibrating", measured) == 1
    gpu = {"node": "gpu-a", "gpu": "1", "product": "NVIDIA-H200", "sharing_mode": "time-slicing"}
    assert registry.get_sample_value("stagger_gpu_reserved_ratio", gpu) == 0.45
    assert registry.get_sample_value("stagger_gpu_body_overlap_ratio", gpu) == 0.192
    assert registry.get_sample_value("stagger_gpu_model_time_ratio", gpu) == 0.94
    placed = {"namespace": "retail", "stream": "cam-1", "shard": "0", "node": "gpu-a", "gpu": "1"}
    body = registry.get_sample_value("stagger_shard_planned_body_seconds", placed)
    assert body == pytest.approx(0.0181)

    metrics.standby()  # another replica took the Lease: its series, not these stale ones
    assert registry.get_sample_value("stagger_gpu_reserved_ratio", gpu) is None
    assert registry.get_sample_value("stagger_gpu_calibrating", measured) is None
    assert registry.get_sample_value("stagger_gpu_body_overlap_ratio", gpu) is None
    assert registry.get_sample_value("stagger_operator_streams", {"state": "placed"}) is None
    assert registry.get_sample_value("stagger_operator_leader") == 0
    metrics.reconciled(report, 0.1)
    assert registry.get_sample_value("stagger_gpu_reserved_ratio", gpu) == 0.45

    metrics.reconciled(Report(placed=1), 0.1)  # the plan did not change: its series stay
    assert registry.get_sample_value("stagger_shard_planned_body_seconds", placed) == body

    report.plan = Plan(shards=(), gpus=(), unplaced=())  # the stream went away
    report.calibrating = ()  # and the Job ended
    metrics.reconciled(report, 0.1)
    assert registry.get_sample_value("stagger_gpu_calibrating", measured) is None
    assert registry.get_sample_value("stagger_gpu_reserved_ratio", gpu) is None
    assert registry.get_sample_value("stagger_gpu_body_overlap_ratio", gpu) is None
    assert registry.get_sample_value("stagger_gpu_model_time_ratio", gpu) is None
    assert registry.get_sample_value("stagger_shard_planned_body_seconds", placed) is None
