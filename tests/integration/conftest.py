"""The real operator against kmock, kopf's Kubernetes API emulator.

kmock has no garbage collector, Deployment controller or kubelet, and ignores label
selectors: the operator deletes what it owns itself and filters by label on its side, and
the tests check objects, schedules and statuses rather than running pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
import uvloop
from kubernetes import client

from stagger_operator.handlers import PlanStats  # importing registers the handlers
from stagger_operator.kube import Kube
from stagger_operator.settings import OperatorSettings
from stagger_testkit.localtriton import free_port
from tests.emulator import EMULATOR_URL, OBSERVER, Emulator, declare, node, ready_pod
from tests.integration.sidecar_fixtures import start_sidecar, triton  # noqa: F401  (fixtures)
from tests.waiting import until

# Modules that time real servers or the operator against the wall clock (knees, latencies,
# slots, a burst's plans): `make pytest` runs them with the CPU to themselves and every
# other test beside them at the lowest priority (`nice`), so that neither waits for the
# other and these measure what they would alone.
QUIET_MODULES = {
    "test_calibration_servers",
    "test_coordinated",
    "test_examples",
    "test_faults",
    "test_operator",
    "test_overhead_calls",
    "test_profile",
    "test_serving",
    "test_sidecar",
    "test_sidecar_disconnects",
    "test_sidecar_grpc",
    "test_slot_feed",
    "test_whatif",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name == "integration" and item.path.stem in QUIET_MODULES:
            item.add_marker(pytest.mark.quiet)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Any:
    """The sidecar runs on uvloop in production (STAGGER_EVENT_LOOP): test it there."""
    if item.path.name == "test_sidecar.py":
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@dataclass
class Cluster:
    kube: Kube
    emulator: kmock.KubernetesEmulator
    server: kmock.Server

    def client_as(self, token: str) -> client.ApiClient:
        """A fresh client presenting ``token`` (``tests.emulator``: faults and kills hit
        every token but the observer's), configured as the operator configures its own."""
        return api_client(self.kube.api.configuration.host, token)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def create(self, obj: dict[str, Any]) -> None:
        await self.call(self.kube.apply, obj, None)

    async def objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.call(self.kube.list_objects, kind, namespace)
        return result

    async def wait_for(self, check: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Poll a check until it returns something truthy (bounded)."""
        return await until(check, timeout_s=timeout)


async def run_pod(c: Cluster, deployment: dict[str, Any], *, ip: str = "127.0.0.1") -> None:
    """Stand in for the Deployment controller and the kubelet: a Ready pod from the
    Deployment's template (all such pods share one IP here; metrics carry their shard)."""
    await c.create(ready_pod(deployment, ip=ip))


class NotTheOperators(set[asyncio.Task[Any]]):
    """The tasks in the test's loop that are not the operator's, which kopf must not wait
    for at exit (it takes every task created after it started for one of the operator's
    and waits 5 s for them): those before it started, the teardown's, and the emulator's
    request handlers. A handler serving a watch the operator closed ends only at the
    emulator's next event on that watch; the operator's own servers are still waited for."""

    def __init__(self, emulator: kmock.Server) -> None:
        super().__init__()
        self.emulator = emulator.server.runner.server if emulator.server.runner else None

    def __contains__(self, task: object) -> bool:
        if super().__contains__(task):
            return True
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        frame = getattr(coro, "cr_frame", None)
        handler = frame.f_locals.get("self") if frame is not None else None
        return self.emulator is not None and getattr(handler, "_manager", None) is self.emulator


@dataclass
class Operator:
    memo: kopf.Memo
    stop: asyncio.Event
    task: asyncio.Task[None]
    not_its_own: NotTheOperators


def api_client(host: str, token: str) -> client.ApiClient:
    configuration = client.Configuration(host=host)
    configuration.retries = False  # as the operator's: Kube retries, urllib3 does not
    configuration.connection_pool_maxsize = 16
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(configuration)


@contextlib.asynccontextmanager
async def emulated_cluster() -> AsyncIterator[Cluster]:
    """A fresh kmock with two GPU nodes; kopf logs in to it (one at a time per process)."""
    emulator = declare(Emulator())
    emulator.faults, emulator.writes_left, emulator.dead = [], {}, set()
    async with kmock.Server(emulator) as server:
        EMULATOR_URL["url"] = str(server.url)
        c = Cluster(Kube(api_client(str(server.url), OBSERVER)), emulator, server)
        for name in ("gpu-a", "gpu-b"):
            await c.create(node(name))
        yield c


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with emulated_cluster() as c:
        yield c


async def start_operator(
    c: Cluster,
    token: str = "operator",
    skew: timedelta = timedelta(0),
    **settings: Any,
) -> Operator:
    """An operator process: kopf and its own fresh client (no pooled connections), both
    presenting ``token`` to the emulator; its node's wall clock ``skew`` off."""
    api = c.client_as(token)
    memo = kopf.Memo(
        api_client=api,
        settings=OperatorSettings(
            **{
                "debounce_s": 0.05,
                "max_delay_s": 1.0,
                "resync_s": 3600.0,
                "metrics_address": None,
                **settings,
            }
        ),
        stats=PlanStats(),
        token=token,
        wall_clock=lambda: datetime.now(UTC) + skew,
    )
    stop = asyncio.Event()
    not_its_own = NotTheOperators(c.server)

    async def run() -> None:
        not_its_own.update(asyncio.all_tasks())
        tasks = await kopf.spawn_tasks(clusterwide=True, standalone=True, memo=memo, stop_flag=stop)
        await kopf.run_tasks(tasks, ignored=not_its_own)

    return Operator(memo, stop, asyncio.create_task(run()), not_its_own)


async def stop_operator(op: Operator) -> None:
    current = asyncio.current_task()
    if current is not None:
        op.not_its_own.add(current)
    op.stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(op.task, 15)


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[Operator]:
    op = await start_operator(cluster)
    yield op
    await stop_operator(op)


def kubeconfig(directory: Path, server: str, token: str = "x") -> Path:
    """``directory/config``: a kubeconfig for the emulator, presenting ``token``; readable
    by an image's non-root user."""
    directory.mkdir(mode=0o755)
    path = directory / "config"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "op", "user": {"token": token}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "op"}}],
                "current-context": "kmock",
            }
        )
    )
    path.chmod(0o644)
    return directory


