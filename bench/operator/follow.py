"""How long the operator takes to re-time a GPU to its cameras' arrival phases: with the
slot feed (the chart's default) and without it (phases read from the sidecars' metrics
every 30 s, re-timed tables wait out the kubelet's ConfigMap propagation), side by side.

    python -m bench.operator.follow [--json FILE]        # about 9 minutes

Each mode runs in a process of its own at the same time: the API emulator (kmock), the
operator (kopf, the real handlers, the chart's settings: follow_arrivals, 60 s pins, 120 s
propagation, 30 s scrape) and, per shard, what its sidecar says: over the feed, the
sidecar's own ``FeedClient``; without it, the sidecar's own metrics page (``GateMetrics``),
scraped from a Ready pod. Two 10 fps cameras (12 ms bodies) on one GPU, as a user applies
them:

1. camera A is applied; its requests arrive 20 ms into the period;
2. once A is followed, camera B is applied; its requests arrive at 60 ms (a start);
3. while A's slot is still pinned by the re-timing that followed it (60 s), A's camera
   restarts and its requests arrive at 85 ms (a phase jump).

For each event: from when the sidecar knows the phase to when the first table that starts
the camera's slot within 10 ms after its arrivals takes over (its switch instant). A real
sidecar knows a phase after 8 requests (0.8 s at 10 fps), which comes on top.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import generate_latest

from stagger.core.phase import PhaseEstimate
from stagger_operator.handlers import PlanStats  # importing registers the handlers
from stagger_operator.kube import Kube
from stagger_operator.settings import OperatorSettings
from stagger_sidecar.feed import FeedClient, Measured
from stagger_sidecar.metrics import GateMetrics
from stagger_testkit.localtriton import free_port
from tests.emulator import EMULATOR_URL, node, ready_pod, stream

from . import __main__ as bench

PERIOD_S, BODY_MS, FOLLOWED_S = 0.1, 12.0, 0.010
EVENTS: list[tuple[str, str, dict[str, float]]] = [  # what happens, on which GPU, phases
    ("start A", "solo", {"cam-a": 0.020}),
    ("start B", "solo", {"cam-b": 0.060}),
    ("A restarts at 85 ms, its slot pinned", "solo", {"cam-a": 0.085}),
    (
        "4 started together",
        "fleet",
        {f"fleet-{i}": p for i, p in enumerate((0.01, 0.035, 0.055, 0.08))},
    ),
]
FLEET_SPREAD_S = 0.3
"""Cameras started together know their phases this far apart, one after another (pods and
cameras start at slightly different times)."""


class Sidecars:
    """What each shard's sidecar says of its camera: over the feed, or on a metrics page."""

    def __init__(self, feed: bool, metrics_port: int) -> None:
        self.feed, self.metrics_port = feed, metrics_port
        self.phase: dict[str, float] = {}
        self.clients: dict[str, FeedClient] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.metrics = GateMetrics()

    async def serve_metrics(self) -> web.AppRunner:
        app = web.Application()

        async def page(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.metrics.registry))

        app.router.add_get("/metrics", page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.metrics_port).start()
        return runner

    def start(self, name: str, deployment: dict[str, Any]) -> None:
        if self.feed:
            (sidecar,) = [
                c
                for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == "stagger-sidecar"
            ]
            url = next(e["value"] for e in sidecar["env"] if e["name"] == "STAGGER_SLOT_FEED")
            client = FeedClient(url, measure=lambda: self.measure(name), load=lambda _: None)
            self.clients[name] = client
            self.tasks.append(asyncio.create_task(client.run()))
        else:
            self.metrics.watch_arrivals("default", name, 0, lambda: self.estimate(name))

    def set_phase(self, name: str, phase_s: float) -> None:
        self.phase[name] = phase_s
        if name in self.clients:
            self.clients[name].nudge()

    def estimate(self, name: str) -> PhaseEstimate | None:
        if name not in self.phase:
            return None
        return PhaseEstimate(PERIOD_S, self.phase[name], 0.0005, 0.99, 16, 16)

    def measure(self, name: str) -> list[Measured]:
        phase = self.phase.get(name)
        spread = 0.0005 if phase is not None else None
        return [Measured(name, 0, PERIOD_S, phase, spread, None)]


