"""The camera simulator on a fake clock: captures on its phase or at its slots, one frame in
flight, frames that come due meanwhile dropped, refusals counted."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from stagger.client import SlotClient
from stagger.core.slotclock import SlotClock
from stagger_testkit.camerasim import (
    Camera,
    CameraLog,
    frames_due,
    lost_frames,
    phases,
    sharing,
    stalls,
    summarize,
)


class FakeTime:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.sent_at: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.t += s

    def service(self, seconds: float, fail: bool = False) -> Any:
        def send(frame: bytes) -> str:
            self.sent_at.append(self.t)
            self.t += seconds
            if fail:
                raise RuntimeError("503 busy: slot taken")
            return "boxes"

        return send


def camera(time: FakeTime, service_s: float, **kw: Any) -> Camera:
    return Camera(
        "cam",
        fps=kw.pop("fps", 10),
        send=time.service(service_s, fail=kw.pop("fail", False)),
        frames=itertools.repeat(b"jpeg"),
        clock=time.clock,
        sleep=time.sleep,
        **kw,
    )


def test_fast_answers_keep_every_frame_on_its_phase() -> None:
    time = FakeTime()
    log = camera(time, 0.02, phase_s=0.03).run(start=1000.0, seconds=1.0)
    assert time.sent_at == pytest.approx([1000.03 + k / 10 for k in range(10)])
    assert (log.due, log.answered, log.dropped) == (10, 10, 0)
    assert log.latencies_s == pytest.approx([0.02] * 10)


def test_an_answer_slower_than_the_frame_period_drops_the_frames_due_meanwhile() -> None:
    time = FakeTime()
    log = camera(time, 0.15).run(start=1000.0, seconds=1.0)
    # Frame 0 answers at 150 ms: frame 1 (100 ms) is gone, frame 2 (200 ms) goes.
    assert time.sent_at == pytest.approx([1000.0 + k / 10 for k in range(0, 10, 2)])
    assert (log.due, log.answered, log.dropped) == (10, 5, 5)


def test_refused_frames_count_as_dropped_with_their_reason() -> None:
    time = FakeTime()
    log = camera(time, 0.01, fail=True).run(start=1000.0, seconds=0.5)
    assert (log.due, log.answered, log.dropped) == (5, 0, 5)
    assert log.errors == {"503 busy: slot taken": 5}
    assert summarize(log.latencies_s, log.due)["dropPercent"] == 100.0


class FixedSlots(SlotClient):
    """A slot client whose contract is given, not read over HTTP."""

    def __init__(self, time: FakeTime, slots: SlotClock) -> None:
        super().__init__(clock=time.clock, sleep=time.sleep)
        self.slots = slots

    def refresh(self) -> None:
        self._chain = [self.slots]
        self._read_at = self.clock()


def test_slot_clock_capture_happens_lead_before_each_slot() -> None:
    time = FakeTime(1000.001)
    slots = SlotClock(epoch_s=0.0, tick_hz=1000, period_ticks=100, offset_ticks=40, body_ticks=20)
    log = camera(time, 0.02, slot_clock=FixedSlots(time, slots), lead_s=0.004).run(
        start=1000.0, seconds=1.0
    )
    # Slots at …x40 ms; the first after the start is 1000.04, the last before the end 1000.94.
    assert time.sent_at == pytest.approx([1000.036 + k / 10 for k in range(10)])
    assert log.answered == 10 and log.dropped == 0


def test_a_slot_clock_app_held_up_less_than_half_a_body_keeps_its_frame() -> None:
    """A slow answer (post-processing, a stall) that ends just after the next slot began:
    the app sends at once and the gate takes it within its grace; held up longer than half
    the body (20 ms here), it takes the slot after and that frame is lost."""

    def run(slow_s: float) -> tuple[list[float], CameraLog]:
        time = FakeTime(1000.001)
        services = iter([slow_s] + [0.02] * 20)

        def send(frame: bytes) -> str:
            time.sent_at.append(time.t)
            time.t += next(services)
            return "boxes"

        slots = SlotClock(
            epoch_s=0.0, tick_hz=1000, period_ticks=100, offset_ticks=40, body_ticks=20
        )
        cam = Camera(
            "cam",
            10,
            send=send,
            frames=itertools.repeat(b"jpeg"),
            clock=time.clock,
            sleep=time.sleep,
            slot_clock=FixedSlots(time, slots),
            lead_s=0.004,
        )
        return time.sent_at, cam.run(start=1000.0, seconds=1.0)

    sent, log = run(0.109)  # answered at 1000.145: the slot at 1000.14 began 5 ms ago
    assert sent[:3] == pytest.approx([1000.036, 1000.145, 1000.236])
    assert (log.answered, log.dropped) == (10, 0)
    sent, log = run(0.118)  # answered at 1000.154: 14 ms into a 20 ms body
    assert sent[:2] == pytest.approx([1000.036, 1000.236])
    assert (log.answered, log.dropped) == (9, 1)


def test_a_slot_that_begins_while_the_client_reads_the_sidecar_is_not_handed_out() -> None:
    """The first read of the clock takes 8 ms (a loaded node) and a slot begins meanwhile:
    the app gets the next one, not one it would reach the gate late for (past the grace,
    that request waited a period in a clean CI run)."""
    time = FakeTime(1000.035)
    slots = SlotClock(epoch_s=0.0, tick_hz=1000, period_ticks=100, offset_ticks=40, body_ticks=20)

    class SlowRead(FixedSlots):
        def refresh(self) -> None:
            time.t += 0.008
            super().refresh()

    assert SlowRead(time, slots).wait_for_slot() == pytest.approx(1000.14)


def test_slot_clock_with_a_slot_period_rounded_below_the_frame_period_takes_every_frame() -> None:
    """A 15 fps camera (66.7 ms) whose slot period the planner rounded to 50 ms (harmonic
    with a 100 ms table): each frame is captured at the first slot at or after its nominal
    time (0, 66.7, 133.3 ms -> slots 0, 100, 150 ms), all 15 a second, as the simulator
    assumes. Counting a period from the last capture instead took one frame per 100 ms."""
    time = FakeTime(999.99)
    slots = SlotClock(epoch_s=0.0, tick_hz=1000, period_ticks=50, offset_ticks=0, body_ticks=10)
    clock = FixedSlots(time, slots)
    log = camera(time, 0.02, fps=15.0, slot_clock=clock, lead_s=0.004).run(
        start=1000.0, seconds=1.0
    )
    assert (log.due, log.answered, log.dropped) == (15, 15, 0)
    slot_of = [math.ceil(k * 1000 / 15 / 50 - 1e-9) * 0.05 for k in range(15)]
    assert time.sent_at == pytest.approx([1000.0 + s - 0.004 for s in slot_of])


def test_summary_pools_latencies() -> None:
    summary = summarize([0.010, 0.020, 0.030, 0.040], due=5)
    assert summary["answered"] == 4 and summary["dropPercent"] == 20.0
    assert summary["p50Ms"] == 25.0 and summary["maxMs"] == 40.0
    assert summarize([], due=0)["p99Ms"] is None


def test_stalls_group_slow_frames_in_time_and_name_the_cameras_they_hit() -> None:
    a, b = CameraLog("cam-a", 10), CameraLog("cam-b", 10)
    a.captured_at, a.latencies_s = [0.0, 0.1, 5.0, 9.0], [0.02, 0.25, 0.3, 0.02]
    b.captured_at, b.latencies_s = [0.05, 0.2, 5.1], [0.02, 0.22, 0.02]
    events = stalls([a, b], threshold_s=0.1)
    assert events == [
        {"at": 0.1, "worstMs": 250.0, "cameras": ["cam-a", "cam-b"]},  # both at once
        {"at": 5.0, "worstMs": 300.0, "cameras": ["cam-a"]},  # one alone
    ]
    as_json = [{"name": "cam-a", "captured_at": [1.0], "latencies_s": [0.5]}]
    assert stalls(as_json, threshold_s=0.1) == [{"at": 1.0, "worstMs": 500.0, "cameras": ["cam-a"]}]


def test_a_window_is_due_the_frames_each_camera_s_own_grid_puts_in_it() -> None:
    """Run 108's settled window: 28.94 s at 10 fps is 289 frames by its length, but a camera
    whose grid has a point more in it captures 290; pooled, that answer hid a frame lost on
    another camera. Each camera's grid says what it was due, at the window's edges too."""
    start, period, since, until = 1000.0, 0.1, 1006.06, 1035.0
    short = frames_due(start + 0.01, period, since, until)  # 1006.11 to 1034.91
    full = frames_due(start + 0.09, period, since, until)  # 1006.09 to 1034.99
    assert (short, full) == (289, 290)
    # a grid point on an edge: in at the start, out at the end (capture >= since, < until)
    assert frames_due(start, period, 1006.0, 1007.0) == 10
    assert frames_due(start + 0.05, period, start, start + 0.05) == 0  # before its first
    # the camera due 290 loses one and the other answers all of its 289: one is lost,
    # where the window's length (289 each) read none
    answered = 289 + 289
    assert summarize([0.02] * answered, short + full)["dropPercent"] > 0
    assert summarize([0.02] * answered, 2 * 289)["dropPercent"] == 0


def test_lost_frames_name_the_answer_that_cost_each_and_where_its_time_went() -> None:
    """A camera at 10 fps whose frame at 0.2 s waited 70 ms before the model and was
    answered after the next capture: the frame at 0.3 s is lost, and the report points at
    the 0.2 s frame's wait. A frame whose model reported no times still says its latency."""
    held = {
        "name": "cam-a",
        "captured_at": [0.0, 0.1, 0.2, 0.4],
        "latencies_s": [0.02, 0.02, 0.105, 0.02],
        "calls": [
            [0.001, 0.003, 0.018, 0.020],
            [0.101, 0.103, 0.118, 0.120],
            [0.201, 0.271, 0.303, 0.305],
            [0.401, 0.403, 0.418, 0.420],
        ],
    }
    stand_in = {
        "name": "cam-b",
        "captured_at": [0.05, 0.35],
        "latencies_s": [0.26, 0.02],
        "calls": [[0.05, None, None, 0.31], [0.35, None, None, 0.37]],
    }
    assert lost_frames([held, stand_in], 0.1, since=0.0) == [
        {
            "camera": "cam-b",
            "afterS": 0.05,
            "missed": 2,
            "previousMs": {"latency": 260.0},
            "earlierMs": [],
        },
        {
            "camera": "cam-a",
            "afterS": 0.2,
            "missed": 1,
            "previousMs": {"latency": 105.0, "before": 70.0, "model": 32.0, "after": 2.0},
            "earlierMs": [
                {"latency": 20.0, "before": 2.0, "model": 15.0, "after": 2.0},
                {"latency": 20.0, "before": 2.0, "model": 15.0, "after": 2.0},
            ],
        },
    ]


