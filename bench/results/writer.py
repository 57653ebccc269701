"""Writing results: the builders of points and repetitions, and the atomic writer.

The runner adds points as they complete; every addition rewrites the whole
file atomically (:func:`write_json_atomic`), so a run that is interrupted
(Ctrl-C, a kernel oops, a power cut) leaves a valid file holding every point
completed so far, with status "running" or "interrupted". A stored point gets
its summary (bench.results.summarise) and never holds NaN or infinity.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench import interrupts
from bench.analysis import stats
from bench.errors import KpbenchError
from bench.results.schema import (
    KIND,
    LATENCY_PATHS,
    POINT_STATUSES,
    RUN_STATUSES,
    SCHEMA_VERSION,
    EnvironmentDoc,
    FailedRepetitionDoc,
    PointDoc,
    PointStatus,
    RepetitionDoc,
    ResultDoc,
    RunStatus,
    ScenarioDoc,
    SetupDoc,
    SocketRepetitionDoc,
)
from bench.results.summarise import summarise_point

# -- builders ------------------------------------------------------------------------------

def make_repetition(*, sent: int, delivered: int, offered_pps: float | None = None,
                    achieved_pps: float | None = None,
                    latency_hist: stats.Histogram | dict[str, Any] | None = None,
                    cpu_ns_per_packet: float | None = None, softirq_ns: int | None = None,
                    process_ns: int | None = None,
                    drops: Mapping[str, int] | None = None,
                    transit_hist: stats.Histogram | dict[str, Any] | None = None,
                    kfunc: Mapping[str, Mapping[str, Any]] | None = None,
                    sync: Mapping[str, float | None] | None = None,
                    arrival_seconds: float | None = None,
                    cpu_delivered: int | None = None,
                    transit_sample_every: int | None = None,
                    latency_by_path: Mapping[str, stats.Histogram | None] | None = None,
                    ) -> RepetitionDoc:
    """One repetition of a point. Leave a measurement None when it was not taken.

    ``delivered`` counts only packets the repetition sent, so it never exceeds ``sent``.
    ``latency_by_path``: the latency split by path (schema.LATENCY_PATHS' names).
    """
    if sent < 0 or delivered < 0:
        raise ValueError(f"sent ({sent}) and delivered ({delivered}) must be >= 0")
    if delivered > sent:
        raise ValueError(f"delivered ({delivered}) exceeds sent ({sent}): a packet the "
                         "repetition did not send was counted")
    rep = RepetitionDoc(
        offered_pps=offered_pps, achieved_pps=achieved_pps, sent=int(sent),
        delivered=int(delivered), latency_hist=_hist_json(latency_hist),
        cpu_ns_per_packet=cpu_ns_per_packet, softirq_ns=softirq_ns,
        drops=dict(drops) if drops is not None else None,
        transit_hist=_hist_json(transit_hist),
        **({"kfunc": {k: dict(v) for k, v in kfunc.items()}} if kfunc is not None else {}))
    if process_ns is not None:
        rep["process_ns"] = int(process_ns)
    if sync is not None:
        rep["sync"] = dict(sync)
    if transit_sample_every is not None:  # 1 in this many packets timed in transit_hist
        rep["transit_sample_every"] = int(transit_sample_every)
    if arrival_seconds is not None:
        rep["arrival_seconds"] = float(arrival_seconds)
    if cpu_delivered is not None:
        rep["cpu_delivered"] = int(cpu_delivered)
    if latency_by_path is not None:
        for path, key in LATENCY_PATHS:
            rep[key] = _hist_json(latency_by_path.get(path))  # type: ignore[literal-required]
    return rep


def make_socket_repetition(*, seconds: float, transactions: int, failed: int,
                           rtt_hist: stats.Histogram | dict[str, Any] | None,
                           transactions_per_s: float | None = None,
                           throughput_bps: float | None = None,
                           offered_tps: float | None = None, retransmits: int = 0,
                           resets: int = 0, conntrack_entries_created: int | None = None,
                           generator_cpu_ns: int | None = None,
                           responder_cpu_ns: int | None = None,
                           softirq_ns: int | None = None,
                           datapath_ns: int | None = None,
                           shared_cpu: int | None = None,
                           softirq_probe_ns: int | None = None,
                           net_rx_softirqs: int | None = None) -> RepetitionDoc:
    """One repetition of a socket workload: the packet keys neutral (no packet figure is
    read from it), the socket figures under ``socket`` and the RTTs in ``rtt_hist``."""
    if seconds < 0 or transactions < 0 or failed < 0:
        raise ValueError("seconds, transactions and failed must be >= 0")
    rep = make_repetition(sent=0, delivered=0)
    rep["rtt_hist"] = _hist_json(rtt_hist)
    rep["socket"] = SocketRepetitionDoc(
        seconds=float(seconds), transactions=int(transactions),
        transactions_per_s=transactions_per_s, throughput_bps=throughput_bps,
        offered_tps=offered_tps, failed=int(failed), retransmits=int(retransmits),
        resets=int(resets), conntrack_entries_created=conntrack_entries_created,
        generator_cpu_ns=generator_cpu_ns, responder_cpu_ns=responder_cpu_ns,
        softirq_ns=softirq_ns)
    if datapath_ns is not None:
        rep["socket"]["datapath_ns"] = int(datapath_ns)
    if shared_cpu is not None:
        rep["socket"]["shared_cpu"] = int(shared_cpu)
    if softirq_probe_ns is not None:  # taken out of softirq_ns (the cpu probe's own)
        rep["socket"]["softirq_probe_ns"] = int(softirq_probe_ns)
    if net_rx_softirqs is not None:
        rep["socket"]["net_rx_softirqs"] = int(net_rx_softirqs)
    return rep


def add_one_way(rep: RepetitionDoc, request: stats.Histogram | dict[str, Any] | None,
                response: stats.Histogram | dict[str, Any] | None,
                counts: Mapping[str, int]) -> RepetitionDoc:
    """``rep`` (a socket point's breakdown repetition) with the one-way probe's request
    and response histograms (ns) and its counts (bench.measure.probes.oneway.COUNTERS)."""
    rep["one_way_request_hist"] = _hist_json(request)
    rep["one_way_response_hist"] = _hist_json(response)
    rep["one_way"] = {k: int(v) for k, v in counts.items()}
    return rep


def make_point(*, datapath: str, variant: str, services: int, endpoints: int, workload: str,
               rate_pps: int | None, position: str, position_index: int,
               status: PointStatus = "ok", error: str | None = None,
               sync_seconds: float | None = None, sync_render_seconds: float | None = None,
               sync_node_seconds: list[float] | None = None,
               settle_seconds: float | None = None, settle_converged: bool | None = None,
               state_size: Mapping[str, Any] | None = None,
               repetitions: list[RepetitionDoc] | None = None,
               missing: Mapping[str, str] | None = None,
               probe_overhead: Mapping[str, Any] | None = None,
               control: list[RepetitionDoc] | None = None,
               failed_repetitions: list[FailedRepetitionDoc] | None = None,
               socket: Mapping[str, Any] | None = None,
               id: str | None = None) -> PointDoc:
    """One measured point; its ``id`` defaults to a readable key of its coordinates.

    The summary is not part of it: :func:`summarise_point` computes it, and
    :meth:`ResultWriter.add_point` stores it.
    """
    if status not in POINT_STATUSES:
        raise ValueError(f"point status {status!r} is not one of {POINT_STATUSES}")
    rate = "top" if rate_pps is None else str(rate_pps)
    if socket is not None:  # {"loop", "flows", "rate_tps"} of a socket workload's point
        load = f"f{socket['flows']}/{socket['loop']}" + (
            f"@{socket['rate_tps']:g}" if socket.get("rate_tps") is not None else "")
        pid = id or f"{variant}/{workload}/{load}/s{services}/e{endpoints}/{position}"
    else:
        pid = id or f"{variant}/{workload}/s{services}/e{endpoints}/r{rate}/{position}"
    point = PointDoc(
        id=pid, datapath=datapath, variant=variant, services=int(services),
        endpoints=int(endpoints), workload=workload, rate_pps=rate_pps, position=position,
        position_index=int(position_index), status=status, error=error,
        setup=SetupDoc(sync_seconds=sync_seconds, sync_render_seconds=sync_render_seconds,
                       sync_node_seconds=list(sync_node_seconds or []),
                       settle_seconds=settle_seconds, state_size=dict(state_size or {})),
        repetitions=list(repetitions or []), missing=dict(missing or {}),
        probe_overhead=dict(probe_overhead) if probe_overhead is not None else None,
        failed_repetitions=list(failed_repetitions or []))
    if settle_converged is not None:
        point["setup"]["settle_converged"] = settle_converged
    if control is not None:
        point["control"] = list(control)
    if socket is not None:
        point["loop"] = socket["loop"]
        point["flows"] = int(socket["flows"])
        point["rate_tps"] = socket.get("rate_tps")
    return point


def _hist_json(h: stats.Histogram | dict[str, Any] | None) -> dict[str, Any] | None:
    if h is None or isinstance(h, dict):
        return h
    return h.to_json()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _check_finite(obj: Any, where: str) -> None:
    # JSON has no NaN/Infinity; a NaN in a result means a division by zero
    # upstream, so name where it is instead of writing an unreadable file.
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{where} is {obj!r}; record a missing measurement as None "
                         f"(and its reason under 'missing')")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Replace ``path`` with ``doc`` as JSON, atomically: readers see the old or the new file.

    The temporary file lives in the same directory (os.replace is atomic only
    within one file system) and is fsynced before the rename; the directory is
    fsynced after it so the rename itself survives a power cut.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _repetition_docs(point: PointDoc) -> Iterator[tuple[str, RepetitionDoc]]:
    """(where, repetition) of every repetition a point holds, measured or apart."""
    for i, r in enumerate(point.get("repetitions") or []):
        yield f"repetitions[{i}]", r
    apart: Any = point.get("breakdown")  # the breakdown repetition, kept apart
    for i, r in enumerate(apart if isinstance(apart, list) else [apart] if apart else []):
        yield f"breakdown[{i}]", r
    if point.get("control_breakdown"):  # a socket point's direct-path breakdown
        yield "control_breakdown", point["control_breakdown"]  # type: ignore[typeddict-item]


def check_drops_within_loss(point: PointDoc) -> None:
    """The invariant of every stored repetition: drops attributed to the datapath are at
    most the packets lost (sent - delivered). A breach is a harness defect (drops of
    its own, or packets it did not send counted as delivered): ValueError, never stored."""
    for where, r in _repetition_docs(point):
        drops = r.get("drops")
        if not drops:
            continue
        dropped, lost = sum(int(n) for n in drops.values()), r["sent"] - r["delivered"]
        if dropped > max(lost, 0):
            raise ValueError(f"point {point.get('id')!r} {where}: {dropped} drops attributed "
                             f"to the datapath ({drops}) but only {lost} of {r['sent']} sent "
                             f"packets were lost; the drops probe counted packets the "
                             f"datapath did not drop")


class ResultExists(KpbenchError):
    """The result file a run wanted to create is already there."""


class ResultWriteError(KpbenchError):
    """The result file cannot be written (read-only or full file system, no permission)."""


class ResultWriter:
    """Writes one run's result file, rewriting it atomically after every change.

    Use as a context manager: leaving the block normally marks the run
    "complete", by KeyboardInterrupt "interrupted", by any other exception
    "failed" (the exception still propagates). Refuses to overwrite an
    existing file.
    """

    def __init__(self, path: str | Path, *, scenario: ScenarioDoc | Mapping[str, Any],
                 environment: EnvironmentDoc, run_id: str | None = None) -> None:
        self.path = Path(path)
        for key in ("name", "path", "text"):
            if not isinstance(scenario.get(key), str):
                raise TypeError(f"scenario needs a string {key!r}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ResultWriteError(f"{self.path.parent}: cannot create the results directory "
                                   f"({e.strerror or e}); choose a writable --results "
                                   "directory") from None
        self._claimed = False
        self._on_disk: list[PointDoc] = []
        try:
            # A signal waits until the claim holds a valid document; if it came, the run
            # measured nothing and leaves no file (never an empty, unreadable one).
            with interrupts.deferred():
                self._claim(scenario, environment, run_id)
        except KeyboardInterrupt:
            if self._claimed:
                self.path.unlink(missing_ok=True)
            raise

    def _claim(self, scenario: ScenarioDoc | Mapping[str, Any], environment: EnvironmentDoc,
               run_id: str | None) -> None:
        # Claim the name atomically: two runs started in the same second must not
        # write into one file (the atomic rewrites below then replace this claim).
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            self._claimed = True
        except FileExistsError:
            raise ResultExists(f"{self.path}: a result already exists there; "
                               f"choose another path or move it away") from None
        except OSError as e:
            raise ResultWriteError(f"{self.path}: cannot create the result file "
                                   f"({e.strerror or e}); choose a writable --results "
                                   "directory") from None
        self.document: ResultDoc = ResultDoc(
            schema_version=SCHEMA_VERSION, kind=KIND,
            run_id=run_id or uuid.uuid4().hex[:12], started=_now(), finished=None,
            status="running",
            scenario=ScenarioDoc(name=scenario["name"], path=scenario["path"],
                                 text=scenario["text"],
                                 **({"selected_datapaths": list(scenario["selected_datapaths"])}
                                    if "selected_datapaths" in scenario else {})),
            environment=environment, points=[])
        try:
            self._write()
        except ResultWriteError:
            self.path.unlink(missing_ok=True)  # never leave the empty claim behind
            raise

    def _write(self) -> None:
        try:
            write_json_atomic(self.path, self.document)
        except OSError as e:
            # The rewrite is atomic: the file on disk is still the last complete version.
            raise ResultWriteError(
                f"{self.path}: cannot write the result ({e.strerror or e}); the file keeps "
                f"what was written before ({len(self._on_disk)} points); free space or make "
                "the directory writable, then run again") from None
        self._on_disk = list(self.document["points"])

    def add_point(self, point: PointDoc) -> PointDoc:
        """Store a finished point (computing its summary if absent) and rewrite the file."""
        if point.get("status") not in POINT_STATUSES:
            raise ValueError(f"point {point.get('id')!r}: status {point.get('status')!r} "
                             f"is not one of {POINT_STATUSES}")
        if self.document["status"] != "running":
            raise ValueError(f"{self.path}: run already finished ({self.document['status']})")
        if any(p["id"] == point["id"] for p in self.document["points"]):
            raise ValueError(f"{self.path}: point id {point['id']!r} added twice")
        check_drops_within_loss(point)
        point = dict(point)  # type: ignore[assignment]
        if "summary" not in point:
            point["summary"] = summarise_point(point)
        _check_finite(point, f"point {point['id']!r}")
        self.document["points"].append(point)
        # A signal waits for the rewrite: one landing after the rename (in the
        # directory's fsync) would drop from memory, and so from the run's last
        # write, a point the file already holds.
        with interrupts.deferred():
            try:
                self._write()
            except BaseException:
                self.document["points"].pop()  # keep memory equal to what is on disk
                raise
        return point

    def finish(self, status: RunStatus = "complete") -> None:
        """Mark the run as ended with ``status`` and write the final file."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"finish status must be complete, interrupted or failed, "
                             f"got {status!r}")
        self.document["status"] = status
        self.document["finished"] = _now()
        # A signal waits for this last rewrite: cut short, the file would stay "running"
        # while the run reports it finished.
        with interrupts.deferred():
            self._write()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.document["status"] != "running":
            return
        status: RunStatus = ("complete" if exc_type is None else "interrupted"
                             if issubclass(exc_type, KeyboardInterrupt) else "failed")
        try:
            self.finish(status)
        except ResultWriteError:
            if exc_type is None:
                raise
            # The error on its way out says what went wrong; the file keeps its last
            # complete version (status "running"), which readers take as cut short.

