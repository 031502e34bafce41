"""How a plan is shown: JSON for machines, tables and ASCII timelines for people, a PNG."""

from __future__ import annotations

import math
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from stagger.core.placement import Plan, ShardPlacement
from stagger.core.placement.overlap import body_ticks
from stagger.core.simulate import Phasing, ShardStats, merge
from stagger.core.timebase import ticks_to_ms

SYMBOLS = string.ascii_uppercase + string.ascii_lowercase + string.digits


def _r(x: float, nd: int = 3) -> float:
    return round(x, nd)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The stable machine-readable plan (see docs/cli.md): shards, gpus, unplaced."""
    hz = plan.tick_hz
    return {
        "shards": [
            {
                "stream": s.stream,
                "namespace": s.namespace,
                "shard": s.shard,
                "shards": s.shards,
                "node": s.node,
                "gpu": s.gpu,
                "fps": _r(s.fps, 6),
                "periodMs": _r(ticks_to_ms(s.period_ticks, hz)),
                "offsetMs": _r(ticks_to_ms(s.offset_ticks, hz)),
                "bodyMs": _r(s.body_ms),
                "reservedMs": _r(ticks_to_ms(s.body_ticks, hz)),
            }
            for s in plan.shards
        ],
        "gpus": [
            {
                "node": g.node,
                "gpu": g.gpu,
                "utilization": _r(g.utilization, 4),
                "bodyOverlapMsPerSecond": _r(g.overlap_ms_per_s),
                **(
                    {"modelTimeShare": g.model_time_share} if g.model_time_share is not None else {}
                ),
                "memoryMiB": g.memory_mib,
            }
            for g in plan.gpus
        ],
        "unplaced": [
            {"stream": u.stream, "namespace": u.namespace, "reason": u.reason}
            for u in plan.unplaced
        ],
    }


def placement_table(plan: Plan) -> Table:
    hz = plan.tick_hz
    t = Table(title="Placement", title_justify="left", header_style="bold")
    for col in ("STREAM", "SHARD", "NODE", "GPU", "FPS", "PERIOD ms", "OFFSET ms", "BODY ms"):
        t.add_column(col, justify="left" if col in ("STREAM", "NODE") else "right")
    for s in plan.shards:
        t.add_row(
            f"{s.namespace}/{s.stream}",
            f"{s.shard + 1}/{s.shards}",
            s.node,
            str(s.gpu),
            f"{s.fps:g}",
            f"{ticks_to_ms(s.period_ticks, hz):.2f}",
            f"{ticks_to_ms(s.offset_ticks, hz):.2f}",
            f"{s.body_ms:g}",
        )
    return t


def gpu_table(plan: Plan) -> Table:
    """One row per GPU; MODEL TIME (the share of each second its models need one at a time)
    only where some GPU has it, that is where profiles measured their solo compute."""
    t = Table(title="GPUs", title_justify="left", header_style="bold")
    timed = any(g.model_time_share is not None for g in plan.gpus)
    for col in (
        "NODE",
        "GPU",
        "PRODUCT",
        "SHARING",
        "SHARDS",
        "UTIL",
        "OVERLAP ms/s",
        *(["MODEL TIME"] if timed else []),
        "MEMORY MiB",
    ):
        t.add_column(col, justify="left" if col in ("NODE", "PRODUCT", "SHARING") else "right")
    for g in plan.gpus:
        model_time = "-" if g.model_time_share is None else f"{g.model_time_share:.2f}"
        t.add_row(
            g.node,
            str(g.gpu),
            g.product,
            g.sharing_mode,
            str(g.shards),
            f"{g.utilization:.2f}",
            f"{g.overlap_ms_per_s:.1f}",
            *([model_time] if timed else []),
            f"{g.memory_mib}/{g.memory_total_mib}",
        )
    return t


def _by_gpu(plan: Plan) -> dict[tuple[str, int], list[ShardPlacement]]:
    out: dict[tuple[str, int], list[ShardPlacement]] = defaultdict(list)
    for s in plan.shards:
        out[(s.node, s.gpu)].append(s)
    return out


def timeline(plan: Plan, width: int = 72) -> Group:
    """Per GPU, one window of its longest slot period: a letter where a shard's whole
    calibrated body runs (not only its reserved slot), '!' where two run at once: what the
    GPU's ``overlap_ms_per_s`` adds up."""
    hz = plan.tick_hz
    parts: list[Any] = [
        Text(
            "Timelines (one letter per shard where its body runs, '!' = two at once, "
            "'.' = GPU free of bodies)",
            style="bold",
        )
    ]
    for (node, gpu), on_gpu in sorted(_by_gpu(plan).items()):
        shards = sorted(on_gpu, key=lambda s: (s.offset_ticks, s.stream, s.shard))
        window = max(s.period_ticks for s in shards)
        cells = ["."] * width
        for sym, s in zip(SYMBOLS, shards, strict=False):
            for n in range(-1, window // s.period_ticks + 1):  # -1: a body wrapping in
                start = s.offset_ticks + n * s.period_ticks
                end = start + body_ticks(s, hz)
                for c in range(width):
                    mid = (c + 0.5) * window / width
                    if start <= mid < end:
                        cells[c] = "!" if cells[c] not in (".", sym) else sym
        ms = ticks_to_ms(window, hz)
        parts.append(Text(f"{node} GPU {gpu}  0 ms {'-' * (width - 14)} {ms:.0f} ms"))
        parts.append(Text("  |" + "".join(cells) + "|"))
        legend = "  ".join(
            f"{sym}={s.namespace}/{s.stream}" + (f"#{s.shard + 1}" if s.shards > 1 else "")
            for sym, s in zip(SYMBOLS, shards, strict=False)
        )
        parts.append(Text("   " + legend, style="dim"))
    return Group(*parts)


def rounding_notes(plan: Plan) -> list[str]:
    """Shards whose slot period was rounded below their frame period: in transparent mode a
    free-running camera drifts through the slot and each frame waits up to one slot period."""
    hz = plan.tick_hz
    notes = []
    for s in plan.shards:
        if s.period_ticks < s.frame_period_ticks:
            p = ticks_to_ms(s.period_ticks, hz)
            f = ticks_to_ms(s.frame_period_ticks, hz)
            notes.append(
                f"{s.namespace}/{s.stream} shard {s.shard + 1}: slot every {p:.2f} ms for frames "
                f"every {f:.2f} ms (rounded into the GPU's harmonic family); in transparent mode "
                f"a frame waits up to {p:.1f} ms (mean {p / 2:.1f} ms); slot-clock apps do not wait"
            )
    return notes


def simulation_table(
    results: Mapping[Phasing, Mapping[tuple[str, str], ShardStats]],
    *,
    per_stream_limit: int = 30,
) -> Table:
    t = Table(
        title="Simulated (per stream: p50 / p99 ms, drops)",
        title_justify="left",
        header_style="bold",
    )
    t.add_column("STREAM")
    for ph in results:
        t.add_column(ph.value.upper(), justify="right")
    streams = sorted(next(iter(results.values())).keys()) if results else []

    def cell(st: ShardStats) -> str:
        p50, p99 = st.percentile(50), st.percentile(99)
        if math.isnan(p50):
            return f"— / — {100 * st.drop_rate:.1f}%"
        return f"{p50:.0f} / {p99:.0f}  {100 * st.drop_rate:.1f}%"

    if len(streams) <= per_stream_limit:
        for key in streams:
            t.add_row(f"{key[0]}/{key[1]}", *(cell(r[key]) for r in results.values()))
    t.add_row(
        Text("all streams", style="bold"),
        *(Text(cell(merge(list(r.values()))), style="bold") for r in results.values()),
    )
    return t


def print_plan(
    console: Console,
    plan: Plan,
    sims: Mapping[Phasing, Mapping[tuple[str, str], ShardStats]] | None,
) -> None:
    console.print(placement_table(plan))
    console.print(gpu_table(plan))
    console.print(timeline(plan))
    for note in rounding_notes(plan):
        console.print(f"[yellow]note:[/] {note}")
    if sims:
        console.print(simulation_table(sims))


def plot(plan: Plan, path: str) -> None:
    """Per-GPU timeline over each GPU's longest slot period, as a PNG."""
    # matplotlib loads only when a plot is asked for: it is the slowest import by far.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    hz = plan.tick_hz
    gpus = sorted(_by_gpu(plan).items())
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.55 * max(1, len(gpus))))
    cmap = plt.get_cmap("tab20")
    colours: dict[tuple[str, str], Any] = {}
    horizon = 0.0
    for row, (_, shards) in enumerate(gpus):
        window = max(s.period_ticks for s in shards)
        horizon = max(horizon, ticks_to_ms(window, hz))
        for s in shards:
            colour = colours.setdefault((s.namespace, s.stream), cmap(len(colours) % 20))
            bars = [
                (
                    ticks_to_ms(s.offset_ticks + n * s.period_ticks, hz),
                    ticks_to_ms(s.body_ticks, hz),
                )
                for n in range(window // s.period_ticks + 1)
                if s.offset_ticks + n * s.period_ticks < window
            ]
            ax.broken_barh(
                bars, (row - 0.35, 0.7), facecolors=colour, edgecolor="black", linewidth=0.4
            )
            if ticks_to_ms(s.body_ticks, hz) / max(horizon, 1e-9) > 0.035:  # only where it fits
                ax.text(
                    ticks_to_ms(s.offset_ticks, hz) + ticks_to_ms(s.body_ticks, hz) / 2,
                    row,
                    s.stream if s.shards == 1 else f"{s.stream}#{s.shard + 1}",
                    ha="center",
                    va="center",
                    fontsize=6,
                )
    ax.set_yticks(range(len(gpus)), [f"{n} GPU {g}" for (n, g), _ in gpus])
    ax.set_xlim(0, horizon)
    ax.invert_yaxis()
    ax.set_xlabel("time within the slot period (ms)")
    if len(colours) <= 30:
        handles = [
            Patch(facecolor=c, edgecolor="black", label=f"{ns}/{name}")
            for (ns, name), c in colours.items()
        ]
        ax.legend(
            handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=6, frameon=False
        )
    ax.set_title("Stagger plan: body of each shard on its GPU")
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def print_unplaced(console: Console, plan: Plan) -> None:
    for u in plan.unplaced:
        console.print(f"[red]unplaced[/] {u.namespace}/{u.stream}: {u.reason}")


def summary_line(plan: Plan, streams: Sequence[object]) -> str:
    placed = len({(s.namespace, s.stream) for s in plan.shards})
    return (
        f"{placed}/{len(streams)} streams placed as {len(plan.shards)} shards on "
        f"{len(plan.gpus)} GPUs; {len(plan.unplaced)} unplaced"
    )
