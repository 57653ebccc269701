"""The result schema and store: one JSON document per run, rewritten atomically.

A result file holds the scenario as given, the environment that bends the
numbers, and one entry per measured point (datapath x scale x workload x
rate x position) with its repetitions and a summary computed from them.
The runner adds points as they complete; every addition rewrites the whole
file atomically, so a run that is interrupted (Ctrl-C, a kernel oops, a power
cut) leaves a valid file holding every point completed so far, with status
"running" or "interrupted".

Rules the summary follows (bench.analysis.stats): latency percentiles come from the
merge of the repetitions' histograms, never from averaging per-repetition
percentiles; a measurement a probe failed to take is recorded under
``missing`` with the reason and is null in the data — never zero.

The document's JSON Schema is docs/result.schema.json (draft 2020-12); every
read checks a file against it (validate_result). A field added to the
TypedDicts below goes into the schema too (tests/unit/test_result_schema.py).

Schema version history (``schema_version``, an integer; bump it on any change
a reader of the previous version would misread, and say here what changed):

- 1 (2026-11): first version.
- 2 (2026-11): one meaning for sync times, the datapath's own. ``setup.sync_seconds``
  is node 0's *apply* time (the tool and the kernel, as kube-proxy's per-node
  ``sync_proxy_rules_duration_seconds``) of the scale's first full sync, in packet
  and sync scenarios alike; version 1 held render + apply, summed over both nodes
  in packet scenarios and node 0's in sync scenarios. kpbench's render time is
  ``setup.sync_render_seconds``; every node's apply is ``setup.sync_node_seconds``.
  At status ``exceeded-limit`` they hold the time reached when the tool was
  stopped (version 1: the limit). Sync repetitions lost ``sync.total`` (render +
  apply): ``sync.apply`` is the figure, ``sync.render`` stays apart. Version 1
  documents are upgraded when read (:func:`upgrade_v1`): their sync times cannot
  be split, so they become null with the reason under ``missing``; repetitions'
  ``sync.apply`` and ``sync.render`` were measured apart and are kept.
  Also new in version 2 (optional fields): a point's ``breakdown`` (the repetition
  with the breakdown probes, no longer in ``repetitions``; the upgrade moves a
  version 1 point's breakdown repetitions out of ``repetitions``), ``control``
  (the paired control repetitions: the same traffic to the backend pods' own
  addresses), ``failed_repetitions`` (replays that failed,
  with why; not in ``repetitions``); ``setup.settle_converged``; a repetition's
  ``arrival_seconds`` (first to last arrival at the backends); the summary's
  ``control`` and ``service_minus_control_*``. ``delivered_pps`` is now measured at
  the receiver (delivered over arrival_seconds), null where that is unknown.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NotRequired, Self, TypedDict

from bench import interrupts
from bench.analysis import stats
from bench.errors import InputError, KpbenchError
from bench.model.input_limits import MAX_RESULT_BYTES, brief, parse_json, read_input
from bench.paths import CHECKOUT

SCHEMA_VERSION = 2
KIND = "kpbench-result"

RUN_STATUSES = ("running", "complete", "interrupted", "failed")
POINT_STATUSES = ("ok", "failed", "exceeded-limit")
WHERE = ("host", "vm")
VM_ACCELS = ("kvm", "tcg")

RunStatus = Literal["running", "complete", "interrupted", "failed"]
PointStatus = Literal["ok", "failed", "exceeded-limit"]

# The checkout whose commit a result records: the one this module runs from.
TOOL_TIMEOUT_S = 5.0


# -- document shape ----------------------------------------------------------------------

class ScenarioDoc(TypedDict):
    name: str
    path: str
    text: str  # the TOML exactly as given, so a result can be re-run or audited
    # Only in a run of part of the file (kpbench run --datapaths): the datapaths it measured.
    selected_datapaths: NotRequired[list[str]]


class VmDoc(TypedDict):
    accel: Literal["kvm", "tcg"]
    kernel: str


class EnvironmentDoc(TypedDict):
    kernel_release: str
    kernel_version: str
    where: Literal["host", "vm"]
    vm: VmDoc | None
    cpu_model: str | None
    cpu_count: int | None
    governor: str | None
    python: str
    kpbench: str | None
    tools: dict[str, str | None]
    git_commit: str | None
    git_dirty: bool | None
    hostname: str
    # A short hash of /etc/machine-id (machine_id()): tells apart two machines that share
    # a host name. Absent in results written before it was recorded.
    machine_id: NotRequired[str | None]
    # Only in a run made slower on purpose (kpbench run --inject-rules, bench.measure.slowdown).
    injected_rules: NotRequired[int]


class SetupDoc(TypedDict):
    # The scale's first full sync: node 0's apply time (tool + kernel; at status
    # "exceeded-limit", the time reached when it was stopped), kpbench's render time
    # for node 0 (never part of sync_seconds), and the apply time of every node
    # programmed, in node order (packet scenarios program all, sync scenarios node 0).
    sync_seconds: float | None
    sync_render_seconds: float | None
    sync_node_seconds: list[float]
    settle_seconds: float | None  # waited, converged or not
    state_size: dict[str, Any]
    # False: the settle timed out (or nothing arrived) before latency stopped drifting,
    # so settle_seconds is how long it waited, not how long settling took.
    settle_converged: NotRequired[bool | None]


class RepetitionDoc(TypedDict):
    offered_pps: float | None
    achieved_pps: float | None
    sent: int
    delivered: int
    latency_hist: dict[str, Any] | None
    cpu_ns_per_packet: float | None  # (softirq_ns + process_ns) / delivered
    softirq_ns: int | None  # NET_RX softirq time, machine-wide
    # CPU time of the datapath's own processes (a userspace proxy), their NET_RX time
    # (already in softirq_ns) taken out; 0 for a datapath that runs none.
    process_ns: NotRequired[int | None]
    drops: dict[str, int] | None
    transit_hist: dict[str, Any] | None
    # Kernel-function breakdown (bench.measure.kfunc_probes), where the kernel has kprobes.
    kfunc: NotRequired[dict[str, dict[str, Any]] | None]
    # Sync points (workload "sync-*"), node 0, seconds: "apply" (the datapath's time,
    # the figure), "render" (kpbench's, apart), "kernel" (in the applying tool's
    # syscalls), "commit", "effect" (to the change's effect on traffic); None: not measured.
    sync: NotRequired[dict[str, float | None]]
    # First to last arrival of the delivered packets at the backends (the latency probe's
    # stamps): delivered_pps is measured over it, not derived from the sender's rate.
    arrival_seconds: NotRequired[float | None]


class FailedRepetitionDoc(TypedDict):
    phase: Literal["measured", "control", "breakdown"]
    index: int
    error: str  # why (tcpreplay's message, a timeout, a short send)


class ControlSummaryDoc(TypedDict):
    """The paired control's own figures (see SummaryDoc)."""

    delivered_pps: float | None
    loss: float | None
    latency_ns: dict[str, float | int | None] | None
    cpu_ns_per_packet: float | None
    softirq_ns_per_packet: NotRequired[float | None]
    process_ns_per_packet: NotRequired[float | None]


