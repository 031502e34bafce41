"""The gRPC relay under arbitrary TCP segmentation: recorded multi-call HTTP/2 traffic,
re-chunked at random boundaries both ways, arrives unchanged (every call's header blocks
and message bytes, every control frame, in order) and both flow-control windows balance:
what the app sent in DATA is what Triton got plus what the sidecar gave back."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict

import hpack
from hyperframe.frame import (
    DataFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from stagger_sidecar.grpc_proxy import DATA as DATA_TYPE
from stagger_sidecar.grpc_proxy import END_STREAM as END_STREAM_FLAG
from stagger_sidecar.grpc_proxy import MODEL_INFER, PREFACE, SERVICE, WINDOW_UPDATE, TritonSide
from stagger_sidecar.grpc_proxy import PADDED as PADDED_FLAG
from tests.unit.sidecar.test_grpc_relay import Captured, T, frames, relay

MAX_FRAME = 16_384  # Triton's SETTINGS here: the app's frames are at most this


def app_traffic() -> tuple[bytes, list[int]]:
    """An app's connection: SETTINGS, three ModelInfer calls on one stream (one message
    spread over several frames, one with padding), a ServerReady call, PINGs and a
    WINDOW_UPDATE between them; and the ids of its calls."""
    encoder = hpack.Encoder()  # one encoder: later blocks index earlier ones

    def headers(sid: int, path: str) -> bytes:
        block = encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "triton"),
                ("content-type", "application/grpc"),
                ("stagger-stream", "cam"),
            ]
        )
        return HeadersFrame(sid, data=block, flags=["END_HEADERS"]).serialize()

    def message(size: int, tag: str) -> bytes:
        request = service_pb2.ModelInferRequest(model_name="detector", id=tag)
        request.raw_input_contents.append(bytes(i % 251 for i in range(size)))
        body = request.SerializeToString()
        return b"\0" + len(body).to_bytes(4, "big") + body

    out = bytearray(PREFACE + SettingsFrame(0).serialize())
    for sid, size in ((1, 40_000), (3, 100), (5, 20_000)):
        out += headers(sid, MODEL_INFER)
        data = message(size, f"r{sid}")
        pieces = [data[i : i + MAX_FRAME - 300] for i in range(0, len(data), MAX_FRAME - 300)]
        for k, piece in enumerate(pieces):
            flags = ["END_STREAM"] if k == len(pieces) - 1 else []
            frame = DataFrame(sid, data=piece, flags=flags)
            if sid == 5:
                frame.flags.add("PADDED")
                frame.pad_length = 200
            out += frame.serialize()
        out += PingFrame(0, opaque_data=f"app{sid}".encode().ljust(8, b".")).serialize()
    out += headers(7, SERVICE + "ServerReady")
    out += DataFrame(7, data=b"\0\0\0\0\0", flags=["END_STREAM"]).serialize()
    out += WindowUpdateFrame(0, window_increment=1 << 20).serialize()
    return bytes(out), [1, 3, 5, 7]


def triton_traffic(sids: list[int]) -> bytes:
    """Triton's side: its SETTINGS (4 MB frames would be allowed; it keeps 16 KB here), then
    per call a response header block, one message of 3 KB (reads may cut it anywhere) and
    the trailers."""
    encoder = hpack.Encoder()
    out = bytearray(SettingsFrame(0, settings={5: MAX_FRAME}).serialize())
    for sid in sids:
        out += HeadersFrame(
            sid,
            data=encoder.encode([(":status", "200"), ("content-type", "application/grpc")]),
            flags=["END_HEADERS"],
        ).serialize()
        message = bytes(range(256)) * 12
        out += DataFrame(sid, data=b"\0" + len(message).to_bytes(4, "big") + message).serialize()
        out += HeadersFrame(
            sid, data=encoder.encode([("grpc-status", "0")]), flags=["END_HEADERS", "END_STREAM"]
        ).serialize()
    return bytes(out)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def parsed(sent: bytes) -> list:
    """The frames of one direction's bytes (the app's start with the connection preface)."""
    return frames(bytearray(sent if sent.startswith(PREFACE) else PREFACE + sent))


def by_stream(sent: bytes) -> tuple[dict[int, bytes], list[tuple[str, int]], list[list]]:
    """DATA payloads per stream, control frames in order, decoded header lists in order."""
    data: dict[int, bytes] = defaultdict(bytes)
    control: list[tuple[str, int]] = []
    blocks = []
    decoder = hpack.Decoder()
    for f in parsed(sent):
        if isinstance(f, DataFrame):
            data[f.stream_id] += f.data
            if "END_STREAM" in f.flags:
                control.append(("end", f.stream_id))
        elif isinstance(f, HeadersFrame):
            blocks.append([(k, v) for k, v in decoder.decode(f.data)])
            if "END_STREAM" in f.flags:
                control.append(("end", f.stream_id))
        else:
            control.append((type(f).__name__, f.stream_id))
    return dict(data), control, blocks


def flow(sent: bytes, stream: int | None = None) -> int:
    """Flow-controlled bytes in ``sent``'s DATA frames (padding included)."""
    return sum(
        len(f.data) + (f.pad_length + 1 if "PADDED" in f.flags else 0)
        for f in parsed(sent)
        if isinstance(f, DataFrame) and stream in (None, f.stream_id)
    )


