"""``stagger profile``: measure a model's body time on a running Triton, or estimate it
from a sweep recorded elsewhere (``--from-csv``). See docs/calibration.md."""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stagger.core.calibration import (
    MAX_WARNINGS,
    WARNING_CHARS,
    CalibrationResult,
    NoKnee,
    SweepPoint,
    knee_of_sweep,
    recommended_body_ms,
)
from stagger.profiler import FULL_LOAD_S, ProfileError, ProfileReport, profile, wait_ready

CSV_COLUMNS = ("offsetMs", "latency1Ms", "latency2Ms")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help="measure a model's body time (two-stream offset sweep) and recommend bodyTimeMs",
        description="Against a running Triton: solo latency, a two-stream offset sweep "
        "(coarse, then fine near the knee), saturation throughput, and one paced stream per "
        "server at the recommended cost (full load). The model needs two "
        "executions that can overlap: instance_group count >= 2, or --url twice.",
    )
    p.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="Triton endpoint, http://HOST:PORT (default scheme) or grpc://HOST:PORT;"
        " repeat it for several servers: the sweep uses the first two, saturation all of "
        "them (give as many as streams will share the GPU to measure costMs as deployed)",
    )
    p.add_argument("--model", help="Triton model name")
    p.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for every server to have the model ready (servers "
        "started side by side load it in any order; a calibration Job waits its deadline)",
    )
    p.add_argument("--model-version", default="", metavar="V")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="data for an input: a .npy array, or a file's bytes (BYTES or UINT8 inputs, e.g. "
        "a JPEG); inputs not named get zeros (dynamic dimensions as 1)",
    )
    p.add_argument("--runs", type=int, default=5, help="pairs per offset (default 5)")
    p.add_argument("--solo-runs", type=int, default=30)
    p.add_argument(
        "--max-offset-ms",
        type=float,
        metavar="MS",
        help="largest offset swept (default 1.5 x solo p50)",
    )
    p.add_argument(
        "--saturation",
        type=int,
        nargs="+",
        metavar="K",
        help="closed-loop client counts, spread over the servers (default 1 2 4 ... up to "
        "the number of --url, at least 4)",
    )
    p.add_argument("--saturation-seconds", type=float, default=2.0, metavar="S")
    p.add_argument(
        "--full-load-seconds",
        type=float,
        default=FULL_LOAD_S,
        metavar="S",
        help="pace one stream per server at the recommended cost for S seconds (the load "
        "the planner admits) and report what answers take there (default 5; 0 skips it)",
    )
    p.add_argument("--guard", type=float, default=0.15, help="margin on the body (0.15 = 15%%)")
    p.add_argument(
        "--from-csv",
        metavar="FILE",
        help="estimate from a recorded sweep: columns offsetMs,latency1Ms,latency2Ms",
    )
    p.add_argument("--solo-ms", type=float, metavar="MS", help="solo latency, with --from-csv")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--plot", metavar="FILE.png", help="draw the sweep and saturation curve")
    p.add_argument(
        "--apply",
        action="store_true",
        help="write the ModelProfile to the cluster: kubectl stagger profile --apply",
    )
    p.add_argument(
        "--result-file",
        metavar="FILE",
        help="also write the compact result (< 4 KiB JSON) here: a calibration Job points it "
        "at /dev/termination-log",
    )
    return p


def read_csv(path: Path) -> list[SweepPoint]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ProfileError(
                f"{path}: missing column(s) {', '.join(missing)}; need {','.join(CSV_COLUMNS)}"
            )
        points = []
        for line, row in enumerate(reader, start=2):
            try:
                points.append(SweepPoint(*(float(row[c]) for c in CSV_COLUMNS)))
            except (TypeError, ValueError):
                raise ProfileError(f"{path}:{line}: not a number in {dict(row)}") from None
    if not points:
        raise ProfileError(f"{path}: no rows")
    return points


def from_csv(
    path: Path, solo_ms: float | None, guard: float, model: str | None = None
) -> ProfileReport:
    points = read_csv(path)
    knee = knee_of_sweep(points)
    solo = {"p50": solo_ms} if solo_ms is not None else {}
    return ProfileReport(
        model=model or "",
        urls=[str(path)],
        solo_ms=solo,
        sweep=points,
        knee_ms=knee.fit.knee_ms,
        knee_ci_ms=knee.ci_ms,
        slope=knee.fit.slope,
        level_ms=knee.fit.level_ms,
        recommended_body_ms=recommended_body_ms(knee.fit.knee_ms, None, guard),
        guard=guard,
    )


