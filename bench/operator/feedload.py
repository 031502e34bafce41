"""What the slot feed costs the operator, beside what its metrics scrape of the same
sidecars costs: ``--sidecars`` sidecars hold feed requests that each return every
``--wait-s`` seconds (the sidecars' default is 30 s; shorter here to load it harder), and
the feed's process time is measured over the run; then the same process reads every
sidecar's metrics page once, as the operator's scrape does every 30 s (``scrape.fetch``,
``observe.parse``, ``observe.observe``), and its process time is measured too.

    python -m bench.operator.feedload [--sidecars 2000] [--wait-s 2] [--seconds 30]
                                      [--open-files 1024] [--standby-s S] [--before-plan-s S]

The feed (``stagger_operator.feed.SlotFeed`` with one published contract per sidecar) runs
in a process of its own, as in the operator; the clients in another, each the sidecar's own
``FeedClient`` with a connection of its own (the request body carries its arrival phase),
serving each sidecar's metrics page (the sidecar's own ``GateMetrics``, after 100 frames).
``--standby-s`` and ``--before-plan-s`` first measure what the sidecars ask of a replica
that is not the Lease holder, then of the holder before its first plan (a restart, a
failover), before the contracts are published.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import generate_latest

from stagger.core.contract import CONTRACT_FILE
from stagger_operator.feed import SlotFeed, serve
from stagger_operator.observe import observe, parse
from stagger_operator.scrape import fetch
from stagger_sidecar.feed import FeedClient, Measured
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


async def feed_process(args: argparse.Namespace) -> None:
    feed = SlotFeed()
    configmaps = {
        ("default", f"cam-{i}-slot"): {CONTRACT_FILE: contract(i)} for i in range(args.sidecars)
    }
    if args.open_files:  # as a container runtime may start the operator
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.open_files, hard))
    runner = await serve(feed, f"127.0.0.1:{args.port}")
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the clients have started

    async def window(what: str, seconds: float) -> float:
        """Serve for ``seconds``; print the requests and cores; the cores."""
        if seconds <= 0:
            return 0.0
        cpu, wall, asked = time.process_time(), time.monotonic(), feed.requests
        await asyncio.sleep(seconds)
        took = time.monotonic() - wall
        cores = (time.process_time() - cpu) / took
        rate = (feed.requests - asked) / took
        print(f"{what}: {rate:.0f} requests/s, {cores:.3f} cores over {took:.1f} s", flush=True)
        return cores

    await window("a standby replica (503)", args.standby_s)
    feed.serving = True
    await window("the Lease holder before its first plan", args.before_plan_s)
    began = time.perf_counter()
    feed.publish(configmaps)
    publish_s = time.perf_counter() - began
    began = time.perf_counter()
    feed.publish(configmaps)  # as every reconcile does, nothing changed
    again_s = time.perf_counter() - began
    idle_mib = peak_rss_mib()
    cpu, wall = time.process_time(), time.monotonic()
    connected = 0
    while time.monotonic() - wall < args.seconds + 2:
        await asyncio.sleep(1)
        connected = max(connected, len(feed.connected()))
    cores = (time.process_time() - cpu) / (time.monotonic() - wall)
    holding_mib = peak_rss_mib()
    await runner.cleanup()
    urls = [f"http://127.0.0.1:{args.metrics_port}/metrics/{i}" for i in range(args.sidecars)]
    cpu = time.process_time()
    pages = await fetch(urls, timeout_s=10)
    read = observe(None, parse(pages, datetime.now(UTC)))
    scrape_cpu_s = time.process_time() - cpu
    assert len(read) == args.sidecars, f"the scrape read {len(read)} of {args.sidecars} sidecars"
    scrape_cores = scrape_cpu_s / SCRAPE_INTERVAL_S
    print(
        f"feed: {cores:.3f} cores, {connected} connected at most; one scrape of the same "
        f"sidecars: {scrape_cpu_s:.2f} CPU s, {scrape_cores:.3f} cores at one per "
        f"{SCRAPE_INTERVAL_S:g} s (feed / scrape {cores / scrape_cores:.2f}); "
        f"publishing: first {publish_s:.3f} s, unchanged {again_s:.3f} s; memory: "
        f"{idle_mib:.0f} MiB with the contracts published, {holding_mib:.0f} MiB at most "
        f"holding the sidecars' requests "
        f"({(holding_mib - idle_mib) * 1024 / args.sidecars:.0f} KiB a sidecar)"
    )


async def clients_process(args: argparse.Namespace) -> None:
    """Each sidecar runs the sidecar's own ``FeedClient`` (its own connection, its retry
    rules), reporting a phase, for ``--standby-s`` + ``--before-plan-s`` + ``--seconds``."""
    answered, failed = 0, set[int]()
    page = metrics_page()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=page.replace("cam-X", f"cam-{request.match_info['i']}"))

    app = web.Application()
    app.router.add_get("/metrics/{i}", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.metrics_port).start()

    def sidecar(i: int) -> FeedClient:
        def connected(up: bool) -> None:
            nonlocal answered
            if up:
                answered += 1
            else:
                failed.add(i)

        phase = Measured(f"cam-{i}", 0, 0.1, 0.01, 0.0004, None)
        return FeedClient(
            f"http://127.0.0.1:{args.port}/v1/slots/default/cam-{i}-slot",
            measure=lambda: [phase],
            load=lambda contracts: None,
            on_connected=connected,
            wait_s=args.wait_s,
        )

    seconds = args.standby_s + args.before_plan_s + args.seconds
    tasks = [asyncio.create_task(sidecar(i).run()) for i in range(args.sidecars)]
    print("ready", flush=True)
    await asyncio.sleep(args.standby_s + args.before_plan_s)
    failed.clear()  # from here on a failure is one with a plan served
    answered = 0
    await asyncio.sleep(args.seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(
        f"clients: {answered} answers in {args.seconds:g} s, {answered / args.seconds:.0f}/s; "
        f"{len(failed)} of {args.sidecars} sidecars had a request fail or refused "
        f"once the plan was served (of {seconds:g} s in all)",
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
    parser.add_argument(
        "--standby-s",
        type=float,
        default=0.0,
        help="first, the feed is a standby replica this long (503: not the Lease holder)",
    )
    parser.add_argument(
        "--before-plan-s",
        type=float,
        default=0.0,
        help="then the Lease holder before its first plan, this long (a restart, a failover)",
    )
    parser.add_argument("--role", choices=["feed", "clients"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "feed":
        asyncio.run(feed_process(args))
        return
    if args.role == "clients":
        asyncio.run(clients_process(args))
        return
    ports = ["--port", str(free_port()), "--metrics-port", str(free_port())]
    common = [
        *("--sidecars", str(args.sidecars), "--seconds", str(args.seconds), *ports),
        *("--standby-s", str(args.standby_s), "--before-plan-s", str(args.before_plan_s)),
    ]
    me = [sys.executable, "-m", "bench.operator.feedload"]
    limit = ["--open-files", str(args.open_files)] if args.open_files else []
    feed = subprocess.Popen(
        [*me, "--role", "feed", *limit, *common],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert feed.stdin is not None and feed.stdout is not None
    assert feed.stdout.readline().strip() == "ready"
    clients = subprocess.Popen(
        [*me, "--role", "clients", "--wait-s", str(args.wait_s), *common],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert clients.stdout is not None
    try:
        assert clients.stdout.readline().strip() == "ready"
        out, _ = feed.communicate("go\n")  # both count time from here
        print(clients.stdout.readline().strip())
    finally:
        clients.terminate()
        clients.wait(10)
    if feed.returncode:
        raise SystemExit("the feed's process failed")
    print(out.strip())


if __name__ == "__main__":
    cli()
