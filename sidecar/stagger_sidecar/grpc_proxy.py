"""KServe v2 over gRPC: ``ModelInfer`` and each request on a ``ModelStreamInfer`` stream wait
at the gate; every other method passes straight through. Messages travel as bytes (no
(de)serializers); the proxy reads only the model name and request id from the wire.

On a stream, a request the gate refuses gets an error response on the stream (as Triton
reports a failed request) and the stream goes on. A streamed request is finished when its
final response arrives: decoupled models mark it with ``triton_final_response`` (clients
ask for it with ``enable_empty_final_response``); other models answer once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from stagger_sidecar import wire
from stagger_sidecar.gate import Reason
from stagger_sidecar.keeper import Keeper, Refused, Ticket
from stagger_sidecar.upstream import Upstream

log = logging.getLogger("stagger.sidecar")

SERVICE = "/inference.GRPCInferenceService/"
MODEL_INFER = SERVICE + "ModelInfer"
MODEL_STREAM_INFER = SERVICE + "ModelStreamInfer"
STREAM_METADATA = "stagger-stream"
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
CHANNEL_OPTIONS = [
    *UNLIMITED,
    # Triton restarts: be back within ~2 s rather than gRPC's default minutes-long backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

CODE = {
    Reason.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.LATE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.UNKNOWN_STREAM: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.NO_SLOT: grpc.StatusCode.UNAVAILABLE,
    Reason.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    Reason.TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Metadata = Sequence[tuple[str, str | bytes]]
Context = grpc.aio.ServicerContext[bytes, bytes]
UnaryCall = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


def _split_metadata(md: Any) -> tuple[str | None, list[tuple[str, str | bytes]]]:
    """The stream the call names, and the metadata to forward (without it)."""
    stream: str | None = None
    forward: list[tuple[str, str | bytes]] = []
    for key, value in md or ():
        if key == STREAM_METADATA:
            stream = value.decode() if isinstance(value, bytes) else value
        else:
            forward.append((key, value))
    return stream, forward


class GrpcProxy(grpc.GenericRpcHandler):
    def __init__(
        self, keeper: Keeper, upstream: Upstream, channel: grpc.aio.Channel, *, timeout_s: float
    ) -> None:
        self.keeper = keeper
        self.upstream = upstream
        self.channel = channel
        self.timeout_s = timeout_s
        self._unary: dict[str, UnaryCall] = {}

    def service(
        self, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = details.method
        if method == MODEL_INFER:
            return grpc.unary_unary_rpc_method_handler(self.model_infer)
        if method == MODEL_STREAM_INFER:
            return grpc.stream_stream_rpc_method_handler(self.model_stream_infer)
        return grpc.unary_unary_rpc_method_handler(self._passthrough(method))

    def _call(self, method: str) -> UnaryCall:
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = self.channel.unary_unary(method)  # bytes in, bytes out
        return call

    def _timeout(self, context: Context) -> float:
        remaining = context.time_remaining()
        return self.timeout_s if remaining is None else min(remaining, self.timeout_s)

    async def _abort_refused(self, context: Context, r: Refused) -> None:
        await context.abort(CODE[r.reason], f"stagger-sidecar: {r.message}")

    async def _forward(
        self, method: str, request: bytes, context: Context, metadata: Metadata
    ) -> bytes:
        timeout = self._timeout(context)
        try:
            response: bytes = await self._call(method)(request, metadata=metadata, timeout=timeout)
            return response
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                self.upstream.recheck()
            # Triton's own error, as Triton sent it (a DEADLINE_EXCEEDED may be ours).
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise Refused(
                    Reason.TIMEOUT, f"Triton did not answer within {timeout:.3g} s"
                ) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise Refused(Reason.UNAVAILABLE, f"Triton unavailable: {e.details()}") from None
            await context.abort(code, e.details() or "")
            raise  # abort raises; this satisfies the type checker

    def _passthrough(self, method: str) -> Callable[[bytes, Context], Awaitable[bytes]]:
        async def handler(request: bytes, context: Context) -> bytes:
            _, metadata = _split_metadata(context.invocation_metadata())
            try:
                async with self.keeper.passing():
                    return await self._forward(method, request, context, metadata)
            except Refused as r:
                await self._abort_refused(context, r)
                raise

        return handler

    async def model_infer(self, request: bytes, context: Context) -> bytes:
        named, metadata = _split_metadata(context.invocation_metadata())
        try:
            header = wire.infer_header(request)
        except wire.WireError:  # malformed: Triton answers it with its own error
            return await self._passthrough(MODEL_INFER)(request, context)
        try:
            ticket = await self.keeper.admit(named, header.model)
        except Refused as r:
            await self._abort_refused(context, r)
            raise
        failure: Reason | None = None
        try:
            return await self._forward(MODEL_INFER, request, context, metadata)
        except Refused as r:
            failure = r.reason
            await self._abort_refused(context, r)
            raise
        finally:
            self.keeper.done(ticket, failure)

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        named, metadata = _split_metadata(context.invocation_metadata())
        try:
            async with self.keeper.passing():  # the stream itself counts for drain
                call: Any = self.channel.stream_stream(MODEL_STREAM_INFER)(metadata=metadata)
                out: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
                pending: deque[tuple[str, Ticket]] = deque()
                pump = asyncio.create_task(self._pump(requests, call, named, out, pending))
                read = asyncio.create_task(self._read(call, out, pending))
                try:
                    while (item := await out.get()) is not None:
                        yield item
                    await read  # Triton ended the stream: with its error, if any
                finally:
                    pump.cancel()
                    read.cancel()
                    call.cancel()
                    while pending:  # unanswered when the stream ended
                        self.keeper.done(pending.popleft()[1], Reason.UNAVAILABLE)
        except Refused as r:
            await self._abort_refused(context, r)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self.upstream.recheck()
            await context.abort(e.code(), e.details() or "")

    async def _pump(
        self,
        requests: AsyncIterator[bytes],
        call: Any,
        named: str | None,
        out: asyncio.Queue[bytes | None],
        pending: deque[tuple[str, Ticket]],
    ) -> None:
        async for request in requests:
            try:
                header = wire.infer_header(request)
            except wire.WireError:
                await call.write(request)  # Triton answers it with its own error
                continue
            try:
                ticket = await self.keeper.admit(named, header.model)
            except Refused as r:
                await out.put(wire.stream_error(f"stagger-sidecar: {r.message}", header.id))
                continue
            pending.append((header.id, ticket))
            await call.write(request)
        await call.done_writing()

    async def _read(
        self, call: Any, out: asyncio.Queue[bytes | None], pending: deque[tuple[str, Ticket]]
    ) -> None:
        try:
            async for response in call:
                try:
                    info = wire.stream_response(response)
                except wire.WireError:
                    info = wire.StreamResponse("", "", None)
                if info.final is not False and pending:
                    self._finish(pending, info)
                await out.put(response)
        finally:
            await out.put(None)

    def _finish(self, pending: deque[tuple[str, Ticket]], info: wire.StreamResponse) -> None:
        index = 0
        if info.id:  # match by request id when the app sets one; else responses come in order
            index = next((i for i, (rid, _) in enumerate(pending) if rid == info.id), 0)
        _, ticket = pending[index]
        del pending[index]
        self.keeper.done(ticket, Reason.UNAVAILABLE if info.error else None)