class SummaryDoc(TypedDict):
    offered_pps: float | None
    achieved_pps: float | None
    delivered_pps: float | None
    loss: float | None
    latency_ns: dict[str, float | int | None] | None
    cpu_ns_per_packet: float | None  # softirq + process
    softirq_ns_per_packet: NotRequired[float | None]
    process_ns_per_packet: NotRequired[float | None]
    # The probes' own cost (probe_overhead) as a percentage of this point's CPU per packet.
    probe_overhead_pct: NotRequired[dict[str, float] | None]
    drops: dict[str, int] | None
    transit_ns: dict[str, float | int | None] | None
    kfunc_ns_per_packet: NotRequired[dict[str, float | None] | None]
    sync: NotRequired[dict[str, float | None]]  # per key: median over repetitions
    # Points with a paired control: its figures, and the Service's minus the control's.
    control: NotRequired[ControlSummaryDoc]
    service_minus_control_p50_ns: NotRequired[float | None]
    service_minus_control_p99_ns: NotRequired[float | None]
    service_minus_control_cpu_ns_per_packet: NotRequired[float | None]


class PointDoc(TypedDict):
    id: str
    datapath: str
    variant: str
    services: int
    endpoints: int
    workload: str
    rate_pps: int | None  # None: the generator's top speed
    position: str
    position_index: int
    status: PointStatus
    error: str | None
    setup: SetupDoc
    repetitions: list[RepetitionDoc]
    summary: NotRequired[SummaryDoc]
    missing: dict[str, str]
    probe_overhead: dict[str, Any] | None
    # The repetition with the breakdown probes (drops, transit, kernel functions): their
    # cost inflates its latency and CPU, so it is never pooled with the repetitions.
    breakdown: NotRequired[RepetitionDoc | None]
    # The paired control: after each repetition, the same traffic to the backend pods'
    # own addresses (no Service translation); summary.service_minus_control_* pair them.
    control: NotRequired[list[RepetitionDoc] | None]
    failed_repetitions: NotRequired[list[FailedRepetitionDoc]]
    # Only in a baseline pooled from several runs (bench.results.baseline): which runs the
    # repetitions came from, in order (see runs_of).
    per_run: NotRequired[list[RunShareDoc]]


