"""The simulator against the published study and against cases with known answers."""

import pytest

from stagger.core.placement import plan
from stagger.core.simulate import Phasing, SimShard, merge, simulate_gpu, simulate_plan
from tests.factories import cluster, stream


@pytest.fixture(scope="module")
def study() -> dict[Phasing, object]:
    # 4 SSD-ResNet streams at 4 fps on one T4: solo 75 ms, body 45 ms.
    p = plan([stream(f"cam{i}", 4, body=45, latency=75) for i in range(4)], cluster(("t4", 1)))
    return {ph: merge(list(simulate_plan(p, ph, 120).values())) for ph in Phasing}


def test_study_synchronized_lands_near_the_published_figures(study: dict) -> None:
    sync = study[Phasing.SYNCHRONIZED]
    assert sync.mean_ms == pytest.approx(268, rel=0.06)  # published: mean ~268 ms
    assert sync.drop_rate == pytest.approx(0.5, abs=0.04)  # published: ~50 % drops


def test_study_staggered_keeps_solo_latency_and_drops_nothing(study: dict) -> None:
    stag = study[Phasing.STAGGERED]
    assert stag.drop_rate == 0
    assert 70 <= stag.mean_ms <= 83  # published: mean ~83 ms, max 110 ms
    assert stag.max_ms <= 110


def test_random_phases_sit_between(study: dict) -> None:
    assert study[Phasing.STAGGERED].percentile(99) < study[Phasing.RANDOM].percentile(99)
    assert study[Phasing.RANDOM].percentile(99) < study[Phasing.SYNCHRONIZED].percentile(99)


def test_two_bodies_at_once_take_twice_as_long_with_ideal_sharing() -> None:
    shards = [SimShard(i, 1.0, 0.0, 0.010, 0.0, 0.0, jitter_cv=0.0) for i in range(2)]
    stats = simulate_gpu(shards, 5, contention=0.0)
    assert all(s.latencies_ms == pytest.approx([20.0] * 5) for s in stats.values())


def test_a_busy_shard_drops_the_arriving_frame() -> None:
    # 30 ms of work every 20 ms: every second frame finds the shard busy.
    stats = simulate_gpu([SimShard("a", 0.020, 0.0, 0.030, 0.0, 0.0, jitter_cv=0.0)], 1.0)
    (s,) = stats.values()
    assert s.frames == 50 and s.dropped == 25


def test_same_seed_same_result() -> None:
    p = plan([stream(f"s{i}", 10, body=20, latency=30) for i in range(3)], cluster(("n", 1)))
    assert simulate_plan(p, Phasing.RANDOM, 5, seed=3) == simulate_plan(
        p, Phasing.RANDOM, 5, seed=3
    )