def test_phases_split_each_frame_and_measure_what_other_streams_overlapped() -> None:
    calls = {
        # sent, model began, model ended, answered
        "cam-a": [[0.000, 0.002, 0.012, 0.013], [0.100, 0.101, 0.111, 0.112]],
        "cam-b": [[0.005, 0.007, 0.027, 0.028], [0.300, 0.301, None, None]],  # one failed
        "cam-c": [[0.050, 0.051, 0.061, 0.062]],
    }
    result = phases(calls)
    assert result["frames"] == 4
    assert result["beforeMs"][0] == pytest.approx(1.5)
    assert result["modelMs"][0] == pytest.approx(10.0)
    # a's first frame and b's overlap from 7 to 12 ms: 5 ms each of 50 ms of model time.
    assert result["overlappedFrames"] == 0.5
    assert result["overlappedShareOfModelTime"] == pytest.approx(0.2)
    assert result["modelMsAlone"][0] == pytest.approx(10.0)
    assert result["modelMsOverlapped"][0] == pytest.approx(15.0)
    worst = result["slowest"][0]
    assert worst == {
        "camera": "cam-b",
        "sent": 0.005,
        "beforeMs": 2.0,
        "modelMs": 20.0,
        "afterMs": 1.0,
        "overlappedMs": 5.0,
    }
    assert phases({"cam-a": [[0.0, None, None, 0.1]]}) == {"frames": 0}


def test_sharing_groups_frames_by_the_other_bodies_beside_them() -> None:
    """A frame with one other body all along, one with another for half of it, and two
    alone: the model's time by how many others ran beside it, to the nearest half."""
    calls = {
        # sent, model began, model ended, answered
        "cam-a": [[0.000, 0.001, 0.011, 0.012], [0.100, 0.101, 0.111, 0.112]],
        "cam-b": [[0.000, 0.001, 0.011, 0.012], [0.200, 0.201, 0.221, 0.222]],
        "cam-c": [[0.200, 0.211, 0.231, 0.232]],  # beside b's second frame from 11 to 21 ms
        "cam-d": [[0.300, 0.301, None, None]],  # failed: not counted
    }
    groups = sharing(calls)
    assert [(g["others"], g["frames"]) for g in groups] == [(0.0, 1), (0.5, 2), (1.0, 2)]
    assert groups[0]["modelP50Ms"] == pytest.approx(10.0)  # a's second frame, alone
    assert groups[1]["modelP50Ms"] == pytest.approx(20.0)  # b's and c's, half beside
    assert groups[2]["modelP99Ms"] == pytest.approx(10.0)  # a's and b's first, together
    assert sharing({"cam-a": [[0.0, None, None, 0.1]]}) == []