class RunShareDoc(TypedDict):
    """One run's share of a pooled point: its next ``repetitions`` (and ``control``
    repetitions) and its own setup."""

    repetitions: int
    setup: SetupDoc
    control: NotRequired[int]


class ResultDoc(TypedDict):
    schema_version: int
    # Only in memory, when an older document was read (bench.results.upgrade_v1).
    upgraded_from: NotRequired[int]
    kind: str
    run_id: str
    started: str
    finished: str | None
    status: RunStatus
    scenario: ScenarioDoc
    environment: EnvironmentDoc
    points: list[PointDoc]


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
                    ) -> RepetitionDoc:
    """One repetition of a point. Leave a measurement None when it was not taken.

    ``delivered`` counts only packets the repetition sent, so it never exceeds ``sent``.
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
    if arrival_seconds is not None:
        rep["arrival_seconds"] = float(arrival_seconds)
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
               id: str | None = None) -> PointDoc:
    """One measured point; its ``id`` defaults to a readable key of its coordinates.

    The summary is not part of it: :func:`summarise_point` computes it, and
    :meth:`ResultWriter.add_point` stores it.
    """
    if status not in POINT_STATUSES:
        raise ValueError(f"point status {status!r} is not one of {POINT_STATUSES}")
    rate = "top" if rate_pps is None else str(rate_pps)
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
    return point


def _hist_json(h: stats.Histogram | dict[str, Any] | None) -> dict[str, Any] | None:
    if h is None or isinstance(h, dict):
        return h
    return h.to_json()


# -- summary -------------------------------------------------------------------------------

def _merged(reps: list[RepetitionDoc], key: str) -> dict[str, float | int | None] | None:
    hists = [stats.Histogram.from_json(r[key]) for r in reps  # type: ignore[literal-required]
             if r.get(key) is not None]
    if not hists:
        return None
    merged = stats.merge(hists)
    if merged.count == 0:
        return None
    return stats.summary(merged)


def _traffic(reps: list[RepetitionDoc]) -> dict[str, Any]:
    """Rates, loss, latency and CPU of ``reps``, pooled (see :func:`summarise_point`)."""
    span = 0.0  # receiver time of the repetitions whose arrival span is known
    spanned = 0
    for r in reps:
        if (r.get("arrival_seconds") or 0) > 0 and r["delivered"] > 1:
            span += r["arrival_seconds"]  # type: ignore[operator]
            spanned += r["delivered"] - 1  # n arrivals span n - 1 gaps
    sent = sum(r["sent"] for r in reps)
    delivered = sum(r["delivered"] for r in reps)
    cpu_ns = softirq_ns = process_ns = 0.0
    cpu_pkts = softirq_pkts = process_pkts = 0
    for r in reps:
        if r.get("softirq_ns") is not None:
            cpu_ns += r["softirq_ns"] + (r.get("process_ns") or 0)  # type: ignore[operator]
            cpu_pkts += r["delivered"]
            softirq_ns += r["softirq_ns"]  # type: ignore[operator]
            softirq_pkts += r["delivered"]
            if r.get("process_ns") is not None:
                process_ns += r["process_ns"]  # type: ignore[operator]
                process_pkts += r["delivered"]
        elif r.get("cpu_ns_per_packet") is not None:
            cpu_ns += r["cpu_ns_per_packet"] * r["delivered"]  # type: ignore[operator]
            cpu_pkts += r["delivered"]
    return {
        "delivered_pps": spanned / span if span > 0 else None,
        "loss": 1 - delivered / sent if sent > 0 else None,
        "latency_ns": _merged(reps, "latency_hist"),
        "cpu_ns_per_packet": cpu_ns / cpu_pkts if cpu_pkts > 0 else None,
        "softirq_ns_per_packet": softirq_ns / softirq_pkts if softirq_pkts > 0 else None,
        "process_ns_per_packet": process_ns / process_pkts if process_pkts > 0 else None,
    }


def _minus(a: float | int | None, b: float | int | None) -> float | None:
    return float(a) - float(b) if a is not None and b is not None else None


def summarise_point(point: PointDoc) -> SummaryDoc:
    """The point's summary, pooled over its repetitions.

    - latency_ns / transit_ns: count, min, mean, p50, p90, p99, p99.9, max of
      the MERGED histograms of all repetitions (None if no repetition has one);
    - achieved_pps: total packets over total sender time, where a repetition's
      time is sent / achieved_pps (repetitions without a rate are left out);
      offered_pps: the mean of the offered rates;
    - delivered_pps: measured at the receiver, sum(delivered - 1) over the sum
      of the repetitions' arrival spans (None where no span was recorded);
    - loss: 1 - sum(delivered) / sum(sent);
    - cpu_ns_per_packet: sum(softirq_ns + process_ns) / sum(delivered) over the
      repetitions that measured it (a repetition with only cpu_ns_per_packet
      counts as cpu_ns_per_packet x delivered), with softirq_ns_per_packet and
      process_ns_per_packet, its two parts (process: None where no repetition
      measured it);
    - probe_overhead_pct: per probe set, the probes' added ns per packet
      (``probe_overhead``) as a percentage of cpu_ns_per_packet;
    - drops, transit_ns, kfunc_ns_per_packet: from the breakdown repetition
      (``point["breakdown"]``), which nothing else is pooled with;
    - control, service_minus_control_*: the paired control's figures (the same
      pooling over ``point["control"]``) and the Service's minus them.
    """
    reps = point.get("repetitions") or []
    breakdown = point.get("breakdown")
    detail = [*reps, breakdown] if breakdown else reps
    offered = [r["offered_pps"] for r in reps if r.get("offered_pps") is not None]
    seconds = 0.0  # sender time of the repetitions whose generator rate is known
    timed_sent = 0
    for r in reps:
        rate = r.get("achieved_pps")
        if rate is not None and rate > 0 and r["sent"] > 0:
            seconds += r["sent"] / rate
            timed_sent += r["sent"]
    traffic = _traffic(reps)

    drops: dict[str, int] | None = None
    for r in detail:
        if r.get("drops") is not None:
            drops = drops or {}
            for reason, n in r["drops"].items():  # type: ignore[union-attr]
                drops[reason] = drops.get(reason, 0) + int(n)

    summary = SummaryDoc(
        offered_pps=sum(o for o in offered if o is not None) / len(offered) if offered else None,
        achieved_pps=timed_sent / seconds if seconds > 0 else None,
        delivered_pps=traffic["delivered_pps"],
        loss=traffic["loss"],
        latency_ns=traffic["latency_ns"],
        cpu_ns_per_packet=traffic["cpu_ns_per_packet"],
        softirq_ns_per_packet=traffic["softirq_ns_per_packet"],
        process_ns_per_packet=traffic["process_ns_per_packet"],
        probe_overhead_pct=_overhead_pct(point.get("probe_overhead"),
                                         traffic["cpu_ns_per_packet"]),
        drops=drops,
        transit_ns=_merged(detail, "transit_hist"),
        **_kfunc_summary(detail),
    )
    control = point.get("control")
    if control:
        c = _traffic(control)
        summary["control"] = ControlSummaryDoc(**c)  # type: ignore[typeddict-item]
        lat, clat = summary["latency_ns"] or {}, c["latency_ns"] or {}
        summary["service_minus_control_p50_ns"] = _minus(lat.get("p50"), clat.get("p50"))
        summary["service_minus_control_p99_ns"] = _minus(lat.get("p99"), clat.get("p99"))
        summary["service_minus_control_cpu_ns_per_packet"] = _minus(
            summary["cpu_ns_per_packet"], c["cpu_ns_per_packet"])
    sync_keys = sorted({k for r in reps for k in (r.get("sync") or {})})
    if sync_keys:
        summary["sync"] = {}
        for key in sync_keys:
            values = [r["sync"][key] for r in reps  # type: ignore[typeddict-item]
                      if (r.get("sync") or {}).get(key) is not None]
            summary["sync"][key] = float(statistics.median(values)) if values else None
    return summary


def _overhead_pct(overhead: Mapping[str, Any] | None,
                  cpu: float | None) -> dict[str, float] | None:
    """{probe set: its added ns per packet as % of ``cpu``} (None: nothing to relate)."""
    if not overhead or not cpu:
        return None
    pct = {k.removesuffix("_ns_per_packet"): 100 * v / cpu for k, v in overhead.items()
           if k.endswith("_ns_per_packet") and k != "none_ns_per_packet"
           and isinstance(v, int | float)}
    return pct or None


def _kfunc_summary(reps: list[RepetitionDoc]) -> dict[str, dict[str, float | None]]:
    """kfunc_ns_per_packet: per function, summed time over summed delivered packets."""
    ns: dict[str, int] = {}
    delivered = 0
    for r in reps:
        if r.get("kfunc") is None:
            continue
        delivered += r["delivered"]
        for name, f in r["kfunc"].items():  # type: ignore[union-attr]
            ns[name] = ns.get(name, 0) + int(f.get("total_ns") or 0)
    if not ns:
        return {}
    return {"kfunc_ns_per_packet": {k: v / delivered if delivered else None
                                    for k, v in ns.items()}}


# -- environment ---------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Processor", "cpu model"):
            return value.strip()
    return platform.processor() or None


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    """First line of a short command's output, or None if it is absent, fails or hangs."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                           cwd=cwd, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    lines = [ln.strip() for ln in (p.stdout or p.stderr).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _bcc_version() -> str | None:
    # Debian's python3-bpfcc has no dist-info (and PyPI's "bcc" is an unrelated
    # package), so read bcc/version.py without importing bcc (which loads libbcc).
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", _read(f"{d}/version.py") or "")
        if m:
            return m.group(1)
    return None


