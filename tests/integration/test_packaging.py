"""The base install serves the app side and the CLI's planner, nothing more: the wheel, in a
fresh virtual environment with no extras (the images install the extras:
tests/integration/test_images.py)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, cwd=cwd, timeout=600
    )


def test_the_base_wheel_plans_and_serves_the_slot_client_without_the_adapters(
    tmp_path: Path,
) -> None:
    built = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, ROOT)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("stagger-*.whl")
    packages = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {"stagger", "stagger_operator", "stagger_sidecar"} <= packages
    assert "stagger_testkit" not in packages  # test tooling stays in the checkout

    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    installed = run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    assert installed.returncode == 0, installed.stderr
    away = tmp_path / "elsewhere"  # not the checkout: only what was installed imports
    away.mkdir()

    probe = "import importlib.util as u, sys;print(*(bool(u.find_spec(m)) for m in sys.argv[1:]))"
    modules = ["stagger.client", "kopf", "kubernetes", "tritonclient", "click", "aiohttp"]
    found = run(python, "-c", probe, *modules, cwd=away)
    assert found.stdout.split() == ["True"] + ["False"] * 5, found.stdout + found.stderr

    planned = run(venv / "bin" / "stagger", "plan", cwd=away)
    assert planned.returncode == 0, planned.stderr
    assert "GPU" in planned.stdout

    profiled = run(venv / "bin" / "stagger", "profile", "--url", "127.0.0.1:1", "--model", "m")
    assert profiled.returncode != 0
    assert "pip install 'stagger[profile]'" in profiled.stdout + profiled.stderr

    operator = run(venv / "bin" / "stagger-operator", "--help", cwd=away)
    assert operator.returncode != 0 and "kopf" in operator.stderr  # its extra is missing
