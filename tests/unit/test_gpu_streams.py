"""The GPU streams benchmark's model repository (bench/gpu/streams.py): what each stream's
tritonserver loads, eager or with the detector's body as a CUDA graph."""

from pathlib import Path

import pytest

from bench.gpu.calibrate import MODELS
from bench.gpu.streams import (
    GPU_MEMORY_FOR_MODELS,
    NO_MPS,
    model_env,
    model_repository,
    parse_args,
)


def parameter(config: str, key: str) -> str:
    marker = f'key: "{key}", value: {{ string_value: "'
    start = config.index(marker) + len(marker)
    return config[start : config.index('"', start)]


@pytest.mark.parametrize("under_mps", [False, True])
def test_the_model_processes_on_a_gpu_split_its_memory_and_keep_off_mps_unless_asked(
    under_mps: bool,
) -> None:
    # Run 50: twelve servers of two models each loaded at once, one cuDNN search took
    # 17.5 GiB, and the next model's start found 20 MiB wanting.
    envs = [model_env(2, 24, under_mps=under_mps) for _ in range(24)]
    shares = [float(env["STAGGER_GPU_MEMORY_SHARE"]) for env in envs]
    assert sum(shares) == pytest.approx(GPU_MEMORY_FOR_MODELS, abs=1e-3)
    assert sum(shares) < 1.0  # room left for every process's CUDA context
    assert all(env["CUDA_VISIBLE_DEVICES"] == "2" for env in envs)
    assert ("CUDA_MPS_PIPE_DIRECTORY" in envs[0]) is not under_mps
    if not under_mps:
        assert envs[0]["CUDA_MPS_PIPE_DIRECTORY"] == NO_MPS


@pytest.mark.parametrize(("cuda_graphs", "expected"), [(False, "0"), (True, "1")])
def test_each_stream_s_detector_has_one_instance_and_the_asked_for_body(
    tmp_path: Path, cuda_graphs: bool, expected: str
) -> None:
    repo = model_repository(tmp_path, MODELS, cuda_graphs=cuda_graphs)
    config = (repo / "detector" / "config.pbtxt").read_text()
    assert "count: 1," in config
    assert parameter(config, "CUDA_GRAPHS") == expected
    assert (repo / "detector" / "1" / "network.py").is_file()  # model.py imports it
    # The bench's own copy: the repository it was made from is left as it was.
    assert parameter((MODELS / "detector" / "config.pbtxt").read_text(), "CUDA_GRAPHS") == "0"


def test_graphs_asked_of_a_model_without_the_parameter_is_an_error(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "detector").mkdir(parents=True)
    (models / "detector" / "config.pbtxt").write_text('backend: "python"\ncount: 2\n')
    with pytest.raises(ValueError, match="no CUDA_GRAPHS parameter"):
        model_repository(tmp_path / "run", models, cuda_graphs=True)


def test_a_repository_left_in_the_directory_by_an_earlier_run_is_made_afresh(
    tmp_path: Path,
) -> None:
    model_repository(tmp_path, MODELS, cuda_graphs=True)
    repo = model_repository(tmp_path, MODELS, cuda_graphs=False)
    assert parameter((repo / "detector" / "config.pbtxt").read_text(), "CUDA_GRAPHS") == "0"


def test_a_run_of_mps_gpus_alone_needs_no_time_sliced_gpu(tmp_path: Path) -> None:
    args = parse_args(["--out", str(tmp_path), "--mps-counts", "15", "--mps-gpus", "0"])
    assert args.gpus == []  # not the time-sliced default, GPU 0, which MPS now has
    assert parse_args(["--out", str(tmp_path), "--counts", "7"]).gpus == [0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--counts", "7", "--gpus", "0", "--mps-counts", "15", "--mps-gpus", "0"], "either"),
        (["--counts", "7", "--graph-gpus", "1"], "in neither --gpus nor --mps-gpus"),
        (["--counts", "7", "--group", "0"], "--group must be at least 1"),
    ],
)
def test_contradictory_arguments_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), *argv])
    assert says in capsys.readouterr().err