def tool_versions() -> dict[str, str | None]:
    """Versions of the tools and libraries whose behaviour the numbers depend on (None: absent)."""
    return {
        "iptables": _run(["iptables", "--version"]),
        "iptables-legacy": _run(["iptables-legacy", "--version"]),
        "iptables-nft": _run(["iptables-nft", "--version"]),
        "nft": _run(["nft", "--version"]),
        "tcpreplay": _run(["tcpreplay", "--version"]),
        "bcc": _bcc_version(),
        "pyroute2": _dist_version("pyroute2"),
        "scapy": _dist_version("scapy"),
        "numpy": _dist_version("numpy"),
    }


def git_state(checkout: Path = CHECKOUT) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the work tree has changes) of ``checkout``.

    (None, None) outside git."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=checkout)
    if not commit:
        return None, None
    try:
        p = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                           timeout=TOOL_TIMEOUT_S, cwd=checkout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return commit, None
    return commit, (bool(p.stdout.strip()) if p.returncode == 0 else None)


def capture_environment(where: Literal["host", "vm"] = "host",
                        vm: VmDoc | Mapping[str, str] | None = None) -> EnvironmentDoc:
    """The environment of this process: kernel, CPU, governor, versions, git state.

    ``where`` says whether this runs on the host or inside the harness's VM;
    for "vm", ``vm`` gives {"accel": "kvm" | "tcg", "kernel": ...} (TCG makes
    absolute times slower, so results must say so).
    """
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    vm_doc: VmDoc | None = None
    if where == "vm":
        if not vm or vm.get("accel") not in VM_ACCELS or not vm.get("kernel"):
            raise ValueError(f"where='vm' needs vm={{'accel': one of {VM_ACCELS}, "
                             f"'kernel': ...}}, got {vm!r}")
        vm_doc = VmDoc(accel=vm["accel"], kernel=str(vm["kernel"]))  # type: ignore[typeddict-item]
    elif vm is not None:
        raise ValueError("vm is only meaningful with where='vm'")
    uname = platform.uname()
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    commit, dirty = git_state()
    return EnvironmentDoc(
        kernel_release=uname.release,
        kernel_version=uname.version,
        where=where,
        vm=vm_doc,
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count(),
        governor=governor.strip() if governor else None,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        kpbench=_dist_version("kpbench"),
        tools=tool_versions(),
        git_commit=commit,
        git_dirty=dirty,
        hostname=socket.gethostname(),
        machine_id=machine_id(),
    )


MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_id(files: tuple[str, ...] = MACHINE_ID_FILES) -> str | None:
    """8 hex digits that name this machine: a keyed hash of its machine id, or None.

    machine-id(5) asks applications not to publish the id itself (results are
    committed and shared), so only a hash keyed with this program's name is
    kept. A ``kpbench vm`` guest shares the host's /etc, hence its id: the
    same machine, told apart by ``where`` and the kernel.
    """
    for f in files:
        raw = (_read(f) or "").strip()
        if raw:
            return hashlib.sha256(f"kpbench:{raw}".encode()).hexdigest()[:8]
    return None


# -- paths ---------------------------------------------------------------------------------

def _slug(text: str, fallback: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")
    return s or fallback


def machine_name(environment: Mapping[str, Any] | None = None) -> str:
    """The folder a run is filed under: host name, machine id, where, kernel.

    E.g. ``bench-01-3f2a9c1e-host-6.18.44`` for a host run and
    ``bench-01-3f2a9c1e-vm-tcg-6.1.0-57-amd64`` for a ``kpbench vm`` run on
    the same machine: the host name alone is shared by machines made from one
    image and by a host and its VM guests, whose numbers are not comparable.
    """
    env = environment if environment is not None else capture_environment()
    host = _slug(str(env.get("hostname") or "").split(".")[0], "unknown-machine")
    parts = [host, env.get("machine_id") or "noid", env.get("where") or "host"]
    vm = env.get("vm")
    if vm:
        parts.append(str(vm.get("accel")))
    parts.append(str(env.get("kernel_release") or "unknown-kernel"))
    return _slug("-".join(parts), "unknown-machine")


def result_path(results_dir: str | Path, scenario_name: str,
                environment: EnvironmentDoc | None = None,
                now: _dt.datetime | None = None) -> Path:
    """Where a run's result goes: ``<dir>/<machine>/<date>_<commit>[-dirty]_<scenario>.json``
    (``<machine>``: :func:`machine_name`).

    The date carries the time to the second (``20261129T143012``) so that two
    runs of one scenario on one day do not collide. Results are laid out by
    machine first because numbers from different machines are not comparable.
    """
    env = environment if environment is not None else capture_environment()
    commit, dirty = env["git_commit"], env["git_dirty"]
    stamp = (now or _dt.datetime.now(_dt.UTC)).strftime("%Y%m%dT%H%M%S")
    rev = (commit[:12] if commit else "nogit") + ("-dirty" if dirty else "")
    name = f"{stamp}_{rev}_{_slug(scenario_name, 'scenario')}.json"
    return Path(results_dir) / machine_name(env) / name


# -- writing -------------------------------------------------------------------------------

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


# -- reading -------------------------------------------------------------------------------

# The result document's JSON Schema (draft 2020-12), published for other tools too.
SCHEMA_PATH = CHECKOUT / "docs" / "result.schema.json"


@functools.cache
def _schema_validator() -> Any:
    # jsonschema-rs: the pure-Python jsonschema takes ~10 s on a baseline's 200 000
    # histogram buckets, this ~0.1 s.
    import jsonschema_rs

    with SCHEMA_PATH.open(encoding="utf-8") as f:
        return jsonschema_rs.Draft202012Validator(json.load(f))


def _json_path(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"), (type(None), "null"))


def _schema_error(error: Any) -> tuple[list[str | int], str]:
    """Where a schema error is (a JSON path) and what it is, in a short line."""
    path = list(error.instance_path)
    kind, value = error.kind, error.instance
    if isinstance(kind, type(kind).Required):
        return [*path, kind.property], "missing"
    if isinstance(kind, type(kind).Type):
        got = next(name for t, name in _JSON_TYPES if isinstance(value, t))
        return path, f"expected {' or '.join(kind.types)}, got {got} {brief(value)}"
    if isinstance(kind, type(kind).Enum):
        return path, f"{brief(value)} is not one of {', '.join(map(str, kind.options))}"
    if isinstance(kind, type(kind).Constant):
        return path, f"{brief(value)} is not {kind.expected_value!r}"
    return path, str(error.message)


def validate_result(doc: Any, source: str) -> ResultDoc:
    """Check a parsed document is a result this version reads; InputError says what to do.

    The document is checked against docs/result.schema.json (every field's type),
    then for what a schema cannot say: histograms that add up, one set of histogram
    parameters per point, pooled runs' shares that add up to the repetitions.
    """
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"not a kpbench result (kind is {brief(kind)}, expected {KIND!r}); "
                         f"pass a file that `kpbench run` wrote", source=source)
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"schema_version is {brief(version)}, expected an integer; the file "
                         f"is damaged or was not written by kpbench", source=source)
    if version > SCHEMA_VERSION:
        raise InputError(f"schema_version {version} is newer than this kpbench reads "
                         f"({SCHEMA_VERSION}); upgrade kpbench (git pull in the checkout) "
                         f"to read it", source=source)
    if version == 1:
        doc = upgrade_v1(doc)
        version = SCHEMA_VERSION
    if version < SCHEMA_VERSION:
        raise InputError(f"schema_version {version} is older than this kpbench reads "
                         f"({SCHEMA_VERSION}); read it with the kpbench commit that wrote it "
                         f"(environment.git_commit) or re-run the scenario", source=source)
    for error in _schema_validator().iter_errors(doc):
        path, message = _schema_error(error)
        obj = _json_path(path[:2]) if path[:1] == ["points"] and len(path) > 1 else None
        field = _json_path(path[2:] if obj else path) or None
        raise InputError(f"{message}; the file is damaged or not a kpbench result (see "
                         f"{SCHEMA_PATH.relative_to(CHECKOUT)})", source=source, obj=obj,
                         field=field)
    for i, p in enumerate(doc["points"]):
        _check_histograms(p, source, f"points[{i}]")
        if "per_run" in p:
            _check_per_run(p, source, f"points[{i}]")
    return doc  # type: ignore[return-value]


