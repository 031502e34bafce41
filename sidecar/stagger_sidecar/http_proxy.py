"""KServe v2 over HTTP: ``POST /v2/models/{m}[/versions/{v}]/infer`` waits at the gate; every
other request passes straight through. The sidecar's own paths: ``/healthz``, ``/readyz``
and the slot clock ``/stagger/v1/clock``.

Built on asyncio protocols and httptools (llhttp, the parser of Node.js) rather than an HTTP
framework: each app connection gets its own keep-alive connection to Triton, requests are
parsed only for their boundaries, path and the ``stagger-stream`` header, and Triton's
answer is copied back byte for byte as it arrives. Bodies are never decoded: binary tensor
data and compressed bodies reach Triton as the app sent them. This keeps the proxy's cost
near that of copying bytes (docs/benchmarks.md, "Sidecar overhead").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import httptools

from stagger_sidecar.gate import Reason, Refusal
from stagger_sidecar.keeper import Keeper, Refused
from stagger_sidecar.upstream import Upstream

log = logging.getLogger("stagger.sidecar")

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
STREAM_HEADER = "stagger-stream"
CLOCK_PATH = "/stagger/v1/clock"
MAX_CLOCK_COUNT = 1000
# Per-connection and framing headers are each side's own (RFC 9110 §7.6.1); the body is
# re-framed with Content-Length and Host names Triton (one Host header, as HTTP/1.1 wants).
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-connection te trailer transfer-encoding upgrade "
    b"content-length expect host".split()
)

STATUS = {
    Reason.BUSY: 429,
    Reason.LATE: 429,
    Reason.QUEUE_FULL: 429,
    Reason.UNKNOWN_STREAM: 400,
    Reason.NO_SLOT: 503,
    Reason.UNAVAILABLE: 503,
    Reason.SHUTTING_DOWN: 503,
    Reason.TIMEOUT: 504,
    Reason.ABANDONED: 499,  # nobody reads it: the app has gone (nginx's "client closed")
}


def response(status: int, body: dict[str, Any], *, close: bool = False) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode() + payload


def error(status: int, message: str, *, close: bool = False) -> bytes:
    """An error as Triton writes them: ``{"error": "..."}``."""
    return response(status, {"error": f"stagger-sidecar: {message}"}, close=close)


@dataclass
class Request:
    method: bytes = b""
    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    stream: str | None = None
    keep_alive: bool = True

    def wire(self, host: bytes) -> list[bytes]:
        """The request as Triton gets it: same method, target, headers and body, as its
        head and then the body's pieces as they arrived. Written as a vector, a frame is
        never copied whole: joining a 1 MB body and its head cost the sidecar 0.8 ms of CPU
        per request, more than the rest of its way (``bench.sidecar_overhead
        --frame-bytes``)."""
        lines = [self.method + b" " + self.url + b" HTTP/1.1", b"Host: " + host]
        lines += [k + b": " + v for k, v in self.headers if k.lower() not in HOP_BY_HOP]
        lines.append(b"Content-Length: " + str(sum(map(len, self.body))).encode())
        return [b"\r\n".join(lines) + b"\r\n\r\n", *self.body]


@dataclass(frozen=True)
class HttpLimits:
    """What one app connection may cost: bounded headers and bodies, and no connection held
    open by a client that sends nothing (slowly or at all)."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0


class UpstreamLost(Exception):
    """Triton closed the connection before its answer was complete."""

    def __init__(self, sent_any: bool) -> None:
        super().__init__("Triton closed the connection")
        self.sent_any = sent_any


