"""Disruption end to end: a known stall measured within one bin, and proxy-down on the
userspace proxy (an outage) against ebpf-tc (none); the same for the tcp-rr background,
where TCP's retransmission timer stretches a stall (and hides its loss as latency)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.cluster.testbed import Testbed
from bench.cluster.topology import CLIENT_POD_IF
from bench.datapaths import make_variant
from bench.measure import rr_background as RR
from bench.measure.disruption import BIN_NS
from bench.measure.disruption_runner import DisruptionRunner
from bench.measure.probes.latency import LatencyProbe
from bench.measure.probes.loader import TC_INGRESS, TC_PRIO, Probe, TcHook
from bench.measure.runner import with_port
from bench.measure.scenario import parse_scenario
from bench.measure.socket_points import socket_paths
from bench.measure.traffic import Target
from bench.model.generate import GenSpec, generate
from bench.present.export import write_csv
from bench.present.plots import plot_result
from bench.results.reader import load_result

pytestmark = pytest.mark.privileged
RATE = 5000
DROP_S = 0.3
RATE_TPS = 2000  # tcp-rr: transactions/s (the scenario's rate_pps)
RTO_MIN_MS = 200  # Linux's TCP_RTO_MIN: the shortest retransmission timeout


def scenario(datapaths: list[str], **disruption: Any) -> Any:
    doc = {"name": "disruption-test", "kind": "disruption",
           "sweep": {"datapaths": datapaths, "services": [10], "endpoints": 3},
           "traffic": {"repetitions": 1},
           "disruption": {"events": ["proxy-down"], "background": ["udp-new"],
                          "rate_pps": RATE, "before_s": 0.5, "after_s": 1.0, "down_s": 1.0,
                          **disruption},
           "measure": {"point_time_limit": 60}}
    return parse_scenario(doc, "<test>", json.dumps(doc))


def check_accounting(rep: dict[str, Any]) -> None:
    tl = rep["disruption"]["timeline"]
    sent, delivered = np.array(tl["sent"]), np.array(tl["delivered"])
    lost = sent - delivered
    assert (lost >= 0).all() and (delivered + lost == sent).all()
    assert sent.sum() == rep["sent"] and delivered.sum() == rep["delivered"]
    assert rep["disruption"]["lost"] + rep["disruption"]["baseline_lost"] == lost.sum()


class Gate(Probe):
    """A tc program at node 0's ingress from the client pod that drops every IPv4 packet
    while its map says so (an ARP refresh the client pod sends meanwhile passes: it is
    not the run's, and counting it made the count one above the run's loss), and stamps
    (bpf_ktime_get_ns, the probes' clock) the first and last packet it dropped and counts
    them: the injected stall as the packets met it, however late this process ran to
    open the gate again on a loaded machine."""

    name = "gate"
    tc_prio = TC_PRIO + 12
    SOURCE = b"""
    #include <uapi/linux/bpf.h>
    #include <uapi/linux/pkt_cls.h>
    #include <uapi/linux/if_ether.h>
    BPF_ARRAY(state, u64, 4);  /* closed, first drop ns, last drop ns, drops */
    int kpb_gate(struct __sk_buff *skb) {
        u32 k0 = 0, k1 = 1, k2 = 2, k3 = 3;
        u64 *closed = state.lookup(&k0), *first = state.lookup(&k1);
        u64 *last = state.lookup(&k2), *drops = state.lookup(&k3);
        if (!closed || !first || !last || !drops || !*closed
                || skb->protocol != bpf_htons(ETH_P_IP))
            return TC_ACT_UNSPEC;  /* as a tcx link, TC_ACT_OK would skip the datapath's */
        u64 now = bpf_ktime_get_ns();
        if (!*first)
            *first = now;
        *last = now;
        __sync_fetch_and_add(drops, 1);
        return TC_ACT_SHOT;
    }
    """

    def __init__(self, node_ns: str) -> None:
        super().__init__()
        self.hook = TcHook(node_ns, CLIENT_POD_IF)

    def _attach(self) -> None:
        from bcc import BPF

        self._bpf = BPF(text=self.SOURCE)
        self._attach_tc("kpb_gate", [self.hook], TC_INGRESS)

    def set(self, closed: bool) -> None:
        table = self._bpf[b"state"]
        table[table.Key(0)] = table.Leaf(int(closed))

    def read(self) -> tuple[int, int, int]:
        """(first drop ns, last drop ns, packets dropped)."""
        table = self._bpf[b"state"]
        return tuple(int(table[table.Key(i)].value) for i in (1, 2, 3))  # type: ignore[return-value]


def test_a_known_stall_is_measured_within_one_bin(tmp_path: Path) -> None:
    services, slices = generate(GenSpec(services=10, endpoints=3, nodes=2, protocol="UDP"))
    measured = services[-1]
    bed = Testbed(make_variant("iptables-legacy"), services, slices, 2,
                  pod_services={measured.key}, echo=False)
    runner = DisruptionRunner(scenario(["iptables-legacy"]), tmp_path)
    with bed, Gate(bed.cluster.node_ns(0)) as gate:
        def stall() -> tuple[int, int, dict[str, float | None]]:
            start = time.monotonic_ns()
            gate.set(True)
            time.sleep(DROP_S)
            gate.set(False)
            return start, time.monotonic_ns(), {}

        target = Target.from_client_pod(bed.cluster, measured.cluster_ip,
                                        measured.ports[0].port)
        with LatencyProbe.for_cluster(bed.cluster) as probe:
            rep = runner.repetition(bed, target, probe, "stall", "udp-new", 3.0, fire=stall)
        first, last, drops = gate.read()
    fig = rep["disruption"]
    check_accounting(rep)
    bin_ms = BIN_NS / 1e6
    known_ms = (last - first) / 1e6  # first to last packet the gate dropped
    print(json.dumps({"known_ms": known_ms, "gate_drops": drops,
                      **{k: v for k, v in fig.items() if k != "timeline"}}))
    assert known_ms >= DROP_S * 1e3 / 2  # the sender was mostly sending
    assert abs(fig["stall_ms"] - known_ms) <= bin_ms, (known_ms, fig)
    # Every packet the gate dropped is lost, and no other: a packet sent just before the
    # event's start and still on its way when the gate closed is lost in the baseline
    # (its send time), so at most the one packet in flight then (5000 pps, ~10 us).
    assert fig["lost"] + fig["baseline_lost"] == drops, (drops, fig)
    assert fig["baseline_lost"] <= 1 and fig["baseline_stall_ms"] < DROP_S * 1e3 / 3, fig
    # Back to baseline within the watched window; how soon depends on the machine's load
    # (513 ms once under other jobs), which is no known quantity of this workload.
    assert fig["recovery_ms"] is not None, fig


def test_proxy_down_is_an_outage_for_userspace_and_none_for_ebpf_tc(tmp_path: Path) -> None:
    path = DisruptionRunner(scenario(["ebpf-tc", "userspace"]), tmp_path).run()
    doc = load_result(path)
    points = {p["variant"]: p for p in doc["points"]}
    assert {p["workload"] for p in doc["points"]} == {"disruption-proxy-down/udp-new"}
    for p in points.values():
        assert p["status"] == "ok", p.get("error")
        check_accounting(p["repetitions"][0])
    user = points["userspace"]["repetitions"][0]["disruption"]
    ebpf = points["ebpf-tc"]["repetitions"][0]["disruption"]
    print(json.dumps({v: {k: x for k, x in f.items() if k != "timeline"}
                      for v, f in (("userspace", user), ("ebpf-tc", ebpf))}))
    # userspace: nothing reaches the service while its proxy is dead (1 s down).
    assert user["stall_ms"] >= 900 and user["lost"] >= RATE * 0.9, user
    # ebpf-tc: the kernel keeps forwarding without its agent.
    assert ebpf["lost"] == 0 and ebpf["stall_ms"] < 50, ebpf
    assert points["ebpf-tc"]["summary"]["disruption"]["lost"] == 0
    # The result exports and plots.
    csv_path = tmp_path / "out.csv"
    write_csv(doc, csv_path)
    assert "disruption.stall_ms" in csv_path.read_text()
    files = plot_result(doc, tmp_path / "plots", formats=("png",))
    assert any("timeline" in f.name for f in files), files


def test_a_first_sync_beyond_the_limit_records_every_event_point_as_exceeded(
        tmp_path: Path) -> None:
    """The scale's first full sync is the packet runner's (ScaleLoop.first_sync): past
    the per-point limit, every event point of the scale is recorded as exceeded, with
    the time reached on each node, and no event is run."""
    sc = scenario(["iptables-legacy"], events=["proxy-down", "full-sync"])
    sc = dataclasses.replace(sc, point_time_limit=0.001)
    points = load_result(DisruptionRunner(sc, tmp_path).run())["points"]
    assert sorted(p["workload"] for p in points) == ["disruption-full-sync/udp-new",
                                                     "disruption-proxy-down/udp-new"]
    for pt in points:
        assert pt["status"] == "exceeded-limit" and "did not finish within" in pt["error"]
        assert not pt["repetitions"], pt
        assert pt["setup"]["sync_seconds"] > 0.001, pt["setup"]


def test_a_known_stall_of_tcp_rr_lasts_at_least_the_drop_and_at_most_one_backoff_more(
        tmp_path: Path) -> None:
    services, slices = generate(GenSpec(services=10, endpoints=3, nodes=2, protocol="UDP"))
    services[-1], slices = with_port(services[-1], slices, "TCP")
    measured = services[-1]
    bed = Testbed(make_variant("iptables-legacy"), services, slices, 2,
                  pod_services={measured.key}, echo=False)
    runner = DisruptionRunner(scenario(["iptables-legacy"], background=["tcp-rr"],
                                       rate_pps=RATE_TPS), tmp_path)
    shut: list[int] = []  # certainly shut: from set(True) done to set(False) called
    with bed, Gate(bed.cluster.node_ns(0)) as gate:
        def stall() -> tuple[int, int, dict[str, float | None]]:
            start = time.monotonic_ns()
            gate.set(True)
            t = time.monotonic_ns()
            time.sleep(DROP_S)
            shut.append(time.monotonic_ns() - t)
            gate.set(False)
            return start, time.monotonic_ns(), {}

        path = socket_paths(bed, measured, "clusterip", "tcp-rr").service
        with RR.responders(path, RATE_TPS, runner.window_s("stall", 3.0), 1) as serving:
            traffic = RR.TcpRrTraffic.on(bed, path, serving, RATE_TPS, tmp_path)
            rep = runner.watch(bed, traffic, "stall", 3.0, fire=stall)
        first, last, drops = gate.read()
    fig = rep["disruption"]
    check_accounting(rep)
    shut_ms = shut[0] / 1e6  # at least DROP_S
    closed_ms = fig["event_ms"]  # at most: from before set(True) to after set(False)
    print(json.dumps({"shut_ms": shut_ms, "gate_drops": drops,
                      "gate_first_to_last_ms": (last - first) / 1e6,
                      **{k: v for k, v in fig.items() if k != "timeline"}}))
    # Nothing completes while every request is dropped: the stall is at least the gate's
    # time, less what was in flight when it shut (a response, then the next transaction
    # due 0.5 ms later): within one bin.
    assert fig["stall_ms"] >= shut_ms - BIN_NS / 1e6, (shut_ms, fig)
    # ...and ends at the first retransmission after the gate opened. With one segment in
    # flight Linux sends a tail-loss probe ~200 ms after it (2 RTT + TCP_RTO_MIN), then
    # retransmits after RTO (>= RTO_MIN), 2 RTO, 4 RTO ...: each interval is at most the
    # time since the first send plus RTO, so the one in which the gate opens ends within
    # closed + (closed + RTO) of that send, plus a bin for timer jiffies and scheduling
    # (measured 415 ms for 300 ms: the probe dropped, the first RTO through).
    assert fig["stall_ms"] <= 2 * closed_ms + RTO_MIN_MS + BIN_NS / 1e6, (closed_ms, fig)
    # TCP hid the loss as latency: nothing lost, every stuck flow retransmitted.
    assert fig["lost"] == 0 and fig["baseline_lost"] == 0, fig
    assert fig["retransmits"] >= RR.FLOWS and fig["reconnects"] == 0, fig
    assert drops >= RR.FLOWS  # the gate met every flow's request
    assert fig["excess_p99_ns"] is not None and fig["excess_p99_ns"] >= closed_ms * 1e6 / 2
    # No bound on recovery_ms: after the stall the flows work off the transactions that
    # fell due meanwhile, as fast as the machine lets them (154, 238 and 558 ms here, once
    # not within the 1 s watched, with other jobs running).


def test_tcp_rr_userspace_proxy_down_fails_and_reconnects_ebpf_tc_loses_nothing(
        tmp_path: Path) -> None:
    sc = scenario(["ebpf-tc", "userspace"], background=["tcp-rr"], rate_pps=RATE_TPS,
                  events=["full-sync", "proxy-down"])
    doc = load_result(DisruptionRunner(sc, tmp_path).run())
    points = {(p["variant"], p["workload"]): p for p in doc["points"]}
    assert set(points) == {(v, f"disruption-{e}/tcp-rr") for v in ("ebpf-tc", "userspace")
                           for e in ("full-sync", "proxy-down")}
    for p in points.values():
        assert p["status"] == "ok", p.get("error")
        check_accounting(p["repetitions"][0])
    figs = {f"{v} {w}": {k: x for k, x in p["repetitions"][0]["disruption"].items()
                         if k != "timeline"} for (v, w), p in points.items()}
    print(json.dumps(figs))
    # userspace: the proxy's connections die with it; every transaction due while it is
    # away fails at once (its port refuses the reconnect), then the flows reconnect.
    user = points["userspace", "disruption-proxy-down/tcp-rr"]["repetitions"][0]["disruption"]
    assert user["stall_ms"] >= 900 and user["lost"] >= RATE_TPS * 0.9, user
    assert user["reconnects"] >= RR.FLOWS, user
    # Every lost transaction failed one way or another (one in flight when the proxy died
    # may be due just before the event: lost in the baseline, by its due time).
    tl = user["timeline"]
    failed = user["tx_error"] + user["tx_connect_failed"] + user["tx_timeout"]
    assert failed + user["tx_not_started"] == sum(tl["sent"]) - sum(tl["delivered"]), user
    assert user["lost"] + user["baseline_lost"] == failed + user["tx_not_started"], user
    # ebpf-tc: the kernel keeps forwarding through a full sync and without its agent.
    for event in ("full-sync", "proxy-down"):
        ebpf = points["ebpf-tc", f"disruption-{event}/tcp-rr"]["repetitions"][0]["disruption"]
        assert ebpf["lost"] == 0 and ebpf["reconnects"] == 0 and ebpf["stall_ms"] < 50, ebpf
    # CSV and plot: the tcp-rr points count transactions.
    csv_path = tmp_path / "out.csv"
    write_csv(doc, csv_path)
    text = csv_path.read_text()
    assert "disruption.retransmits" in text and "transactions" in text
    files = plot_result(doc, tmp_path / "plots", formats=("png",))
    assert sum("timeline" in f.name and "tcp-rr" in f.name for f in files) == 4, files
