"""`make pytest` runs the integration modules named in QUIET_MODULES with the CPU to
themselves; a renamed module would drop out of that session silently and run its timing
beside the rest."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import QUIET_MODULES


def test_every_quiet_module_is_an_integration_test_module() -> None:
    here = Path(__file__).parents[1] / "integration"
    missing = sorted(m for m in QUIET_MODULES if not (here / f"{m}.py").is_file())
    assert not missing, f"QUIET_MODULES names no such module: {missing}"
