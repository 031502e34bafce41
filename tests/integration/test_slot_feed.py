"""The slot feed end to end: the real operator against kmock, serving its feed over HTTP to
the sidecar's own feed client (``stagger_sidecar.feed.FeedClient``) as each shard's pod
would run it, at the URL the operator injected into the pod; and a real sidecar in front
of a real tritonserver on the feed."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http.aio as httpclient

from stagger.core.api import GpuSchedule
from stagger.core.contract import CONTRACT_FILE, SlotAssignment
from stagger.core.phase import MIN_SAMPLES
from stagger.core.telemetry import SLOT_CONTRACTS_LATE, SLOT_FEED_UP
from stagger_operator.feed import SlotFeed, serve
from stagger_sidecar.feed import FeedClient, Measured
from stagger_testkit.localtriton import free_port
from tests.emulator import node, stream
from tests.factories import slot_contract
from tests.integration.conftest import Cluster, Operator, start_operator, stop_operator
from tests.integration.sidecar_fixtures import StartSidecar, metric, scrape
from tests.integration.test_operator import all_placed, schedules
from tests.waiting import until


class Sidecar:
    """One shard's feed client, reporting the generation in force and a phase if set."""

    def __init__(self, url: str, name: str) -> None:
        self.name, self.contracts, self.phase_s = name, list[SlotAssignment](), None
        self.client = FeedClient(url, measure=self.measure, load=self.contracts.extend, wait_s=5)
        self.task = asyncio.create_task(self.client.run())

    def in_force(self) -> SlotAssignment | None:
        now = datetime.now(UTC)
        due = [c for c in self.contracts if c.effective_at <= now]
        return max(due, key=lambda c: c.generation) if due else None

    def measure(self) -> list[Measured]:
        if not self.contracts:
            return []
        c, current = self.contracts[-1], self.in_force()
        return [
            Measured(
                stream=self.name,
                shard=0,
                period_s=c.frame_period_s,
                phase_s=self.phase_s,
                spread_s=0.0005 if self.phase_s is not None else None,
                generation=current.generation if current else None,
            )
        ]

    async def has(self, generation: int) -> SlotAssignment | None:
        self.client.nudge()
        got = [c for c in self.contracts if c.generation == generation]
        return got[-1] if got else None


@contextlib.asynccontextmanager
async def fed_operator(
    cluster: Cluster, **settings: Any
) -> AsyncIterator[tuple[Operator, list[Sidecar]]]:
    """A one-GPU node (pool "solo") and the operator with its slot feed on the loopback;
    the sidecars a test starts are stopped with it."""
    solo = node("solo", gpus=1)
    solo["metadata"]["labels"]["pool"] = "solo"
    await cluster.create(solo)
    port = free_port()
    op = await start_operator(
        cluster,
        **{"effective_after_s": 1, "contract_propagation_s": 30, **settings},
        feed_address=f"127.0.0.1:{port}",
        feed_url=f"http://127.0.0.1:{port}",
    )
    sidecars: list[Sidecar] = []
    try:
        yield op, sidecars
    finally:
        await stop(sidecars)
        await stop_operator(op)


@pytest.fixture
async def fed(cluster: Cluster) -> AsyncIterator[tuple[Operator, list[Sidecar]]]:
    async with fed_operator(cluster) as running:
        yield running


async def stop(sidecars: list[Sidecar]) -> None:
    for s in sidecars:
        s.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await s.task


async def start_camera(cluster: Cluster, name: str, sidecars: list[Sidecar]) -> Sidecar:
    """Apply a 4 fps camera; once placed, run its sidecar's feed client at the URL the
    operator put into its pod; return once the feed brought its contract."""
    await cluster.create(stream(name, fps=4, body=36, latencyMs=60, nodeSelector={"pool": "solo"}))
    await cluster.wait_for(lambda: all_placed(cluster, [name]))
    (deployment,) = [
        d
        for d in await cluster.objects("Deployment", "default")
        if d["metadata"]["labels"]["stagger.dev/stream"] == name
    ]
    env = _sidecar_env(deployment)
    sidecar = Sidecar(env["STAGGER_SLOT_FEED"], name)
    sidecars.append(sidecar)
    await cluster.wait_for(lambda: _nonempty(sidecar.contracts))
    return sidecar


def _sidecar_env(deployment: dict[str, Any]) -> dict[str, str]:
    (sidecar,) = [
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == "stagger-sidecar"
    ]
    return {e["name"]: e["value"] for e in sidecar["env"]}


