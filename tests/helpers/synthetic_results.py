"""Synthetic results whose right answer is known, for the comparison and baseline tests.

Latency is lognormal around a chosen level, and each repetition's level
varies by ``JITTER`` (what a quiet machine shows between repetitions).
"""

from __future__ import annotations

import copy
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import cli
from bench.analysis import compare, stats
from bench.results.reader import validate_result
from bench.results.schema import KIND, SCHEMA_VERSION, PointDoc, RepetitionDoc, ResultDoc
from bench.results.summarise import summarise_point
from bench.results.writer import (
    ResultWriter,
    make_point,
    make_repetition,
    make_socket_repetition,
)

ENV: dict[str, Any] = {
    "kernel_release": "6.18.44-fc", "kernel_version": "#1", "where": "host", "vm": None,
    "cpu_model": "AMD EPYC", "cpu_count": 2, "governor": None, "python": "CPython 3.11",
    "kpbench": "0.1.0",
    "tools": {"iptables": "iptables v1.8.9 (nf_tables)",
              "iptables-legacy": "iptables v1.8.9 (legacy)",
              "iptables-nft": "iptables v1.8.9 (nf_tables)", "nft": "nftables v1.0.6"},
    "git_commit": "0123456789abcdef", "git_dirty": False, "hostname": "test",
}

REPS = 5
PACKETS = 2000
RATE = 5000.0
JITTER = 0.02  # spread of each repetition's level (2 %), like a quiet machine


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    # cli.main installs its SIGINT/SIGTERM handlers; give pytest its own back.
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


# -- synthetic results -------------------------------------------------------------------

def repetition(rng: np.random.Generator, latency_ns: float, cpu_ns: float,
               delivered: int = PACKETS, jitter: float = JITTER) -> RepetitionDoc:
    """One repetition: lognormal latency around ``latency_ns`` x a per-repetition level."""
    level = 1 + rng.normal(0, jitter)
    lat = rng.lognormal(np.log(latency_ns * level), 0.3, delivered)
    return make_repetition(
        sent=PACKETS, delivered=delivered, offered_pps=RATE, achieved_pps=RATE,
        arrival_seconds=(PACKETS - 1) / RATE,  # lost packets leave gaps, not a shorter span
        latency_hist=stats.Histogram.from_samples(lat),
        softirq_ns=int(delivered * cpu_ns * (1 + rng.normal(0, jitter))))


def point(rng: np.random.Generator, *, variant: str = "nftables", services: int = 1000,
          workload: str = "udp-new", latency_ns: float = 10_000, cpu_ns: float = 5_000,
          delivered: int = PACKETS, reps: int = REPS, sync_seconds: float = 2.0,
          jitter: float = JITTER) -> PointDoc:
    return make_point(
        datapath=variant.split("-")[0], variant=variant, services=services, endpoints=10,
        workload=workload, rate_pps=int(RATE), position="last", position_index=services - 1,
        repetitions=[repetition(rng, latency_ns, cpu_ns, delivered, jitter)
                     for _ in range(reps)],
        sync_seconds=sync_seconds, settle_seconds=0.5)


SOCKET_SECONDS = 5.0


def socket_repetition(rng: np.random.Generator, rtt_ns: float, tps: float,
                      cpu_ns: float | None = 20_000, failed: int = 0,
                      jitter: float = JITTER, workload: str = "tcp-crr") -> RepetitionDoc:
    """One socket repetition: ``tps`` transactions/s for SOCKET_SECONDS, lognormal RTTs
    around ``rtt_ns``, ``cpu_ns`` per transaction split softirq 50 %, generator 30 %,
    responder 20 % (None: no CPU measured); tcp-stream: ``tps`` is bits/s, no RTT."""
    level = 1 + rng.normal(0, jitter)
    if workload.endswith("tcp-stream"):
        return make_socket_repetition(seconds=SOCKET_SECONDS, transactions=0, failed=failed,
                                      rtt_hist=None, throughput_bps=tps * level)
    done = int(tps * level * SOCKET_SECONDS)
    rtt = rng.lognormal(np.log(rtt_ns * level), 0.3, min(done, 4000))
    cpu = (None if cpu_ns is None else
           {k: int(done * cpu_ns * share * (1 + rng.normal(0, jitter)))
            for k, share in (("softirq_ns", 0.5), ("generator_cpu_ns", 0.3),
                             ("responder_cpu_ns", 0.2))})
    return make_socket_repetition(
        seconds=SOCKET_SECONDS, transactions=done, failed=failed,
        rtt_hist=stats.Histogram.from_samples(rtt), transactions_per_s=done / SOCKET_SECONDS,
        retransmits=1, resets=0, conntrack_entries_created=done if "crr" in workload else 8,
        **(cpu or {}))


