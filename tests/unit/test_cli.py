"""`stagger plan` and `stagger crds` as a user runs them: the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest
from rich.console import Console

from stagger.core.placement import plan
from stagger.render import gpu_table, plan_json
from tests.factories import cluster, profile, stream

CLUSTER = """\
nodes:
  - name: n1
    labels: {zone: a}
    gpus:
      - {index: 0, uuid: GPU-1, product: Tesla-T4, memoryMiB: 15360}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stagger.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def manifest(name: str = "cam", **spec: object) -> str:
    body = {"model": "ssd", "fps": 4, "bodyTimeMs": 45, "latencyMs": 75, **spec}
    fields = ", ".join(
        f"{k}: {json.dumps(v) if isinstance(v, str) else v}" for k, v in body.items()
    )
    return textwrap.dedent(f"""\
        apiVersion: stagger.dev/v1alpha1
        kind: InferenceStream
        metadata: {{name: {name}, namespace: default}}
        spec: {{{fields}}}
        """)


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    return path


def test_default_scenario_prints_plan_timeline_and_simulation() -> None:
    result = run("plan", "--simulate", "20")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for section in (
        "Placement",
        "GPUs",
        "Timelines",
        "Simulated",
        "STAGGERED",
        "SYNCHRONIZED",
        "RANDOM",
    ):
        assert section in out
    assert "study/study-cam-4" in out
    assert "26/26 streams placed" in out
    assert "Traceback" not in result.stderr


def test_json_output_is_the_documented_shape() -> None:
    result = run("plan", "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"shards", "gpus", "unplaced"}
    assert set(data["shards"][0]) == {
        "stream",
        "namespace",
        "shard",
        "shards",
        "node",
        "gpu",
        "fps",
        "periodMs",
        "offsetMs",
        "bodyMs",
        "reservedMs",
    }
    assert set(data["gpus"][0]) == {
        "node",
        "gpu",
        "utilization",
        "bodyOverlapMsPerSecond",
        "memoryMiB",
    }
    study = sorted(s["offsetMs"] for s in data["shards"] if s["namespace"] == "study")
    assert study == [0.0, 62.5, 125.0, 187.5]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "plan.png"
    result = run("plan", "--simulate", "0", "--plot", str(target))
    assert result.returncode == 0, result.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_files_plan_and_unplaced_exit_1_with_reason(tmp_path: Path, cluster_file: Path) -> None:
    streams = tmp_path / "streams.yaml"
    streams.write_text("---\n".join(manifest(f"cam{i}") for i in range(6)))
    result = run(
        "plan", "--streams", str(streams), "--cluster", str(cluster_file), "--simulate", "0"
    )
    assert result.returncode == 1
    assert "unplaced: default/cam" in result.stderr
    assert "needs 0.18 GPU-seconds of body per second" in result.stderr


def test_a_gpu_whose_bodies_overlap_says_how_much_in_its_row_its_timeline_and_json(
    tmp_path: Path,
) -> None:
    """Run 51's fleet: 8 streams charged their 11.31 ms cost on one H200, their 14.9 ms
    bodies 12.5 ms apart: 192 ms/s of overlap, '!' on the timeline where two bodies run."""
    (tmp_path / "h200.yaml").write_text(
        CLUSTER.replace("Tesla-T4, memoryMiB: 15360", "NVIDIA-H200, memoryMiB: 143771")
    )
    streams = tmp_path / "streams.yaml"
    streams.write_text(
        "---\n".join(
            manifest(f"cam{i}", model="graph", fps=10, bodyTimeMs=14.9, latencyMs=14.9).replace(
                "}\n", ", costMs: 11.31}\n"
            )
            for i in range(8)
        )
    )
    files = ("--streams", str(streams), "--cluster", str(tmp_path / "h200.yaml"))
    table = run("plan", *files, "--simulate", "0")
    assert table.returncode == 0, table.stderr
    assert "OVERLAP ms/s" in table.stdout and "192.0" in table.stdout
    timeline = table.stdout.split("Timelines", 1)[1]
    assert "!" in timeline.splitlines()[2]  # the GPU's row of cells
    (gpu,) = json.loads(run("plan", *files, "-o", "json").stdout)["gpus"]
    assert gpu["bodyOverlapMsPerSecond"] == 192.0
    apart = run("plan", *files, "--simulate", "0", "--throughput-cap", "0.7")  # fewer fit
    assert "!" not in apart.stdout.split("Timelines", 1)[1].splitlines()[2]


def test_streams_take_several_files_and_profiles_fill_in_timing(
    tmp_path: Path, cluster_file: Path
) -> None:
    (tmp_path / "a.yaml").write_text(
        manifest("a", bodyTimeMs=None)
        .replace("bodyTimeMs: None, ", "")
        .replace(", latencyMs: 75", "")
    )
    (tmp_path / "b.yaml").write_text(manifest("b"))
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent("""\
        apiVersion: stagger.dev/v1alpha1
        kind: ModelProfile
        metadata: {name: ssd-t4}
        spec: {model: ssd, gpuProduct: Tesla-T4, bodyTimeMs: 40, latencyMs: 70}
        """)
    )
    result = run(
        "plan",
        "--streams",
        str(tmp_path / "a.yaml"),
        str(tmp_path / "b.yaml"),
        "--cluster",
        str(cluster_file),
        "--profiles",
        str(tmp_path / "p.yaml"),
        "-o",
        "json",
    )
    assert result.returncode == 0, result.stderr
    bodies = {s["stream"]: s["bodyMs"] for s in json.loads(result.stdout)["shards"]}
    assert bodies == {"a": 40, "b": 45}


