"""Re-plan recorded GPU runs under another throughput cap, offline: what the product's
planner admits from each run's own profile, beside what random phases held on that GPU and
what the loop lost at the N it ran.

Each identical-workload result of ``bench.gpu.loop`` records the profile it applied
(``calibration``). Made a ModelProfile again, it is given to the planner with the run's
streams applied one at a time, as in the run, at the run's own cap and at
``--throughput-cap`` (where today's planner admits another N than the run's did at its own
cap, the table says so: the planner changed since). No GPU, no measurement: the question is
only which N each cap admits where random phases' largest 0-drop N was measured.
``--spread-headroom`` is an experiment for comparison, not the product's rule: each run's
cap lowered to 1 less the body's spread (the profile's solo p99 less its p50) per frame
period. ``--where-steady`` is another: the other cap only for runs whose profile today's
``stagger profile`` would warn of nothing (no unsteady body, no stalls in the recorded
sweep, no knee past the solo latency), each run's own cap for the rest.

    python3 -m bench.gpu.replay bench/gpu/results/2026-12-0[3456]-loop-*.json --throughput-cap 1.0
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu.loop import apply_one_at_a_time, cluster_of, stream
from stagger.core.api import ModelProfile, SharingMode
from stagger.core.calibration import SweepPoint
from stagger.core.placement import PlannerSettings
from stagger.profiler import ProfileReport

MEMORY_MIB = 2048  # bench.gpu.loop's --memory-mib, which the results do not record
GPU_MEMORY_MIB = 81559  # an H100's; 2 GiB a stream never fills either GPU here


@dataclass(frozen=True)
class Replayed:
    """One recorded run, re-planned."""

    run: str
    mode: str
    product: str
    cost_ms: float | None
    spread_ms: float
    cap: float
    admitted: int
    replayed: int
    """What today's planner admits at the run's own cap (``admitted`` unless the planner
    changed since the run)."""
    other_cap: float
    at_other_cap: int
    random_n: int
    """Random phases' largest N measured with 0 drops (0: none held)."""
    random_open: bool
    """Random phases held at every N measured: their largest N may lie higher."""
    random_drops: dict[int, float]
    loop_drops: float | None
    warned: bool = False
    """Today's ``stagger profile`` would warn of the run's profile (:func:`profile_warnings`)."""


def recorded_profile(
    calibration: dict[str, Any], body: str, product: str, mode: str
) -> ModelProfile:
    """The ModelProfile a run applied, from the figures it recorded of it."""
    cost = calibration.get("costMs")
    return ModelProfile.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": f"replay-{body}"},
            "spec": {
                "model": body,
                "gpuProduct": product,
                "sharingMode": mode,
                "bodyTimeMs": calibration["bodyTimeMs"],
                **({"costMs": cost} if cost is not None else {}),
                **(
                    {"exclusiveBody": True}
                    if cost is not None and calibration.get("exclusiveBody")
                    else {}
                ),
                "latencyMs": calibration.get("latencyMs", calibration["bodyTimeMs"]),
                "source": "calibration",
            },
        }
    )


def admitted_at(
    profile: ModelProfile,
    *,
    body: str,
    mode: SharingMode,
    product: str,
    fps: float,
    servers: int,
    cap: float,
) -> int:
    """How many of ``servers`` identical streams the planner admits, one at a time."""
    candidates = [stream(f"cam-{i}", body, fps, MEMORY_MIB) for i in range(servers)]
    cluster = cluster_of(product, mode, GPU_MEMORY_MIB)
    settings = PlannerSettings(throughput_cap=cap, mps_throughput_cap=cap)
    _, applied, _ = apply_one_at_a_time(candidates, cluster, [profile], settings, servers)
    return len(applied)


def profile_warnings(calibration: dict[str, Any], servers: int) -> list[str]:
    """What today's ``stagger profile`` warns of, given a recorded profile's solo latency,
    knee and raw sweep: a profile recorded before a warning existed (the stall check came
    after runs 59 and 60) is judged by today's rules. Saturation ran over every server."""
    p50, p99 = calibration.get("soloP50Ms"), calibration.get("soloP99Ms")
    report = ProfileReport(
        model="replay",
        urls=["recorded"] * servers,
        solo_ms={k: float(v) for k, v in (("p50", p50), ("p99", p99)) if v is not None},
        sweep=[SweepPoint(*map(float, row)) for row in calibration.get("sweep") or []],
        knee_ms=calibration.get("kneeMs"),
        knee_ci_ms=None,
        slope=None,
        level_ms=None,
    )
    return report.warnings()


def spread_cap(calibration: dict[str, Any], fps: float, cap: float) -> float:
    """``--spread-headroom``: ``cap``, lowered so that a period keeps the body's spread free."""
    spread_s = (float(calibration["soloP99Ms"]) - float(calibration["soloP50Ms"])) / 1e3
    return max(0.01, min(cap, 1.0 - spread_s * fps))


