"""kmock's Kubernetes API emulator in a process of its own, as an API server would be.

    python -m bench.operator.apiserver [PRELOAD.json]   # prints its URL, serves until stdin closes

PRELOAD holds objects (a JSON list) put into the emulator's store before it serves: the
state a previous operator left behind, without writing it through the API first.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import kmock

from tests.emulator import Emulator, declare

PLURALS = {
    "InferenceStream": "stagger.dev/v1alpha1/inferencestreams",
    "GpuSchedule": "stagger.dev/v1alpha1/gpuschedules",
    "Node": "v1/nodes",
    "ConfigMap": "v1/configmaps",
    "Deployment": "apps/v1/deployments",
}


async def serve(preload: str | None) -> None:
    emulator = declare(Emulator())
    objects = json.loads(Path(preload).read_text()) if preload else []
    for obj in objects:
        meta = obj["metadata"]
        emulator.objects[PLURALS[obj["kind"]], meta.get("namespace"), meta["name"]] = obj
    async with kmock.Server(emulator) as server:
        print(server.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1] if len(sys.argv) > 1 else None))
