"""KServe v2 over gRPC, relayed as HTTP/2 frames.

gRPC runs on HTTP/2; the sidecar sits below gRPC, between one app connection and its own
connection to Triton, and copies frames. It reads only what gating needs:

* the app's header blocks, HPACK-decoded for the method (``:path``) and the
  ``stagger-stream`` metadata, and forwarded unchanged so that both ends' compression
  tables stay in step (the metadata reaches Triton, which ignores it);
* for ``ModelInfer`` and ``ModelStreamInfer``, the first bytes of each request message:
  model name and request id (``wire.py``). The message's DATA is held until the gate
  releases it, while other calls on the connection go on; released, it goes on piece by
  piece as it arrives, not frame by frame (the app's frames may be 4 MB);
* on ``ModelStreamInfer``, Triton's response messages, for ``triton_final_response``.

Everything else (other methods, SETTINGS, PING, WINDOW_UPDATE, Triton's answers) passes as
bytes; a unary call's answer DATA, like a released request's, piece by piece as it
arrives. Bytes that go on at once are slices of the socket's reads, never copies. A gRPC
server and client inside the sidecar cost ~0.4 ms of CPU per call; this costs about what
the HTTP proxy does (docs/benchmarks.md, "Sidecar overhead").

The sidecar answers a call itself (a refusal, a timeout) with a trailers-only response,
HPACK-encoded without indexing so the app's table is untouched, after resetting the stream
towards Triton. A refusal comes before the request's DATA reaches Triton, so Triton has
nothing to say on that stream; a timeout comes after, so the answer waits for a PING round
trip that proves Triton will send nothing more on it. A Triton that does not answer that
PING within ``PING_DEADLINE_S`` is hung (stopped, or its HTTP/2 threads wedged): every open
call is answered at once and both connections are dropped, since a late header block from
Triton could no longer be relayed without breaking the app's HPACK table. A refused
request on a
``ModelStreamInfer`` stream gets an error message on the stream (as Triton reports a failed
request) and the stream goes on. Bytes the sidecar drops or adds are settled with
WINDOW_UPDATE, so flow control stays exact on both sides.

The app's input is bounded before it is buffered: a frame larger than the
``SETTINGS_MAX_FRAME_SIZE`` Triton advertised is refused on its 9-byte header
(FRAME_SIZE_ERROR, RFC 9113 §4.2), and a header block larger than ``max_header_bytes``
(``STAGGER_HTTP_MAX_HEADER_BYTES``) ends the connection (ENHANCE_YOUR_CALM); both with
GOAWAY and the reason in its debug data. A request message held to its slot is bounded by
Triton's flow-control window, which the app must respect.

When Triton is unreachable as an app connects, the sidecar speaks just enough HTTP/2 to
answer every call ``UNAVAILABLE`` with the reason, then sends GOAWAY so that the app's next
call connects again. When Triton's connection drops, the app's is closed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast
from urllib.parse import quote

import hpack
from hyperframe.frame import (
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from stagger_sidecar import wire
from stagger_sidecar.gate import Reason
from stagger_sidecar.keeper import Held, Keeper, Refused, Ticket
from stagger_sidecar.upstream import Upstream

log = logging.getLogger("stagger.sidecar")

SERVICE = "/inference.GRPCInferenceService/"
MODEL_INFER = SERVICE + "ModelInfer"
MODEL_STREAM_INFER = SERVICE + "ModelStreamInfer"
STREAM_METADATA = "stagger-stream"

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The 9-byte frame header, read by hand: it is parsed for every frame both ways, where a
# frame object per frame would cost more than the rest of the relay (hyperframe builds the
# sidecar's own, rare frames).
FRAME_HEAD = struct.Struct(">HBBBL")
DATA, HEADERS, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
NO_ERROR, FRAME_SIZE_ERROR, CANCEL, ENHANCE_YOUR_CALM = 0x0, 0x6, 0x8, 0xB
MESSAGE_PREFIX = 5  # gRPC: compressed flag + 4-byte length
MAX_FRAME = 16_384  # SETTINGS_MAX_FRAME_SIZE's initial value: what every peer accepts
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTING = struct.Struct(">HL")
PEEK_BYTES = 4096  # of a message, enough to read its header
ANYTHING = 1 << 31  # table and header-list limits are Triton's to enforce, not ours
PING_DEADLINE_S = 1.0
"""A live Triton acknowledges a PING in milliseconds even when its models are busy (its
HTTP/2 transport is not behind the model queue); one that does not within this is hung."""

# gRPC status codes (grpc-status trailer).
CODE = {
    Reason.BUSY: 8,  # RESOURCE_EXHAUSTED
    Reason.LATE: 8,
    Reason.QUEUE_FULL: 8,
    Reason.UNKNOWN_STREAM: 3,  # INVALID_ARGUMENT
    Reason.NO_SLOT: 14,  # UNAVAILABLE
    Reason.UNAVAILABLE: 14,
    Reason.SHUTTING_DOWN: 14,
    Reason.TIMEOUT: 4,  # DEADLINE_EXCEEDED
    Reason.ABANDONED: 1,  # CANCELLED; nobody reads it: the app has gone
}


def data_frame(sid: int, payload: bytes | memoryview, *, end: bool = False) -> bytes:
    return data_head(sid, len(payload), end=end) + payload


def data_head(sid: int, n: int, *, end: bool = False) -> bytes:
    """A DATA frame's 9-byte header, for ``n`` bytes of payload written after it."""
    return FRAME_HEAD.pack(n >> 8, n & 0xFF, DATA, END_STREAM if end else 0, sid)


