"""The gRPC relay in front of a real tritonserver: what a frame-level proxy must get right
beyond plain calls (big and compressed messages, refusals on a stream, its own timeouts,
calls that must not wait behind a held one, input beyond Triton's limits)."""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Any

import numpy as np
import tritonclient.grpc
import tritonclient.grpc.aio as grpcclient
from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame
from tritonclient.utils import InferenceServerException

from stagger.core.telemetry import DROPPED, FORWARDED
from stagger_sidecar.app import Sidecar
from stagger_sidecar.grpc_proxy import PREFACE
from stagger_testkit.localtriton import LocalTriton
from tests.integration.sidecar_fixtures import StartSidecar, metric, scrape

PERIOD, OFFSET = 0.100, 0.030  # tests.factories.slot_contract()


def client(sidecar: Sidecar) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{sidecar.ports['grpc']}")


def floats(values: np.ndarray[Any, Any]) -> grpcclient.InferInput:
    i = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
    i.set_data_from_numpy(values)
    return i


async def test_big_and_compressed_messages_match_triton_direct(
    triton: LocalTriton, start_sidecar: StartSidecar
) -> None:
    sidecar = await start_sidecar()
    via, direct = client(sidecar), grpcclient.InferenceServerClient(triton.grpc)
    big = np.arange(1_500_000, dtype=np.float32)  # 6 MB: many frames, flow control at work
    try:
        for values, compression in ((big, None), (big[:1000], "gzip"), (big[:10], "deflate")):
            inputs = [floats(values)]
            a = await via.infer("add_one", inputs, compression_algorithm=compression)
            b = await direct.infer("add_one", inputs, compression_algorithm=compression)
            assert np.array_equal(a.as_numpy("OUTPUT0"), b.as_numpy("OUTPUT0"))
            assert np.array_equal(a.as_numpy("OUTPUT0"), values + 1)
    finally:
        await via.close()
        await direct.close()
    samples = await scrape(sidecar)  # compressed ones were read and gated too
    assert metric(samples, FORWARDED, stream="cam", model="add_one") == 3


async def test_a_big_request_held_at_the_gate_reaches_triton_intact(
    start_sidecar: StartSidecar,
) -> None:
    """Held for 30 ms, a 6 MB request piles up in the sidecar (as much as the
    flow-control window lets the app send); it must leave again as frames Triton accepts."""
    sidecar = await start_sidecar()
    g = client(sidecar)
    big = np.arange(1_500_000, dtype=np.float32)
    try:
        for _ in range(2):
            await asyncio.sleep((OFFSET + 0.070 - time.time()) % PERIOD)  # 30 ms to a slot
            result = await g.infer("add_one", [floats(big)])
            assert np.array_equal(result.as_numpy("OUTPUT0"), big + 1)
    finally:
        await g.close()


async def test_a_refused_request_on_a_stream_gets_an_error_and_the_stream_goes_on(
    start_sidecar: StartSidecar,
) -> None:
    sidecar = await start_sidecar(policy="drop")
    url = f"127.0.0.1:{sidecar.ports['grpc']}"

    def run() -> list[tuple[str, Any]]:
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        c = tritonclient.grpc.InferenceServerClient(url)
        c.start_stream(callback=lambda result, error: answers.put((result, error)))

        def send(request_id: str, value: float) -> None:
            i = tritonclient.grpc.InferInput("INPUT0", [1], "FP32")
            i.set_data_from_numpy(np.array([value], dtype=np.float32))
            c.async_stream_infer("slow", [i], request_id=request_id)

        try:
            send("first", 1.0)
            send("second", 2.0)  # the first is still in flight: refused
            out = [answers.get(timeout=10), answers.get(timeout=10)]
            send("third", 3.0)
            out.append(answers.get(timeout=10))
        finally:
            c.stop_stream()
            c.close()
        return [
            (r.get_response().id, r.as_numpy("OUTPUT0").tolist())
            if e is None
            else ("error", e.message())
            for r, e in out
        ]

    answers = sorted(await asyncio.to_thread(run), key=lambda a: a[0])
    assert answers[1:] == [("first", [2.0]), ("third", [4.0])]
    assert answers[0][0] == "error" and "still in flight" in answers[0][1]
    samples = await scrape(sidecar)
    assert metric(samples, DROPPED, stream="cam", reason="busy") == 1
    assert metric(samples, FORWARDED, stream="cam", model="slow") == 2


