"""``python -m stagger_operator [flags]`` (also ``stagger-operator``): run the operator.

Settings come from flags and ``STAGGER_*`` environment variables (flags win); see
``--help`` and docs/operations.md. kopf's peering is off: one planner is chosen by the
Lease (``--leader-election``), not by kopf.
"""

from __future__ import annotations

import sys

import kopf
from pydantic import ValidationError

from stagger_operator import handlers  # noqa: F401  (registers the handlers)
from stagger_operator.settings import OperatorSettings


def main(argv: list[str] | None = None) -> None:
    try:
        settings = OperatorSettings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as e:  # one line per bad setting, no traceback
        for err in e.errors(include_url=False):
            name = ".".join(str(x) for x in err["loc"])
            print(f"stagger-operator: {name}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(log_format=log_format)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://{settings.health_address}/healthz",
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
