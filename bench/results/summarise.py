"""A point's summary, pooled over its repetitions.

Rules the summary follows (bench.analysis.stats): latency percentiles come
from the merge of the repetitions' histograms, never from averaging
per-repetition percentiles; a measurement no repetition took is None, never
zero. :func:`summarise_point` documents each figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import Any

from bench.analysis import stats
from bench.results.schema import (
    LATENCY_PATHS,
    ControlSummaryDoc,
    PointDoc,
    RepetitionDoc,
    SummaryDoc,
    is_socket_point,
)

#: How a summary reads a repetition's histogram (``key``: latency_hist, transit_hist):
#: parsed from the document, or the read model's cached one (bench.results.model).
HistogramOf = Callable[[RepetitionDoc, str], "stats.Histogram | None"]


def parse_histogram(rep: RepetitionDoc, key: str) -> stats.Histogram | None:
    """The repetition's ``key`` histogram parsed from its document (None: not measured)."""
    h = rep.get(key)
    return stats.Histogram.from_json(h) if h is not None else None  # type: ignore[arg-type]


def _merged(reps: list[RepetitionDoc], key: str,
            hist: HistogramOf) -> dict[str, float | int | None] | None:
    hists = [h for r in reps if (h := hist(r, key)) is not None]
    if not hists:
        return None
    merged = stats.merge(hists)
    if merged.count == 0:
        return None
    return stats.summary(merged)


def _traffic(reps: list[RepetitionDoc], hist: HistogramOf) -> dict[str, Any]:
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
        # The CPU figures' own packets: those of the repetition's cpu pass.
        n = r.get("cpu_delivered", r["delivered"])
        if r.get("softirq_ns") is not None:
            cpu_ns += r["softirq_ns"] + (r.get("process_ns") or 0)  # type: ignore[operator]
            cpu_pkts += n
            softirq_ns += r["softirq_ns"]  # type: ignore[operator]
            softirq_pkts += n
            if r.get("process_ns") is not None:
                process_ns += r["process_ns"]  # type: ignore[operator]
                process_pkts += n
        elif r.get("cpu_ns_per_packet") is not None:
            cpu_ns += r["cpu_ns_per_packet"] * n  # type: ignore[operator]
            cpu_pkts += n
    out = {
        "delivered_pps": spanned / span if span > 0 else None,
        "loss": 1 - delivered / sent if sent > 0 else None,
        "latency_ns": _merged(reps, "latency_hist", hist),
        "cpu_ns_per_packet": cpu_ns / cpu_pkts if cpu_pkts > 0 else None,
        "softirq_ns_per_packet": softirq_ns / softirq_pkts if softirq_pkts > 0 else None,
        "process_ns_per_packet": process_ns / process_pkts if process_pkts > 0 else None,
    }
    by_path = _by_path(reps, hist)
    if by_path is not None:
        out["latency_by_path_ns"] = by_path
    return out


def _by_path(reps: list[RepetitionDoc],
             hist: HistogramOf) -> dict[str, dict[str, float | int | None] | None] | None:
    """Per path (LATENCY_PATHS): the merged latency summary and the path's ``share`` of
    the packets of both; None when no repetition split its latency by path."""
    if not any(key in r for r in reps for _, key in LATENCY_PATHS):
        return None
    parts = {path: _merged(reps, key, hist) for path, key in LATENCY_PATHS}
    total = sum(int(p["count"] or 0) for p in parts.values() if p)
    for p in parts.values():
        if p:
            p["share"] = int(p["count"] or 0) / total
    return parts


def _minus(a: float | int | None, b: float | int | None) -> float | None:
    return float(a) - float(b) if a is not None and b is not None else None