async def _nonempty(xs: list[Any]) -> list[Any] | None:
    return xs or None


async def test_a_re_timing_reaches_connected_sidecars_at_once_and_switches_soon(
    cluster: Cluster, fed: tuple[Operator, list[Sidecar]]
) -> None:
    """The same five cameras as ``test_a_join_switches_soon_and_a_re_timing_waits_for_the_
    kubelet``, whose re-timing switches ``contract_propagation_s`` (30 s) ahead: here every
    running sidecar holds a feed request, so the re-timed contracts reach them as they are
    written and the table takes over ``effective_after_s`` (1 s) ahead."""
    _, sidecars = fed
    for i in range(4):  # into gaps
        await start_camera(cluster, f"cam-{i}", sidecars)
    await cluster.create(
        stream("cam-4", fps=4, body=36, latencyMs=60, nodeSelector={"pool": "solo"})
    )
    await cluster.wait_for(lambda: all_placed(cluster, ["cam-4"]))
    (sched,) = await schedules(cluster)
    retimed = {x.stream for x in sched.spec.slots if x.retimed_at is not None}
    assert retimed, "the GPU was re-timed"
    assert (sched.spec.effective_at - datetime.now(UTC)).total_seconds() < 5
    for s in sidecars:  # before the switch, over the feed (the ConfigMap volume lags)
        if s.name in retimed:
            got = await cluster.wait_for(lambda s=s: s.has(sched.spec.generation), timeout=3)
            assert got.effective_at == sched.spec.effective_at


async def test_a_reported_phase_re_times_the_gpu_within_seconds(
    cluster: Cluster, fed: tuple[Operator, list[Sidecar]]
) -> None:
    """A camera whose requests arrive 100 ms after its slot starts says so over the feed;
    the operator re-times its GPU so the slot starts just after the arrivals, and the new
    contract takes over within seconds (the metrics scrape alone would take 30 s, the
    ConfigMap volume up to 90 s more)."""
    _, sidecars = fed
    cam = await start_camera(cluster, "cam-0", sidecars)
    first = cam.contracts[-1]
    await cluster.wait_for(lambda: _due(cam))
    period = first.frame_period_s
    slot_s = first.offset_ticks / first.tick_hz
    cam.phase_s = (slot_s + 0.1) % period
    reported = time.monotonic()
    cam.client.nudge()
    moved = await cluster.wait_for(lambda: cam.has(first.generation + 1), timeout=5)
    took_s = time.monotonic() - reported
    assert took_s < 3, f"the re-timed contract came {took_s:.1f} s after the report"
    ahead_s = (moved.effective_at - datetime.now(UTC)).total_seconds()
    assert ahead_s < 3, "all its sidecars are connected: the switch is effective_after_s ahead"
    after_arrival = (moved.offset_ticks / moved.tick_hz - cam.phase_s) % period
    assert 0 < after_arrival < 0.01, f"the slot starts {after_arrival * 1e3:.1f} ms after"


async def test_a_camera_that_restarts_within_its_pin_is_followed_within_seconds(
    cluster: Cluster, fed: tuple[Operator, list[Sidecar]]
) -> None:
    """A re-timing pins the shards it moved for ``retime_min_interval_s`` (60 s), so that
    drifting cameras do not keep re-timing their GPU. A camera that restarts on another
    clock within that minute would wait most of a period every frame until then; its own
    slot follows it at once instead (nothing else on the GPU moves for it)."""
    _, sidecars = fed
    cam, followed = await followed_camera(cluster, sidecars)  # its slot now pinned
    restarted = time.monotonic()
    moved = await move_camera(cluster, cam, followed, 0.125, timeout=10)  # half a period on
    took_s = time.monotonic() - restarted
    assert took_s < 3, f"the re-timed contract came {took_s:.1f} s after the restart"
    assert_slot_follows(moved, cam)


async def test_a_phase_that_moved_while_pinned_is_followed_when_the_pin_runs_out(
    cluster: Cluster,
) -> None:
    """A camera's phase moves 10 ms earlier (less than a jump) while its slot is pinned:
    nothing reports it again (the phase is steady where it is now), so the operator plans
    again when the pin runs out and follows it then, not at some later scrape."""
    async with fed_operator(cluster, retime_min_interval_s=3, scrape_interval_s=600) as (
        _,
        sidecars,
    ):
        cam, followed = await followed_camera(cluster, sidecars)
        # 10 ms earlier, within the pin: its frames wait 10 ms more, less than a jump
        pin_ends = followed.effective_at.timestamp() + 3
        moved = await move_camera(cluster, cam, followed, -0.010, timeout=15)
        late_s = time.time() - pin_ends
        assert late_s < 3, f"followed {late_s:.1f} s after the pin ran out"
        assert_slot_follows(moved, cam)


