"""Retries back off exponentially to a cap, with jitter, and start over after a success."""

from __future__ import annotations

import random

from stagger_operator.backoff import Backoff


def test_delays_double_to_the_cap_within_their_jitter() -> None:
    b = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    ceilings = [min(60.0, 2.0**n) for n in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert max(delays) <= 60.0 and delays[-1] >= 30.0
    b.succeeded()
    assert 0.5 <= b.next_delay() <= 1.0


def test_replicas_that_failed_together_do_not_retry_in_step() -> None:
    first = [Backoff(rng=random.Random(seed)).next_delay() for seed in range(20)]
    assert len({round(d, 6) for d in first}) == 20


def test_a_long_outage_stays_at_the_cap() -> None:
    b = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(2))
    for _ in range(6):  # 1, 2, 4, 8, 16, 32 s ceilings
        b.next_delay()
    assert all(30.0 <= b.next_delay() <= 60.0 for _ in range(2000))  # no overflow either
