"""The gRPC relay's request path frame by frame, on captured transports and an injected
clock: how a request's DATA leaves for Triton, released at once or held to its slot."""

from __future__ import annotations

import itertools
import types
from typing import Any, cast

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    SettingsFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from stagger_sidecar.gate import Gate, GateConfig
from stagger_sidecar.grpc_proxy import (
    MODEL_INFER,
    PREFACE,
    GrpcConnection,
    HeaderBlocks,
    TritonSide,
    only_indexed,
)
from stagger_sidecar.keeper import Keeper
from stagger_sidecar.metrics import GateMetrics
from tests.factories import slot_contract

T = 1_800_000_000.0  # a period starts here; the stream's slot is 30-50 ms into it
MB = 1 << 20


class Captured:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data

    def writelines(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.sent += frame

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def relay(now: list[float]) -> tuple[GrpcConnection, Captured]:
    """A relay between an app and Triton, the clock at ``now[0]``; and Triton's side."""
    gate = Gate(GateConfig())
    gate.load(slot_contract("cam", offset_ms=30, body_ms=20), T)

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    keeper = Keeper(gate, GateMetrics(), max_inflight=8, clock=lambda: now[0], sleep=sleep)
    proxy: Any = types.SimpleNamespace(
        keeper=keeper, timeout_s=5.0, unreachable="", max_header_bytes=8192
    )
    connection = GrpcConnection(proxy)
    triton = Captured()
    connection.app = connection.to_app.transport = Captured()
    connection.to_triton.transport = triton
    return connection, triton


def request_frames(size: int) -> tuple[bytes, bytes, bytes]:
    """The app's opening (preface, SETTINGS, the call's HEADERS), one ModelInfer message
    of ``size`` tensor bytes in a single DATA frame (as gRPC writes them when Triton allows
    4 MB frames), and the message itself."""
    headers = hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", MODEL_INFER),
            (":authority", "triton"),
            ("content-type", "application/grpc"),
            ("stagger-stream", "cam"),
        ]
    )
    opening = (
        PREFACE
        + SettingsFrame(0).serialize()
        + HeadersFrame(1, data=headers, flags=["END_HEADERS"]).serialize()
    )
    request = service_pb2.ModelInferRequest(model_name="detector", id="f1")
    request.raw_input_contents.append(bytes(range(256)) * (size // 256))
    body = request.SerializeToString()
    message = b"\0" + len(body).to_bytes(4, "big") + body
    return opening, DataFrame(1, data=message, flags=["END_STREAM"]).serialize(), message


def frames(sent: bytearray) -> list[Frame]:
    """Every frame in ``sent`` (after the connection preface)."""
    out, pos = [], len(PREFACE)
    while pos < len(sent):
        frame, length = Frame.parse_frame_header(memoryview(sent[pos : pos + 9]))
        frame.parse_body(memoryview(sent[pos + 9 : pos + 9 + length]))
        out.append(frame)
        pos += 9 + length
    return out


def data_sent(triton: Captured) -> tuple[bytes, list[DataFrame]]:
    data = [f for f in frames(triton.sent) if isinstance(f, DataFrame)]
    return b"".join(f.data for f in data), data


async def test_a_released_request_goes_on_as_its_frame_arrives() -> None:
    """At its slot a request is released on its first bytes, and the rest follow as they
    come: the sidecar does not wait for the end of a 1 MB frame to start sending it."""
    connection, triton = relay([T + 0.035])
    connection.triton_data(bytearray(SettingsFrame(0, settings={5: 4 * MB}).serialize()))
    opening, data, message = request_frames(MB)
    connection.data_received(opening)
    for start in range(0, 512 * 1024, 64 * 1024):  # half the frame, as the socket gives it
        connection.data_received(data[start : start + 64 * 1024])

    sent, pieces = data_sent(triton)
    assert sent == message[: 512 * 1024 - 9]  # all of it that arrived, less the frame head
    assert not any("END_STREAM" in f.flags for f in pieces)
    assert max(len(f.data) for f in pieces) <= 64 * 1024  # as the socket gave them

    connection.data_received(data[512 * 1024 :])
    sent, pieces = data_sent(triton)
    assert sent == message
    assert "END_STREAM" in pieces[-1].flags
    assert connection.calls[1].pending  # released, waiting for Triton's answer


async def test_a_released_request_reaches_triton_as_the_apps_own_reads_not_copies() -> None:
    """Released at once, a request's bytes are written to Triton as slices of the reads the
    app's socket gave (each copy of a 1 MB frame cost 0.1 ms live, docs/benchmarks.md);
    the sidecar's own bytes are only the 9-byte frame heads before them."""
    connection, triton = relay([T + 0.035])
    written: list[bytes | memoryview] = []
    triton.writelines = written.extend  # type: ignore[method-assign]
    connection.triton_data(bytearray(SettingsFrame(0, settings={5: 4 * MB}).serialize()))
    opening, data, message = request_frames(MB)
    connection.data_received(opening)
    written.clear()
    reads = [data[start : start + 256 * 1024] for start in range(0, len(data), 256 * 1024)]
    for read in reads:
        connection.data_received(read)

    lent = [w for w in written if isinstance(w, memoryview)]
    assert b"".join(lent) == message  # the first read's too: gated in place
    assert {id(w.obj) for w in lent} == {id(read) for read in reads}
    assert all(len(w) == 9 for w in written if not isinstance(w, memoryview))
    assert connection.calls[1].pending  # one message, released


async def test_a_held_request_leaves_at_its_slot_in_frames_as_large_as_triton_takes() -> None:
    """Sent early, a request waits in the sidecar whole; at its slot it leaves in as few
    frames as Triton's SETTINGS allow."""
    now = [T + 0.020]  # 10 ms before the slot
    connection, triton = relay(now)
    connection.triton_data(bytearray(SettingsFrame(0, settings={5: 4 * MB}).serialize()))
    opening, data, message = request_frames(MB)
    connection.data_received(opening + data)
    assert data_sent(triton)[0] == b""  # held

    admission = connection.calls[1].admission
    assert admission is not None
    await admission
    assert now[0] >= T + 0.030  # released at the slot, not before
    sent, pieces = data_sent(triton)
    assert sent == message
    assert len(pieces) == 1
    assert "END_STREAM" in pieces[0].flags


async def test_a_request_split_over_frames_is_gated_once_and_relayed_whole() -> None:
    """gRPC may split a message over DATA frames of any size, down to a few bytes: the
    header is read across them and the message reaches Triton unchanged."""
    connection, triton = relay([T + 0.035])
    opening, _, message = request_frames(4096)
    connection.data_received(opening)
    cuts = [0, 3, 7, 40, 1000, len(message)]
    for a, b in itertools.pairwise(cuts):
        flags = ["END_STREAM"] if b == len(message) else []
        connection.data_received(DataFrame(1, data=message[a:b], flags=flags).serialize())
    sent, pieces = data_sent(triton)
    assert sent == message
    assert "END_STREAM" in pieces[-1].flags
    assert len(connection.calls[1].pending) == 1  # one message, one release


def goaway(sent: bytearray) -> GoAwayFrame:
    (frame,) = [f for f in frames(PREFACE + sent) if isinstance(f, GoAwayFrame)]
    return frame


async def test_a_frame_larger_than_triton_accepts_is_refused_on_its_header() -> None:
    """A frame head declaring 16 MB, where Triton advertised no more than 16 KB: the
    connection ends with FRAME_SIZE_ERROR at once, before any of the frame is buffered
    or forwarded, and what follows is ignored."""
    connection, triton = relay([T + 0.035])
    opening, _, _ = request_frames(1024)
    connection.data_received(opening)
    forwarded = len(triton.sent)
    huge = (1 << 24) - 1
    connection.data_received(huge.to_bytes(3, "big") + bytes([0, 0]) + (1).to_bytes(4, "big"))
    connection.data_received(b"x" * 65536)
    app = cast(Captured, connection.app)
    refusal = goaway(app.sent)
    assert refusal.error_code == 0x6  # FRAME_SIZE_ERROR
    assert b"16777215-byte frame exceeds SETTINGS_MAX_FRAME_SIZE 16384" in refusal.additional_data
    assert len(triton.sent) == forwarded and not connection.buf


async def test_a_header_block_over_the_limit_ends_the_connection() -> None:
    """HEADERS and CONTINUATIONs past ``max_header_bytes`` (8 KB here): GOAWAY
    ENHANCE_YOUR_CALM naming the setting, and the block is not kept."""
    connection, _ = relay([T + 0.035])
    connection.data_received(PREFACE + SettingsFrame(0).serialize())
    connection.data_received(HeadersFrame(1, data=b"\0" * 4096).serialize())
    for _ in range(2):
        connection.data_received(ContinuationFrame(1, data=b"\0" * 4096).serialize())
    refusal = goaway(cast(Captured, connection.app).sent)
    assert refusal.error_code == 0xB  # ENHANCE_YOUR_CALM
    assert b"STAGGER_HTTP_MAX_HEADER_BYTES" in refusal.additional_data
    connection.data_received(ContinuationFrame(1, data=b"\0" * 4096).serialize())
    assert len(connection.block) <= 3 * 4096


def test_only_blocks_that_name_table_entries_count_as_only_indexed() -> None:
    """RFC 7541: an indexed field's first byte has its top bit set; an index of 127 or more
    goes on in 7-bit groups. A literal, or a table size update, may change the table."""
    encoder = hpack.Encoder()
    fields = [(":path", MODEL_INFER), ("stagger-stream", "cam"), ("x-frame", "7")]
    first = encoder.encode(fields)  # literals, added to the dynamic table
    again = encoder.encode(fields)  # the same fields, by their indexes now
    assert not only_indexed(first)
    assert only_indexed(again)
    assert only_indexed(b"\xff\x00")  # index 127: 0x7f in the prefix, then 0
    assert only_indexed(b"\xff\x81\x01\x82")  # a multi-byte index, then index 2
    assert not only_indexed(b"\x3f\xe1\x1f")  # a dynamic table size update
    assert not only_indexed(b"\x82\x40\x01a\x01b")  # index 2, then a literal


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "stagger-stream", ":path"]),
                st.sampled_from(["1", "2", "cam", "x" * 40]),
            ),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([64, 4096]),
)
def test_remembered_header_blocks_decode_as_the_decoder_does(calls, table_size) -> None:
    """Whatever a client's encoder sends (literals that add to or evict from a small table,
    blocks repeated by index), the remembering decoder reads each block as hpack's own
    decoder does, in the same order."""
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size
    plain, remembering = hpack.Decoder(), HeaderBlocks()
    for fields in calls + calls:  # everything twice: the second time, mostly by index
        block = encoder.encode(fields)
        assert remembering.decode(block) == dict(plain.decode(block))