def _check_histograms(p: dict[str, Any], source: str, obj: str) -> None:
    for key in ("latency_hist", "transit_hist"):
        params = set()
        for j, rep in enumerate(p["repetitions"]):
            if rep.get(key) is None:
                continue
            try:
                params.add(stats.Histogram.check_json(rep[key]))
            except ValueError as e:
                raise InputError(f"{e}; the file is damaged", source=source, obj=obj,
                                 field=f"repetitions[{j}].{key}") from None
        if len(params) > 1:
            raise InputError(f"the repetitions' histograms have different parameters "
                             f"{sorted(params)}; they cannot be merged", source=source,
                             obj=obj, field=f"repetitions[].{key}")


V1_SYNC_NOTE = ("schema 1 recorded render + apply (summed over both nodes in packet "
                "scenarios): not the datapath's per-node apply time; re-record the result")


def _is_v1_breakdown(rep: Any) -> bool:
    """Version 1 appended the breakdown repetition to ``repetitions``: the one that took
    no latency but drops, transit or kernel-function time."""
    return (isinstance(rep, dict) and rep.get("latency_hist") is None
            and any(rep.get(k) is not None for k in ("drops", "transit_hist", "kfunc")))


def _move_v1_breakdown(p: dict[str, Any]) -> bool:
    """Move a version 1 point's breakdown repetitions to ``breakdown`` (each run's share
    of a pooled point shrinks by its own); True if any moved."""
    reps = p.get("repetitions")
    if not isinstance(reps, list) or not any(_is_v1_breakdown(r) for r in reps):
        return False
    shares = p.get("per_run")
    if isinstance(shares, list) and all(isinstance(r, dict) and isinstance(
            r.get("repetitions"), int) for r in shares):
        start = 0
        for share in shares:
            mine = reps[start:start + share["repetitions"]]
            start += share["repetitions"]
            share["repetitions"] -= sum(_is_v1_breakdown(r) for r in mine)
    p["breakdown"] = next(r for r in reversed(reps) if _is_v1_breakdown(r))
    p["repetitions"] = [r for r in reps if not _is_v1_breakdown(r)]
    return True


