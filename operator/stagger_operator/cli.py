"""``kubectl stagger``: the ``stagger`` command, plus what needs a cluster.

    kubectl stagger plan --live [--add FILE...] [--kubeconfig PATH] [--context NAME] [-o json]
    kubectl stagger profile ... --apply --gpu-product PRODUCT [--sharing-mode MODE]

Reads nodes, streams, ModelProfiles and GpuSchedules through the kubeconfig and shows the
plan the operator holds, and what adding the streams in FILE would change. Writes nothing.
Exit status: 0 when every added stream fits, 1 when one does not, 2 on invalid input or
when the cluster cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from kubernetes import client, config
from rich.console import Console

from stagger import cli as base_cli
from stagger import profile_cmd, render
from stagger.core.api import SharingMode
from stagger.core.calibration import model_profile
from stagger.core.timebase import ticks_to_ms
from stagger.loader import InputError, load_streams
from stagger_operator.kube import Kube
from stagger_operator.settings import OperatorSettings
from stagger_operator.whatif import live_what_if


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl stagger plan --live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=["plan"])
    p.add_argument("--live", action="store_true", required=True)
    p.add_argument(
        "--add",
        nargs="+",
        metavar="FILE",
        default=[],
        help="InferenceStream manifests to try on top of the cluster's streams",
    )
    p.add_argument("--kubeconfig", metavar="PATH", help="default: $KUBECONFIG or ~/.kube/config")
    p.add_argument("--context", metavar="NAME")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    return p


def _api(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    if not (kubeconfig or context):
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context
    )
    return api


def live(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    out = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, soft_wrap=True)
    try:
        add = load_streams(args.add) if args.add else []
    except InputError as e:
        for line in e.problems:
            err.print(f"error: {line}", highlight=False, markup=False)
        return base_cli.EXIT_INVALID
    try:
        result = live_what_if(Kube(_api(args.kubeconfig, args.context)), OperatorSettings(), add)
    except ValueError as e:
        err.print(f"error: {e}", highlight=False, markup=False)
        return base_cli.EXIT_INVALID
    except Exception as e:  # no cluster, no credentials, no CRDs: say which, no traceback
        err.print(f"error: cannot read the cluster: {e}", highlight=False, markup=False)
        return base_cli.EXIT_INVALID
    after = render.plan_json(result.after)
    added_keys = {(a.namespace, a.stream, a.shard) for a in result.added}
    retimed_keys = {(a.namespace, a.stream, a.shard) for a in result.retimed}
    hz = result.after.tick_hz
    if args.output == "json":
        out.print_json(
            json.dumps(
                {
                    "current": render.plan_json(result.current),
                    "after": after,
                    "added": [
                        s
                        for s in after["shards"]
                        if (s["namespace"], s["stream"], s["shard"]) in added_keys
                    ],
                    "refused": [
                        {"stream": u.stream, "namespace": u.namespace, "reason": u.reason}
                        for u in result.refused
                    ],
                    "retimed": [
                        s
                        for s in after["shards"]
                        if (s["namespace"], s["stream"], s["shard"]) in retimed_keys
                    ],
                }
            )
        )
    else:
        render.print_plan(out, result.after, None)
        for s in result.added:
            out.print(
                f"would add {s.namespace}/{s.stream} shard {s.shard + 1}/{s.shards} on "
                f"{s.node} GPU {s.gpu} at {ticks_to_ms(s.offset_ticks, hz):.2f} ms"
            )
        for s in result.retimed:
            out.print(
                f"would re-time {s.namespace}/{s.stream} shard {s.shard + 1}/{s.shards} on "
                f"{s.node} GPU {s.gpu} to {ticks_to_ms(s.offset_ticks, hz):.2f} ms"
            )
        out.print(
            f"{len(result.added)} shard(s) would be added, {len(result.refused)} "
            f"stream(s) refused, {len(result.retimed)} running shard(s) re-timed on their "
            "GPU; nothing already placed moves to another GPU"
        )
    for u in result.refused:
        err.print(f"unplaced: {u.namespace}/{u.stream}: {u.reason}", highlight=False, markup=False)
    return base_cli.EXIT_UNPLACED if result.refused else base_cli.EXIT_OK


def profile_apply(argv: list[str]) -> int:
    """``kubectl stagger profile ... --apply --gpu-product P``: measure (or read a CSV),
    then write the ModelProfile for (model, product, sharing mode)."""
    parser = argparse.ArgumentParser(prog="kubectl stagger")
    p = profile_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    p.add_argument(
        "--gpu-product",
        required=True,
        metavar="PRODUCT",
        help="as in nvidia.com/gpu.product, e.g. NVIDIA-H200",
    )
    p.add_argument(
        "--sharing-mode",
        choices=[m.value for m in SharingMode],
        default=SharingMode.TIME_SLICING.value,
    )
    p.add_argument("--kubeconfig", metavar="PATH")
    p.add_argument("--context", metavar="NAME")
    args = parser.parse_args(argv)
    out = Console(width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, soft_wrap=True)
    report = profile_cmd.measure(args, err)
    if report is None:
        return 1
    if not (report.model or args.model):
        err.print("error: --apply needs --model to name the profile", highlight=False)
        return base_cli.EXIT_INVALID
    result = profile_cmd.calibration_result(report, args.model, args.model_version)
    profile = model_profile(
        result, args.gpu_product, SharingMode(args.sharing_mode), datetime.now(UTC)
    )
    try:
        kube = Kube(_api(args.kubeconfig, args.context))
        current = next(
            (o for o in kube.list_objects("ModelProfile") if o["metadata"]["name"] == profile.name),
            None,
        )
        kube.apply(profile.to_wire(), current)
    except Exception as e:  # no cluster, no credentials, no CRD, refused: say which
        err.print(f"error: cannot write the ModelProfile: {e}", highlight=False, markup=False)
        return base_cli.EXIT_INVALID
    code = profile_cmd.present(report, args, out, err)
    out.print(
        f"modelprofile.stagger.dev/{profile.name} written: bodyTimeMs "
        f"{profile.spec.body_time_ms:g}, latencyMs {profile.spec.latency_ms:g}",
        highlight=False,
    )
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--live" in argv:
        return live(argv)
    if argv[:1] == ["profile"] and "--apply" in argv:
        return profile_apply(argv)
    return base_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
