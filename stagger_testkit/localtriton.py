"""A real ``tritonserver`` on this machine, from the nvidia-pytriton wheel: for the sidecar's
tests, its overhead benchmark, the profiler's tests and the local example.

The wheel bundles the server and the Python backend; the backend's stub for this Python
version must sit beside the backend library, so the launcher assembles a backend folder
once (cached) and points the server at it. Everything binds to ``host`` (127.0.0.1 by
default): the server itself would bind every interface.

Python-backend models run in the stub, an embedded interpreter that ignores PYTHONPATH.
The launcher passes ``STAGGER_MODEL_PATH`` (this interpreter's site-packages first) and
model files put it on ``sys.path`` before importing numpy: Triton 2.51's Python backend
needs numpy < 2.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from stagger.client import CLOCK_PATH
from stagger.core.contract import SlotAssignment, effective_at_of
from stagger.core.phase import (
    PhaseEstimate,
    arrival_ticks,
    follow,
    follow_holds,
    follow_spacing,
)
from stagger.core.placement import ShardPlacement
from stagger.core.slots import Slot, release_windows, switch_tick

MODEL_PATH_ENV = "STAGGER_MODEL_PATH"


class TritonUnavailable(RuntimeError):
    """The bundled server is missing, or it did not become ready."""


class TritonExited(TritonUnavailable):
    """The server exited before it was ready (a port taken, a model that fails to load)."""

    def __init__(self, message: str, *, port_taken: bool) -> None:
        super().__init__(message)
        self.port_taken = port_taken


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the TCP socket listening on ``port`` (Linux /proc;
    elsewhere assumed)."""
    fds = Path(f"/proc/{pid}/fd")
    if not Path("/proc/net/tcp").exists():
        return True
    inodes = set()
    try:
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return False  # the process is gone
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()  # sl local remote state ... inode (the 10th)
                port_of = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == "0A" and port_of == port and fields[9] in inodes:  # 0A: LISTEN
                    return True
    return False


HOME_ENV = "STAGGER_TRITON_HOME"
"""A trimmed bundle instead of the wheel (``tritonserver/{bin,backends,stubs}`` and
``nvidia_pytriton.libs``, as ``triton-bundle`` lays it out): for lent GPU machines, where
nothing can be installed and the 55 MB wheel does not travel."""


def _bundle() -> Path | None:
    home = os.environ.get(HOME_ENV)
    return Path(home) if home else None


def _wheel_root() -> Path:
    bundle = _bundle()
    if bundle is not None:
        return bundle / "tritonserver"
    try:
        import pytriton  # noqa: PLC0415 (optional dependency)
    except ImportError as e:
        raise TritonUnavailable(
            "tritonserver comes from the nvidia-pytriton wheel: pip install 'stagger[triton]'"
        ) from e
    return Path(pytriton.__file__).parent / "tritonserver"


_ASSEMBLING = threading.Lock()


def backend_directory(cache: Path | None = None) -> Path:
    """The wheel's backends with this Python's stub put into ``backends/python``."""
    root = _wheel_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if _bundle() is not None:  # one stub, built for the Python the bundle was made for
        stub = root / "stubs" / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonUnavailable(f"no Python backend stub for Python {version} at {stub}")
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stagger"
    target = cache / f"triton-backends-{version}-{int(stub.stat().st_mtime)}"
    with _ASSEMBLING:  # servers started from several threads at once assemble it once
        if not (target / "python" / stub.name).exists():
            staging = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(root / "backends", staging)
            shutil.copy2(stub, staging / "python" / stub.name)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


def tritonserver_binary() -> Path:
    """The bundled ``tritonserver`` executable."""
    return _wheel_root() / "bin" / "tritonserver"


def server_env(model_path: list[str] | None = None) -> dict[str, str]:
    """What a bundled ``tritonserver`` needs in its environment beside this process's: its
    libraries, and where its Python models import from (default: this environment's)."""
    paths = model_path if model_path is not None else [sysconfig.get_paths()["purelib"]]
    return {"LD_LIBRARY_PATH": _library_path(), MODEL_PATH_ENV: os.pathsep.join(paths)}


def _library_path() -> str:
    libs = [
        str(sysconfig.get_config_var("LIBDIR")),  # libpython for the stub
        str(_bundle() or _wheel_root().parent.parent) + "/nvidia_pytriton.libs",
        os.environ.get("LD_LIBRARY_PATH", ""),
    ]
    return os.pathsep.join(p for p in libs if p)


