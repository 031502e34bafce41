"""What the slot feed costs the operator, beside what its metrics scrape of the same
sidecars costs: ``--sidecars`` sidecars hold feed requests that each return every
``--wait-s`` seconds (the sidecars' default is 30 s; shorter here to load it harder), and
the feed's process time is measured over the run; then the same process reads every
sidecar's metrics page once, as the operator's scrape does every 30 s (``scrape.fetch``,
``observe.parse``, ``observe.observe``), and its process time is measured too.

    python -m bench.operator.feedload [--sidecars 2000] [--wait-s 2] [--seconds 30]
                                      [--open-files 1024]

The feed (``stagger_operator.feed.SlotFeed`` with one published contract per sidecar) runs
in a process of its own, as in the operator; the clients in another, each asking as the
sidecar's ``FeedClient`` does (the request body carries its arrival phase), and serving
each sidecar's metrics page (the sidecar's own ``GateMetrics``, after 100 frames).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from stagger.core.contract import CONTRACT_FILE
from stagger_operator.feed import SlotFeed, serve
from stagger_operator.observe import observe, parse
from stagger_operator.scrape import fetch
from stagger_sidecar.metrics import GateMetrics, StreamKey
from stagger_testkit.localtriton import free_port
from tests.factories import slot_contract

SCRAPE_INTERVAL_S = 30.0  # the operator's default


def contract(i: int) -> str:
    c = slot_contract(f"cam-{i}", namespace="default", offset_ms=(i * 4.57) % 100)
    return c.model_dump_json(by_alias=True, exclude_none=True, indent=2)


def metrics_page() -> str:
    """A sidecar's metrics page after 100 frames, for stream "cam-X"."""
    metrics = GateMetrics()
    key = StreamKey("default", "cam-X", 0, "retinanet")
    for _ in range(100):
        metrics.completed(key, wait_s=0.004, service_s=0.02, late=False)
    metrics.slot_generation.labels("default", "cam-X", "0").set(3)
    metrics.watch_arrivals("default", "cam-X", 0, lambda: None)
    return generate_latest(metrics.registry).decode()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


async def feed_process(
    sidecars: int, port: int, metrics_port: int, seconds: float, open_files: int | None
) -> None:
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
    if open_files:  # as a container runtime may start the operator
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))
    runner = await serve(feed, f"127.0.0.1:{port}")
    idle_mib = peak_rss_mib()
    print("ready", flush=True)
    cpu, wall = time.process_time(), time.monotonic()
    connected = 0
    while time.monotonic() - wall < seconds:
        await asyncio.sleep(1)
        connected = max(connected, len(feed.connected()))
    cores = (time.process_time() - cpu) / (time.monotonic() - wall)
    holding_mib = peak_rss_mib()
    await runner.cleanup()
    urls = [f"http://127.0.0.1:{metrics_port}/metrics/{i}" for i in range(sidecars)]
    cpu = time.process_time()
    pages = await fetch(urls, timeout_s=10)
    read = observe(None, parse(pages, datetime.now(UTC)))
    scrape_cpu_s = time.process_time() - cpu
    assert len(read) == sidecars, f"the scrape read {len(read)} of {sidecars} sidecars"
    scrape_cores = scrape_cpu_s / SCRAPE_INTERVAL_S
    print(
        f"feed: {cores:.3f} cores, {connected} connected at most; one scrape of the same "
        f"sidecars: {scrape_cpu_s:.2f} CPU s, {scrape_cores:.3f} cores at one per "
        f"{SCRAPE_INTERVAL_S:g} s (feed / scrape {cores / scrape_cores:.2f}); "
        f"publishing: first {publish_s:.3f} s, unchanged {again_s:.3f} s; memory: "
        f"{idle_mib:.0f} MiB with the contracts published, {holding_mib:.0f} MiB at most "
        f"holding the sidecars' requests ({(holding_mib - idle_mib) * 1024 / sidecars:.0f} "
        "KiB a sidecar)"
    )


async def clients_process(
    sidecars: int, port: int, metrics_port: int, wait_s: float, seconds: float
) -> None:
    answered, failed = 0, set[int]()
    page = metrics_page()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=page.replace("cam-X", f"cam-{request.match_info['i']}"))

    app = web.Application()
    app.router.add_get("/metrics/{i}", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", metrics_port).start()

    async def sidecar(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal answered
        have, end = None, time.monotonic() + seconds
        url = f"http://127.0.0.1:{port}/v1/slots/default/cam-{i}-slot"
        phase = {"stream": f"cam-{i}", "shard": 0, "phaseS": 0.01, "spreadS": 0.0004}
        while time.monotonic() < end:
            body = {"have": have, "arrivals": [phase]}
            try:
                async with session.post(url, params={"wait": f"{wait_s:g}"}, json=body) as r:
                    if r.status == 200:
                        have = (await r.json())["version"]
                    answered += 1
            except (aiohttp.ClientError, TimeoutError):
                failed.add(i)
                await asyncio.sleep(0.25)  # as the sidecar's FeedClient backs off

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=wait_s + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(sidecar(session, i) for i in range(sidecars)))
    print(
        f"clients: {answered} answers in {seconds:g} s, {answered / seconds:.0f}/s; "
        f"{len(failed)} of {sidecars} sidecars had a request fail (no answer, refused)",
        flush=True,
    )
    await asyncio.sleep(120)  # the pages stay up while the feed's process scrapes them
    await runner.cleanup()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sidecars", type=int, default=2000)
    parser.add_argument("--wait-s", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--open-files",
        type=int,
        help="start the feed's process at this soft limit on open files (a runtime's 1024)",
    )
    parser.add_argument("--role", choices=["feed", "clients"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "feed":
        asyncio.run(
            feed_process(
                args.sidecars, args.port, args.metrics_port, args.seconds + 2, args.open_files
            )
        )
        return
    if args.role == "clients":
        asyncio.run(
            clients_process(args.sidecars, args.port, args.metrics_port, args.wait_s, args.seconds)
        )
        return
    ports = ["--port", str(free_port()), "--metrics-port", str(free_port())]
    common = ["--sidecars", str(args.sidecars), "--seconds", str(args.seconds), *ports]
    me = [sys.executable, "-m", "bench.operator.feedload"]
    limit = ["--open-files", str(args.open_files)] if args.open_files else []
    feed = subprocess.Popen(
        [*me, "--role", "feed", *limit, *common], stdout=subprocess.PIPE, text=True
    )
    assert feed.stdout is not None
    assert feed.stdout.readline().strip() == "ready"
    clients = subprocess.Popen([*me, "--role", "clients", "--wait-s", str(args.wait_s), *common])
    try:
        out, _ = feed.communicate()
    finally:
        clients.terminate()
        clients.wait(10)
    if feed.returncode:
        raise SystemExit("the feed's process failed")
    print(out.strip())


if __name__ == "__main__":
    cli()
