"""The ``stagger`` command (also ``kubectl stagger``).

Exit status: 0 when every stream is placed; 1 when some stream cannot be placed (reasons
on stderr); 2 when an input is invalid (every problem on stderr, naming file, object and
field).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import yaml
from rich.console import Console

from stagger import __version__, profile_cmd, render
from stagger.core.crdgen import all_crds
from stagger.core.placement import PlannerSettings, plan
from stagger.core.simulate import STUDY_CONTENTION, Phasing, simulate_plan
from stagger.loader import InputError, load_inputs

EXIT_OK, EXIT_UNPLACED, EXIT_INVALID = 0, 1, 2


def _scenario_path(name: str) -> Path:
    return Path(str(resources.files("stagger") / "scenarios" / name))


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stagger", description="Place video-inference streams on GPUs and stagger them."
    )
    parser.add_argument("--version", action="version", version=f"stagger {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "plan",
        help="place streams on a cluster and show the per-GPU timeline",
        description="With no files, plans the embedded default scenario: the study's four "
        "cameras on one T4 plus a mixed-fps fleet on H200s.",
    )
    p.add_argument(
        "--streams", nargs="+", metavar="FILE", help="InferenceStream manifests (files or folders)"
    )
    p.add_argument("--cluster", metavar="FILE", help="YAML: nodes: [{name, labels, gpus: [...]}]")
    p.add_argument(
        "--profiles", nargs="+", metavar="FILE", default=[], help="ModelProfile manifests"
    )
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--plot", metavar="FILE.png", help="draw the per-GPU timeline to a PNG")
    p.add_argument("--policy", choices=["binpack", "spread"], default="binpack")
    p.add_argument("--utilization-cap", type=_positive, default=0.9, metavar="U")
    p.add_argument(
        "--throughput-cap",
        type=_positive,
        default=PlannerSettings().throughput_cap,
        metavar="U",
        help="share of a GPU's saturation throughput streams with a costMs may take "
        "(time-sliced and every mode but MPS)",
    )
    p.add_argument(
        "--mps-throughput-cap",
        type=_positive,
        default=PlannerSettings().mps_throughput_cap,
        metavar="U",
        help="the same share on an MPS GPU",
    )
    p.add_argument(
        "--charge-model-time",
        action="store_true",
        help="charge streams on GPUs whose bodies take turns (every mode but MPS) the larger "
        "of their cost and their model's own time alone (soloComputeMs)",
    )
    p.add_argument(
        "--mps-servers-per-gpu",
        type=int,
        default=PlannerSettings().mps_servers_per_gpu,
        metavar="N",
        help="most model servers (shards) an MPS GPU takes (0: no limit)",
    )
    p.add_argument("--guard-ms", type=float, default=0.0, metavar="MS")
    p.add_argument(
        "--max-extra-shards", type=int, default=PlannerSettings().max_extra_shards, metavar="N"
    )
    p.add_argument(
        "--simulate",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="simulated seconds per phasing (0: no simulation)",
    )
    p.add_argument(
        "--contention",
        type=float,
        default=STUDY_CONTENTION,
        help="extra cost of concurrent bodies in the simulator",
    )
    p.add_argument("--seed", type=int, default=0)

    c = sub.add_parser(
        "crds", help="write the CustomResourceDefinitions generated from the API models"
    )
    c.add_argument("--out", default="crds", metavar="DIR")
    c.add_argument("--check", action="store_true", help="fail if DIR differs from the models")

    profile_cmd.add_parser(sub)
    return parser


def cmd_plan(args: argparse.Namespace, out: Console, err: Console) -> int:
    if bool(args.streams) != bool(args.cluster):
        err.print(
            "stagger plan: give both --streams and --cluster, or neither for the default scenario"
        )
        return EXIT_INVALID
    if args.streams:
        stream_files, cluster_file, profile_files = args.streams, args.cluster, args.profiles
    else:
        stream_files = [_scenario_path("default-streams.yaml")]
        cluster_file = _scenario_path("default-cluster.yaml")
        profile_files = [_scenario_path("default-profiles.yaml"), *args.profiles]
    try:
        inputs = load_inputs(stream_files, cluster_file, profile_files)
    except InputError as e:
        for line in e.problems:
            err.print(f"error: {line}", highlight=False, markup=False)
        return EXIT_INVALID
    try:
        settings = PlannerSettings(
            utilization_cap=args.utilization_cap,
            throughput_cap=args.throughput_cap,
            mps_throughput_cap=args.mps_throughput_cap,
            charge_model_time=args.charge_model_time,
            mps_servers_per_gpu=args.mps_servers_per_gpu,
            guard_ms=args.guard_ms,
            policy=args.policy,
            max_extra_shards=args.max_extra_shards,
        )
    except ValueError as e:
        err.print(f"error: {e}")
        return EXIT_INVALID
    result = plan(inputs.streams, inputs.cluster, inputs.profiles, settings)
    if args.output == "json":
        out.print_json(json.dumps(render.plan_json(result)))
    else:
        sims = None
        if args.simulate > 0 and result.shards:
            sims = {
                ph: simulate_plan(
                    result,
                    ph,
                    args.simulate,
                    contention={"time-slicing": args.contention},
                    seed=args.seed,
                )
                for ph in Phasing
            }
        render.print_plan(out, result, sims)
        out.print(render.summary_line(result, inputs.streams))
    if args.plot:
        render.plot(result, args.plot)
        err.print(f"timeline written to {args.plot}")
    for u in result.unplaced:
        err.print(f"unplaced: {u.namespace}/{u.stream}: {u.reason}", highlight=False, markup=False)
    return EXIT_UNPLACED if result.unplaced else EXIT_OK


def cmd_crds(args: argparse.Namespace, out: Console, err: Console) -> int:
    target = Path(args.out)
    wanted = {
        name: "# Generated by `make crds` from stagger/core/api.py: do not edit.\n"
        + yaml.safe_dump(body, sort_keys=False, width=100)
        for name, body in all_crds().items()
    }
    if args.check:
        stale = [
            n
            for n, text in wanted.items()
            if not (target / n).is_file() or (target / n).read_text() != text
        ]
        extra = (
            sorted(p.name for p in target.glob("*.yaml") if p.name not in wanted)
            if target.is_dir()
            else []
        )
        for n in stale:
            err.print(f"{target / n} is stale: run `make crds`")
        for n in extra:
            err.print(f"{target / n} matches no API model: remove it or run `make crds`")
        return 1 if stale or extra else 0
    target.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        (target / name).write_text(text)
        out.print(f"wrote {target / name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Piped output is not cut at 80 columns: plans are wide and often go to files.
    out = Console(width=None if sys.stdout.isatty() else 160)
    # one line per problem, grep-able; plain text, so "[profile]" in a message is kept
    err = Console(stderr=True, soft_wrap=True, markup=False)
    try:
        if args.command == "plan":
            return cmd_plan(args, out, err)
        if args.command == "profile":
            return profile_cmd.run(args, out, err)
        return cmd_crds(args, out, err)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
