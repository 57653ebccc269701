"""Disruption maths (bench.measure.disruption) on synthetic stamps with known answers,
the scenario's [disruption] table, and a disruption point through summary, compare
metrics, CSV and the timeline plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import results as R
from bench.analysis.metrics import METRICS_BY_NAME
from bench.analysis.stats import Histogram
from bench.errors import InputError, KpbenchError
from bench.measure import disruption as D
from bench.measure import rr_background as RR
from bench.measure import socket_tools as T
from bench.measure.scenario import parse_scenario
from bench.present.export import rows
from bench.present.plots import plot_result
from bench.present.summary import tables
from tests.unit.test_results import ENV, SCENARIO

MS = 1_000_000
T0 = 5_000_000_000_000  # an arbitrary CLOCK_MONOTONIC origin
SPACING = 200_000  # 5000 packets/s
LATENCY = 50_000


def stream(seconds: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Departures every 0.2 ms from T0, each delivered 50 us later."""
    d = T0 + np.arange(int(seconds * 1e9 / SPACING), dtype=np.int64) * SPACING
    return d, d + LATENCY


def test_every_packet_is_in_one_bin_delivered_or_lost() -> None:
    d, a = stream()
    rng = np.random.default_rng(1)
    a[rng.random(len(a)) < 0.1] = 0  # 10 % lost anywhere
    tl = D.bin_timeline(d, a, T0 + 1000 * MS + 3 * MS)  # edges off the packet grid
    assert (tl.delivered + tl.lost == tl.sent).all() and (tl.lost >= 0).all()
    assert tl.sent.sum() == len(d) and tl.delivered.sum() == np.count_nonzero(a)
    assert (tl.sent[1:-1] == 50).all()  # 10 ms bins at 5000 packets/s
    # The event's start is a bin edge.
    assert (T0 + 1003 * MS - tl.t0_ns) % D.BIN_NS == 0


def test_a_known_outage_gives_its_stall_loss_excess_and_recovery() -> None:
    d, a = stream()
    start, end = T0 + 1000 * MS, T0 + 1300 * MS
    out = (d >= start) & (d < end)
    a[out] = 0  # everything sent during the event is lost
    slow = (d >= end) & (d < end + 50 * MS)
    a[slow] = d[slow] + 1 * MS  # then 50 ms of 1 ms latency
    tl, fig = D.summarise(d, a, start, end)
    assert fig["lost"] == out.sum() == 1500 and fig["baseline_lost"] == 0
    # From the first packet sent after the last arrival (the first lost one, sent at
    # `start`) to the next arrival: the packet sent at `end`, 1 ms later.
    assert fig["stall_ms"] == pytest.approx((end + 1 * MS - start) / 1e6)
    # Undisturbed, packets are in flight without an arrival for one latency at a time.
    assert fig["baseline_stall_ms"] == pytest.approx(LATENCY / 1e6)
    # The event's bins hold no delivery: its p99 is that of the slow packets right after.
    assert fig["baseline_p99_ns"] == pytest.approx(LATENCY)
    assert fig["recovery_ms"] == pytest.approx(50.0)
    assert fig["off_baseline_after_ms"] == pytest.approx(50.0)  # the 5 slow bins
    assert fig["event_ms"] == pytest.approx(300.0)
    lost_bins = np.flatnonzero(tl.lost)
    assert len(lost_bins) == 30 and (tl.delivered[lost_bins] == 0).all()


def test_excess_p99_is_the_event_bins_over_the_baseline() -> None:
    d, a = stream()
    start, end = T0 + 1000 * MS, T0 + 1005 * MS  # 5 ms: p99 over its whole bin
    during = (d >= start) & (d < start + D.BIN_NS)
    a[during] = d[during] + 400_000
    _, fig = D.summarise(d, a, start, end)
    assert fig["excess_p99_ns"] == pytest.approx(350_000)
    # Normal from the next bin: recovery has the bins' resolution.
    assert fig["lost"] == 0 and fig["recovery_ms"] == pytest.approx(5.0)


def test_a_pause_of_the_sender_is_no_stall() -> None:
    d, a = stream()
    keep = (d < T0 + 1000 * MS) | (d >= T0 + 1100 * MS)  # 100 ms nothing sent
    _, fig = D.summarise(d[keep], a[keep], T0 + 1000 * MS, T0 + 1001 * MS)
    assert fig["stall_ms"] == pytest.approx(LATENCY / 1e6) and fig["lost"] == 0


