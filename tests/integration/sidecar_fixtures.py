"""A real tritonserver (nvidia-pytriton wheel) and sidecars in front of it, for the tests."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stagger.core.contract import SlotAssignment
from stagger_sidecar.app import Sidecar
from stagger_sidecar.settings import GateSettings
from stagger_testkit.localtriton import LocalTriton
from tests.factories import slot_contract

MODELS = Path(__file__).parent.parent / "models"


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with LocalTriton(MODELS, log_file=log) as server:
        yield server


StartSidecar = Callable[..., Awaitable[Sidecar]]


def write_contract(path: Path, contract: SlotAssignment) -> None:
    """Replace the file in one step, as the kubelet swaps a ConfigMap."""
    staging = path.with_suffix(".tmp")
    staging.write_text(contract.model_dump_json(by_alias=True))
    staging.rename(path)


@pytest.fixture
async def start_sidecar(triton: LocalTriton, tmp_path: Path) -> AsyncIterator[StartSidecar]:
    started: list[Sidecar] = []

    async def start(
        contract: SlotAssignment | None = None,
        upstream: LocalTriton | None = None,
        slot_name: str = "slot.json",
        **overrides: Any,
    ) -> Sidecar:
        slot = tmp_path / slot_name
        write_contract(slot, contract or slot_contract())
        server = upstream or triton
        settings: dict[str, Any] = {
            "stream": "cam",
            "slot_file": slot,
            "triton_http": server.http,
            "triton_grpc": server.grpc,
            "http_address": "127.0.0.1:0",
            "grpc_address": "127.0.0.1:0",
            "metrics_address": "127.0.0.1:0",
            "slot_poll_s": 0.05,
            "log_format": "text",
        }
        sidecar = await Sidecar(GateSettings(**{**settings, **overrides})).start()
        started.append(sidecar)
        # As the gate's process does after start-up (stagger_sidecar.__main__): here the
        # heap is the whole test session's, whose full collections took 135-307 ms and held
        # the in-process gate's releases up to 150 ms (three timing tests failed together
        # in a clean CI run, 2026-12-04).
        gc.freeze()
        return sidecar

    yield start
    for sidecar in started:
        await sidecar.stop()
    gc.unfreeze()  # the rest of the session collects as before


async def scrape(sidecar: Sidecar) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The sidecar's /metrics, over HTTP, as {(sample name, labels): value}."""
    url = f"http://127.0.0.1:{sidecar.ports['metrics']}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)