@dataclass
class LocalTriton:
    """``with LocalTriton(repo) as triton:`` a ready server; ``triton.http`` is ``host:port``."""

    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    model_path: list[str] = field(default_factory=lambda: [sysconfig.get_paths()["purelib"]])
    env: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    ready_timeout_s: float = 60.0
    exit_timeout_s: int = 2  # how long in-flight requests may finish on stop
    cpus: set[int] | None = None  # pin the server (and its model processes) to these CPUs
    extra_args: list[str] = field(default_factory=list)  # more tritonserver flags
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port(self.host)
        self.grpc_port = self.grpc_port or free_port(self.host)
        self.metrics_port = self.metrics_port or free_port(self.host)

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory()}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            *self.extra_args,
        ]

    def as_container(self, name: str = "triton") -> dict[str, object]:
        """This server as a pod template declares it (command, arguments, HTTP port, env),
        for the operator's builders; :mod:`stagger_testkit.kubelet` runs what they write.
        The image's environment (:func:`server_env`) stays apart, as an image's does."""
        command = self.command()
        return {
            "name": name,
            "image": "tritonserver (the bundled binary here)",
            "command": command[:1],
            "args": command[1:],
            "ports": [{"containerPort": self.http_port}],
            "env": [{"name": k, "value": v} for k, v in sorted(self.env.items())],
        }

    def start(self, attempts: int = 3) -> LocalTriton:
        """Start and wait until ready. Ports are picked free but bound only by the server:
        when servers start side by side, one may lose a port to another and exit; it is
        started again on fresh ports."""
        for attempt in range(attempts):
            try:
                self._launch()
                self.wait_ready()
                return self
            except TritonExited as e:
                if attempt == attempts - 1 or not e.port_taken:
                    raise  # a model that fails to load fails again: say so now
                self.http_port, self.grpc_port, self.metrics_port = (
                    free_port(self.host) for _ in range(3)
                )
        return self

    def _launch(self) -> None:
        env = {**os.environ, **server_env(self.model_path), **self.env}
        log = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            cpus = self.cpus
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,  # noqa: PLW1509
            )
        finally:
            if self.log_file:
                log.close()  # type: ignore[union-attr]

    def ready(self) -> bool:
        """Ready, and the ports are this server's: when servers start side by side, the one
        that lost its HTTP port would otherwise pass for ready on the winner's answer, then
        exit."""
        try:
            url = f"http://{self.http}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as r:
                if int(r.status) != 200:
                    return False
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            return False  # not up yet, or another server's port (it will exit: retried)
        pid = self.process.pid if self.process is not None else None
        return pid is None or all(_listens(pid, p) for p in (self.http_port, self.grpc_port))

    def _log_tail(self, errors: int = 3) -> list[str]:
        """The server's own error lines (glog ``E...``, a model's traceback's summary among
        them) and its last line: why it exited, in its words."""
        if not self.log_file or not Path(self.log_file).exists():
            return []
        lines = [x.strip() for x in Path(self.log_file).read_text(errors="replace").splitlines()]
        lines = [x for x in lines if x]
        found = [x for x in lines if re.match(r"E\d{4} ", x)][-errors:]
        return [*found, *lines[-1:]]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = self._log_tail()
                raise TritonExited(
                    f"tritonserver exited with {self.process.returncode} before it was ready"
                    + (f"; the end of {self.log_file}: {' | '.join(tail)}" if tail else ""),
                    # without a log, a lost port is the likely cause: worth another try
                    port_taken=not tail or any("already in use" in x.lower() for x in tail),
                )
            if self.ready():
                return
            time.sleep(0.05)  # polling a child process's readiness; no event to wait on
        self.stop()
        raise TritonUnavailable(f"tritonserver not ready after {self.ready_timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class SidecarUnavailable(RuntimeError):
    """The sidecar process exited or did not become ready."""


@dataclass
class LocalSidecar:
    """``python -m stagger_sidecar gate`` for one stream in front of a ``LocalTriton``, as
    its pod runs it (its own process), on free local ports (or the ``host:port`` addresses
    given, first): for the local example and the GPU benchmark. ``start()`` returns once
    ``/readyz`` answers and the process holds its three ports; a sidecar that loses a port
    to another process (several started side by side) is started again on fresh ones."""

    stream: str
    slot_file: Path
    triton: LocalTriton
    namespace: str = "default"
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 60.0
    log_file: Path | None = None
    """Where the process's output goes (appended); unset: this process's own."""
    http: str = ""
    grpc: str = ""
    metrics: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self, attempts: int = 3) -> LocalSidecar:
        for _ in range(attempts):
            self.http, self.grpc, self.metrics = (
                address or f"{self.host}:{free_port(self.host)}"
                for address in (self.http, self.grpc, self.metrics)
            )
            env = {
                **os.environ,
                "STAGGER_STREAM": self.stream,
                "STAGGER_NAMESPACE": self.namespace,
                "STAGGER_SLOT_FILE": str(self.slot_file),
                "STAGGER_TRITON_HTTP": self.triton.http,
                "STAGGER_TRITON_GRPC": self.triton.grpc,
                "STAGGER_HTTP_ADDRESS": self.http,
                "STAGGER_GRPC_ADDRESS": self.grpc,
                "STAGGER_METRICS_ADDRESS": self.metrics,
                "STAGGER_LOG_LEVEL": "WARNING",
                **self.env,
            }
            command = [sys.executable, "-m", "stagger_sidecar", "gate"]
            if self.log_file is None:
                self.process = subprocess.Popen(command, env=env)
            else:
                with open(self.log_file, "ab") as log:  # the child keeps its own copy
                    self.process = subprocess.Popen(
                        command, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
            if self._wait_ready():
                return self
            self.http = self.grpc = self.metrics = ""  # lost one: fresh ports next time
        self.stop()
        raise SidecarUnavailable(f"the sidecar for {self.stream} did not become ready")

    def _wait_ready(self) -> bool:
        """True once ready; False when the process exited (a port taken, say). Another
        sidecar holding this one's HTTP port answers ``/readyz`` too, while this one is
        about to exit on its bind: ready counts only once the ports are this process's."""
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        ports = [int(a.rsplit(":", 1)[1]) for a in (self.http, self.grpc, self.metrics)]
        last = "no answer from /readyz"  # what the timeout reports
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://{self.http}/readyz", timeout=1) as r:
                    missing = [p for p in ports if not _listens(self.process.pid, p)]
                    if int(r.status) == 200 and not missing:
                        return True
                    last = f"/readyz answered {r.status}, ports {missing} not its process's"
            except urllib.error.HTTPError as e:  # 503 and the sidecar's reason
                last = f"/readyz answered {e.code}: {e.read().decode(errors='replace')[:200]}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                last = f"/readyz: {e}"
            time.sleep(0.05)  # polling a child process's readiness; no event to wait on
        self.stop()
        raise SidecarUnavailable(
            f"the sidecar for {self.stream} was not ready after {self.ready_timeout_s:.0f} s "
            f"({last})"
        )

    def stop(self) -> None:
        """SIGTERM (the sidecar drains), then kill if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalSidecar:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def stream_follow_spacing(
    shards: Iterable[ShardPlacement], model_time_share: float | None, tick_hz: int
) -> dict[Hashable, int]:
    """What the operator's follower (:func:`stagger.core.phase.follow_plan`) keeps each
    stream's followed slot from the next body on one GPU, by stream (ticks; none where it
    keeps none): :class:`LocalFollower`'s ``follow_spacing``."""
    placed = list(shards)
    return _by_stream(placed, follow_spacing(placed, model_time_share, tick_hz))