def summarise_point(point: PointDoc, hist: HistogramOf = parse_histogram) -> SummaryDoc:
    """The point's summary, pooled over its repetitions (``hist`` reads their histograms).

    - latency_ns / transit_ns: count, min, mean, p50, p90, p99, p99.9, max of
      the MERGED histograms of all repetitions (None if no repetition has one);
    - achieved_pps: total packets over total sender time, where a repetition's
      time is sent / achieved_pps (repetitions without a rate are left out);
      offered_pps: the mean of the offered rates;
    - delivered_pps: measured at the receiver, sum(delivered - 1) over the sum
      of the repetitions' arrival spans (None where no span was recorded);
    - loss: 1 - sum(delivered) / sum(sent);
    - cpu_ns_per_packet: sum(softirq_ns + process_ns) / sum(cpu_delivered) over the
      repetitions that measured it (a repetition with only cpu_ns_per_packet
      counts as cpu_ns_per_packet x delivered), with softirq_ns_per_packet and
      process_ns_per_packet, its two parts (process: None where no repetition
      measured it);
    - probe_overhead_pct: per probe set, the probes' added ns per packet
      (``probe_overhead``) as a percentage of cpu_ns_per_packet;
    - drops, transit_ns, kfunc_ns_per_packet: from the breakdown repetition
      (``point["breakdown"]``), which nothing else is pooled with;
    - latency_by_path_ns: per path (schema.LATENCY_PATHS: the backend pod on the entry
      node, or on another), the merged histograms' summary and the path's ``share``;
    - control, service_minus_control_*: the paired control's figures (the same
      pooling over ``point["control"]``) and the Service's minus them.
    """
    if is_socket_point(point):
        return _summarise_sockets(point, hist)
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
    traffic = _traffic(reps, hist)

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
        transit_ns=_merged(detail, "transit_hist", hist),
        **_kfunc_summary(detail),
    )
    if "latency_by_path_ns" in traffic:
        summary["latency_by_path_ns"] = traffic["latency_by_path_ns"]
    control = point.get("control")
    if control:
        c = _traffic(control, hist)
        summary["control"] = ControlSummaryDoc(**c)  # type: ignore[typeddict-item]
        lat, clat = summary["latency_ns"] or {}, c["latency_ns"] or {}
        summary["service_minus_control_p50_ns"] = _minus(lat.get("p50"), clat.get("p50"))
        summary["service_minus_control_p99_ns"] = _minus(lat.get("p99"), clat.get("p99"))
        summary["service_minus_control_cpu_ns_per_packet"] = _minus(
            summary["cpu_ns_per_packet"], c["cpu_ns_per_packet"])
        paths, cpaths = traffic.get("latency_by_path_ns"), c.get("latency_by_path_ns")
        if paths and cpaths:
            summary["service_minus_control_p50_by_path_ns"] = {
                path: _minus((paths.get(path) or {}).get("p50"),
                             (cpaths.get(path) or {}).get("p50"))
                for path, _ in LATENCY_PATHS}
    sync_keys = sorted({k for r in reps for k in (r.get("sync") or {})})
    if sync_keys:
        summary["sync"] = {}
        for key in sync_keys:
            values = [r["sync"][key] for r in reps  # type: ignore[typeddict-item]
                      if (r.get("sync") or {}).get(key) is not None]
            summary["sync"][key] = float(statistics.median(values)) if values else None
    disruption = _disruption_summary(reps)
    if disruption:
        summary["disruption"] = disruption
    return summary


#: A disruption repetition's event figures (bench.measure.disruption) the summary pools.
DISRUPTION_FIGURES = ("stall_ms", "lost", "excess_p99_ns", "recovery_ms",
                      "off_baseline_after_ms", "event_ms",
                      "baseline_stall_ms", "baseline_lost", "baseline_p99_ns", "event_p99_ns",
                      # churn (bench.measure.churn): its rate and the syncs it ran
                      "churn_per_s", "syncs", "syncs_per_s", "sync_cpu_s_per_s",
                      # tcp-rr background (bench.measure.rr_background): TCP's own repairs
                      "retransmits", "reconnects")
CHURN_FIGURES = DISRUPTION_FIGURES[-6:-2]
TCP_RR_FIGURES = DISRUPTION_FIGURES[-2:]