def socket_point(rng: np.random.Generator, *, variant: str = "nftables", services: int = 1000,
                 workload: str = "tcp-crr", flows: int = 8, loop: str = "closed",
                 rate_tps: float | None = None, rtt_ns: float = 50_000,
                 tps: float = 20_000, cpu_ns: float | None = 20_000, failed: int = 0,
                 direct_rtt_ns: float | None = 40_000, direct_tps: float = 25_000,
                 direct_cpu_ns: float | None = 15_000, reps: int = REPS,
                 jitter: float = JITTER) -> PointDoc:
    """A socket point (bench.results.writer.make_point(..., socket=...)) with, unless
    ``direct_rtt_ns`` is None, its paired direct path: one direct repetition after each."""
    control = None
    if direct_rtt_ns is not None:
        control = [socket_repetition(rng, direct_rtt_ns, direct_tps, direct_cpu_ns,
                                     jitter=jitter, workload=workload) for _ in range(reps)]
    return make_point(
        datapath=variant.split("-")[0], variant=variant, services=services, endpoints=10,
        workload=workload, rate_pps=None, position="last", position_index=services - 1,
        repetitions=[socket_repetition(rng, rtt_ns, tps, cpu_ns, failed, jitter, workload)
                     for _ in range(reps)],
        control=control, socket={"loop": loop, "flows": flows, "rate_tps": rate_tps},
        sync_seconds=2.0, settle_seconds=0.5)


def write(path: Path, points: list[PointDoc], env: dict[str, Any] | None = None,
          name: str = "syn") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with ResultWriter(path, scenario={"name": name, "path": f"{name}.toml", "text": ""},
                      environment=copy.deepcopy(env or ENV)) as w:
        for p in points:
            w.add_point(p)
    return path


def in_memory(points: list[PointDoc], env: dict[str, Any] | None = None) -> ResultDoc:
    """The document ResultWriter would write, without the file (and its fsyncs)."""
    doc = {"schema_version": SCHEMA_VERSION, "kind": KIND, "run_id": "mem",
           "started": "2026-11-29T00:00:00+00:00", "finished": "2026-11-29T00:01:00+00:00",
           "status": "complete", "scenario": {"name": "syn", "path": "syn.toml", "text": ""},
           "environment": copy.deepcopy(env or ENV),
           "points": [{**p, "summary": summarise_point(p)} for p in points]}
    return validate_result(json.loads(json.dumps(doc)), "in-memory")


def main(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


def changes(c: compare.Comparison, metric: str) -> list[compare.MetricChange]:
    """The rows of one metric in a comparison."""
    return [mc for mc in c.changes if mc.metric.name == metric]


REGRESSED_SCALES = (1, 100, 1000)


def regressed_results(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(base, 20 % slower latency, same distribution redrawn) result files."""
    rng = np.random.default_rng(11)
    base = write(tmp_path / "base.json", [point(rng, services=s) for s in REGRESSED_SCALES])
    slow = write(tmp_path / "slow.json",
                 [point(rng, services=s, latency_ns=12_000) for s in REGRESSED_SCALES])
    same = write(tmp_path / "same.json", [point(rng, services=s) for s in REGRESSED_SCALES])
    return base, slow, same
