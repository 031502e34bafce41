"""Apps that go away: disconnects mid-hold, mid-request and mid-body, on both protocols,
through the sidecar as its pod runs it (its own process, uvloop, JSON logs) in front of a
real tritonserver. An ordinary disconnect is the app's business: its slot is given back and
nothing is logged at ERROR."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from stagger.core.telemetry import DROPPED
from stagger_testkit.localtriton import LocalSidecar, LocalTriton
from tests.factories import slot_contract


def http_request(model: str) -> bytes:
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32", "data": [0.0]}]}
    ).encode()
    return (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def send_and_leave(address: str, request: bytes, after_s: float) -> None:
    host, port = address.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.transport.abort()  # a reset, as a killed app leaves it


async def grpc_calls_that_give_up(address: str, model: str, timeouts: list[float]) -> None:
    """Calls the app cancels (its deadline passes), then a channel closed under a call."""
    g = grpcclient.InferenceServerClient(address)
    i = grpcclient.InferInput("INPUT0", [1], "FP32")
    i.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    outcomes = await asyncio.gather(
        *(g.infer(model, [i], client_timeout=t) for t in timeouts), return_exceptions=True
    )
    assert any(isinstance(o, InferenceServerException) for o in outcomes)
    held = asyncio.create_task(g.infer(model, [i]))
    await asyncio.sleep(0.05)
    await g.close()
    await asyncio.gather(held, return_exceptions=True)


async def test_apps_that_go_away_log_no_errors(triton: LocalTriton, tmp_path: Path) -> None:
    """Waves of at most three requests (the stream's queue holds four), each wave's app
    going away at a different point."""
    slot = tmp_path / "slot.json"
    # A 300 ms period, the slot 5 ms wide: requests are held most of a period; "slow"
    # takes 60 ms at Triton once released.
    contract = slot_contract(period_ms=300, offset_ms=0, body_ms=5)
    slot.write_text(contract.model_dump_json(by_alias=True))
    log = tmp_path / "sidecar.log"
    stamp, slow = http_request("stamp"), http_request("slow")
    # Each wave starts 20 ms after a slot's start, so its first request is held 280 ms and
    # the others queue behind it. The waves are not periodic: the gate would send a request
    # whose slot is over half a period away at once, and an app's call would be answered
    # instead of giving up (a clean CI run); held up to a whole period, each waits.
    env = {"STAGGER_LOG_LEVEL": "INFO", "STAGGER_APERIODIC_MAX_WAIT_SHARE": "1"}
    with LocalSidecar("cam", slot, triton, namespace="ns", log_file=log, env=env) as sidecar:
        waves = [
            [send_and_leave(sidecar.http, stamp, 0.05) for _ in range(3)],  # held
            [send_and_leave(sidecar.http, stamp, 0.05) for _ in range(3)],
            [send_and_leave(sidecar.http, slow, 0.1 * k) for k in (1, 2, 3)],  # held or at Triton
            [send_and_leave(sidecar.http, stamp[:-10], 0.05) for _ in range(3)],  # mid-body
            [grpc_calls_that_give_up(sidecar.grpc, "stamp", [0.05] * 2)],
            [grpc_calls_that_give_up(sidecar.grpc, "slow", [0.1, 0.2])],
        ]
        for wave in waves:
            await asyncio.sleep((0.020 - time.time()) % 0.3)  # slots start at k x 300 ms
            await asyncio.gather(*wave)
            await asyncio.sleep(0.35)  # the held ones' slot has come and gone
        # The slots were given back: a request now waits for the next slot, not theirs.
        reader, writer = await asyncio.open_connection(*sidecar.http.rsplit(":", 1))
        writer.write(stamp)
        answer = await asyncio.wait_for(reader.readline(), 0.3 + 0.2)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        writer.close()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{sidecar.metrics}/metrics") as response,
        ):
            metrics = await response.text()
    dropped: Counter[str] = Counter()
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == DROPPED:
                dropped[sample.labels["reason"]] += int(sample.value)
    # 6 held HTTP requests and 3 held gRPC calls went away before their slot, at least.
    assert dropped["abandoned"] >= 7, dropped
    assert set(dropped) == {"abandoned"}, dropped
    lines = log.read_text().splitlines()
    assert lines, "the sidecar's log was not captured"
    loud = [x for x in lines if '"levelname": "ERROR"' in x or "Traceback" in x]
    assert not loud, "\n".join(lines)
    for noise in ("Task was destroyed", "never retrieved", "Exception in callback"):
        assert noise not in log.read_text(), "\n".join(lines)
