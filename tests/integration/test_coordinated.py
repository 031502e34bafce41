"""Coordinated release through real sidecars and a real tritonserver: two streams' sidecars
share one GPU ledger file; the second stream's requests wait for the first's body as
Triton measured it, up to the longest delay."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import numpy as np
import tritonclient.http.aio as httpclient

from stagger.core.telemetry import COORDINATED_DELAY, COORDINATED_FORCED, LATE
from stagger_sidecar.app import Sidecar
from tests.factories import slot_contract
from tests.integration.sidecar_fixtures import StartSidecar, metric, scrape
from tests.waiting import until

PERIOD = 0.100
A_OFFSET, B_OFFSET = 0.030, 0.035  # b's slot opens 5 ms after a's
ROUNDS = 8
SLOW_MS = 60  # tests/models/slow: a's request holds "the GPU" this long
LEAD_S = 0.003


def next_slot(offset: float, after: float) -> float:
    return math.ceil((after - offset) / PERIOD) * PERIOD + offset


async def two_streams(
    start_sidecar: StartSidecar, ledger: Path, **settings: object
) -> tuple[Sidecar, Sidecar]:
    a = await start_sidecar(
        # A calibrated body longer than Triton will measure: the measure holds the GPU.
        slot_contract("a", offset_ms=A_OFFSET * 1e3, body_ms=SLOW_MS + 10),
        slot_name="a.json",
        stream="a",
        gpu_ledger=ledger,
        stats_interval_s=0.2,
        **settings,
    )
    b = await start_sidecar(
        slot_contract("b", offset_ms=B_OFFSET * 1e3, body_ms=5),
        slot_name="b.json",
        stream="b",
        gpu_ledger=ledger,
        **settings,
    )
    return a, b


async def run_rounds(
    a: Sidecar, b: Sidecar, sent: dict[str, list[float]] | None = None
) -> tuple[list[tuple[float, float]], float]:
    """a sends to the slow model at each of its slots, b to ``stamp`` at each of its own,
    each at its own pace; per period (a's slot, when b's request began in Triton), and how
    many of b's requests had gone late before the rounds (its warm-up's first may: a new
    stream is taken at its word, gate.py). ``sent`` gets when each app sent each round's
    request ("a", "b"): both run in this process, so a stall of it delays both."""
    sent = {} if sent is None else sent
    sent_a, sent_b = sent.setdefault("a", []), sent.setdefault("b", [])
    x = httpclient.InferInput("INPUT0", [1], "FP32")
    x.set_data_from_numpy(np.zeros(1, np.float32))
    to_a, to_b = (httpclient.InferenceServerClient(f"127.0.0.1:{s.ports['http']}") for s in (a, b))
    try:
        for _ in range(3):  # Triton measures the slow model's body; a's sidecar reads it
            await to_a.infer("slow", [x])
        # A fresh model's first few answers take ~30 ms on some machines, straight from
        # Triton too (measured without a sidecar): a late answer would make b send its next
        # request after its slot and take the one after. Warm b's model before the rounds.
        for _ in range(6):
            await to_b.infer("stamp", [x])
        await until(lambda: "slow" in a.keeper.bodies, what="a's measured body")
        late_before = metric(await scrape(b), LATE, stream="b")
        first = next_slot(A_OFFSET, time.time() + 0.05)

        async def a_stream() -> None:
            for k in range(ROUNDS):
                await asyncio.sleep(max(0.0, first + k * PERIOD - LEAD_S - time.time()))
                sent_a.append(time.time())
                await to_a.infer("slow", [x])

        async def b_stream() -> list[float]:
            began = []
            for k in range(ROUNDS):
                slot_b = first + k * PERIOD + B_OFFSET - A_OFFSET
                # Both apps send a few ms before their slots, as slot-clock apps do (their
                # lead): sent at the slot itself, a request that takes more than b's 5 ms
                # grace to reach the gate (4 ms seen on a loaded 2-core machine) takes b's
                # next slot, and every later round falls a period behind with it.
                await asyncio.sleep(max(0.0, slot_b - LEAD_S - time.time()))
                sent_b.append(time.time())
                result = await to_b.infer("stamp", [x])
                began.append(float(result.as_numpy("OUTPUT0")[0]))
            return began

        _, began_b = await asyncio.gather(a_stream(), b_stream())
    finally:
        await to_a.close()
        await to_b.close()
    return [(first + k * PERIOD, began) for k, began in enumerate(began_b)], late_before


async def test_a_stream_waits_for_the_other_streams_measured_body(
    start_sidecar: StartSidecar, tmp_path: Path
) -> None:
    a, b = await two_streams(start_sidecar, tmp_path / "gpu-0.json", ledger_max_delay_ms=80)
    sent: dict[str, list[float]] = {}
    rounds, _ = await run_rounds(a, b, sent)
    # a's body is Triton's measure (60 ms), shorter than its contract's 70 ms: b goes as it
    # ends, never before, wherever a's request came first. One round may stall on a loaded
    # 2-core machine (seen in the full suite: 163 ms late; and once both apps' requests
    # held up together, a's sent after b's: the ledger is first come, so b went 20 ms after
    # a's slot, as a 22 ms stall injected into a's send reproduces); that round alone may
    # then be late and forced, or go first.
    after_a = [round(y - x, 4) for x, y in rounds]
    a_first = [b_at - a_at >= 0.002 for a_at, b_at in zip(sent["a"], sent["b"], strict=True)]
    seen = f"b after a's slot {after_a}, a's request sent first {a_first}"
    assert min(d for d, first in zip(after_a, a_first, strict=True) if first) >= 0.050, seen
    late = [d for d in after_a if d > 0.090]
    assert len(late) + a_first.count(False) <= 1, seen
    samples = await scrape(b)
    assert metric(samples, COORDINATED_DELAY + "_sum", stream="b") > 0.040 * (ROUNDS - 1)
    assert metric(samples, COORDINATED_FORCED, stream="b") <= len(late)


async def test_nobody_waits_past_the_longest_delay(
    start_sidecar: StartSidecar, tmp_path: Path
) -> None:
    a, b = await two_streams(start_sidecar, tmp_path / "gpu-0.json", ledger_max_delay_ms=20)
    rounds, late_before = await run_rounds(a, b)
    after_b = [round(y - x - (B_OFFSET - A_OFFSET), 4) for x, y in rounds]
    samples = await scrape(b)
    forced = metric(samples, COORDINATED_FORCED, stream="b")
    late = metric(samples, LATE, stream="b") - late_before  # the rounds' own
    seen = f"after b's slot {after_b}, forced {forced}, late {late}"
    # A request that reaches the gate past its slot's grace (a stall of the test machine,
    # as above) goes outside any slot: uncoordinated, counted late, neither forced nor
    # held. Two clean CI runs lost one round so (7 forced of 8); a 12, 25 or 60 ms stall
    # injected into one round gives exactly that. Every other round is held, and forced.
    assert late <= 1, seen
    assert forced + late == ROUNDS, seen
    held = sorted(after_b)[int(late) :]
    assert min(held) >= 0.018, seen  # held its longest delay, 20 ms
    assert len([d for d in after_b if d > 0.035]) <= 1, seen  # a stalled round, as above
