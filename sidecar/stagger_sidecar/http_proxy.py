"""KServe v2 over HTTP: ``POST /v2/models/{m}[/versions/{v}]/infer`` waits at the gate; every
other request passes straight through. Bodies travel as bytes, compressed or not, binary
tensor data included; the sidecar never decodes a tensor.

The sidecar's own paths: ``/healthz``, ``/readyz`` and the slot clock ``/stagger/v1/clock``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from stagger_sidecar.gate import Reason, Refusal
from stagger_sidecar.keeper import Keeper, Refused
from stagger_sidecar.upstream import Upstream

log = logging.getLogger("stagger.sidecar")

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
STREAM_HEADER = "stagger-stream"
CLOCK_PATH = "/stagger/v1/clock"
MAX_CLOCK_COUNT = 1000
# Per-connection and framing headers are the proxy's own on each side (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        STREAM_HEADER,
    )
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
}


def error(status: int, message: str) -> web.Response:
    """An error as Triton writes them: ``{"error": "..."}``."""
    return web.json_response({"error": f"stagger-sidecar: {message}"}, status=status)


def _forwarded(headers: Mapping[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in HOP_BY_HOP:
            out.add(k, v)
    return out


class HttpProxy:
    def __init__(
        self,
        keeper: Keeper,
        upstream: Upstream,
        *,
        timeout_s: float,
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self.keeper = keeper
        self.upstream = upstream
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.timeout_s = timeout_s
        self.ready = ready

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/healthz":
            return web.json_response({"status": "ok"})
        if path == "/readyz":
            ok, why = self.ready()
            return web.json_response({"ready": ok, "reason": why}, status=200 if ok else 503)
        if path == CLOCK_PATH:
            return self.clock(request)
        if not self.upstream.http:
            return error(501, "no Triton HTTP endpoint is configured (STAGGER_TRITON_HTTP)")
        match = INFER_PATH.match(path) if request.method == "POST" else None
        body = await request.read()
        if match is None:
            try:
                async with self.keeper.passing():
                    return await self.forward(request, body)
            except Refused as r:
                return error(STATUS[r.reason], r.message)
        try:
            ticket = await self.keeper.admit(
                request.headers.get(STREAM_HEADER), unquote(match.group(1))
            )
        except Refused as r:
            return error(STATUS[r.reason], r.message)
        failure: Reason | None = None
        try:
            return await self.forward(request, body)
        except Refused as r:
            failure = r.reason
            return error(STATUS[r.reason], r.message)
        finally:
            self.keeper.done(ticket, failure)

    async def forward(self, request: web.BaseRequest, body: bytes) -> web.Response:
        url = f"http://{self.upstream.http}{request.raw_path}"
        try:
            async with self.upstream.session.request(
                request.method,
                url,
                headers=_forwarded(request.headers),
                data=body,
                timeout=self.timeout,
                allow_redirects=False,
            ) as r:
                payload = await r.read()
                return web.Response(status=r.status, body=payload, headers=_forwarded(r.headers))
        except TimeoutError:
            raise Refused(
                Reason.TIMEOUT, f"Triton did not answer within {self.timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as e:
            self.upstream.recheck()
            raise Refused(
                Reason.UNAVAILABLE, f"Triton unreachable at {self.upstream.http}: {e}"
            ) from None

    def clock(self, request: web.BaseRequest) -> web.Response:
        try:
            count = int(request.query.get("count", "1"))
        except ValueError:
            return error(400, "count must be an integer")
        if not 1 <= count <= MAX_CLOCK_COUNT:
            return error(400, f"count must be between 1 and {MAX_CLOCK_COUNT}")
        resolved = self.keeper.gate.resolve(
            request.query.get("stream") or request.headers.get(STREAM_HEADER)
        )
        if isinstance(resolved, Refusal):
            return error(STATUS[resolved.reason], resolved.message)
        doc = resolved.clock_document(self.keeper.clock(), count)
        if doc is None:
            return error(503, f"stream {resolved.name} has no slot assignment yet")
        return web.Response(text=json.dumps(doc), content_type="application/json")
