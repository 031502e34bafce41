"""Re-plan recorded GPU runs, offline: what today's product admits from each run's own
measurements, beside what random phases held on that GPU and what the loop lost at the N it
ran.

Each identical-workload result of ``bench.gpu.loop`` records the profile it applied
(``calibration``). Made a ModelProfile again, it is given to the planner with the run's
streams applied one at a time, as in the run: at the run's own cap (where today's planner
admits another N than the run's did, the table says so: the planner changed since), and as
today's product would, its cost derived again by today's ``stagger profile`` from the
recorded cost per frame and steadiness (a margin for an unsteady body or a stalling host,
:data:`stagger.core.calibration.UNSTEADY_SHARE`) at today's default caps. No GPU, no
measurement: the question is only which N each admits where random phases' largest 0-drop N
was measured. ``--throughput-cap`` adds a comparison, the recorded cost at another cap
everywhere; ``--spread-headroom`` lowers that cap by the body's spread (the profile's solo
p99 less its p50) per frame period, an experiment, not the product's rule. Time-sliced runs
whose profile recorded its solo compute are also planned with ``chargeModelTime: true``.

    python3 -m bench.gpu.replay bench/gpu/results/2026-12-0[3456]-loop-*.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.gpu.loop import apply_one_at_a_time, cluster_of, stream
from stagger.core.api import ModelProfile, SharingMode
from stagger.core.calibration import SweepPoint, recommended_cost_ms
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
    """The cost the run was charged."""
    todays_cost_ms: float | None
    """The cost today's ``stagger profile`` charges for the same measurement."""
    steady: bool
    """Today's ``stagger profile`` finds the measurement steady (no margin)."""
    spread_ms: float
    cap: float
    admitted: int
    replayed: int
    """What today's planner admits at the run's own cap and cost (``admitted`` unless the
    planner changed since the run)."""
    today: int
    """What today's product admits: today's cost at today's default cap."""
    random_n: int
    """Random phases' largest N measured with 0 drops (0: none held)."""
    random_open: bool
    """Random phases held at every N measured: their largest N may lie higher."""
    random_drops: dict[int, float]
    loop_drops: float | None
    loop_p99_over_solo: float | None = None
    alone_ms_per_period: float | None = None
    """The admitted N x the body's time in the model where no other body overlapped it (the
    loop's own frames, p50), over one frame period: past about 96 % of the period the
    time-sliced loop's p99 went from 1.1-1.25 x solo to 2.4-2.9 x (docs/benchmarks.md)."""
    model_time_share: float | None = None
    """What the admitted N's GpuSchedule says (``modelTimeShare``): N x the profile's solo
    compute x fps; None under MPS or where the profile did not record its solo compute."""
    other_cap: float | None = None
    at_other_cap: int | None = None
    """``--throughput-cap``: the recorded cost at that cap."""
    charging_model_time: int | None = None
    """What today's product admits with ``chargeModelTime: true`` (None under MPS, or where
    the profile did not record its solo compute)."""


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
                    {"soloComputeMs": calibration["soloComputeMs"]}
                    if calibration.get("soloComputeMs")
                    else {}
                ),
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
    cap: float | None,
    charge_model_time: bool = False,
) -> int:
    """How many of ``servers`` identical streams the planner admits, one at a time, at
    throughput cap ``cap`` (None: today's default for the mode), charging their models'
    own time where ``charge_model_time``."""
    candidates = [stream(f"cam-{i}", body, fps, MEMORY_MIB) for i in range(servers)]
    cluster = cluster_of(product, mode, GPU_MEMORY_MIB)
    default = PlannerSettings(charge_model_time=charge_model_time)
    settings = (
        default if cap is None else replace(default, throughput_cap=cap, mps_throughput_cap=cap)
    )
    _, applied, _ = apply_one_at_a_time(candidates, cluster, [profile], settings, servers)
    return len(applied)


def recorded_report(calibration: dict[str, Any], servers: int) -> ProfileReport:
    """The ``stagger profile`` report a run's profile came from, as far as it recorded it
    (solo latency, knee, raw sweep, saturation over every server): today's rules judge it, so
    a profile recorded before a rule existed (the stall check came after runs 59 and 60) is
    judged by it."""
    p50, p99 = calibration.get("soloP50Ms"), calibration.get("soloP99Ms")
    return ProfileReport(
        model="replay",
        urls=["recorded"] * servers,
        solo_ms={k: float(v) for k, v in (("p50", p50), ("p99", p99)) if v is not None},
        sweep=[SweepPoint(*map(float, row)) for row in calibration.get("sweep") or []],
        knee_ms=calibration.get("kneeMs"),
        knee_ci_ms=None,
        slope=None,
        level_ms=None,
    )


