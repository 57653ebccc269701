"""The metrics a comparison looks at, and how each is read out of a result point.

Each metric is one row of :data:`METRICS`: its name (what ``--fail-on`` and
the tables call it), how to read one sample per repetition (what the
significance test compares), how to read the figure reported for the point
(pooled over the repetitions, as bench.results.summarise.summarise_point computes it:
percentiles from the merged histograms, never averaged), which direction is
better, and its unit. A new metric is one more row.

Points are matched across results by :func:`point_key`: the coordinates
that define what was measured, not the point's ``id`` string (which a writer
may choose freely).

Packet metrics read the packet keys of a repetition, which a socket point's
repetitions hold neutral (nothing sent, no histogram, no CPU figure), and the
socket metrics read only ``rtt_hist`` and ``socket``, which packet repetitions
lack: neither family yields a sample from the other's points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from bench.analysis import stats
from bench.results.model import Point, Repetition, as_point
from bench.results.schema import LATENCY_PATHS, PointDoc, is_socket_point

Better = Literal["lower", "higher"]
#: A point read into the model, or its document (read into the model when asked).
PointLike = Point | PointDoc
#: variant, workload, services, endpoints, rate_pps, position
PointKey = tuple[str, str, int, int, int | None, str]


@dataclass(frozen=True)
class Metric:
    """One comparable quantity of a point.

    ``samples`` returns one value per repetition (an empty list when the
    point did not measure it); ``pooled`` the point's reported figure, or
    None. ``better`` says which way is an improvement.
    """

    name: str
    samples: Callable[[PointLike], list[float]]
    pooled: Callable[[PointLike], float | None]
    better: Better
    unit: str
    description: str
    # Relative resolution of one figure (a latency percentile is a histogram bucket, up
    # to 1/sub_buckets wide): runs that agree to within it have not shown zero spread.
    resolution: float = 0.0
    # A difference of two figures (Service minus its paired control): near zero and of
    # either sign, so its change is judged in the metric's unit, not in % of itself.
    difference: bool = False
    # A difference in a unit no absolute minimum effect is given in (transactions/s):
    # its change is judged as a % of this figure of BASE's point (the direct path's
    # rate), against the relative minimum effect and a % gate.
    relative_to: Callable[[PointLike], float | None] | None = None
    # One figure per set-up: a packet scenario syncs and settles once per datapath and
    # scale, and every point measured on that set-up holds a copy (compare judges it
    # once: bench.analysis.compare.compare_runs).
    per_setup: bool = False

    @property
    def absolute(self) -> bool:
        """Whether its change, minimum effect and gate are in its unit (not in %)."""
        return self.difference and self.relative_to is None


def socket_load(point: PointLike) -> str:
    """A socket point's workload with its load: ``tcp-crr x8 closed``, ``tcp-rr x8 open@5000``
    (flows, loop and the open loop's offered transactions/s)."""
    rate = point.get("rate_tps")
    return (f"{point['workload']} x{point['flows']} {point.get('loop') or 'closed'}"
            + (f"@{rate:g}" if rate is not None else ""))


def point_key(point: PointLike) -> PointKey:
    """The identity of a point: what was measured, independent of its ``id`` string.

    A socket point's workload element carries its load (:func:`socket_load`): points
    that differ only in flows, loop or offered rate are different points.
    """
    position = point["position"]
    if position == "index":
        # An explicit index only identifies the point together with its value.
        position = f"index={point.get('position_index')}"
    workload = socket_load(point) if is_socket_point(point) else point["workload"]
    return (point["variant"] or point["datapath"], workload, int(point["services"]),
            int(point["endpoints"]), point["rate_pps"], position)


def key_label(key: PointKey) -> str:
    """A short readable name of a point key, e.g. ``nftables udp-new s=1000 e=10 r=10000 last``
    (a socket point's, whose load is in its workload: ``nftables tcp-rr x8 closed s=1000 e=10
    last``)."""
    variant, workload, services, endpoints, rate, position = key
    # Packet workloads' names have no space; a socket point has no packet rate.
    shown_rate = "" if " " in workload else f"r={'top' if rate is None else rate} "
    return f"{variant} {workload} s={services} e={endpoints} {shown_rate}{position}"


# -- extractors ----------------------------------------------------------------------------
# Each reads the point through the read model (bench.results.model): histograms parsed,
# and percentiles taken, once per repetition however many metrics ask.

def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def _per_repetition(value: Callable[[Repetition], Any]) -> Callable[[PointLike], list[float]]:
    """One sample per measured repetition: ``value`` of each (None: not measured)."""
    def samples(point: PointLike) -> list[float]:
        return _finite(value(r) for r in as_point(point).repetitions)
    return samples


def _rep_latency(q: str) -> Callable[[PointLike], list[float]]:
    return _per_repetition(lambda r: r.latency_percentile(q))


_rep_cpu = _per_repetition(lambda r: r.cpu_ns_per_packet)
_rep_delivered_pps = _per_repetition(lambda r: r.delivered_pps)
_rep_loss = _per_repetition(lambda r: r.loss)


def _summary_latency(q: str) -> Callable[[PointLike], float | None]:
    def pooled(point: PointLike) -> float | None:
        return (as_point(point).summary.get("latency_ns") or {}).get(q)
    return pooled


def _path_p50(key: str) -> Callable[[Repetition], float | None]:
    """A repetition's p50 on one path (its ``key`` histogram, schema.LATENCY_PATHS)."""
    def value(r: Repetition) -> float | None:
        h = r.histogram(key)
        return h.percentiles([50.0])["p50"] if h is not None and h.count else None
    return value


def _summary_path(path: str, summary_key: str = "latency_by_path_ns",
                  q: str | None = "p50") -> Callable[[PointLike], float | None]:
    def pooled(point: PointLike) -> float | None:
        part = (as_point(point).summary.get(summary_key) or {}).get(path)  # type: ignore[attr-defined]
        return part.get(q) if q is not None and isinstance(part, dict) else part
    return pooled


def _summary(key: str) -> Callable[[PointLike], float | None]:
    def pooled(point: PointLike) -> float | None:
        return as_point(point).summary.get(key)  # type: ignore[return-value]
    return pooled


def _pairs(p: Point) -> list[tuple[Repetition, Repetition]]:
    """(repetition i, the control right after it), by the runner's index ``i``.

    A repetition or control that failed is left out of its list and recorded in
    ``failed_repetitions`` (phase, index): its partner is then left unpaired, not
    paired with the next one. Where those records do not account for every
    attempt (a run split out of a pooled baseline keeps the whole point's), the
    lists are paired in order, as they are where nothing failed.
    """
    reps, control = list(p.repetitions), list(p.control or ())
    failed: dict[str, set[int]] = {"measured": set(), "control": set()}
    for f in p.get("failed_repetitions") or []:
        if f.get("phase") in failed:
            failed[f["phase"]].add(int(f["index"]))
    total = len(reps) + len(failed["measured"])
    if (not failed["measured"] and not failed["control"]) or not control or (
            len(control) + len(failed["control"]) != total
            or any(i >= total for ids in failed.values() for i in ids)):
        return list(zip(reps, control, strict=False))
    kept = {phase: [i for i in range(total) if i not in ids] for phase, ids in failed.items()}
    by_index = dict(zip(kept["control"], control, strict=True))
    return [(r, by_index[i]) for i, r in zip(kept["measured"], reps, strict=True)
            if i in by_index]


def _paired(value: Callable[[Repetition], float | None]) -> Callable[[PointLike], list[float]]:
    """Per pair (repetition i, the control right after it): Service minus control."""
    def samples(point: PointLike) -> list[float]:
        out = []
        for r, c in _pairs(as_point(point)):
            a, b = value(r), value(c)
            if a is not None and b is not None:
                out.append(a - b)
        return _finite(out)
    return samples


def _rep_sync(key: str, workload: Callable[[str], bool]) -> Callable[[PointLike], list[float]]:
    """Per-repetition ``sync[key]`` seconds of the sync points whose workload matches."""
    def samples(point: PointLike) -> list[float]:
        p = as_point(point)
        if not p.is_sync or not workload(p.workload):
            return []
        return _finite(r.sync.get(key) for r in p.repetitions)
    return samples


def _summary_sync(key: str) -> Callable[[PointLike], float | None]:
    def pooled(point: PointLike) -> float | None:
        p = as_point(point)
        return (p.summary.get("sync") or {}).get(key) if p.is_sync else None
    return pooled


def _full_sync_samples(point: PointLike) -> list[float]:
    """Full-sync apply seconds (node 0): each repetition of a sync-full point, else the
    packet point's first sync.

    A packet scenario syncs once per scale (one sample, too few for a test); a
    sync-<change> point's setup holds that same first sync, so it is not counted again.
    """
    p = as_point(point)
    if p.workload == "sync-full":
        return _rep_sync("apply", _any)(p)
    return [] if p.is_sync else _finite([p.setup.get("sync_seconds")])


def _full_sync_pooled(point: PointLike) -> float | None:
    p = as_point(point)
    if p.workload == "sync-full":
        return _summary_sync("apply")(p)
    return None if p.is_sync else p.setup.get("sync_seconds")


def _settled(p: Point) -> bool:
    # A settle that timed out is how long it waited, not a settle time.
    return p.setup.get("settle_converged") is not False


def _settle_samples(point: PointLike) -> list[float]:
    p = as_point(point)
    return _finite([p.setup.get("settle_seconds")]) if _settled(p) and not p.is_sync else []


def _settle_pooled(point: PointLike) -> float | None:
    p = as_point(point)
    return p.setup.get("settle_seconds") if _settled(p) else None


def _any(workload: str) -> bool:
    return True


def _change(workload: str) -> bool:
    return workload != "sync-full"


def _rep_disruption(key: str) -> Callable[[PointLike], list[float]]:
    """Per-repetition event figure ``key`` of a disruption point (docs/disruption.md)."""
    return _per_repetition(lambda r: (r.doc.get("disruption") or {}).get(key))


def _summary_disruption(key: str) -> Callable[[PointLike], float | None]:
    def pooled(point: PointLike) -> float | None:
        return (as_point(point).summary.get("disruption") or {}).get(key)
    return pooled


# -- socket points (bench.results.summarise._summarise_sockets) ------------------------------

def _rep_tps(r: Repetition) -> float | None:
    """A socket repetition's transactions/s: its own figure, else transactions over seconds
    (None for a stream, and for a packet repetition)."""
    s = r.socket
    if not s:
        return None
    if s.get("transactions_per_s") is not None:
        return s["transactions_per_s"]  # type: ignore[no-any-return]
    if s.get("throughput_bps") is None and (s.get("seconds") or 0) > 0 and s.get("transactions"):
        return s["transactions"] / s["seconds"]  # type: ignore[no-any-return]
    return None


def _rep_socket(key: str) -> Callable[[PointLike], list[float]]:
    return _per_repetition(lambda r: r.socket.get(key))


def _rep_rtt(q: str) -> Callable[[PointLike], list[float]]:
    return _per_repetition(lambda r: r.rtt_percentile(q))


def _summary_rtt(q: str) -> Callable[[PointLike], float | None]:
    def pooled(point: PointLike) -> float | None:
        return (as_point(point).summary.get("rtt_ns") or {}).get(q)
    return pooled


#: A socket repetition's CPU parts (summary name, socket key), as the summary pools them.
CPU_PARTS = (("softirq", "softirq_ns"), ("datapath", "datapath_ns"),
             ("generator", "generator_cpu_ns"), ("responder", "responder_cpu_ns"))


def _measured_parts(reps: Iterable[Repetition]) -> list[str]:
    """The CPU parts every socket repetition of ``reps`` measured: the summary counts a
    part only then (else it would be diluted), so a sample counts only those too."""
    socks = [r.socket for r in reps if r.socket]
    return [key for _, key in CPU_PARTS
            if socks and all(s.get(key) is not None for s in socks)]


def _cpu_per_tx(r: Repetition, parts: list[str]) -> float | None:
    s = r.socket
    if not s or not s.get("transactions") or not parts:
        return None
    return sum(s[k] for k in parts) / s["transactions"]  # type: ignore[no-any-return]


def _cpu_per_tx_samples(point: PointLike) -> list[float]:
    """Per repetition: (softirq + datapath + generator + responder) / transactions, of the
    parts the point's every repetition measured."""
    p = as_point(point)
    parts = _measured_parts(p.repetitions)
    return _finite(_cpu_per_tx(r, parts) for r in p.repetitions)


def _cpu_per_tx_pooled(point: PointLike) -> float | None:
    return (as_point(point).summary.get("cpu_ns_per_transaction") or {}).get("total")


def _paired_cpu_per_tx(point: PointLike) -> list[float]:
    """Per pair: the Service's CPU per transaction minus the direct path's, each of the
    parts its own side measured throughout (as the summary's totals)."""
    p = as_point(point)
    sp, cp = _measured_parts(p.repetitions), _measured_parts(p.control or ())
    out = []
    for r, c in _pairs(p):
        a, b = _cpu_per_tx(r, sp), _cpu_per_tx(c, cp)
        if a is not None and b is not None:
            out.append(a - b)
    return _finite(out)


def _direct_tps(point: PointLike) -> float | None:
    return (as_point(point).summary.get("direct") or {}).get("transactions_per_s")


_BUCKET = 1 / stats.DEFAULT_SUB_BUCKETS

METRICS: tuple[Metric, ...] = (
    Metric("p50_latency", _rep_latency("p50"), _summary_latency("p50"), "lower", "ns",
           "median one-way latency (merged histograms)", _BUCKET),
    Metric("p99_latency", _rep_latency("p99"), _summary_latency("p99"), "lower", "ns",
           "99th percentile one-way latency", _BUCKET),
    Metric("p99.9_latency", _rep_latency("p99.9"), _summary_latency("p99.9"), "lower", "ns",
           "99.9th percentile one-way latency", _BUCKET),
    # The same figure on each path a packet can take (schema.LATENCY_PATHS): the mix of
    # the two is the Service's random choice (a udp-established point's 16 flows), so the
    # pooled p50 can sit on either path's mode; each path's own p50 does not.
    *(Metric(f"p50_latency_{path}", _per_repetition(_path_p50(key)), _summary_path(path),
             "lower", "ns", f"median one-way latency of the packets to a pod on the "
             f"{path.replace('_', ' ')}", _BUCKET) for path, key in LATENCY_PATHS),
    Metric("cpu_ns_per_packet", _rep_cpu, _summary("cpu_ns_per_packet"), "lower", "ns/packet",
           "CPU time per delivered packet: NET_RX softirq + the datapath's processes"),
    Metric("delivered_pps", _rep_delivered_pps, _summary("delivered_pps"), "higher",
           "packets/s", "packets delivered to the backends per second, measured at the "
           "receiver (first to last arrival)"),
    Metric("loss", _rep_loss, _summary("loss"), "lower", "fraction",
           "fraction of sent packets not delivered"),
    Metric("sync_full", _full_sync_samples, _full_sync_pooled, "lower", "s",
           "node 0's apply time of a full rule sync (tool + kernel; kpbench's render apart)",
           per_setup=True),
    Metric("sync_change", _rep_sync("apply", _change), _summary_sync("apply"), "lower", "s",
           "node 0's apply time of a partial sync of one change (sync-<change> points)"),
    Metric("sync_kernel", _rep_sync("kernel", _any), _summary_sync("kernel"), "lower", "s",
           "kernel time in the applying tool's syscalls during a sync"),
    Metric("sync_effect", _rep_sync("effect", _any), _summary_sync("effect"), "lower", "s",
           "time from a change to its first effect on traffic"),
    # Settling is timed in rounds of the runner's probe traffic, two at the least: one
    # round more or less is half the shortest figure.
    Metric("settle", _settle_samples, _settle_pooled, "lower", "s",
           "time until new-flow latency stopped drifting after the sync", 0.5,
           per_setup=True),
    # The paired control (the same traffic to the backend pods' own addresses, right after
    # each repetition): what the Service adds, with the machine's drift cancelled.
    Metric("service_minus_control_p50_ns", _paired(lambda r: r.latency_percentile("p50")),
           _summary("service_minus_control_p50_ns"), "lower", "ns",
           "median latency the Service adds over its paired control", difference=True),
    Metric("service_minus_control_p99_ns", _paired(lambda r: r.latency_percentile("p99")),
           _summary("service_minus_control_p99_ns"), "lower", "ns",
           "99th percentile latency the Service adds over its paired control", difference=True),
    *(Metric(f"service_minus_control_p50_{path}_ns", _paired(_path_p50(key)),
             _summary_path(path, "service_minus_control_p50_by_path_ns", None), "lower",
             "ns", f"median latency the Service adds over its paired control, packets to a "
             f"pod on the {path.replace('_', ' ')}", difference=True)
      for path, key in LATENCY_PATHS),
    Metric("service_minus_control_cpu_ns_per_packet", _paired(lambda r: r.softirq_ns_per_packet),
           _summary("service_minus_control_cpu_ns_per_packet"), "lower", "ns/packet",
           "CPU per packet the Service adds over its paired control", difference=True),
    # Disruption points: what an event does to the background traffic (docs/disruption.md).
    Metric("stall_ms", _rep_disruption("stall_ms"), _summary_disruption("stall_ms"), "lower",
           "ms", "disruption: longest time without a delivered background packet "
           "(tcp-rr: a completed transaction)"),
    Metric("lost", _rep_disruption("lost"), _summary_disruption("lost"), "lower", "packets",
           "disruption: background packets (tcp-rr: transactions) sent from the event's "
           "start on and never delivered"),
    Metric("excess_p99_ns", _rep_disruption("excess_p99_ns"),
           _summary_disruption("excess_p99_ns"), "lower", "ns",
           "disruption: background p99 during the event minus its pre-event p99",
           difference=True),
    Metric("sync_cpu_s_per_s", _rep_disruption("sync_cpu_s_per_s"),
           _summary_disruption("sync_cpu_s_per_s"), "lower", "s/s",
           "disruption churn: CPU of the syncs' appliers per second of churn"),
    # Socket points: real connections, one row per figure of their summary.
    Metric("transactions_per_s", _per_repetition(_rep_tps), _summary("transactions_per_s"),
           "higher", "tx/s", "completed transactions per second (socket workloads)"),
    Metric("throughput_bps", _rep_socket("throughput_bps"), _summary("throughput_bps"),
           "higher", "bit/s", "tcp-stream throughput over all its streams"),
    Metric("rtt_p50", _rep_rtt("p50"), _summary_rtt("p50"), "lower", "ns",
           "median per-transaction round-trip time (merged histograms)", _BUCKET),
    Metric("rtt_p99", _rep_rtt("p99"), _summary_rtt("p99"), "lower", "ns",
           "99th percentile per-transaction round-trip time", _BUCKET),
    Metric("rtt_p99.9", _rep_rtt("p99.9"), _summary_rtt("p99.9"), "lower", "ns",
           "99.9th percentile per-transaction round-trip time", _BUCKET),
    Metric("cpu_ns_per_transaction", _cpu_per_tx_samples, _cpu_per_tx_pooled, "lower",
           "ns/transaction", "CPU per completed transaction: NET_RX softirq + the datapath's "
           "processes + generator + responder, of the parts every repetition measured"),
    Metric("failed_connections", _rep_socket("failed"), _summary("failed_connections"),
           "lower", "connections", "failed connections, timeouts, resets mid-transaction, "
           "lost replies"),
    # The paired direct path (the same workload to a backend pod's own address, right
    # after each repetition): what the Service adds to a real connection.
    Metric("service_minus_direct_rtt_p50_ns", _paired(lambda r: r.rtt_percentile("p50")),
           _summary("service_minus_direct_rtt_p50_ns"), "lower", "ns",
           "median RTT the Service adds over the direct path", difference=True),
    Metric("service_minus_direct_rtt_p99_ns", _paired(lambda r: r.rtt_percentile("p99")),
           _summary("service_minus_direct_rtt_p99_ns"), "lower", "ns",
           "99th percentile RTT the Service adds over the direct path", difference=True),
    Metric("service_minus_direct_cpu_ns_per_transaction", _paired_cpu_per_tx,
           _summary("service_minus_direct_cpu_ns_per_transaction"), "lower", "ns/transaction",
           "CPU per transaction the Service adds over the direct path", difference=True),
    # Negative where the Service is slower; a drop is a regression. Judged as a % of the
    # direct path's rate in BASE (no absolute minimum effect exists in tx/s).
    Metric("service_minus_direct_transactions_per_s", _paired(_rep_tps),
           _summary("service_minus_direct_transactions_per_s"), "higher", "tx/s",
           "transactions/s of the Service minus the direct path's", difference=True,
           relative_to=_direct_tps),
)

METRICS_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
