"""Summary tables of one result: its environment and one row per measured point.

Shared by ``kpbench show`` and the report. Figures are the point summaries
(bench.results.summarise.summarise_point: percentiles of the merged histograms), in
units people read (µs, pps, %, s).
"""

from __future__ import annotations

from typing import Any

from bench.analysis.metrics import socket_load
from bench.present.tables import Table, fmt_value
from bench.results.environment import commit_label
from bench.results.model import Point, Result, as_result
from bench.results.schema import ResultDoc

#: A result read into the model, or its document (read into the model here).
ResultLike = Result | ResultDoc

# Coordinates shown only when they vary within the result (they are usually fixed).
OPTIONAL_COORDS = (("endpoints", "endpoints"), ("rate_pps", "rate"), ("position", "position"))


def run_line(result: ResultLike) -> str:
    """One line naming the run: scenario, status, dates, commit."""
    doc: Any = as_result(result).doc
    env = doc["environment"]
    commit = commit_label(env)
    merged = doc.get("merged_from")  # a baseline pooled by bench.results.baseline
    pooled = f", pooled from {len(merged)} runs" if isinstance(merged, list) else ""
    return (f"scenario {doc['scenario']['name']}, {doc['status']}, started {doc['started']}, "
            f"finished {doc.get('finished') or '—'}, commit {commit}, run {doc['run_id']}"
            f"{pooled}")


def overhead_line(result: ResultLike) -> str | None:
    """The probes' own cost as the run measured it (bench.measure.overhead), or None if it did not.

    Per probe set: the CPU ns it adds per packet (median of paired rounds, their
    range) and that as a share of the CPU per packet reported at the point where
    it was measured (the first point with a CPU figure).
    """
    point = next((p for p in as_result(result).points if p.probe_overhead), None)
    if point is None:
        return None
    ov = point.probe_overhead
    pct: Any = point.summary.get("probe_overhead_pct") or {}
    parts = []
    for name in ("main", "breakdown"):
        added = ov.get(f"{name}_ns_per_packet")
        if not isinstance(added, int | float):
            continue
        lo, hi = ov.get(f"{name}_ns_per_packet_range") or (added, added)
        share = (f", {pct[name]:.1f} % of cpu/pkt at {point.doc['variant']} {point.workload}"
                 if name in pct else "")
        path = ov.get(f"{name}_pct_of_path")
        share += f", {path:.1f} % of the path's CPU" if isinstance(path, int | float) else ""
        parts.append(f"{name} {added:+,.0f} ns/packet (rounds {lo:+,.0f} to {hi:+,.0f}{share})")
    if not parts:
        return None
    how = {"tcx": ", tc programs as tcx links", "clsact": ", tc programs as clsact filters"}
    line = (f"probe overhead (sender CPU, {ov.get('rounds', '?')} paired rounds"
            f"{how.get(ov.get('tc_attach'), '')}): " + "; ".join(parts))
    window = ov.get("in_window")
    if isinstance(window, dict) and window.get("error"):
        line += f"\n  the probes' programs at the scenario's rate: not measured ({window['error']})"
    elif isinstance(window, dict):
        inside = []
        for name in ("main", "breakdown"):
            added = ov.get(f"programs_{name}_ns_per_packet")
            if not isinstance(added, int | float):
                continue
            at = f"of cpu/pkt at {point.doc['variant']} {point.workload}"
            part = ov.get(f"programs_{name}_in_figure_ns_per_packet")
            share = pct.get(f"programs_{name}_in_figure")
            if isinstance(part, int | float):
                # What the set adds to the CPU figure: its client-egress programs run
                # in the sender's send, before the NET_RX time the figure is.
                inside.append(f"{name} {added:,.0f} ns/packet, {part:,.0f} inside the "
                              "reported CPU figure" + (
                                  f" ({share:.1f} % {at})"
                                  if isinstance(share, int | float) else ""))
                continue
            share = pct.get(f"programs_{name}")
            inside.append(f"{name} {added:,.0f} ns/packet" + (
                f" ({share:.1f} % {at})" if isinstance(share, int | float) else ""))
        if inside:
            line += (f"\n  the probes' programs at {window.get('rate_pps', '?')} pps (kernel BPF "
                     "run-time statistics, hooks' dispatch not included): " + "; ".join(inside))
    return line


