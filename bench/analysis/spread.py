"""How much whole runs of a pooled baseline differ, and which run stands out.

``kpbench baseline`` prints it when it pools runs: the spread between runs
decides what ``kpbench compare`` can call a change (bench.analysis.runlevel),
and one run taken while the machine ran slower or faster shows up here as an
offset shared by most of its points.

For a metric, at every point each pooled run measured: the per-run figures'
natural logarithms (a change is relative); their sample standard deviation is
the point's spread, and each run's log minus the points' mean of logs its
offset. Reported: the median spread over the points, and per run the median
offset, both as relative figures (a spread of 0.2 is about 20 %).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.analysis.metrics import METRICS_BY_NAME
from bench.analysis.runlevel import run_values
from bench.results.model import Result, as_result
from bench.results.schema import ResultDoc

#: The figures whose spread a user gates on (packet points, then socket points).
SPREAD_METRICS = ("p50_latency", "cpu_ns_per_packet", "p99_latency", "p99.9_latency",
                  "rtt_p50", "transactions_per_s")
#: A run whose median offset in a central figure (not a tail: tails move more on their
#: own) is beyond this reads as another machine speed.
STANDS_OUT = 0.10
CENTRAL = ("p50_latency", "cpu_ns_per_packet", "rtt_p50", "transactions_per_s")


@dataclass(frozen=True)
class Spread:
    """The spread between runs of one metric over the points every run measured."""

    metric: str
    points: int  # points with a positive figure in every run
    median_sd: float  # median over those points of the sd of the per-run logs
    run_offsets: tuple[float, ...]  # per run: median over points of exp(log - mean) - 1


def run_spread(result: Result | ResultDoc,
               metrics: Sequence[str] = SPREAD_METRICS) -> list[Spread]:
    """The spread of each of ``metrics`` that has points (none for a single run)."""
    res = as_result(result)
    n_runs = len(res.doc.get("merged_from") or [])  # type: ignore[call-overload]
    if n_runs < 2:
        return []
    out = []
    for name in metrics:
        metric = METRICS_BY_NAME[name]
        sds: list[float] = []
        offsets: list[list[float]] = [[] for _ in range(n_runs)]
        for point in res.points:
            if not point.ok or len(point.runs) != n_runs:
                continue  # a point some runs missed: its runs are not the pooled ones
            values = run_values(metric, point.runs)
            if len(values) != n_runs or min(values) <= 0:
                continue
            logs = [math.log(v) for v in values]
            mean = statistics.fmean(logs)
            sds.append(statistics.stdev(logs))
            for i, lg in enumerate(logs):
                offsets[i].append(lg - mean)
        if sds:
            out.append(Spread(name, len(sds), statistics.median(sds),
                              tuple(math.expm1(statistics.median(o)) for o in offsets)))
    return out


def spread_lines(result: Result | ResultDoc) -> list[str]:
    """What ``kpbench baseline`` prints of :func:`run_spread`: one line per metric, and a
    warning line for each run whose median offset in a :data:`CENTRAL` figure is beyond
    :data:`STANDS_OUT`."""
    res = as_result(result)
    spreads = run_spread(res)
    if not spreads:
        return []
    files = [m.get("file", m.get("run_id", "?")) for m in res.doc["merged_from"]]  # type: ignore[typeddict-item]
    lines = ["spread between runs (sd of the per-run figures, median point; run offsets "
             "from their geometric mean, median point):"]
    for s in spreads:
        offs = " ".join(f"{o:+.0%}" for o in s.run_offsets)
        lines.append(f"  {s.metric:<20} {s.median_sd:6.1%} over {s.points:3d} points;"
                     f" runs {offs}")
    for i, f in enumerate(files):
        far = [f"{s.metric} {s.run_offsets[i]:+.0%}" for s in spreads
               if s.metric in CENTRAL and abs(s.run_offsets[i]) > STANDS_OUT]
        if far:
            lines.append(f"warning: run {i + 1} ({f}) stands out: {', '.join(far)} at the "
                         f"median point; the machine's speed moved between runs (pool more "
                         f"runs, at different times, or find what else ran)")
    return lines
