"""The operator end to end against kmock: apply → Placed latency, and a full re-plan.

    python -m bench.operator [--nodes 100] [--gpus 8] [--burst 1000] [--fleet 10000]
                             [--json FILE]

The API emulator runs in a process of its own, as an API server would; the operator (kopf,
the real handlers, default settings) and the client run in this one. The client creates
streams one after another, as ``kubectl apply -f`` does, and watches them: a stream's
latency runs from its create call's return to the watch event that shows it Placed, what a
user watching ``kubectl get istream -w`` sees.

1. A burst: ``--burst`` streams applied at once to ``--nodes`` × ``--gpus`` empty GPUs.
2. Steady arrivals on that fleet: ``--arrivals`` streams applied at ``--rate`` per second.
3. A fleet of ``--fleet`` streams as a previous operator left it an hour ago (streams with
   statuses, GpuSchedules, Deployments, ConfigMaps, built by the operator's own pure
   functions as it writes them and loaded into a fresh emulator; one operator first writes
   what the hour changed): a restarted operator's first reconcile (a full re-plan: read
   everything, plan, diff; it must write nothing), then an event-driven one, and the
   restarted operator's resident memory.
4. With ``--singles N``: N arrivals on that fleet, one at a time, through a running
   operator. Off by default: first kopf takes over the 10k streams it has not seen
   (finalizers, its annotations), tens of thousands of patches that take kmock many
   minutes.
5. A fleet applied one stream at a time (``--one-by-one``, each applied once the one
   before it is Placed, as cameras come online), with the default settings and with
   re-timing unbounded (``STAGGER_RETIME_MIN_INTERVAL_S=0``): GPUs used against one plan
   of the same streams, re-timed shards per stream, moves, apply -> Placed. With
   ``--contract-propagation-s S [S ...]``, the default-bound row once per value
   (``STAGGER_CONTRACT_PROPAGATION_S``: how long a re-timed table waits for the kubelet),
   side by side; ``--only-one-by-one`` skips 1-4.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import kopf
from kubernetes import client

from stagger.core.api import InferenceStreamStatus
from stagger.core.placement import plan
from stagger_operator.controller import Controller
from stagger_operator.desired import desired_state, plan_from_schedules
from stagger_operator.handlers import PlanStats  # importing registers the handlers
from stagger_operator.inventory import cluster_from_nodes
from stagger_operator.kube import Kube, parse_streams
from stagger_operator.rollout import Rollout
from stagger_operator.settings import OperatorSettings
from stagger_operator.status import serving_status
from tests.emulator import EMULATOR_URL, node, stream


def fleet_stream(i: int, rng: random.Random) -> dict[str, Any]:
    fps = rng.choice([1, 2, 5, 10, 15])
    body = round(rng.uniform(2, 8), 1)
    return stream(f"s{i:05d}", fps=fps, body=body, latencyMs=body + 8, memoryMiB=1024)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Watcher:
    """Times when each stream is first seen Placed, from a watch on InferenceStreams."""

    def __init__(self) -> None:
        self.placed: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        url = f"{EMULATOR_URL['url']}/apis/stagger.dev/v1alpha1/inferencestreams?watch=true"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as r:
            async for line in r.content:
                obj = json.loads(line)["object"]
                name = obj["metadata"]["name"]
                phase = (obj.get("status") or {}).get("phase")
                if phase == "Placed" and name not in self.placed:
                    self.placed[name] = time.perf_counter()
                    self.changed.set()

    async def until(self, names: list[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while not all(n in self.placed for n in names):
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                missing = [n for n in names if n not in self.placed]
                raise TimeoutError(f"{len(missing)} streams not Placed, e.g. {missing[:3]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


async def apply_all(kube: Kube, objs: list[dict[str, Any]]) -> dict[str, float]:
    """Create one after another (kubectl apply); when each create returned."""
    done: dict[str, float] = {}
    for obj in objs:
        await asyncio.to_thread(kube.apply, obj, None)
        done[obj["metadata"]["name"]] = time.perf_counter()
    return done


async def start(memo: kopf.Memo) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(clusterwide=True, standalone=True, memo=memo, stop_flag=stop)
    )
    return stop, task


async def stop_operator(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)


def api_client(connections: int = 32) -> client.ApiClient:
    configuration = client.Configuration(host=EMULATOR_URL["url"])
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    kube = Kube(api_client())
    with ThreadPoolExecutor(16) as pool:
        nodes = [node(f"gpu-{i:03d}", gpus=args.gpus) for i in range(args.nodes)]
        list(pool.map(lambda n: kube.apply(n, None), nodes))
    watcher = Watcher()
    watch_task = asyncio.create_task(watcher.run())
    settings = OperatorSettings()
    memo = kopf.Memo(api_client=api_client(), settings=settings, stats=PlanStats())
    stop, task = await start(memo)
    result: dict[str, Any] = {"nodes": args.nodes, "gpus_per_node": args.gpus}
    try:
        while memo.stats.plans < 1:  # the start-up plan (empty)
            await asyncio.sleep(0.05)

        # 1. A burst onto empty GPUs.
        burst = [fleet_stream(i, rng) for i in range(args.burst)]
        plans0, t0 = memo.stats.plans, time.perf_counter()
        created = await apply_all(kube, burst)
        applied_s = time.perf_counter() - t0
        await watcher.until(list(created), timeout=600)
        latency = [watcher.placed[n] - t for n, t in created.items()]
        while memo.stats.last is None or memo.stats.last.placed < len(burst):
            await asyncio.sleep(0.05)  # the plan counter moves after its statuses
        result["burst"] = {
            "streams": len(burst),
            "apply_seconds": round(applied_s, 2),
            "all_placed_seconds": round(max(watcher.placed.values()) - t0, 2),
            "latency_p50_s": round(pct(latency, 0.5), 3),
            "latency_p99_s": round(pct(latency, 0.99), 3),
            "latency_max_s": round(max(latency), 3),
            "plans": memo.stats.plans - plans0,
        }
        print("burst", result["burst"], flush=True)

        # 2. Steady arrivals onto the placed burst, once the operator is done with it (its
        # last plans' writes and re-timings go on for seconds after the last Placed).
        await quiet(memo, 2.0)
        arrivals = [fleet_stream(i, rng) for i in range(args.burst, args.burst + args.arrivals)]
        created = {}
        for obj in arrivals:
            began = time.perf_counter()
            created |= await apply_all(kube, [obj])
            await asyncio.sleep(max(0.0, 1 / args.rate - (time.perf_counter() - began)))
        await watcher.until(list(created), timeout=120)
        latency = [watcher.placed[n] - t for n, t in created.items()]
        result["arrivals"] = {
            "fleet": args.burst,
            "streams": len(arrivals),
            "rate_per_s": args.rate,
            "latency_p50_s": round(pct(latency, 0.5), 3),
            "latency_p99_s": round(pct(latency, 0.99), 3),
            "latency_max_s": round(max(latency), 3),
        }
        print("arrivals", result["arrivals"], flush=True)

    finally:
        await stop_operator(stop, task)
        watch_task.cancel()
    return result


async def quiet(memo: kopf.Memo, seconds: float) -> None:
    """Until the operator has not planned for ``seconds``."""
    while True:
        plans = memo.stats.plans
        await asyncio.sleep(seconds)
        if memo.stats.plans == plans:
            return


async def one_by_one(args: argparse.Namespace, settings: OperatorSettings) -> dict[str, Any]:
    """Streams applied one after another, each once the one before is Placed."""
    rng = random.Random(13)
    kube = Kube(api_client())
    nodes = [node(f"gpu-{i:03d}", gpus=args.gpus) for i in range(args.nodes)]
    for n in nodes:
        kube.apply(n, None)
    watcher = Watcher()
    watch_task = asyncio.create_task(watcher.run())
    memo = kopf.Memo(api_client=api_client(), settings=settings, stats=PlanStats())
    stop, task = await start(memo)
    retimed = moves = 0
    try:
        while memo.stats.plans < 1:
            await asyncio.sleep(0.05)
        objs = [fleet_stream(i, rng) for i in range(args.one_by_one)]
        latency: list[float] = []
        for obj in objs:
            created = await apply_all(kube, [obj])
            await watcher.until(list(created), timeout=120)
            name = obj["metadata"]["name"]
            latency.append(watcher.placed[name] - created[name])
        await asyncio.sleep(1.0)  # the last statuses and events
    finally:
        await stop_operator(stop, task)
        watch_task.cancel()
    registry = memo.metrics.registry
    retimed = sum(
        s.value
        for m in registry.collect()
        if m.name == "stagger_operator_retimings"
        for s in m.samples
        if s.name.endswith("_total")
    )
    moves = registry.get_sample_value("stagger_operator_moves_total") or 0
    streams, _ = parse_streams(objs)
    batch = plan(streams, cluster_from_nodes(nodes, settings), [], settings.planner())
    used = {(s.spec.node, s.spec.gpu_index) for s in kube.list_schedules() if s.spec.slots}
    return {
        "streams": len(objs),
        "retime_min_interval_s": settings.retime_min_interval_s,
        "contract_propagation_s": settings.contract_propagation_s,
        "gpus": len(used),
        "batch_gpus": len(batch.gpus),
        "retimed_per_stream": round(retimed / len(objs), 3),
        "moves": int(moves),
        "latency_p50_s": round(pct(latency, 0.5), 3),
        "latency_p99_s": round(pct(latency, 0.99), 3),
        "latency_max_s": round(max(latency), 3),
    }


def previous_state(args: argparse.Namespace, rng: random.Random) -> list[dict[str, Any]]:
    """The cluster as an operator leaves it after placing ``--fleet`` streams (no pods), an
    hour ago: every slot table has taken over since (:func:`fleet_run` lets one operator
    write what that changes before a restarted one is timed)."""
    settings = OperatorSettings()
    nodes = [node(f"gpu-{i:03d}", gpus=args.gpus) for i in range(args.nodes)]
    raw = [fleet_stream(i, rng) for i in range(args.fleet)]
    streams, _ = parse_streams(raw)
    now = datetime.now(UTC) - timedelta(hours=1)
    result = plan(streams, cluster_from_nodes(nodes, settings), [], settings.planner())
    desired = desired_state(streams, result, {}, settings, now)
    for obj, parsed in zip(raw, streams, strict=True):
        status = desired.statuses[(parsed.namespace, parsed.name)]
        status = serving_status(status, parsed, Rollout(), {}, settings=settings, now=now)
        obj["status"] = InferenceStreamStatus.model_validate(status).to_wire()
    # as the operator writes them: each with its last-applied record (Kube.apply), which
    # the next write's three-way merge reads
    return [*nodes, *raw, *map(Kube.as_written, [*desired.schedules, *desired.objects])]


async def fleet_run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    kube = Kube(api_client())
    result: dict[str, Any] = {}
    # 3. A restarted operator's first reconcile re-plans the whole fleet; then one more. The
    # fleet was placed an hour ago: first one operator writes what the hour changed (the
    # statuses of streams whose slots have started since), so that the restart is timed on
    # a settled fleet whatever loading it took.
    settling = Controller(Kube(api_client()), OperatorSettings(leader_election=False))
    t0 = time.perf_counter()
    settled = [await asyncio.to_thread(settling.reconcile) for _ in range(2)]
    settle_s = time.perf_counter() - t0
    settling.pool.shutdown()
    del settling
    gc.collect()
    rss_before = rss_mib()
    controller = Controller(Kube(api_client()), OperatorSettings(leader_election=False))
    timings = []
    for _ in range(2):
        t0 = time.perf_counter()
        report = await asyncio.to_thread(controller.reconcile)
        timings.append((time.perf_counter() - t0, report))
    gc.collect()
    rss_after = rss_mib()  # the controller still holds what it read, planned and wrote
    settings = OperatorSettings()
    t0 = time.perf_counter()
    streams, _ = kube.list_streams()
    nodes = kube.list_objects("Node")
    schedules = kube.list_schedules()
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan(
        streams,
        cluster_from_nodes(nodes, settings),
        [],
        settings.planner(),
        previous=plan_from_schedules(schedules, settings.tick_hz),
    )
    planning = time.perf_counter() - t0
    (cold, first), (warm, second) = timings
    result["replan"] = {
        "settling_seconds": round(settle_s, 1),  # an operator writing what the hour changed
        "settling_writes": sum(r.written for r in settled),
        "streams": first.streams,
        "placed": first.placed,
        "gpus_used": len(first.plan.gpus) if first.plan else 0,
        "restart_reconcile_seconds": round(cold, 2),
        "event_reconcile_seconds": round(warm, 2),
        "of_which_reading_streams_nodes_schedules_s": round(read, 2),
        "of_which_planning_s": round(planning, 2),
        "writes": first.written + second.written,
        "deletions": first.deleted + second.deleted,
        "moves": len(first.moves) + len(second.moves),
        "streams_skipped_as_unchanged": second.unchanged,
        # the operator's memory for the fleet: this process's resident set after the two
        # reconciles, above what it was before the controller existed, and its peak
        "controller_rss_mib": round(rss_after - rss_before),
        "process_rss_mib": round(rss_after),
        "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print("replan", result["replan"], flush=True)
    controller.pool.shutdown()

    if not args.singles:
        return result
    # 4. Arrivals on the fleet through the running operator.
    watcher = Watcher()
    watch_task = asyncio.create_task(watcher.run())
    memo = kopf.Memo(api_client=api_client(), settings=settings, stats=PlanStats())
    stop, task = await start(memo)
    try:
        # kopf takes over 10k streams it has not seen (finalizers, its annotations): let
        # that settle, as after a first install, before timing anything.
        t0, last = time.perf_counter(), -1
        while memo.stats.plans != last or memo.stats.plans < 1:
            last = memo.stats.plans
            await asyncio.sleep(5)
        result["takeover_seconds"] = round(time.perf_counter() - t0, 1)
        latency = []
        for i in range(args.fleet, args.fleet + args.singles):
            obj = fleet_stream(i, rng)
            created = await apply_all(kube, [obj])
            await watcher.until(list(created), timeout=120)
            name = obj["metadata"]["name"]
            latency.append(watcher.placed[name] - created[name])
            await asyncio.sleep(0.5)
        result["arrivals_on_fleet"] = {
            "fleet": args.fleet,
            "streams": args.singles,
            "latency_p50_s": round(statistics.median(latency), 3),
            "latency_max_s": round(max(latency), 3),
        }
        print("arrivals_on_fleet", result["arrivals_on_fleet"], flush=True)
    finally:
        await stop_operator(stop, task)
        watch_task.cancel()
    return result


def rss_mib() -> float:
    """This process's resident set now (Linux), MiB."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


