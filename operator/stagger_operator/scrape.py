"""Reads the sidecars' metrics pages (HTTP to pods, not the Kubernetes API)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import Any

import aiohttp

from stagger_operator.rollout import ready_units, unit_of

Obj = dict[str, Any]


def targets(pods: Sequence[Obj], port: int) -> list[str]:
    """Metrics URLs of the Ready shard pods (one per pod IP)."""
    ready = ready_units(pods)
    urls = set()
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if ip and unit_of(pod) in ready:
            host = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
            urls.add(f"http://{host}:{port}/metrics")
    return sorted(urls)


async def fetch(urls: list[str], timeout_s: float, concurrency: int = 32) -> list[str]:
    """The pages that answered within ``timeout_s``; the others are skipped (a pod that is
    restarting must not hold up the rest)."""
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:

        async def one(url: str) -> str | None:
            async with limit:
                try:
                    async with session.get(url) as response:
                        return await response.text() if response.status == 200 else None
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return None

        pages = await asyncio.gather(*(one(u) for u in urls))
    return [p for p in pages if p]
