"""A socket point's summary: pooled rates, merged RTTs, CPU per transaction, Service - direct."""

from __future__ import annotations

import numpy as np
import pytest

from bench.analysis.stats import Histogram
from bench.results.summarise import summarise_point
from bench.results.writer import add_one_way, make_point, make_socket_repetition
from tests.helpers.synthetic_results import in_memory


def rep(transactions: int, seconds: float, rtt_us: int, softirq_ns: int,
        datapath_ns: int | None = None) -> dict:
    return make_socket_repetition(  # type: ignore[return-value]
        seconds=seconds, transactions=transactions, failed=1,
        rtt_hist=Histogram.from_samples(np.full(100, rtt_us * 1000)),
        generator_cpu_ns=transactions * 1000, responder_cpu_ns=transactions * 500,
        softirq_ns=softirq_ns, datapath_ns=datapath_ns)


def point(reps: list, control: list | None) -> dict:
    return make_point(datapath="nftables", variant="nftables", services=1, endpoints=4,
                      workload="tcp-crr", rate_pps=None, position="last", position_index=0,
                      repetitions=reps, control=control,  # type: ignore[arg-type]
                      socket={"loop": "closed", "flows": 8, "rate_tps": None})


def test_socket_summary_pools_and_subtracts_the_direct_path() -> None:
    s = summarise_point(point([rep(1000, 1.0, 50, 2_000_000), rep(3000, 1.0, 70, 6_000_000)],
                              [rep(4000, 1.0, 40, 4_000_000)]))  # type: ignore[arg-type]
    assert s["transactions_per_s"] == 2000.0  # 4000 transactions over 2 s
    assert s["rtt_ns"]["count"] == 200 and s["rtt_ns"]["min"] == 50_000  # type: ignore[index]
    cpu = s["cpu_ns_per_transaction"]
    assert cpu == {"total": 3500.0, "softirq": 2000.0, "datapath": None, "generator": 1000.0,
                   "responder": 500.0}
    assert s["failed_connections"] == 2 and s["flows"] == 8 and s["loop"] == "closed"
    assert s["direct"]["transactions_per_s"] == 4000.0
    assert s["service_minus_direct_transactions_per_s"] == -2000.0
    assert s["service_minus_direct_cpu_ns_per_transaction"] == pytest.approx(3500 - 2500)
    assert s["service_minus_direct_rtt_p50_ns"] == pytest.approx(
        s["rtt_ns"]["p50"] - 40_000)  # type: ignore[index]
    # No packet figure is made up for a socket point.
    assert s["latency_ns"] is None and s["loss"] is None and s["cpu_ns_per_packet"] is None


def test_a_part_not_measured_everywhere_is_not_diluted() -> None:
    s = summarise_point(point([rep(1000, 1.0, 50, 2_000_000, datapath_ns=3_000_000),
                               rep(1000, 1.0, 50, 2_000_000)], None))  # type: ignore[arg-type]
    assert s["cpu_ns_per_transaction"]["datapath"] is None  # type: ignore[index]
    assert "direct" not in s


# --- one-way parts (the breakdown repetitions with the oneway probe) ---------------------

def breakdown(request_us: list[int], response_us: list[int], rtt_us: int = 10_000) -> dict:
    """A breakdown repetition whose RTT (10 ms: the probe's cost inflates it) must never
    reach the summary's rtt_ns, with one-way samples of its own."""
    r = rep(100, 1.0, rtt_us, 1)
    h = [Histogram.from_samples(np.array(v, dtype=np.int64) * 1000) if v else None
         for v in (request_us, response_us)]
    return add_one_way(r, h[0], h[1], {"request_arrived": len(request_us),  # type: ignore[arg-type]
                                       "response_arrived": len(response_us), "unmatched": 0})


def test_one_way_parts_come_from_the_breakdowns_only_and_subtract_the_direct_path() -> None:
    p = point([rep(1000, 1.0, 50, 2_000_000)], [rep(1000, 1.0, 40, 2_000_000)])
    p["breakdown"] = breakdown([10] * 3 + [20] * 2, [30] * 3 + [90] * 2)  # type: ignore[typeddict-unknown-key]
    p["control_breakdown"] = breakdown([8] * 5, [9] * 5)  # type: ignore[typeddict-unknown-key]
    s = summarise_point(p)  # type: ignore[arg-type]
    one = s["one_way_ns"]
    assert one["request"]["count"] == 5 and one["response"]["count"] == 5  # type: ignore[index]
    # Histogram percentiles (log-linear buckets: within their resolution of the sample).
    assert one["request"]["p50"] == pytest.approx(10_000, rel=0.04)  # type: ignore[index]
    assert one["response"]["p50"] == pytest.approx(30_000, rel=0.04)  # type: ignore[index]
    assert one["response"]["max"] == 90_000  # type: ignore[index]
    d = s["direct"]["one_way_ns"]
    assert d["request"]["p50"] == pytest.approx(8_000, rel=0.04)
    assert s["service_minus_direct_request_p50_ns"] == pytest.approx(
        one["request"]["p50"] - d["request"]["p50"])  # type: ignore[index]
    assert s["service_minus_direct_response_p50_ns"] == pytest.approx(
        one["response"]["p50"] - d["response"]["p50"])  # type: ignore[index]
    # The breakdowns' RTT (10 ms) is never pooled with the measured repetitions'.
    assert s["rtt_ns"]["max"] == 50_000 and s["direct"]["rtt_ns"]["max"] == 40_000  # type: ignore[index]
    assert s["transactions_per_s"] == 1000.0