def environment_table(result: ResultLike) -> Table:
    """Key/value rows of what the run's numbers depend on."""
    env: Any = as_result(result).environment
    t = Table(["environment", "value"])
    vm = env.get("vm")
    where = env["where"] + (f" ({vm['accel']}, kernel {vm['kernel']})" if vm else "")
    rows: list[tuple[str, Any]] = [
        ("kernel", f"{env['kernel_release']} {env.get('kernel_version') or ''}".strip()),
        ("where", where),
        ("cpu", f"{env.get('cpu_model') or '?'} x {env.get('cpu_count') or '?'}"),
        ("governor", env.get("governor") or "unknown"),
        ("host", env.get("hostname")),
        ("machine id", env.get("machine_id") or "not recorded"),
        ("git", (env.get("git_commit") or "not a git checkout")
         + (" (dirty)" if env.get("git_dirty") else "")),
        ("python / kpbench", f"{env.get('python')} / {env.get('kpbench') or '?'}"),
    ]
    rows += [(name, version or "absent") for name, version in sorted(
        (env.get("tools") or {}).items())]
    for key, value in rows:
        t.add([key, value])
    return t


def _coord(p: Point, key: str) -> str:
    v = p.doc[key]  # type: ignore[literal-required]
    return "top" if v is None and key == "rate_pps" else str(v)


def _sync_seconds(p: Point) -> float | None:
    """A sync point's median apply time (its own measurement), else the scale's full sync
    (node 0's apply); kpbench's render is never part of it."""
    if p.is_sync:
        return (p.summary.get("sync") or {}).get("apply")
    return p.setup.get("sync_seconds")


def _settle(setup: Any) -> str:
    """The settle time, or how long it waited without settling."""
    text = fmt_value(setup.get("settle_seconds"), "s")
    return f"{text} (not settled)" if setup.get("settle_converged") is False else text


def points_table(result: ResultLike) -> Table:
    """One row per packet or sync point: coordinates, status, latency percentiles, CPU per
    packet (the total, then its NET_RX softirq and datapath-process parts), rate, loss,
    setup. Socket points are in :func:`sockets_table`, disruption points in
    :func:`disruption_table`.

    ``svc-ctl`` columns: the Service's p50 and CPU per packet minus its paired
    control's (the same traffic to the backend pods' own addresses). ``p50 by path``:
    the p50 of the packets to a pod on the entry node / on the other node, and the
    other node's share of the packets (the Service's draw).
    """
    points = [p for p in as_result(result).points if not (p.is_socket or p.is_disruption)]
    coords = [(k, title) for k, title in OPTIONAL_COORDS
              if len({_coord(p, k) for p in points}) > 1]
    t = Table(["variant", "workload", "services", *(title for _, title in coords), "status",
               "reps", "p50", "p90", "p99", "p99.9", "p50 by path", "cpu/pkt", "softirq",
               "process",
               "svc-ctl p50", "svc-ctl cpu",
               "delivered", "loss", "sync", "settle"],
              align=["l", "l", "r", *("r" for _ in coords), "l", *["r"] * 15])
    for p in points:
        s: Any = p.summary
        lat = s.get("latency_ns") or {}
        status = p.status if p.ok else f"{p.status}: {p.error or ''}"
        t.add([p.variant, p.workload, p.services,
               *(_coord(p, k) for k, _ in coords),
               status[:60], len(p.repetitions),
               *(fmt_value(lat.get(q), "ns") for q in ("p50", "p90", "p99", "p99.9")),
               _by_path(s.get("latency_by_path_ns")),
               fmt_value(s.get("cpu_ns_per_packet"), "ns/packet"),
               fmt_value(s.get("softirq_ns_per_packet"), "ns/packet"),
               fmt_value(s.get("process_ns_per_packet"), "ns/packet"),
               fmt_value(s.get("service_minus_control_p50_ns"), "ns"),
               fmt_value(s.get("service_minus_control_cpu_ns_per_packet"), "ns/packet"),
               fmt_value(s.get("delivered_pps"), "packets/s"),
               fmt_value(s.get("loss"), "fraction"),
               fmt_value(_sync_seconds(p), "s"),
               _settle(p.setup)],
              css="" if p.ok else "failed")
    return t


