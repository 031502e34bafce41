"""The local tritonserver launcher: a port lost to another process between picking it and
the server's bind (servers started side by side) costs a retry on fresh ports, not a run."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from stagger_testkit.localtriton import (
    LocalSidecar,
    LocalTriton,
    SidecarUnavailable,
    TritonExited,
    _listens,
)
from tests.factories import slot_contract

MODELS = Path(__file__).parent.parent / "models"


def test_a_server_that_loses_its_port_starts_again_on_fresh_ones(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        triton = LocalTriton(MODELS, http_port=port, log_file=tmp_path / "triton.log")
        with triton:
            assert triton.http_port != port and triton.ready()
    assert (
        f"socket '127.0.0.1:{port}' already in use" in (tmp_path / "triton.log").read_text().lower()
    )


def test_a_server_whose_port_another_server_holds_is_not_taken_for_ready(tmp_path: Path) -> None:
    """The other server answers ready on that port; the new one exits on its bind. It must
    start again on fresh ports, not pass for ready on the other's answer."""
    with LocalTriton(MODELS, log_file=tmp_path / "first.log") as first:
        second = LocalTriton(MODELS, http_port=first.http_port, log_file=tmp_path / "second.log")
        with second:
            assert second.http_port != first.http_port
            assert second.process is not None and second.process.poll() is None
            assert second.ready() and first.ready()


def test_a_sidecar_whose_port_another_sidecar_holds_is_not_taken_for_ready(tmp_path: Path) -> None:
    """The first sidecar answers /readyz on the second's HTTP port while the second exits on
    its bind: the second must start again on fresh ports, not pass for ready (seen on the
    GPU bench: a camera then reached another sidecar's metrics port)."""
    slot = tmp_path / "slot.json"
    slot.write_text(slot_contract().model_dump_json(by_alias=True))
    with (
        LocalTriton(MODELS, log_file=tmp_path / "triton.log") as triton,
        LocalSidecar("cam", slot, triton) as first,
    ):
        second = LocalSidecar("cam", slot, triton, http=first.http)
        with second:
            assert second.http != first.http
            assert second.process is not None and second.process.poll() is None
            for address in (second.http, second.grpc, second.metrics):
                assert _listens(second.process.pid, int(address.rsplit(":", 1)[1]))


def test_a_sidecar_that_never_becomes_ready_says_what_its_readyz_answered(
    tmp_path: Path,
) -> None:
    """Its Triton is not running: the sidecar answers 503 with the reason, and the timeout
    carries it (a bench run once failed with only "not ready after 60 s")."""
    slot = tmp_path / "slot.json"
    slot.write_text(slot_contract().model_dump_json(by_alias=True))
    absent = LocalTriton(MODELS)  # addresses on free ports, never started
    sidecar = LocalSidecar("cam", slot, absent, ready_timeout_s=3)
    with pytest.raises(SidecarUnavailable, match=r"not ready after 3 s \(/readyz answered 503: "):
        sidecar.start()
    assert sidecar.process is not None and sidecar.process.poll() is not None  # stopped


def test_a_model_that_fails_to_load_is_reported_at_once_with_the_server_s_words(
    tmp_path: Path,
) -> None:
    """Not retried as a lost port would be (it fails again every time): one attempt, and
    the error carries the end of the server's log, not only an exit code."""
    model = tmp_path / "models" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "X", data_type: TYPE_FP32, dims: [1] }]\n'
        'output [{ name: "Y", data_type: TYPE_FP32, dims: [1] }]\n'
    )
    (model / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('no weights here')\n"
    )
    log = tmp_path / "triton.log"
    triton = LocalTriton(tmp_path / "models", log_file=log)
    with pytest.raises(TritonExited) as raised:
        triton.start()
    assert not raised.value.port_taken
    assert "no weights here" in str(raised.value)  # the model's own error, from the log
    assert "failed to load all models" in str(raised.value)
    assert log.read_text().count("failed to load all models") == 1  # one attempt, no retry
