"""The Grafana dashboard (charts/stagger/dashboards/stagger.json): well formed, every query
names metrics that Stagger's components really export, and every query, run by a real
promtool over a small fleet's worth of series, returns data (a mistyped label or a join
that matches many-to-many would not)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from stagger_operator.metrics import OperatorMetrics
from stagger_sidecar.agent import AgentMetrics
from stagger_sidecar.metrics import GateMetrics
from tests.chart.test_alerts import PROMTOOL, _promtool_is_there  # noqa: F401 (autouse)
from tests.chart.test_chart import CHART, render

DASHBOARD = CHART / "dashboards" / "stagger.json"
GRAFANA_VARIABLES = {
    "$namespace": ".*",
    "$stream": ".*",
    "$node": ".*",
    "$__rate_interval": "5m",
}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(a name for the query, its PromQL with Grafana's variables filled in)."""
    out = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((f"p{panel['id']}_{target['refId']}", expr))
    return out


def exported_metric_names() -> set[str]:
    """What the sidecar, the node agent and the operator register, as Prometheus sees it."""
    registries = [CollectorRegistry() for _ in range(3)]
    GateMetrics(registries[0])
    AgentMetrics(registries[1])
    OperatorMetrics(registries[2])
    names = set()
    for registry in registries:
        for family in registry.collect():
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_sum", "_count"],
            }.get(family.type, [""])
            names |= {family.name + suffix for suffix in suffixes}
    return names


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "stagger-overview" and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    defined = {v["name"] for v in board["templating"]["list"]}
    assert defined == {"datasource", "namespace", "stream", "node"}
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        used = set(re.findall(r"\$\w+", json.dumps(panel["targets"])))
        assert used <= {"$namespace", "$stream", "$node", "$__rate_interval", "$datasource"}


def test_every_query_names_exported_metrics_and_what_the_issue_asks_is_shown() -> None:
    exported = exported_metric_names()
    used = {name for _, expr in queries() for name in re.findall(r"\bstagger_\w+", expr)}
    # The drop share selects both counters by a regex on __name__.
    used -= {"stagger_frames_"}
    assert used <= exported, f"not exported by any component: {sorted(used - exported)}"
    shown = {
        "stagger_gpu_reserved_ratio",  # per GPU: reserved slots
        "stagger_gpu_body_overlap_ratio",  # ... and how much their bodies overlap
        "stagger_gpu_model_time_ratio",  # ... and how much of each second the models need
        "stagger_body_seconds",  # measured body
        "stagger_shard_planned_body_seconds",  # ... against the plan / profile
        "stagger_stream_requested_fps",  # per stream: requested ...
        "stagger_achieved_fps",  # ... vs achieved
        "stagger_request_latency_seconds_bucket",  # p50 / p99
        "stagger_frames_dropped_total",
        "stagger_gate_wait_seconds_bucket",
        "stagger_gate_release_lag_seconds_bucket",  # the sidecar's own lateness
        "stagger_slot_misses_total",
        "stagger_slot_contracts_late_total",  # the kubelet slower than the switch lead
        "stagger_slot_feed_up",  # ... and the channel that does not wait for it
        "stagger_profile_body_seconds",
    }
    assert shown <= used, sorted(shown - used)


# A small fleet as Prometheus would hold it, scraped every minute for 20 minutes: two
# streams' sidecars (cam-2 in two shards on two GPUs), one node agent, the operator.
SIDECAR = 'job="sidecars", model="retinanet", namespace="retail"'
SHARDS = [("cam-1", "0", "0"), ("cam-2", "0", "0"), ("cam-2", "1", "1")]
HISTOGRAMS = (
    "stagger_request_latency_seconds",
    "stagger_gate_wait_seconds",
    "stagger_gate_release_lag_seconds",
    "stagger_triton_service_seconds",
)


