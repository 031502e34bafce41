"""The alert rules with a real promtool (check and unit tests in
charts/stagger/alerts/stagger.rules.test.yaml), and the PrometheusRule the chart makes of
them: the same rules, unchanged."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.test_chart import CHART, render

ALERTS = CHART / "alerts"
PROMTOOL = os.environ.get("STAGGER_PROMTOOL") or str(
    Path.home() / ".cache" / "stagger" / "promtool-deb12/promtool"
)  # where `make promtool` puts it


@pytest.fixture(autouse=True)
def _promtool_is_there() -> None:
    # A real promtool is part of the suite: missing, the tests fail rather than skip.
    assert os.access(PROMTOOL, os.X_OK), f"no promtool at {PROMTOOL}: run `make promtool`"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, cwd=ALERTS, check=False
    )


def test_the_rules_are_valid() -> None:
    done = promtool("check", "rules", "stagger.rules.yaml")
    assert done.returncode == 0 and "SUCCESS: 6 rules found" in done.stdout, done.stdout


def test_the_rules_fire_when_they_should_and_only_then() -> None:
    done = promtool("test", "rules", "stagger.rules.test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_chart_ships_the_same_rules() -> None:
    assert not [o for o in render() if o["kind"] == "PrometheusRule"]  # off by default
    objects = render("metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.r=p")
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["r"] == "p"
    assert rule["spec"] == yaml.safe_load((ALERTS / "stagger.rules.yaml").read_text())
