"""The slot feed's server (stagger_operator.feed) over real HTTP on the loopback, and the
sidecar's client against it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stagger.core.contract import CONTRACT_FILE, SlotAssignment
from stagger_operator.feed import SlotFeed, version_of
from stagger_operator.feed import stop as stop_feed
from stagger_sidecar.feed import FeedClient, Measured, moved
from tests.factories import slot_contract

T0 = 1_800_000_000.0  # a Unix time: the contracts' switch instant

URL = "/v1/slots/default/cam-0-slot"


def contract(generation: int, stream: str = "cam-0", offset_ms: float = 0.0) -> str:
    """A 100 ms slot contract of shard 0, as its ConfigMap holds it."""
    c = slot_contract(
        stream, namespace="default", offset_ms=offset_ms, body_ms=10, generation=generation
    )
    return c.model_dump_json(by_alias=True, exclude_none=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def feed() -> AsyncIterator[tuple[SlotFeed, TestClient, list[int], Clock]]:
    woken: list[bool] = []  # each wake: urgent or not
    clock = Clock()
    f = SlotFeed(on_report=woken.append, monotonic=clock, grace_s=2)
    f.serving = True
    client = TestClient(TestServer(f.app()))
    await client.start_server()
    try:
        yield f, client, woken, clock
    finally:
        await client.close()


def publish(f: SlotFeed, **files: str) -> None:
    f.publish(
        {("default", f"{stream}-slot"): {CONTRACT_FILE: text} for stream, text in files.items()}
    )


async def test_a_standby_says_so_and_closes_the_connection(feed) -> None:
    f, client, _, _ = feed
    publish(f, **{"cam-0": contract(1)})
    f.serving = False
    r = await client.post(URL, json={})
    assert r.status == 503 and (await r.json())["reason"] == "standby replica"
    assert r.headers["Retry-After"] == "1"
    assert r.headers["Connection"] == "close"  # the next connection may reach the holder


async def test_before_its_first_plan_the_lease_holder_holds_requests_until_it_publishes(
    feed,
) -> None:
    """A restarted operator (or a new Lease holder) has no plan until its first reconcile,
    its longest: the sidecars' requests wait for it rather than ask again and again."""
    f, client, _, _ = feed
    r = await client.post(URL, params={"wait": "0.2"}, json={})
    assert r.status == 204  # the wait passed with no plan: ask again, as after any wait
    waiting = asyncio.create_task(client.post(URL, params={"wait": "10"}, json={}))
    await _until(lambda: f.requests == 2)
    await asyncio.sleep(0.1)  # an absence: give a wrong answer the time to come
    assert not waiting.done()
    publish(f, **{"cam-0": contract(1)})
    r = await asyncio.wait_for(waiting, 2)
    assert r.status == 200
    assert json.loads((await r.json())["files"][CONTRACT_FILE])["generation"] == 1


async def test_a_replica_that_stops_serving_answers_what_it_holds_at_once(feed) -> None:
    """A replica that loses the Lease, or shuts down, answers the requests it holds as a
    standby (their sidecars ask the Service again a second later), whether held for a
    change or for the first plan: held until their 30 s ran out, the sidecars would reach
    the new holder only then, and a shutdown would wait for them before releasing the
    Lease."""
    f, client, _, _ = feed
    before_plan = asyncio.create_task(client.post(URL, params={"wait": "30"}, json={}))
    await _until(lambda: f.requests == 1)
    publish(f, **{"cam-0": contract(1)})
    have = (await (await asyncio.wait_for(before_plan, 2)).json())["version"]
    held = asyncio.create_task(client.post(URL, params={"wait": "30"}, json={"have": have}))
    await _until(lambda: f.requests == 2)
    await asyncio.sleep(0.1)
    assert not held.done()  # nothing changed: held
    f.serving = False
    r = await asyncio.wait_for(held, 2)
    assert r.status == 503 and (await r.json())["reason"] == "standby replica"

    restarted = SlotFeed()  # a new holder before its first plan, then shut down
    restarted.serving = True
    server = TestServer(restarted.app())
    await server.start_server()
    runner = server.runner
    try:
        async with TestClient(server) as other:
            waiting = asyncio.create_task(other.post(URL, params={"wait": "30"}, json={}))
            await _until(lambda: restarted.requests == 1)
            loop = asyncio.get_running_loop()
            began = loop.time()
            stopping = asyncio.create_task(stop_feed(restarted, runner))
            r = await asyncio.wait_for(waiting, 2)
            assert r.status == 503
            await asyncio.wait_for(stopping, 2)
            assert loop.time() - began < 1.0
    finally:
        await server.close()


