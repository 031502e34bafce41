"""Slot files: read on change, bad ones reported once and ignored; body time from stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagger_sidecar.slotfile import SlotFiles
from stagger_sidecar.upstream import ComputeTotals, body_times, compute_totals
from tests.factories import slot_contract


def test_a_contract_is_read_once_per_change(tmp_path: Path) -> None:
    file = tmp_path / "slot.json"
    files = SlotFiles(file)
    contracts, problems = files.poll()
    assert not contracts and "no slot file" in problems[0].message
    assert files.poll() == ([], [])  # reported once, not on every poll

    file.write_text(slot_contract().model_dump_json(by_alias=True))
    contracts, problems = files.poll()
    assert [c.generation for c in contracts] == [1] and not problems
    assert files.poll() == ([], [])

    file.write_text(slot_contract(generation=2).model_dump_json(by_alias=True))
    assert [c.generation for c in files.poll()[0]] == [2]


@pytest.mark.parametrize(
    ("text", "says"),
    [("{not json", "not a valid slot contract"), ('{"stream": "cam"}', "namespace")],
)
def test_a_bad_file_is_reported_and_yields_nothing(tmp_path: Path, text: str, says: str) -> None:
    file = tmp_path / "slot.json"
    file.write_text(text)
    contracts, problems = SlotFiles(file).poll()
    assert contracts == []
    assert says in problems[0].message and "last good contract stays" in problems[0].message


def test_a_directory_holds_one_contract_per_stream(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(slot_contract(name).model_dump_json(by_alias=True))
    (tmp_path / "..data").mkdir()  # the kubelet's own entries are not contracts
    (tmp_path / "notes.txt").write_text("ignored")
    contracts, problems = SlotFiles(tmp_path).poll()
    assert sorted(c.stream for c in contracts) == ["a", "b"] and not problems


def test_body_time_is_compute_per_inference_over_the_window() -> None:
    def stats(count: int, ns: int) -> dict[str, object]:
        entry = {"name": "m", "inference_stats": {"compute_infer": {"count": count, "ns": ns}}}
        return {"model_stats": [entry]}

    before = compute_totals(stats(10, 50_000_000))
    now = compute_totals(stats(30, 250_000_000))
    assert now == {"m": ComputeTotals(30, 250_000_000)}
    assert body_times(before, now) == {"m": pytest.approx(0.010)}
    assert body_times(now, now) == {}  # nothing ran: no figure rather than a zero
    assert body_times(now, compute_totals(stats(2, 1_000))) == {}  # Triton restarted