def replay(
    path: Path, other_cap: float, *, spread_headroom: bool = False, where_steady: bool = False
) -> Iterator[Replayed]:
    """Each identical-workload result in ``path`` (a mixed fleet is not replayed)."""
    record = json.loads(path.read_text())
    results = record.get("results")
    if record.get("kind") != "loop" or not isinstance(results, dict):
        return
    mode = SharingMode(record["mode"])
    product, fps, servers = record["product"], float(record["fps"]), int(record["servers"])
    own_cap = float(record["settings"]["throughputCap"])
    for body, r in results.items():
        if not isinstance(r, dict) or r.get("body") != body or not r.get("calibration"):
            continue  # a mixed fleet, or a run cut before its profile
        calibration = r["calibration"]
        profile = recorded_profile(calibration, body, product, str(mode))
        warned = bool(profile_warnings(calibration, servers))
        cap = spread_cap(calibration, fps, other_cap) if spread_headroom else other_cap
        if where_steady and warned:
            cap = own_cap
        setting: dict[str, Any] = {
            "body": body,
            "mode": mode,
            "product": product,
            "fps": fps,
            "servers": servers,
        }
        drops = {int(n): float(s["dropPercent"]) for n, s in r["random"].items()}
        held = [n for n, d in drops.items() if d == 0]
        yield Replayed(
            run=path.name,
            mode=str(mode),
            product=product,
            cost_ms=calibration.get("costMs"),
            spread_ms=round(calibration["soloP99Ms"] - calibration["soloP50Ms"], 2),
            cap=own_cap,
            admitted=int(r["admitted"]),
            replayed=admitted_at(profile, cap=own_cap, **setting),
            other_cap=round(cap, 3),
            at_other_cap=admitted_at(profile, cap=cap, **setting),
            random_n=max(held, default=0),
            random_open=bool(held) and max(held) == max(drops),
            random_drops=dict(sorted(drops.items())),
            loop_drops=(r.get("loop") or {}).get("dropPercent"),
            warned=warned,
        )


def against_random(n: int, r: Replayed) -> str:
    """How an admitted N compares with random phases' largest 0-drop N."""
    if not r.random_n:
        return "random held none measured"
    if n < r.random_n:
        return f"**fewer** ({r.random_n}{'+' if r.random_open else ''})"
    if n == r.random_n:
        return "the same"
    lost = r.random_drops.get(n)
    return f"more (random lost {lost} % at {n})" if lost is not None else "more"


def render(rows: list[Replayed], label: str) -> str:
    lines = [
        f"| run | mode | cost ms | spread ms | profile warns | admitted at its cap | at {label} | "
        "random's "
        "largest 0-drop N | against it, its cap | against it, " + label + " | loop drops at "
        "the admitted N |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        changed = "" if r.replayed == r.admitted else f", **{r.replayed} today**"
        own = f"{r.admitted} ({r.cap}){changed}"
        lines.append(
            f"| {r.run} | {r.mode} | {r.cost_ms} | {r.spread_ms} | {'yes' if r.warned else 'no'} "
            f"| {own} | {r.at_other_cap} "
            f"({r.other_cap}) | {r.random_n}{'+' if r.random_open else ''} | "
            f"{against_random(r.admitted, r)} | {against_random(r.at_other_cap, r)} | "
            f"{r.loop_drops} % |"
        )
    judged = [r for r in rows if r.random_n]
    lines += [
        "",
        f"{len(judged)} runs where random phases held an N: at its own cap the planner admitted "
        f"at least random's N in {sum(r.admitted >= r.random_n for r in judged)}; at {label} "
        f"in {sum(r.at_other_cap >= r.random_n for r in judged)}, more than random's N in "
        f"{sum(r.at_other_cap > r.random_n for r in judged)}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="bench.gpu.loop result files")
    p.add_argument("--throughput-cap", type=float, required=True)
    p.add_argument(
        "--spread-headroom",
        action="store_true",
        help="an experiment: each run's cap lowered by its body's spread per frame period",
    )
    p.add_argument(
        "--where-steady",
        action="store_true",
        help="an experiment: the cap only where today's profile would warn of nothing, each "
        "run's own cap elsewhere",
    )
    args = p.parse_args(argv)
    if not 0 < args.throughput_cap <= 1:
        p.error("--throughput-cap must be in (0, 1], as throughputCap is")
    rows: list[Replayed] = []
    for path in args.results:
        try:
            rows += replay(
                path,
                args.throughput_cap,
                spread_headroom=args.spread_headroom,
                where_steady=args.where_steady,
            )
        except (OSError, ValueError, KeyError) as e:  # JSONDecodeError is a ValueError
            p.error(f"{path}: not a bench.gpu.loop result ({type(e).__name__}: {e})")
    if not rows:
        p.error("none of the files holds an identical-stream bench.gpu.loop result")
    label = (
        f"cap {args.throughput_cap}"
        + (" less the spread" if args.spread_headroom else "")
        + (" where the profile warns of nothing" if args.where_steady else "")
    )
    print(render(rows, label))


if __name__ == "__main__":
    main()
