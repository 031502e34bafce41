"""A camera simulator, for trying Stagger without cameras (examples/03-local-triton) and for
benchmarks (bench/gpu): frames at a set fps, one inference in flight, latency per frame.

A camera captures on its own clock: at ``start + phase + k / fps`` (fixed phase: what
Kubernetes gives today, all at phase 0 when the pods start together), or at its stream's
slot read from the sidecar (``SlotClient``: slot-clock capture). It sends each frame and
waits for the answer, then post-processes it; frames that come due meanwhile are dropped,
as a live camera's are. So ``dropped = frames due - frames sent``, whatever the cause: a
slow answer, a refusal by the gate, an error.
"""

from __future__ import annotations

import io
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stagger.client import SlotClient

Send = Callable[[bytes], Any]
"""Sends one frame and returns the answer; raises when the frame was refused or failed."""


@dataclass
class CameraLog:
    name: str
    fps: float
    due: int = 0
    latencies_s: list[float] = field(default_factory=list)
    """Capture to answer, per frame answered."""
    captured_at: list[float] = field(default_factory=list)
    """When each answered frame was captured (Unix s): lines stalls up across cameras."""
    errors: dict[str, int] = field(default_factory=dict)
    """Frames sent but refused or failed, by the error's first words."""

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def dropped(self) -> int:
        return max(0, self.due - self.answered)

    def summary(self) -> dict[str, Any]:
        return summarize(self.latencies_s, self.due) | {"errors": dict(self.errors)}


def stalls(
    logs: list[CameraLog] | list[dict[str, Any]], threshold_s: float, window_s: float = 0.5
) -> list[dict[str, Any]]:
    """Frames slower than ``threshold_s``, grouped into events ``window_s`` apart, each with
    the cameras it hit: one camera at a time points at that stream's path (its client,
    sidecar or Triton), all at once at the GPU or the host."""
    slow = sorted(
        (at, lat, name)
        for log in logs
        for name, pairs in [_frames(log)]
        for at, lat in pairs
        if lat > threshold_s
    )
    events: list[dict[str, Any]] = []
    for at, lat, name in slow:
        if events and at - events[-1]["last"] <= window_s:
            event = events[-1]
        else:
            event = {"at": at, "last": at, "worstMs": 0.0, "cameras": set()}
            events.append(event)
        event["last"] = at
        event["worstMs"] = max(event["worstMs"], round(lat * 1e3, 1))
        event["cameras"].add(name)
    return [
        {"at": round(e["at"], 3), "worstMs": e["worstMs"], "cameras": sorted(e["cameras"])}
        for e in events
    ]


def phases(calls: dict[str, list[list[float]]], slowest: int = 5) -> dict[str, Any]:
    """Where the answered frames' time went, from timestamps on one host's clock per call:
    ``[sent, model began, model ended, answered]`` (the model reports the middle two), by
    camera. Before the model began: client, sidecar, network, Triton's queue; in the model;
    after it: the answer's way back. And how much of each frame's model time the other
    streams' model time overlapped: what time-slicing or MPS had to share
    (``overlappedShareOfModelTime``: overlaps summed over all frames' model time, so 1.6
    means 1.6 other requests in the model alongside, on average)."""
    rows = _in_model(calls)
    if not rows:
        return {"frames": 0}
    began = np.array([r[0] for r in rows])
    ended = np.array([r[1] for r in rows])
    before = (began - np.array([r[2] for r in rows])) * 1e3
    inside = (ended - began) * 1e3
    after = (np.array([r[3] for r in rows]) - ended) * 1e3
    overlapped = _overlapped_ms(rows)
    alone = inside[overlapped == 0]
    shared = inside[overlapped > 0]

    def p(values: np.ndarray[Any, Any]) -> list[float] | None:
        return np.percentile(values, [50, 99]).round(2).tolist() if values.size else None

    worst = np.argsort(-(before + inside + after))[:slowest]
    return {
        "frames": len(rows),
        "beforeMs": p(before),
        "modelMs": p(inside),
        "afterMs": p(after),
        "modelMsAlone": p(alone),
        "modelMsOverlapped": p(shared),
        "overlappedFrames": round(float(shared.size / len(rows)), 3),
        "overlappedShareOfModelTime": round(float(overlapped.sum() / inside.sum()), 3),
        "slowest": [
            {
                "camera": rows[i][4],
                "sent": round(rows[i][2], 3),
                "beforeMs": round(float(before[i]), 1),
                "modelMs": round(float(inside[i]), 1),
                "afterMs": round(float(after[i]), 1),
                "overlappedMs": round(float(overlapped[i]), 1),
            }
            for i in worst
        ],
    }


def _in_model(calls: dict[str, list[list[float]]]) -> list[tuple[float, float, float, float, str]]:
    """Every answered call as (model began, model ended, sent, answered, camera), by start."""
    return sorted(
        (c[1], c[2], c[0], c[3], name)
        for name, cs in calls.items()
        for c in cs
        if len(c) == 4 and None not in c
    )