def _by_path(by_path: Any) -> str:
    """``entry p50 / other p50 (other's share)``; a path no packet took is ``—``."""
    if not by_path:
        return "—"
    entry, other = by_path.get("entry_node") or {}, by_path.get("other_node") or {}
    share = other.get("share") or 0.0
    return (f"{fmt_value(entry.get('p50'), 'ns')} / {fmt_value(other.get('p50'), 'ns')} "
            f"({share:.0%})")


def _load(p: Point) -> str:
    """A socket point's load: ``x8 closed``, ``x8 open@5000`` (flows, loop, offered tx/s)."""
    return socket_load(p).removeprefix(f"{p.workload} ")


def _rate(s: Any) -> str:
    """Transactions/s, or a stream's throughput."""
    if s.get("transactions_per_s") is None and s.get("throughput_bps") is not None:
        return fmt_value(s["throughput_bps"], "bit/s")
    return fmt_value(s.get("transactions_per_s"), "tx/s")


def _rate_minus_direct(s: Any) -> str:
    v = s.get("service_minus_direct_transactions_per_s")
    return "—" if v is None else ("+" if v > 0 else "") + fmt_value(v, "tx/s")


def _ceiling(p: Point) -> str:
    """The generator's own ceiling at the point's load (the same unit as its rate)."""
    c = p.doc.get("generator_ceiling")
    return "—" if not c else _rate(c)


def _flags(s: Any) -> str:
    """What bounds the point, if not the datapath (bench.results.summarise.ceiling_flags)."""
    said = [text for key, text in (("at_generator_ceiling", "AT GENERATOR CEILING"),
                                   ("offered_not_reached", "OFFERED NOT REACHED"))
            if s.get(key)]
    return ", ".join(said) or "—"


def sockets_table(result: ResultLike) -> Table:
    """One row per socket point (docs/sockets.md): coordinates, load, status, transactions/s
    (a stream's throughput), RTT p50/p99 of the merged histograms, CPU per transaction
    (the total of the measured parts), failed transactions, the one-way p50s of the
    request and the response (``req p50``, ``resp p50``: the breakdown repetition's one-way
    probe; "—" without it), ``svc-dir``: the Service minus the direct path after each
    repetition (RTT p50 and p99, tx/s, CPU per transaction); ``gen ceiling``: the
    generator's own ceiling at the point's load, and ``bound``: whether the point reached
    it (90 %) or (open loop) fell short of its offered rate, so that its rate is the
    generator's, not the datapath's."""
    points = [p for p in as_result(result).points if p.is_socket]
    coords = [(k, title) for k, title in OPTIONAL_COORDS[::2]  # endpoints, position
              if len({_coord(p, k) for p in points}) > 1]
    t = Table(["variant", "workload", "load", "services", *(title for _, title in coords),
               "status", "reps", "tx/s", "rtt p50", "rtt p99", "req p50", "resp p50",
               "cpu/tx", "failed", "svc-dir p50", "svc-dir p99", "svc-dir tx/s",
               "svc-dir cpu", "gen ceiling", "bound"],
              align=["l", "l", "l", "r", *("r" for _ in coords), "l", *["r"] * 13, "l"])
    for p in points:
        s: Any = p.summary
        rtt = s.get("rtt_ns") or {}
        one_way = s.get("one_way_ns") or {}
        status = p.status if p.ok else f"{p.status}: {p.error or ''}"
        t.add([p.variant, p.workload, _load(p), p.services,
               *(_coord(p, k) for k, _ in coords), status[:60], len(p.repetitions),
               _rate(s), fmt_value(rtt.get("p50"), "ns"), fmt_value(rtt.get("p99"), "ns"),
               *(fmt_value((one_way.get(part) or {}).get("p50"), "ns")
                 for part in ("request", "response")),
               fmt_value((s.get("cpu_ns_per_transaction") or {}).get("total"),
                         "ns/transaction"),
               "—" if s.get("failed_connections") is None else f"{s['failed_connections']:,}",
               fmt_value(s.get("service_minus_direct_rtt_p50_ns"), "ns"),
               fmt_value(s.get("service_minus_direct_rtt_p99_ns"), "ns"),
               _rate_minus_direct(s),
               fmt_value(s.get("service_minus_direct_cpu_ns_per_transaction"),
                         "ns/transaction"),
               _ceiling(p), _flags(s)],
              css="" if p.ok else "failed")
    return t


