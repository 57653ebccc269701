"""Tidy CSV export of a result: one row per point x repetition x metric.

Columns: run_id, datapath, variant, services, endpoints, workload, rate_pps,
position, repetition, metric, value, unit, loop, flows, rate_tps.

- ``repetition`` is "all" for a point's summary (pooled over its repetitions,
  see bench.results.summarise.summarise_point) and the 0-based index into the point's
  ``repetitions`` otherwise; ``control-<i>`` for the paired control that
  followed repetition i, ``breakdown`` for the repetition with the breakdown
  probes, ``<phase>-<i>`` with metric ``failed`` for a replay that failed
  (value: why). Per-repetition percentiles are exported for inspection only;
  aggregate with the "all" rows, never by averaging them. The "all" rows
  include ``service_minus_control_*`` and ``control.*`` (the control pooled), and
  where the latency was split by path ``latency_entry_node_*`` /
  ``latency_other_node_*`` (the backend pod on the node the traffic entered, or on
  another; ``_share``: the path's fraction of the packets), their ``control.`` forms
  and ``service_minus_control_p50_<path>_ns``.
- ``rate_pps`` is empty for points measured at the generator's top speed.
- Socket points (docs/sockets.md) fill ``loop``, ``flows`` and ``rate_tps``
  (empty for packet points, and ``rate_tps`` for a closed loop) and have no
  packet rows: their "all" rows are the socket summary (``transactions_per_s``,
  ``throughput_bps``, ``rtt_*``, ``cpu_ns_per_transaction`` and its
  ``.softirq``/``.datapath``/``.generator``/``.responder`` parts,
  ``failed_connections``, ``retransmits``, ``resets``,
  ``conntrack_entries_created``, ``direct.*``,
  ``service_minus_direct_*``, and with the one-way probe ``one_way_request_*``,
  ``one_way_response_*`` and their ``direct.`` forms), a repetition's rows its
  socket figures and RTT (``socket.<figure>``, ``rtt_*``; a breakdown's also its
  ``one_way_*`` and the probe's counts ``one_way.<count>``), the paired direct
  path's repetitions are ``direct-<i>`` and its breakdown ``direct-breakdown``;
  also ``generator_ceiling.*``, ``at_generator_ceiling`` and
  ``offered_not_reached``.
- Every point gets a ``status`` row (value ok / failed / exceeded-limit), a
  failed one also an ``error`` row, and each measurement a probe could not
  take a ``missing.<measurement>`` row whose value is the reason. A missing
  measurement has no numeric row: absent, never zero.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bench.analysis import stats
from bench.results.model import Point, Repetition, Result, as_point, as_result
from bench.results.schema import PointDoc, ResultDoc

COLUMNS = ("run_id", "datapath", "variant", "services", "endpoints", "workload", "rate_pps",
           "position", "repetition", "metric", "value", "unit", "loop", "flows", "rate_tps")

Row = dict[str, Any]


def _dist_rows(prefix: str, dist: Mapping[str, Any] | None) -> Iterator[tuple[str, Any, str]]:
    """Rows of a stats.summary dict (latency or transit), in ns."""
    if not dist:
        return
    for key, value in dist.items():
        if value is None:
            continue
        yield f"{prefix}_{key}", value, _DIST_UNITS.get(key, "ns")


_DIST_UNITS = {"count": "samples", "share": "fraction"}  # the rest are ns


def _path_rows(prefix: str, by_path: Mapping[str, Any] | None) -> Iterator[tuple[str, Any, str]]:
    """Rows of a latency split by path (summary latency_by_path_ns): ``<prefix>_<path>_*``."""
    for path, dist in (by_path or {}).items():
        yield from _dist_rows(f"{prefix}_{path}", dist)


def _drops_rows(drops: Mapping[str, int] | None) -> Iterator[tuple[str, Any, str]]:
    for reason, n in sorted((drops or {}).items()):
        yield f"drops.{reason}", n, "packets"


def summary_metrics(point: Point | PointDoc) -> Iterator[tuple[str, Any, str]]:
    """(metric, value, unit) of a point's summary: its CSV rows with repetition "all"."""
    point = as_point(point)
    yield "status", point.status, ""
    if point.error:
        yield "error", point.error, ""
    for what, reason in sorted(point.missing.items()):
        yield f"missing.{what}", reason, ""
    setup = point.setup
    for key in ("sync_seconds", "sync_render_seconds", "settle_seconds"):
        if setup.get(key) is not None:
            yield f"setup.{key}", setup[key], "s"
    if setup.get("settle_converged") is not None:
        yield "setup.settle_converged", setup["settle_converged"], ""
    for node, seconds in enumerate(setup.get("sync_node_seconds") or []):
        yield f"setup.sync_node_seconds.{node}", seconds, "s"
    for key, value in sorted((setup.get("state_size") or {}).items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield f"setup.state_size.{key}", value, "count"
    s = point.summary
    if point.is_socket:
        yield from _socket_summary_rows(s)
        yield from _ceiling_rows(point.doc.get("generator_ceiling"), s)
        return
    for key, unit in (("offered_pps", "packets/s"), ("achieved_pps", "packets/s"),
                      ("delivered_pps", "packets/s"), ("loss", "fraction"),
                      ("cpu_ns_per_packet", "ns/packet"), ("softirq_ns_per_packet", "ns/packet"),
                      ("process_ns_per_packet", "ns/packet")):
        if s.get(key) is not None:
            yield key, s[key], unit  # type: ignore[literal-required]
    yield from _dist_rows("latency", s.get("latency_ns"))
    yield from _path_rows("latency", s.get("latency_by_path_ns"))
    for path, value in sorted((s.get("service_minus_control_p50_by_path_ns") or {}).items()):
        if value is not None:
            yield f"service_minus_control_p50_{path}_ns", value, "ns"
    for key, unit in (("service_minus_control_p50_ns", "ns"),
                      ("service_minus_control_p99_ns", "ns"),
                      ("service_minus_control_cpu_ns_per_packet", "ns/packet")):
        if s.get(key) is not None:
            yield key, s[key], unit  # type: ignore[literal-required]
    control = s.get("control") or {}
    for key, unit in (("delivered_pps", "packets/s"), ("loss", "fraction"),
                      ("cpu_ns_per_packet", "ns/packet")):
        if control.get(key) is not None:
            yield f"control.{key}", control[key], unit
    yield from _dist_rows("control.latency", control.get("latency_ns"))
    yield from _path_rows("control.latency", control.get("latency_by_path_ns"))
    yield from _dist_rows("transit", s.get("transit_ns"))
    yield from _drops_rows(s.get("drops"))
    yield from _sync_rows(s.get("sync"))
    yield from _disruption_rows(s.get("disruption"), count_unit(point.workload))
    for key, value in sorted(point.probe_overhead.items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield f"probe_overhead.{key}", value, _overhead_unit(key)
    for key, value in sorted((s.get("probe_overhead_pct") or {}).items()):
        yield f"probe_overhead_pct.{key}", value, "% of cpu_ns_per_packet"


#: A socket summary's figures and their units (bench.results.summarise._summarise_sockets).
SOCKET_FIGURES = (("offered_tps", "tx/s"), ("transactions_per_s", "tx/s"),
                  ("throughput_bps", "bit/s"), ("failed_connections", "connections"),
                  ("retransmits", "segments"), ("resets", "segments"),
                  ("conntrack_entries_created", "entries"))
DIRECT_FIGURES = (("transactions_per_s", "tx/s"), ("throughput_bps", "bit/s"),
                  ("failed_connections", "connections"))
SERVICE_MINUS_DIRECT = (("service_minus_direct_rtt_p50_ns", "ns"),
                        ("service_minus_direct_rtt_p99_ns", "ns"),
                        ("service_minus_direct_cpu_ns_per_transaction", "ns/transaction"),
                        ("service_minus_direct_transactions_per_s", "tx/s"),
                        ("service_minus_direct_request_p50_ns", "ns"),
                        ("service_minus_direct_response_p50_ns", "ns"))


def _cpu_rows(prefix: str, cpu: Mapping[str, Any] | None) -> Iterator[tuple[str, Any, str]]:
    """cpu_ns_per_transaction (the total), then its measured parts."""
    for part, value in (cpu or {}).items():
        if value is not None:
            name = prefix if part == "total" else f"{prefix}.{part}"
            yield name, value, "ns/transaction"


def _socket_summary_rows(s: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    for key, unit in SOCKET_FIGURES:
        if s.get(key) is not None:
            yield key, s[key], unit
    yield from _dist_rows("rtt", s.get("rtt_ns"))
    yield from _cpu_rows("cpu_ns_per_transaction", s.get("cpu_ns_per_transaction"))
    direct = s.get("direct") or {}
    for key, unit in DIRECT_FIGURES:
        if direct.get(key) is not None:
            yield f"direct.{key}", direct[key], unit
    yield from _dist_rows("direct.rtt", direct.get("rtt_ns"))
    yield from _cpu_rows("direct.cpu_ns_per_transaction", direct.get("cpu_ns_per_transaction"))
    for prefix, one_way in (("", s.get("one_way_ns")), ("direct.", direct.get("one_way_ns"))):
        for part in ("request", "response"):
            yield from _dist_rows(f"{prefix}one_way_{part}", (one_way or {}).get(part))
    for key, unit in SERVICE_MINUS_DIRECT:
        if s.get(key) is not None:
            yield key, s[key], unit


def _ceiling_rows(ceiling: Mapping[str, Any] | None,
                  s: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """The generator's own ceiling (``generator_ceiling.*``) and the flags judged on it."""
    for key, unit in (("transactions_per_s", "tx/s"), ("throughput_bps", "bit/s"),
                      ("seconds", "s"), ("measured_at", "")):
        if (ceiling or {}).get(key) is not None:
            yield f"generator_ceiling.{key}", ceiling[key], unit  # type: ignore[index]
    for key in ("at_generator_ceiling", "offered_not_reached"):
        if s.get(key) is not None:
            yield key, s[key], ""


#: A socket repetition's own figures (bench.results.schema.SocketRepetitionDoc).
SOCKET_REPETITION = (("seconds", "s"), ("transactions", "transactions"),
                     ("transactions_per_s", "tx/s"), ("throughput_bps", "bit/s"),
                     ("offered_tps", "tx/s"), ("failed", "connections"),
                     ("retransmits", "segments"), ("resets", "segments"),
                     ("conntrack_entries_created", "entries"), ("softirq_ns", "ns"),
                     ("datapath_ns", "ns"), ("generator_cpu_ns", "ns"),
                     ("responder_cpu_ns", "ns"))


def _socket_repetition_rows(r: Repetition) -> Iterator[tuple[str, Any, str]]:
    for key, unit in SOCKET_REPETITION:
        if r.socket.get(key) is not None:
            yield f"socket.{key}", r.socket[key], unit
    yield from _dist_rows("rtt", stats.summary(r.rtt) if r.rtt is not None else None)
    for part in ("request", "response"):  # a breakdown repetition's one-way probe
        h = r.histogram(f"one_way_{part}_hist")
        yield from _dist_rows(f"one_way_{part}", stats.summary(h) if h and h.count else None)
    for key, n in (r.doc.get("one_way") or {}).items():
        yield f"one_way.{key}", n, "packets"


def _overhead_unit(key: str) -> str:
    return next((unit for suffix, unit in (("_ns_per_packet", "ns/packet"), ("_pps", "packets/s"),
                                           ("_pct", "%")) if key.endswith(suffix)), "")


def count_unit(workload: str) -> str:
    """What a point's sent, delivered and lost count: a tcp-rr disruption background's
    are transactions (bench.measure.rr_background), every other point's packets."""
    return "transactions" if workload.endswith("/tcp-rr") else "packets"


def _repetition_metrics(r: Repetition, count: str = "packets"
                        ) -> Iterator[tuple[str, Any, str]]:
    rep: Any = r.doc
    if r.socket:  # its packet keys are neutral (0 sent, 0 delivered): not packets
        yield from _socket_repetition_rows(r)
        return
    for key, unit in (("offered_pps", f"{count}/s"), ("achieved_pps", f"{count}/s"),
                      ("sent", count), ("delivered", count),
                      ("arrival_seconds", "s"),
                      ("cpu_ns_per_packet", "ns/packet"), ("softirq_ns", "ns"),
                      ("process_ns", "ns")):
        if rep.get(key) is not None:
            yield key, rep[key], unit  # type: ignore[literal-required]
    yield from _dist_rows("latency", r.latency_summary)
    yield from _dist_rows("transit", r.transit_summary)
    yield from _drops_rows(rep.get("drops"))
    yield from _sync_rows(rep.get("sync"))
    yield from _disruption_rows(rep.get("disruption"), count)


_DISRUPTION_UNITS = {"_ms": "ms", "_ns": "ns", "not_recovered": "repetitions",
                     "churn_per_s": "changes/s", "syncs_per_s": "syncs/s",
                     "sync_cpu_s_per_s": "s/s", "syncs": "syncs", "changes": "changes",
                     "retransmits": "segments", "resets_sent": "segments",
                     "estab_resets": "connections", "attempt_fails": "connections",
                     "reconnects": "connections"}
# Figures in the point's own count (packets, or a tcp-rr background's transactions).
_DISRUPTION_COUNTED = ("lost", "sent", "delivered")


def _disruption_rows(figures: Mapping[str, Any] | None,
                     count: str = "packets") -> Iterator[tuple[str, Any, str]]:
    """A disruption point's event figures (the timeline itself stays in the JSON);
    ``count``: what its sent, delivered and lost count (:func:`count_unit`)."""
    for key, value in sorted((figures or {}).items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            unit = next((u for suffix, u in _DISRUPTION_UNITS.items() if key.endswith(suffix)),
                        "")
            if key.endswith(_DISRUPTION_COUNTED) or key.startswith("tx_"):
                unit = count
            yield f"disruption.{key}", value, unit


def _sync_rows(sync: dict[str, float | None] | None) -> Iterator[tuple[str, Any, str]]:
    for key, value in sorted((sync or {}).items()):
        if value is not None:
            yield f"sync.{key}", value, "s"


def rows(result: Result | ResultDoc) -> Iterator[Row]:
    """Every CSV row of ``result``, as dicts keyed by :data:`COLUMNS`."""
    result = as_result(result)
    for point in result.points:
        base = {
            "run_id": result.run_id, "datapath": point["datapath"],
            "variant": point["variant"], "services": point["services"],
            "endpoints": point["endpoints"], "workload": point["workload"],
            "rate_pps": "" if point["rate_pps"] is None else point["rate_pps"],
            "position": point["position"],
            "loop": point.get("loop") or "", "flows": point.get("flows") or "",
            "rate_tps": "" if point.get("rate_tps") is None else point["rate_tps"],
        }
        paired = "direct" if point.is_socket else "control"
        for metric, value, unit in summary_metrics(point):
            yield {**base, "repetition": "all", "metric": metric, "value": value, "unit": unit}
        for i, rep in enumerate(point.repetitions):
            for metric, value, unit in _repetition_metrics(rep, count_unit(point.workload)):
                yield {**base, "repetition": i, "metric": metric, "value": value, "unit": unit}
        # The paired control (direct path) and the breakdown repetition: their own labels.
        for i, rep in enumerate(point.control or ()):
            for metric, value, unit in _repetition_metrics(rep):
                yield {**base, "repetition": f"{paired}-{i}", "metric": metric, "value": value,
                       "unit": unit}
        if point.breakdown is not None:
            for metric, value, unit in _repetition_metrics(point.breakdown):
                yield {**base, "repetition": "breakdown", "metric": metric, "value": value,
                       "unit": unit}
        if point.get("control_breakdown"):  # a socket point's direct-path breakdown
            for metric, value, unit in _repetition_metrics(
                    Repetition(point["control_breakdown"])):
                yield {**base, "repetition": "direct-breakdown", "metric": metric,
                       "value": value, "unit": unit}
        for f in point.get("failed_repetitions") or []:
            yield {**base, "repetition": f"{f['phase']}-{f['index']}", "metric": "failed",
                   "value": f["error"], "unit": ""}


def default_csv_path(result_path: str | Path) -> Path:
    """The CSV written next to a result by default: same stem, ``.csv``."""
    return Path(result_path).with_suffix(".csv")


def write_csv(result: Result | ResultDoc, out: str | Path) -> int:
    """Write ``result`` as tidy CSV to ``out`` ("-" for stdout); returns the number of rows."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    n = 0
    for row in rows(result):
        w.writerow(row)
        n += 1
    if str(out) == "-":
        sys.stdout.write(buf.getvalue())
    else:
        Path(out).write_text(buf.getvalue(), encoding="utf-8")
    return n