def test_a_warm_block_is_read_from_memory_not_decoded_again() -> None:
    encoder, blocks = hpack.Encoder(), HeaderBlocks()
    fields = [(":path", MODEL_INFER), ("stagger-stream", "cam")]
    blocks.decode(encoder.encode(fields))
    warm = encoder.encode(fields)
    decoded = blocks.decode(warm)
    calls = []
    blocks.decoder.decode = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    assert blocks.decode(warm) == decoded == dict(fields) and calls == []
    decoded["stagger-stream"] = "changed"  # the caller's copy, not the memory
    assert blocks.decode(warm)["stagger-stream"] == "cam"


async def test_the_app_has_its_answer_before_the_call_is_accounted() -> None:
    """Triton's trailers reach the app before the gate's and the metrics' bookkeeping for
    the call runs: that work is off the answer's way."""
    connection, _ = relay([T + 0.035])
    connection.triton_data(bytearray(SettingsFrame(0, settings={5: 4 * MB}).serialize()))
    opening, data, _ = request_frames(1024)
    connection.data_received(opening + data)
    app = cast(Captured, connection.app)
    seen_at_done: list[int] = []
    keeper = connection.keeper
    done = keeper.done
    keeper.done = lambda *a, **k: (seen_at_done.append(len(app.sent)), done(*a, **k))[1]  # type: ignore[method-assign]
    encoder = hpack.Encoder()
    answer = (
        HeadersFrame(
            1, data=encoder.encode([(":status", "200")]), flags=["END_HEADERS"]
        ).serialize()
        + DataFrame(1, data=b"\0\0\0\0\0").serialize()
        + HeadersFrame(
            1, data=encoder.encode([("grpc-status", "0")]), flags=["END_HEADERS", "END_STREAM"]
        ).serialize()
    )
    connection.triton_data(bytearray(answer))
    assert app.sent.endswith(answer)  # relayed as Triton sent it
    assert seen_at_done == [len(app.sent)]  # ... all of it before the bookkeeping ran