def _disruption_summary(reps: list[RepetitionDoc]) -> dict[str, float | None]:
    """Disruption points: per event figure, the median over the repetitions (None: no
    repetition has it; recovery_ms None in a repetition means not back within after_s)."""
    figs = [r["disruption"] for r in reps if isinstance(r.get("disruption"), dict)]
    if not figs:
        return {}
    out: dict[str, float | None] = {}
    for key in DISRUPTION_FIGURES:
        values = [f[key] for f in figs if isinstance(f.get(key), int | float)]
        if key in CHURN_FIGURES + TCP_RR_FIGURES and not any(key in f for f in figs):
            continue  # another event's or background's point
        out[key] = float(statistics.median(values)) if values else None
    out["not_recovered"] = float(sum(1 for f in figs if f.get("recovery_ms") is None))
    return out


def _socket_figures(reps: list[RepetitionDoc], hist: HistogramOf) -> dict[str, Any]:
    """Rates, RTT and CPU per transaction of socket repetitions, pooled."""
    socks = [r["socket"] for r in reps if r.get("socket")]  # type: ignore[typeddict-item]
    seconds = sum(s["seconds"] for s in socks)
    done = sum(s["transactions"] for s in socks)
    streams = [s for s in socks if s.get("throughput_bps") is not None]
    stream_s = sum(s["seconds"] for s in streams)
    cpu: dict[str, float | None] | None = None
    if done:
        parts = {}
        for part, key in (("softirq", "softirq_ns"), ("datapath", "datapath_ns"),
                          ("generator", "generator_cpu_ns"),
                          ("responder", "responder_cpu_ns")):
            values = [s.get(key) for s in socks]
            # A part counts only if every repetition measured it (else it would be diluted).
            parts[part] = (sum(values) / done  # type: ignore[arg-type]
                           if values and all(v is not None for v in values) else None)
        measured = [v for v in parts.values() if v is not None]
        cpu = {"total": sum(measured) if measured else None, **parts}
    return {
        "transactions_per_s": done / seconds if done and seconds > 0 else None,
        "throughput_bps": (sum(s["throughput_bps"] * s["seconds"] for s in streams) / stream_s
                           if stream_s > 0 else None),
        "rtt_ns": _merged(reps, "rtt_hist", hist),
        "cpu_ns_per_transaction": cpu,
        "failed_connections": sum(s["failed"] for s in socks),
    }