async def test_the_sidecar_client_asks_a_standby_less_and_less_often() -> None:
    """Sent to a standby replica, a sidecar asks again soon (the Service may send it to the
    holder), then less often while it keeps reaching standbys (no replica holds the Lease
    during a failover), so thousands of sidecars do not keep the replicas busy."""
    f = SlotFeed()  # never the holder
    server = TestServer(f.app())
    await server.start_server()
    # Standby retries after 0.01, 0.02, 0.04, 0.08, then every 0.16 s (each jittered).
    sidecar = FeedClient(
        str(server.make_url(URL)),
        measure=list,
        load=lambda _: None,
        retry_s=0.04,
        retry_max_s=0.16,
    )
    task = asyncio.create_task(sidecar.run())
    try:
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()
    # At a fixed retry_s / 4 it would ask about 130 times in the second; backing off to
    # retry_max_s (0.12 s on average) about 11 times.
    assert 5 <= f.requests <= 30, f.requests


async def test_an_unknown_configmap_or_a_bad_request_gets_a_clear_answer(feed) -> None:
    f, client, _, _ = feed
    publish(f, **{"cam-0": contract(1)})
    r = await client.post("/v1/slots/default/other-slot", json={})
    assert r.status == 404 and "no slot ConfigMap default/other-slot" in (await r.json())["reason"]
    r = await client.post(URL, json={"arrivals": [{"stream": "cam-0", "shard": -1}]})
    assert r.status == 400 and "bad request" in (await r.json())["reason"]
    r = await client.post(URL, data=b"x" * 20_000)
    assert r.status == 413


async def test_a_waiting_request_is_answered_as_its_contract_is_published(feed) -> None:
    f, client, _, clock = feed
    publish(f, **{"cam-0": contract(1)})
    r = await client.post(URL, json={"have": None})
    first = await r.json()
    assert r.status == 200 and json.loads(first["files"][CONTRACT_FILE])["generation"] == 1
    r = await client.post(URL, params={"wait": "0.2"}, json={"have": first["version"]})
    assert r.status == 204  # nothing new within the wait

    clock.now += 3  # past the grace: connected again only once the next request is held
    assert f.connected() == frozenset()
    waiting = asyncio.create_task(
        client.post(URL, params={"wait": "10"}, json={"have": first["version"]})
    )
    await _until(lambda: f.connected() == {("default", "cam-0", 0)})
    assert not waiting.done()
    publish(f, **{"cam-0": contract(2)})
    r = await asyncio.wait_for(waiting, 2)
    answer = await r.json()
    assert json.loads(answer["files"][CONTRACT_FILE])["generation"] == 2
    assert answer["version"] == version_of({CONTRACT_FILE: contract(2)})

    # One ConfigMap just written, before the reconcile's other writes: answered at once.
    have = answer["version"]
    clock.now += 3
    waiting = asyncio.create_task(client.post(URL, params={"wait": "10"}, json={"have": have}))
    await _until(lambda: bool(f.connected()))
    f.update(("default", "cam-0-slot"), {CONTRACT_FILE: contract(2)})  # the same: no answer
    await asyncio.sleep(0.1)  # an absence: give a wrong answer the time to come
    assert not waiting.done()
    f.update(("default", "cam-0-slot"), {CONTRACT_FILE: contract(3)})
    answer = await (await asyncio.wait_for(waiting, 2)).json()
    assert json.loads(answer["files"][CONTRACT_FILE])["generation"] == 3


async def test_a_shard_counts_as_connected_while_it_waits_and_briefly_after(feed) -> None:
    f, client, _, clock = feed
    publish(f, **{"cam-0": contract(1)})
    assert f.connected() == frozenset()
    await client.post(URL, json={})
    assert f.connected() == {("default", "cam-0", 0)}
    clock.now += 2.5  # no request for longer than the grace
    assert f.connected() == frozenset()
    assert f.reports() == {}


