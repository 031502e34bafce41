"""Capped exponential backoff with jitter, for retrying a reconcile that failed or whose
writes the API refused: the first retries come soon, a persistent fault is not hammered,
and replicas or operators that failed together do not retry in step."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base_s: float = 1.0
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """The delay before the next retry, counting this failure."""
        delay = self.delay(self.failures)
        self.failures += 1
        return delay

    def delay(self, failures: int) -> float:
        """After ``failures`` failures in a row: half of min(cap, base × 2^failures) plus a
        uniform share of the other half ("equal jitter": never zero, never in step)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(failures, 62))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def succeeded(self) -> None:
        self.failures = 0
