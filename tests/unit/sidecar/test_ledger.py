"""Coordinated release: the GPU ledger's rule, its file, and the keeper waiting on it, on an
injected clock."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagger_sidecar.gate import Gate, GateConfig
from stagger_sidecar.keeper import Coordination, Keeper
from stagger_sidecar.ledger import (
    MAX_ENTRIES,
    Claim,
    FileLedger,
    LedgerBook,
    LocalLedger,
)
from stagger_sidecar.metrics import GateMetrics
from tests.factories import slot_contract

T = 1_800_000_000.0
LEAD = 0.002


def near(expected: float) -> object:
    return pytest.approx(expected, abs=1e-6, rel=0)


def claim(id_: str, slot: float, busy: float = 0.010, max_delay: float = 0.020) -> Claim:
    return Claim(id_, slot, busy, slot + max_delay)


def test_an_idle_gpu_lets_a_request_go_at_its_slot() -> None:
    book = LedgerBook(LEAD)
    assert book.claim(claim("a", T), T) is None
    assert book.claims["a"].released == T


def test_the_next_request_goes_lead_before_the_previous_body_is_predicted_to_end() -> None:
    book = LedgerBook(LEAD)
    assert book.claim(claim("a", T, busy=0.010), T) is None
    b = claim("b", T + 0.004)
    assert book.claim(b, T + 0.004) == near(T + 0.010 - LEAD)
    assert book.claims["b"].released is None  # waiting: later requests queue behind it
    assert book.claim(b, T + 0.008) is None


def test_an_answer_frees_the_gpu_at_once() -> None:
    book = LedgerBook(LEAD)
    book.claim(claim("a", T, busy=0.010), T)
    book.finish("a")
    assert book.claim(claim("b", T + 0.004), T + 0.004) is None


def test_waiting_requests_go_in_slot_order_whoever_asks_first() -> None:
    book = LedgerBook(LEAD)
    book.claim(claim("a", T, busy=0.010), T)
    late_slot = claim("c", T + 0.006, busy=0.010)
    early_slot = claim("b", T + 0.005, busy=0.010)
    assert book.claim(late_slot, T + 0.006) == near(T + 0.008)  # after a
    assert book.claim(early_slot, T + 0.006) == near(T + 0.008)  # after a, ahead of c
    # c wakes first, but b's slot is earlier: c queues after b's predicted answer.
    assert book.claim(late_slot, T + 0.008) == near(T + 0.008 + 0.010 - LEAD)
    assert book.claim(early_slot, T + 0.008) is None
    assert book.claim(late_slot, T + 0.016) is None


def test_nobody_waits_past_its_deadline() -> None:
    book = LedgerBook(LEAD)
    book.claim(claim("a", T, busy=0.100), T)
    b = claim("b", T + 0.010, max_delay=0.005)
    assert book.claim(b, T + 0.010) == near(T + 0.015)  # the deadline, not a's answer
    assert book.claim(b, T + 0.015) is None
    # b went uncoordinated: the next request queues after a alone, not after b too.
    assert set(book.claims) == {"a"}
    c = claim("c", T + 0.016, max_delay=0.2)
    assert book.claim(c, T + 0.016) == near(T + 0.100 - LEAD)


def test_entries_of_a_dead_sidecar_expire() -> None:
    book = LedgerBook(LEAD)
    book.claim(claim("released", T, busy=0.010), T)  # never answered
    book.claim(claim("waiting", T + 0.001, max_delay=0.030), T + 0.001)  # never asked again
    # The released one no longer holds the GPU from its predicted answer - lead on; the
    # waiting one (ahead in slot order) from its deadline on.
    assert book.claim(claim("x", T + 0.040), T + 0.040) is None
    assert set(book.claims) == {"x"}


def test_a_full_ledger_is_ignored_rather_than_blocking() -> None:
    book = LedgerBook(LEAD)
    for i in range(MAX_ENTRIES):
        book.claims[f"w{i}"] = claim(f"w{i}", T + 0.0001 * i, max_delay=10.0)
    assert book.claim(claim("late", T + 1.0), T + 0.05) is None


def test_the_book_survives_its_text_form() -> None:
    book = LedgerBook(LEAD)
    book.claim(claim("a", T), T)
    book.claim(claim("b", T + 0.001), T + 0.001)
    again = LedgerBook.load(book.dump(), LEAD)
    assert again.claims == book.claims
    assert LedgerBook.load("", LEAD).claims == {}
    with pytest.raises(ValueError):
        LedgerBook.load("not json", LEAD)


@given(
    st.lists(
        st.tuples(
            st.floats(0, 0.5),  # arrival
            st.floats(0.001, 0.03),  # predicted body
            st.floats(0.001, 0.05),  # longest delay
        ),
        min_size=1,
        max_size=12,
    )
)
def test_no_request_goes_early_unless_at_its_deadline(
    requests: list[tuple[float, float, float]],
) -> None:
    """Whatever the arrivals: a request goes before the GPU is predicted free only at its
    deadline, and never before its slot."""
    book = LedgerBook(LEAD)
    pending = [
        Claim(f"r{i}", T + at, busy, T + at + delay) for i, (at, busy, delay) in enumerate(requests)
    ]
    asks = [(c.slot, c) for c in pending]
    while asks:
        asks.sort(key=lambda a: (a[0], a[1].id))
        now, c = asks.pop(0)
        busy_until = max(
            (o.free for o in book.claims.values() if o.released is not None and o is not c),
            default=-math.inf,
        )
        again = book.claim(c, now)
        if again is None:
            assert now >= c.slot
            assert now >= busy_until - LEAD - 1e-9 or now >= c.deadline
        else:
            assert now < again <= c.deadline
            asks.append((again, c))


def test_sidecars_share_one_file_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger" / "gpu-0.json"
    one, other = FileLedger(path, LEAD), FileLedger(path, LEAD)
    assert one.claim(claim("a", T, busy=0.010), T) is None
    assert other.claim(claim("b", T + 0.004), T + 0.004) == near(T + 0.008)
    one.finish("a")
    assert other.claim(claim("b", T + 0.004), T + 0.005) is None
    one.close()
    other.close()


def test_a_broken_ledger_file_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "gpu-0.json"
    path.write_text('{"claims": [["a", "x"]]}')
    ledger = FileLedger(path, LEAD)
    assert ledger.claim(claim("b", T), T) is None
    assert set(LedgerBook.load(path.read_text(), LEAD).claims) == {"b"}


def test_an_unusable_ledger_releases_at_the_slot(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    ledger = FileLedger(tmp_path / "file" / "gpu-0.json", LEAD)  # its folder is a file
    assert ledger.claim(claim("a", T), T) is None
    assert ledger.claim(claim("b", T), T) is None
    assert ledger.failures == 2


def two_stream_keeper(now: list[float], ledger: LocalLedger) -> Keeper:
    gate = Gate(GateConfig())
    gate.load(slot_contract("a", offset_ms=30, body_ms=20), T)
    gate.load(slot_contract("b", offset_ms=35, body_ms=20), T)

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    return Keeper(
        gate,
        GateMetrics(),
        max_inflight=8,
        clock=lambda: now[0],
        sleep=sleep,
        coordination=Coordination(ledger, LEAD),
    )


async def test_the_keeper_holds_a_request_while_another_streams_body_runs() -> None:
    now = [T + 0.030]
    keeper = two_stream_keeper(now, LocalLedger(LEAD))
    keeper.bodies["slow"] = 0.010  # as Triton measured it; the contract says 20 ms
    a = await keeper.admit("a", "slow")
    assert a.released == near(T + 0.030)
    now[0] = T + 0.035
    b = await keeper.admit("b", "m")  # a's body is predicted to end at 40 ms
    assert b.released == near(T + 0.040 - LEAD)
    delay = keeper.metrics.registry.get_sample_value(
        "stagger_gate_coordinated_delay_seconds_sum", {**b.key.labels()}
    )
    assert delay == near(0.003)
    now[0] = T + 0.041
    keeper.done(a)
    assert set(keeper.coordination.ledger.book.claims) == {b.claim.id}  # type: ignore[union-attr]


async def test_a_measured_body_longer_than_the_slots_counts_as_the_slots() -> None:
    """Triton measures long bodies when they overlapped: the ledger holds the next request
    for the calibrated body at most, or it would space releases wider than the slots."""
    now = [T + 0.030]
    keeper = two_stream_keeper(now, LocalLedger(LEAD))
    keeper.bodies["slow"] = 0.050
    await keeper.admit("a", "slow")
    now[0] = T + 0.035
    b = await keeper.admit("b", "m")
    assert b.released == near(T + 0.030 + 0.020 - LEAD)


async def test_a_request_cancelled_while_coordinated_leaves_the_ledger() -> None:
    now = [T + 0.030]
    ledger = LocalLedger(LEAD)
    keeper = two_stream_keeper(now, ledger)
    await keeper.admit("a", "slow")  # the contract's 20 ms body
    now[0] = T + 0.035

    async def never(seconds: float) -> None:
        await asyncio.Event().wait()

    keeper.sleep = never
    waiting = asyncio.create_task(keeper.admit("b", "m"))
    await asyncio.sleep(0)
    assert len(ledger.book.claims) == 2  # b waits in the ledger
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(ledger.book.claims) == 1
    assert keeper.inflight == 1


async def test_requests_outside_any_slot_are_not_coordinated() -> None:
    now = [T + 0.030]
    ledger = LocalLedger(LEAD)
    keeper = two_stream_keeper(now, ledger)
    keeper.gate = Gate(GateConfig(max_wait_s=0.001, policy=keeper.gate.config.policy))
    keeper.gate.load(slot_contract("a", offset_ms=30, body_ms=5), T)
    now[0] = T + 0.050  # the next slot is 80 ms away: forwarded late at once, ungated
    ticket = await keeper.admit("a", "m")
    assert ticket.claim is None and ticket.release.late
    assert ledger.book.claims == {}