async def move_camera(
    cluster: Cluster, cam: Sidecar, followed: SlotAssignment, shift_s: float, *, timeout: float
) -> SlotAssignment:
    """Moves the camera's arrivals ``shift_s`` along its period (its app restarted, or its
    clock moved), tells its sidecar, and returns the next contract the operator sends it."""
    cam.phase_s = (cam.phase_s + shift_s) % followed.frame_period_s
    cam.client.nudge()
    return await cluster.wait_for(lambda: cam.has(followed.generation + 1), timeout=timeout)


def assert_slot_follows(moved: SlotAssignment, cam: Sidecar) -> None:
    """The slot starts just after the camera's requests arrive (within 10 ms)."""
    after_arrival = (moved.offset_ticks / moved.tick_hz - cam.phase_s) % moved.frame_period_s
    assert 0 < after_arrival < 0.01, f"the slot starts {after_arrival * 1e3:.1f} ms after"


async def followed_camera(
    cluster: Cluster, sidecars: list[Sidecar]
) -> tuple[Sidecar, SlotAssignment]:
    """A camera whose requests arrive 100 ms after its first slot, once the re-timed
    contract that follows them is in force (its slot pinned by that re-timing)."""
    cam = await start_camera(cluster, "cam-0", sidecars)
    first = cam.contracts[-1]
    await cluster.wait_for(lambda: _due(cam))
    cam.phase_s = (first.offset_ticks / first.tick_hz + 0.1) % first.frame_period_s
    cam.client.nudge()
    followed = await cluster.wait_for(lambda: cam.has(first.generation + 1), timeout=5)
    await cluster.wait_for(lambda: _in_force(cam, followed.generation), timeout=5)
    return cam, followed


async def _in_force(cam: Sidecar, generation: int) -> bool:
    cam.client.nudge()
    current = cam.in_force()
    return current is not None and current.generation >= generation


async def test_cameras_started_together_are_re_timed_once_when_their_phases_are_in(
    cluster: Cluster, fed: tuple[Operator, list[Sidecar]]
) -> None:
    """Three cameras applied together report their first phases 0.3 s apart, as their
    apps start. The GPU waits for the last (``follow_settle_s``), then one re-timing
    follows all three: re-timing on each phase in turn would pin shards moved to make room
    before their own phase was known, in the wrong place, for a minute."""
    _, sidecars = fed
    names = [f"cam-{i}" for i in range(3)]
    for name in names:
        await cluster.create(
            stream(name, fps=4, body=36, latencyMs=60, nodeSelector={"pool": "solo"})
        )
    await cluster.wait_for(lambda: all_placed(cluster, names))
    for d in await cluster.objects("Deployment", "default"):
        name = d["metadata"]["labels"]["stagger.dev/stream"]
        sidecars.append(Sidecar(_sidecar_env(d)["STAGGER_SLOT_FEED"], name))
    for s in sidecars:
        await cluster.wait_for(lambda s=s: _nonempty(s.contracts))
    (placed,) = await schedules(cluster)
    # Each camera's requests arrive 100 ms after where the planner put its slot.
    for s in sorted(sidecars, key=lambda s: s.name):
        c = s.contracts[-1]
        s.phase_s = (c.offset_ticks / c.tick_hz + 0.1) % c.frame_period_s
        s.client.nudge()
        await asyncio.sleep(0.3)

    async def followed() -> GpuSchedule | None:
        (sched,) = await schedules(cluster)
        slots = {x.stream: x for x in sched.spec.slots}
        ok = all(
            0 < (slots[s.name].offset_ticks / 30_000 - (s.phase_s or 0)) % 0.25 < 0.01
            for s in sidecars
        )
        return sched if ok else None

    sched = await cluster.wait_for(followed, timeout=10)
    assert sched.spec.generation == placed.spec.generation + 1, "one re-timing for all three"


async def _due(cam: Sidecar) -> SlotAssignment | None:
    cam.client.nudge()
    return cam.in_force()


