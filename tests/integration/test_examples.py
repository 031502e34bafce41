"""The examples run as their READMEs say: `stagger plan` prints what each README shows, the
four cameras' manifests are placed by the real operator (against kmock) exactly as
`stagger plan` planned them, and the local Triton example shows slot-clock capture holding
solo latency where synchronized cameras queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stagger.loader import load_cluster
from tests.integration.conftest import Cluster, Operator
from tests.unit.operator.test_manifests import K8S_VERSION

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
STAGGER = str(Path(sys.executable).with_name("stagger"))


def plan_command(example: str) -> list[str]:
    """The first command the example's README gives (after `stagger plan`)."""
    readme = (EXAMPLES / example / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("stagger plan "))
    return line.split()[2:]


def stagger_plan(example: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STAGGER, "plan", *plan_command(example), *args],
        cwd=EXAMPLES / example,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("example", ["01-four-cameras", "02-mixed-fleet"])
def test_stagger_plan_prints_what_the_readme_shows(example: str) -> None:
    done = stagger_plan(example)
    assert done.returncode == 0, done.stderr  # every stream placed
    shown = EXAMPLES / example / "plan.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        shown.write_text(done.stdout)
    assert done.stdout == shown.read_text(), f"{shown} is stale: UPDATE_GOLDEN=1 rewrites it"


def test_the_mixed_fleet_splits_a_stream_across_gpus() -> None:
    shards = json.loads(stagger_plan("02-mixed-fleet", "-o", "json").stdout)["shards"]
    fps = {s["fps"] for s in shards if s["shards"] == 1}
    assert {1, 5, 10, 15, 30} <= fps
    gpus_of: dict[str, set[tuple[str, int]]] = {}
    for s in shards:
        gpus_of.setdefault(s["stream"], set()).add((s["node"], s["gpu"]))
    assert any(len(g) > 1 for g in gpus_of.values()), "no stream is split across GPUs"


def nodes_for(cluster_file: Path) -> list[dict[str, Any]]:
    """The cluster file's nodes as Node objects labelled by GPU feature discovery."""
    nodes = []
    for n in load_cluster(cluster_file).nodes:
        gpu = n.gpus[0]
        labels = {
            **n.labels,
            "stagger.dev/managed": "true",
            "nvidia.com/gpu.product": gpu.product,
            "nvidia.com/gpu.memory": str(gpu.memory_mib),
            "nvidia.com/gpu.count": str(len(n.gpus)),
        }
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": n.name, "labels": labels},
                "spec": {},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "capacity": {"nvidia.com/gpu": str(len(n.gpus))},
                },
            }
        )
    return nodes


def applied(path: Path) -> list[dict[str, Any]]:
    """The file's objects as `kubectl apply` would send them (kmock assigns no uid)."""
    objects = [o for o in yaml.safe_load_all(path.read_text()) if o]
    for o in objects:
        name = o["metadata"]["name"]
        o["metadata"] |= {"uid": f"uid-{name}", "resourceVersion": "1"}
    return objects


async def test_the_four_cameras_are_placed_by_the_operator_as_planned(
    cluster: Cluster, operator: Operator
) -> None:
    example = EXAMPLES / "01-four-cameras"
    for n in nodes_for(example / "cluster.yaml"):
        await cluster.create(n)
    for o in applied(example / "profile.yaml") + applied(example / "streams.yaml"):
        await cluster.create(o)
    planned = json.loads(stagger_plan("01-four-cameras", "-o", "json").stdout)["shards"]
    want = {s["stream"]: (s["node"], s["gpu"], s["offsetMs"]) for s in planned}

    seen: dict[str, Any] = {}

    async def placed() -> dict[str, Any] | None:
        streams = await cluster.objects("InferenceStream", "study")
        phases = {o["metadata"]["name"]: (o.get("status") or {}).get("phase") for o in streams}
        seen.update({o["metadata"]["name"]: o.get("status") for o in streams})
        return phases if set(phases.values()) == {"Placed"} else None

    try:
        await cluster.wait_for(placed)
    except AssertionError as e:  # once in a full suite: say where each stream was left
        raise AssertionError(f"not every stream Placed; their statuses: {seen}") from e
    (schedule,) = await cluster.objects("GpuSchedule")
    tick_hz = schedule["spec"]["tickHz"]
    got = {
        slot["stream"]: (
            schedule["spec"]["node"],
            schedule["spec"]["gpuIndex"],
            round(slot["offsetTicks"] * 1e3 / tick_hz, 3),
        )
        for slot in schedule["spec"]["slots"]
    }
    # The operator sees the four creates in one reconcile or several, as its events batch:
    # the same table as `stagger plan` (one GPU, 62.5 ms apart), though which camera takes
    # which slot follows the order they arrived in.
    assert set(got) == set(want)
    assert sorted(got.values()) == sorted(want.values())
    # The workloads made from the example's pod template are valid Kubernetes objects.
    deployments = await cluster.objects("Deployment", "study")
    assert len(deployments) == 4
    for d in deployments:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        names = [c["name"] for c in d["spec"]["template"]["spec"]["containers"]]
        assert names[:2] == ["triton", "camera"] and len(names) == 3  # + the sidecar


def test_the_local_example_staggers_bodies_with_a_real_triton(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "03-local-triton" / "run.py"),
            "--seconds",
            "4",
            "--modes",
            "synchronized,slot-clock",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "slot-clock" in done.stdout  # the table is printed
    result = json.loads(out.read_text())
    solo = result["soloMs"]
    synchronized, slot_clock = (result["modes"][m]["all"] for m in ("synchronized", "slot-clock"))
    assert synchronized["frames"] == slot_clock["frames"] == 4 * 4 * 4
    # Synchronized cameras queue for the one "GPU": the last body starts after three others.
    assert synchronized["p99Ms"] > solo + 2 * result["bodyMs"]
    # At their slots, each body has the GPU alone: solo latency (+ the capture lead and the
    # sidecar's hop), where waiting behind another body would add 45 ms. Judged on the p50
    # and against synchronized cameras' tail, not on one frame: in 4 s there are 64, so the
    # p99 is the slowest, and on a 2-core VM one host stall of 25-40 ms in a run (p99 100.4
    # and 115.7 ms in two clean CI runs on 2026-12-03, p50s 83-87 ms) or one camera thread
    # woken past its slot (1 frame of 64 in 2 of 4 idle runs, with this session's code and
    # the session's starting commit alike) is the host's, not the gate's.
    assert slot_clock["p50Ms"] < solo + 20
    assert slot_clock["p99Ms"] < 0.6 * synchronized["p99Ms"]
    assert slot_clock["dropPercent"] <= 100 / 64
