"""Coordinated release for time-sliced GPUs (experimental: measured no better than static
stagger yet, docs/benchmarks.md): the sidecars of one GPU share a ledger of the
requests they released, and a request whose slot has come still waits while another
stream's body is predicted to run.

Why: on a time-sliced GPU two bodies at once each take 2.4-2.8x as long (RetinaNet on an
H200, bench/gpu). Near saturation, slots are as long as the bodies: one frame that reaches
the model a few ms late overlaps the next stream's, both run long, the next overlaps again,
and the overlap feeds itself (at 7 streams per H200, 99.8 % of frames shared the model
whatever their phases). The ledger makes the GPU one queue in slot order, fed back by what
the GPU actually did:

- a released request holds the GPU for its body: its model's as Triton measures it
  (``compute_infer`` per inference over the sidecar's last statistics window), at most its
  slot's body (the calibrated body, alone on the GPU). A longer measure means bodies
  overlapped, which the ledger exists to prevent: following it spaced releases wider than
  the slots and sent 54-99 % of requests at their longest delay on an H200. Requests
  reach the model about as long after their release as one another, so the next may go one
  body after the previous went: its way to the model overlaps the previous body, its body
  starts as the previous ends;
- a request goes once its slot has come, the GPU is predicted free (``lead`` early at
  most) and every request with an earlier slot has gone;
- an answer removes its request at once, so a body that finished early frees the GPU;
- nobody waits beyond its ``deadline`` (its slot + the longest delay), and a request that
  goes at its deadline goes uncoordinated: it is not entered as holding the GPU, so one
  stall does not push every later release to its deadline in turn;
- entries of a sidecar that died expire: a released one when its body is predicted to
  end, a waiting one at its deadline.

:class:`LedgerBook` is the pure rule. :class:`FileLedger` keeps it in one small JSON file
per GPU under an exclusive ``flock``, read and written per decision (tens of microseconds
on tmpfs), so separate sidecar processes share it (pods would mount one node directory, a
``hostPath``: an explicit opt-in the operator does not make; docs/sidecar.md). Whatever
goes wrong with the file, requests go at their slot (static stagger): the ledger may delay
a release by its longest delay at most, never block one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger("stagger.sidecar")

MAX_ENTRIES = 256
"""More entries than any GPU's streams hold at once: past it the ledger is ignored."""


@dataclass
class Claim:
    """One request in the ledger. Times are Unix seconds on the node's clock."""

    id: str
    slot: float  # when its stream's gate releases it
    busy: float  # how long after its release it holds the GPU (its body)
    deadline: float  # it goes then whatever the ledger says
    released: float | None = None

    @property
    def free(self) -> float:
        """When a released request is predicted to leave the GPU to the next."""
        assert self.released is not None
        return self.released + self.busy


@dataclass
class LedgerBook:
    """The requests of one GPU that wait for it or are released to it."""

    lead: float
    claims: dict[str, Claim] = field(default_factory=dict)

    def claim(self, claim: Claim, now: float) -> float | None:
        """None: ``claim`` goes now (recorded as released, unless it goes uncoordinated:
        at its deadline or past a full ledger). Else the time to ask again (recorded as
        waiting, so requests behind it queue after it)."""
        self._expire(now)
        go = self.release_time(claim, now)
        claim.released = now
        if go <= now:
            self.claims[claim.id] = claim
            return None
        if now >= claim.deadline or len(self.claims) >= MAX_ENTRIES:
            self.claims.pop(claim.id, None)
            return None
        claim.released = None
        self.claims[claim.id] = claim
        return min(go, claim.deadline)

    def release_time(self, claim: Claim, now: float) -> float:
        """When the GPU is predicted free for ``claim``: after the released requests and,
        in slot order, the waiting ones ahead of it (none of which it overtakes)."""
        free = max((c.free for c in self.claims.values() if c.released is not None), default=0)
        ahead = sorted(
            (c for c in self.claims.values() if c.released is None and c.id != claim.id),
            key=lambda c: (c.slot, c.id),
        )
        floor = now
        for other in ahead:
            if (other.slot, other.id) >= (claim.slot, claim.id):
                break
            floor = max(other.slot, free - self.lead, floor)
            free = max(free, floor + other.busy)
        return max(claim.slot, free - self.lead, floor)

    def finish(self, claim_id: str) -> None:
        """Its answer is back, or it was abandoned while waiting."""
        self.claims.pop(claim_id, None)

    def _expire(self, now: float) -> None:
        for c in list(self.claims.values()):
            done = c.free - self.lead if c.released is not None else c.deadline
            if done <= now:
                del self.claims[c.id]

    def dump(self) -> str:
        rows = [[c.id, c.slot, c.busy, c.deadline, c.released] for c in self.claims.values()]
        return json.dumps({"lead": self.lead, "claims": rows})

    @classmethod
    def load(cls, text: str, lead: float) -> LedgerBook:
        """The book in ``text`` (empty: a new one); raises ValueError when it is not one."""
        book = cls(lead)
        if text.strip():
            rows = json.loads(text)["claims"]
            for id_, slot, busy, deadline, released in rows:
                book.claims[str(id_)] = Claim(
                    str(id_),
                    float(slot),
                    float(busy),
                    float(deadline),
                    None if released is None else float(released),
                )
        return book


class Ledger(Protocol):
    def claim(self, claim: Claim, now: float) -> float | None: ...
    def finish(self, claim_id: str) -> None: ...


class LocalLedger:
    """The book in this process: the streams of one sidecar (one Triton, several streams)."""

    def __init__(self, lead: float) -> None:
        self.book = LedgerBook(lead)

    def claim(self, claim: Claim, now: float) -> float | None:
        return self.book.claim(claim, now)

    def finish(self, claim_id: str) -> None:
        self.book.finish(claim_id)


class FileLedger:
    """The book in a file shared by the sidecars of one GPU (one file per GPU)."""

    def __init__(self, path: Path, lead: float) -> None:
        self.path = path
        self.lead = lead
        self._fd: int | None = None
        self.failures = 0

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return self._fd

    def _update(self, change: _Change) -> float | None:
        try:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                raw = os.pread(fd, os.fstat(fd).st_size, 0)  # a few hundred bytes
                try:
                    book = LedgerBook.load(raw.decode(), self.lead)
                except (ValueError, KeyError, TypeError):
                    log.warning("the GPU ledger %s was not a ledger: starting it afresh", self.path)
                    book = LedgerBook(self.lead)
                result = change(book)
                data = book.dump().encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as e:
            # Static stagger still holds: the request goes at its slot.
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                log.warning("GPU ledger %s unusable (%s): releasing at slots", self.path, e)
            return None
        return result

    def claim(self, claim: Claim, now: float) -> float | None:
        return self._update(lambda book: book.claim(claim, now))

    def finish(self, claim_id: str) -> None:
        self._update(lambda book: book.finish(claim_id))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Change(Protocol):
    def __call__(self, book: LedgerBook, /) -> float | None: ...