def todays_calibration(calibration: dict[str, Any], steady: bool) -> dict[str, Any]:
    """The run's profile as today's ``stagger profile`` would write it: the cost per frame
    it recorded, with a margin where today's rules find the measurement unsteady."""
    cost = calibration.get("costMs")
    if cost is None:
        return calibration
    per_frame = float(calibration.get("costPerFrameMs") or cost)
    return {
        **calibration,
        "costMs": recommended_cost_ms(per_frame, float(calibration["bodyTimeMs"]), steady=steady),
    }


def spread_cap(calibration: dict[str, Any], fps: float, cap: float) -> float:
    """``--spread-headroom``: ``cap``, lowered so that a period keeps the body's spread free."""
    spread_s = (float(calibration["soloP99Ms"]) - float(calibration["soloP50Ms"])) / 1e3
    return max(0.01, min(cap, 1.0 - spread_s * fps))


def replay(
    path: Path, other_cap: float | None = None, *, spread_headroom: bool = False
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
        steady = recorded_report(calibration, servers).steady
        today = todays_calibration(calibration, steady)
        profile = recorded_profile(calibration, body, product, str(mode))
        setting: dict[str, Any] = {
            "body": body,
            "mode": mode,
            "product": product,
            "fps": fps,
            "servers": servers,
        }
        other: dict[str, Any] = {}
        if other_cap is not None:
            cap = spread_cap(calibration, fps, other_cap) if spread_headroom else other_cap
            other = {
                "other_cap": round(cap, 3),
                "at_other_cap": admitted_at(profile, cap=cap, **setting),
            }
        todays = recorded_profile(today, body, product, str(mode))
        if mode is not SharingMode.MPS and calibration.get("soloComputeMs"):
            other["charging_model_time"] = admitted_at(
                todays, cap=None, charge_model_time=True, **setting
            )
        drops = {int(n): float(s["dropPercent"]) for n, s in r["random"].items()}
        held = [n for n, d in drops.items() if d == 0]
        yield Replayed(
            run=path.name,
            mode=str(mode),
            product=product,
            cost_ms=calibration.get("costMs"),
            todays_cost_ms=today.get("costMs"),
            steady=steady,
            spread_ms=round(calibration["soloP99Ms"] - calibration["soloP50Ms"], 2),
            cap=own_cap,
            admitted=int(r["admitted"]),
            replayed=admitted_at(profile, cap=own_cap, **setting),
            today=admitted_at(todays, cap=None, **setting),
            random_n=max(held, default=0),
            random_open=bool(held) and max(held) == max(drops),
            random_drops=dict(sorted(drops.items())),
            loop_drops=(r.get("loop") or {}).get("dropPercent"),
            loop_p99_over_solo=p99_over_solo(r),
            alone_ms_per_period=alone_per_period(r, fps),
            model_time_share=planned_model_time(calibration, mode, int(r["admitted"]), fps),
            **other,
        )


def planned_model_time(
    calibration: dict[str, Any], mode: SharingMode, admitted: int, fps: float
) -> float | None:
    """The admitted streams' ``modelTimeShare`` as the operator computes it from their
    profile (:func:`stagger.core.placement.overlap.model_time_share`)."""
    solo_compute = calibration.get("soloComputeMs")
    if mode is SharingMode.MPS or not solo_compute or not admitted:
        return None
    return round(admitted * float(solo_compute) * fps / 1e3, 4)


def p99_over_solo(result: dict[str, Any]) -> float | None:
    """The loop's p99 over the solo p50 that the run measured."""
    p99 = (result.get("loop") or {}).get("p99Ms")
    solo = (result.get("solo") or {}).get("p50Ms")
    return round(p99 / solo, 2) if p99 and solo else None


def alone_per_period(result: dict[str, Any], fps: float) -> float | None:
    """The admitted streams' bodies, each as long as the loop's frames took in the model
    where no other body overlapped them (p50), as a share of one frame period: None where
    the run recorded no such frame."""
    alone = (((result.get("loop") or {}).get("phases") or {}).get("modelMsAlone")) or None
    if not alone:
        return None
    return round(int(result["admitted"]) * float(alone[0]) * fps / 1e3, 3)


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


def render(rows: list[Replayed], label: str | None = None) -> str:
    """The table, and how often each way admits at least random phases' N; ``label`` names
    the ``--throughput-cap`` comparison (None: there is none)."""
    today = PlannerSettings()
    caps = f"{today.throughput_cap:g} / {today.mps_throughput_cap:g} under MPS"
    head = [
        "run",
        "mode",
        "cost ms, charged then",
        "cost ms, charged today",
        "measurement steady",
        "admitted at its cap",
        f"today's product (caps {caps})",
        *([f"at {label}"] if label else []),
        "random's largest 0-drop N",
        "against it, its cap",
        "against it, today",
        *([f"against it, {label}"] if label else []),
        "with chargeModelTime, against random's N",
        "loop drops at the admitted N",
        "loop p99 / solo",
        "bodies alone, share of a period",
        "modelTimeShare (the profile's)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        changed = "" if r.replayed == r.admitted else f", **{r.replayed} today**"
        cells = [
            r.run,
            r.mode,
            str(r.cost_ms),
            str(r.todays_cost_ms),
            "yes" if r.steady else "no",
            f"{r.admitted} ({r.cap}){changed}",
            str(r.today),
            *([f"{r.at_other_cap} ({r.other_cap})"] if label else []),
            f"{r.random_n}{'+' if r.random_open else ''}",
            against_random(r.admitted, r),
            against_random(r.today, r),
            *([against_random(r.at_other_cap or 0, r)] if label else []),
            (
                "-"
                if r.charging_model_time is None
                else f"{r.charging_model_time}: {against_random(r.charging_model_time, r)}"
            ),
            f"{r.loop_drops} %",
            str(r.loop_p99_over_solo),
            str(r.alone_ms_per_period),
            str(r.model_time_share),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    judged = [r for r in rows if r.random_n]
    summary = (
        f"{len(judged)} runs where random phases held an N: at its own cap the planner admitted "
        f"at least random's N in {sum(r.admitted >= r.random_n for r in judged)}, more in "
        f"{sum(r.admitted > r.random_n for r in judged)}; today's product at least random's N "
        f"in {sum(r.today >= r.random_n for r in judged)}, more in "
        f"{sum(r.today > r.random_n for r in judged)}"
    )
    if label:
        summary += (
            f"; at {label} at least random's N in "
            f"{sum((r.at_other_cap or 0) >= r.random_n for r in judged)}, more in "
            f"{sum((r.at_other_cap or 0) > r.random_n for r in judged)}"
        )
    charged = [r for r in judged if r.charging_model_time is not None]
    if charged:
        summary += (
            f"; of {len(charged)} with a solo compute (time-sliced), chargeModelTime admits at "
            f"least random's N in "
            f"{sum((r.charging_model_time or 0) >= r.random_n for r in charged)}, where the "
            f"default does in {sum(r.today >= r.random_n for r in charged)}"
        )
    return "\n".join([*lines, "", summary + "."])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="bench.gpu.loop result files")
    p.add_argument(
        "--throughput-cap",
        type=float,
        help="a comparison: the recorded cost at this cap in every mode",
    )
    p.add_argument(
        "--spread-headroom",
        action="store_true",
        help="an experiment: the --throughput-cap lowered by each body's spread per frame period",
    )
    args = p.parse_args(argv)
    if args.throughput_cap is not None and not 0 < args.throughput_cap <= 1:
        p.error("--throughput-cap must be in (0, 1], as throughputCap is")
    if args.spread_headroom and args.throughput_cap is None:
        p.error("--spread-headroom lowers the --throughput-cap: give one")
    rows: list[Replayed] = []
    for path in args.results:
        try:
            rows += replay(path, args.throughput_cap, spread_headroom=args.spread_headroom)
        except (OSError, ValueError, KeyError) as e:  # JSONDecodeError is a ValueError
            p.error(f"{path}: not a bench.gpu.loop result ({type(e).__name__}: {e})")
    if not rows:
        p.error("none of the files holds an identical-stream bench.gpu.loop result")
    label = None
    if args.throughput_cap is not None:
        label = f"cap {args.throughput_cap}" + (" less the spread" if args.spread_headroom else "")
    print(render(rows, label))


if __name__ == "__main__":
    main()
