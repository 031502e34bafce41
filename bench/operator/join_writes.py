"""Slot contracts a join writes on a GPU whose release windows are granted: n streams at
10 fps with 5 ms bodies on one GPU, every sidecar running its contract and the table's
windows granted; one more stream joins. Counted through ``desired_state`` (what the
operator writes), at the join and once every sidecar runs the new table::

    python -m bench.operator.join_writes

A contract written is a ConfigMap written and a switch on that sidecar (docs/sidecar.md,
release windows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from stagger.core.api import GpuSchedule, InferenceStream
from stagger.core.contract import SlotAssignment
from stagger.core.placement import plan
from stagger_operator.desired import desired_state, plan_from_schedules, written_contracts
from stagger_operator.settings import OperatorSettings
from tests.factories import cluster, stream

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
TEMPLATE = {"spec": {"containers": [{"name": "triton", "image": "example/tritonserver"}]}}
Key = tuple[str, str, int]


def _camera(name: str) -> InferenceStream:
    s = stream(name, 10, body=5, template=TEMPLATE)
    s.metadata.uid = f"uid-{name}"
    return s


def _schedules(desired: Any) -> dict[str, GpuSchedule]:
    return {s["metadata"]["name"]: GpuSchedule.model_validate(s) for s in desired.schedules}


def _contracts(desired: Any) -> dict[Key, SlotAssignment]:
    return {(x.namespace, x.stream, x.shard): x for x in written_contracts(desired.objects)}


def _changed(before: dict[Key, SlotAssignment], after: dict[Key, SlotAssignment]) -> int:
    return sum(1 for k, x in after.items() if before.get(k) != x)


def join(n: int) -> dict[str, Any]:
    """What one more stream's join writes on a GPU of ``n`` windowed streams."""
    c, settings = cluster(("n", 1)), OperatorSettings()
    cams = [_camera(f"c{i}") for i in range(n)]
    placed = plan(cams, c)
    first = desired_state(cams, placed, {}, settings, NOW)
    prev, later = _schedules(first), NOW + timedelta(minutes=1)
    running = {p.key: 1 for p in placed.shards}
    granted = desired_state(
        cams, placed, prev, settings, later, running=running, contracts=_contracts(first)
    )
    written = _contracts(granted)
    fleet = [*cams, _camera("new")]
    grown = plan(fleet, c, previous=plan_from_schedules(prev.values(), settings.tick_hz))
    joined = desired_state(fleet, grown, prev, settings, later, contracts=written)
    after = _contracts(joined)
    (schedule,) = _schedules(joined).values()
    assert schedule.spec.effective_at is not None
    settled = desired_state(
        fleet,
        grown,
        _schedules(joined),
        settings,
        schedule.spec.effective_at + timedelta(seconds=1),
        running={k: x.generation for k, x in after.items()},
        contracts=after,
    )
    return {
        "streams": n,
        "retimed": len(grown.offsets_changed),
        "writtenAtJoin": _changed(written, after),
        "writtenWhenSettled": _changed(after, _contracts(settled)),
        "keptAWindow": sum(1 for k in written if after[k].early_ticks or after[k].late_ticks),
    }


def main() -> None:
    print(
        "| streams on the GPU | re-timed by the join | contracts written at the join | "
        "when every sidecar runs it | streams releasing early through the join |"
    )
    print("|---|---|---|---|---|")
    for n in (4, 8, 12):
        r = join(n)
        print(
            f"| {r['streams']} | {r['retimed']} | {r['writtenAtJoin']} | "
            f"{r['writtenWhenSettled']} | {r['keptAWindow']} of {r['streams']} |"
        )


if __name__ == "__main__":
    main()