async def test_triton_too_slow_is_a_deadline_error_and_the_connection_goes_on(
    start_sidecar: StartSidecar,
) -> None:
    sidecar = await start_sidecar(upstream_timeout_s=0.03)  # the "slow" model takes 60 ms
    g = client(sidecar)
    try:
        started = time.monotonic()
        try:
            await g.infer("slow", [floats(np.ones(1, dtype=np.float32))])
            raise AssertionError("expected a timeout")
        except InferenceServerException as e:
            assert e.status() == "StatusCode.DEADLINE_EXCEEDED"
            assert "did not answer within 0.03 s" in str(e.message())
        assert time.monotonic() - started < PERIOD + 0.03 + 0.5
        ok = await g.infer("add_one", [floats(np.ones(2, dtype=np.float32))])  # same connection
        assert ok.as_numpy("OUTPUT0").tolist() == [2.0, 2.0]
    finally:
        await g.close()
    samples = await scrape(sidecar)
    assert metric(samples, DROPPED, stream="cam", reason="timeout") == 1
    assert sidecar.keeper.inflight == 0


async def test_calls_go_on_while_a_request_waits_for_its_slot(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar()
    g = client(sidecar)
    try:
        # Arrive 55 ms after a slot start, so the request waits 45 ms for the next: long,
        # and leaving its app its share of the slack (else it would go at once, gate.py).
        await asyncio.sleep((OFFSET + 0.055 - time.time()) % PERIOD)
        held = asyncio.create_task(g.infer("stamp", [floats(np.zeros(1, dtype=np.float32))]))
        await asyncio.sleep(0.01)
        assert await g.is_model_ready("add_one")  # same connection, not held behind it
        assert not held.done()
        began = float((await held).as_numpy("OUTPUT0")[0])
        assert (began - OFFSET) % PERIOD < 0.010
    finally:
        await g.close()


async def read_frames(reader: asyncio.StreamReader, until: type[Frame]) -> list[Frame]:
    """Frames from the sidecar up to the first of type ``until`` (after Triton's preface)."""
    out: list[Frame] = []
    while not out or not isinstance(out[-1], until):
        head = await reader.readexactly(9)
        frame, length = Frame.parse_frame_header(memoryview(head))
        frame.parse_body(memoryview(await reader.readexactly(length)))
        out.append(frame)
    return out


async def test_a_frame_larger_than_triton_accepts_is_refused_before_it_is_buffered(
    start_sidecar: StartSidecar,
) -> None:
    """Against a real Triton: the app declares a frame of 16 MB - 1, more than Triton's
    SETTINGS allow. The sidecar answers GOAWAY FRAME_SIZE_ERROR on the 9-byte header, with
    no payload sent, so it holds none of it."""
    sidecar = await start_sidecar()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ports["grpc"])
    try:
        writer.write(PREFACE + SettingsFrame(0).serialize())
        settings = (await asyncio.wait_for(read_frames(reader, SettingsFrame), 5))[-1]
        triton_max = settings.settings.get(SettingsFrame.MAX_FRAME_SIZE, 16_384)
        assert triton_max < (1 << 24) - 1
        writer.write(((1 << 24) - 1).to_bytes(3, "big") + bytes([0, 0]) + (1).to_bytes(4, "big"))
        frames = await asyncio.wait_for(read_frames(reader, GoAwayFrame), 5)
        refusal = frames[-1]
        assert isinstance(refusal, GoAwayFrame) and refusal.error_code == 0x6
        assert f"exceeds SETTINGS_MAX_FRAME_SIZE {triton_max}".encode() in refusal.additional_data
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection closed
    finally:
        writer.close()
