"""One version everywhere: the package, the CLI, the charts, the images' tags and labels,
the sidecar image the operator injects, and the changelog."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

from stagger import __version__
from stagger_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_package_and_the_cli_say_the_version() -> None:
    assert version("stagger") == __version__
    done = subprocess.run(
        [sys.executable, "-m", "stagger.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"stagger {__version__}"


def test_both_charts_carry_the_version_as_version_and_app_version() -> None:
    for chart in ("stagger", "stagger-crds"):
        meta = yaml.safe_load((ROOT / "charts" / chart / "Chart.yaml").read_text())
        assert (meta["version"], meta["appVersion"]) == (__version__, __version__), chart


def test_the_operator_injects_the_sidecar_of_its_own_version() -> None:
    assert OperatorSettings().sidecar_image == f"stagger/sidecar:{__version__}"


def test_images_are_tagged_and_labelled_with_the_package_version() -> None:
    """images/build reads the version where the package does, and passes it to both the
    tag and the OCI label (tests/integration/test_images.py checks the built labels)."""
    build = (ROOT / "images" / "build").read_text()
    assert "stagger/__init__.py" in build
    assert 'tag="$prefix/$name:$version"' in build
    assert '--build-arg VERSION="$version"' in build
    for containerfile in (ROOT / "images").glob("*.Containerfile"):
        text = containerfile.read_text()
        if "org.opencontainers.image.version" in text:
            assert 'org.opencontainers.image.version="${VERSION}"' in text, containerfile


def test_the_changelog_has_a_section_for_the_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d[^\]]*)\]", text, flags=re.MULTILINE)
    assert released and released[0] == __version__
