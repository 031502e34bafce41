"""`kubectl stagger plan --live --add FILE` against kmock: reads the cluster, writes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagger_operator.cli import main
from stagger_operator.controller import Controller
from stagger_operator.settings import OperatorSettings
from tests.emulator import stream
from tests.integration.conftest import Cluster, kubeconfig


async def snapshot(c: Cluster) -> dict[str, Any]:
    kinds = ("InferenceStream", "GpuSchedule", "Deployment", "ConfigMap")
    return {k: sorted(await c.objects(k), key=lambda o: str(o["metadata"])) for k in kinds}


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def what_if_adding(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], added: dict[str, Any]
) -> dict[str, Any]:
    """`kubectl stagger plan --live --add` one stream, its answer as JSON (it must fit)."""
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(added))
    config = kubeconfig(tmp_path / "kube", cluster.kube.api.configuration.host) / "config"
    code, out, err = await run_cli(
        capsys, "plan", "--live", "--kubeconfig", str(config), "--add", str(new), "-o", "json"
    )
    assert code == 0, err
    return dict(json.loads(out))


async def test_what_if_shows_where_added_streams_go_and_changes_nothing(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("cam-1", "cam-2"):
        await cluster.create(stream(name, body=30, latencyMs=40))
    await cluster.call(Controller(cluster.kube, OperatorSettings()).reconcile)
    before = await snapshot(cluster)
    data = await what_if_adding(cluster, tmp_path, capsys, stream("cam-3", body=30, latencyMs=40))
    assert [(s["stream"], s["shard"]) for s in data["added"]] == [("cam-3", 0)]
    # Nothing moves to another GPU; a slot changes only where the answer says it re-times.
    after = {s["stream"]: s for s in data["after"]["shards"]}
    retimed = {s["stream"] for s in data["retimed"]}
    for s in data["current"]["shards"]:
        assert (s["node"], s["gpu"]) == (after[s["stream"]]["node"], after[s["stream"]]["gpu"])
        assert (s["offsetMs"] == after[s["stream"]]["offsetMs"]) == (s["stream"] not in retimed)
    assert data["refused"] == []
    assert await snapshot(cluster) == before  # read only


async def test_what_if_refuses_what_does_not_fit_and_names_clashes(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await cluster.create(stream("cam-1"))
    config = kubeconfig(tmp_path / "kube", cluster.kube.api.configuration.host) / "config"
    huge = tmp_path / "huge.yaml"
    huge.write_text(yaml.safe_dump(stream("huge", memoryMiB=999_999)))
    code, _, err = await run_cli(
        capsys, "plan", "--live", "--kubeconfig", str(config), "--add", str(huge)
    )
    assert code == 1
    assert "unplaced: default/huge: needs 999999 MiB" in err
    clash = tmp_path / "clash.yaml"
    clash.write_text(yaml.safe_dump(stream("cam-1")))
    code, _, err = await run_cli(
        capsys, "plan", "--live", "--kubeconfig", str(config), "--add", str(clash)
    )
    assert code == 2
    assert "already in the cluster: default/cam-1" in err


async def test_unreachable_cluster_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path / "kube", "http://127.0.0.1:9") / "config"
    code, _, err = await run_cli(capsys, "plan", "--live", "--kubeconfig", str(config))
    assert code == 2
    assert err.startswith("error: cannot read the cluster:")
    assert "Traceback" not in err


def test_without_live_kubectl_stagger_is_the_stagger_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {s["namespace"] for s in data["shards"]} == {"study", "retail", "logistics"}


async def test_profile_apply_writes_the_model_profile(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(tmp_path / "kube", cluster.kube.api.configuration.host) / "config"
    sweep = tmp_path / "sweep.csv"
    sweep.write_text(
        "offsetMs,latency1Ms,latency2Ms\n"
        + "".join(
            f"{o},{18.5 + max(10.5 - o, 0)},{18.5 + max(10.5 - o, 0)}\n" for o in range(0, 22, 2)
        )
    )
    args = [
        "profile",
        "--from-csv",
        str(sweep),
        "--solo-ms",
        "18.5",
        "--model",
        "retinanet",
        "--apply",
        "--gpu-product",
        "NVIDIA-H200",
        "--sharing-mode",
        "mps",
        "--kubeconfig",
        str(config),
    ]
    code, out, err = await run_cli(capsys, *args)
    assert code == 0, err
    assert "modelprofile.stagger.dev/retinanet-nvidia-h200-mps written" in out
    profiles = await cluster.objects("ModelProfile")
    assert [p["metadata"]["name"] for p in profiles] == ["retinanet-nvidia-h200-mps"]
    spec = profiles[0]["spec"]
    assert spec["source"] == "calibration" and spec["sharingMode"] == "mps"
    assert spec["bodyTimeMs"] == pytest.approx(10.5 * 1.15, abs=0.3)
    code, _, _ = await run_cli(capsys, *args)  # again: updates the same profile
    assert code == 0 and len(await cluster.objects("ModelProfile")) == 1


async def test_plain_stagger_profile_never_writes_to_a_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stagger.cli import main as stagger_main

    code = stagger_main(["profile", "--from-csv", "x.csv", "--apply"])
    assert code == 2
    assert "kubectl stagger profile --apply" in capsys.readouterr().err


async def test_what_if_keeps_added_streams_off_a_gpu_a_calibration_job_measures(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the operator plans: a GPU being measured takes no new stream until its Job ends."""
    uncalibrated = stream("new-model", model="yolo")
    del uncalibrated["spec"]["bodyTimeMs"], uncalibrated["spec"]["latencyMs"]
    await cluster.create(uncalibrated)
    await cluster.call(Controller(cluster.kube, OperatorSettings()).reconcile)
    (job,) = await cluster.objects("Job", "default")
    measured = job["metadata"]["labels"]["stagger.dev/gpu"]
    data = await what_if_adding(cluster, tmp_path, capsys, stream("cam-3", body=30, latencyMs=40))
    (added,) = data["added"]
    assert measured == "gpu-a.0" and f"{added['node']}.{added['gpu']}" != measured
