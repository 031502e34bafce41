"""Triton as the sidecar sees it: is it ready (polled, backing off while it is down), and
what its statistics say about body time.

Body time per model is Triton's ``compute_infer`` time per inference over the last window
(statistics extension): the model's own execution, without queueing or transfers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import service_pb2

log = logging.getLogger("stagger.sidecar")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    # Triton restarts: be back within ~2 s rather than gRPC's default minutes-long backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
"""The channel for Triton's readiness and statistics (calls are relayed, not made)."""
READY_EVERY_S = 1.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
SERVER_READY = "/inference.GRPCInferenceService/ServerReady"
MODEL_STATISTICS = "/inference.GRPCInferenceService/ModelStatistics"


@dataclass(frozen=True)
class ComputeTotals:
    count: int
    ns: int


def compute_totals(stats: Mapping[str, Any]) -> dict[str, ComputeTotals]:
    """Per model, cumulative ``compute_infer`` from a statistics document (HTTP JSON shape;
    gRPC's converted to it). Versions of one model are summed."""
    totals: dict[str, ComputeTotals] = {}
    for entry in stats.get("model_stats", []):
        compute = entry.get("inference_stats", {}).get("compute_infer", {})
        name = str(entry.get("name", ""))
        old = totals.get(name, ComputeTotals(0, 0))
        totals[name] = ComputeTotals(
            old.count + int(compute.get("count", 0)), old.ns + int(compute.get("ns", 0))
        )
    return totals


def body_times(
    before: Mapping[str, ComputeTotals], now: Mapping[str, ComputeTotals]
) -> dict[str, float]:
    """Seconds of compute per inference, per model that ran in the window."""
    out: dict[str, float] = {}
    for model, cur in now.items():
        old = before.get(model, ComputeTotals(0, 0))
        runs = cur.count - old.count
        if runs > 0 and cur.ns >= old.ns:  # a restarted Triton resets its counters
            out[model] = (cur.ns - old.ns) / runs / 1e9
    return out


class Upstream:
    """Triton's HTTP and/or gRPC endpoint: readiness and statistics."""

    def __init__(
        self,
        *,
        http: str | None,
        channel: grpc.aio.Channel | None,
        session: aiohttp.ClientSession,
        timeout_s: float = 2.0,
    ) -> None:
        self.http = http
        self.channel = channel
        self.session = session
        self.timeout_s = timeout_s
        self.ready = False
        self.reason = "not checked yet"
        self._recheck = asyncio.Event()

    @property
    def where(self) -> str:
        return f"http://{self.http}" if self.http else "Triton's gRPC endpoint"

    def recheck(self) -> None:
        """A request failed to reach Triton: check now rather than at the next poll."""
        self._recheck.set()

    async def check(self) -> bool:
        try:
            if self.http:
                timeout = aiohttp.ClientTimeout(total=self.timeout_s)
                url = f"http://{self.http}/v2/health/ready"
                async with self.session.get(url, timeout=timeout) as r:
                    ok, why = r.status == 200, f"Triton answered {r.status} on /v2/health/ready"
            else:
                assert self.channel is not None
                ready_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
                ready_call = self.channel.unary_unary(SERVER_READY)
                raw: bytes = await ready_call(b"", timeout=self.timeout_s)
                ok = service_pb2.ServerReadyResponse.FromString(raw).ready
                why = "Triton says it is not ready"
        except (aiohttp.ClientError, TimeoutError, grpc.aio.AioRpcError) as e:
            ok, why = False, f"Triton unreachable at {self.where}: {type(e).__name__}: {e}"
        if ok != self.ready:
            if ok:
                log.info("Triton is ready", extra={"triton": self.where})
            else:
                log.warning("Triton is not ready: %s", why, extra={"triton": self.where})
        self.ready, self.reason = ok, ("" if ok else why)
        return ok

    async def watch(self, on_change: Any = None) -> None:
        """Poll readiness forever: every second while ready, backing off while it is not."""
        backoff = BACKOFF_FIRST_S
        while True:
            ok = await self.check()
            if on_change is not None:
                on_change(ok)
            delay = READY_EVERY_S if ok else backoff
            backoff = BACKOFF_FIRST_S if ok else min(backoff * 2, BACKOFF_MAX_S)
            self._recheck.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that lands as the wait ends, and then stop() waits on this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._recheck.wait()

    async def statistics(self) -> dict[str, Any]:
        if self.http:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            url = f"http://{self.http}/v2/models/stats"
            async with self.session.get(url, timeout=timeout) as r:
                r.raise_for_status()
                doc: dict[str, Any] = await r.json()
                return doc
        assert self.channel is not None
        request = service_pb2.ModelStatisticsRequest().SerializeToString()
        raw: bytes = await self.channel.unary_unary(MODEL_STATISTICS)(
            request, timeout=self.timeout_s
        )
        message = service_pb2.ModelStatisticsResponse.FromString(raw)
        stats: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
        return stats