async def test_a_sidecar_reports_its_own_shard_only_and_news_wakes_the_planner(feed) -> None:
    """A first report, a jump and another generation wake the planner at once; drift may
    wait; estimates that move by a fraction of a millisecond are no news."""
    f, client, woken, _ = feed
    publish(f, **{"cam-0": contract(1), "cam-1": contract(1, stream="cam-1")})

    async def report(phase: float, generation: int = 1) -> None:
        body = {
            "arrivals": [
                {"stream": "cam-0", "shard": 0, "phaseS": phase, "spreadS": 0.0004},
                {"stream": "cam-1", "shard": 0, "phaseS": 0.05, "spreadS": 0.0004},
            ],
            "running": [{"stream": "cam-0", "shard": 0, "generation": generation}],
        }
        assert (await client.post(URL, json=body)).status == 200

    await report(0.0998)
    (only,) = f.reports().items()
    assert only[0] == ("default", "cam-0", 0)  # cam-1 is another ConfigMap's to report
    assert only[1].arrival == (0.0998, 0.0004) and only[1].generation == 1
    assert woken == [True]
    await report(0.0001)  # 0.3 ms on, across the 100 ms period's wrap: no news
    assert woken == [True]
    await report(0.0021)  # 2 ms: drift
    await report(0.0300)  # 28 ms: a jump
    await report(0.0300, generation=2)
    assert woken == [True, False, True, True]


async def test_a_configmap_that_goes_answers_its_waiting_sidecar_and_forgets_it(feed) -> None:
    f, client, _, clock = feed
    publish(f, **{"cam-0": contract(1)})
    have = (await (await client.post(URL, json={})).json())["version"]
    clock.now += 3
    waiting = asyncio.create_task(client.post(URL, params={"wait": "10"}, json={"have": have}))
    await _until(lambda: bool(f.connected()))  # it is held
    f.publish({})
    r = await asyncio.wait_for(waiting, 2)
    assert r.status == 404 and f.reports() == {}