def test_loss_to_the_end_is_a_stall_to_the_last_departure_and_no_recovery() -> None:
    d, a = stream()
    a[d >= T0 + 1000 * MS] = 0
    _, fig = D.summarise(d, a, T0 + 1000 * MS, T0 + 1010 * MS)
    assert fig["off_baseline_after_ms"] == pytest.approx(1000 - 10)
    assert fig["stall_ms"] == pytest.approx((d[-1] - (T0 + 1000 * MS)) / 1e6)
    assert fig["recovery_ms"] is None and fig["excess_p99_ns"] is None


def test_packets_keeps_the_sent_ones_in_departure_order() -> None:
    depart = np.array([30, 0, 10, 20, 50], dtype=np.uint64)
    arrive = np.array([35, 0, 0, 26, 55], dtype=np.uint64)
    d, a = D.packets(depart, arrive, until_ns=40)
    assert d.tolist() == [10, 20, 30] and a.tolist() == [0, 26, 35]


def scenario(**table: Any) -> Any:
    doc = {"kind": "disruption", "sweep": {"datapaths": ["nftables", "userspace"],
                                           "services": [1000]},
           "disruption": table}
    return parse_scenario(doc, "<t>", json.dumps(doc))


def test_the_disruption_table_as_the_issue_writes_it() -> None:
    sc = scenario(events=["full-sync", "proxy-down"], background=["udp-new", "udp-established"],
                  rate_pps=5000, before_s=2, after_s=5, churn_per_s=[10, 100], churn_s=10,
                  min_sync_period_s=1, down_s=3)
    assert sc.measured == ("disruption-full-sync/udp-new", "disruption-full-sync/udp-established",
                           "disruption-proxy-down/udp-new",
                           "disruption-proxy-down/udp-established")
    assert (sc.disruption_rate_pps, sc.before_s, sc.after_s, sc.down_s) == (5000, 2.0, 5.0, 3.0)
    assert len(sc.points) == 8
    with pytest.raises(InputError, match=r"disruption\.events"):
        scenario(events=["churn", "link-down"])
    with pytest.raises(InputError, match=r"disruption\.rate_pps: expected int"):
        scenario(rate_pps="fast")
    with pytest.raises(InputError, match=r"unknown key; known keys here: after_s"):
        scenario(tcp=True)


def disruption_point(stalls: list[float], workload: str = "disruption-full-sync/udp-new",
                     **figures: Any) -> R.PointDoc:
    reps = []
    for stall in stalls:
        d, a = stream(1.0)
        start = T0 + 500 * MS
        a[(d >= start) & (d < start + int(stall * MS))] = 0
        tl, fig = D.summarise(d, a, start, start + int(stall * MS))
        ok = a != 0
        reps.append({**R.make_repetition(sent=len(d), delivered=int(ok.sum()),
                                         latency_hist=Histogram.from_samples(a[ok] - d[ok]),
                                         sync={"apply": stall / 1e3}),
                     "disruption": {"event": "full-sync", **fig, **figures,
                                    "timeline": tl.document(start, start + int(stall * MS))}})
    return R.make_point(datapath="nftables", variant="nftables", services=1000, endpoints=10,
                        workload=workload, rate_pps=5000,
                        position="last", position_index=999, repetitions=reps)  # type: ignore[arg-type]


def test_a_disruption_point_summarises_compares_exports_and_plots(tmp_path: Path) -> None:
    point = disruption_point([100.0, 200.0, 300.0])
    with R.ResultWriter(tmp_path / "r.json", scenario=SCENARIO, environment=ENV) as w:
        w.add_point(point)
    doc = R.load_result(tmp_path / "r.json")  # also checked against the schema
    p = doc["points"][0]
    summary = p["summary"]["disruption"]
    assert summary["lost"] == 1000 and summary["not_recovered"] == 0
    assert summary["stall_ms"] == pytest.approx(200.0, abs=0.3)
    assert METRICS_BY_NAME["stall_ms"].samples(p) == pytest.approx([100, 200, 300], abs=0.3)
    assert METRICS_BY_NAME["lost"].pooled(p) == 1000
    assert METRICS_BY_NAME["excess_p99_ns"].better == "lower"
    metrics = {(r["repetition"], r["metric"]) for r in rows(doc)}
    assert {("all", "disruption.stall_ms"), (0, "disruption.lost"),
            ("all", "disruption.recovery_ms")} <= metrics
    files = plot_result(doc, tmp_path / "plots", formats=("svg",))
    assert [f.name for f in files] == ["timeline_nftables_s1000_disruption-full-sync-udp-new.svg"]