def fleet_series() -> list[dict[str, str]]:
    series = []

    def add(name: str, labels: str, values: str) -> None:
        series.append({"series": f"{name}{{{labels}}}", "values": values})

    for stream, shard, gpu in SHARDS:
        pod = f'{SIDECAR}, stream="{stream}", shard="{shard}", instance="{stream}-{shard}:9090"'
        fps = 10 if stream == "cam-1" else 5
        add("stagger_frames_forwarded_total", pod, f"0+{60 * fps}x20")
        add("stagger_frames_dropped_total", f'{pod}, reason="busy"', "0+3x20")
        add("stagger_frames_late_total", pod, "0+1x20")
        add("stagger_slot_misses_total", pod, "0+1x20")
        add("stagger_slot_contracts_late_total", pod, "0+0x10 1+0x10")
        add("stagger_slot_feed_up", pod, "1x20")
        for name in HISTOGRAMS:
            for le, share in (("0.01", 0.5), ("0.02", 0.9), ("0.05", 0.99), ("+Inf", 1.0)):
                add(f"{name}_bucket", f'{pod}, le="{le}"', f"0+{60 * fps * share:g}x20")
            add(f"{name}_count", pod, f"0+{60 * fps}x20")
            add(f"{name}_sum", pod, f"0+{0.012 * 60 * fps:g}x20")
        add("stagger_body_seconds", pod, "0.018x20")
        add("stagger_achieved_fps", pod, f"{fps}x20")
        planned = (
            f'namespace="retail", stream="{stream}", shard="{shard}", node="gpu-a", gpu="{gpu}"'
        )
        add("stagger_shard_planned_body_seconds", f'job="operator", {planned}', "0.02x20")
    operator = 'job="operator", instance="10.0.1.2:9400"'
    for stream, fps in (("cam-1", 10), ("cam-2", 10)):
        add(
            "stagger_stream_requested_fps",
            f'{operator}, namespace="retail", stream="{stream}"',
            f"{fps}x20",
        )
        add(
            "stagger_stream_deadline_seconds",
            f'{operator}, namespace="retail", stream="{stream}"',
            "0.1x20",
        )
    for gpu, reserved in (("0", "0.3"), ("1", "0.1")):
        h200 = 'product="NVIDIA-H200"'
        where = f'{operator}, node="gpu-a", gpu="{gpu}", {h200}, sharing_mode="time-slicing"'
        add("stagger_gpu_reserved_ratio", where, f"{reserved}x20")
        add("stagger_gpu_body_overlap_ratio", where, "0x20")
        add("stagger_gpu_model_time_ratio", where, "0.94x20")
        agent = f'job="agents", node="gpu-a", gpu="{gpu}", uuid="GPU-{gpu}", {h200}'
        add("stagger_gpu_utilization_ratio", agent, "0.25x20")
        add("stagger_gpu_memory_used_bytes", agent, "4e9x20")
        add("stagger_gpu_memory_total_bytes", agent, "1.4e11x20")
        add("stagger_gpu_foreign_memory_bytes", agent, "1e9x20")
    profile = (
        'profile="retinanet-h200", model="retinanet", gpu_product="NVIDIA-H200", '
        'sharing_mode="time-slicing"'
    )
    add("stagger_profile_body_seconds", f"{operator}, {profile}", "0.02x20")
    add("stagger_profile_drifted", f"{operator}, {profile}", "0x20")
    for state, n in (("placed", 2), ("unschedulable", 0), ("invalid", 0)):
        add("stagger_operator_streams", f'{operator}, state="{state}"', f"{n}x20")
    add("stagger_operator_reconciles_total", f'{operator}, outcome="ok"', "0+6x20")
    add("stagger_operator_reconciles_total", f'{operator}, outcome="error"', "0x20")
    for le, n in (("0.05", 5), ("0.25", 6), ("+Inf", 6)):
        add("stagger_operator_reconcile_seconds_bucket", f'{operator}, le="{le}"', f"0+{n}x20")
    add("stagger_operator_moves_total", operator, "0+1x20")
    add("stagger_operator_retimings_total", f'{operator}, node="gpu-a", gpu="0"', "0+3x20")
    add("stagger_operator_writes_total", f'{operator}, result="written"', "0+2x20")
    add("stagger_operator_leader", operator, "1x20")
    return series


def test_every_query_returns_data_on_a_fleet(tmp_path: Path) -> None:
    named = queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:{name}", "expr": expr} for name, expr in named]
                + [
                    {"alert": f"NoData_{name}", "expr": f"absent(dashboard:{name})"}
                    for name, _ in named
                ],
            }
        ]
    }
    (tmp_path / "dashboard.rules.yaml").write_text(yaml.safe_dump(rules))
    check = _run("check", "rules", "dashboard.rules.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    measured_gpu_time = next(
        name
        for name, expr in named
        if "group_left (node, gpu)" in expr and "sum by (node, gpu)" in expr
    )
    name = f"dashboard:{measured_gpu_time}"
    test = {
        "rule_files": ["dashboard.rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": fleet_series(),
                # Each query's recorded series exists: no NoData alert fires.
                "alert_rule_test": [
                    {"eval_time": "15m", "alertname": f"NoData_{name}", "exp_alerts": []}
                    for name, _ in named
                ],
                "promql_expr_test": [
                    {
                        # Body 18 ms × fps: GPU 0 runs cam-1 (10 fps) and cam-2's shard 0
                        # (5 fps), GPU 1 cam-2's shard 1 (5 fps).
                        "expr": name,
                        "eval_time": "15m",
                        "exp_samples": [
                            {"labels": f'{name}{{gpu="0", node="gpu-a"}}', "value": 0.27},
                            {"labels": f'{name}{{gpu="1", node="gpu-a"}}', "value": 0.09},
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "dashboard.test.yaml").write_text(yaml.safe_dump(test))
    done = _run("test", "rules", "dashboard.test.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_the_chart_ships_the_dashboard_for_grafanas_sidecar() -> None:
    (config_map,) = [o for o in render() if o["metadata"]["name"] == "stagger-dashboard"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["stagger.json"]) == dashboard()
    moved = render(
        "dashboards.namespace=monitoring", "dashboards.annotations.grafana_folder=Stagger"
    )
    (config_map,) = [o for o in moved if o["metadata"]["name"] == "stagger-dashboard"]
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Stagger"}
    assert not [o for o in render("dashboards.enabled=false") if o["kind"] == "ConfigMap"]
