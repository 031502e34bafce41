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


def test_the_simulator_sees_the_tail_turn_where_the_models_need_more_than_the_second() -> None:
    """A body alone takes the profile's soloComputeMs. Run 82's 8 streams need 0.94 of each
    second one at a time (11.78 ms x 80) and answered at p99 17.1 ms; run 86's need 1.11
    (13.86 ms x 80), where p99 went from 22.0 ms at 7 to 45.2 ms at 8. Timed by its body
    time (13.9 ms x 80 > 1), run 82 overlapped in the simulator too, at 24.7 ms."""
    fast = RESULTS / "2026-12-06-loop-time-slicing-graph-h100-solo-compute.json"
    slow = RESULTS / "2026-12-06-loop-time-slicing-graph-h100-one-fewer.json"
    (fast_loop,) = [r for r in compare(fast, seconds=30, seeds=2) if r.phasing == "loop"]
    at_8, at_7 = [r for r in compare(slow, seconds=30, seeds=2) if r.phasing == "loop"]
    assert (fast_loop.n, at_8.n, at_7.n) == (8, 8, 7)
    assert (fast_loop.gpu_p99_ms, at_8.gpu_p99_ms, at_7.gpu_p99_ms) == (17.06, 45.16, 22.04)
    latency = {
        r: json.loads(p.read_text())["results"]["graph"]["calibration"]["latencyMs"]
        for r, p in (("fast", fast), ("slow", slow))
    }
    assert fast_loop.sim.percentile(99) < 1.2 * latency["fast"]  # 13.9 ms solo at Triton
    assert at_7.sim.percentile(99) < 1.25 * latency["slow"]
    assert at_8.sim.percentile(99) > 1.5 * latency["slow"]  # the turn
    assert at_8.sim.dropped == at_7.sim.dropped == fast_loop.sim.dropped == 0


def test_the_followed_table_of_a_recorded_run_is_simulated_packed_and_spaced() -> None:
    """Run 100 (time-sliced, 8 cameras, the models' time 0.95 of the second): the follower's
    table for the bench's phases packs five slots at the reserved 11 ms; kept the model's
    own time (11.93 ms) apart, the worst camera waits longer and answers sooner. Under MPS
    (run 101) the rule keeps no spacing: one table. What a run measured stands beside the
    table it measured."""
    from bench.simulator.follow import compare as follow_compare
    from bench.simulator.follow import render

    ts = follow_compare(
        RESULTS / "2026-12-06-loop-time-slicing-graph-h100-job-at-slot-answers.json", 20.0, 2
    )
    assert ts is not None and ts["n"] == 8 and ts["share"] == pytest.approx(0.954, abs=1e-3)
    packed, spaced = ts["tables"]["reserved width"], ts["tables"]["model's own time"]
    assert spaced["longestWaitMs"] > packed["longestWaitMs"]
    assert spaced["modelP99Ms"] < packed["modelP99Ms"]
    assert spaced["worstCameraP99Ms"] < packed["worstCameraP99Ms"]
    mps = follow_compare(
        RESULTS / "2026-12-06-loop-mps-graph-h100-job-at-slot-answers.json", 20.0, 2
    )
    assert mps is not None and list(mps["tables"]) == ["reserved width"]
    assert "| time-slicing · 8 · 0.95 | model's own time |" in render([ts])
    assert packed["measuredP99Ms"] == 63.79 and spaced["measuredP99Ms"] is None
    # Run 104 measured both tables side by side: each measured p99 beside its own table.
    both = follow_compare(
        RESULTS / "2026-12-06-loop-time-slicing-graph-h100-job-spaced-beside-packed.json", 20.0, 2
    )
    assert both is not None
    assert [t["measuredP99Ms"] for t in both["tables"].values()] == [68.45, 57.84]