async def run_mode(feed: bool) -> dict[str, Any]:
    feed_port, metrics_port = free_port(), free_port()
    settings = OperatorSettings(
        metrics_address=None,
        sidecar_metrics_port=metrics_port,
        feed_address=f"127.0.0.1:{feed_port}" if feed else None,
        feed_url=f"http://127.0.0.1:{feed_port}" if feed else None,
    )
    kube = Kube(bench.api_client())
    for pool in ("solo", "fleet"):
        gpu_node = node(pool, gpus=1)
        gpu_node["metadata"]["labels"]["pool"] = pool
        kube.apply(gpu_node, None)
    sidecars = Sidecars(feed, metrics_port)
    metrics_runner = await sidecars.serve_metrics()
    memo = kopf.Memo(api_client=bench.api_client(), settings=settings, stats=PlanStats())
    stop, task = await bench.start(memo)
    tick_hz = settings.tick_hz
    events: list[dict[str, Any]] = []
    try:
        for label, pool, phases in EVENTS:
            new = [n for n in phases if n not in sidecars.phase]
            for name in new:  # applied together, as one kubectl apply -f
                camera = stream(
                    name, fps=1 / PERIOD_S, body=BODY_MS, latencyMs=60, nodeSelector={"pool": pool}
                )
                kube.apply(camera, None)
            for name in new:  # their pods start, their sidecars with them
                deployment = await _wait(lambda n=name: _deployment(kube, n), 60)
                kube.apply(ready_pod(deployment), None)  # the kubelet's part
                sidecars.start(name, deployment)
            pinned_s = max((_pinned_for(kube, n) for n in phases), default=0.0)
            before = _generation(kube, pool)
            known = datetime.now(UTC)
            for i, (name, phase) in enumerate(phases.items()):
                await asyncio.sleep(FLEET_SPREAD_S if i else 0.0)
                sidecars.set_phase(name, phase)
            table = await _wait(lambda p=phases: _following(kube, p, tick_hz), 600)
            switch = table.spec.effective_at
            events.append(
                {
                    "event": label,
                    "phases_ms": [round(p * 1e3) for p in phases.values()],
                    "seconds": round((switch - known).total_seconds(), 1),
                    "tables": table.spec.generation - before,
                    "pinned_for_s": round(pinned_s, 1),
                }
            )
            print("feed" if feed else "scrape", events[-1], flush=True)
            await asyncio.sleep(max(0.0, (switch - datetime.now(UTC)).total_seconds()) + 0.5)
    finally:
        for t in sidecars.tasks:
            t.cancel()
        await bench.stop_operator(stop, task)
        await metrics_runner.cleanup()
    return {"slot_feed": feed, "events": events}


def _deployment(kube: Kube, name: str) -> dict[str, Any] | None:
    found = [
        d
        for d in kube.list_managed("Deployment")
        if d["metadata"]["labels"]["stagger.dev/stream"] == name
    ]
    return found[0] if found else None


def _generation(kube: Kube, pool: str) -> int:
    return next((x.spec.generation for x in kube.list_schedules() if x.spec.node == pool), 0)


def _pinned_for(kube: Kube, name: str) -> float:
    """How long until the camera's shard may be re-timed again."""
    slots = [x for sched in kube.list_schedules() for x in sched.spec.slots if x.stream == name]
    if not slots or slots[0].retimed_at is None:
        return 0.0
    until = slots[0].retimed_at.timestamp() + OperatorSettings().retime_min_interval_s
    return max(0.0, until - time.time())


def _following(kube: Kube, phases: dict[str, float], tick_hz: int) -> Any:
    """The table in which every one of the cameras' slots starts just after its phase."""
    for sched in kube.list_schedules():
        slots = {x.stream: x for x in sched.spec.slots}
        if phases.keys() <= slots.keys() and all(
            (slots[n].offset_ticks / tick_hz - p) % PERIOD_S <= FOLLOWED_S
            for n, p in phases.items()
        ):
            return sched
    return None


async def _wait(check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await asyncio.to_thread(check)
        if got:
            return got
        await asyncio.sleep(0.2)
    raise TimeoutError(f"not within {timeout_s:.0f} s")


def one(mode: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    with bench.apiserver() as url:
        EMULATOR_URL["url"] = url
        result = asyncio.run(run_mode(mode == "feed"))
    print("RESULT " + json.dumps(result), flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here as well")
    parser.add_argument("--mode", choices=["feed", "scrape"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        one(args.mode)
        return
    runs = {
        mode: subprocess.Popen(
            [sys.executable, "-m", "bench.operator.follow", "--mode", mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        for mode in ("feed", "scrape")
    }
    results = []
    for mode, proc in runs.items():
        out, _ = proc.communicate()
        sys.stdout.write(out)
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            raise SystemExit(f"the {mode} run failed")
        results.append(json.loads(line.removeprefix("RESULT ")))
    print("| event | with the slot feed | without (scrape + ConfigMap) |")
    print("|---|---|---|")
    for on, off in zip(results[0]["events"], results[1]["events"], strict=True):
        cells = [f"{r['seconds']} s ({r['tables']} table(s))" for r in (on, off)]
        phases = ", ".join(str(p) for p in on["phases_ms"])
        print(f"| {on['event']} (phases {phases} ms) | {cells[0]} | {cells[1]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        cli()