def test_show_has_a_disruption_table_with_the_event_figures(tmp_path: Path) -> None:
    failed = R.make_point(datapath="nftables", variant="nftables", services=5000,
                          endpoints=10, workload="disruption-proxy-down/udp-new",
                          rate_pps=5000, position="last", position_index=4999,
                          status="exceeded-limit", error="did not finish within 300 s")
    with R.ResultWriter(tmp_path / "r.json", scenario=SCENARIO, environment=ENV) as w:
        w.add_point(disruption_point([100.0, 200.0, 300.0]))
        w.add_point(failed)  # type: ignore[arg-type]
    tabs = tables(R.load_result(tmp_path / "r.json"))
    # The disruption table alone: no packet table whose columns a disruption point lacks.
    assert len(tabs) == 1
    t = tabs[0]
    assert len(t.rows) == 2
    stopped = dict(zip(t.columns, t.rows[1], strict=True))
    assert stopped["status"].startswith("exceeded-limit: did not finish")
    assert stopped["stall"] == "—" and stopped["lost"] == "—"
    row = dict(zip(t.columns, t.rows[0], strict=True))
    assert row["event/background"] == "full-sync/udp-new"
    assert row["stall"].startswith("200") and row["stall"].endswith(" ms")
    assert row["lost"] == "1,000" and row["not back"] == "0"
    assert row["apply"] == "0.200 s" and row["list"] == "—"


def test_the_baseline_is_the_last_part_before_the_event() -> None:
    d, a = stream()
    early = d < T0 + 100 * MS
    a[early] = d[early] + 5 * MS  # the traffic's own start: slow
    start = T0 + 1000 * MS
    _, whole = D.summarise(d, a, start, start + 1 * MS)
    _, late = D.summarise(d, a, start, start + 1 * MS, baseline_ns=500 * MS)
    assert whole["baseline_p99_ns"] == pytest.approx(5 * MS)
    assert late["baseline_p99_ns"] == pytest.approx(LATENCY)
    assert late["baseline_stall_ms"] == pytest.approx(LATENCY / 1e6)


# --- the tcp-rr background (bench.measure.rr_background) -----------------------------

def records(due: np.ndarray, rtt: np.ndarray, status: np.ndarray,
            flags: np.ndarray | None = None) -> np.ndarray:
    """kpb-crr --records' transactions (tools/crr/crr.c) as the client writes them."""
    r = np.zeros(len(due), dtype=T.CRR_RECORD)
    r["due_ns"], r["rtt_ns"], r["status"] = due, rtt, status
    r["flags"] = 0 if flags is None else flags
    r["flow"] = np.arange(len(due)) % RR.FLOWS
    return r


def test_the_tcp_rr_background_is_accepted_and_not_for_endpoint_removed() -> None:
    sc = scenario(events=["full-sync", "proxy-down", "endpoint-removed"],
                  background=["udp-established", "tcp-rr"])
    assert sc.measured == (
        "disruption-full-sync/udp-established", "disruption-full-sync/tcp-rr",
        "disruption-proxy-down/udp-established", "disruption-proxy-down/tcp-rr",
        "disruption-endpoint-removed/udp-established",
        "disruption-endpoint-removed-no-cleanup/udp-established")
    # Without a background key: the UDP two, as before tcp-rr existed.
    assert scenario(events=["full-sync"]).background == ("udp-new", "udp-established")
    with pytest.raises(InputError, match=r"add \"udp-established\""):
        scenario(events=["endpoint-removed"], background=["tcp-rr"])
    with pytest.raises(InputError, match=r"disruption\.background"):
        scenario(background=["tcp-crr"])