def stream_follow_holds(shards: Iterable[ShardPlacement], tick_hz: int) -> dict[Hashable, int]:
    """How long (ticks) the operator's follower takes each stream's gate to hold a request
    for its slot (:func:`stagger.core.phase.follow_holds`), by stream: :class:`LocalFollower`'s
    ``follow_holds``."""
    placed = list(shards)
    return _by_stream(placed, follow_holds(placed, tick_hz))


def _by_stream(
    placed: list[ShardPlacement], by_shard: Mapping[Hashable, int]
) -> dict[Hashable, int]:
    """A per-shard figure keyed by stream, as the contracts and sidecars here are."""
    return {p.stream: by_shard[p.key] for p in placed if p.key in by_shard}


class LocalFollower:
    """What the operator does for streams whose apps know nothing of Stagger, for local
    sidecars that share one "GPU" (examples/03, bench/gpu), at the operator's pace over its
    slot feed and with its rules (``stagger_operator``'s defaults, below): every 0.2 s (the
    sidecars send a phase over the feed within a poll tick of 0.2 s) read each sidecar's
    measured arrival phase (its clock document); while a stream that started less than
    ``SETTLE_S`` ago has none yet, wait for it; when re-timing the table to the phases saves
    wait (``stagger.core.phase.follow``), leaving streams re-timed within ``PIN_S`` where they
    are (unless their own camera jumped), write every stream's new contract, switching at
    the first instant after ``SWITCH_AFTER_S`` at which no body of the old table runs. Once a
    table is in force (every sidecar runs it), grant its release windows
    (``stagger.core.slots.release_windows``) in a contract that takes over the same way, as
    the operator does by default (``releaseWindows``); a re-timed table's contracts carry none
    until it is in force. The sidecars read their files every 0.2 s here, as they get
    contracts over the feed at once.

    ``follow_spacing`` (ticks, by stream; :func:`stream_follow_spacing` from the plan, which
    the contracts do not carry): each followed slot kept that far from the next body where
    the table has room, while the contracts keep their reserved width, as the operator does.
    None packs the followed slots at their width, as the operator did before run 104
    (``bench.gpu.loop --transparent-packed`` measures that for comparison).
    ``follow_holds`` (ticks, by stream; :func:`stream_follow_holds`): how long each gate
    holds a request for its slot; a spaced table that makes a stream wait longer is not
    kept, as the operator does. Each re-timed contract says which arrivals its slot follows
    (``arrival_ticks``), as the operator's do; ``mark_arrivals=False`` leaves that out, so
    every gate holds by its measured answers alone, as before run 109
    (``bench.gpu.loop --transparent-unmarked``, for comparison).

    ``follow_waits`` (seconds, by stream) sets the table by hand, for comparison
    (``bench.gpu.loop --transparent-searched``): once every stream has a phase, each slot
    goes that long after its stream's arrivals and two of their spreads (where
    :func:`stagger.core.phase.follow` would place it), with no rule against overlap, once;
    no release windows (:func:`stagger.core.slots.release_windows` assumes bodies apart)."""

    POLL_S = 0.2
    SWITCH_AFTER_S = 5.0  # OperatorSettings.effective_after_s
    SETTLE_S = 10.0  # OperatorSettings.follow_settle_s
    PIN_S = 60.0  # OperatorSettings.retime_min_interval_s

    def __init__(
        self,
        sidecars: list[LocalSidecar],
        contracts: dict[str, SlotAssignment],
        *,
        follow_spacing: Mapping[Hashable, int] | None = None,
        follow_holds: Mapping[Hashable, int] | None = None,
        mark_arrivals: bool = True,
        follow_waits: Mapping[Hashable, float] | None = None,
    ):
        self.sidecars, self.contracts = sidecars, contracts
        self.mark_arrivals = mark_arrivals
        self.follow_waits = follow_waits
        self.follow_spacing = follow_spacing or {}
        self.follow_holds = follow_holds or {}
        self.switches: list[float] = []  # when each re-timing took effect (Unix s)
        self.windows: list[float] = []  # when each grant of release windows took effect
        self._effective_at = datetime.fromtimestamp(0, UTC)
        self.pinned_until: dict[str, float] = {}
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LocalFollower:
        self.started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            self.step()

    def arrivals(self) -> dict[Hashable, PhaseEstimate]:
        out: dict[Hashable, PhaseEstimate] = {}
        for sidecar in self.sidecars:
            url = f"http://{sidecar.http}{CLOCK_PATH}"
            with urllib.request.urlopen(url, timeout=2) as r:
                a = json.load(r).get("arrival")
            if a and a["periodic"]:
                out[sidecar.stream] = PhaseEstimate(
                    a["periodS"], a["phaseS"], a["spreadS"], a["concentration"], a["samples"], 0
                )
        return out

    def step(self) -> None:
        now = time.time()
        arrivals = self.arrivals()
        if len(arrivals) < len(self.sidecars) and now - self.started < self.SETTLE_S:
            return  # a stream's first phase is coming: re-time once, with it
        if self.follow_waits is not None:
            self._place_after(arrivals, now)
            return
        c0 = next(iter(self.contracts.values()))
        table = self.table()
        pinned = {name for name, until in self.pinned_until.items() if now < until}
        aligned = follow(
            table,
            arrivals,
            tick_hz=c0.tick_hz,
            fixed=pinned,
            spacing=self.follow_spacing,
            holds=self.follow_holds,
        )
        if aligned is None:
            self._grant_windows(table, now)
            return
        effective_at = self._switch(table, now)
        for sidecar, slot in zip(self.sidecars, _ordered(aligned, self.sidecars), strict=True):
            old = self.contracts[sidecar.stream]
            followed = old.arrival_ticks
            if slot.offset != old.offset_ticks:
                self.pinned_until[sidecar.stream] = effective_at.timestamp() + self.PIN_S
                e = arrivals.get(sidecar.stream) if self.mark_arrivals else None
                followed = (
                    None
                    if e is None or e.phase_s is None
                    else arrival_ticks(e.phase_s, c0.tick_hz, slot.period)
                )
            self._write(
                sidecar,
                offset_ticks=slot.offset,
                early_ticks=None,
                late_ticks=None,
                arrival_ticks=followed,
            )
        self.switches.append(effective_at.timestamp())

    def _place_after(self, arrivals: Mapping[Hashable, PhaseEstimate], now: float) -> None:
        """``follow_waits``' table, once every stream has a phase; then left as it is."""
        assert self.follow_waits is not None
        if self.switches or len(arrivals) < len(self.sidecars):
            return
        effective_at = self._switch(self.table(), now)
        for sidecar in self.sidecars:
            old, e = self.contracts[sidecar.stream], arrivals[sidecar.stream]
            assert e.phase_s is not None  # periodic (arrivals)
            after = e.phase_s + 2 * e.spread_s + self.follow_waits[sidecar.stream]
            self._write(
                sidecar,
                offset_ticks=math.ceil(after * old.tick_hz) % old.period_ticks,
                early_ticks=None,
                late_ticks=None,
                arrival_ticks=arrival_ticks(e.phase_s, old.tick_hz, old.period_ticks)
                if self.mark_arrivals
                else None,
            )
        self.switches.append(effective_at.timestamp())

    def table(self) -> list[Slot]:
        """The contracts' slots."""
        return [
            Slot(name, c.body_ticks, c.period_ticks, c.offset_ticks)
            for name, c in self.contracts.items()
        ]

    def _grant_windows(self, table: list[Slot], now: float) -> None:
        """The table's release windows, once every sidecar runs it (each reads its file
        within a poll of the switch), where its contracts do not carry them yet."""
        running = max(c.effective_at.timestamp() for c in self.contracts.values()) + self.POLL_S
        windows = release_windows(table)
        if now < running or all(
            (c.early_ticks, c.late_ticks) == windows[name] for name, c in self.contracts.items()
        ):
            return
        effective_at = self._switch(table, now)
        for sidecar in self.sidecars:
            early, late = windows[sidecar.stream]
            self._write(sidecar, early_ticks=early, late_ticks=late)
        self.windows.append(effective_at.timestamp())

    def _switch(self, table: list[Slot], now: float) -> datetime:
        """The first instant ``SWITCH_AFTER_S`` ahead at which no body of ``table`` runs."""
        c0 = next(iter(self.contracts.values()))
        earliest = math.ceil((now + self.SWITCH_AFTER_S - c0.epoch.timestamp()) * c0.tick_hz)
        self._effective_at = effective_at_of(c0.epoch, switch_tick(table, earliest), c0.tick_hz)
        return self._effective_at

    def _write(self, sidecar: LocalSidecar, **update: object) -> None:
        """The sidecar's next contract, taking effect at the last :meth:`_switch`."""
        old = self.contracts[sidecar.stream]
        new = old.model_copy(
            update={
                **update,
                "generation": old.generation + 1,
                "effective_at": self._effective_at,
            }
        )
        staged = sidecar.slot_file.with_suffix(".new")  # the sidecar never reads half
        staged.write_text(new.model_dump_json(by_alias=True))
        staged.replace(sidecar.slot_file)
        self.contracts[sidecar.stream] = new


def _ordered(table: list[Slot], sidecars: list[LocalSidecar]) -> list[Slot]:
    by_key = {s.key: s for s in table}
    return [by_key[s.stream] for s in sidecars]