def window_given_back(sent: bytes, stream: int) -> int:
    return sum(
        f.window_increment
        for f in parsed(sent)
        if isinstance(f, WindowUpdateFrame) and f.stream_id == stream
    )


def raw_frames(sent: bytes, leave_out: int | None = None) -> list[bytes]:
    """``sent`` split into frames as bytes, untouched (frames of type ``leave_out`` left out)."""
    out, pos = [], 0
    while pos < len(sent):
        end = pos + 9 + int.from_bytes(sent[pos : pos + 3], "big")
        if sent[pos + 3] != leave_out:
            out.append(sent[pos:end])
        pos = end
    return out


def answers(sent: bytes) -> list[tuple[object, ...]]:
    """Triton's frames as the app must see them: each frame's bytes, but a stream's run of
    DATA frames as one (payload, END_STREAM): the sidecar passes an answer's DATA frame on
    in the pieces it reads, each a frame of its own. Its own WINDOW_UPDATEs left out."""
    out: list[tuple[object, ...]] = []
    for frame in raw_frames(sent, leave_out=WINDOW_UPDATE):
        ftype, flags, sid = frame[3], frame[4], int.from_bytes(frame[5:9], "big")
        if ftype != DATA_TYPE or flags & PADDED_FLAG:
            out.append(("frame", frame))
        elif out and out[-1][:2] == ("data", sid) and not out[-1][3]:
            out[-1] = ("data", sid, out[-1][2] + frame[9:], bool(flags & END_STREAM_FLAG))
        else:
            out.append(("data", sid, frame[9:], bool(flags & END_STREAM_FLAG)))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    app_cuts=st.lists(st.integers(min_value=1, max_value=10**6), max_size=40),
    triton_cuts=st.lists(st.integers(min_value=1, max_value=10**6), max_size=20),
    yields=st.lists(st.booleans(), min_size=1, max_size=40),
)
def test_rechunked_traffic_arrives_unchanged_and_windows_balance(
    app_cuts: list[int], triton_cuts: list[int], yields: list[bool]
) -> None:
    asyncio.run(relay_once(app_cuts, triton_cuts, yields))


async def relay_once(app_cuts: list[int], triton_cuts: list[int], yields: list[bool]) -> None:
    now = [T + 0.035]  # inside the stream's slot: the first call goes at once, the rest wait
    connection, triton = relay(now)
    app = connection.app
    assert isinstance(app, Captured)
    sent_by_app, sids = app_traffic()
    sent_by_triton = triton_traffic(sids)
    first = len(SettingsFrame(0, settings={5: MAX_FRAME}).serialize())
    triton_side = TritonSide(connection)  # reads in place, or buffers a frame a read cut
    triton_side.data_received(sent_by_triton[:first])  # its SETTINGS first, as on a socket
    for k, piece in enumerate(chunks(sent_by_app, app_cuts)):
        connection.data_received(piece)
        if yields[k % len(yields)]:
            await asyncio.sleep(0)  # held calls may be released between segments
    while pending := [c.admission for c in connection.calls.values() if c.admission]:
        await asyncio.gather(*pending)
        await asyncio.sleep(0)
    for piece in chunks(sent_by_triton[first:], triton_cuts):
        triton_side.data_received(piece)

    # App -> Triton: every call's headers and message bytes, every control frame, in order.
    want_data, want_control, want_blocks = by_stream(sent_by_app)
    got_data, got_control, got_blocks = by_stream(bytes(triton.sent))
    assert got_data == want_data
    assert got_blocks == want_blocks
    # Held messages go later than frames behind them (that is the gate), so control frames
    # keep their order among themselves and every call's end arrives.
    assert [c for c in got_control if c[0] != "end"] == [c for c in want_control if c[0] != "end"]
    assert sorted(c for c in got_control if c[0] == "end") == sorted(
        c for c in want_control if c[0] == "end"
    )
    # Flow control balances: DATA the app sent = DATA Triton got + window given back.
    assert flow(sent_by_app) == flow(bytes(triton.sent)) + window_given_back(bytes(app.sent), 0)
    # ... and per stream while the app may still send on it: padding before its last
    # frame is given back on the stream too (after END_STREAM its window is moot).
    final = [f for f in parsed(sent_by_app) if f.stream_id == 5][-1]
    assert isinstance(final, DataFrame) and "END_STREAM" in final.flags
    final_padding = final.pad_length + 1
    assert flow(sent_by_app, 5) - final_padding == flow(bytes(triton.sent), 5) + window_given_back(
        bytes(app.sent), 5
    )
    # Triton -> app: frame for frame, an answer's DATA in the pieces read (the sidecar added
    # nothing but the window it gave back).
    assert answers(bytes(app.sent)) == answers(sent_by_triton)
    assert not connection.calls  # every call answered and let go
    assert connection.keeper.inflight == 0
