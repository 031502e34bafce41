"""The keeper's release-lag metric: how late after its release time the sidecar forwarded
a held request (its own timer and event-loop lag), on an injected clock."""

from __future__ import annotations

import pytest

from stagger.core.telemetry import RELEASE_LAG
from stagger_sidecar.gate import Gate, GateConfig
from stagger_sidecar.keeper import Coordination, Keeper
from stagger_sidecar.ledger import LocalLedger
from stagger_sidecar.metrics import GateMetrics
from tests.factories import slot_contract

T = 1_800_000_000.0  # a whole number of 100 ms periods from the contract's epoch


def keeper_with(now: list[float], timer_lag_s: float, coordinated: bool = False) -> Keeper:
    gate = Gate(GateConfig())
    gate.load(slot_contract("a", offset_ms=30, body_ms=10), T)
    gate.load(slot_contract("b", offset_ms=35, body_ms=10), T)

    async def late_timer(seconds: float) -> None:  # a timer that fires this much late
        now[0] += seconds + timer_lag_s

    return Keeper(
        gate,
        GateMetrics(),
        max_inflight=8,
        clock=lambda: now[0],
        sleep=late_timer,
        coordination=Coordination(LocalLedger(0.002), 0.002) if coordinated else None,
    )


def lag(keeper: Keeper, stream: str, suffix: str) -> float | None:
    labels = {"namespace": "ns", "stream": stream, "shard": "0", "model": "m"}
    return keeper.metrics.registry.get_sample_value(RELEASE_LAG + suffix, labels)


async def test_a_held_request_forwarded_late_counts_its_lag() -> None:
    now = [T + 0.010]  # 20 ms before a's slot
    keeper = keeper_with(now, timer_lag_s=0.004)
    ticket = await keeper.admit("a", "m")
    assert ticket.released == pytest.approx(T + 0.034, abs=1e-6)  # Unix seconds: 0.2 µs steps
    assert lag(keeper, "a", "_count") == 1
    assert lag(keeper, "a", "_sum") == pytest.approx(0.004, abs=1e-6)  # Unix seconds: 0.2 µs steps
    assert lag(keeper, "a", "_bucket") is None  # buckets carry `le`: read one
    labels = {"namespace": "ns", "stream": "a", "shard": "0", "model": "m", "le": "0.002"}
    assert keeper.metrics.registry.get_sample_value(RELEASE_LAG + "_bucket", labels) == 0


async def test_a_request_that_arrives_in_its_slot_is_not_held_and_has_no_lag() -> None:
    now = [T + 0.031]
    keeper = keeper_with(now, timer_lag_s=0.004)
    ticket = await keeper.admit("a", "m")
    assert ticket.released == now[0]
    assert lag(keeper, "a", "_count") is None


async def test_a_coordinated_hold_waits_on_purpose_and_is_not_counted_as_lag() -> None:
    now = [T + 0.030]
    keeper = keeper_with(now, timer_lag_s=0.0, coordinated=True)
    await keeper.admit("a", "m")  # goes at its slot; its 10 ms body holds b
    now[0] = T + 0.033
    b = await keeper.admit("b", "m")
    assert b.released > T + 0.035  # held past its slot by the ledger, not by a late timer
    assert lag(keeper, "b", "_count") is None
