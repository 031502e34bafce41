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