def _overlapped_ms(rows: list[tuple[float, float, float, float, str]]) -> np.ndarray[Any, Any]:
    """For each of :func:`_in_model`'s rows, the other cameras' model time within its own
    (ms): 2 ms of one other frame's and 3 of another's read 5."""
    began = np.array([r[0] for r in rows])
    ended = np.array([r[1] for r in rows])
    longest = float((ended - began).max()) if rows else 0.0
    overlapped = np.zeros(len(rows))
    for i, (b, e, *_, name) in enumerate(rows):
        # Sorted by start: only intervals starting within the longest one before b can reach it.
        for j in range(int(np.searchsorted(began, b - longest)), int(np.searchsorted(began, e))):
            if j != i and rows[j][4] != name:
                overlapped[i] += max(0.0, min(e, ended[j]) - max(b, began[j]))
    return overlapped * 1e3


SHARING_STEP = 0.5
"""``sharing`` groups frames by the other bodies beside them to the nearest half."""


def sharing(calls: dict[str, list[list[float]]]) -> list[dict[str, float]]:
    """How long the model took by how many other streams' bodies ran beside it: each
    answered frame's overlapped model time over its own (1.0: one other body all along, or
    two for half of it), to the nearest :data:`SHARING_STEP`, with the frames, the model's
    p50 and p99 (ms) in each group. Under MPS bodies run side by side, so what a second or
    a third body beside one costs it is the GPU's, not the table's (docs/benchmarks.md)."""
    rows = _in_model(calls)
    if not rows:
        return []
    inside = np.array([(r[1] - r[0]) * 1e3 for r in rows])
    beside = np.round(_overlapped_ms(rows) / np.maximum(inside, 1e-9) / SHARING_STEP)
    out = []
    for k in np.unique(beside):
        group = inside[beside == k]
        p50, p99 = np.percentile(group, [50, 99])
        out.append(
            {
                "others": float(k * SHARING_STEP),
                "frames": int(group.size),
                "modelP50Ms": round(float(p50), 2),
                "modelP99Ms": round(float(p99), 2),
            }
        )
    return out


def frames_due(origin: float, period_s: float, since: float, until: float) -> int:
    """Frames a fixed-phase camera's grid (``origin`` + k x ``period_s``, k >= 0) puts in
    [``since``, ``until``): what one window of its run was due. The window's length x fps
    is one short for a camera whose grid has a point more in it, whose extra answer then
    hides a frame lost elsewhere (run 108: 2 of 2,317 settled frames lost, read as 0)."""
    first = max(0, math.ceil((since - origin) / period_s - 1e-9))
    end = max(0, math.ceil((until - origin) / period_s - 1e-9))
    return max(0, end - first)


def lost_frames(logs: list[dict[str, Any]], period_s: float, since: float) -> list[dict[str, Any]]:
    """Where each camera lost frames: after which answered frame (its capture, ``afterS``
    from ``since``), how many were missed, and where that frame's own time went
    (``previousMs``: capture to answer, and of its call, before the model, in it and after
    it). A frame held at a gate shows a long ``before``; one slowed by the others on the
    GPU, a long ``model``. ``earlierMs``: the same for the two answered frames before it,
    oldest first (run 99: whether a camera's frames alternate between going at once and
    waiting for its slot). Frames lost before the first answer are not counted."""
    out: list[dict[str, Any]] = []
    for log in logs:
        name, frames = _frames(log)
        calls = sorted(c for c in log.get("calls", []) if len(c) == 4 and c[0] is not None)

        for i, ((at, latency), (following, _)) in enumerate(itertools.pairwise(frames)):
            missed = round((following - at) / period_s) - 1
            if missed < 1:
                continue
            out.append(
                {
                    "camera": name,
                    "afterS": round(at - since, 2),
                    "missed": missed,
                    "previousMs": _frame_times(calls, at, latency),
                    "earlierMs": [_frame_times(calls, *f) for f in frames[max(0, i - 2) : i]],
                }
            )
    return sorted(out, key=lambda e: e["afterS"])


def _frame_times(calls: list[list[float]], at: float, latency: float) -> dict[str, float]:
    """A frame captured at ``at``: capture to answer, and where its call's time went."""
    call = next((c for c in calls if c[0] >= at - 1e-6), None)  # the first sent after it
    times = {"latency": round(latency * 1e3, 1)}
    if call is not None and None not in call:  # the model reported its times
        sent, began, ended, answered = call
        times |= {
            "before": round((began - sent) * 1e3, 1),
            "model": round((ended - began) * 1e3, 1),
            "after": round((answered - ended) * 1e3, 1),
        }
    return times


def _frames(log: CameraLog | dict[str, Any]) -> tuple[str, list[tuple[float, float]]]:
    if isinstance(log, CameraLog):
        return log.name, list(zip(log.captured_at, log.latencies_s, strict=True))
    return log["name"], list(zip(log["captured_at"], log["latencies_s"], strict=True))