def disruption_table(result: ResultLike) -> Table:
    """One row per disruption point (docs/disruption.md): its event and background, the
    medians over repetitions of the event's ``stall`` (longest time packets were in flight
    with none arriving), ``lost`` (packets; transactions for a tcp-rr background),
    ``excess p99`` over the pre-event baseline and ``recovery``, in how many repetitions
    the traffic was not back within after_s (``not back``), the agent sync's read-back
    (``list``) and ``apply``, and for churn the syncs it ran per second and their CPU
    seconds per second. A point that failed or went past its limit has its row, the
    reason in its status."""
    t = Table(["variant", "event/background", "services", "status", "reps", "stall", "lost",
               "excess p99", "recovery", "not back", "list", "apply", "syncs/s",
               "sync cpu/s"], align=["l", "l", "r", "l", *["r"] * 10])
    for p in as_result(result).points:
        if not p.is_disruption:
            continue
        d: Any = p.summary.get("disruption")
        d = d if isinstance(d, dict) else {}
        sync: Any = p.summary.get("sync") or {}
        status = p.status if p.ok else f"{p.status}: {p.error or ''}"
        lost = d.get("lost")
        t.add([p.variant, p.workload.removeprefix("disruption-"), p.services, status[:60],
               len(p.repetitions), fmt_value(d.get("stall_ms"), "ms"),
               "—" if lost is None else f"{lost:,.0f}",
               fmt_value(d.get("excess_p99_ns"), "ns"),
               fmt_value(d.get("recovery_ms"), "ms"),
               "—" if d.get("not_recovered") is None else f"{d['not_recovered']:.0f}",
               fmt_value(sync.get("list"), "s"), fmt_value(sync.get("apply"), "s"),
               fmt_value(d.get("syncs_per_s"), "/s"),
               fmt_value(d.get("sync_cpu_s_per_s"), "s/s")],
              css="" if p.ok else "failed")
    return t


def tables(result: ResultLike) -> list[Table]:
    """The summary tables of a result: its packet and sync points' (if any, or if it has
    neither socket nor disruption points), its sync points', its disruption points', then
    its socket points' (each if any)."""
    result = as_result(result)
    sockets = any(p.is_socket for p in result.points)
    disruption = any(p.is_disruption for p in result.points)
    out = [points_table(result)] if not (sockets or disruption) or any(
        not (p.is_socket or p.is_disruption) for p in result.points) else []
    if any(p.is_sync for p in result.points):
        out.append(sync_table(result))
    if disruption:
        out.append(disruption_table(result))
    return out + ([sockets_table(result)] if sockets else [])


def sync_table(result: ResultLike) -> Table:
    """One row per sync point, its figures apart (medians over repetitions): the scale's
    cold start (node 0's first sync, table created from nothing), the point's apply (for
    ``sync-full``: a resync, table present), the longest single transaction of it, the
    agent's read-back of its state (``list``, never part of apply), kpbench's render and
    the time to effect."""
    t = Table(["variant", "workload", "services", "cold start", "apply", "longest tx",
               "list", "render", "effect"], align=["l", "l", *["r"] * 7])
    for p in as_result(result).points:
        if not p.is_sync:
            continue
        sync = p.summary.get("sync") or {}
        t.add([p.variant, p.workload, p.services, fmt_value(p.setup.get("sync_seconds"), "s"),
               *(fmt_value(sync.get(k), "s") for k in ("apply", "transaction_max", "list",
                                                       "render", "effect"))])
    return t


