"""Where a configuration's tail sits in time, from its cameras' logs (``bench.gpu.loop``
writes them as ``TAG-camI.json`` beside ``loop.json``):

    python3 -m bench.gpu.tails DIR [--window 5] [--series TAG]

Per configuration (a loop, random phases at N, the slots straight to Triton, ...):

- the pooled p50 and p99, as ``loop.json`` has them;
- the p99 of each consecutive ``--window`` seconds of capture: what a measurement that long
  (the profile's full-load stage runs 5 s) could have seen of the whole;
- the share of frames whose model time overlapped another stream's, per window: on a
  time-sliced GPU two bodies at once each run long, so a table that stays overlapped is in
  its slow state, one that leaves it has recovered;
- the frames slower than twice the solo p50 (the solo camera's log), grouped into events
  half a second apart (:func:`stagger_testkit.camerasim.stalls`): a few long events point
  at moments (a stall, a cascade), many short ones at the load.

``--series TAG`` prints that configuration window by window; ``--sharing`` how long the model
took by how many other bodies ran beside it (:func:`stagger_testkit.camerasim.sharing`), per
configuration: what a table that starts bodies together, or apart, costs each under MPS.
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from stagger_testkit.camerasim import phases, sharing, stalls

SLOW_OVER_SOLO = 2.0
"""A frame past this many times the solo p50 is slow (issue 20's bar for the p99)."""


def by_configuration(logs: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Camera logs by file name (``TAG-camI.json``) grouped by configuration tag; logs
    with no frames (closed-loop saturation counts only answers) are left out."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, doc in sorted(logs.items()):
        tag, sep, _ = Path(name).name.rpartition("-cam")
        if sep and doc.get("latencies_s") and doc.get("captured_at"):
            out[tag].append(doc)
    return dict(out)


def read(path: Path) -> dict[str, dict[str, Any]]:
    """Every camera log in a directory or a ``.tar.xz`` of one."""
    if path.is_dir():
        return {p.name: json.loads(p.read_text()) for p in path.glob("*-cam*.json")}
    with tarfile.open(path) as tar:
        return {
            Path(m.name).name: json.load(f)
            for m in tar.getmembers()
            if "-cam" in m.name and m.name.endswith(".json") and (f := tar.extractfile(m))
        }


def windows(logs: list[dict[str, Any]], window_s: float) -> list[dict[str, Any]]:
    """Consecutive ``window_s`` of capture from the first frame: frames, p99 (ms) and the
    share of frames whose model time overlapped another stream's (None without the
    model's timestamps)."""
    t0 = min(at for log in logs for at in log["captured_at"])
    latencies: dict[int, list[float]] = defaultdict(list)
    for log in logs:
        for at, lat in zip(log["captured_at"], log["latencies_s"], strict=False):
            latencies[int((at - t0) // window_s)].append(lat * 1e3)
    calls: dict[int, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for log in logs:
        for call in log.get("calls", []):
            if call and call[0] is not None:
                calls[int((call[0] - t0) // window_s)][log["name"]].append(call)
    out = []
    for k in range(max(latencies) + 1):
        values = latencies.get(k, [])
        model = phases(dict(calls[k])) if k in calls else {"frames": 0}
        out.append(
            {
                "fromS": round(k * window_s, 1),
                "frames": len(values),
                "p99Ms": round(float(np.percentile(values, 99)), 2) if values else None,
                "overlappedFrames": model.get("overlappedFrames"),
            }
        )
    return out


def tail(logs: list[dict[str, Any]], solo_p50_ms: float | None, window_s: float) -> dict[str, Any]:
    """One configuration's tail in time (see the module's docstring)."""
    all_ms = [x * 1e3 for log in logs for x in log["latencies_s"]]
    cut = windows(logs, window_s)
    full = [w for w in cut if w["frames"] >= max(1, 0.8 * len(all_ms) * window_s / _span(logs))]
    p99s = [w["p99Ms"] for w in full if w["p99Ms"] is not None]
    shares = [w["overlappedFrames"] for w in full if w["overlappedFrames"] is not None]
    out: dict[str, Any] = {
        "frames": len(all_ms),
        "p50Ms": round(float(np.percentile(all_ms, 50)), 2),
        "p99Ms": round(float(np.percentile(all_ms, 99)), 2),
        "windows": len(full),
        "windowP99Ms": [min(p99s), float(np.median(p99s)), max(p99s)] if p99s else None,
        "overlappedFrames": [min(shares), max(shares)] if shares else None,
    }
    if solo_p50_ms:
        slow_s = SLOW_OVER_SOLO * solo_p50_ms / 1e3
        events = stalls(logs, threshold_s=slow_s)
        out |= {
            "slowFrames": sum(1 for x in all_ms if x > slow_s * 1e3),
            "slowEvents": len(events),
            "largestEventCameras": max((len(e["cameras"]) for e in events), default=0),
            "windowsPastSlow": sum(1 for p in p99s if p > slow_s * 1e3),
        }
    return out


def _span(logs: list[dict[str, Any]]) -> float:
    """Seconds from the first capture to the last, at least one."""
    ats = [at for log in logs for at in log["captured_at"]]
    return max(1.0, float(max(ats) - min(ats)))


def report(logs: dict[str, dict[str, Any]], window_s: float) -> dict[str, dict[str, Any]]:
    """Every configuration's tail; slow is judged against the solo camera's p50 where the
    run has one (``solo-MODEL``)."""
    groups = by_configuration(logs)
    solo = {
        tag.removeprefix("solo-"): float(np.percentile(group[0]["latencies_s"], 50)) * 1e3
        for tag, group in groups.items()
        if tag.startswith("solo-")
    }
    out = {}
    for tag, group in groups.items():
        model = next((m for m in solo if tag.startswith(f"{m}-") or tag == f"solo-{m}"), None)
        out[tag] = tail(group, solo.get(model) if model else None, window_s)
    return out


def render(tails: dict[str, dict[str, Any]], window_s: float) -> str:
    lines = [
        f"| configuration | frames | p50 / p99 ms | p99 of each {window_s:g} s (min / median / "
        "max) | windows past 2 × solo | frames overlapped in the model, by window | frames "
        "past 2 × solo (events, most cameras in one) |",
        "|---|---|---|---|---|---|---|",
    ]
    for tag, t in tails.items():
        w = t["windowP99Ms"]
        o = t["overlappedFrames"]
        slow = (
            f"{t['slowFrames']} ({t['slowEvents']}, {t['largestEventCameras']})"
            if "slowFrames" in t
            else "no solo"
        )
        lines.append(
            f"| {tag} | {t['frames']} | {t['p50Ms']} / {t['p99Ms']} | "
            f"{' / '.join(f'{x:.1f}' for x in w) if w else '-'} | "
            f"{t.get('windowsPastSlow', '-')} of {t['windows']} | "
            f"{f'{o[0]:.0%}–{o[1]:.0%}' if o else '-'} | {slow} |"
        )
    return "\n".join(lines)


def render_sharing(logs: dict[str, dict[str, Any]]) -> str:
    """``--sharing``: per configuration, the model's time by the other bodies beside it."""
    lines = [
        "| configuration | other bodies beside (nearest ½) | frames | in the model p50 / p99 ms |",
        "|---|---|---|---|",
    ]
    for tag, group in by_configuration(logs).items():
        calls = {log["name"]: log.get("calls", []) for log in group}
        lines += [
            f"| {tag} | {g['others']:g} | {g['frames']} | {g['modelP50Ms']} / {g['modelP99Ms']} |"
            for g in sharing(calls)
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", type=Path, help="a loop's directory, or a .tar.xz of its camera logs")
    p.add_argument("--window", type=float, default=5.0, help="seconds per window (default 5)")
    p.add_argument("--series", metavar="TAG", help="also print this configuration by window")
    p.add_argument(
        "--sharing",
        action="store_true",
        help="also print the model's time by how many other bodies ran beside it",
    )
    args = p.parse_args()
    if not args.window > 0 or not math.isfinite(args.window):
        p.error("--window must be a positive number of seconds")
    logs = read(args.logs)
    if not logs:
        p.error(f"no camera logs (*-camN.json) in {args.logs}")
    print(render(report(logs, args.window), args.window))
    if args.sharing:
        print("\n" + render_sharing(logs))
    if args.series:
        group = by_configuration(logs).get(args.series)
        if group is None:
            p.error(
                f"no configuration {args.series!r}; there are {', '.join(by_configuration(logs))}"
            )
        print(f"\n| {args.series}: from s | frames | p99 ms | frames overlapped in the model |")
        print("|---|---|---|---|")
        for w in windows(group, args.window):
            print(f"| {w['fromS']} | {w['frames']} | {w['p99Ms']} | {w['overlappedFrames']} |")


if __name__ == "__main__":
    main()
