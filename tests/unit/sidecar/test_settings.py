"""Gate settings: environment and flags, and a clear exit on bad ones."""

from __future__ import annotations

import pytest

from stagger.core.api import GatePolicy
from stagger_sidecar.__main__ import main
from stagger_sidecar.settings import GateSettings


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGGER_STREAM", "cam-1")
    monkeypatch.setenv("STAGGER_POLICY", "drop")
    monkeypatch.setenv("STAGGER_MAX_WAIT_MS", "40")
    s = GateSettings(_cli_parse_args=["--policy", "pass", "--http-address", "127.0.0.1:9000"])
    assert (s.stream, s.policy, s.http_address) == ("cam-1", GatePolicy.PASS, "127.0.0.1:9000")
    config = s.gate_config()
    assert config.max_wait_s == pytest.approx(0.040) and config.policy is GatePolicy.PASS


def test_an_empty_upstream_is_off_but_one_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGGER_TRITON_GRPC", "")
    assert GateSettings().triton_grpc is None
    monkeypatch.setenv("STAGGER_TRITON_HTTP", "")
    with pytest.raises(ValueError, match="set triton_http or triton_grpc"):
        GateSettings()


def test_bad_settings_exit_2_with_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["gate", "--http-address", "everywhere", "--policy", "sometimes"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert any("http_address" in line and "HOST:PORT" in line for line in lines)
    assert any("policy" in line for line in lines)


def test_an_unknown_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve"])
    assert exit_.value.code == 2
    assert "usage: stagger-sidecar {gate,agent}" in capsys.readouterr().err