KERNEL_MISSING = "kernel feature missing"  # the error of a datapath this kernel lacks
NOT_APPLICABLE = "not applicable"  # the error of a workload a datapath cannot act on


def left_out(result: ResultLike) -> dict[str, str]:
    """Variants whose every point failed because this kernel lacks them, with the reason."""
    by_variant: dict[str, list[Point]] = {}
    for p in as_result(result).points:
        by_variant.setdefault(p.variant, []).append(p)
    return {v: (pts[0].error or "").removeprefix(f"{KERNEL_MISSING}: ")
            for v, pts in by_variant.items()
            if all((p.error or "").startswith(KERNEL_MISSING) for p in pts)}


def _cell(p: Point) -> str:
    if p.status == "exceeded-limit":
        return "over limit"
    if not p.ok:
        return "failed"
    if p.is_sync:
        return fmt_value(_sync_seconds(p), "s")
    s: Any = p.summary
    if p.workload.startswith("disruption-"):
        d = s.get("disruption") or {}
        lost = d.get("lost")
        return (f"{fmt_value(d.get('stall_ms'), 'ms')} · "
                f"{'—' if lost is None else f'{lost:,.0f}'} lost")
    if p.is_socket:
        rtt = (s.get("rtt_ns") or {}).get("p50")
        bound = _flags(s)
        return (_rate(s) + ("" if rtt is None else f" · {fmt_value(rtt, 'ns')}")
                + ("" if bound == "—" else f" ({bound.lower()})"))
    lat = (s.get("latency_ns") or {}).get("p50")
    return f"{fmt_value(lat, 'ns')} · {fmt_value(s.get('cpu_ns_per_packet'), 'ns/packet')}"


def figures_tables(result: ResultLike) -> tuple[list[tuple[str, Table]], list[str]]:
    """The run's figures at a glance: per workload, a variant x services table.

    A cell is the p50 latency and the CPU per packet (packet workloads), the
    median sync time (sync workloads), or transactions/s (a stream's
    throughput) and the RTT p50 (socket workloads: one table per workload and
    load, e.g. ``tcp-rr x8 closed``). Variants this kernel lacks and
    workloads a variant does not apply to get no row: they are returned as
    notes instead, one per variant, so that what was left out is said once.
    """
    result = as_result(result)
    lacking = left_out(result)
    points = [p for p in result.points if p.variant not in lacking]
    inapplicable: dict[str, list[str]] = {}
    tables = []
    def name(p: Point) -> str:
        return socket_load(p) if p.is_socket else p.workload

    for workload in dict.fromkeys(name(p) for p in points):
        wl = [p for p in points if name(p) == workload]
        scales = sorted({p.services for p in wl})
        what = ("median sync time" if workload.startswith("sync-")
                else "stall · packets lost (medians)" if workload.startswith("disruption-")
                else "transactions/s · RTT p50" if wl[0].is_socket
                else "p50 latency · CPU per packet")
        t = Table(["variant", *(f"{n:,} svc" for n in scales)],
                  align=["l", *("r" for _ in scales)])
        for variant in dict.fromkeys(p.variant for p in wl):
            mine = {p.services: p for p in wl if p.variant == variant}
            if all((p.error or "").startswith(NOT_APPLICABLE) for p in mine.values()):
                inapplicable.setdefault(variant, []).append(workload)
                continue
            t.add([variant, *(_cell(mine[n]) if n in mine else "" for n in scales)])
        if t.rows:
            tables.append((f"{workload}: {what}", t))
    notes = [f"{v}: not applicable to {', '.join(w)}" for v, w in inapplicable.items()]
    return tables, notes