def summarize(latencies_s: list[float], due: int) -> dict[str, Any]:
    """p50, p99 and max latency in ms, and drops, of one camera or of several pooled."""
    ms = np.asarray(latencies_s, dtype=float) * 1e3
    p50, p99, top = np.percentile(ms, [50, 99, 100]).round(2).tolist() if ms.size else [None] * 3
    return {
        "frames": due,
        "answered": int(ms.size),
        "dropPercent": round(100 * max(0, due - ms.size) / due, 3) if due else 0.0,
        "p50Ms": p50,
        "p99Ms": p99,
        "maxMs": top,
    }


@dataclass
class Camera:
    name: str
    fps: float
    send: Send
    frames: Iterator[bytes]
    phase_s: float = 0.0
    """Capture offset from ``start`` (fixed-phase capture)."""
    slot_clock: SlotClient | None = None
    """Capture at the stream's slots instead (``lead_s`` before each)."""
    lead_s: float = 0.0
    post: Callable[[Any], None] | None = None
    """CPU work on each answer before the next capture (a detector's NMS, tracking, ...)."""
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _nominal: float = field(default=-math.inf, init=False, repr=False)
    """The nominal time of the frame last captured (its place on the camera's grid)."""

    def run(self, start: float, seconds: float) -> CameraLog:
        """Capture from ``start`` for ``seconds``; returns what happened to each frame."""
        log = CameraLog(self.name, self.fps)
        period = 1.0 / self.fps
        end = start + seconds
        log.due = math.floor(seconds * self.fps + 1e-9)
        if self.slot_clock is not None:
            self.slot_clock.refresh()  # read before the first capture, not during it
        earliest = start
        # frames due from ``start`` until ``end`` (a slot's lead may fall just before it)
        while (at := self._capture_time(start, period, earliest)) < end and self._nominal < end:
            frame = next(self.frames)
            try:
                answer = self.send(frame)
            except Exception as e:  # refused by the gate, a Triton error: the frame is lost
                kind = " ".join(str(e).split()[:4]) or type(e).__name__
                log.errors[kind] = log.errors.get(kind, 0) + 1
            else:
                log.latencies_s.append(self.clock() - at)
                log.captured_at.append(at)
                if self.post is not None:
                    self.post(answer)
            # The next frame on the camera's grid; the tolerance keeps timer jitter from
            # skipping one. Whether it is still capturable is _capture_time's question.
            earliest = self._nominal + period - CAPTURE_TOLERANCE_S
        return log

    def _capture_time(self, start: float, period: float, earliest: float) -> float:
        """Sleep until the next capture at or after ``earliest``; returns its time. Frames
        are due on the camera's own grid (start + phase + k × period); on the slot clock
        each is captured ``lead_s`` before the first slot at or after its nominal time, so
        a slot period rounded below the frame period (a harmonic table) still takes every
        frame, not one per slot period after the last capture."""
        if self.slot_clock is None:  # a frame whose time has passed is lost
            earliest = max(self.clock(), earliest)
            k = max(0, math.ceil((earliest - start - self.phase_s) / period - 1e-9))
            self._nominal = at = start + self.phase_s + k * period
            if (delay := at - self.clock()) > 0:
                self.sleep(delay)
            return at
        # on the slot clock a frame is lost only when its slot has passed
        k = max(0, math.ceil((earliest - start) / period - 1e-9))
        due = start + k * period - self.lead_s  # a slot up to the lead before it may take it
        if (delay := due - self.clock()) > 0:
            self.sleep(delay)
        slot = self.slot_clock.wait_for_slot(self.lead_s, due=due)
        # the frame this slot serves: the last one due by then (later than k when late)
        self._nominal = start + math.floor((slot + self.lead_s - start) / period + 1e-9) * period
        return slot - self.lead_s


CAPTURE_TOLERANCE_S = 0.005


def synthetic_frames(width: int = 640, height: int = 360, quality: int = 80) -> Iterator[bytes]:
    """A moving gradient, JPEG-encoded when Pillow is installed (raw RGB otherwise)."""
    try:
        from PIL import Image  # noqa: PLC0415
    except ImportError:
        Image = None  # type: ignore[assignment]
    y, x = np.mgrid[0:height, 0:width]
    for k in itertools.count():
        rgb = np.stack([(x + 4 * k) % 256, (y + 2 * k) % 256, (x + y) % 256], -1)
        pixels = rgb.astype(np.uint8)
        if Image is None:
            yield pixels.tobytes()
            continue
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
        yield out.getvalue()


def video_frames(path: str, quality: int = 80) -> Iterator[bytes]:
    """Frames of a video file, JPEG-encoded, looping (needs OpenCV: ``opencv-python``)."""
    import cv2  # type: ignore[import-not-found]  # noqa: PLC0415

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f"cannot open video {path}")
    while True:
        ok, image = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = capture.read()
            if not ok:
                raise ValueError(f"no frames in video {path}")
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        yield bytes(jpeg)
