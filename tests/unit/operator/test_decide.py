"""The controller's decide step as a table: a snapshot in, what it will write out, with no
API at all (the controller is given none; any call would fail)."""

from __future__ import annotations

from typing import Any

import pytest

from stagger_operator.controller import Controller, Report, Snapshot
from stagger_operator.desired import plan_from_schedules
from stagger_operator.settings import OperatorSettings
from tests.factories import cluster, stream
from tests.unit.operator.test_reconcile import NOW, TEMPLATE, with_uid


def snapshot(streams: list[Any], gpus: int = 1, **overrides: Any) -> Snapshot:
    return Snapshot(
        **{
            "now": NOW,
            "full": True,
            "cluster": cluster(("n", gpus)),
            "signatures": {},
            "streams": streams,
            "invalid": [],
            "live": streams,
            "schedules": {},
            "previous": plan_from_schedules([], OperatorSettings().tick_hz),
            "schedule_objects": {},
            "profiles": [],
            "current": {},
            "ready": set(),
            "observed": {},
            "jobs": {},
            "outcomes": {},
            **overrides,
        }
    )


def kinds(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["metadata"]["labels"]["stagger.dev/stream"]) for o in objects)


@pytest.mark.parametrize(
    ("fleet", "gpus", "placed", "unplaced", "written"),
    [
        # two small streams: one GPU, a Deployment and a slot ConfigMap each
        ([("a", 10, 5), ("b", 10, 5)], 1, 2, 0, ["a", "a", "b", "b"]),
        # one stream the GPU cannot hold (0.96 GPU-seconds a second): nothing written for it
        ([("a", 10, 5), ("big", 12, 80)], 1, 1, 1, ["a", "a"]),
        # nothing applied: nothing to write
        ([], 1, 0, 0, []),
    ],
)
def test_decide_turns_a_snapshot_into_writes_without_the_api(
    fleet: list[tuple[str, float, float]],
    gpus: int,
    placed: int,
    unplaced: int,
    written: list[str],
) -> None:
    streams = [
        with_uid(stream(name, fps, body=body, template=TEMPLATE), f"u-{name}")
        for name, fps, body in fleet
    ]
    controller = Controller(None, OperatorSettings(), clock=lambda: NOW)  # type: ignore[arg-type]
    report = Report()
    decision = controller._decide(snapshot(streams, gpus), report)
    assert (report.placed, report.unplaced) == (placed, unplaced)
    assert sorted(s for _, s in kinds(decision.steps.write)) == written
    assert {k for k, _ in kinds(decision.steps.write)} <= {"Deployment", "ConfigMap"}
    assert decision.steps.delete == []
    assert len(decision.desired.schedules) == (1 if placed else 0)
    phases = {name: st["phase"] for (_, name), st in decision.desired.statuses.items()}
    assert sorted(phases.values()) == sorted(["Placed"] * placed + ["Unschedulable"] * unplaced)