def _payload(frame: bytes | memoryview, ftype: int, flags: int) -> bytes | memoryview:
    """A DATA frame's data, or a HEADERS/CONTINUATION frame's header block fragment."""
    start, stop = 9, len(frame)
    if flags & PADDED and ftype in (DATA, HEADERS):
        start, stop = 10, stop - frame[9]
    if flags & PRIORITY and ftype == HEADERS:
        start += 5
    return frame[start:stop]


def only_indexed(block: bytes) -> bool:
    """Whether a header block only names entries of the tables (RFC 7541 §6.1, each field
    one "indexed" representation): decoding it leaves the decoder as it was."""
    i, n = 0, len(block)
    while i < n:
        first = block[i]
        if not first & 0x80:
            return False
        i += 1
        if first & 0x7F == 0x7F:  # the index goes on in 7-bit groups, the last under 0x80
            while i < n and block[i] & 0x80:
                i += 1
            i += 1
    return True


class HeaderBlocks:
    """The app's header blocks, HPACK-decoded, with those that only index the tables
    remembered. Once a gRPC client's table is warm its every call sends the same few index
    bytes, and decoding them again changes nothing; in the live sidecar, cold between a
    camera's frames, that decode took about 0.1 ms of a request's way. Any other block may
    change the dynamic table, which moves every index: it goes through the decoder, and
    what was remembered is forgotten."""

    REMEMBERED = 64

    def __init__(self) -> None:
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = ANYTHING
        self.decoder.max_header_list_size = ANYTHING
        self.known: dict[bytes, dict[str, str]] = {}

    def decode(self, block: bytes) -> dict[str, str]:
        """The block's headers (a dict of its own: the caller may keep it)."""
        headers = self.known.get(block)
        if headers is None:
            headers = dict(cast(list[tuple[str, str]], self.decoder.decode(block)))
            if not only_indexed(block):
                self.known.clear()
            elif len(self.known) < self.REMEMBERED:
                self.known[block] = headers
        return dict(headers)


