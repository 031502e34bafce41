"""bench.gpu.tails: where a configuration's tail sits in time, on camera logs shaped as
bench.gpu.camera writes them."""

import json
import tarfile
from pathlib import Path
from typing import Any

from bench.gpu.tails import by_configuration, read, render, render_sharing, report

T0 = 1_796_650_000.0


def camera(name: str, latencies_ms: list[float], fps: float = 10.0, at: float = 0.0) -> dict:
    """A camera's log: frames every 1 / fps from ``at``, each in the model for all but 4 ms
    of its latency."""
    captured = [T0 + at + k / fps for k in range(len(latencies_ms))]
    calls = [
        [c, c + 0.003, c + lat / 1e3 - 0.001, c + lat / 1e3]
        for c, lat in zip(captured, latencies_ms, strict=True)
    ]
    return {
        "name": name,
        "due": len(latencies_ms),
        "latencies_s": [x / 1e3 for x in latencies_ms],
        "captured_at": captured,
        "calls": calls,
    }


def loop_logs() -> dict[str, dict[str, Any]]:
    """20 s of two cameras 50 ms apart (bodies 16 ms: never overlapped) but for one second
    at 12 s where both answered in 60 ms (overlapped); a solo camera at 15 ms; a closed-loop
    saturation log (answers only)."""
    quiet = [16.0] * 200
    burst = quiet[:120] + [60.0] * 10 + quiet[130:]
    return {
        "graph-loop-n2-cam0.json": camera("cam-0", burst),
        "graph-loop-n2-cam1.json": camera("cam-1", burst, at=0.05),
        "solo-graph-cam0.json": camera("cam-0", [15.0] * 50),
        "saturation-graph-cam0.json": {"name": "cam-0", "answered": 400},
        "slot-cam-0-0.json": {"offsetTicks": 0},
    }


def test_a_burst_of_slow_frames_is_one_event_in_one_window_of_the_run() -> None:
    """The pooled p99 carries the burst (20 of 400 frames); 3 of the 4 five-second windows
    never saw it, the fourth did: one stage that long could have said either."""
    tails = report(loop_logs(), window_s=5.0)
    assert set(tails) == {"graph-loop-n2", "solo-graph"}
    t = tails["graph-loop-n2"]
    assert t["frames"] == 400 and t["p50Ms"] == 16.0 and t["p99Ms"] == 60.0
    assert t["windows"] == 4 and t["windowP99Ms"] == [16.0, 16.0, 60.0]
    assert t["windowsPastSlow"] == 1  # past 2 x the solo p50 of 15 ms
    assert (t["slowFrames"], t["slowEvents"], t["largestEventCameras"]) == (20, 1, 2)
    # the burst's 20 frames and the first after it, which starts while cam-1's last 60 ms
    # frame still runs: 21 of that window's 100
    assert t["overlappedFrames"] == [0.0, 0.21]
    assert tails["solo-graph"]["slowFrames"] == 0
    text = render(tails, 5.0)
    assert (
        "| graph-loop-n2 | 400 | 16.0 / 60.0 | 16.0 / 16.0 / 60.0 | 1 of 4 | 0%–21% | 20 (1, 2) |"
        in (text)
    )


def test_logs_are_read_from_a_directory_or_its_tarball(tmp_path: Path) -> None:
    for name, doc in loop_logs().items():
        (tmp_path / name).write_text(json.dumps(doc))
    packed = tmp_path / "cams.tar.xz"
    with tarfile.open(packed, "w:xz") as tar:
        for p in sorted(tmp_path.glob("*.json")):
            tar.add(p, arcname=p.name)
    assert read(tmp_path) == read(packed)
    assert set(by_configuration(read(packed))) == {"graph-loop-n2", "solo-graph"}


def test_sharing_is_told_per_configuration() -> None:
    """--sharing: the loop's two cameras, 50 ms apart, ran alone but for the burst at 12 s,
    where each 56 ms body had the other beside it for 6 ms (0.1 of it: none, to the nearest
    half), and the first quick frame after it had the last slow one beside it for half its
    12 ms."""
    table = render_sharing(loop_logs())
    assert "| graph-loop-n2 | 0 | 399 | 12.0 / 56.0 |" in table
    assert "| graph-loop-n2 | 0.5 | 1 | 12.0 / 12.0 |" in table
    assert "| solo-graph | 0 | 50 | 11.0 / 11.0 |" in table
    assert "saturation" not in table
