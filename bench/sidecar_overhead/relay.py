"""The floor for any proxy hop on this machine: a TCP relay that copies bytes both ways and
understands nothing (no HTTP, no gate, no metrics). Two of them:

- ``streams`` (the default): asyncio streams on the standard event loop, 64 KiB reads,
  each written and drained before the next read: what a plain Python relay costs;
- ``--uvloop``: a uvloop ``Protocol`` that writes each chunk on as it arrives, the same
  event loop and transport the sidecar uses: the least a Python hop can cost.

    python -m bench.sidecar_overhead.relay LISTEN_PORT UPSTREAM_HOST:PORT [--uvloop]
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def streams(port: int, upstream: str) -> None:
    host, _, up_port = upstream.rpartition(":")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(up_port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class Side(asyncio.Protocol):
    """One end of a relayed connection: what it receives goes to its peer at once (kept
    until the peer's connection is up)."""

    def __init__(self) -> None:
        self.peer: Side | None = None
        self.transport: asyncio.Transport | None = None
        self.waiting: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        if self.waiting and self.transport is not None:
            self.transport.writelines(self.waiting)
            self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            return
        if peer.transport is None:
            peer.waiting.append(data)
        else:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def protocol(port: int, upstream: str) -> None:
    host, _, up_port = upstream.rpartition(":")
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[object]] = set()  # kept until done: a task needs a reference

    def app_side() -> Side:
        app, triton = Side(), Side()
        app.peer, triton.peer = triton, app
        task = loop.create_task(loop.create_connection(lambda: triton, host, int(up_port)))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return app

    server = await loop.create_server(app_side, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    if "--uvloop" in sys.argv[3:]:
        uvloop.run(protocol(port, upstream))
    else:
        asyncio.run(streams(port, upstream))