def test_a_direction_without_samples_is_null_and_so_is_its_difference() -> None:
    p = point([rep(1000, 1.0, 50, 1)], [rep(1000, 1.0, 40, 1)])
    p["breakdown"] = breakdown([10], [])  # type: ignore[typeddict-unknown-key]
    p["control_breakdown"] = breakdown([8], [9])  # type: ignore[typeddict-unknown-key]
    s = summarise_point(p)  # type: ignore[arg-type]
    assert s["one_way_ns"]["response"] is None  # type: ignore[index]
    assert s["service_minus_direct_response_p50_ns"] is None
    assert s["service_minus_direct_request_p50_ns"] is not None


def test_without_the_oneway_probe_the_summary_has_no_one_way_figures() -> None:
    p = point([rep(1000, 1.0, 50, 1)], [rep(1000, 1.0, 40, 1)])
    s = summarise_point(p)  # type: ignore[arg-type]
    assert "one_way_ns" not in s and "service_minus_direct_request_p50_ns" not in s
    # Without a direct breakdown: the Service's parts, no difference.
    p["breakdown"] = breakdown([10], [20])  # type: ignore[typeddict-unknown-key]
    s = summarise_point(p)  # type: ignore[arg-type]
    assert s["one_way_ns"]["request"]["count"] == 1  # type: ignore[index]
    assert "one_way_ns" not in s["direct"]
    assert "service_minus_direct_request_p50_ns" not in s


def test_one_way_parts_in_csv_and_show() -> None:
    from bench.present.export import rows
    from bench.present.summary import sockets_table
    from bench.results.model import as_result

    p = point([rep(1000, 1.0, 50, 1)], [rep(1000, 1.0, 40, 1)])
    p["breakdown"] = breakdown([10], [20])  # type: ignore[typeddict-unknown-key]
    p["control_breakdown"] = breakdown([8], [9])  # type: ignore[typeddict-unknown-key]
    doc = in_memory([p])  # type: ignore[list-item]  # validated against the schema
    got = {(r["repetition"], r["metric"]): r["value"] for r in rows(doc)}
    assert got[("all", "one_way_request_p50")] == pytest.approx(10_000, rel=0.04)
    assert got[("all", "direct.one_way_response_p50")] == pytest.approx(9_000, rel=0.04)
    assert ("all", "service_minus_direct_response_p50_ns") in got
    assert got[("breakdown", "one_way.request_arrived")] == 1
    assert got[("direct-breakdown", "one_way_request_count")] == 1
    t = sockets_table(as_result(doc))
    row = dict(zip(t.columns, t.rows[0], strict=True))
    assert row["req p50"].endswith(" µs") and row["resp p50"].endswith(" µs")
# --- the generator's ceiling and the open loop's offered rate ------------------------

def with_ceiling(p: dict, tps: float | None) -> dict:
    p["generator_ceiling"] = None if tps is None else {
        "transactions_per_s": tps, "throughput_bps": None, "seconds": 1.0,
        "measured_at": "2026-11-30T18:00:00+00:00"}
    return p


@pytest.mark.parametrize(("ceiling", "at"), [(2000.0, True), (2200.0, True),
                                              (2250.0, False), (10_000.0, False),
                                              (None, None)])
def test_a_point_near_its_generators_ceiling_says_so(ceiling: float | None,
                                                     at: bool | None) -> None:
    # 2000 tx/s against the ceiling: at 90 % of it or above is "at the ceiling".
    s = summarise_point(with_ceiling(point([rep(2000, 1.0, 50, 1)], None),  # type: ignore[arg-type]
                                     ceiling))
    assert s["at_generator_ceiling"] is at
    assert s["offered_not_reached"] is None  # a closed loop offers no rate


def test_a_stream_is_judged_by_its_throughput() -> None:
    from bench.results.summarise import ceiling_flags

    summary = {"loop": "closed", "transactions_per_s": None, "throughput_bps": 9.5e9}
    assert ceiling_flags(summary, {"transactions_per_s": None, "throughput_bps": 1e10})[
        "at_generator_ceiling"] is True
    assert ceiling_flags(summary, {"transactions_per_s": None, "throughput_bps": 2e10})[
        "at_generator_ceiling"] is False
    # A ceiling with no figure of the point's kind judges nothing.
    assert ceiling_flags(summary, {"transactions_per_s": 5.0, "throughput_bps": None})[
        "at_generator_ceiling"] is None


@pytest.mark.parametrize(("achieved", "short"), [(950, False), (949, True), (1000, False)])
def test_an_open_loop_point_short_of_its_offered_rate_says_so(achieved: int,
                                                              short: bool) -> None:
    r = rep(achieved, 1.0, 50, 1)
    r["socket"]["offered_tps"] = 1000.0
    p = point([r], None)
    p.update(loop="open", rate_tps=1000.0)
    s = summarise_point(p)  # type: ignore[arg-type]
    assert s["offered_tps"] == 1000.0 and s["offered_not_reached"] is short
