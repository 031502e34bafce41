"""What the slot feed costs the operator: ``--sidecars`` sidecars hold feed requests that
each return every ``--wait-s`` seconds (the sidecars' default is 30 s; shorter here to load
it harder), and the feed's process time is measured over the run.

    python -m bench.operator.feedload [--sidecars 2000] [--wait-s 2] [--seconds 30]

The feed (``stagger_operator.feed.SlotFeed`` with one published contract per sidecar) runs
in a process of its own, as in the operator; the clients in another, each asking as the
sidecar's ``FeedClient`` does (the request body carries its arrival phase).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime

import aiohttp

from stagger.core.contract import CONTRACT_FILE, SlotAssignment
from stagger_operator.feed import SlotFeed, serve
from stagger_testkit.localtriton import free_port

EPOCH = datetime(2026, 12, 5, tzinfo=UTC)


def contract(i: int) -> str:
    return SlotAssignment(
        stream=f"cam-{i}",
        namespace="default",
        shard=0,
        shards=1,
        node=f"node-{i // 16}",
        gpu_index=i % 8,
        epoch=EPOCH,
        period_ticks=3000,
        offset_ticks=(i * 137) % 3000,
        body_ticks=300,
        generation=1,
        effective_at=EPOCH,
    ).model_dump_json(by_alias=True, exclude_none=True, indent=2)


async def feed_process(sidecars: int, port: int, seconds: float) -> None:
    feed = SlotFeed()
    feed.serving = True
    configmaps = {
        ("default", f"cam-{i}-slot"): {CONTRACT_FILE: contract(i)} for i in range(sidecars)
    }
    began = time.perf_counter()
    feed.publish(configmaps)
    publish_s = time.perf_counter() - began
    began = time.perf_counter()
    feed.publish(configmaps)  # as every reconcile does, nothing changed
    again_s = time.perf_counter() - began
    runner = await serve(feed, f"127.0.0.1:{port}")
    print("ready", flush=True)
    cpu, wall = time.process_time(), time.monotonic()
    connected = 0
    while time.monotonic() - wall < seconds:
        await asyncio.sleep(1)
        connected = max(connected, len(feed.connected()))
    cores = (time.process_time() - cpu) / (time.monotonic() - wall)
    print(
        f"feed: {cores:.3f} cores, {connected} connected at most; "
        f"publishing: first {publish_s:.3f} s, unchanged {again_s:.3f} s"
    )
    await runner.cleanup()


async def clients_process(sidecars: int, port: int, wait_s: float, seconds: float) -> None:
    answered = 0

    async def sidecar(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal answered
        have, end = None, time.monotonic() + seconds
        url = f"http://127.0.0.1:{port}/v1/slots/default/cam-{i}-slot"
        phase = {"stream": f"cam-{i}", "shard": 0, "phaseS": 0.01, "spreadS": 0.0004}
        while time.monotonic() < end:
            body = {"have": have, "arrivals": [phase]}
            async with session.post(url, params={"wait": f"{wait_s:g}"}, json=body) as r:
                if r.status == 200:
                    have = (await r.json())["version"]
                answered += 1

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=wait_s + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(sidecar(session, i) for i in range(sidecars)))
    print(f"clients: {answered} answers in {seconds:g} s, {answered / seconds:.0f}/s")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sidecars", type=int, default=2000)
    parser.add_argument("--wait-s", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--role", choices=["feed", "clients"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "feed":
        asyncio.run(feed_process(args.sidecars, args.port, args.seconds + 2))
        return
    if args.role == "clients":
        asyncio.run(clients_process(args.sidecars, args.port, args.wait_s, args.seconds))
        return
    port = free_port()
    common = ["--sidecars", str(args.sidecars), "--seconds", str(args.seconds), "--port", str(port)]
    me = [sys.executable, "-m", "bench.operator.feedload"]
    feed = subprocess.Popen([*me, "--role", "feed", *common], stdout=subprocess.PIPE, text=True)
    assert feed.stdout is not None
    assert feed.stdout.readline().strip() == "ready"
    subprocess.run([*me, "--role", "clients", "--wait-s", str(args.wait_s), *common], check=True)
    print(feed.communicate()[0].strip())


if __name__ == "__main__":
    cli()
