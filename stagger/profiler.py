"""Measure a model's body time against a running Triton (``stagger profile``).

1. Solo: sequential inferences, the latency distribution of one stream alone.
2. Offset sweep: two clients, the second starting ``offset`` after the first, over a
   coarse grid of offsets and then a fine one around the knee; latency of both against
   offset is a hinge whose knee is the body (:mod:`stagger.core.calibration`).
3. Saturation: k closed-loop clients back to back, spread over every server given;
   1 / maximum throughput is what one frame costs the GPU when streams share it. Given as
   many servers as streams will share the GPU (one per pod, as deployed), that is the
   stream's ``costMs``; where it is no cheaper than the body, the body is exclusive and
   no cost is recommended (docs/architecture.md, "Capacity").
4. Full load: one paced stream per server, together asking what that cost says the GPU
   sustains, each frame started on its stream's slot as a full GPU's table would start
   it: what the answers then take, beside the solo latency. A body that stays near solo
   alone and beside one other can still double at full load (an eager body time-sliced),
   and only this stage shows it.

The two sweep clients need two executions that can really overlap on the device: a model
with ``instance_group`` count ≥ 2, or two Triton endpoints (``--url`` twice, like two
pods). With one instance of one server the second request only queues; that is detected
and refused rather than reported as a body.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from stagger.core.calibration import (
    UNSTEADY_SHARE,
    KneeEstimate,
    NoKnee,
    SweepPoint,
    body_is_exclusive,
    knee_of_sweep,
    recommended_body_ms,
    recommended_cost_ms,
    throughput_growth,
)

Progress = Callable[[int], None]  # advance by n runs


class ProfileError(RuntimeError):
    """The profile cannot be taken; the message says why and what to do."""


def _message(e: Exception) -> str:
    """Triton's own words when the client carries them."""
    message = getattr(e, "message", None)
    return str(message() if callable(message) else e)


def _precise_wait(until: float) -> None:
    """Sleep to ~1 ms before ``until`` (perf_counter), then spin: starts land within µs.
    The spin yields the GIL on every turn (``sleep(0)``): the sweep's two clients wait in
    threads of one process, and a bare spin held the GIL for up to the switch interval
    (5 ms), so the other client's request went late or first; on a busy machine the sweep
    then found its knee at 4.5 ms instead of 20 (test_profile, in a clean clone's suite)."""
    while (left := until - time.perf_counter()) > 0.0015:
        time.sleep(left - 0.001)
    while time.perf_counter() < until:
        time.sleep(0)


def _input_array(spec: dict[str, Any], path: Path | None, dtype: Any) -> np.ndarray[Any, Any]:
    datatype = spec["datatype"]
    if path is None:
        if dtype is None or datatype == "BYTES":
            raise ValueError(f"{datatype} needs data: --input {spec['name']}=FILE")
        return np.zeros([1 if int(d) < 0 else int(d) for d in spec["shape"]], dtype=dtype)
    if path.suffix == ".npy":
        array: np.ndarray[Any, Any] = np.load(path, allow_pickle=False)
        return array
    raw = path.read_bytes()
    if datatype == "BYTES":
        return np.array([raw], dtype=np.object_)
    if datatype == "UINT8":
        return np.frombuffer(raw, dtype=np.uint8)
    raise ValueError(f"a {datatype} input takes a .npy file, not raw bytes ({path})")


