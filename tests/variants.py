"""Synthetic variants of a real result: slower by a factor, or re-measured within its noise.

Used to test the regression comparison and the report on the committed
baseline without a 5-minute benchmark run.
"""

from __future__ import annotations

import copy

import numpy as np

from bench import stats
from bench.results import ResultDoc


def _hist_samples(h: stats.Histogram) -> np.ndarray:
    nz = np.flatnonzero(h.counts)
    mids = h.bucket_midpoints(nz)
    return np.concatenate([mids.repeat(h.counts[nz]), np.full(h.underflow, h.min_ns or 0.0),
                           np.full(h.overflow, h.max_ns or 0.0)])


def slowed_down(doc: ResultDoc, factor: float) -> ResultDoc:
    """``doc`` with every latency, CPU cost and sync time ``factor`` x larger, as one run."""
    out = copy.deepcopy(doc)
    for p in out["points"]:
        p.pop("summary", None)  # type: ignore[misc]  # recomputed from the repetitions
        p.pop("per_run", None)  # type: ignore[misc]  # one new run, as `kpbench run` writes
        if p["setup"].get("sync_seconds") is not None:
            p["setup"]["sync_seconds"] *= factor  # type: ignore[operator]
        for r in p["repetitions"]:
            if r.get("latency_hist"):
                h = stats.Histogram.from_json(r["latency_hist"])  # type: ignore[arg-type]
                r["latency_hist"] = stats.Histogram.from_samples(
                    _hist_samples(h) * factor).to_json()
            for key in ("softirq_ns", "process_ns"):
                if r.get(key) is not None:
                    r[key] = int(r[key] * factor)  # type: ignore[literal-required]
            if r.get("cpu_ns_per_packet") is not None:
                r["cpu_ns_per_packet"] *= factor  # type: ignore[operator]
    return out


def resampled(doc: ResultDoc, seed: int) -> ResultDoc:
    """``doc`` re-measured within its own noise, as one run: each point's repetitions in
    another order, each latency histogram redrawn (bootstrap) from itself."""
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(doc)
    for p in out["points"]:
        p.pop("summary", None)  # type: ignore[misc]
        p.pop("per_run", None)  # type: ignore[misc]  # one new run, as `kpbench run` writes
        reps = p["repetitions"]
        p["repetitions"] = [reps[i] for i in rng.permutation(len(reps))]
        for r in p["repetitions"]:
            if r.get("latency_hist"):
                h = stats.Histogram.from_json(r["latency_hist"])  # type: ignore[arg-type]
                r["latency_hist"] = stats.Histogram.from_samples(
                    rng.choice(_hist_samples(h), size=h.count, replace=True)).to_json()
    return out