@contextmanager
def _progress(err: Console, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:

        def stage(name: str, total: int) -> Any:
            task = bar.add_task(name, total=total)
            return lambda n: bar.advance(task, n)

        yield stage


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.apply and not hasattr(args, "gpu_product"):
        err.print(
            "stagger profile: the stagger command never writes to a cluster; use "
            "`kubectl stagger profile --apply --gpu-product PRODUCT` (the operator's CLI)"
        )
        return 2
    report = measure(args, err)
    if report is None:
        return 1
    return present(report, args, out, err)


def _say_waiting(err: Console) -> Callable[[int, int], None]:
    """A line now and then while servers load their model (a Job's log shows progress)."""
    said = {"at": -math.inf}

    def waiting(ready: int, total: int) -> None:
        if time.monotonic() - said["at"] >= WAITING_EVERY_S:
            said["at"] = time.monotonic()
            err.print(f"stagger profile: waiting for the model: {ready} of {total} servers ready")

    return waiting


WAITING_EVERY_S = 10.0


def measure(args: argparse.Namespace, err: Console) -> ProfileReport | None:
    """The report the arguments ask for; None (and the reason on ``err``) when there is none."""
    try:
        if args.from_csv:
            report = from_csv(Path(args.from_csv), args.solo_ms, args.guard, args.model)
        else:
            if not args.url or not args.model:
                raise ProfileError("give --url and --model (or --from-csv FILE)")
            data = {}
            for item in args.input:
                name, sep, file = item.partition("=")
                if not sep or not name or not file:
                    raise ProfileError(f"--input {item!r}: use NAME=FILE")
                data[name] = Path(file)
            if args.full_load_seconds < 0:
                raise ProfileError(
                    f"--full-load-seconds {args.full_load_seconds:g}: give seconds, 0 or more"
                )
            if args.wait_ready < 0:
                raise ProfileError(f"--wait-ready {args.wait_ready:g}: give seconds, 0 or more")
            if args.wait_ready > 0:
                wait_ready(
                    args.url,
                    args.model,
                    args.model_version,
                    args.wait_ready,
                    waiting=_say_waiting(err),
                )
            with _progress(err, args.output == "table" and err.is_terminal) as stage:
                report = profile(
                    args.url,
                    args.model,
                    version=args.model_version,
                    solo_runs=args.solo_runs,
                    sweep_runs=args.runs,
                    max_offset_ms=args.max_offset_ms,
                    saturation_levels=args.saturation,
                    saturation_s=args.saturation_seconds,
                    full_load_s=args.full_load_seconds,
                    guard=args.guard,
                    progress=stage,
                    data=data,
                )
    except (ProfileError, NoKnee) as e:
        err.print(f"stagger profile: {e}")
        return None
    return report


def present(report: ProfileReport, args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.plot:
        plot(report, Path(args.plot))
    if args.result_file:
        if not report.model and not args.model:
            err.print("stagger profile: --result-file needs --model to name the model")
            return 2
        result = calibration_result(report, args.model, args.model_version)
        Path(args.result_file).write_text(result.model_dump_json(by_alias=True, exclude_none=True))
    if args.output == "json":
        out.print_json(json.dumps(report.to_json()))
    else:
        print_report(report, out)
    return 0


def calibration_result(r: ProfileReport, model: str | None, version: str) -> CalibrationResult:
    p50 = r.solo_ms.get("p50", r.level_ms or r.recommended_body_ms)
    return CalibrationResult(
        model=r.model or model or "",
        model_version=version or None,
        body_time_ms=r.recommended_body_ms,
        knee_ms=r.knee_ms,
        knee_ci_ms=list(r.knee_ci_ms) if r.knee_ci_ms else None,
        solo_p50_ms=p50,
        solo_p99_ms=r.solo_ms.get("p99", p50),
        effective_body_ms=r.effective_body_ms,
        solo_compute_ms=None if r.solo_compute_ms is None else round(r.solo_compute_ms, 3),
        cost_ms=r.recommended_cost_ms,
        exclusive_body=r.recommended_exclusive_body,
        sweep_pairs=len(r.sweep),
        warnings=[w[:WARNING_CHARS] for w in r.warnings()[:MAX_WARNINGS]],
    )


def one_at_a_time(solo_compute_ms: float, cost_ms: float | None) -> str:
    """How many frames a second fit the model's own time, one after another: on a GPU whose
    bodies take turns (time-slicing), past that they must overlap and answer later, even
    where the measured saturation takes more (docs/architecture.md, "The models' own time")."""
    fit = 1e3 / solo_compute_ms
    line = f"up to {fit:.1f} frames/s fit the model's own time, one after another"
    if cost_ms is not None and cost_ms < solo_compute_ms:
        line += (
            f"; the GPU sustains {1e3 / cost_ms:.1f}/s: time-sliced, streams past "
            f"{fit:.1f} frames/s answer later (their GpuSchedule's ModelTimeFits turns False; "
            "the operator's chargeModelTime admits only what fits)"
        )
    return line


def print_report(r: ProfileReport, out: Console) -> None:
    t = Table(title=f"Body time of {r.model or 'the recorded sweep'}", show_header=False)
    if r.solo_ms:
        t.add_row("solo latency", "  ".join(f"{k} {v:.2f} ms" for k, v in r.solo_ms.items()))
    if r.solo_compute_ms is not None:
        t.add_row("solo time in the model", f"{r.solo_compute_ms:.2f} ms (Triton's statistics)")
    if r.knee_ms is not None and r.knee_ci_ms and r.slope is not None:
        lo, hi = r.knee_ci_ms
        t.add_row("knee (body)", f"{r.knee_ms:.2f} ms  (95 % interval {lo:.2f} – {hi:.2f})")
        t.add_row("before the knee", f"{r.slope:+.2f} ms of latency per ms of offset")
        t.add_row("after the knee", f"{r.level_ms:.2f} ms")
    else:
        t.add_row("knee (body)", f"[yellow]none[/yellow]: {r.no_knee}")
        t.add_row("", "the body below comes from saturation throughput alone")
    for row in r.saturation:
        t.add_row(
            f"saturation, {row['clients']:.0f} clients",
            f"{row['throughput_per_s']:.1f} inferences/s",
        )
    if r.effective_body_ms is not None:
        servers = len(r.urls)
        t.add_row(
            "cost per frame",
            f"{r.effective_body_ms:.2f} ms (1 / max throughput, {servers} server"
            f"{'s' if servers > 1 else ''})",
        )
    if r.solo_compute_ms is not None:
        t.add_row("one at a time", one_at_a_time(r.solo_compute_ms, r.effective_body_ms))
    if f := r.full_load:
        p50 = r.solo_ms.get("p50")
        t.add_row(
            "at full load",
            f"{f['streams']:.0f} streams at {f['fps']:.1f} fps, starts {f['spacing_ms']:.1f} ms "
            f"apart: p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms"
            + (f" ({f['p99_ms'] / p50:.2f} x solo)" if p50 else "")
            + f", {f['missed']:.0f} of {f['frames']:.0f} frames missed",
        )
    t.add_row(
        "recommended bodyTimeMs", f"[bold]{r.recommended_body_ms:g}[/bold] (guard {r.guard:.0%})"
    )
    if r.recommended_cost_ms is not None:
        t.add_row("recommended costMs", f"[bold]{r.recommended_cost_ms:g}[/bold]")
        t.add_row(
            "recommended exclusiveBody",
            "[bold]true[/bold]: two at once gain nothing (on a stream: kept apart, as a lock)"
            if r.recommended_exclusive_body
            else "false: bodies overlap where the table cannot keep them apart",
        )
    else:
        t.add_row("recommended costMs", "none: no throughput measured, the body is charged in full")
    t.add_row("recommended latencyMs", f"[bold]{r.recommended_latency_ms:g}[/bold]")
    t.add_row("sweep", f"{len(r.sweep)} pairs over {len({p.offset_ms for p in r.sweep})} offsets")
    out.print(t)
    for line in r.warnings():
        out.print(f"[yellow]warning:[/yellow] {line}")
    out.print("In an InferenceStream (or apply a ModelProfile with --apply):")
    cost = f", costMs: {r.recommended_cost_ms:g}" if r.recommended_cost_ms is not None else ""
    out.print(
        f"  spec: {{bodyTimeMs: {r.recommended_body_ms:g}{cost}, "
        f"latencyMs: {r.recommended_latency_ms:g}}}",
        highlight=False,
        markup=False,
    )
    if r.recommended_cost_ms is not None and r.recommended_exclusive_body:
        # On a stream the label is its own word, a lock's: in a ModelProfile, a measurement.
        out.print(
            "  # add exclusiveBody: true only for a lock or a FIFO (kept exactly apart)",
            highlight=False,
            markup=False,
        )


def plot(r: ProfileReport, path: Path) -> None:
    try:
        import matplotlib  # noqa: PLC0415 (optional dependency)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as e:
        raise ProfileError("--plot needs matplotlib: pip install 'stagger[plot]'") from e
    panels = 2 if r.saturation else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    xs = [p.offset_ms for p in r.sweep]
    ax.scatter(xs, [p.latency1_ms for p in r.sweep], s=10, label="stream 1")
    ax.scatter(xs, [p.latency2_ms for p in r.sweep], s=10, label="stream 2")
    grid = sorted(set(xs))
    knee, level, slope = r.knee_ms, r.level_ms, r.slope
    if knee is not None and level is not None and slope is not None:
        ax.plot(grid, [level + slope * min(x - knee, 0) for x in grid], "k-", label="hinge fit")
        ax.axvline(knee, color="k", ls="--", label=f"knee {knee:.1f} ms")
    ax.set(xlabel="start offset (ms)", ylabel="latency (ms)", title="Two-stream offset sweep")
    ax.legend()
    if r.saturation:
        ax2 = axes[0][1]
        ax2.plot(
            [s["clients"] for s in r.saturation],
            [s["throughput_per_s"] for s in r.saturation],
            "o-",
        )
        ax2.set(xlabel="closed-loop clients", ylabel="inferences/s", title="Saturation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
