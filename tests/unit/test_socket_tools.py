"""The socket workloads' output parsers and argument checks (no root, no processes).

The sockperf and iperf3 files under tests/data/sockets are those tools' real
output on this project's machine (Debian's sockperf 3.7, iperf3 3.12).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bench.analysis.stats import percentiles
from bench.errors import KpbenchError
from bench.measure import socket_tools as T
from bench.measure.sockets import SocketResult, SocketWorkload
from tests.conftest import DATA

SOCK = DATA / "sockets"


def test_crr_client_line_is_read_field_by_field() -> None:
    s = T.parse_crr_client("noise\ncrr-client transactions=400 connect_failed=3 timeouts=2 "
                           "errors=1 seconds=0.304702 flows=4 loop=open rate=500.000\n")
    assert (s.transactions, s.connect_failed, s.timeouts, s.errors) == (400, 3, 2, 1)
    assert (s.seconds, s.flows, s.loop, s.rate, s.failed) == (0.304702, 4, "open", 500.0, 6)


def test_crr_outputs_without_a_summary_are_errors_naming_the_last_line() -> None:
    with pytest.raises(KpbenchError, match="no summary: kpb-crr: bad --flows value"):
        T.parse_crr_client("kpb-crr: bad --flows value\n")
    with pytest.raises(KpbenchError, match="responder printed no summary: ready"):
        T.parse_crr_server("ready\n")
    s = T.parse_crr_server("ready\ncrr-server served=800 errors=2 connections=8\n")
    assert (s.served, s.errors, s.connections) == (800, 2, 8)


def test_crr_samples_are_little_endian_u32_and_their_count_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_bytes(np.array([1, 2_000_000, 2**32 - 1], dtype="<u4").tobytes())
    assert T.read_crr_samples(f, 3).tolist() == [1, 2_000_000, 2**32 - 1]
    with pytest.raises(KpbenchError, match="12 bytes of samples for 4 transactions"):
        T.read_crr_samples(f, 4)


def test_sockperf_rtt_is_rx_minus_tx_and_agrees_with_sockperfs_own_percentiles() -> None:
    out = (SOCK / "sockperf-udp.out").read_text()
    s = T.parse_sockperf(out, (SOCK / "sockperf-udp.csv").read_text())
    assert (s.seconds, s.sent, s.received, s.dropped) == (0.433, 89, 89, 0)
    assert len(s.rtt_ns) == s.received
    # sockperf reports half the round trip ("latency", in us); ours is the whole RTT in ns.
    own = {float(q): float(v) for q, v in
           re.findall(r"percentile (\d+\.\d+) =\s+([\d.]+)", out)}
    extremes = dict(re.findall(r"<(MIN|MAX)> observation =\s+([\d.]+)", out))
    # (Its p99 of 89 samples is not nearest-rank; the median and the extremes are.)
    assert percentiles(s.rtt_ns, (50,))["p50"] == pytest.approx(2 * own[50.0] * 1000, rel=0.01)
    assert s.rtt_ns.min() == pytest.approx(2 * float(extremes["MIN"]) * 1000, rel=0.01)
    assert s.rtt_ns.max() == pytest.approx(2 * float(extremes["MAX"]) * 1000, rel=0.01)


def test_sockperf_without_a_server_is_an_error() -> None:
    with pytest.raises(KpbenchError, match="No messages were received from the server"):
        T.parse_sockperf((SOCK / "sockperf-noserver.out").read_text(), "")


def test_iperf3_totals_and_its_errors() -> None:
    s = T.parse_iperf3((SOCK / "iperf3-2streams.json").read_text())
    assert s.streams == 2 and s.bytes_received > 0 and s.seconds > 0.9
    assert s.bits_per_second == pytest.approx(s.bytes_received * 8 / s.seconds, rel=1e-6)
    with pytest.raises(KpbenchError, match="unable to connect to server: Connection refused"):
        T.parse_iperf3((SOCK / "iperf3-refused.json").read_text())
    with pytest.raises(KpbenchError, match="no JSON: iperf3: error"):
        T.parse_iperf3("iperf3: error - bad option\n")


def test_a_missing_tool_names_the_set_up_script(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KpbenchError, match="sockperf is not installed: run scripts/setup.sh"):
        T.require("sockperf")


def test_conntrack_event_total_and_lost_events() -> None:
    assert T.parse_conntrack_events(
        "conntrack v1.4.7 (conntrack-tools): 300 flow events have been shown.\n") == 300
    with pytest.raises(KpbenchError, match="lost events"):
        T.parse_conntrack_events("WARNING: We have hit ENOBUFS! We are losing events.\n"
                                 "conntrack v1.4.7 (conntrack-tools): 9 flow events have "
                                 "been shown.\n")
    with pytest.raises(KpbenchError, match="no event count: Killed"):
        T.parse_conntrack_events("Killed\n")


@pytest.mark.parametrize(("kw", "message"), [
    ({"workload": "tcp-xx"}, "unknown socket workload"),
    ({"workload": "tcp-rr", "loop": "half"}, "loop must be"),
    ({"workload": "tcp-rr", "flows": 0}, "flows 0 out of range"),
    ({"workload": "tcp-rr", "loop": "open"}, "rate_tps is required"),
    ({"workload": "tcp-rr", "rate_tps": 10}, "rate_tps is required"),
    ({"workload": "tcp-stream", "loop": "open", "rate_tps": 10}, "closed loop only"),
    ({"workload": "udp-rr", "request_bytes": 8}, "request_bytes must be >= 14"),
])
def test_workload_check_names_the_bad_field(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SocketWorkload(**kw).check()


def test_tcp_rr_runs_on_kpb_crr_not_sockperf() -> None:
    # sockperf's TCP client sleeps 2 s after connecting on every run (socket_tools' doc):
    # tcp-rr runs kpb-crr's kept-alive mode, so sockperf's minimum message is not its.
    from bench.measure import sockets as S

    assert S.KPB_CRR["tcp-rr"] == ("--keep",) and S.KPB_CRR["tcp-crr"] == ()
    SocketWorkload("tcp-rr", request_bytes=1).check()


def test_summary_uses_the_issues_metric_names() -> None:
    from bench.analysis.stats import Histogram

    r = SocketResult("tcp-crr", "closed", 8, None, 2.0, 1000, 500.0, None,
                     Histogram.from_samples([1000, 2000, 3000]), 1, 1000,
                     {"a": {"retransmits": 2, "resets_sent": 1}, "b": {"retransmits": 1}},
                     1000, generator_cpu_ns=5_000_000, responder_cpu_ns=3_000_000)
    s = r.summary()
    assert s["transactions_per_s"] == 500.0 and s["flows"] == 8 and s["loop"] == "closed"
    assert s["rtt_ns"]["count"] == 3 and s["rtt_ns"]["p50"] == pytest.approx(2000, rel=0.01)
    assert (s["retransmits"], s["resets"], s["failed_connections"]) == (3, 1, 1)
    assert s["cpu_ns_per_transaction"] == {"generator": 5000.0, "responder": 3000.0}
    assert s["conntrack_entries_created"] == 1000 and s["throughput_bps"] is None


def test_the_generator_is_stale_by_what_it_was_built_from_not_by_file_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import os

    src, binary, stamp = tmp_path / "crr.c", tmp_path / "kpb-crr", tmp_path / "kpb-crr.stamp"
    src.write_text("int main(void) { return 0; }\n")
    binary.write_text("built")
    monkeypatch.setattr(T, "CRR_SOURCE", src)
    monkeypatch.setattr(T, "CRR_BINARY", binary)
    monkeypatch.setattr(T, "CRR_STAMP", stamp)
    monkeypatch.setattr(T, "CHECKOUT", tmp_path)
    os.utime(binary, (1, 1))  # older than the source, as after a checkout
    stamp.write_text(hashlib.sha256(src.read_bytes()).hexdigest() + " 12.2.0\n")
    assert T.crr_binary() == binary  # the same bytes: not stale
    src.write_text("int main(void) { return 1; }\n")  # another source
    with pytest.raises(KpbenchError, match="built from another crr.c: run scripts/setup.sh"):
        T.crr_binary()
    stamp.unlink()  # no stamp: file times decide
    with pytest.raises(KpbenchError, match="scripts/setup.sh"):
        T.crr_binary()
    os.utime(binary)
    assert T.crr_binary() == binary


def test_one_flow_pins_generator_and_responders_to_one_cpu_more_flows_do_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.measure import sockets as S
    from bench.results.writer import make_socket_repetition

    monkeypatch.setattr(S.os, "sched_getaffinity", lambda pid: {0, 1, 3})
    assert S.shared_cpu(1) == 3 and S.shared_cpu(8) is None
    one, eight = SocketWorkload("tcp-rr", flows=1), SocketWorkload("tcp-rr", flows=8)
    assert S._pinned(one, ["kpb-crr", "client"]) == ["taskset", "-c", "3", "kpb-crr", "client"]
    assert S._pinned(eight, ["kpb-crr", "client"]) == ["kpb-crr", "client"]
    monkeypatch.setattr(S.os, "sched_getaffinity", lambda pid: {0})
    assert S.shared_cpu(1) is None  # one CPU: nothing to choose
    rep = make_socket_repetition(seconds=1.0, transactions=10, failed=0, rtt_hist=None,
                                 shared_cpu=3)
    assert rep["socket"].get("shared_cpu") == 3
    assert "shared_cpu" not in make_socket_repetition(seconds=1.0, transactions=10, failed=0,
                                                      rtt_hist=None)["socket"]