# The operator's own entry point, with two kopf settings for kmock: kmock 0.8 answers the
# namespace listing kopf's scanning makes with 500 (tests/emulator.py does the same), and
# STAGGER_TEST_CLOCK_SKEW_S, where set, skews this process's wall clock for the Lease.
OPERATOR_ON_KMOCK = """
import os
from datetime import UTC, datetime, timedelta

import kopf

@kopf.on.startup()
def _kmock_cannot_list_namespaces(settings, memo, **_):
    settings.scanning.disabled = True
    skew = timedelta(seconds=float(os.environ.get("STAGGER_TEST_CLOCK_SKEW_S", "0")))
    memo.wall_clock = lambda: datetime.now(UTC) + skew

from stagger_operator.__main__ import main
main([])
"""


def operator_process(
    c: Cluster, directory: Path, token: str, *, skew: timedelta = timedelta(0), **env: str
) -> subprocess.Popen[bytes]:
    """The operator as its own process (``python -m``-like, this venv), presenting ``token``
    to the emulator; its output goes to ``directory/operator.log``."""
    config = kubeconfig(directory, c.kube.api.configuration.host, token)
    settings = {
        "KUBECONFIG": str(config / "config"),
        "STAGGER_IDENTITY": token,
        "STAGGER_HEALTH_ADDRESS": f"127.0.0.1:{free_port()}",
        "STAGGER_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "STAGGER_DEBOUNCE_S": "0.05",
        "STAGGER_TEST_CLOCK_SKEW_S": str(skew.total_seconds()),
        **env,
    }
    with open(directory / "operator.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", OPERATOR_ON_KMOCK],
            env={**os.environ, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