def upgrade_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """A schema 1 document read as schema 2 (see the version history above), in place.

    Sync times of version 1 mixed kpbench's render into the datapath's apply
    and, in packet scenarios, summed both nodes: they cannot be split, so they
    become null with :data:`V1_SYNC_NOTE` under the point's ``missing``. A sync
    point's repetitions measured ``apply`` and ``render`` apart: those stay.
    """
    def items(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []  # validate_result names the damage

    for p in items(doc.get("points")):
        if not isinstance(p, dict):
            continue
        had = False
        for setup in [p.get("setup"), *(r.get("setup") for r in items(p.get("per_run"))
                                        if isinstance(r, dict))]:
            if isinstance(setup, dict):
                had |= setup.get("sync_seconds") is not None
                setup.update(sync_seconds=None, sync_render_seconds=None, sync_node_seconds=[])
        for rep in items(p.get("repetitions")):
            if isinstance(rep, dict) and isinstance(rep.get("sync"), dict):
                rep["sync"].pop("total", None)
        summary = p.get("summary")
        if isinstance(summary, dict) and isinstance(summary.get("sync"), dict):
            summary["sync"].pop("total", None)
        if _move_v1_breakdown(p):
            p.pop("summary", None)  # pooled with the breakdown: computed again when read
        if had and isinstance(p.setdefault("missing", {}), dict):
            p["missing"]["sync_seconds"] = V1_SYNC_NOTE
    doc["schema_version"] = SCHEMA_VERSION
    doc["upgraded_from"] = 1
    return doc


def _check_per_run(p: dict[str, Any], source: str, obj: str) -> None:
    shares = p["per_run"]
    if sum(r["repetitions"] for r in shares) != len(p["repetitions"]):
        raise InputError(f"counts {sum(r['repetitions'] for r in shares)} repetitions, the "
                         f"point has {len(p['repetitions'])}; the file is damaged",
                         source=source, obj=obj, field="per_run")


def runs_of(point: PointDoc) -> list[PointDoc]:
    """The point as each run measured it: one point per run of a pooled baseline
    (its repetitions, its setup, its own summary), or ``[point]`` for a single run."""
    shares = point.get("per_run")
    if not shares:
        return [point]
    out: list[PointDoc] = []
    start = cstart = 0
    for share in shares:
        sub: Any = {k: v for k, v in point.items() if k not in ("per_run", "summary")}
        sub["repetitions"] = point["repetitions"][start:start + share["repetitions"]]
        if point.get("control") is not None:
            sub["control"] = point["control"][cstart:cstart + share.get("control", 0)]
            cstart += share.get("control", 0)
        sub["setup"] = {**point["setup"], **share["setup"]}
        sub["summary"] = summarise_point(sub)
        start += share["repetitions"]
        out.append(sub)
    return out


def load_result(path: str | Path) -> ResultDoc:
    """Read and validate a result file (InputError, one line, if it cannot be used)."""
    src = str(path)
    return validate_result(parse_json(read_input(path, MAX_RESULT_BYTES), src), src)


def iter_points(doc: ResultDoc) -> Iterator[PointDoc]:
    """The points of a result, each with a summary (computed if the file lacks one)."""
    for p in doc["points"]:
        if "summary" not in p or p["summary"] is None:
            p = dict(p)  # type: ignore[assignment]
            p["summary"] = summarise_point(p)
        yield p