def test_transaction_records_read_back_field_by_field(tmp_path: Path) -> None:
    r = records(np.array([T0, T0 + 500_000]), np.array([90_000, 7]), np.array([0, 2]),
                np.array([0, T.CRR_RECONNECTED]))
    (tmp_path / "r").write_bytes(r.tobytes())
    back = T.read_crr_records(tmp_path / "r")
    assert T.CRR_RECORD.itemsize == 24 and back.tobytes() == r.tobytes()
    assert back["due_ns"][1] == T0 + 500_000 and T.CRR_STATUS[back["status"][1]] == "timeout"
    (tmp_path / "r").write_bytes(r.tobytes()[:-1])
    with pytest.raises(KpbenchError, match="not a whole number of 24-byte"):
        T.read_crr_records(tmp_path / "r")
    r["status"][0] = 9
    (tmp_path / "r").write_bytes(r.tobytes())
    with pytest.raises(KpbenchError, match="unknown status 9"):
        T.read_crr_records(tmp_path / "r")


def test_tcp_rr_transactions_bin_by_due_time_and_a_late_one_is_a_stall_not_a_loss() -> None:
    # 2000 transactions/s for 2 s, each answered 100 us after it was due; from 1 s on the
    # path stalls 300 ms: every transaction due then completes at 1.3 s + 100 us, late
    # but ok (TCP retransmitted it), and 10 of them fail (status 3) after it.
    spacing = 500_000
    due = T0 + np.arange(4000, dtype=np.int64) * spacing
    start, end = T0 + 1000 * MS, T0 + 1300 * MS
    rtt = np.full(4000, 100_000, dtype=np.int64)
    held = (due >= start) & (due < end)
    rtt[held] = end + 100_000 - due[held]
    status = np.zeros(4000, dtype=np.uint16)
    status[(due >= end) & (due < end + 10 * spacing)] = 3
    status[-5:] = 4  # due before the stop, never started
    due_ns, done = RR.stamps(records(due, rtt, status), until_ns=int(due[-1]) + 1)
    assert (due_ns == due).all() and (done[status != 0] == 0).all()
    assert (done[status == 0] == (due + rtt)[status == 0]).all()
    tl, fig = D.summarise(due_ns, done, start, end)
    assert (tl.delivered + tl.lost == tl.sent).all() and tl.sent.sum() == 4000
    assert fig["lost"] == 15 and fig["baseline_lost"] == 0
    # From the first transaction due after the last completion (the one due at `start`)
    # to the next completion (1.3 s + 100 us): the stall, at ns precision.
    assert fig["stall_ms"] == pytest.approx((end + 100_000 - start) / 1e6)
    assert fig["excess_p99_ns"] > 290 * MS
    # The transactions due after until_ns are not part of the repetition.
    d2, _ = RR.stamps(records(due, rtt, status), until_ns=int(start))
    assert len(d2) == 2000


def test_a_tcp_rr_point_counts_transactions_in_its_csv_and_pools_tcp_figures(
        tmp_path: Path) -> None:
    udp = disruption_point([100.0])
    rr = disruption_point([100.0], "disruption-full-sync/tcp-rr", retransmits=10,
                          reconnects=0, tx_error=0)
    with R.ResultWriter(tmp_path / "r.json", scenario=SCENARIO, environment=ENV) as w:
        w.add_point(udp)
        w.add_point(rr)
    doc = R.load_result(tmp_path / "r.json")
    by = {p["workload"]: p for p in doc["points"]}
    assert by["disruption-full-sync/tcp-rr"]["summary"]["disruption"]["retransmits"] == 10
    assert "retransmits" not in by["disruption-full-sync/udp-new"]["summary"]["disruption"]
    units = {(r["workload"], r["repetition"], r["metric"]): r["unit"] for r in rows(doc)}
    assert units["disruption-full-sync/tcp-rr", "all", "disruption.lost"] == "transactions"
    assert units["disruption-full-sync/tcp-rr", 0, "sent"] == "transactions"
    assert units["disruption-full-sync/tcp-rr", 0, "disruption.tx_error"] == "transactions"
    assert units["disruption-full-sync/tcp-rr", 0, "disruption.retransmits"] == "segments"
    assert units["disruption-full-sync/udp-new", 0, "disruption.lost"] == "packets"