def test_under_mps_a_body_takes_the_model_s_time_alone_shared_at_its_cost() -> None:
    """Run 124 (MPS, 14 cameras on the planner's even table): bodies run side by side, each
    as long as the model alone (13.0 ms) and worth its cost (6.72 ms) of the GPU, so the
    loop's frames, every one beside another, measured 16.4 / 19.6 ms in the model. Taken
    as the body, the cost read 8.5 ms at p99: shorter than the model alone."""
    from bench.simulator import follow

    path = RESULTS / "2026-12-07-loop-mps-graph-h100-job-judged-after-answers-2.json"
    run = json.loads(path.read_text())
    found = follow.setting(run)
    assert found is not None
    s, measured = found[2], run["results"]["graph"]["loop"]["phases"]["modelMs"]
    assert (s.mode, s.n) == ("mps", 14)
    assert (s.body_s, s.cost_s) == pytest.approx((0.013, 0.00672))
    even = ([i * s.period // s.n for i in range(s.n)], [0.0] * s.n)
    sim = s.simulated(even, 10.0, 1)
    assert sim["modelP50Ms"] > s.body_s * 1e3  # never quicker than the model alone
    assert sim["modelP99Ms"] == pytest.approx(measured[1], rel=0.25)


def test_the_operator_s_table_is_set_against_random_phases_on_other_draws() -> None:
    """--draws (run 105, an H200): random phases' simulated tail moves with the draw, as
    the table's waits do; the bench's cameras are as bad a draw for random phases as for
    the table (simulated 59.1 ms at p99 where the run measured 68.7 ms; other draws lower),
    so the ratio issue 21 judges stays well above 0.6 x on the draws simulated."""
    from bench.simulator.follow import over_draws, render_draws

    row = over_draws(
        RESULTS / "2026-12-06-loop-time-slicing-graph-h200-job-spaced-beside-packed.json",
        4,
        15.0,
        1,
    )
    assert row is not None and row["n"] == 8 and row["measuredRandomP99Ms"] == 68.72
    assert len(row["ratios"]) == 4 and row["ratios"] == sorted(row["ratios"])
    assert row["randomP99Ms"][2] < row["benchRandomP99Ms"]  # the bench's draw is a bad one
    assert min(row["ratios"]) > 0.6 and row["benchRatio"] > 0.6
    assert "| time-slicing · 8 | 68.72 · " in render_draws([row])
    assert render_draws([row]).endswith("| 0 of 4 |")


def test_the_followed_table_simulation_refuses_a_file_that_is_no_result(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.simulator.follow import main as follow_main

    for bad, why in [
        (tmp_path / "none.json", "FileNotFoundError"),
        (RESULTS / "README.md", "JSONDecodeError"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            follow_main([str(bad)])
        assert exit_.value.code == 2
        assert f"{bad}: not a result of bench.gpu.loop: {why}" in capsys.readouterr().err


def test_a_search_over_tables_under_no_rule_is_set_beside_the_operator_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--search (run 120, MPS, 14 cameras): waits chosen camera by camera, with no rule
    against overlap, find a table whose worst camera answers sooner than the operator's in
    the simulator, judged on other seeds than the search's; still well above issue 21's
    0.6 x random phases' p99. The table reported is the one the search scored."""
    from bench.simulator import follow

    monkeypatch.setattr(follow, "SEARCH_WAITS_MS", (0, 3, 6, 9, 12))
    monkeypatch.setattr(follow, "SEARCH_ROUNDS", 2)
    path = RESULTS / "2026-12-07-loop-mps-graph-h100-job-slots-direct.json"
    row = follow.searched(path, 5.0, 1)
    assert row is not None and (row["mode"], row["n"]) == ("mps", 14)
    assert (row["measuredRandomP99Ms"], row["measuredTransparentP99Ms"]) == (49.83, 43.7)
    ours, best = row["operators"], row["best"]
    assert 0.6 < best["overRandom"] < ours["overRandom"]
    assert best["longestWaitMs"] == pytest.approx(max(best["waitsMs"]))
    found = follow.setting(json.loads(path.read_text()))
    assert found is not None
    s = found[2]
    phases = follow.bench_phases(s.n, s.fps, follow.LOOP_SEED + s.n)
    operators_waits = s.table(phases, s.spacing)[1]
    for i, w in enumerate(best["waitsMs"]):  # each camera's wait: one tried, or kept
        assert round(w, 6) in {0, 3, 6, 9, 12} or w == pytest.approx(operators_waits[i] * 1e3)
    # scored again on the search's own seed, the table reported is the one it kept
    kept = s.simulated(s.waited(phases, [w / 1e3 for w in best["waitsMs"]]), 5.0, 1)
    start = s.simulated(s.table(phases, s.spacing), 5.0, 1)
    assert kept["worstCameraP99Ms"] < start["worstCameraP99Ms"]
    table = follow.render_search([row])
    assert "| mps · 14 | 49.83 · " in table and table.endswith("| 43.7 |")


def test_the_search_and_the_draws_are_asked_one_at_a_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.simulator.follow import main as follow_main

    with pytest.raises(SystemExit) as exit_:
        follow_main(["--search", "--draws", "2"])
    assert exit_.value.code == 2
    assert "--search and --draws are two questions" in capsys.readouterr().err
