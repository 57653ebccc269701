"""A result in the formats other tools read: OpenSearch bulk NDJSON and Kubernetes perfdash.

- ``opensearch``: the body of an OpenSearch/Elasticsearch ``_bulk`` request, one
  action line and one document per point x metric (the CSV's summary rows,
  bench.present.export), each document carrying the run's environment, so the
  dashboards k8s-netperf and kube-burner users run can filter by kernel,
  datapath and machine. A point that was not measured is one document with
  ``metricName`` "status", a null value and its error. Document ids are
  stable (run, point, metric): loading a result twice replaces, never doubles.
- ``perfdash``: the PerfData JSON of Kubernetes' perf-tests (ClusterLoader2's
  ``measurement/util/perftype.go``, read by perfdash): ``{"version": "v1",
  "dataItems": [{"data": {bucket: number}, "unit": str, "labels": {str: str}}],
  "labels": {...}}``, one data item per measured point and metric; latency
  buckets are named as perfdash's own (Perc50, Perc90, Perc99) plus Perc999.
  A socket point's items are its socket figures (``rtt`` in those buckets,
  ``transactions_per_s``, ...; docs/sockets.md) and its labels carry its
  ``loop``, ``flows`` and ``rate_tps``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from bench.present.export import summary_metrics
from bench.results.model import Point, Result, as_result
from bench.results.schema import ResultDoc
from bench.results.store import machine_name

DEFAULT_INDEX = "kpbench"
PERFDASH_VERSION = "v1"
POINT_FIELDS = ("datapath", "variant", "services", "endpoints", "workload", "rate_pps",
                "position")
# A socket point's load (docs/sockets.md): added to its documents and labels only.
SOCKET_FIELDS = ("loop", "flows", "rate_tps")


def opensearch_lines(result: Result | ResultDoc, index: str = DEFAULT_INDEX
                     ) -> Iterator[str]:
    """The NDJSON lines of a ``_bulk`` request body (action, document, action, ...)."""
    model = as_result(result)
    result = model.doc
    env = result["environment"]
    run = {"timestamp": result["started"], "uuid": result["run_id"],
           "scenario": result["scenario"]["name"], "run_status": result["status"],
           "machine": machine_name(env), "environment": env}
    for point in model.points:
        ok = point.ok
        for metric, value, unit in summary_metrics(point):
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            # A measured point's metrics; an unmeasured one's status (its error with it).
            if (ok and not numeric) or (not ok and metric != "status"):
                continue
            doc = {**run, "point_id": point.id,
                   **{k: point.doc[k] for k in POINT_FIELDS},  # type: ignore[literal-required]
                   **({k: point.doc.get(k) for k in SOCKET_FIELDS} if point.is_socket else {}),
                   "point_status": point.status, "metricName": metric,
                   "value": value if numeric else None, "unit": unit or None}
            if not ok:
                doc["error"] = point.error
            action = {"index": {"_index": index,
                                "_id": f"{result['run_id']}:{point.id}:{metric}"}}
            yield json.dumps(action, allow_nan=False)
            yield json.dumps(doc, allow_nan=False)


def perfdash(result: Result | ResultDoc) -> dict[str, Any]:
    """The PerfData document of ``result``."""
    model = as_result(result)
    result = model.doc
    env = result["environment"]
    vm = env.get("vm") or {}
    labels = {"scenario": result["scenario"]["name"], "run_id": result["run_id"],
              "machine": machine_name(env), "kernel": env["kernel_release"],
              "where": env["where"], "accel": vm.get("accel") or "",
              "git_commit": env.get("git_commit") or "", "started": result["started"]}
    items = []
    for p in model.points:
        if not p.ok:
            continue
        for metric, unit, data in _perfdash_metrics(p):
            data = {k: float(v) for k, v in data.items()
                    if v is not None and math.isfinite(float(v))}
            if data:
                items.append({"data": data, "unit": unit,
                              "labels": {"Metric": metric, **_labels(p)}})
    return {"version": PERFDASH_VERSION, "dataItems": items, "labels": labels}


def _labels(p: Point) -> dict[str, str]:
    labels = {k: "top" if p.doc[k] is None else str(p.doc[k])  # type: ignore[literal-required]
              for k in POINT_FIELDS}
    if p.is_socket:
        labels.update({k: "" if p.doc.get(k) is None else str(p.doc.get(k))
                       for k in SOCKET_FIELDS})
    return labels


def _socket_perfdash(p: Point) -> Iterator[tuple[str, str, dict[str, Any]]]:
    s: Any = p.summary
    rtt = s.get("rtt_ns") or {}
    if rtt:
        yield "rtt", "us", {bucket: None if rtt.get(q) is None else rtt[q] / 1000
                            for bucket, q in (("Perc50", "p50"), ("Perc90", "p90"),
                                              ("Perc99", "p99"), ("Perc999", "p99.9"))}
    for metric, unit, value in (
            ("transactions_per_s", "1/s", s.get("transactions_per_s")),
            ("throughput_bps", "bit/s", s.get("throughput_bps")),
            ("cpu_ns_per_transaction", "ns",
             (s.get("cpu_ns_per_transaction") or {}).get("total")),
            ("failed_connections", "", s.get("failed_connections")),
            ("service_minus_direct_rtt_p50_ns", "ns", s.get("service_minus_direct_rtt_p50_ns")),
            ("service_minus_direct_rtt_p99_ns", "ns", s.get("service_minus_direct_rtt_p99_ns")),
            ("service_minus_direct_cpu_ns_per_transaction", "ns",
             s.get("service_minus_direct_cpu_ns_per_transaction")),
            ("service_minus_direct_transactions_per_s", "1/s",
             s.get("service_minus_direct_transactions_per_s")),
            ("sync_full", "s", p.setup.get("sync_seconds"))):
        yield metric, unit, {"Value": value}


def _perfdash_metrics(p: Point) -> Iterator[tuple[str, str, dict[str, Any]]]:
    if p.is_socket:
        yield from _socket_perfdash(p)
        return
    s: Any = p.summary
    lat = s.get("latency_ns") or {}
    if lat:
        yield "latency", "us", {bucket: None if lat.get(q) is None else lat[q] / 1000
                                for bucket, q in (("Perc50", "p50"), ("Perc90", "p90"),
                                                  ("Perc99", "p99"), ("Perc999", "p99.9"))}
    for metric, unit, value in (
            ("cpu_ns_per_packet", "ns", s.get("cpu_ns_per_packet")),
            ("delivered_pps", "1/s", s.get("delivered_pps")),
            ("loss", "%", None if s.get("loss") is None else s["loss"] * 100),
            ("sync_full", "s", p.setup.get("sync_seconds"))):
        yield metric, unit, {"Value": value}
    if s.get("sync"):
        yield "sync", "s", dict(s["sync"])
