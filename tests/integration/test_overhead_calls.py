"""bench.sidecar_overhead.calls end to end: a real tritonserver, the sidecar as in a pod,
the uvloop relay, and the sidecar's callbacks timed in its own process."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("", "sidecar", "operator")),
}


def calls(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.sidecar_overhead.calls", *flags],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_calls_through_each_way_and_the_live_callbacks_are_timed() -> None:
    # --echo: a frame's calls go to add_one, which answers as large (one run covers both)
    done = calls("--calls", "5", "--time-callbacks", "--frame-bytes", "4096", "--echo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "5 gRPC calls of 4096 bytes to add_one" in out  # not stamp's one float
    for way in ("direct", "sidecar", "uvloop relay"):
        assert re.search(rf"^{way} +p50 [\d.]+ p99 [\d.]+ ms, adds ", out, re.M), out
    for callback in ("request", "header block", "gate's decision", "answer", "bookkeeping"):
        # 5 calls and 20 warm-up ones went through the sidecar: each callback ran for them
        found = re.search(
            rf"^  {re.escape(callback)} +median +([\d.]+) µs, p99 +([\d.]+) \((\d+) calls\)",
            out,
            re.M,
        )
        assert found and 0 < float(found[1]) <= float(found[2]) and int(found[3]) >= 25, out


def test_nonsense_counts_are_refused() -> None:
    done = calls("--calls", "0")
    assert done.returncode == 2 and "--calls at least 1" in done.stderr
