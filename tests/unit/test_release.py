"""The release workflow (.github/workflows/release.yml): valid for the forge's CI (its
published schema, check-jsonschema), clean under zizmor's security audit, and in step with
what `make images` builds and the charts the repository holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def tool(name: str) -> str:
    """A dev dependency's command, beside the Python running the tests."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is a dev dependency: make venv"
    return found


def test_the_workflow_matches_the_forges_schema() -> None:
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_workflow_passes_the_security_audit() -> None:
    done = subprocess.run(
        [
            tool("zizmor"),
            "--offline",
            "--config",
            str(ROOT / ".github" / "zizmor.yml"),
            "--format",
            "plain",
            str(WORKFLOW),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "No findings" in done.stdout, done.stdout + done.stderr


def test_the_workflow_releases_every_image_and_chart_the_repository_has() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    built = set(jobs["images"]["strategy"]["matrix"]["image"])
    containerfiles = {p.name.split(".")[0] for p in (ROOT / "images").glob("*.Containerfile")}
    assert built == containerfiles - {"base"}  # base: this machine's stand-in for BASE
    charts = {p.parent.name for p in (ROOT / "charts").glob("*/Chart.yaml")}
    steps = " ".join(str(s.get("run", "")) for s in jobs["charts"]["steps"])
    assert all(f"charts/{c}" in steps for c in charts), steps
    push = next(s for s in jobs["images"]["steps"] if s.get("id") == "push")["with"]
    assert push["sbom"] is True and push["push"] is True
    assert "VERSION=${{ needs.verify.outputs.version }}" in push["build-args"]