async def test_tritons_answer_goes_on_as_it_arrives_as_its_own_reads_not_copies() -> None:
    """A unary call's answer goes to the app as Triton's socket gives it: whole frames and
    each piece of a DATA frame as slices of the reads (a piece under a 9-byte head of its
    own), so a 1 MB answer does not wait in the sidecar for the rest of its frame."""
    connection, _ = relay([T + 0.035])
    triton = TritonSide(connection)
    triton.data_received(SettingsFrame(0, settings={5: 4 * MB}).serialize())
    opening, data, _ = request_frames(1024)
    connection.data_received(opening + data)
    app = cast(Captured, connection.app)
    written: list[bytes | memoryview] = []
    app.writelines = written.extend  # type: ignore[method-assign]
    encoder = hpack.Encoder()
    head = HeadersFrame(1, data=encoder.encode([(":status", "200")]), flags=["END_HEADERS"])
    message = b"\0" + MB.to_bytes(4, "big") + bytes(range(256)) * (MB // 256)
    body = DataFrame(1, data=message).serialize()
    trailers = HeadersFrame(
        1, data=encoder.encode([("grpc-status", "0")]), flags=["END_HEADERS", "END_STREAM"]
    ).serialize()
    reads = [head.serialize() + body[: 256 * 1024], body[256 * 1024 :], trailers]
    triton.data_received(reads[0])
    assert b"".join(written).endswith(body[9 : 256 * 1024])  # the frame's start, at once
    for read in reads[1:]:
        triton.data_received(read)

    sent = b"".join(written)
    answer = [f for f in frames(bytearray(PREFACE + sent)) if isinstance(f, DataFrame)]
    assert b"".join(f.data for f in answer) == message
    lent = [w for w in written if isinstance(w, memoryview)]
    assert {id(w.obj) for w in lent} == {id(read) for read in reads}
    assert all(len(w) == 9 for w in written if not isinstance(w, memoryview))  # heads only
    assert sent.endswith(trailers)
    assert not connection.calls  # answered and let go
