"""Re-planning recorded GPU runs under another cap (bench/gpu/replay.py), on the runs'
own result files: the product's planner, no GPU."""

from pathlib import Path

import pytest

from bench.gpu.replay import against_random, main, render, replay

RESULTS = Path(__file__).parents[2] / "bench" / "gpu" / "results"
STEADY = RESULTS / "2026-12-05-loop-time-slicing-graph-h100-final-gate.json"  # run 71
UNSTEADY = RESULTS / "2026-12-05-loop-time-slicing-graph-h100-unsteady-host.json"  # run 68
STALLING = RESULTS / "2026-12-05-loop-time-slicing-graph-h100-host-stalls.json"  # run 59


def test_a_run_replayed_at_its_own_cap_admits_what_it_admitted_and_a_cap_of_1_admits_one_more() -> (
    None
):
    """Run 71: the planner stopped at 7 under the 0.95 cap, where random phases held 8. The
    replay at that cap gives 7 again; at a cap of 1.0 it gives 8, random's N."""
    (r,) = replay(STEADY, 1.0)
    assert (r.cap, r.admitted, r.replayed) == (0.95, 7, 7)
    assert (r.at_other_cap, r.random_n, r.random_open) == (8, 8, False)
    assert against_random(r.admitted, r).startswith("**fewer**")
    assert against_random(r.at_other_cap, r) == "the same"


def test_where_random_phases_lost_frames_at_the_n_a_cap_admits_the_table_says_so() -> None:
    """Run 68, an unsteady body: random phases held 6 and lost 2.171 % at 8, which a cap of
    1.0 would admit."""
    (r,) = replay(UNSTEADY, 1.0)
    assert (r.admitted, r.at_other_cap, r.random_n) == (7, 8, 6)
    assert against_random(r.at_other_cap, r) == "more (random lost 2.171 % at 8)"
    assert "more than random's N in 1" in render([r], "cap 1.0")


def test_spread_headroom_lowers_the_cap_by_the_body_s_spread_per_period() -> None:
    """Run 68's profile: solo p99 less p50 of 13.51 ms in a 100 ms period leaves a cap of
    0.865, which admits 7 (7 x 12.13 ms of cost)."""
    (r,) = replay(UNSTEADY, 1.0, spread_headroom=True)
    assert (r.spread_ms, r.other_cap, r.at_other_cap) == (13.51, 0.865, 7)


def test_where_steady_keeps_the_own_cap_for_a_profile_today_s_rules_warn_of() -> None:
    """Run 59's profile was recorded before the stall check and warned of nothing; its raw
    sweep has 3 pairs that both stalled, so today's profile warns and the run keeps its own
    cap's 7 (random phases held 5), where a cap of 1.0 alone admits 8. Run 71's profile warns
    of nothing: the other cap applies, 8, random's N."""
    (stalling,) = replay(STALLING, 1.0, where_steady=True)
    assert stalling.warned
    assert (stalling.admitted, stalling.other_cap, stalling.at_other_cap) == (7, 0.95, 7)
    (anywhere,) = replay(STALLING, 1.0)
    assert anywhere.at_other_cap == 8
    (steady,) = replay(STEADY, 1.0, where_steady=True)
    assert not steady.warned
    assert (steady.other_cap, steady.at_other_cap, steady.random_n) == (1.0, 8, 8)
    assert "| no | 7 (0.95)" in render([steady], "cap 1.0 where the profile warns of nothing")


def test_a_mixed_fleet_is_not_replayed() -> None:
    assert list(replay(RESULTS / "2026-12-04-loop-mixed-mps.json", 1.0)) == []


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["/nonexistent.json", "--throughput-cap", "1.0"], "not a bench.gpu.loop result"),
        ([str(RESULTS / "README.md"), "--throughput-cap", "1.0"], "JSONDecodeError"),
        ([str(STEADY), "--throughput-cap", "1.5"], "must be in (0, 1]"),
        ([str(RESULTS / "2026-12-04-loop-mixed-mps.json"), "--throughput-cap", "1.0"], "none of"),
    ],
)
def test_bad_input_is_refused_clearly(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert says in capsys.readouterr().err
