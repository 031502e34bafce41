"""The local tritonserver launcher: a port lost to another process between picking it and
the server's bind (servers started side by side) costs a retry on fresh ports, not a run."""

from __future__ import annotations

import socket
from pathlib import Path

from stagger.localtriton import LocalTriton

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