class TritonConnection(asyncio.Protocol):
    """One keep-alive connection to Triton, owned by one app connection. Answers are
    copied to the app as they arrive; ``done`` resolves when one is complete."""

    def __init__(self, app: asyncio.Transport) -> None:
        self.app = app
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[bool] | None = None
        self.sent_any = False
        self.open = False
        self.head_only = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.open = cast(asyncio.Transport, transport), True  # uvloop's too

    def send(self, request: list[bytes], *, head_only: bool) -> asyncio.Future[bool]:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.sent_any, self.head_only = False, head_only
        self.transport.writelines(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        self.sent_any = True
        self.app.write(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            self._finish(UpstreamLost(sent_any=True))

    def on_headers_complete(self) -> None:
        if self.head_only:  # the answer to HEAD has no body, whatever its headers say
            self._finish(self.parser.should_keep_alive())

    def on_message_complete(self) -> None:
        self._finish(self.parser.should_keep_alive())

    def _finish(self, outcome: bool | Exception) -> None:
        if self.done is None or self.done.done():
            return
        if isinstance(outcome, Exception):
            self.done.set_exception(outcome)
        else:
            if not outcome:
                self.close()
            self.done.set_result(True)
        self.parser = httptools.HttpResponseParser(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._finish(UpstreamLost(self.sent_any))

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


class _LimitExceeded(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AppConnection(asyncio.Protocol):
    """One app connection: parse requests, answer the sidecar's own paths, gate
    inferences, relay everything to Triton in order."""

    def __init__(self, proxy: HttpProxy) -> None:
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.requests: asyncio.Queue[Request | None] = asyncio.Queue()
        self.current = Request()
        self.transport: asyncio.Transport | None = None
        self.triton: TritonConnection | None = None
        self.worker: asyncio.Task[None] | None = None
        self.head_bytes = 0  # of the request being parsed: line and headers
        self.body_bytes = 0
        self.refused = False  # a limit was hit: the rest of the input is ignored
        self.limit_hit: _LimitExceeded | None = None  # raised in a parser callback
        self.parsing = False  # a request's bytes are arriving
        self.busy = False  # a request is being answered
        self.timer: asyncio.TimerHandle | None = None  # header or idle deadline

    # -- parsing (httptools callbacks) ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.worker = asyncio.get_running_loop().create_task(self.serve())
        self._deadline(self.proxy.limits.header_timeout_s, 408, "no request line in time")

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:  # a callback's exception arrives wrapped
            hit = self.limit_hit
            if hit is not None:
                self._refuse(hit.status, str(hit))
            else:
                self._refuse(400, f"malformed HTTP request: {e}")

    def _refuse(self, status: int, message: str) -> None:
        """Answer at once and close: the request cannot be read on."""
        assert self.transport is not None
        self.refused = True
        self._disarm()
        self.transport.write(error(status, message, close=True))
        self.requests.put_nowait(None)

    def _deadline(self, seconds: float, status: int | None, why: str) -> None:
        """Close the connection after ``seconds`` unless disarmed first (answering
        ``status`` when given: a request was under way)."""
        self._disarm()

        def expire() -> None:
            self.timer = None
            if self.busy:  # never cut an answer short: look again when it may be sent
                self._deadline(seconds, status, why)
            elif status is None:
                assert self.transport is not None
                self.transport.close()
            else:
                self._refuse(status, why)

        self.timer = asyncio.get_running_loop().call_later(seconds, expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_message_begin(self) -> None:
        self.current = Request()
        self.parsing = True
        self.head_bytes = self.body_bytes = 0
        limits = self.proxy.limits
        self._deadline(
            limits.header_timeout_s,
            408,
            f"the request's headers did not arrive within {limits.header_timeout_s:g} s",
        )

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        limit = self.proxy.limits.max_header_bytes
        if self.head_bytes > limit:
            self._limit(431, f"request line and headers exceed {limit} bytes")

    def _limit(self, status: int, message: str) -> None:
        """Stop parsing: ``data_received`` answers ``status``."""
        self.limit_hit = _LimitExceeded(status, message)
        raise self.limit_hit

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if name.lower() == b"stagger-stream":
            self.current.stream = value.decode(errors="replace")
        else:
            self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._disarm()  # the body's pace is the app's; its size is bounded below
        self.current.method = self.parser.get_method()
        declared = next(
            (v for k, v in self.current.headers if k.lower() == b"content-length"), None
        )
        limit = self.proxy.limits.max_body_bytes
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            self._limit(413, f"request body of {int(declared)} bytes exceeds {limit}")
        expect = any(
            k.lower() == b"expect" and v.lower() == b"100-continue" for k, v in self.current.headers
        )
        if expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        limit = self.proxy.limits.max_body_bytes
        if self.body_bytes > limit:  # chunked: no length declared up front
            self._limit(413, f"request body exceeds {limit} bytes")
        self.current.body.append(body)

    def on_message_complete(self) -> None:
        self.parsing = False
        self.current.keep_alive = self.parser.should_keep_alive()
        self.requests.put_nowait(self.current)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.proxy.connections.discard(self)
        if self.worker is not None:
            self.worker.cancel()  # frees a slot the request may hold at the gate
        if self.triton is not None:
            self.triton.close()

    # -- serving -------------------------------------------------------------------------

    async def serve(self) -> None:
        assert self.transport is not None
        try:
            while (request := await self.requests.get()) is not None:
                self.busy = True
                try:
                    keep = await self.handle(request) and request.keep_alive
                finally:
                    self.busy = False
                if not keep:
                    break
                if self.requests.empty() and not self.parsing and not self.refused:
                    self._deadline(self.proxy.limits.idle_timeout_s, None, "idle")
        except Exception:  # a bug must cost one connection, not the sidecar
            log.exception("HTTP connection failed")
        finally:
            self.transport.close()

    async def handle(self, request: Request) -> bool:
        """Answer one request; False when the connection must close."""
        assert self.transport is not None
        target = urlsplit(request.url.decode("latin-1"))
        local = self.proxy.local(target.path, target.query, request)
        if local is not None:
            self.transport.write(local)
            return True
        if not self.proxy.upstream.http:
            self.transport.write(error(501, "no Triton HTTP endpoint (STAGGER_TRITON_HTTP)"))
            return True
        match = INFER_PATH.match(target.path) if request.method == b"POST" else None
        keeper = self.proxy.keeper
        if match is None:
            try:
                async with keeper.passing():
                    return await self.forward(request)
            except Refused as r:
                self.transport.write(error(STATUS[r.reason], r.message))
                return True
        try:
            ticket = await keeper.admit(request.stream, unquote(match.group(1)))
        except Refused as r:
            self.transport.write(error(STATUS[r.reason], r.message))
            return True
        failure: Reason | None = None
        try:
            return await self.forward(request)
        except Refused as r:
            failure = r.reason
            self.transport.write(error(STATUS[r.reason], r.message))
            return True
        finally:
            keeper.done(ticket, failure)

    async def forward(self, request: Request) -> bool:
        """Send to Triton and relay its answer; raises Refused when none could be relayed."""
        proxy = self.proxy
        if self.triton is None or not self.triton.open:
            self.triton = await self._connect()
        done = self.triton.send(request.wire(proxy.host), head_only=request.method == b"HEAD")
        try:
            await asyncio.wait_for(asyncio.shield(done), proxy.timeout_s)
        except TimeoutError:
            done.cancel()  # nobody waits for it now: closing must not leave it an exception
            sent = self.triton.sent_any
            self.triton.close()
            if sent:  # part of Triton's answer is out: the connection cannot go on
                return False
            raise Refused(
                Reason.TIMEOUT, f"Triton did not answer within {proxy.timeout_s:g} s"
            ) from None
        except UpstreamLost as lost:
            proxy.upstream.recheck()
            if lost.sent_any:
                return False
            raise Refused(Reason.UNAVAILABLE, "Triton closed the connection") from None
        return True

    async def _connect(self) -> TritonConnection:
        assert self.transport is not None
        proxy, app = self.proxy, self.transport
        try:
            _, triton = await asyncio.get_running_loop().create_connection(
                lambda: TritonConnection(app), proxy.upstream_host, proxy.upstream_port
            )
        except OSError as e:
            proxy.upstream.recheck()
            raise Refused(
                Reason.UNAVAILABLE, f"Triton unreachable at {proxy.upstream.http}: {e}"
            ) from None
        return triton


class HttpProxy:
    def __init__(
        self,
        keeper: Keeper,
        upstream: Upstream,
        *,
        timeout_s: float,
        ready: Callable[[], tuple[bool, str]],
        limits: HttpLimits | None = None,
    ) -> None:
        self.limits = limits or HttpLimits()
        self.keeper = keeper
        self.upstream = upstream
        self.timeout_s = timeout_s
        self.ready = ready
        host, _, port = (upstream.http or ":0").rpartition(":")
        self.upstream_host, self.upstream_port = host, int(port)
        self.host = (upstream.http or "").encode()
        self.connections: set[AppConnection] = set()

    def protocol(self) -> AppConnection:
        connection = AppConnection(self)
        self.connections.add(connection)
        return connection

    def close_connections(self) -> None:
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()

    def local(self, path: str, query: str, request: Request) -> bytes | None:
        """The sidecar's own answer for its paths; None for Triton's."""
        if path == "/healthz":
            return response(200, {"status": "ok"})
        if path == "/readyz":
            ok, why = self.ready()
            return response(200 if ok else 503, {"ready": ok, "reason": why})
        if path == CLOCK_PATH:
            return self.clock(parse_qs(query), request.stream)
        return None

    def clock(self, query: dict[str, list[str]], header_stream: str | None) -> bytes:
        try:
            count = int(query.get("count", ["1"])[0])
        except ValueError:
            return error(400, "count must be an integer")
        if not 1 <= count <= MAX_CLOCK_COUNT:
            return error(400, f"count must be between 1 and {MAX_CLOCK_COUNT}")
        resolved = self.keeper.gate.resolve(query.get("stream", [None])[0] or header_stream)
        if isinstance(resolved, Refusal):
            return error(STATUS[resolved.reason], resolved.message)
        doc = resolved.clock_document(self.keeper.clock(), count)
        if doc is None:
            return error(503, f"stream {resolved.name} has no slot assignment yet")
        return response(200, doc)
