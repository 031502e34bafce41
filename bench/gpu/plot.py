"""p99 latency and drops against N, per configuration and sharing mode, from the tables
``bench.gpu.streams`` prints (its log, or its JSON).

    python -m bench.gpu.plot RUN.log|RUN.json ... --out docs/img/gpu-streams.png

Runs are given oldest first; where two measured the same mode, configuration and N, the
later one is drawn.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from bench.gpu.streams import CONFIGS
from bench.gpu.targets import setting

ROW = re.compile(
    r"^\| (?:[a-z-]+ \| )?(\d+) \| ([a-z-]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|"
)

Series = dict[str, dict[str, list[tuple[int, float, float]]]]


def read(path: Path) -> Series:
    """{sharing mode: {configuration: [(N, p99 ms, drop %)]}}."""
    series: Series = defaultdict(lambda: defaultdict(list))
    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        for gpu in doc["gpus"].values():
            # Older runs: one mode, named once for the run.
            mode = setting(gpu) if "mode" in gpu else doc.get("mode", "time-slicing")
            for n, configs in gpu.get("counts", {}).items():
                for config, s in configs.items():
                    if config in CONFIGS:
                        series[mode][config].append((int(n), s["p99Ms"], s["dropPercent"]))
        return series
    text = path.read_text()  # an older run's log: one mode, named in its first line
    mode = "mps" if "mode: mps" in text else "time-slicing"
    for line in text.splitlines():
        if m := ROW.match(line):
            n, config, _, p99, _, drops = m.groups()
            series[mode][config].append((int(n), float(p99), float(drops)))
    return series


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    import matplotlib  # noqa: PLC0415 (only for the picture)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    # Per mode, configuration and N, the last run given wins: pass runs oldest first.
    points: dict[str, dict[str, dict[int, tuple[int, float, float]]]] = {}
    for path in args.runs:
        for mode, by_config in read(path).items():
            for config, rows in by_config.items():
                for row in rows:
                    points.setdefault(mode, {}).setdefault(config, {})[row[0]] = row
    runs: Series = {
        mode: {config: list(by_n.values()) for config, by_n in configs.items()}
        for mode, configs in points.items()
    }
    fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 7), squeeze=False)
    palette = plt.get_cmap("tab10")  # one colour per configuration in every panel
    for col, (mode, by_config) in enumerate(sorted(runs.items(), reverse=True)):
        for index, config in enumerate(CONFIGS):
            rows = sorted(by_config.get(config, []))
            if not rows:
                continue
            ns = [x[0] for x in rows]
            style = {"marker": "o", "label": config, "color": palette(index)}
            axes[0][col].plot(ns, [x[1] for x in rows], **style)
            axes[1][col].plot(ns, [x[2] for x in rows], **style)
        axes[0][col].set_title(f"{mode}: p99 latency")
        axes[0][col].set_ylabel("p99 ms")
        axes[1][col].set_title(f"{mode}: frames dropped")
        axes[1][col].set_ylabel("drop %")
        axes[1][col].set_yscale("symlog", linthresh=1.0)
        for ax in (axes[0][col], axes[1][col]):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("streams on one GPU (10 fps each)")
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
