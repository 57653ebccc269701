"""Socket points (docs/sockets.md) as shown: CSV and the other export formats, the summary
tables of `kpbench show`, the run's epilogue and the report, and the plots."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.present import export, export_formats
from bench.present.summary import figures_tables, points_table, sockets_table, tables
from bench.results.model import Result
from tests.helpers.synthetic_results import (
    in_memory,
    keep_signal_handlers,
    main,
    point,
    socket_point,
    write,
)

__all__ = ["keep_signal_handlers"]  # the autouse fixture, for this module too


def mixed(rng: np.random.Generator | None = None) -> Any:
    rng = rng or np.random.default_rng(5)
    pts = [socket_point(rng, variant=v, workload="tcp-crr", flows=f, reps=2, services=n,
                        tps=10_000 * f ** 0.5, direct_tps=12_000 * f ** 0.5)
           for v in ("nftables", "iptables-legacy") for f in (1, 8) for n in (10, 1000)]
    pts.append(socket_point(rng, workload="tcp-rr", flows=8, loop="open", rate_tps=5000.0,
                            reps=2))
    pts.append(socket_point(rng, workload="tcp-stream", flows=4, reps=2, tps=9e9,
                            direct_tps=1e10, direct_rtt_ns=1))
    pts.append(point(rng, reps=2))
    return in_memory(pts)


def csv_rows(doc: Any) -> list[dict[str, str]]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=export.COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in export.rows(doc):
        w.writerow(r)
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


def test_csv_gives_socket_points_their_rows_and_packet_points_theirs() -> None:
    rows = csv_rows(mixed())
    assert export.COLUMNS[:12] == ("run_id", "datapath", "variant", "services", "endpoints",
                                   "workload", "rate_pps", "position", "repetition", "metric",
                                   "value", "unit")  # the packet columns, unchanged

    def get(workload: str, flows: str, metric: str, rep: str = "all") -> list[dict[str, str]]:
        return [r for r in rows if r["workload"] == workload and r["flows"] == flows
                and r["variant"] == "nftables" and r["services"] == "1000"
                and r["metric"] == metric and r["repetition"] == rep]

    (tps,) = get("tcp-crr", "8", "transactions_per_s")
    assert tps["unit"] == "tx/s" and tps["loop"] == "closed" and tps["rate_tps"] == ""
    assert float(tps["value"]) == pytest.approx(28_284, rel=0.1)
    for metric in ("rtt_p50", "rtt_p90", "rtt_p99", "rtt_p99.9", "cpu_ns_per_transaction",
                   "cpu_ns_per_transaction.softirq", "cpu_ns_per_transaction.generator",
                   "cpu_ns_per_transaction.responder", "failed_connections", "retransmits",
                   "resets", "conntrack_entries_created", "direct.transactions_per_s",
                   "direct.rtt_p50", "direct.cpu_ns_per_transaction",
                   "service_minus_direct_rtt_p50_ns", "service_minus_direct_rtt_p99_ns",
                   "service_minus_direct_cpu_ns_per_transaction",
                   "service_minus_direct_transactions_per_s"):
        assert len(get("tcp-crr", "8", metric)) == 1, metric
    # Two points that differ only in flows are told apart by the flows column.
    assert len(get("tcp-crr", "1", "transactions_per_s")) == 1
    # A socket repetition's rows are its socket figures, never neutral packet keys.
    reps = [r for r in rows if r["flows"] and r["repetition"] in ("0", "direct-1")]
    assert reps and not {"sent", "delivered", "latency_p50"} & {r["metric"] for r in reps}
    assert {"socket.transactions", "socket.seconds", "rtt_p99"} <= {r["metric"] for r in reps}
    assert not [r for r in rows if r["flows"] and r["repetition"].startswith("control")]
    (open_,) = [r for r in rows if r["workload"] == "tcp-rr" and r["repetition"] == "all"
                and r["metric"] == "transactions_per_s"]
    assert open_["loop"] == "open" and float(open_["rate_tps"]) == 5000
    (stream,) = [r for r in rows if r["workload"] == "tcp-stream" and r["repetition"] == "all"
                 and r["metric"] == "throughput_bps"]
    assert stream["unit"] == "bit/s"
    # The packet point: its rows as before, the socket columns empty.
    packet = [r for r in rows if r["workload"] == "udp-new"]
    assert {"latency_p50", "cpu_ns_per_packet", "sent"} <= {r["metric"] for r in packet}
    assert all(r["loop"] == r["flows"] == r["rate_tps"] == "" for r in packet)
    assert not {"transactions_per_s", "rtt_p50"} & {r["metric"] for r in packet}


def test_other_formats_carry_the_socket_figures_and_the_load() -> None:
    doc = mixed()
    docs = [json.loads(line) for line in export_formats.opensearch_lines(doc)][1::2]
    crr = [d for d in docs if d["workload"] == "tcp-crr" and d["flows"] == 8
           and d["metricName"] == "transactions_per_s"]
    assert len(crr) == 4 and all(d["loop"] == "closed" for d in crr)
    assert all("flows" not in d for d in docs if d["workload"] == "udp-new")
    items = export_formats.perfdash(doc)["dataItems"]
    rtt = [i for i in items if i["labels"]["Metric"] == "rtt"]
    assert rtt and all(set(i["data"]) == {"Perc50", "Perc90", "Perc99", "Perc999"}
                       for i in rtt)
    labels = [tuple(sorted(i["labels"].items())) for i in items]
    assert len(labels) == len(set(labels))  # points differing in flows stay apart
    assert any(i["labels"]["Metric"] == "service_minus_direct_transactions_per_s"
               for i in items)


def test_show_has_a_socket_table_and_the_packet_table_is_as_before() -> None:
    doc = mixed()
    result = Result(doc)
    packet = points_table(result)
    assert [r[1] for r in packet.rows] == ["udp-new"]
    socks = sockets_table(result)
    assert socks.columns[:3] == ["variant", "workload", "load"]
    assert {"tx/s", "rtt p50", "rtt p99", "cpu/tx", "svc-dir p50", "svc-dir tx/s"} <= set(
        socks.columns)
    row = dict(zip(socks.columns, socks.rows[0], strict=True))
    assert row["load"] == "x1 closed" and row["tx/s"].endswith(" tx/s")
    assert row["rtt p50"].endswith(" µs") and row["svc-dir tx/s"].startswith("-")
    assert row["cpu/tx"].endswith(" ns")
    loads = {r[2] for r in socks.rows}
    assert {"x8 open@5000", "x4 closed"} <= loads
    stream = next(r for r in socks.rows if r[1] == "tcp-stream")
    assert "Gbit/s" in stream[socks.columns.index("tx/s")]
    assert len(tables(result)) == 2
    only_sockets = in_memory([p for p in doc["points"] if p.get("flows")])
    assert [t.columns[2] for t in tables(only_sockets)] == ["load"]
    only_packets = in_memory([p for p in doc["points"] if not p.get("flows")])
    assert [t.columns for t in tables(only_packets)] == [points_table(only_packets).columns]


def test_the_epilogue_has_one_table_per_socket_workload_and_load() -> None:
    figs, notes = figures_tables(mixed())
    titles = [t for t, _ in figs]
    assert "tcp-crr x8 closed: transactions/s · RTT p50" in titles
    assert "tcp-rr x8 open@5000: transactions/s · RTT p50" in titles
    assert "udp-new: p50 latency · CPU per packet" in titles
    crr = dict(figs)["tcp-crr x1 closed: transactions/s · RTT p50"]
    assert crr.columns == ["variant", "10 svc", "1,000 svc"]
    assert all(" tx/s · " in c and c.endswith("µs") for r in crr.rows for c in r[1:])
    assert not notes


def test_show_and_the_report_print_both_tables(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "r.json", mixed()["points"])
    assert main("show", path) == 0
    out = capsys.readouterr().out
    assert "svc-dir tx/s" in out and "x8 open@5000" in out and "cpu/pkt" in out
    from bench.present.report import render_report_markdown
    md = render_report_markdown(Result(mixed()), "r.json", [], Path("f"))
    assert "| svc-dir p50 |" in md and "| cpu/pkt |" in md


def test_socket_plots_beside_the_packet_plots(tmp_path: Path) -> None:
    from bench.present import plots
    doc = mixed()
    notes: list[str] = []
    files = plots.plot_result(doc, tmp_path / "p", formats=("png",), notes=notes)
    assert sorted(f.name for f in files) == sorted([
        "latency-vs-services_udp-new.png", "cpu-vs-services_udp-new.png",
        "latency-cdf_udp-new.png",
        "tps-vs-flows_tcp-crr.png", "tps-vs-services_tcp-crr.png",
        "rtt-cdf_tcp-crr-x1-closed.png",
        "rtt-cdf_tcp-crr-x8-closed.png", "service-minus-direct_tcp-crr.png",
        "tps-vs-flows_tcp-rr.png", "rtt-cdf_tcp-rr-x8-open-5000.png",
        "service-minus-direct_tcp-rr.png", "throughput-vs-flows_tcp-stream.png"])
    assert all(f.stat().st_size > 1000 for f in files) and notes == []
    # Without its socket points, a result draws what it drew before they existed.
    packets = in_memory([p for p in doc["points"] if not p.get("flows")])
    assert sorted(f.name for f in plots.plot_result(packets, tmp_path / "q",
                                                    formats=("png",))) == sorted(
        ["latency-vs-services_udp-new.png", "cpu-vs-services_udp-new.png",
         "latency-cdf_udp-new.png"])


def test_socket_plots_name_what_they_leave_out(tmp_path: Path) -> None:
    from bench.present import plots
    from bench.results.writer import make_point
    rng = np.random.default_rng(6)
    pts = [socket_point(rng, flows=f, reps=2, direct_rtt_ns=None) for f in (1, 4)]
    pts.append(make_point(datapath="ipvs", variant="ipvs", services=1000, endpoints=10,
                          workload="tcp-crr", rate_pps=None, position="last",
                          position_index=999, status="failed", error="boom",
                          socket={"loop": "closed", "flows": 8, "rate_tps": None}))
    notes: list[str] = []
    files = plots.plot_result(in_memory(pts), tmp_path, formats=("png",), notes=notes)
    assert sorted(f.name for f in files) == [
        "rtt-cdf_tcp-crr-x1-closed.png", "rtt-cdf_tcp-crr-x4-closed.png",
        "tps-vs-flows_tcp-crr.png"]
    assert any("ipvs @ 1000 services: failed (boom)" in n for n in notes)
    assert any("no direct path (not measured)" in n for n in notes)
    assert any("service-minus-direct_tcp-crr: nothing to draw" in n for n in notes)


def test_service_minus_direct_stays_readable_with_many_datapaths_at_one_load(
        tmp_path: Path) -> None:
    """The default suite's shape (one flows value, seven datapaths, three scales): the figure
    is drawn per datapath, and matplotlib's layout does not collapse (a legend of one entry
    per curve once squeezed the axes to nothing)."""
    import warnings

    from bench.present import plots
    rng = np.random.default_rng(7)
    pts = [socket_point(rng, variant=v, workload="tcp-crr", flows=8, reps=2, services=n)
           for v in ("iptables-legacy", "iptables-nft", "nftables", "ebpf-tc", "socket-lb",
                     "userspace", "ipvs") for n in (1, 1000, 5000)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = plots.plot_result(in_memory(pts), tmp_path, formats=("png",))
    names = [f.name for f in files]
    assert "service-minus-direct_tcp-crr.png" in names
    assert "tps-vs-services_tcp-crr.png" in names  # three scales: the rule walk's cost