def _summarise_sockets(point: PointDoc, hist: HistogramOf) -> SummaryDoc:
    """A socket point's summary (the packet figures null):

    - transactions_per_s: completed transactions over measured seconds, all repetitions;
    - throughput_bps (tcp-stream): the repetitions' rates weighted by their seconds;
    - rtt_ns: the merged per-transaction RTT histograms (like latency_ns);
    - cpu_ns_per_transaction: softirq (NET_RX, machine-wide), datapath (its own
      processes, e.g. the userspace proxy; None for a datapath that runs none), generator
      and responder (their cgroups) ns per completed transaction, and their total (the
      sum of the parts measured);
    - failed_connections, retransmits, resets, conntrack_entries_created: sums;
    - direct, service_minus_direct_*: the paired direct path (``point["control"]``:
      the same workload to a backend pod's own address) and the Service minus it;
    - one_way_ns: request and response one-way times from the breakdown repetition
      (``point["breakdown"]``, the one-way probe), never pooled with the measured ones;
      the direct path's (``point["control_breakdown"]``) under direct.one_way_ns, and
      service_minus_direct_request_p50_ns / _response_p50_ns;
    - at_generator_ceiling, offered_not_reached: :func:`ceiling_flags`.
    """
    reps = point.get("repetitions") or []
    socks = [r["socket"] for r in reps if r.get("socket")]  # type: ignore[typeddict-item]
    figures = _socket_figures(reps, hist)
    offered = [s["offered_tps"] for s in socks if s.get("offered_tps") is not None]
    created = [s["conntrack_entries_created"] for s in socks
               if s.get("conntrack_entries_created") is not None]
    summary = SummaryDoc(
        offered_pps=None, achieved_pps=None, delivered_pps=None, loss=None, latency_ns=None,
        cpu_ns_per_packet=None, drops=None, transit_ns=None,
        loop=point.get("loop") or "closed", flows=int(point.get("flows") or 0),
        offered_tps=sum(offered) / len(offered) if offered else None,
        retransmits=sum(s["retransmits"] for s in socks),
        resets=sum(s["resets"] for s in socks),
        conntrack_entries_created=sum(created) if created else None,
        **figures,
    )
    summary.update(ceiling_flags(summary, point.get("generator_ceiling")))  # type: ignore[typeddict-item]
    control = point.get("control")
    if control:
        d = _socket_figures(control, hist)
        summary["direct"] = d
        rtt, drtt = figures["rtt_ns"] or {}, d["rtt_ns"] or {}
        cpu, dcpu = figures["cpu_ns_per_transaction"] or {}, d["cpu_ns_per_transaction"] or {}
        summary["service_minus_direct_rtt_p50_ns"] = _minus(rtt.get("p50"), drtt.get("p50"))
        summary["service_minus_direct_rtt_p99_ns"] = _minus(rtt.get("p99"), drtt.get("p99"))
        summary["service_minus_direct_cpu_ns_per_transaction"] = _minus(cpu.get("total"),
                                                                        dcpu.get("total"))
        summary["service_minus_direct_transactions_per_s"] = _minus(
            figures["transactions_per_s"], d["transactions_per_s"])
    one_way = _one_way(point.get("breakdown"), hist)
    if one_way is not None:
        summary["one_way_ns"] = one_way
        direct = _one_way(point.get("control_breakdown"), hist)
        if direct is not None:
            summary.setdefault("direct", {})["one_way_ns"] = direct
            for part in ("request", "response"):
                summary[f"service_minus_direct_{part}_p50_ns"] = _minus(  # type: ignore[literal-required]
                    (one_way[part] or {}).get("p50"), (direct[part] or {}).get("p50"))
    return summary


def _one_way(rep: RepetitionDoc | None, hist: HistogramOf,
             ) -> dict[str, dict[str, float | int | None] | None] | None:
    """A socket breakdown repetition's one-way parts, {"request", "response"} each like
    rtt_ns (None: that direction had no sample); None when it has no one-way probe."""
    if not rep or "one_way" not in rep:
        return None
    return {part: _merged([rep], f"one_way_{part}_hist", hist)
            for part in ("request", "response")}
# A socket point at or above this fraction of its generator's ceiling (point
# ["generator_ceiling"], bench.measure.generator_ceiling) is at the ceiling. The ceiling
# run has no hop and no rule, so any real path is slower; but it is a single 1 s run on
# a shared machine, whose rate varies by a few per cent between runs: within 10 % of it,
# a point cannot be told apart from the generator's own limit.
AT_CEILING = 0.90
# An open-loop point that achieved less than this fraction of its offered rate did not
# sustain it (sockperf and kpb-crr pace to within a per cent or two when they can).
OFFERED_REACHED = 0.95


def ceiling_flags(summary: Mapping[str, Any],
                  ceiling: Mapping[str, Any] | None) -> dict[str, bool | None]:
    """A socket point's ``at_generator_ceiling`` (its rate >= :data:`AT_CEILING` of the
    ceiling's, transactions/s or bits/s for a stream; None: no ceiling or no rate) and
    ``offered_not_reached`` (open loop: achieved < :data:`OFFERED_REACHED` of offered;
    None for a closed loop)."""
    at = None
    if ceiling is not None:
        rate_key = ("throughput_bps" if summary.get("throughput_bps") is not None
                    else "transactions_per_s")
        rate, top = summary.get(rate_key), ceiling.get(rate_key)
        if rate is not None and top:
            at = bool(rate >= AT_CEILING * top)
    offered, achieved = summary.get("offered_tps"), summary.get("transactions_per_s")
    short = None
    if summary.get("loop") == "open" and offered:
        short = achieved is None or achieved < OFFERED_REACHED * offered
    return {"at_generator_ceiling": at, "offered_not_reached": short}


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

