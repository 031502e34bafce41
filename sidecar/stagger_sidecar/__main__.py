"""``stagger-sidecar gate [flags]`` (also ``python -m stagger_sidecar``): run the gate in
front of Triton (docs/sidecar.md); ``stagger-sidecar agent``: the node agent, the GPU
inventory of a node (docs/node-agent.md). Settings come from flags and ``STAGGER_*``
variables (flags win); see ``--help``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from typing import TypeVar

import uvloop
from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter

from stagger_sidecar.agent import AgentSettings, run_agent
from stagger_sidecar.app import Sidecar
from stagger_sidecar.settings import GateSettings

S = TypeVar("S", AgentSettings, GateSettings)
USAGE = "usage: stagger-sidecar {gate,agent} [--help] [flags]"


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=False)
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


async def run_gate(settings: GateSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sidecar = await Sidecar(settings).start()
    # What start-up built lives as long as the process: frozen out of the collector's scans,
    # a full collection no longer holds a release (35-39 ms over the gate's ~70,000
    # start-up objects on a 2-core host; about 0 after the freeze).
    gc.freeze()
    logging.getLogger("stagger.sidecar").info(
        "start-up heap frozen", extra={"objects": gc.get_freeze_count()}
    )
    await stop.wait()
    logging.getLogger("stagger.sidecar").info(
        "stopping: draining in-flight requests", extra={"inflight": sidecar.keeper.inflight}
    )
    await sidecar.stop()


def _settings(kind: type[S], args: list[str]) -> S:
    try:
        return kind(_cli_parse_args=args)
    except ValidationError as e:  # one line per bad setting, no traceback
        for err in e.errors(include_url=False):
            name = ".".join(str(x) for x in err["loc"]) or "settings"
            print(f"stagger-sidecar: {name}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n  gate   the slot gate in front of Triton\n  agent  the node agent")
        raise SystemExit(0)
    if not args or args[0] not in ("gate", "agent"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    if args[0] == "agent":
        agent_settings = _settings(AgentSettings, args[1:])
        configure_logging(agent_settings.log_format, agent_settings.log_level)
        raise SystemExit(asyncio.run(run_agent(agent_settings)))
    settings = _settings(GateSettings, args[1:])
    configure_logging(settings.log_format, settings.log_level)
    try:
        if settings.event_loop == "uvloop":
            uvloop.run(run_gate(settings))
        else:
            asyncio.run(run_gate(settings))
    except OSError as e:  # a listener could not bind: say which, no traceback
        print(f"stagger-sidecar: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
