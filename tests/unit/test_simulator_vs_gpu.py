"""bench.simulator.gpu: the simulator replayed on what the H200 runs recorded."""

import json

import pytest

from bench.simulator.gpu import RESULTS, compare, main

RUN_21 = RESULTS / "2026-12-04-loop-time-slicing-graph.json"  # a profile labelled exclusive


def test_a_recorded_run_is_replayed_with_its_own_figures_beside_the_simulated_ones() -> None:
    rows = compare(RUN_21, seconds=5, seeds=1)
    assert [(r.phasing, r.n) for r in rows] == [("loop", 8), ("random", 8), ("random", 9)]
    loop, random8, random9 = rows
    assert (loop.gpu_drop_percent, loop.gpu_p99_ms) == (0.0, 35.7)
    assert (random9.gpu_drop_percent, random9.gpu_p99_ms) == (8.464, 94.95)
    # the planner's table at 8 runs clear in the simulator, as it did on the GPU
    assert loop.sim.dropped == 0 and loop.sim.frames >= 8 * 49
    # 9 bodies costing 11.37 ms at 10 fps are more than the GPU serves: drops, as measured
    assert random9.sim.dropped > 0
    assert random8.sim.percentile(99) < random9.sim.percentile(99)


def test_runs_of_the_mixed_fleet_give_no_rows(capsys: pytest.CaptureFixture[str]) -> None:
    mixed = RESULTS / "2026-12-04-loop-mixed-mps-memory-share.json"
    assert compare(mixed, seconds=5, seeds=1) == []
    assert main([str(mixed), "--seconds", "1", "--seeds", "1"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # the table's head, no row


def test_every_recorded_identical_run_with_a_profile_is_replayed_at_each_n_it_measured() -> None:
    replayed = 0
    for path in sorted(RESULTS.glob("*loop*.json")):
        run = json.loads(path.read_text())
        if run.get("mixed"):
            continue
        rows = compare(path, seconds=0.5, seeds=1)
        expected = [
            int(n)
            for result in run["results"].values()
            if (result.get("calibration") or {}).get("bodyTimeMs")
            for n in result.get("random") or {}
        ]
        assert sorted(r.n for r in rows if r.phasing == "random") == sorted(expected), path.name
        replayed += bool(expected)
    assert replayed >= 15  # every identical run but the one whose profile found no knee