BAD = {
    "negative fps": (
        manifest(fps=-4),
        "InferenceStream default/cam: spec.fps: Input should be greater than 0",
    ),
    "zero fps": (manifest(fps=0), "spec.fps: Input should be greater than 0"),
    "nan fps": (
        manifest().replace("fps: 4", "fps: .nan"),
        "spec.fps: Input should be a finite number",
    ),
    "non-numeric fps": (manifest(fps='"ten"'), "spec.fps: Input should be a valid number"),
    "missing model": (
        manifest().replace('model: "ssd", ', ""),
        "spec.model: required field is missing",
    ),
    "zero body": (manifest(bodyTimeMs=0), "spec.bodyTimeMs: Input should be greater than 0"),
    "negative memory": (
        manifest(memoryMiB=-1),
        "spec.memoryMiB: Input should be greater than or equal to 0",
    ),
    "latency over deadline": (
        manifest(deadlineMs=50),
        "spec.latencyMs: latencyMs exceeds deadlineMs",
    ),
    "unknown field": (manifest(fpss=3), "spec.fpss: unknown field"),
    "wrong kind": (
        manifest().replace("kind: InferenceStream", "kind: Deployment"),
        "kind is 'Deployment' (not a Stagger kind), expected InferenceStream",
    ),
    "wrong apiVersion": (
        manifest().replace("stagger.dev/v1alpha1", "stagger.dev/v9"),
        "apiVersion is 'stagger.dev/v9'",
    ),
    "duplicate names": (manifest() + "---\n" + manifest(), "defined more than once"),
    "broken yaml": ("spec: {fps: [1, 2\n", "not valid YAML at line 2"),
    "bad name": (manifest(name="Bad_Name"), "metadata.name: String should match pattern"),
    "not a mapping": ("- just\n- a list\n", "expected a mapping, got list"),
}


@pytest.mark.parametrize("case", BAD, ids=str)
def test_bad_input_exits_2_naming_file_object_and_field(
    case: str, tmp_path: Path, cluster_file: Path
) -> None:
    text, expected = BAD[case]
    path = tmp_path / "streams.yaml"
    path.write_text(text)
    result = run("plan", "--streams", str(path), "--cluster", str(cluster_file))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert f"error: {path}" in result.stderr
    assert expected in result.stderr, result.stderr
    assert result.stdout == ""


def test_every_problem_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(manifest("a", fps=0) + "---\n" + manifest("b", bodyTimeMs=-1))
    (tmp_path / "c.yaml").write_text(
        "nodes:\n  - name: n\n    gpus: [{index: 0, product: T4, memoryMiB: 0}]\n"
    )
    result = run(
        "plan", "--streams", str(tmp_path / "s.yaml"), "--cluster", str(tmp_path / "c.yaml")
    )
    assert result.returncode == 2
    assert "default/a: spec.fps" in result.stderr
    assert "default/b: spec.bodyTimeMs" in result.stderr
    assert "c.yaml: nodes[0].gpus[0].memoryMiB: Input should be greater than 0" in result.stderr


