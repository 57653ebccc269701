"""Summary tables of one result: its environment and one row per measured point.

Shared by ``kpbench show`` and the report. Figures are the point summaries
(bench.results.summarise_point: percentiles of the merged histograms), in
units people read (µs, pps, %, s).
"""

from __future__ import annotations

from typing import Any

from bench.results import PointDoc, ResultDoc, iter_points
from bench.tables import Table, fmt_value

# Coordinates shown only when they vary within the result (they are usually fixed).
OPTIONAL_COORDS = (("endpoints", "endpoints"), ("rate_pps", "rate"), ("position", "position"))


def run_line(doc: ResultDoc) -> str:
    """One line naming the run: scenario, status, dates, commit."""
    env = doc["environment"]
    commit = (env.get("git_commit") or "nogit")[:12] + ("-dirty" if env.get("git_dirty") else "")
    merged = doc.get("merged_from")  # a baseline pooled by bench.baseline
    pooled = f", pooled from {len(merged)} runs" if isinstance(merged, list) else ""
    return (f"scenario {doc['scenario']['name']}, {doc['status']}, started {doc['started']}, "
            f"finished {doc.get('finished') or '—'}, commit {commit}, run {doc['run_id']}"
            f"{pooled}")


def environment_table(doc: ResultDoc) -> Table:
    """Key/value rows of what the run's numbers depend on."""
    env = doc["environment"]
    t = Table(["environment", "value"])
    vm = env.get("vm")
    where = env["where"] + (f" ({vm['accel']}, kernel {vm['kernel']})" if vm else "")
    rows: list[tuple[str, Any]] = [
        ("kernel", f"{env['kernel_release']} {env.get('kernel_version') or ''}".strip()),
        ("where", where),
        ("cpu", f"{env.get('cpu_model') or '?'} x {env.get('cpu_count') or '?'}"),
        ("governor", env.get("governor") or "unknown"),
        ("host", env.get("hostname")),
        ("git", (env.get("git_commit") or "not a git checkout")
         + (" (dirty)" if env.get("git_dirty") else "")),
        ("python / kpbench", f"{env.get('python')} / {env.get('kpbench') or '?'}"),
    ]
    rows += [(name, version or "absent") for name, version in sorted(
        (env.get("tools") or {}).items())]
    for key, value in rows:
        t.add([key, value])
    return t


def _coord(p: PointDoc, key: str) -> str:
    v = p[key]  # type: ignore[literal-required]
    return "top" if v is None and key == "rate_pps" else str(v)


def _sync_seconds(p: PointDoc) -> float | None:
    """A sync point's median apply time (its own measurement), else the scale's full sync
    (node 0's apply); kpbench's render is never part of it."""
    if p["workload"].startswith("sync-"):
        summary: Any = p.get("summary") or {}
        return (summary.get("sync") or {}).get("apply")
    setup: Any = p.get("setup") or {}
    return setup.get("sync_seconds")


def points_table(doc: ResultDoc) -> Table:
    """One row per point: coordinates, status, latency percentiles, CPU, rate, loss, setup."""
    points = list(iter_points(doc))
    coords = [(k, title) for k, title in OPTIONAL_COORDS
              if len({_coord(p, k) for p in points}) > 1]
    t = Table(["variant", "workload", "services", *(title for _, title in coords), "status",
               "reps", "p50", "p90", "p99", "p99.9", "cpu/pkt", "delivered", "loss", "sync",
               "settle"],
              align=["l", "l", "r", *("r" for _ in coords), "l", "r", "r", "r", "r", "r",
                     "r", "r", "r", "r", "r"])
    for p in points:
        s: Any = p.get("summary") or {}
        lat = s.get("latency_ns") or {}
        setup: Any = p.get("setup") or {}
        status = p["status"] if p["status"] == "ok" else f"{p['status']}: {p.get('error') or ''}"
        t.add([p["variant"] or p["datapath"], p["workload"], p["services"],
               *(_coord(p, k) for k, _ in coords),
               status[:60], len(p.get("repetitions") or []),
               *(fmt_value(lat.get(q), "ns") for q in ("p50", "p90", "p99", "p99.9")),
               fmt_value(s.get("cpu_ns_per_packet"), "ns/packet"),
               fmt_value(s.get("delivered_pps"), "packets/s"),
               fmt_value(s.get("loss"), "fraction"),
               fmt_value(_sync_seconds(p), "s"),
               fmt_value(setup.get("settle_seconds"), "s")],
              css="" if p["status"] == "ok" else "failed")
    return t
