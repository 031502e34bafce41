"""The GPU benchmark's verdict on the issue's targets (bench/gpu/targets.py), on results
shaped as ``bench.gpu.streams`` writes them."""

from typing import Any

from bench.gpu.targets import render, verdict


def measured(p50: float, p99: float, drops: float = 0.0, before: float = 3.0) -> dict[str, Any]:
    return {
        "p50Ms": p50,
        "p99Ms": p99,
        "dropPercent": drops,
        "phases": {"beforeMs": [before, before + 1]},
    }


def gpu(mode: str, solo_p50: float, solo_p99: float, saturation: float, counts: dict) -> dict:
    return {
        "mode": mode,
        "solo": {"p50Ms": solo_p50, "p99Ms": solo_p99},
        "saturation": {"streams": 7, "inferencesPerSecond": saturation},
        "counts": {str(n): {"seconds": 50} | configs for n, configs in counts.items()},
    }


def run(*gpus: dict, fps: float = 10.0) -> dict[str, Any]:
    return {"fps": fps, "gpus": {str(i): g for i, g in enumerate(gpus)}}


def test_capacity_is_the_largest_n_without_drops_and_within_twice_solo() -> None:
    result = run(
        gpu(
            "time-slicing",
            25.0,
            30.0,
            79.0,
            {
                6: {"on-slot": measured(30, 45), "random": measured(40, 48)},
                7: {"on-slot": measured(35, 49.9), "random": measured(45, 50.1)},
            },
        ),
        gpu("time-slicing", 20.0, 30.0, 81.0, {8: {"on-slot": measured(60, 80, drops=0.03)}}),
    )
    [ts] = verdict(result)
    assert ts["saturationPerSecond"] == 81.0  # the mode's largest
    assert ts["targetStreams"] == 7  # floor(0.95 * 81 / 10)
    # on-slot: 7 holds (49.9 <= 2 x 25), 8 dropped; random: 7 misses 2 x solo by 0.1 ms
    assert ts["capacity"] == {"on-slot": 7, "random": 6}
    text = render([ts])
    assert "| on-slot | 7 | met |" in text
    assert "| random | 6 | not met |" in text


def test_an_n_measured_on_two_gpus_holds_only_where_it_held_on_both() -> None:
    held = {"on-slot": measured(30, 40)}
    missed = {"on-slot": measured(30, 40.1)}  # its GPU's solo is 20 ms: over 2 x solo
    result = run(
        gpu("mps", 25.0, 30.0, 160.0, {15: held}),
        gpu("mps", 20.0, 30.0, 160.0, {15: missed, 13: held}),
    )
    [mps] = verdict(result)
    assert mps["capacity"] == {"on-slot": 13}


def test_latency_is_judged_where_random_phases_still_hold_next_to_the_solo_floor() -> None:
    result = run(
        gpu(
            "mps",
            22.0,
            30.0,
            160.0,
            {
                13: {"random": measured(30, 44.0), "on-slot": measured(26, 22.0)},
                15: {"random": measured(50, 66.0, drops=0.01), "on-slot": measured(27, 33.0)},
            },
        )
    )
    [mps] = verdict(result)
    [entry] = mps["latency"]
    assert entry["n"] == 13  # random lost frames at 15
    assert entry["randomP99Ms"] == 44.0
    assert entry["floor"] == round(30.0 / 44.0, 3)  # a lone stream's p99 over random's
    assert entry["ratios"] == {"on-slot": 0.5}
    assert "| on-slot | 0.5 | met |" in render([mps])


def test_latency_says_so_when_random_phases_lost_frames_at_every_n() -> None:
    result = run(gpu("mps", 22.0, 30.0, 160.0, {16: {"random": measured(50, 90, drops=2)}}))
    [mps] = verdict(result)
    assert mps["latency"] == []
    assert "random phases lost frames at every N measured" in render([mps])


def test_cost_is_on_slot_minus_direct_before_the_model_and_end_to_end() -> None:
    result = run(
        gpu(
            "time-slicing",
            25.0,
            30.0,
            80.0,
            {
                6: {
                    "on-slot": measured(31.0, 45, before=3.9),
                    "direct": measured(30.0, 44, before=2.95),
                },
                7: {"on-slot": measured(40.0, 55, before=4.2), "direct": measured(38, 50)},
            },
        )
    )
    [ts] = verdict(result)
    assert ts["cost"] == [
        {"n": 6, "gpu": "0", "beforeModelP50Ms": 0.95, "endToEndP50Ms": 1.0},
        {"n": 7, "gpu": "0", "beforeModelP50Ms": 1.2, "endToEndP50Ms": 2.0},
    ]
    text = render([ts])
    assert "| 6 (0) | 0.95 ms | 1.0 ms | met |" in text
    assert "| 7 (0) | 1.2 ms | 2.0 ms | not met |" in text


def test_a_failed_gpu_is_left_out_and_modes_are_judged_apart() -> None:
    result = run(
        gpu("time-slicing", 25.0, 30.0, 80.0, {7: {"on-slot": measured(40, 49)}}),
        {"error": "RuntimeError('n15-on-slot: camera exited with 1')"},
        gpu("mps", 22.0, 30.0, 150.0, {14: {"on-slot": measured(30, 40)}}),
    )
    verdicts = {v["mode"]: v for v in verdict(result)}
    assert set(verdicts) == {"time-slicing", "mps"}
    assert verdicts["time-slicing"]["capacity"] == {"on-slot": 7}
    assert verdicts["mps"]["targetStreams"] == 14
    assert verdicts["mps"]["capacity"] == {"on-slot": 14}


def test_latency_is_not_judged_without_random_phases() -> None:
    result = run(gpu("mps", 22.0, 30.0, 160.0, {15: {"on-slot": measured(27, 33.0)}}))
    [mps] = verdict(result)
    assert mps["latency"] == []
    assert "latency: random phases were not measured" in render([mps])


def test_gpus_running_the_graphed_detector_are_judged_apart_against_their_own_saturation() -> None:
    eager = gpu("time-slicing", 25.0, 30.0, 79.0, {7: {"on-slot": measured(35, 49)}})
    graphed = gpu("time-slicing", 15.0, 18.0, 120.0, {11: {"on-slot": measured(20, 29)}})
    graphed["model"] = "cuda-graphs"
    verdicts = {v["mode"]: v for v in verdict(run(eager, graphed))}
    assert set(verdicts) == {"time-slicing", "time-slicing, cuda-graphs"}
    assert verdicts["time-slicing"]["targetStreams"] == 7  # floor(0.95 * 79 / 10)
    assert verdicts["time-slicing"]["capacity"] == {"on-slot": 7}
    graphs = verdicts["time-slicing, cuda-graphs"]
    assert graphs["targetStreams"] == 11  # floor(0.95 * 120 / 10), not the eager GPU's
    assert graphs["capacity"] == {"on-slot": 11}
    assert "### time-slicing, cuda-graphs" in render(list(verdicts.values()))
