"""A real result perturbed on purpose: slower by a factor, or one of its runs split from
the others.

Used to test the regression comparison and the report on the committed
baseline without a 5-minute benchmark run.
"""

from __future__ import annotations

import copy

import numpy as np

from bench.analysis import stats
from bench.results.schema import LATENCY_PATHS, ResultDoc


def _hist_samples(h: stats.Histogram) -> np.ndarray:
    nz = np.flatnonzero(h.counts)
    mids = h.bucket_midpoints(nz)
    return np.concatenate([mids.repeat(h.counts[nz]), np.full(h.underflow, h.min_ns or 0.0),
                           np.full(h.overflow, h.max_ns or 0.0)])


#: A socket repetition's CPU parts (bench.analysis.metrics.CPU_PARTS) and its rates.
SOCKET_CPU = ("softirq_ns", "datapath_ns", "generator_cpu_ns", "responder_cpu_ns")
SOCKET_RATES = ("transactions_per_s", "throughput_bps")


def _scaled(doc: dict, factor: float) -> dict:  # type: ignore[type-arg]
    h = stats.Histogram.from_json(doc)
    return stats.Histogram.from_samples(_hist_samples(h) * factor).to_json()  # type: ignore[return-value]


def slowed_down(doc: ResultDoc, factor: float) -> ResultDoc:
    """``doc`` with every latency, RTT, CPU cost and sync time ``factor`` x larger and every
    socket point's rates ``factor`` x smaller (its Service side; the direct path as it
    was), as one run."""
    out = copy.deepcopy(doc)
    for p in out["points"]:
        p.pop("summary", None)  # type: ignore[misc]  # recomputed from the repetitions
        p.pop("per_run", None)  # type: ignore[misc]  # one new run, as `kpbench run` writes
        if p["setup"].get("sync_seconds") is not None:
            p["setup"]["sync_seconds"] *= factor  # type: ignore[operator]
        for r in p["repetitions"]:
            for key in ("latency_hist", *(k for _, k in LATENCY_PATHS)):
                if r.get(key):
                    r[key] = _scaled(r[key], factor)  # type: ignore[literal-required,arg-type]
            if r.get("rtt_hist"):
                r["rtt_hist"] = _scaled(r["rtt_hist"], factor)  # type: ignore[typeddict-item,arg-type]
            sock = r.get("socket")
            if sock:
                for key in SOCKET_CPU:
                    if sock.get(key) is not None:
                        sock[key] = int(sock[key] * factor)  # type: ignore[literal-required]
                for key in SOCKET_RATES:
                    if sock.get(key) is not None:
                        sock[key] /= factor  # type: ignore[literal-required]
                if sock.get("seconds"):  # the same transactions in factor x the time
                    sock["seconds"] *= factor  # type: ignore[operator]
            for key in ("softirq_ns", "process_ns"):
                if r.get(key) is not None:
                    r[key] = int(r[key] * factor)  # type: ignore[literal-required]
            if r.get("cpu_ns_per_packet") is not None:
                r["cpu_ns_per_packet"] *= factor  # type: ignore[operator]
    return out


def left_out(doc: ResultDoc, k: int) -> tuple[ResultDoc, ResultDoc]:
    """A pooled baseline split into (the others, run ``k``): a real run the rest never saw,
    as `kpbench run` writes one (no per_run), against a baseline of the other runs."""
    rest, run = copy.deepcopy(doc), copy.deepcopy(doc)
    for pr, pk in zip(rest["points"], run["points"], strict=True):
        shares = pr.get("per_run") or []  # type: ignore[misc]
        if not pr["repetitions"]:
            continue  # failed in every run: failed on both sides
        if k >= len(shares) or len(shares) < 2:
            raise ValueError(f"{pr['id']}: not pooled from more than {k + 1} runs")
        start = sum(s["repetitions"] for s in shares[:k])
        stop = start + shares[k]["repetitions"]
        reps = pr["repetitions"]
        pk["repetitions"] = reps[start:stop]
        pk["setup"] = {**pk["setup"], **shares[k]["setup"]}
        pr["repetitions"] = reps[:start] + reps[stop:]
        pr["per_run"] = shares[:k] + shares[k + 1:]  # type: ignore[typeddict-unknown-key]
        for p in (pr, pk):
            p.pop("summary", None)  # type: ignore[misc]  # recomputed from the repetitions
        pk.pop("per_run", None)  # type: ignore[misc]
    return rest, run