async def test_the_sidecar_client_loads_each_version_once_and_asks_again_when_it_moved(
    feed,
) -> None:
    f, client, _, _ = feed
    publish(f, **{"cam-0": contract(1)})
    loaded: list[SlotAssignment] = []
    up: list[bool] = []
    phase: list[float | None] = [None]

    def measure() -> list[Measured]:
        return [Measured("cam-0", 0, 0.1, phase[0], 0.0004 if phase[0] else None, 1)]

    sidecar = FeedClient(
        str(client.make_url(URL)),
        measure=measure,
        load=loaded.extend,
        on_connected=up.append,
        wait_s=5,
    )
    task = asyncio.create_task(sidecar.run())
    try:
        await _until(lambda: len(loaded) == 1)
        publish(f, **{"cam-0": contract(2, offset_ms=20)})
        await _until(lambda: len(loaded) == 2)
        assert [c.generation for c in loaded] == [1, 2] and up[-1] is True
        phase[0] = 0.042
        sidecar.nudge()  # the open request is dropped and asked again with the phase
        await _until(lambda: bool(f.reports()) and next(iter(f.reports().values())).arrival)
        (report,) = f.reports().values()
        assert report.arrival == (0.042, 0.0004)
        assert len(loaded) == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_sidecar_client_survives_a_feed_that_is_not_there() -> None:
    up: list[bool] = []
    sidecar = FeedClient(
        "http://127.0.0.1:9/v1/slots/default/x",
        measure=list,
        load=lambda _: None,
        on_connected=up.append,
        retry_s=0.01,
    )
    task = asyncio.create_task(sidecar.run())
    await _until(lambda: len(up) >= 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert set(up) == {False} and sidecar.have is None


def test_a_report_moves_on_a_new_generation_a_new_estimate_or_a_phase_beyond_a_millisecond() -> (
    None
):
    base = Measured("cam", 0, 0.1, 0.05, 0.0004, 3)
    assert not moved([base], [base])
    assert not moved([Measured("cam", 0, 0.1, 0.0505, 0.0004, 3)], [base])
    assert moved([Measured("cam", 0, 0.1, 0.052, 0.0004, 3)], [base])
    assert moved([Measured("cam", 0, 0.1, 0.05, 0.0004, 4)], [base])
    assert moved([Measured("cam", 0, 0.1, None, None, 3)], [base])
    assert moved([], [base])


async def _until(check, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_shard_that_has_just_asked_awaits_its_first_phase_for_the_settle_time(feed) -> None:
    f, client, _, clock = feed
    publish(f, **{"cam-0": contract(1), "cam-1": contract(1, stream="cam-1")})
    await client.post(URL, json={})
    clock.now += 1
    await client.post("/v1/slots/default/cam-1-slot", json={})
    both = {("default", "cam-0", 0), ("default", "cam-1", 0)}
    assert f.awaiting(10) == (both, 9)  # cam-0's 10 s end first, in 9
    phase = {"stream": "cam-1", "shard": 0, "phaseS": 0.02, "spreadS": 0.0004}
    await client.post("/v1/slots/default/cam-1-slot", json={"arrivals": [phase]})
    assert f.awaiting(10) == ({("default", "cam-0", 0)}, 9)
    clock.now += 9.5
    await client.post(URL, json={})  # still connected, still no phase: waited long enough
    assert f.awaiting(10) == (frozenset(), None)


def test_the_local_follower_keeps_the_operator_s_pace() -> None:
    """examples/03 and the GPU bench stand LocalFollower in for the operator: its lead,
    settle time and pin are the operator's defaults, so their settle times are the
    operator's over its feed."""
    from stagger_operator.settings import OperatorSettings
    from stagger_testkit.localtriton import LocalFollower

    s = OperatorSettings()
    assert (
        s.effective_after_s,
        s.follow_settle_s,
        s.retime_min_interval_s,
    ) == (LocalFollower.SWITCH_AFTER_S, LocalFollower.SETTLE_S, LocalFollower.PIN_S)


def test_the_local_follower_grants_release_windows_once_the_table_runs(tmp_path: Path) -> None:
    """As the operator does by default (releaseWindows): once every sidecar runs a table,
    its contracts get the table's release windows, taking over SWITCH_AFTER_S ahead at an
    instant no body runs; not before the table runs, and not twice."""
    from types import SimpleNamespace

    from stagger.core.slots import Slot, release_windows
    from stagger_testkit.localtriton import LocalFollower

    contracts = {
        name: slot_contract(name, offset_ms=offset, body_ms=20.0, effective_at=T0)
        for name, offset in [("a", 0.0), ("b", 30.0), ("c", 70.0)]
    }
    sidecars = [SimpleNamespace(stream=n, slot_file=tmp_path / f"{n}.json") for n in contracts]
    follower = LocalFollower(sidecars, dict(contracts))  # type: ignore[arg-type]
    table = [Slot(n, c.body_ticks, c.period_ticks, c.offset_ticks) for n, c in contracts.items()]

    follower._grant_windows(table, T0 + 0.1)  # the table is not yet running everywhere
    assert follower.windows == [] and not any(s.slot_file.exists() for s in sidecars)
    follower._grant_windows(table, T0 + 1.0)
    assert len(follower.windows) == 1
    assert follower.windows[0] >= T0 + 1.0 + LocalFollower.SWITCH_AFTER_S
    windows = release_windows(table)
    for sidecar in sidecars:
        written = SlotAssignment.model_validate_json(sidecar.slot_file.read_text())
        assert (written.early_ticks, written.late_ticks) == windows[sidecar.stream]
        assert written.generation == contracts[sidecar.stream].generation + 1
        assert written.offset_ticks == contracts[sidecar.stream].offset_ticks
    assert windows["a"][0] > 0  # free time before a's slot: a real window
    follower._grant_windows(table, T0 + 30.0)  # granted already: nothing more
    assert len(follower.windows) == 1


def test_the_local_follower_keeps_followed_slots_apart_and_writes_reserved_ones(
    tmp_path: Path,
) -> None:
    """Three cameras that arrive within 4 ms of one another, 20 ms slots. With the
    operator's spacing (30 ms here) the local follower keeps their slots that far apart;
    without one (bench.gpu.loop --transparent-packed, or a model with no solo compute) it
    packs them 20 ms apart. Both write contracts of the reserved width."""
    from types import SimpleNamespace

    from stagger.core.phase import PhaseEstimate
    from stagger_testkit.localtriton import LocalFollower

    contracts = {
        name: slot_contract(name, offset_ms=offset, body_ms=20.0, effective_at=T0)
        for name, offset in [("a", 0.0), ("b", 30.0), ("c", 70.0)]
    }
    reserved = contracts["a"].body_ticks
    arrivals = {
        n: PhaseEstimate(0.1, phase, 0.0, 0.99, 64, 64)
        for n, phase in [("a", 0.011), ("b", 0.013), ("c", 0.015)]
    }

    def followed(name: str, **spacing: object) -> list[SlotAssignment]:
        (tmp_path / name).mkdir()
        sidecars = [SimpleNamespace(stream=n, slot_file=tmp_path / name / n) for n in contracts]
        follower = LocalFollower(sidecars, dict(contracts), **spacing)  # type: ignore[arg-type]
        follower.arrivals = lambda: arrivals  # type: ignore[method-assign]
        follower.step()
        return [SlotAssignment.model_validate_json(s.slot_file.read_text()) for s in sidecars]

    def apart(written: list[SlotAssignment]) -> list[int]:
        starts = sorted(c.offset_ticks for c in written)
        return [b - a for a, b in itertools.pairwise(starts)]

    packed = followed("plain")
    spaced = followed("spaced", follow_spacing=dict.fromkeys(contracts, 30_000))
    assert apart(packed) == [reserved, reserved]
    assert apart(spaced) == [30_000, 30_000]
    assert {c.body_ticks for c in [*packed, *spaced]} == {reserved}
    # Each re-timed contract says which arrivals its slot follows (its gate waits for it).
    marks = {"a": 11_000, "b": 13_000, "c": 15_000}
    assert {c.stream: c.arrival_ticks for c in packed} == marks
    unmarked = followed("unmarked", mark_arrivals=False)  # --transparent-unmarked
    assert [c.offset_ticks for c in unmarked] == [c.offset_ticks for c in packed]
    assert {c.arrival_ticks for c in unmarked} == {None}


def test_the_local_follower_places_a_table_set_by_hand_after_the_arrivals_once(
    tmp_path: Path,
) -> None:
    """--transparent-searched: each slot its set wait after its stream's arrivals and two
    of their spreads, overlap allowed (b and c start 1 ms apart with 20 ms bodies), once
    every stream has a phase; marked with the arrivals it follows, no release windows, and
    not re-timed on the next step."""
    from types import SimpleNamespace

    from stagger.core.phase import PhaseEstimate
    from stagger_testkit.localtriton import LocalFollower

    contracts = {
        name: slot_contract(name, offset_ms=offset, body_ms=20.0, effective_at=T0)
        for name, offset in [("a", 0.0), ("b", 30.0), ("c", 70.0)]
    }
    arrivals = {
        n: PhaseEstimate(0.1, phase, 0.0005, 0.99, 64, 64)
        for n, phase in [("a", 0.010), ("b", 0.012), ("c", 0.014)]
    }
    sidecars = [SimpleNamespace(stream=n, slot_file=tmp_path / n) for n in contracts]
    waits = {"a": 0.002, "b": 0.004, "c": 0.003}
    follower = LocalFollower(sidecars, dict(contracts), follow_waits=waits)  # type: ignore[arg-type]
    follower.arrivals = lambda: {k: arrivals[k] for k in ("a", "b")}  # type: ignore[method-assign]
    follower.step()
    assert follower.switches == [] and not any(s.slot_file.exists() for s in sidecars)
    follower.arrivals = lambda: arrivals  # type: ignore[method-assign]
    follower.step()
    written = {
        s.stream: SlotAssignment.model_validate_json(s.slot_file.read_text()) for s in sidecars
    }
    # arrival + 2 x 0.5 ms + the wait, in µs ticks
    assert {n: c.offset_ticks for n, c in written.items()} == {
        "a": 13_000,
        "b": 17_000,
        "c": 18_000,
    }
    assert {n: c.arrival_ticks for n, c in written.items()} == {
        "a": 10_000,
        "b": 12_000,
        "c": 14_000,
    }
    assert {(c.early_ticks, c.late_ticks) for c in written.values()} == {(None, None)}
    assert len(follower.switches) == 1
    follower.step()  # placed once: neither re-timed nor given windows
    assert len(follower.switches) == 1 and follower.windows == []


async def test_drift_wakes_the_planner_at_most_once_a_drift_period_news_at_once() -> None:
    import kopf

    from stagger_operator.handlers import _report_waker
    from stagger_operator.settings import OperatorSettings

    loop = asyncio.get_running_loop()
    memo = kopf.Memo(settings=OperatorSettings(follow_drift_s=0.5), wake=asyncio.Event())
    wake = _report_waker(memo)
    wake(True)
    assert memo.wake.is_set()  # news: at once
    memo.wake.clear()
    began = loop.time()
    for _ in range(5):  # five streams drift within the period: one plan, after it
        wake(False)
    await asyncio.wait_for(memo.wake.wait(), 5)
    assert loop.time() - began >= 0.49
    memo.wake.clear()
    await asyncio.sleep(0.7)
    assert not memo.wake.is_set()  # one timer for the five
    wake(False)  # the next drift starts another
    await asyncio.wait_for(memo.wake.wait(), 5)


async def test_a_moving_shard_is_described_by_its_new_copy(feed) -> None:
    """A shard that moves runs two copies for a while, each with its own ConfigMap. The
    old copy's phase is from its old GPU's epoch: the planner sees the new copy's, which
    has none yet (so its new GPU waits for it), and its connection."""
    f, client, _, clock = feed
    old, new = "/v1/slots/default/cam-0-gpu0-slot", "/v1/slots/default/cam-0-gpu1-slot"
    f.publish(
        {
            ("default", n): {CONTRACT_FILE: contract(1)}
            for n in ("cam-0-gpu0-slot", "cam-0-gpu1-slot")
        }
    )
    phase = {"stream": "cam-0", "shard": 0, "phaseS": 0.02, "spreadS": 0.0004}
    await client.post(old, json={"arrivals": [phase]})
    key = ("default", "cam-0", 0)
    assert f.reports()[key].arrival == (0.02, 0.0004)
    clock.now += 30
    await client.post(old, json={"arrivals": [phase]})
    await client.post(new, json={})
    assert f.reports()[key].arrival is None
    assert f.awaiting(10) == ({key}, 10)
    clock.now += 5
    await client.post(old, json={"arrivals": [phase]})  # the old copy is still connected
    assert f.connected() == frozenset()  # the new copy is not
    f.publish({("default", "cam-0-gpu1-slot"): {CONTRACT_FILE: contract(1)}})  # old one gone
    await client.post(new, json={"arrivals": [{**phase, "phaseS": 0.07}]})
    assert f.reports()[key].arrival == (0.07, 0.0004) and f.connected() == {key}


HELD_REQUESTS = textwrap.dedent(
    """
    import asyncio, collections, json, resource, sys
    import aiohttp
    from stagger.core.contract import CONTRACT_FILE
    from stagger_operator.feed import SlotFeed, serve
    from stagger_testkit.localtriton import free_port
    from tests.unit.operator.test_feed import contract

    async def main(sidecars):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # a container runtime's
        feed = SlotFeed()
        feed.serving = True
        feed.publish({("default", f"cam-{i}-slot"): {CONTRACT_FILE: contract(1, f"cam-{i}")}
                      for i in range(sidecars)})
        address = f"127.0.0.1:{free_port()}"
        runner = await serve(feed, address)
        answers = collections.Counter()

        async def sidecar(session, i):
            url = f"http://{address}/v1/slots/default/cam-{i}-slot"
            async with session.post(url, json={}) as first:  # its contract, then held
                version = (await first.json())["version"]
            try:
                async with session.post(url, params={"wait": "2"}, json={"have": version}) as r:
                    answers[r.status] += 1
            except OSError as e:
                answers[type(e).__name__] += 1

        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(sidecar(session, i) for i in range(sidecars)))
        await runner.cleanup()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(json.dumps({"soft": soft, "hard": hard, "answers": answers}))

    asyncio.run(main(int(sys.argv[1])))
    """
)


def test_the_feed_takes_the_open_files_it_needs_to_hold_every_sidecar_s_request() -> None:
    """Started at a container runtime's soft limit of 256 open files, the feed raises it to
    the hard limit, so 600 sidecars' held requests (1,200 sockets with the clients in the
    same process) are all held and answered; at 256, most would fail to connect."""
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", HELD_REQUESTS, "600"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["soft"] >= min(result["hard"], 1 << 20) > 1200
    assert result["answers"] == {"204": 600}  # each held until its wait passed, none lost
