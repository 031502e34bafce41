"""Leader election on a Lease, as client-go does it: the Lease is read by name, and a
holder counts as gone only when this replica has seen its record (holder, renew time,
transitions) unchanged for a whole lease duration on this replica's own monotonic clock.
A holder's ``renewTime`` is another node's wall clock: it is written, never compared with
ours, so clock skew between nodes cannot make two replicas plan at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

Obj = dict[str, Any]


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    renew_time: str | None
    transitions: int
    duration_s: int

    @classmethod
    def of(cls, lease: Obj, default_duration_s: int) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            duration_s=int(spec.get("leaseDurationSeconds") or default_duration_s),
        )


class LeaseStore(Protocol):
    """The Lease calls the elector makes (``Kube`` implements them)."""

    def read_lease(self, namespace: str, name: str) -> Obj | None: ...

    def create_lease(self, namespace: str, name: str, spec: Obj) -> bool: ...

    def swap_lease(self, namespace: str, name: str, seen: LeaseRecord, spec: Obj) -> bool: ...


class Elector:
    """One replica's view of the Lease. ``try_hold`` takes or renews it and says whether
    this replica holds it now; call it every ``duration_s / 3`` or more often."""

    def __init__(
        self,
        identity: str,
        duration_s: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.identity, self.duration_s = identity, duration_s
        self.monotonic, self.wall = monotonic, wall
        self.seen: LeaseRecord | None = None
        self.seen_at = -float("inf")  # on our monotonic clock, when ``seen`` last changed

    def _observe(self, record: LeaseRecord, now: float) -> None:
        if record != self.seen:
            self.seen, self.seen_at = record, now

    def try_hold(self, store: LeaseStore, namespace: str, name: str) -> bool:
        now, stamp = self.monotonic(), _stamp(self.wall())
        lease = store.read_lease(namespace, name)
        mine = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_s,
            "renewTime": stamp,
        }
        if lease is None:
            spec = {**mine, "acquireTime": stamp, "leaseTransitions": 0}
            if not store.create_lease(namespace, name, spec):
                return False  # another replica created it first
            self._observe(LeaseRecord(self.identity, stamp, 0, self.duration_s), now)
            return True
        record = LeaseRecord.of(lease, self.duration_s)
        self._observe(record, now)
        if record.holder not in (None, self.identity) and now < self.seen_at + record.duration_s:
            return False  # held, and seen renewed within its duration
        transitions = record.transitions
        if record.holder != self.identity:
            mine |= {"acquireTime": stamp}
            transitions += 1
        mine["leaseTransitions"] = transitions
        if not store.swap_lease(namespace, name, record, mine):
            return False  # it changed since we read it: someone else won
        self._observe(LeaseRecord(self.identity, stamp, transitions, self.duration_s), now)
        return True


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
