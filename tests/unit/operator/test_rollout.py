"""Make-before-break decisions: which objects to write and which old copies to keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stagger_operator import manifests
from stagger_operator.rollout import Rollout, key_of, ready_units, rollout, unit

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
USABLE = {manifests.gpu_label(n, g) for n in ("a", "b") for g in (0, 1)}


def deployment(stream: str, shard: int, node: str, gpu: int) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {
            "name": manifests.shard_name(stream, shard, node, gpu),
            "namespace": "ns",
            "labels": manifests.shard_labels(stream, shard, node, gpu),
        },
    }


def pod(stream: str, shard: int, node: str, gpu: int, *, ready: bool = True) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "labels": manifests.shard_labels(stream, shard, node, gpu),
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def run(
    desired: list[dict[str, Any]],
    current: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    *,
    since: dict[Any, datetime] | None = None,
    usable: set[str] = USABLE,
    max_moves: int = 10,
    **kw: Any,
) -> Rollout:
    return rollout(
        desired,
        {key_of(o): o for o in current},
        ready_units(pods),
        usable,
        retiring_since=since or {},
        now=NOW,
        max_moves=max_moves,
        move_timeout_s=300,
        **kw,
    )


def names(objs: list[dict[str, Any]]) -> set[str]:
    return {o["metadata"]["name"] for o in objs}


def test_a_new_shard_is_written() -> None:
    new = deployment("cam", 0, "a", 0)
    out = run([new], [], [])
    assert names(out.write) == {new["metadata"]["name"]} and not out.delete
    assert not out.serving and not out.moving


def test_a_moving_shard_keeps_its_ready_old_copy_until_the_new_one_is_ready() -> None:
    old, new = deployment("cam", 0, "a", 0), deployment("cam", 0, "b", 1)
    first = run([new], [old], [pod("cam", 0, "a", 0)])
    assert names(first.write) == {new["metadata"]["name"]} and not first.delete
    assert first.moving == {("ns", "cam", "0")} and first.serving == {("ns", "cam", "0")}
    assert first.retiring == {unit("ns", "cam", 0, "a", 0): NOW}
    # The new pod is Ready: the old copy goes.
    done = run([new], [old, new], [pod("cam", 0, "a", 0), pod("cam", 0, "b", 1)])
    assert done.delete == [key_of(old)] and not done.moving and not done.retiring


def test_an_old_copy_that_is_not_serving_goes_at_once() -> None:
    old, new = deployment("cam", 0, "a", 0), deployment("cam", 0, "b", 1)
    not_ready = run([new], [old], [pod("cam", 0, "a", 0, ready=False)])
    assert not_ready.delete == [key_of(old)] and not not_ready.moving
    node_gone = run([new], [old], [pod("cam", 0, "a", 0)], usable=USABLE - {"a.0"})
    assert node_gone.delete == [key_of(old)] and not node_gone.serving


def test_a_move_that_never_gets_ready_ends_at_its_timeout() -> None:
    old, new = deployment("cam", 0, "a", 0), deployment("cam", 0, "b", 1)
    u = unit("ns", "cam", 0, "a", 0)
    out = run([new], [old, new], [pod("cam", 0, "a", 0)], since={u: NOW - timedelta(seconds=301)})
    assert out.delete == [key_of(old)] and out.timed_out == {u}
    assert names(out.write) == {new["metadata"]["name"]}


def test_moves_beyond_the_bound_wait_with_their_old_copy_serving() -> None:
    olds = [deployment(f"s{i}", 0, "a", 0) for i in range(5)]
    news = [deployment(f"s{i}", 0, "b", 0) for i in range(5)]
    pods = [pod(f"s{i}", 0, "a", 0) for i in range(5)]
    priority = {("ns", "s4"): 10}  # the highest priority moves first
    out = run(news, olds, pods, max_moves=2, priority=priority)
    started = {o["metadata"]["labels"][manifests.LABEL_STREAM] for o in out.write}
    assert started == {"s4", "s0"}
    assert out.waiting == {("ns", f"s{i}", "0") for i in (1, 2, 3)}
    assert not out.delete and len(out.serving) == 5
    assert set(out.retiring) == {
        unit("ns", s, 0, "a", 0) for s in ("s0", "s4")
    }  # waiting: no timeout
    # Two transitions in flight leave no room for more until one finishes.
    again = run(news, [*olds, news[0], news[4]], pods, max_moves=2, since=out.retiring)
    assert len(again.moving) == 2 and len(again.waiting) == 3


def test_a_removed_shard_is_deleted_and_a_frozen_stream_is_left_alone() -> None:
    gone, frozen = deployment("gone", 0, "a", 0), deployment("bad", 0, "a", 1)
    out = run([], [gone, frozen], [pod("bad", 0, "a", 1)], frozen={("ns", "bad")})
    assert out.delete == [key_of(gone)] and not out.write