async def test_a_standby_replica_s_feed_says_so_until_it_holds_the_lease(cluster: Cluster) -> None:
    """Only the Lease holder answers the feed: a standby answers 503 (the sidecar asks
    again, through the Service, and reaches the holder); once it takes the Lease over it
    plans and serves the contracts it wrote."""
    from tests.integration.test_operator import Replica

    lease = ("stagger-system", "stagger-operator")
    assert await Replica("other-replica", 0.0, duration_s=4).hold(cluster, lease)
    port = free_port()
    op = await start_operator(
        cluster,
        lease_duration_s=2,
        identity="replica-1",
        feed_address=f"127.0.0.1:{port}",
        feed_url=f"http://127.0.0.1:{port}",
    )
    sidecars: list[Sidecar] = []
    try:
        await cluster.create(stream("cam-1"))
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/v1/slots/default/x", json={}) as r,
        ):
            assert r.status == 503 and (await r.json())["reason"] == "standby replica"
        await cluster.wait_for(lambda: all_placed(cluster, ["cam-1"]))  # took over
        (deployment,) = await cluster.objects("Deployment", "default")
        sidecar = Sidecar(_sidecar_env(deployment)["STAGGER_SLOT_FEED"], "cam-1")
        sidecars.append(sidecar)
        (contract,) = await cluster.wait_for(lambda: _nonempty(sidecar.contracts))
        assert contract.stream == "cam-1"
    finally:
        await stop(sidecars)
        await stop_operator(op)


async def test_a_sidecar_takes_its_contract_from_the_feed_before_its_file_and_reports_arrivals(
    start_sidecar: StartSidecar,
) -> None:
    """A real sidecar in front of a real tritonserver, on the operator's real feed: a
    re-timed contract published there is in force while the mounted file still holds the
    old one (the kubelet has not synced), the file's older generation changes nothing when
    it is read, and the phase at which the app's requests arrive reaches the operator with
    the generation in force."""
    port = free_port()
    feed = SlotFeed()
    feed.serving = True
    runner = await serve(feed, f"127.0.0.1:{port}")
    key = ("ns", "cam", 0)

    def publish(c: SlotAssignment) -> None:
        feed.publish({("ns", "cam-slot"): {CONTRACT_FILE: c.model_dump_json(by_alias=True)}})

    try:
        first = slot_contract(offset_ms=30, generation=1)
        publish(first)
        sidecar = await start_sidecar(
            first, slot_feed=f"http://127.0.0.1:{port}/v1/slots/ns/cam-slot", slot_feed_wait_s=5
        )

        def generation() -> int | None:
            current = sidecar.gate.streams["cam"].timetable.current(time.time())
            return current.generation if current else None

        publish(slot_contract(offset_ms=70, generation=2, effective_at=time.time() + 0.3))
        await until(lambda: generation() == 2, what="the feed's contract in force")
        sidecar.poll_slot_files()  # the file still says generation 1: nothing changes
        assert generation() == 2
        samples = await scrape(sidecar)
        assert metric(samples, SLOT_FEED_UP) == 1
        assert metric(samples, SLOT_CONTRACTS_LATE) == 0

        # The app sends a frame every 100 ms at 55 ms into the period (epoch: Unix 0), and
        # goes on while the phase is awaited: a sidecar forgets the phase of a stream quiet
        # for 1 s (its app stopped), so a report looked for after the app's last frame can
        # be gone already (a clean CI run stopped after 12 frames and lost that race).
        client = httpclient.InferenceServerClient(f"127.0.0.1:{sidecar.ports['http']}")
        sent: list[asyncio.Task[Any]] = []

        async def camera() -> None:
            start = (time.time() // 0.1 + 1) * 0.1
            for k in itertools.count():
                await asyncio.sleep(max(0.0, start + k * 0.1 + 0.055 - time.time()))
                inputs = [httpclient.InferInput("INPUT0", [1], "FP32")]
                inputs[0].set_data_from_numpy(np.array([1.0], dtype=np.float32))
                sent.append(asyncio.create_task(client.infer("add_one", inputs)))

        running = asyncio.create_task(camera())
        try:
            report = await until(
                lambda: (r := feed.reports().get(key)) and r.arrival and r, what="a phase"
            )
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await asyncio.gather(*sent)  # every frame sent was answered
            await client.close()
        assert len(sent) >= MIN_SAMPLES  # a phase is claimed from 8 arrivals, not fewer
        phase, spread = report.arrival
        assert abs(phase - 0.055) < 0.005 and spread < 0.005
        assert report.generation == 2 and feed.connected() == {key}
    finally:
        await runner.cleanup()
