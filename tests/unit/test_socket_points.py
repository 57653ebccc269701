"""Socket points (docs/sockets.md) in the analysis: their metrics, their keys, and the
direction of a comparison's verdict on each, with synthetic results whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from bench.analysis import compare
from bench.analysis.metrics import METRICS, METRICS_BY_NAME, key_label, point_key
from bench.errors import InputError
from bench.results.model import Point
from bench.results.writer import make_socket_repetition
from tests.helpers.synthetic_results import changes, in_memory, point, socket_point

SOCKET_METRICS = {"transactions_per_s", "throughput_bps", "rtt_p50", "rtt_p99", "rtt_p99.9",
                  "cpu_ns_per_transaction", "failed_connections",
                  "service_minus_direct_rtt_p50_ns", "service_minus_direct_rtt_p99_ns",
                  "service_minus_direct_cpu_ns_per_transaction",
                  "service_minus_direct_transactions_per_s"}
PACKET_METRICS = {"p50_latency", "p99_latency", "p99.9_latency", "cpu_ns_per_packet",
                  "delivered_pps", "loss"}
# Read from a point's setup (the sync before its scale), whatever its workload.
SETUP_METRICS = {"sync_full", "settle"}


def test_points_differing_only_in_flows_loop_or_rate_have_different_keys() -> None:
    rng = np.random.default_rng(1)
    pts = [socket_point(rng, workload="tcp-rr", flows=f, loop=loop, rate_tps=rate, reps=1)
           for f, loop, rate in ((8, "closed", None), (1, "closed", None),
                                 (8, "open", 5000.0), (8, "open", 10_000.0))]
    keys = [point_key(p) for p in pts]
    assert len(set(keys)) == 4 and all(len(k) == 6 for k in keys)
    assert [k[1] for k in keys] == ["tcp-rr x8 closed", "tcp-rr x1 closed",
                                    "tcp-rr x8 open@5000", "tcp-rr x8 open@10000"]
    # A socket point has no packet rate: its label does not pretend one ("r=top").
    assert key_label(keys[2]) == "nftables tcp-rr x8 open@5000 s=1000 e=10 last"
    packet = point(rng, reps=1)
    assert point_key(packet)[1] == "udp-new"
    assert key_label(point_key(packet)) == "nftables udp-new s=1000 e=10 r=5000 last"


def test_each_family_of_metrics_reads_only_its_own_points() -> None:
    rng = np.random.default_rng(2)
    sock = Point(socket_point(rng))
    stream = Point(socket_point(rng, workload="tcp-stream", tps=9e9, direct_tps=1e10))
    packet = Point(point(rng))
    assert all(r.doc["latency_hist"] is None for r in sock.repetitions)  # neutral keys
    for m in METRICS:
        if m.name in SETUP_METRICS:
            continue
        for p in (sock, stream):
            if m.name not in SOCKET_METRICS:
                assert m.samples(p) == [] and m.pooled(p) is None, m.name
        if m.name in SOCKET_METRICS:
            assert m.samples(packet) == [] and m.pooled(packet) is None, m.name
        elif m.name in PACKET_METRICS:
            assert m.samples(packet), m.name
    measured = {m.name for m in METRICS if m.samples(sock)} - SETUP_METRICS
    assert measured == SOCKET_METRICS - {"throughput_bps"}
    assert {m.name for m in METRICS if m.samples(stream)} - SETUP_METRICS == {
        "throughput_bps", "failed_connections"}


def test_socket_samples_agree_with_the_summary() -> None:
    rng = np.random.default_rng(3)
    p = Point(socket_point(rng, tps=20_000, cpu_ns=20_000, direct_cpu_ns=15_000))
    s = p.summary
    tps = METRICS_BY_NAME["transactions_per_s"]
    assert np.median(tps.samples(p)) == pytest.approx(s["transactions_per_s"], rel=0.05)
    cpu = METRICS_BY_NAME["cpu_ns_per_transaction"]
    assert cpu.pooled(p) == s["cpu_ns_per_transaction"]["total"]  # type: ignore[index]
    assert np.median(cpu.samples(p)) == pytest.approx(20_000, rel=0.05)
    diff = METRICS_BY_NAME["service_minus_direct_cpu_ns_per_transaction"]
    assert np.median(diff.samples(p)) == pytest.approx(5_000, rel=0.2)
    assert METRICS_BY_NAME["rtt_p50"].pooled(p) == s["rtt_ns"]["p50"]  # type: ignore[index]


def test_cpu_per_transaction_counts_only_the_parts_every_repetition_measured() -> None:
    def rep(softirq: int | None, datapath: int | None = 700) -> dict:
        return make_socket_repetition(seconds=1, transactions=100, failed=0, rtt_hist=None,
                                      softirq_ns=softirq, generator_cpu_ns=1000,
                                      responder_cpu_ns=500, datapath_ns=datapath)
    rng = np.random.default_rng(4)
    doc = socket_point(rng, reps=1, direct_rtt_ns=None)
    doc["repetitions"] = [rep(10_000), rep(None)]  # type: ignore[list-item]
    p = Point(doc)
    # softirq is left out of both samples, as the summary leaves it out of the total.
    assert METRICS_BY_NAME["cpu_ns_per_transaction"].samples(p) == [22.0, 22.0]
    assert p.summary["cpu_ns_per_transaction"]["total"] == 22.0  # type: ignore[index]
    doc["repetitions"] = [rep(10_000, None), rep(10_000, None)]  # type: ignore[list-item]
    p = Point(doc)  # no datapath process (the kernel datapaths): its part is not counted
    assert METRICS_BY_NAME["cpu_ns_per_transaction"].samples(p) == [115.0, 115.0]
    assert p.summary["cpu_ns_per_transaction"]["total"] == 115.0  # type: ignore[index]


# (metric, how NEW differs for "more of the quantity", whether more is worse)
DIRECTIONS = [
    ("transactions_per_s", lambda f: {"tps": 20_000 * f}, False),
    ("rtt_p50", lambda f: {"rtt_ns": 50_000 * f}, True),
    ("rtt_p99", lambda f: {"rtt_ns": 50_000 * f}, True),
    ("cpu_ns_per_transaction", lambda f: {"cpu_ns": 20_000 * f}, True),
    ("service_minus_direct_rtt_p50_ns", lambda f: {"rtt_ns": 50_000 * f}, True),
    ("service_minus_direct_transactions_per_s", lambda f: {"tps": 20_000 * f}, False),
]


@pytest.mark.parametrize("metric,change,more_is_worse", DIRECTIONS,
                         ids=[d[0] for d in DIRECTIONS])
@pytest.mark.parametrize("factor", [1.25, 0.8])
def test_direction_is_right_for_each_socket_metric(metric: str, change, more_is_worse: bool,
                                                   factor: float) -> None:
    rng = np.random.default_rng(7)
    c = compare.compare_runs(in_memory([socket_point(rng, **change(1.0))]),
                             in_memory([socket_point(rng, **change(factor))]))
    (mc,) = changes(c, metric)
    worse = (factor > 1) == more_is_worse
    assert mc.verdict == ("regression" if worse else "improvement"), mc
    assert METRICS_BY_NAME[metric].better == ("lower" if more_is_worse else "higher")


def test_a_drop_in_transactions_is_a_regression_in_every_output() -> None:
    rng = np.random.default_rng(8)
    c = compare.compare_runs(in_memory([socket_point(rng)]),
                             in_memory([socket_point(rng, tps=15_000)]))
    (tps,) = changes(c, "transactions_per_s")
    assert tps.verdict == "regression" and tps.change_pct < -20  # type: ignore[operator]
    (diff,) = changes(c, "service_minus_direct_transactions_per_s")
    # Service - direct went from about -5,000 to -10,000 tx/s: 20 % of the direct 25,000.
    assert diff.verdict == "regression" and diff.change_pct is None
    assert diff.effect == pytest.approx(-20, abs=4) and diff.effect_text().endswith("%")
    gate = compare.parse_gate("service_minus_direct_transactions_per_s:10%")
    assert not gate.absolute
    assert [g.metric for g, _ in c.gate_failures([gate])] == [gate.metric]
    assert compare.parse_gate("transactions_per_s:10%") in [
        g for g, _ in c.gate_failures([compare.parse_gate("transactions_per_s:10%")])]
    # Its RTT differences stay in ns.
    assert compare.parse_gate("service_minus_direct_rtt_p50_ns:500ns").absolute
    with pytest.raises(InputError):
        compare.parse_gate("service_minus_direct_transactions_per_s:500ns")


def test_points_differing_in_load_are_compared_with_their_own_kind() -> None:
    rng = np.random.default_rng(9)
    base = [socket_point(rng, flows=1, tps=10_000), socket_point(rng, flows=8, tps=40_000)]
    new = [socket_point(rng, flows=1, tps=10_000), socket_point(rng, flows=8, tps=40_000)]
    c = compare.compare_runs(in_memory(base), in_memory(new))
    assert not c.points and not c.warnings[:-1]  # no "two points for one key"
    assert all(mc.verdict != "regression" for mc in changes(c, "transactions_per_s"))


def test_a_failed_repetition_leaves_its_partner_unpaired() -> None:
    rng = np.random.default_rng(10)
    doc = socket_point(rng, reps=3)
    # The measured repetition 1 failed; its direct repetition 1 did not.
    doc["repetitions"] = [doc["repetitions"][0], doc["repetitions"][2]]
    doc["failed_repetitions"] = [{"phase": "measured", "index": 1, "error": "boom"}]
    reps, control = doc["repetitions"], doc["control"]
    tps = METRICS_BY_NAME["service_minus_direct_transactions_per_s"]
    assert tps.samples(Point(doc)) == [
        reps[0]["socket"]["transactions_per_s"] - control[0]["socket"]["transactions_per_s"],
        reps[1]["socket"]["transactions_per_s"] - control[2]["socket"]["transactions_per_s"]]
    # Records that do not account for every attempt: paired in order, as before.
    doc["failed_repetitions"] = []
    assert len(tps.samples(Point(doc))) == 2