class Outbound:
    """Frames to one side, in order, written once per turn. The relay's own frames wait
    while a header block is open: nothing may come between HEADERS and its CONTINUATIONs."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.frames: list[bytes | memoryview] = []  # memoryviews: of the app's reads
        self.deferred: list[bytes | memoryview] = []
        self.in_block = False
        self.discard = False  # no such side (Triton unreachable)

    def relay(self, frame: bytes | memoryview, ftype: int, flags: int) -> None:
        if self.discard:
            return
        self.frames.append(frame)
        if ftype == HEADERS and not flags & END_HEADERS:
            self.in_block = True
        elif ftype == CONTINUATION and flags & END_HEADERS:
            self.in_block = False
            self.frames += self.deferred
            self.deferred.clear()

    def relay_data(self, sid: int, piece: bytes | memoryview, *, end: bool) -> None:
        """A piece of the other side's DATA frame, on as a DATA frame of its own: its head,
        then the piece as it is."""
        if not self.discard:
            self.frames += (data_head(sid, len(piece), end=end), piece)

    def own(self, *frames: bytes | memoryview) -> None:
        if not self.discard:
            (self.deferred if self.in_block else self.frames).extend(frames)

    def flush(self) -> None:
        if self.transport is not None and self.frames and not self.transport.is_closing():
            self.transport.writelines(self.frames)  # uvloop: one vectored write, no join
            self.frames.clear()


@dataclass(eq=False)
class Call:
    """One HTTP/2 stream: one gRPC call."""

    sid: int
    method: str
    named: str | None  # the stream the call names in its metadata
    encoding: str = "identity"
    gated: bool = False
    streaming: bool = False
    counted: bool = False  # holds a place in the keeper until it ends (non-gated calls)
    inbox: bytearray = field(default_factory=bytearray)  # request bytes not yet forwarded
    app_ended: bool = False  # the app's END_STREAM has arrived
    end_sent: bool = False  # ... and was forwarded
    forward: int = 0  # bytes of a released (or ungated) message still to forward
    drop: int = 0  # bytes of a refused message still to drop
    admission: asyncio.Task[None] | None = None
    pending: deque[tuple[str, Ticket]] = field(default_factory=deque)  # released, unanswered
    responses: bytearray = field(default_factory=bytearray)  # streaming: Triton's, unparsed
    injections: list[bytes] = field(default_factory=list)  # waiting for a message boundary
    response_started: bool = False
    timer: asyncio.TimerHandle | None = None
    barrier: bytes | None = None  # the PING whose ACK releases the sidecar's answer
    barrier_timer: asyncio.TimerHandle | None = None  # Triton hung if it fires
    answer: tuple[Reason, str] | None = None
    over: bool = False


class GrpcConnection(asyncio.Protocol):
    """One app connection and its own connection to Triton."""

    def __init__(self, proxy: GrpcProxy) -> None:
        self.proxy = proxy
        self.keeper = proxy.keeper
        self.app: asyncio.Transport | None = None
        self.triton: TritonSide | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.to_app, self.to_triton = Outbound(), Outbound()
        self.standalone = False  # Triton unreachable: the sidecar answers every call
        self.raw = False  # not HTTP/2 with prior knowledge: bytes pass untouched
        self.started = False
        self.buf = bytearray()
        self.headers = HeaderBlocks()
        self.block = bytearray()
        self.block_sid = 0
        self.block_end_stream = False
        self.calls: dict[int, Call] = {}
        self.last_sid = 0
        self.owed: dict[int, int] = {}  # bytes the sidecar added to the app's windows
        self.max_frame = MAX_FRAME  # the largest DATA frame Triton accepts (its SETTINGS)
        self.payload: tuple[Call, int, int] | None = None  # a gated DATA frame being read
        self.answering: tuple[int, int, int] | None = None  # (sid, left, END_STREAM) of an
        # answer's DATA frame from Triton being read
        self.barriers: dict[bytes, Call] = {}
        self.tokens = itertools.count(1)
        self.closed = False
        self.hung = False  # Triton missed a PING deadline: its frames are no longer relayed
        self.refused = False  # the app broke a limit: its connection is closing

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.app = self.to_app.transport = cast(asyncio.Transport, transport)  # uvloop's too
        self.proxy.connections.add(self)
        self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        proxy = self.proxy
        try:
            _, self.triton = await asyncio.get_running_loop().create_connection(
                lambda: TritonSide(self), proxy.host, proxy.port
            )
        except OSError as e:
            if not self.closed:
                proxy.upstream.recheck()
                self._go_standalone(f"Triton unreachable at {proxy.address}: {e}")
            return
        if self.closed:
            self.triton.close()
            return
        self.to_triton.transport = self.triton.transport
        self.to_triton.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        for call in list(self.calls.values()):
            self._end(call, Reason.UNAVAILABLE)
        if self.triton is not None:
            self.triton.close()

    def triton_lost(self) -> None:
        """Triton's connection closed: so does the app's; its open calls end unanswered."""
        self.proxy.upstream.recheck()
        self.close()

    def close(self) -> None:
        if self.app is not None:
            self.to_app.flush()
            self.app.close()

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run ``work``, then write what it produced. A bug costs this connection only."""
        try:
            work()
        except Exception:
            log.exception("gRPC connection failed")
            self.close()
            return
        self.to_triton.flush()
        self.to_app.flush()

    # -- app -> Triton -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._guarded(lambda: self._from_app(data))

    def _from_app(self, data: bytes) -> None:
        if self.refused:
            return
        if self.raw:
            self.to_triton.own(data)
            return
        if not self.started:
            if not self._preface_passed(data):
                return
            data = b""  # in ``buf`` now
        if self.buf:  # the rest of a frame begun in an earlier read
            self.buf += data
            del self.buf[: self._app_frames(self.buf)]
        else:  # the usual case: whole frames, or a gated frame's payload, read in place
            taken = self._app_frames(data)
            self.buf += memoryview(data)[taken:]

    def _app_frames(self, source: bytes | bytearray) -> int:
        """The app's frames in ``source``, each once complete, except a gated call's request
        DATA: its payload goes on piece by piece as it arrives. The app's frames are as
        large as Triton accepts (4 MB), and a released request must not wait in the sidecar
        for the rest of its frame. Returns how many bytes were consumed.

        A released request's bytes go to Triton as slices of the app's own read, not
        copies: each copy of a 1 MB frame cost 0.1 ms live, and three of them made most
        of what the sidecar added to a camera's way (docs/benchmarks.md). Only ``bytes``
        may be lent so: ``buf`` is resized once this returns."""
        pos, lent = 0, isinstance(source, bytes)
        with memoryview(source) as view:
            while pos < len(source):
                if self.payload is not None:  # inside a gated DATA frame
                    reading, left, end = self.payload
                    n = min(left, len(source) - pos)
                    last = n == left
                    self.payload = None if last else (reading, left - n, end)
                    piece = view[pos : pos + n]
                    self._request_bytes(reading, piece if lent else bytes(piece), end=last and end)
                    pos += n
                    continue
                if len(source) - pos < 9:
                    break
                hi, lo, ftype, flags, sid = FRAME_HEAD.unpack_from(source, pos)
                size, sid = hi << 8 | lo, sid & 0x7FFFFFFF
                if size > self.max_frame:  # refused on its header, never buffered
                    self._end_for_input(
                        FRAME_SIZE_ERROR,
                        f"a {size}-byte frame exceeds SETTINGS_MAX_FRAME_SIZE {self.max_frame}",
                    )
                    return len(source)
                call = self.calls.get(sid) if sid and ftype == DATA else None
                if call is not None and call.gated and size and not flags & PADDED:
                    self.payload = (call, size, flags & END_STREAM)
                    pos += 9
                    continue
                if pos + 9 + size > len(source):
                    break
                self._app_frame(bytes(view[pos : pos + 9 + size]), ftype, flags, sid)
                pos += 9 + size
        return pos

    def _preface_passed(self, data: bytes) -> bool:
        """Buffer ``data``; False while the connection preface is incomplete, or is not
        HTTP/2's (then the bytes go to Triton untouched, for it to refuse)."""
        self.buf += data
        if self.started:
            return True
        if not self.buf.startswith(PREFACE):
            if not PREFACE.startswith(self.buf):
                self.raw = True
                self.to_triton.own(bytes(self.buf))
                self.buf.clear()
            return False
        self.started = True
        self.to_triton.own(PREFACE)
        del self.buf[: len(PREFACE)]
        return True

    def _app_frame(self, frame: bytes, ftype: int, flags: int, sid: int) -> None:
        call = self.calls.get(sid) if sid else None
        if ftype == DATA:
            if call is not None and call.gated:  # padded, or empty: whole
                payload = _payload(frame, ftype, flags)
                self._request_bytes(call, payload, end=flags & END_STREAM)
                if len(frame) - 9 > len(payload):  # padding: flow-controlled, never forwarded
                    self._give_back_to_app(call, len(frame) - 9 - len(payload))
                return
            if self.standalone:  # nobody to send it to: give the window back
                self._give_back_to_app(None, len(frame) - 9)
            self.to_triton.relay(frame, ftype, flags)
            if call is not None and flags & END_STREAM:
                call.app_ended = call.end_sent = True
        elif ftype in (HEADERS, CONTINUATION):
            self.to_triton.relay(frame, ftype, flags)  # always: Triton's HPACK table
            self._header_fragment(frame, ftype, flags, sid)
        elif ftype == WINDOW_UPDATE:
            self._window_update_from_app(frame, sid)
        elif ftype == RST_STREAM:
            if call is None or call.barrier is None:  # else Triton has had one from us
                self.to_triton.relay(frame, ftype, flags)
            if call is not None:
                self._end(call, None)
        elif self.standalone and ftype == SETTINGS and not flags & ACK:
            self.to_app.own(SettingsFrame(0, flags=["ACK"]).serialize())
        elif self.standalone and ftype == PING and not flags & ACK:
            self.to_app.own(PingFrame(0, opaque_data=frame[9:], flags=["ACK"]).serialize())
        else:
            self.to_triton.relay(frame, ftype, flags)

    def _header_fragment(self, frame: bytes, ftype: int, flags: int, sid: int) -> None:
        if ftype == HEADERS:
            self.block = bytearray(_payload(frame, ftype, flags))
            self.block_sid, self.block_end_stream = sid, bool(flags & END_STREAM)
        else:
            self.block += _payload(frame, ftype, flags)
        if len(self.block) > self.proxy.max_header_bytes:
            self._end_for_input(
                ENHANCE_YOUR_CALM,
                f"a header block of more than {self.proxy.max_header_bytes} bytes "
                "(STAGGER_HTTP_MAX_HEADER_BYTES)",
            )
            return
        if not flags & END_HEADERS:
            return
        try:
            headers = self.headers.decode(bytes(self.block))
        except hpack.HPACKError as e:  # Triton fails the connection the same way
            log.warning("gRPC: undecodable header block from the app: %s", e)
            self.close()
            return
        call = self.calls.get(self.block_sid)
        if call is None and self.block_sid > self.last_sid:
            self._new_call(self.block_sid, headers, self.block_end_stream)
        elif call is not None and self.block_end_stream:  # the app's trailers
            call.app_ended = call.end_sent = True

    def _new_call(self, sid: int, headers: dict[str, str], end_stream: bool) -> None:
        method = headers.get(":path", "")
        call = Call(
            sid,
            method,
            headers.get(STREAM_METADATA),
            encoding=headers.get("grpc-encoding", "identity"),
            gated=method in (MODEL_INFER, MODEL_STREAM_INFER),
            streaming=method == MODEL_STREAM_INFER,
            app_ended=end_stream,
            end_sent=end_stream,
        )
        self.calls[sid] = call
        self.last_sid = sid
        if not call.gated or call.streaming:  # a ModelInfer holds its place from admission
            try:
                self.keeper.begin()
                call.counted = True
            except Refused as r:
                self._answer(call, r.reason, r.message)
                return
        if self.standalone and not call.gated:
            self._answer(call, Reason.UNAVAILABLE, self.proxy.unreachable)
        elif not call.gated:
            self._start_timer(call)

    def _request_bytes(self, call: Call, payload: bytes | memoryview, *, end: int) -> None:
        """Request DATA of a gated call (a frame's payload, or part of it); ``end``: the
        app's END_STREAM came with its last byte. ``payload`` is immutable: what the gate
        releases of it at once goes to Triton as it is; what waits is copied."""
        if end:
            call.app_ended = True
        if call.over or call.barrier is not None:  # Triton has been told to forget the call
            self._give_back_to_app(call, len(payload))
            return
        if call.inbox:  # earlier bytes wait: these wait behind them
            call.inbox += payload
        else:
            taken = self._pass(call, payload, lent=True)
            call.inbox += payload[taken:]
        self._advance(call)

    def _advance(self, call: Call) -> None:
        """Forward what the gate allows of a gated call's waiting request bytes; after the
        app's last, its END_STREAM."""
        if call.inbox:
            with memoryview(call.inbox) as held:
                taken = self._pass(call, held, lent=False)
            del call.inbox[:taken]
        if call.app_ended and not (call.end_sent or call.inbox or call.admission or call.over):
            call.end_sent = True
            self.to_triton.own(data_frame(call.sid, b"", end=True))

    def _pass(self, call: Call, source: bytes | memoryview, *, lent: bool) -> int:
        """Forward, drop or gate a gated call's request bytes from the start of ``source``,
        as far as the gate allows; the next message goes to the gate once its header is
        in. Returns how many bytes were consumed. ``lent``: ``source`` outlives this turn's
        write, so its slices are written as they are (else copied)."""
        pos, size = 0, len(source)
        while pos < size:
            if call.forward:
                # Forwarded as frames of at most the size Triton accepts: held bytes from
                # several of the app's frames go out together.
                n = min(call.forward, size - pos, self.max_frame)
                last = call.app_ended and pos + n == size and n == call.forward
                piece = source[pos : pos + n]
                head = data_head(call.sid, n, end=last)
                if lent:
                    self.to_triton.own(head, piece)
                else:
                    self.to_triton.own(head + piece)
                pos += n
                call.forward -= n
                call.end_sent |= last
            elif call.drop:
                n = min(call.drop, size - pos)
                pos += n
                call.drop -= n
                self._give_back_to_app(call, n)
            elif call.over or call.admission is not None or not self._to_gate(call, source[pos:]):
                break
        return pos

    def _to_gate(self, call: Call, inbox: bytes | memoryview) -> bool:
        """Send the next message, at the start of ``inbox``, to the gate once its header is
        in; False: need more."""
        if len(inbox) < MESSAGE_PREFIX:
            if call.app_ended:  # a truncated message: Triton says what is wrong with it
                call.forward = len(inbox)
                return True
            return False
        size = MESSAGE_PREFIX + int.from_bytes(inbox[1:5], "big")
        complete = len(inbox) >= size or call.app_ended
        try:
            # The header is in the first bytes: read those, not a copy of a whole frame.
            peek = min(size, MESSAGE_PREFIX + PEEK_BYTES)
            header = self._header(call, inbox, peek, whole=complete and peek == size)
            if header is None and complete and peek < size:
                header = self._header(call, inbox, size, whole=True)  # written in another order
        except (wire.WireError, zlib.error, ValueError):
            call.forward = size  # malformed: Triton answers it with its own error
            return True
        if header is None:
            return False
        try:
            entered = self.keeper.enter(call.named, header.model)
        except Refused as r:
            self._refuse(call, r, header.id, size)
            return True
        if isinstance(entered, Ticket):
            self._release(call, entered, header.id, size)
        else:
            call.admission = asyncio.get_running_loop().create_task(
                self._wait(call, entered, header.id, size)
            )
        return True

    @staticmethod
    def _header(
        call: Call, inbox: bytes | memoryview, end: int, *, whole: bool
    ) -> wire.InferHeader | None:
        """The gate's header from the message's bytes up to ``end`` (``whole``: all of it)."""
        body = bytes(inbox[MESSAGE_PREFIX:end])
        if inbox[0]:
            body = _inflate(call.encoding, body)
        return wire.request_header(body, complete=whole)

    async def _wait(self, call: Call, held: Held, request_id: str, size: int) -> None:
        ticket = await self.keeper.wait(held)
        call.admission = None
        self._guarded(partial(self._release, call, ticket, request_id, size))
        self._guarded(partial(self._advance, call))

    def _release(self, call: Call, ticket: Ticket, request_id: str, size: int) -> None:
        if self.standalone or self.closed or call.over:
            self.keeper.done(ticket, Reason.UNAVAILABLE)
            refused = Refused(Reason.UNAVAILABLE, self.proxy.unreachable)
            self._refuse(call, refused, request_id, size)
            return
        call.pending.append((request_id, ticket))
        call.forward = size
        if not call.streaming:
            self._start_timer(call)

    def _refuse(self, call: Call, refused: Refused, request_id: str, size: int) -> None:
        if call.over:
            return
        if not call.streaming:
            self._answer(call, refused.reason, refused.message)
            return
        # On a stream: this request gets an error message, and the stream goes on.
        message = wire.stream_error(f"stagger-sidecar: {refused.message}", request_id)
        call.injections.append(
            data_frame(call.sid, b"\0" + len(message).to_bytes(4, "big") + message)
        )
        self._owe(call.sid, MESSAGE_PREFIX + len(message))
        self._inject_at_boundary(call)
        call.drop = size

    # -- flow control --------------------------------------------------------------------

    def _give_back_to_app(self, call: Call | None, n: int) -> None:
        """Bytes the app sent that Triton will never see: the sidecar returns their window."""
        self.to_app.own(WindowUpdateFrame(0, window_increment=n).serialize())
        if call is not None and not call.app_ended and not call.over:
            self.to_app.own(WindowUpdateFrame(call.sid, window_increment=n).serialize())

    def _owe(self, sid: int, n: int) -> None:
        """Bytes the sidecar sent the app: its WINDOW_UPDATEs for them are not Triton's."""
        for key in (0, sid):
            self.owed[key] = self.owed.get(key, 0) + n

    def _window_update_from_app(self, frame: bytes, sid: int) -> None:
        owed = self.owed.get(sid)
        if not owed:
            self.to_triton.relay(frame, WINDOW_UPDATE, 0)
            return
        increment = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
        kept = min(owed, increment)
        self.owed[sid] = owed - kept
        if increment > kept:
            update = WindowUpdateFrame(sid, window_increment=increment - kept).serialize()
            self.to_triton.relay(update, WINDOW_UPDATE, 0)

    # -- the sidecar's own answers -------------------------------------------------------

    def _start_timer(self, call: Call) -> None:
        timeout = self.proxy.timeout_s
        call.timer = asyncio.get_running_loop().call_later(
            timeout,
            self._guarded,
            lambda: self._answer(
                call,
                Reason.TIMEOUT,
                f"Triton did not answer within {timeout:g} s",
                triton_may_answer=True,
            ),
        )

    def _answer(
        self, call: Call, reason: Reason, message: str, *, triton_may_answer: bool = False
    ) -> None:
        """End the call with the sidecar's own status; Triton is told to forget it. When
        Triton may already be answering, the sidecar's answer waits for a PING round trip:
        whatever Triton sent before the reset reaches the app first, and if that completes
        the call, Triton's answer stands."""
        if call.over or call.barrier is not None:
            return
        if call.timer is not None:
            call.timer.cancel()
        call.answer = (reason, message)
        if self.standalone:
            self._send_answer(call)
            return
        self.to_triton.own(RstStreamFrame(call.sid, error_code=CANCEL).serialize())
        if not triton_may_answer:
            self._send_answer(call)
            return
        call.barrier = b"stagger" + bytes([next(self.tokens) % 256])
        self.barriers[call.barrier] = call
        self.to_triton.own(PingFrame(0, opaque_data=call.barrier).serialize())
        call.barrier_timer = asyncio.get_running_loop().call_later(
            PING_DEADLINE_S, self._guarded, partial(self._ping_missed, call)
        )

    def _ping_missed(self, call: Call) -> None:
        """Triton did not acknowledge the barrier PING: it is hung. Every open call gets the
        sidecar's answer now (its own, or UNAVAILABLE), then GOAWAY, and both connections
        close; the app's next call connects again."""
        if call.barrier not in self.barriers or self.hung:
            return
        self.hung = True
        log.warning(
            "gRPC: Triton at %s did not acknowledge a PING within %g s after a timeout; "
            "answering %d open call(s) and dropping its connection",
            self.proxy.address,
            PING_DEADLINE_S,
            len(self.calls),
        )
        self.proxy.upstream.recheck()
        self.barriers.clear()
        for open_call in list(self.calls.values()):
            if open_call.over:
                continue
            if open_call.timer is not None:
                open_call.timer.cancel()
            if open_call.answer is None:
                open_call.answer = (
                    Reason.UNAVAILABLE,
                    f"Triton stopped answering (no PING acknowledgement within "
                    f"{PING_DEADLINE_S:g} s); reconnect",
                )
            self._send_answer(open_call)
        self._goodbye(force=True)
        if self.triton is not None:
            self.triton.close()

    def _send_answer(self, call: Call) -> None:
        assert call.answer is not None
        reason, message = call.answer
        headers = [] if call.response_started else [(":status", "200")]
        if not call.response_started:
            headers.append(("content-type", "application/grpc"))
        headers += [
            ("grpc-status", str(CODE[reason])),
            ("grpc-message", quote(f"stagger-sidecar: {message}", safe=" :/'(),.-_")[:1024]),
        ]
        # Never indexed: the app's HPACK table must stay the one Triton's encoder knows.
        block = hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in headers])
        self.to_app.own(
            HeadersFrame(call.sid, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
        )
        if not call.app_ended:  # stop the app sending the rest of its request
            self.to_app.own(RstStreamFrame(call.sid, error_code=NO_ERROR).serialize())
        self._end(call, reason)

    def _inject_at_boundary(self, call: Call) -> None:
        """Streamed error messages go between Triton's messages, never inside one."""
        if call.injections and not call.responses:
            self.to_app.own(*call.injections)
            call.injections.clear()

    def _end(self, call: Call, failure: Reason | None) -> None:
        """The call is over: account for it and let it go."""
        if call.over:
            return
        call.over = True
        for timer in (call.timer, call.barrier_timer):
            if timer is not None:
                timer.cancel()
        if call.admission is not None:
            call.admission.cancel()  # frees its place at the gate
        if call.inbox:  # held, never forwarded
            self.to_app.own(WindowUpdateFrame(0, window_increment=len(call.inbox)).serialize())
        while call.pending:
            self.keeper.done(call.pending.popleft()[1], failure)
        if call.counted:
            self.keeper.end()
        self.calls.pop(call.sid, None)
        self.owed.pop(call.sid, None)
        if self.standalone and not self.calls:
            self._goodbye()

    # -- Triton -> app -------------------------------------------------------------------

    def triton_data(self, buf: bytearray) -> None:
        """Triton's complete frames at the start of ``buf``, relayed and consumed."""
        del buf[: self.triton_frames(buf)]

    def triton_frames(self, source: bytes | bytearray) -> int:
        """Relay Triton's frames at the start of ``source``; returns how many bytes that
        took. Each frame goes once complete, except the DATA of a unary call's answer: its
        payload goes on piece by piece as it arrives, each piece a DATA frame of its own
        (as a released request's go to Triton), so an answer of a frame or a mask does not
        wait in the sidecar for the rest of its frame. Those of a ``bytes`` source (a read,
        as the event loop hands it over) go as slices of it, not copies."""
        if self.hung:  # answered already; a late header block would break the app's HPACK
            return len(source)
        lent, pos = isinstance(source, bytes), 0

        def work() -> None:
            nonlocal pos
            with memoryview(source) as view:
                while pos < len(source):
                    if self.answering is not None:  # inside an answer's DATA frame
                        sid, left, end = self.answering
                        n = min(left, len(source) - pos)
                        self.answering = None if n == left else (sid, left - n, end)
                        piece = view[pos : pos + n]
                        pos += n
                        self._answer_bytes(
                            sid, piece if lent else bytes(piece), end=n == left and end
                        )
                        continue
                    if len(source) - pos < 9:
                        break
                    hi, lo, ftype, flags, sid = FRAME_HEAD.unpack_from(source, pos)
                    size, sid = hi << 8 | lo, sid & 0x7FFFFFFF
                    call = self.calls.get(sid) if ftype == DATA and sid else None
                    if call is not None and not call.streaming and size and not flags & PADDED:
                        self.answering = (sid, size, flags & END_STREAM)
                        pos += 9
                        continue
                    if pos + 9 + size > len(source):
                        break
                    frame = view[pos : pos + 9 + size]
                    pos += 9 + size
                    self._triton_frame(frame if lent else bytes(frame), ftype, flags, sid)

        self._guarded(work)
        return pos

    def _answer_bytes(self, sid: int, piece: bytes | memoryview, *, end: int) -> None:
        """A piece of a unary call's answer (``end``: Triton's END_STREAM came with its last
        byte): on to the app at once."""
        self.to_app.relay_data(sid, piece, end=bool(end))
        call = self.calls.get(sid)
        if end and call is not None:
            self.to_app.flush()  # the app has its answer before the call's bookkeeping
            self._end(call, None)

    def _triton_frame(self, frame: bytes | memoryview, ftype: int, flags: int, sid: int) -> None:
        if ftype == PING and flags & ACK and (token := bytes(frame[9:])) in self.barriers:
            self._barrier_passed(self.barriers.pop(token))
            return  # the sidecar's own PING
        self.to_app.relay(frame, ftype, flags)
        if ftype == SETTINGS and not flags & ACK:
            for key, value in SETTING.iter_unpack(frame[9 : 9 + (len(frame) - 9) // 6 * 6]):
                if key == SETTINGS_MAX_FRAME_SIZE:  # 2^14 to 2^24 - 1 (RFC 9113 §6.5.2)
                    self.max_frame = min(max(value, MAX_FRAME), (1 << 24) - 1)
        call = self.calls.get(sid) if sid else None
        if call is None:
            return
        if ftype == HEADERS:
            call.response_started = True
        elif ftype == DATA and call.streaming:
            call.responses += _payload(frame, ftype, flags)
            self._read_responses(call)
        if ftype == RST_STREAM:
            self._end(call, Reason.UNAVAILABLE)
        elif flags & END_STREAM and ftype in (DATA, HEADERS):  # Triton's answer is complete
            # The app has its answer first; the call's bookkeeping (the gate's, the
            # metrics') runs after it, off the answer's way (0.07 ms of it, measured live).
            self.to_app.flush()
            self._end(call, Reason.UNAVAILABLE if call.streaming else None)

    def _read_responses(self, call: Call) -> None:
        buf = call.responses
        while len(buf) >= MESSAGE_PREFIX:
            size = MESSAGE_PREFIX + int.from_bytes(buf[1:5], "big")
            if len(buf) < size:
                break
            try:
                info = wire.stream_response(bytes(buf[MESSAGE_PREFIX:size]))
            except wire.WireError:
                info = wire.StreamResponse("", "", None)
            del buf[:size]
            if info.final is not False and call.pending:
                self._finish_request(call, info)
        self._inject_at_boundary(call)

    def _finish_request(self, call: Call, info: wire.StreamResponse) -> None:
        index = 0
        if info.id:  # match by request id when the app sets one; else answers come in order
            index = next((i for i, (rid, _) in enumerate(call.pending) if rid == info.id), 0)
        _, ticket = call.pending[index]
        del call.pending[index]
        self.keeper.done(ticket, Reason.UNAVAILABLE if info.error else None)

    def _barrier_passed(self, call: Call) -> None:
        """Triton has seen the reset, so nothing more comes from it on the call."""
        log.debug("gRPC: Triton acknowledged the reset of call %d; answering it", call.sid)
        if call.barrier_timer is not None:
            call.barrier_timer.cancel()
        if not call.over:
            self._send_answer(call)

    # -- without Triton ------------------------------------------------------------------

    def _go_standalone(self, why: str) -> None:
        log.warning("gRPC: %s; answering the app's calls UNAVAILABLE", why)
        self.proxy.unreachable = why
        self.standalone = True
        self.to_triton.discard = True
        self.to_triton.frames.clear()
        # The server's preface (its SETTINGS) must be the first frame the app gets.
        self.to_app.frames.insert(0, SettingsFrame(0).serialize())
        for call in list(self.calls.values()):
            if call.admission is None:
                self._answer(call, Reason.UNAVAILABLE, why)
        self.to_app.flush()
        if not self.calls:
            self._goodbye()

    def _end_for_input(self, code: int, why: str) -> None:
        """The app broke a limit: GOAWAY with the reason, then close; its open calls end
        unanswered, as on any lost connection."""
        log.warning("gRPC: closing an app connection: %s", why)
        self.refused = True
        self.to_app.own(
            GoAwayFrame(
                0,
                last_stream_id=self.last_sid,
                error_code=code,
                additional_data=f"stagger-sidecar: {why}".encode(),
            ).serialize()
        )
        self.close()

    def _goodbye(self, *, force: bool = False) -> None:
        """GOAWAY, so that the app's next call opens a new connection and finds Triton."""
        if self.app is None or self.app.is_closing() or not (self.last_sid or force):
            return  # before any call, a GOAWAY would only make the app retry here
        self.to_app.own(GoAwayFrame(0, last_stream_id=self.last_sid).serialize())
        self.close()


def _inflate(encoding: str, body: bytes) -> bytes:
    """The first bytes of a compressed message (gzip or deflate, as gRPC names them)."""
    wbits = {"gzip": 31, "deflate": 15}.get(encoding)
    if wbits is None:
        raise ValueError(f"unsupported grpc-encoding {encoding!r}")
    return zlib.decompressobj(wbits).decompress(body, PEEK_BYTES)


class TritonSide(asyncio.Protocol):
    def __init__(self, connection: GrpcConnection) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        connection = self.connection
        if connection.raw:
            connection.to_app.own(data)
            connection.to_app.flush()
            return
        if self.buf:  # the rest of a frame begun in an earlier read
            self.buf += data
            connection.triton_data(self.buf)
        else:
            taken = connection.triton_frames(data)
            self.buf += memoryview(data)[taken:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.triton_lost()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class GrpcProxy:
    def __init__(
        self,
        keeper: Keeper,
        upstream: Upstream,
        address: str,
        *,
        timeout_s: float,
        max_header_bytes: int = 64 * 1024,
    ):
        self.keeper = keeper
        self.upstream = upstream
        self.address = address
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.timeout_s = timeout_s
        self.max_header_bytes = max_header_bytes
        self.unreachable = f"Triton unreachable at {address}"
        self.connections: set[GrpcConnection] = set()

    def protocol(self) -> GrpcConnection:
        return GrpcConnection(self)

    def close_connections(self) -> None:
        for connection in list(self.connections):
            connection.close()
