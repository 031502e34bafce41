"""bench.sidecar_overhead's floor relays: every byte through, both ways, in order, each
relay on real sockets (the bench compares the sidecar against them)."""

import asyncio
import os

import pytest

from bench.sidecar_overhead.relay import protocol, streams
from stagger_testkit.localtriton import free_port


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.mark.parametrize("relay", [streams, protocol])
async def test_a_relay_carries_every_byte_both_ways_in_order(relay) -> None:
    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = free_port()
    task = asyncio.create_task(relay(port, f"127.0.0.1:{upstream.sockets[0].getsockname()[1]}"))
    try:
        for _ in range(100):  # the relay's listener is up
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.02)
        payload = os.urandom(3 * 1024 * 1024)  # many reads' worth, a camera frame or three
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert got == payload
        writer.close()
    finally:
        task.cancel()
        upstream.close()
