"""Operator settings from flags and the environment (flags win)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from stagger_operator.settings import OperatorSettings


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGGER_UTILIZATION_CAP", "0.7")
    monkeypatch.setenv("STAGGER_GPU_BINDING", "resource")
    s = OperatorSettings(_cli_parse_args=["--gpu-binding", "dra", "--namespaces", '["a","b"]'])
    assert (s.utilization_cap, s.gpu_binding, s.namespaces) == (0.7, "dra", ["a", "b"])


def test_a_bad_setting_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGGER_MAX_MOVES", "0")
    with pytest.raises(ValidationError, match="max_moves"):
        OperatorSettings()


def test_the_entry_point_lists_its_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "stagger_operator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--utilization-cap", "--gpu-binding", "--max-moves", "--health-address"):
        assert flag in out


def test_the_entry_point_refuses_a_bad_setting_in_one_line_per_problem() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "stagger_operator", "--max-moves", "0", "--gpu-binding", "x"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in run.stderr
    assert lines[0].startswith("stagger-operator: ") and any("max_moves" in x for x in lines)


def test_the_sidecar_s_resources_come_from_the_environment_as_the_chart_writes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Helm's toJson of `sidecar.resources`: YAML's `cpu: 1` arrives as a number."""
    assert OperatorSettings().sidecar_resources.manifest() == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }
    monkeypatch.setenv(
        "STAGGER_SIDECAR_RESOURCES",
        '{"requests": {"cpu": 1, "memory": "128Mi"},'
        ' "limits": {"cpu": "1000m", "memory": "128Mi"}}',
    )
    assert OperatorSettings().sidecar_resources.manifest() == {
        "requests": {"cpu": "1", "memory": "128Mi"},
        "limits": {"cpu": "1000m", "memory": "128Mi"},
    }


@pytest.mark.parametrize(
    ("resources", "says"),
    [
        ('{"requests": {"cpu": "lots"}}', "requests.cpu: 'lots' is not a quantity"),
        ('{"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}', "limits.cpu (500m) is below"),
        ('{"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}}', "limits.memory"),
        ('{"requests": {"nvidia.com/gpu": "1"}}', "Input should be 'cpu', 'memory'"),
        ('{"request": {"cpu": "1"}}', "sidecar_resources.request"),
    ],
)
def test_sidecar_resources_the_api_server_would_refuse_stop_the_operator_at_start(
    monkeypatch: pytest.MonkeyPatch, resources: str, says: str
) -> None:
    """Not every shard's pod failing later, one by one: the setting, named, at start."""
    monkeypatch.setenv("STAGGER_SIDECAR_RESOURCES", resources)
    with pytest.raises(ValidationError, match="sidecar_resources") as e:
        OperatorSettings()
    assert says in str(e.value)