def _client_library(url: str) -> tuple[Any, str]:
    """tritonclient's module for ``url``'s scheme (``http://``, the default, or ``grpc://``)
    and the host:port to give its client."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "grpc") or not parts.netloc:
        raise ProfileError(f"{url}: use http://HOST:PORT or grpc://HOST:PORT")
    try:
        if parts.scheme == "grpc":
            import tritonclient.grpc as client  # noqa: PLC0415 (optional dependency)
        else:
            import tritonclient.http as client  # noqa: PLC0415
    except ImportError as e:
        raise ProfileError(
            "stagger profile needs tritonclient: pip install 'stagger[profile]'"
        ) from e
    return client, parts.netloc


def wait_ready(
    urls: Sequence[str],
    model: str,
    version: str = "",
    timeout_s: float = 0.0,
    *,
    poll_s: float = 1.0,
    waiting: Callable[[int, int], None] | None = None,
) -> None:
    """Until every server says ``model`` is ready: servers started side by side (a
    calibration Job's copies of one Triton) load the model in any order.
    ``waiting(ready, total)`` hears of each poll that still waits. Past ``timeout_s`` the
    servers still not ready are named."""
    deadline = time.monotonic() + timeout_s
    every = list(dict.fromkeys(urls))
    pending = every
    while True:
        pending = [url for url in pending if not _model_ready(url, model, version)]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise ProfileError(
                f"{len(pending)} of {len(every)} servers did not have model {model!r} ready "
                f"within {timeout_s:g} s: {', '.join(pending)}"
            )
        if waiting:
            waiting(len(every) - len(pending), len(every))
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _model_ready(url: str, model: str, version: str) -> bool:
    lib, netloc = _client_library(url)
    try:
        client = lib.InferenceServerClient(netloc)
        try:
            return bool(client.is_model_ready(model, version))
        finally:
            client.close()
    except Exception:  # not up yet: refused, reset, an error answer
        return False


class Endpoint:
    """One Triton server and model, over HTTP (``http://``, the default) or gRPC
    (``grpc://``). Builds one request from the model's metadata and sends it."""

    def __init__(
        self, url: str, model: str, version: str = "", data: Mapping[str, Path] | None = None
    ) -> None:
        self.url, self.model, self.version = url, model, version
        self._lib, self._netloc = _client_library(url)
        self._local = threading.local()  # the HTTP client is not shareable across threads
        try:
            live = self.client.is_server_live()
        except Exception as e:
            raise ProfileError(f"cannot reach Triton at {url}: {e}") from e
        if not live:
            raise ProfileError(f"Triton at {url} is not live")
        try:
            metadata = self._json(self.client.get_model_metadata(model, version))
            config = self._json(self.client.get_model_config(model, version))
        except Exception as e:
            raise ProfileError(f"model {model!r} is not ready at {url}: {_message(e)}") from e
        self.config = config.get("config", config)
        self.inputs = self._inputs(metadata, data or {})

    @property
    def client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._lib.InferenceServerClient(self._netloc)
        return client

    def _json(self, answer: Any) -> dict[str, Any]:
        if isinstance(answer, dict):
            return answer
        from google.protobuf.json_format import MessageToDict  # noqa: PLC0415

        doc: dict[str, Any] = MessageToDict(answer, preserving_proto_field_name=True)
        return doc

    @property
    def instances(self) -> int:
        groups = self.config.get("instance_group") or [{"count": 1}]
        return sum(int(g.get("count", 1)) for g in groups)

    def _inputs(self, metadata: dict[str, Any], data: Mapping[str, Path]) -> list[Any]:
        """One request: each input from its file when given (``.npy``: an array; any other
        file: its bytes, e.g. a JPEG for a model that decodes it), else zeros of its shape
        (dynamic dimensions as 1)."""
        specs = {spec["name"]: spec for spec in metadata.get("inputs", [])}
        unknown = sorted(set(data) - set(specs))
        if unknown:
            raise ProfileError(
                f"model {self.model!r} has no input {', '.join(unknown)} "
                f"(its inputs: {', '.join(specs) or 'none'})"
            )
        inputs = []
        for name, spec in specs.items():
            datatype = spec["datatype"]
            try:
                array = _input_array(spec, data.get(name), self._lib.triton_to_np_dtype(datatype))
            except (OSError, ValueError) as e:
                raise ProfileError(f"input {name}: {e}") from e
            tensor = self._lib.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    def compute_totals(self) -> tuple[int, int] | None:
        """Triton's own count of this model's executions and the nanoseconds they spent in
        the model (compute input, infer and output), summed over its versions; None where
        the server does not say (statistics off, or an error)."""
        try:
            stats = self._json(self.client.get_inference_statistics(self.model, self.version))
        except Exception:
            return None
        return compute_totals(stats)

    def infer(self) -> float:
        """One inference; its latency in seconds."""
        start = time.perf_counter()
        try:
            self.client.infer(self.model, self.inputs, model_version=self.version)
        except Exception as e:
            raise ProfileError(f"model {self.model!r} failed at {self.url}: {_message(e)}") from e
        return time.perf_counter() - start

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()


COMPUTE_PARTS = ("compute_input", "compute_infer", "compute_output")


def compute_totals(stats: Mapping[str, Any]) -> tuple[int, int] | None:
    """(executions, nanoseconds in the model) from a statistics answer, HTTP's JSON or
    gRPC's message as a dict (whose 64-bit counts are strings)."""
    count = ns = 0
    found = False
    for model in stats.get("model_stats") or []:
        parts = model.get("inference_stats") or {}
        if "compute_infer" not in parts:
            continue
        found = True
        count += int((parts["compute_infer"] or {}).get("count") or 0)
        ns += sum(int((parts.get(p) or {}).get("ns") or 0) for p in COMPUTE_PARTS)
    return (count, ns) if found else None


STATISTICS_SETTLE_S = 1.0
"""How long to wait for Triton's statistics to count the executions already answered."""


def settled_totals(endpoint: Endpoint, at_least: int) -> tuple[int, int] | None:
    """``endpoint``'s :meth:`Endpoint.compute_totals` once they count ``at_least``
    executions (or after ``STATISTICS_SETTLE_S``). Triton records an execution's statistics
    after its response is sent: on a 2-core host with both cores busy, 7 of 30 reads right
    after an answer did not count it yet, so a reading taken at once can give one request
    the time of another."""
    deadline = time.monotonic() + STATISTICS_SETTLE_S
    while True:
        totals = endpoint.compute_totals()
        if totals is None or totals[0] >= at_least or time.monotonic() >= deadline:
            return totals
        time.sleep(0.005)


def solo_compute_ms(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The model's own time per execution between two :func:`compute_totals` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0]) / 1e6


@dataclass
class ProfileReport:
    model: str
    urls: list[str]
    solo_ms: dict[str, float]
    sweep: list[SweepPoint]
    knee_ms: float | None  # None: the sweep has no knee (``no_knee`` says why)
    knee_ci_ms: tuple[float, float] | None
    slope: float | None
    level_ms: float | None
    saturation: list[dict[str, float]] = field(default_factory=list)
    effective_body_ms: float | None = None
    """1 / the largest throughput measured, over every server given."""
    recommended_body_ms: float = 0.0
    recommended_cost_ms: float | None = None
    """What to put in ``costMs`` (None: nothing measured it; the body is charged in full)."""
    recommended_exclusive_body: bool = True
    """What to put in ``exclusiveBody``: running two at once gains nothing, so no other
    body may overlap this one (:func:`stagger.core.calibration.body_is_exclusive`)."""
    guard: float = 0.15
    solo_compute_ms: float | None = None
    """The model's own time per solo request as Triton counts it (compute input, infer and
    output; no queueing, no transfer): the body alone, with nothing beside it. None where
    the server keeps no statistics."""
    no_knee: str | None = None
    """Why the sweep gave no knee, when the body comes from saturation alone: two
    inferences that barely slow each other (MPS) have no knee, but the GPU's throughput
    still says what one costs."""
    full_load: dict[str, float] | None = None
    """The streams paced at the recommended cost (:func:`full_load`): ``streams``,
    ``fps``, ``spacing_ms``, ``frames``, ``missed``, ``p50_ms``, ``p99_ms``. None where the
    stage did not run."""

    def warnings(self) -> list[str]:
        """What a user must know before trusting the figures."""
        out = []
        p50, p99 = self.solo_ms.get("p50"), self.solo_ms.get("p99")
        margin = (
            f"; costMs is charged 1 / {UNSTEADY_SHARE:g} of the measured cost for it"
            if self.recommended_cost_ms is not None
            else ""
        )
        if p50 and p99 and self.unsteady_solo:
            out.append(
                f"solo latency is unsteady (p99 {p99:.1f} ms is {p99 / p50:.2f} x p50): a slot "
                "cannot hold a body that varies this much, so streams may still overlap; "
                "expect less than a steady body gets (a CUDA graph steadies an eager body)" + margin
            )
        if stalled := self.stalled_pairs():
            worst = max(max(x.latency1_ms, x.latency2_ms) for x in stalled)
            out.append(
                f"the host or the GPU stalls: in {len(stalled)} of the pairs swept past "
                f"{self._apart_from_ms():.1f} ms, where the two requests no longer slow each "
                f"other, both took over {STALL:g} x the solo p50 at once (up to {worst:.1f} ms); "
                "in a stall every stream on the GPU waits, whatever its slot, so expect lost "
                "frames beside any plan; look for what else runs on the node before trusting "
                "these figures" + ("" if self.unsteady_solo else margin)
            )
        if self.knee_past_solo:
            out.append(
                f"the knee ({self.knee_ms:.1f} ms) lies past the solo latency (p50 {p50:.1f} ms), "
                "which no body outlasts: the sweep misread it (the two servers' latencies "
                "settled apart, or the host was busy), so the body is overstated and costs "
                "capacity; re-run the profile"
            )
        if self.full_load_too_slow:
            f = self.full_load or {}
            share = self.full_load_model_time_share
            past_second = (  # within WARNING_CHARS, which a Job's termination message keeps
                f"; the model alone needs {share:.2f} of each second at this load "
                "(if time-sliced, chargeModelTime admits only what fits)"
                if share is not None and share > 1
                else ""
            )
            out.append(
                f"{FULL_LOAD_WARNING} ({f['streams']:.0f} streams at {f['fps']:.1f} fps, "
                f"starts {f['spacing_ms']:.1f} ms apart, as a full GPU's table starts them) "
                f"answers took {f['p99_ms']:.1f} ms at p99, {f['p99_ms'] / (p50 or 1):.2f} x "
                f"the solo p50, and {f['missed']:.0f} of {f['frames']:.0f} frames were missed: "
                "streams packed this tightly answer this slowly whatever their slots; an eager "
                f"model gains from a CUDA graph{past_second}; a lower throughputCap admits fewer"
            )
        if self.effective_body_ms is not None and len(self.urls) == 1:
            out.append(
                "saturation used one server: costMs is what one server's instances sustain; "
                "pass --url once per stream that will share the GPU to measure it as deployed"
            )
        return out

    @property
    def unsteady_solo(self) -> bool:
        """The solo p99 is over ``UNSTEADY`` x the p50."""
        p50, p99 = self.solo_ms.get("p50"), self.solo_ms.get("p99")
        return bool(p50 and p99 and p99 > UNSTEADY * p50)

    @property
    def steady(self) -> bool:
        """Neither the body nor the host varied more than a slot holds while measured (no
        unsteady solo latency, no stall in the sweep): its cost is charged as measured, an
        unsteady one's with a margin (:data:`stagger.core.calibration.UNSTEADY_SHARE`). A
        knee past the solo latency misreads the body, not the cost, so it does not count."""
        return not self.unsteady_solo and not self.stalled_pairs()

    def stalled_pairs(self) -> list[SweepPoint]:
        """Sweep pairs past the knee (past the solo p50 where there is none) whose two
        answers both took over ``STALL`` x the solo p50: there overlap slows neither, so
        both at once means the host or the GPU stalled."""
        p50 = self.solo_ms.get("p50")
        if not p50:
            return []
        return [
            x
            for x in self.sweep
            if x.offset_ms >= self._apart_from_ms()
            and min(x.latency1_ms, x.latency2_ms) > STALL * p50
        ]

    def _apart_from_ms(self) -> float:
        """The offset from which two swept requests no longer slow each other: the knee,
        else the solo p50."""
        return self.knee_ms if self.knee_ms is not None else self.solo_ms.get("p50", 0.0)

    @property
    def full_load_too_slow(self) -> bool:
        """At full load a frame was missed, or the p99 passed ``FULL_LOAD_SLOWDOWN`` x the
        solo p50: what slots cannot mend, so the profile says so."""
        f, p50 = self.full_load, self.solo_ms.get("p50")
        if not f or not p50:
            return False
        return f["missed"] > 0 or f["p99_ms"] > FULL_LOAD_SLOWDOWN * p50

    @property
    def full_load_model_time_share(self) -> float | None:
        """How much of each second the model's own time alone (``solo_compute_ms``) fills
        at the full-load stage's frames a second: past 1, time-sliced bodies cannot take
        turns without running into each other, which on H100s went with a loop answering
        at 2.3-2.9 x solo (runs 81, 85, 86; 4.77 x in run 115, whose stage read 1.11)."""
        f = self.full_load
        if not f or self.solo_compute_ms is None:
            return None
        return self.solo_compute_ms * f["streams"] * f["fps"] / 1e3

    @property
    def knee_past_solo(self) -> bool:
        """The knee lies past the solo p50, which no body outlasts: the sweep misread it,
        and the report asks for a re-run."""
        p50 = self.solo_ms.get("p50")
        return self.knee_ms is not None and p50 is not None and self.knee_ms > p50

    @property
    def recommended_latency_ms(self) -> float:
        """What to put in ``latencyMs``: the solo p50, raised to the recommended body when
        the guard made the body the larger (a manifest may not have a body above it); rounded
        up to 0.1 ms, as the body is."""
        return (
            math.ceil(max(self.solo_ms.get("p50", 0.0), self.recommended_body_ms) * 10 - 1e-9) / 10
        )

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["recommended_latency_ms"] = self.recommended_latency_ms
        doc["warnings"] = self.warnings()
        doc["knee_ci_ms"] = list(self.knee_ci_ms) if self.knee_ci_ms else None
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProfileReport:
        """The report :meth:`to_json` wrote (``stagger profile -o json``, a calibration
        Job's output); what it derives (warnings, the latency) is derived again."""
        fields = {k: v for k, v in doc.items() if k not in ("recommended_latency_ms", "warnings")}
        ci = fields.get("knee_ci_ms")
        return cls(
            **{
                **fields,
                "sweep": [SweepPoint(**point) for point in fields.get("sweep") or []],
                "knee_ci_ms": (float(ci[0]), float(ci[1])) if ci else None,
            }
        )


SWEEP_SPAN = 1.5
"""The offset sweep reaches this many times the solo p50 by default (a body is part of the
solo latency, so its knee lies within; ``--max-offset-ms`` for one that does not)."""

FULL_LOAD_WARNING = "at the load its cost admits"
"""How the full-load warning begins (bench.gpu.targets reads it as the profile saying so)."""

FULL_LOAD_SLOWDOWN = 2.0
"""A p99 at full load past this many times the solo p50 is warned of: issue 20's bar for
what the admitted streams get. Time-sliced on an H100 the loop's streams answered at
1.2 x solo with a CUDA-graph body and 2.25-2.33 x with the same model eager, whose solo
latency and two-stream sweep looked alike (runs 79, 83, 111; docs/calibration.md)."""

UNSTEADY = 1.3
"""Solo p99 above this many times p50: the body is too unsteady for a slot to contain."""

STALL = 2.0
"""Both answers of a pair swept past the knee over this many times the solo p50: a stall of
the host or the GPU. In the 73 other profiles bench/gpu recorded (H200s, a fresh H100) no
pair did; on an H100 whose host stalled every few seconds, 2 and 3 did (runs 59 and 60),
where the 30 solo requests, half a second back to back, missed the stalls in one."""


def solo(
    endpoint: Endpoint,
    runs: int,
    progress: Progress | None = None,
    totals: tuple[int, int] | None = None,
) -> tuple[list[float], list[float]]:
    """``runs`` requests one at a time: each one's latency (ms) and, from Triton's totals
    (``totals``: as they stand before the first), the model's own time for each (ms),
    read once the totals count it. Per request, so that one execution a busy host stalls
    moves the median, not the whole figure: a mean over 10 read 38.9 ms where the median
    was 29 ms, with both cores of a 2-core host busy."""
    latencies: list[float] = []
    computes: list[float] = []
    for _ in range(runs):
        latencies.append(endpoint.infer() * 1e3)
        if totals is not None:
            after = settled_totals(endpoint, totals[0] + 1)
            compute = solo_compute_ms(totals, after)
            if compute is not None:
                computes.append(compute)
            totals = after
        if progress:
            progress(1)
    return latencies, computes


def distribution(latencies_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(latencies_ms)
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
    }


def sweep(
    first: Endpoint,
    second: Endpoint,
    offsets_ms: Sequence[float],
    *,
    runs: int,
    gap_s: float,
    progress: Progress | None = None,
) -> list[SweepPoint]:
    """For each offset, ``runs`` pairs: stream 1 starts at t0, stream 2 at t0 + offset.
    The offsets take turns, forward then backward, round after round: run in offset
    order, a drift over the sweep's seconds (clocks settling, a warming server) would
    read as a slope in the offset."""
    points: list[SweepPoint] = []
    start = threading.Barrier(3)
    done = threading.Barrier(3)
    plan: dict[str, float] = {}
    results: dict[int, float] = {}
    errors: list[BaseException] = []

    def worker(index: int, endpoint: Endpoint) -> None:
        while True:
            start.wait()
            if "stop" in plan:
                return
            _precise_wait(plan["t0"] + (plan["offset"] if index else 0.0))
            try:
                results[index] = endpoint.infer()
            except BaseException as e:  # reported by the main thread
                errors.append(e)
            done.wait()

    threads = [
        threading.Thread(target=worker, args=(i, e), daemon=True)
        for i, e in enumerate((first, second))
    ]
    for t in threads:
        t.start()
    try:
        for round_ in range(runs):
            for offset in offsets_ms if round_ % 2 == 0 else offsets_ms[::-1]:
                plan.update(t0=time.perf_counter() + 0.005, offset=offset / 1e3)
                start.wait()
                done.wait()
                if errors:
                    raise ProfileError(str(errors[0])) from errors[0]
                points.append(SweepPoint(offset, results[0] * 1e3, results[1] * 1e3))
                time.sleep(gap_s)  # let both executions go idle between runs
                if progress:
                    progress(1)
    finally:
        plan["stop"] = 1.0
        start.wait()
    return points


def saturation(
    make: Callable[[int], Endpoint],
    levels: Sequence[int],
    seconds: float,
    progress: Progress | None = None,
) -> list[dict[str, float]]:
    """Throughput with k closed-loop clients for each k in ``levels``; client i talks to
    ``make(i)``."""
    rows = []
    for k in levels:
        endpoints = [make(i) for i in range(k)]
        counts = [0] * k
        deadline = time.perf_counter() + seconds

        def loop(endpoint: Endpoint, i: int, counts: list[int], deadline: float) -> None:
            while time.perf_counter() < deadline:
                endpoint.infer()
                counts[i] += 1

        threads = [
            threading.Thread(target=loop, args=(e, i, counts, deadline))
            for i, e in enumerate(endpoints)
        ]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        rows.append({"clients": float(k), "throughput_per_s": sum(counts) / elapsed})
        for e in endpoints:
            e.close()
        if progress:
            progress(1)
    return rows


def full_load(
    make: Callable[[int], Endpoint],
    streams: int,
    cost_ms: float,
    seconds: float,
    progress: Progress | None = None,
) -> dict[str, float]:
    """``streams`` open-loop streams, stream i on ``make(i)``, that together ask
    1 / ``cost_ms`` frames a second: all the GPU sustains at that cost, the load the planner
    admits at its default cap of 1.0. Stream i starts ``i x cost_ms`` after the first and
    sends every ``streams x cost_ms``, so starts are ``cost_ms`` apart, as a full table's.
    A frame due while its stream still waits for the previous answer is missed, as a
    camera with one request in flight drops it. Missed frames and the answers' latency."""
    if cost_ms <= 0 or streams < 1:
        raise ProfileError(f"full load: {streams} streams {cost_ms:g} ms apart paces nothing")
    period = streams * cost_ms / 1e3
    endpoints = [make(i) for i in range(streams)]
    latencies: list[list[float]] = [[] for _ in range(streams)]
    missed = [0] * streams
    errors: list[Exception] = []
    clock: dict[str, float] = {}
    # The clock starts once every stream has its own connection: a client is per thread,
    # and a first request that also connects would read as a slow answer.
    ready = threading.Barrier(streams, action=lambda: clock.update(t0=time.perf_counter() + 0.02))

    def stream(i: int) -> None:
        endpoint = endpoints[i]
        try:
            endpoint.client.is_server_live()
        except Exception as e:  # reported by the caller's thread
            errors.append(e)
        ready.wait()
        first = clock["t0"] + i * cost_ms / 1e3
        # Frames due within the stage, counted once: a due time summed a period at a time
        # drifts, and one summed just under the stage's end sent an 11th frame of 10 (CI).
        frames = max(0, math.ceil((seconds - i * cost_ms / 1e3) / period - 1e-9))
        k = 0
        try:
            while k < frames and not errors:
                _precise_wait(first + k * period)
                latencies[i].append(endpoint.infer() * 1e3)
                k += 1
                while k < frames and first + k * period < time.perf_counter():
                    missed[i] += 1  # answered after its next frame
                    k += 1
        except Exception as e:
            errors.append(e)
        finally:
            endpoint.close()  # this thread's client

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in endpoints:
        e.close()
    if errors:
        raise ProfileError(_message(errors[0])) from errors[0]
    answered = [x for per in latencies for x in per]
    if progress:
        progress(1)
    if not answered:
        raise ProfileError(f"full load: no frame answered in {seconds:g} s")
    latency = distribution(answered)
    return {
        "streams": float(streams),
        "fps": 1.0 / period,
        "spacing_ms": cost_ms,
        "frames": float(len(answered) + sum(missed)),
        "missed": float(sum(missed)),
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
    }


def default_levels(servers: int) -> list[int]:
    """Closed-loop client counts: powers of two up to the servers given (at least 4), and
    the number of servers itself (one client per server, as deployed)."""
    top = max(servers, 4)
    levels = {1 << i for i in range(top.bit_length()) if 1 << i <= top} | {servers}
    return sorted(levels)


WARMUP = 8
"""Inferences per endpoint before anything is measured."""

FULL_LOAD_S = 5.0
"""How long the full-load stage paces its streams by default."""


KNEE_RESAMPLES = 200
"""Bootstrap resamples behind the knee's interval (each of up to two fits: seconds of CPU
on a sweep of a hundred runs, so the profile shows them as a stage)."""


def profile(
    urls: Sequence[str],
    model: str,
    *,
    version: str = "",
    solo_runs: int = 30,
    sweep_runs: int = 5,
    max_offset_ms: float | None = None,
    saturation_levels: Sequence[int] | None = None,
    saturation_s: float = 2.0,
    full_load_s: float = FULL_LOAD_S,
    guard: float = 0.15,
    progress: Callable[[str, int], Progress] | None = None,
    data: Mapping[str, Path] | None = None,
) -> ProfileReport:
    """The whole profile. ``progress(stage, total)`` returns an advance callback; ``data``
    names files for the model's inputs (see :meth:`Endpoint._inputs`). The sweep uses the
    first two servers (or the first one's two instances); saturation spreads its clients
    over all of them, at ``saturation_levels`` (default: 1, 2, 4, ... up to the number of
    servers, at least 4); full load paces one stream per server (at least two, on one
    server's instances) for ``full_load_s`` seconds (0: not run)."""
    if not urls:
        raise ProfileError("give at least one Triton URL")
    levels = list(saturation_levels or default_levels(len(urls)))
    first = Endpoint(urls[0], model, version, data)
    second = Endpoint(urls[1 if len(urls) > 1 else 0], model, version, data)
    if len(urls) == 1 and first.instances < 2:
        raise ProfileError(
            f"model {model!r} has {first.instances} instance at {urls[0]}: two inferences "
            "cannot overlap there, so a sweep would measure queueing, not the body. Give it "
            "instance_group count >= 2, or pass --url twice (two Triton servers)."
        )

    def stage(name: str, total: int) -> Progress | None:
        return progress(name, total) if progress else None

    # Warm up both executions: a freshly loaded model's first few inferences per instance
    # run slow (35-50 ms instead of 2 ms for a trivial Python-backend model on a CPU
    # machine, seen straight from Triton), and the first sweep runs would measure that.
    before_warmup = first.compute_totals()
    for _ in range(WARMUP):
        first.infer()
        second.infer()
    warmed = WARMUP * (2 if second.url == first.url else 1)
    solo_ms, computes = solo(
        first,
        solo_runs,
        stage("solo", solo_runs),
        None if before_warmup is None else settled_totals(first, before_warmup[0] + warmed),
    )
    solo_compute = float(np.median(computes)) if computes else None
    p50 = float(np.percentile(solo_ms, 50))
    top = max_offset_ms or SWEEP_SPAN * p50
    gap = max(2 * p50 / 1e3, 0.01)
    coarse_step = top / 10
    swept = [round(coarse_step * i, 3) for i in range(11)]
    points = sweep(
        first, second, swept, runs=sweep_runs, gap_s=gap, progress=stage("sweep", 11 * sweep_runs)
    )
    try:
        rough = knee_of_sweep(points, resamples=0).fit.knee_ms
        fine = [round(rough + coarse_step * (i / 4 - 1), 3) for i in range(9)]
        fine = [o for o in fine if 0 <= o <= top and o not in swept]
        points += sweep(
            first,
            second,
            fine,
            runs=sweep_runs,
            gap_s=gap,
            progress=stage("sweep near knee", len(fine) * sweep_runs),
        )
        knee: KneeEstimate | None = knee_of_sweep(
            points, resamples=KNEE_RESAMPLES, progress=stage("knee fit", 2 * KNEE_RESAMPLES)
        )
        no_knee = None
    except NoKnee as e:
        if not e.flat:  # too short or too sparse: saturation would understate the body
            e.sweep = points
            raise
        knee, no_knee = None, str(e)
    sat = saturation(
        lambda i: Endpoint(urls[i % len(urls)], model, version, data),
        levels,
        saturation_s,
        stage("saturation", len(levels)),
    )
    best = max(r["throughput_per_s"] for r in sat)
    effective = 1e3 / best if best > 0 else None
    first.close()
    second.close()
    if knee is None and effective is None:  # nothing measured the body: no number
        raise NoKnee(no_knee or "no knee")
    body = recommended_body_ms(knee.fit.knee_ms if knee else 0.0, effective, guard)
    report = ProfileReport(
        model=model,
        urls=list(urls),
        solo_ms=distribution(solo_ms),
        sweep=points,
        knee_ms=knee.fit.knee_ms if knee else None,
        knee_ci_ms=knee.ci_ms if knee else None,
        slope=knee.fit.slope if knee else None,
        level_ms=knee.fit.level_ms if knee else None,
        saturation=sat,
        effective_body_ms=effective,
        recommended_body_ms=body,
        recommended_exclusive_body=body_is_exclusive(
            knee.fit.knee_ms if knee else None,
            effective,
            knee_low_ms=knee.ci_ms[0] if knee else None,
            growth=throughput_growth(sat),
        ),
        guard=guard,
        solo_compute_ms=solo_compute,
        no_knee=no_knee,
    )
    report.recommended_cost_ms = recommended_cost_ms(effective, body, steady=report.steady)
    if full_load_s > 0:
        report.full_load = full_load(
            lambda i: Endpoint(urls[i % len(urls)], model, version, data),
            max(len(urls), 2),
            report.recommended_cost_ms or body,
            full_load_s,
            stage("full load", 1),
        )
    return report