@contextlib.contextmanager
def apiserver(preload: str | None = None) -> Iterator[str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.operator.apiserver", *([preload] if preload else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        yield server.stdout.readline().strip()
    finally:
        server.stdin.close()
        server.wait(30)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--fleet", type=int, default=10000)
    parser.add_argument("--arrivals", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2.0, help="arrivals per second")
    parser.add_argument("--singles", type=int, default=0)
    parser.add_argument("--one-by-one", type=int, default=300, metavar="N")
    parser.add_argument(
        "--contract-propagation-s",
        type=float,
        nargs="+",
        default=[OperatorSettings().contract_propagation_s],
        metavar="S",
    )
    parser.add_argument("--only-one-by-one", action="store_true", help="skip scenarios 1-4")
    parser.add_argument("--only-burst", action="store_true", help="scenarios 1-2 alone")
    parser.add_argument("--json", help="write the results here as well")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result: dict[str, Any] = {"nodes": args.nodes, "gpus_per_node": args.gpus}
    if not args.only_one_by_one:
        with apiserver() as url:
            EMULATOR_URL["url"] = url
            result |= asyncio.run(main(args))
        if args.only_burst:
            emit(result, args.json)
            return
        with tempfile.NamedTemporaryFile("w", suffix=".json") as preload:
            json.dump(previous_state(args, random.Random(11)), preload)
            preload.flush()
            with apiserver(preload.name) as url:
                EMULATOR_URL["url"] = url
                result |= asyncio.run(fleet_run(args))
    result["one_by_one"] = []
    default_bound = OperatorSettings().retime_min_interval_s
    runs = [(default_bound, s) for s in args.contract_propagation_s]
    runs.append((0.0, args.contract_propagation_s[0]))
    for bound, propagation in runs:
        with apiserver() as url:
            EMULATOR_URL["url"] = url
            settings = OperatorSettings(
                retime_min_interval_s=bound,
                contract_propagation_s=propagation,
                metrics_address=None,
            )
            row = asyncio.run(one_by_one(args, settings))
        print("one_by_one", row, flush=True)
        result["one_by_one"].append(row)
    emit(result, args.json)


def emit(result: dict[str, Any], path: str | None) -> None:
    print(json.dumps(result, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    cli()
