"""Re-planning recorded GPU runs under another cap (bench/gpu/replay.py), on the runs'
own result files: the product's planner, no GPU."""

from pathlib import Path

import pytest

from bench.gpu.replay import against_random, main, render, replay

RESULTS = Path(__file__).parents[2] / "bench" / "gpu" / "results"
STEADY = RESULTS / "2026-12-05-loop-time-slicing-graph-h100-final-gate.json"  # run 71
UNSTEADY = RESULTS / "2026-12-05-loop-time-slicing-graph-h100-unsteady-host.json"  # run 68
STALLING = RESULTS / "2026-12-05-loop-time-slicing-graph-h100-host-stalls.json"  # run 59


def test_a_steady_run_replayed_today_admits_random_phases_n_where_its_cap_admitted_one_fewer() -> (
    None
):
    """Run 71: the planner stopped at 7 under the 0.95 cap, where random phases held 8. The
    replay at that cap gives 7 again; its profile is steady, so today's product charges the
    same cost at a cap of 1.0 and admits 8, random's N."""
    (r,) = replay(STEADY)
    assert (r.cap, r.admitted, r.replayed) == (0.95, 7, 7)
    assert r.steady and r.todays_cost_ms == r.cost_ms == 11.99
    assert (r.today, r.random_n, r.random_open) == (8, 8, False)
    assert against_random(r.admitted, r).startswith("**fewer**")
    assert against_random(r.today, r) == "the same"
    assert r.at_other_cap is None


def test_an_unsteady_run_is_charged_a_margin_today_and_admits_what_the_old_cap_did() -> None:
    """Run 68, an unsteady body (solo p99 13.51 ms over p50): today's profile charges its
    12.13 ms a frame / 0.95, 12.77 ms, and the product admits 7 as the 0.95 cap did; a flat
    cap of 1.0 would admit 8, where random phases lost 2.171 %."""
    (r,) = replay(UNSTEADY, 1.0)
    assert not r.steady and r.todays_cost_ms == 12.77
    assert (r.admitted, r.today, r.at_other_cap, r.random_n) == (7, 7, 8, 6)
    assert against_random(r.at_other_cap or 0, r) == "more (random lost 2.171 % at 8)"
    table = render([r], "cap 1.0")
    assert "today's product at least random's N in 1, more in 1" in table
    assert "at cap 1.0 at least random's N in 1, more in 1" in table


def test_spread_headroom_lowers_the_cap_by_the_body_s_spread_per_period() -> None:
    """Run 68's profile: solo p99 less p50 of 13.51 ms in a 100 ms period leaves a cap of
    0.865, which admits 7 (7 x 12.13 ms of cost)."""
    (r,) = replay(UNSTEADY, 1.0, spread_headroom=True)
    assert (r.spread_ms, r.other_cap, r.at_other_cap) == (13.51, 0.865, 7)


def test_a_profile_recorded_before_the_stall_check_is_judged_by_it_today() -> None:
    """Run 59's profile was recorded before the stall check and warned of nothing; its raw
    sweep has 3 pairs that both stalled, so today's profile finds it unsteady and charges a
    margin: 7 (random phases held 5), where its recorded cost at a cap of 1.0 admits 8."""
    (stalling,) = replay(STALLING, 1.0)
    assert not stalling.steady
    assert (stalling.admitted, stalling.today, stalling.at_other_cap) == (7, 7, 8)
    assert "| no | 7 (0.95) | 7 |" in render([stalling])


def test_a_mixed_fleet_is_not_replayed() -> None:
    assert list(replay(RESULTS / "2026-12-04-loop-mixed-mps.json", 1.0)) == []


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["/nonexistent.json"], "not a bench.gpu.loop result"),
        ([str(RESULTS / "README.md")], "JSONDecodeError"),
        ([str(STEADY), "--throughput-cap", "1.5"], "must be in (0, 1]"),
        ([str(STEADY), "--spread-headroom"], "give one"),
        ([str(RESULTS / "2026-12-04-loop-mixed-mps.json")], "none of"),
    ],
)
def test_bad_input_is_refused_clearly(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert says in capsys.readouterr().err


def test_the_table_shows_how_much_of_a_period_the_admitted_bodies_take_alone() -> None:
    """Run 71's 7 bodies, 11.46 ms each alone in the model, take 0.802 of a 100 ms period,
    and the loop answered at 1.21 x solo; run 81's 8 at 12.49 ms take 0.999, and it answered
    at 2.81 x. A run that recorded no frame alone says nothing."""
    (steady,) = replay(STEADY)
    (piled,) = replay(RESULTS / "2026-12-06-loop-time-slicing-graph-h100-cap-1-default.json")
    assert (steady.alone_ms_per_period, steady.loop_p99_over_solo) == (0.802, 1.21)
    assert (piled.alone_ms_per_period, piled.loop_p99_over_solo) == (0.999, 2.81)
    (early,) = replay(RESULTS / "2026-12-03-loop-time-slicing-graph-5.json")
    assert early.alone_ms_per_period is None
    assert "| 1.21 | 0.802 | None |" in render([steady])  # before soloComputeMs


def test_the_table_shows_what_the_admitted_gpu_s_schedule_says_of_its_model_time() -> None:
    """Runs 82 and 85, one H100 each, both 8 admitted at about 12.1 ms cost: the profiles'
    solo compute (11.78 and 13.56 ms) put the GPU at 0.94 and 1.08 of each second, and the
    loops answered at 1.25 and 2.90 x solo. Under MPS there is no such share."""
    (fits,) = replay(RESULTS / "2026-12-06-loop-time-slicing-graph-h100-solo-compute.json")
    (full,) = replay(RESULTS / "2026-12-06-loop-time-slicing-graph-h100-job.json")
    assert (fits.model_time_share, fits.loop_p99_over_solo) == (0.9424, 1.25)
    assert (full.model_time_share, full.loop_p99_over_solo) == (1.0848, 2.9)
    (mps,) = replay(RESULTS / "2026-12-06-loop-mps-eager-h100-solo-compute.json")
    assert mps.model_time_share is None


def test_the_table_shows_what_charging_the_models_own_time_admits() -> None:
    """`chargeModelTime: true` against random phases' N, time-sliced runs with a solo
    compute: run 82's models fit the second (8, random's 8); run 85's do not (7, one fewer
    than random's 8); run 94's unsteady profile recommends a 14.9 ms body, shorter than its
    18.47 ms solo compute, which is charged in full (5, random's 5; capped at the body it
    was 6). Under MPS models overlap, and it changes nothing."""
    (fits,) = replay(RESULTS / "2026-12-06-loop-time-slicing-graph-h100-solo-compute.json")
    (full,) = replay(RESULTS / "2026-12-06-loop-time-slicing-graph-h100-job.json")
    (capped,) = replay(RESULTS / "2026-12-06-loop-time-slicing-eager-h100-job-idle-gpu.json")
    (mps,) = replay(RESULTS / "2026-12-06-loop-mps-eager-h100-solo-compute.json")
    assert [(r.today, r.charging_model_time, r.random_n) for r in (fits, full, capped)] == [
        (8, 8, 8),
        (8, 7, 8),
        (7, 5, 5),
    ]
    assert mps.charging_model_time is None
    table = render([fits, full, capped, mps])
    assert "| 7: **fewer** (8) |" in table
    assert (
        "of 3 with a solo compute (time-sliced), chargeModelTime admits at least random's N "
        "in 2, where the default does in 3"
    ) in table