def test_missing_file_and_half_given_inputs_are_clear(tmp_path: Path, cluster_file: Path) -> None:
    result = run("plan", "--streams", str(tmp_path / "nope.yaml"), "--cluster", str(cluster_file))
    assert result.returncode == 2
    assert "nope.yaml: cannot read: No such file or directory" in result.stderr
    result = run("plan", "--streams", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "give both --streams and --cluster" in result.stderr


def test_bad_settings_are_refused() -> None:
    result = run("plan", "--utilization-cap", "1.5")
    assert result.returncode == 2
    assert "utilization cap must be in (0, 1]" in result.stderr
    result = run("plan", "--utilization-cap", "-1")
    assert result.returncode == 2
    assert "must be > 0" in result.stderr


def test_the_gpu_table_shows_the_models_time_where_profiles_measured_it() -> None:
    """Run 85's profile (13.56 ms solo compute) on one H100, 8 streams at 10 fps: MODEL TIME
    1.08 in the GPU's row and ``modelTimeShare`` in the JSON; without a measured solo compute
    (the examples' bodies by hand) neither the column nor the key."""
    h100 = cluster(("n", 1), product="NVIDIA-H100", memory=81559)
    cameras = [stream(f"cam-{i}", 10.0, body=None, model="graph") for i in range(8)]

    def shown(**solo_compute: float) -> tuple[str, dict]:
        graph = profile("graph", "NVIDIA-H100", 14.8, 15.92, costMs=12.19, **solo_compute)
        placed = plan(cameras, h100, [graph])
        console = Console(width=200, record=True)
        console.print(gpu_table(placed))
        return console.export_text(), plan_json(placed)["gpus"][0]

    text, gpu = shown(soloComputeMs=13.56)
    assert "MODEL TIME" in text and "1.08" in text
    assert gpu["modelTimeShare"] == 1.0848
    text, gpu = shown()
    assert "MODEL TIME" not in text and "modelTimeShare" not in gpu


def plan_files(tmp_path: Path, manifests: Iterable[str]) -> list[str]:
    """``stagger plan``'s --streams and --cluster flags, the streams written to one file
    beside the test's cluster.yaml."""
    streams, cluster_file = tmp_path / "streams.yaml", tmp_path / "cluster.yaml"
    streams.write_text("---\n".join(manifests))
    return ["--streams", str(streams), "--cluster", str(cluster_file)]


def test_charge_model_time_admits_what_the_models_fit_one_after_another(tmp_path: Path) -> None:
    """`stagger plan --charge-model-time` with run 86's profile (12.12 ms cost, 13.86 ms
    alone): 8 streams at 10 fps by their cost, 7 by their model's own time."""
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    (tmp_path / "profile.yaml").write_text(
        textwrap.dedent("""\
            apiVersion: stagger.dev/v1alpha1
            kind: ModelProfile
            metadata: {name: ssd-t4}
            spec: {model: ssd, gpuProduct: Tesla-T4, bodyTimeMs: 14.6, costMs: 12.12,
                   latencyMs: 15.6, soloComputeMs: 13.86}
            """)
    )
    files = plan_files(
        tmp_path,
        (
            manifest(f"cam{i}", fps=10).replace("bodyTimeMs: 45, latencyMs: 75", "memoryMiB: 1024")
            for i in range(10)
        ),
    )
    files += ["--profiles", str(tmp_path / "profile.yaml"), "-o", "json"]
    planned = run("plan", *files)
    assert planned.returncode == 1, planned.stderr  # the streams it could not place
    by_cost = json.loads(planned.stdout)
    by_model_time = json.loads(run("plan", *files, "--charge-model-time").stdout)
    assert (len(by_cost["shards"]), len(by_model_time["shards"])) == (8, 7)
    assert [g["modelTimeShare"] for g in (by_cost["gpus"][0], by_model_time["gpus"][0])] == [
        1.1088,
        0.9702,
    ]


def test_plan_keeps_an_mps_gpu_to_the_model_servers_it_takes(tmp_path: Path) -> None:
    """`stagger plan` on an MPS GPU: 30 light streams fit its budget, 24 its MPS server's
    contexts (the default), all 30 with --mps-servers-per-gpu 0."""
    (tmp_path / "cluster.yaml").write_text(
        CLUSTER.replace("memoryMiB: 15360}", "memoryMiB: 81559, sharingMode: mps}")
    )
    files = plan_files(
        tmp_path,
        (manifest(f"cam{i}", fps=5, bodyTimeMs=2, latencyMs=10, memoryMiB=1000) for i in range(30)),
    )
    planned = run("plan", *files, "-o", "json")
    assert planned.returncode == 1, planned.stderr
    result = json.loads(planned.stdout)
    assert len(result["shards"]) == 24
    assert "mpsServersPerGpu" in result["unplaced"][0]["reason"]
    negative = run("plan", *files, "--mps-servers-per-gpu", "-1")
    assert negative.returncode != 0 and negative.stdout == ""
    assert "MPS servers per GPU must not be negative (0: no limit), not -1" in negative.stderr
    unlimited = run("plan", *files, "-o", "json", "--mps-servers-per-gpu", "0")
    assert unlimited.returncode == 0, unlimited.stderr
    assert len(json.loads(unlimited.stdout)["shards"]) == 30
