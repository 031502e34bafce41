import math

import pytest

from stagger.core.timebase import TICK_HZ, frame_period_ticks, ms_to_ticks_ceil

COMMON = [1, 2, 2.5, 5, 7.5, 10, 12.5, 15, 20, 24, 25, 29.97, 30, 60]


@pytest.mark.parametrize("fps", COMMON)
def test_every_common_rate_has_an_exact_integer_period(fps: float) -> None:
    period = frame_period_ticks(fps)
    assert period * fps == pytest.approx(TICK_HZ, rel=2e-6)


def test_ntsc_rate_is_exactly_1001_ticks() -> None:
    assert frame_period_ticks(29.97) == 1001


@pytest.mark.parametrize("fps", [7, 23.976, 59.94, 13.3])
def test_inexact_rates_round_down_so_slots_keep_up(fps: float) -> None:
    period = frame_period_ticks(fps)
    assert period <= TICK_HZ / fps < period + 1


@pytest.mark.parametrize("fps", [0, -1, math.nan, math.inf])
def test_invalid_rates_are_refused(fps: float) -> None:
    with pytest.raises(ValueError, match="positive finite"):
        frame_period_ticks(fps)


def test_bodies_round_up_never_under_reserving() -> None:
    assert ms_to_ticks_ceil(10.5) == 315
    assert ms_to_ticks_ceil(10.51) == 316
    assert ms_to_ticks_ceil(0.0) == 0
