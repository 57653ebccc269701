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
from bench.results.schema import ControlSummaryDoc, PointDoc, RepetitionDoc, SummaryDoc

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
        "latency_ns": _merged(reps, "latency_hist", hist),
        "cpu_ns_per_packet": cpu_ns / cpu_pkts if cpu_pkts > 0 else None,
        "softirq_ns_per_packet": softirq_ns / softirq_pkts if softirq_pkts > 0 else None,
        "process_ns_per_packet": process_ns / process_pkts if process_pkts > 0 else None,
    }


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
    control = point.get("control")
    if control:
        c = _traffic(control, hist)
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
    disruption = _disruption_summary(reps)
    if disruption:
        summary["disruption"] = disruption
    return summary


#: A disruption repetition's event figures (bench.measure.disruption) the summary pools.
DISRUPTION_FIGURES = ("stall_ms", "lost", "excess_p99_ns", "recovery_ms",
                      "off_baseline_after_ms", "event_ms",
                      "baseline_stall_ms", "baseline_lost", "baseline_p99_ns", "event_p99_ns")


def _disruption_summary(reps: list[RepetitionDoc]) -> dict[str, float | None]:
    """Disruption points: per event figure, the median over the repetitions (None: no
    repetition has it; recovery_ms None in a repetition means not back within after_s)."""
    figs = [r["disruption"] for r in reps if isinstance(r.get("disruption"), dict)]
    if not figs:
        return {}
    out: dict[str, float | None] = {}
    for key in DISRUPTION_FIGURES:
        values = [f[key] for f in figs if isinstance(f.get(key), int | float)]
        out[key] = float(statistics.median(values)) if values else None
    out["not_recovered"] = float(sum(1 for f in figs if f.get("recovery_ms") is None))
    return out


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

