"""Disruption end to end: a known stall measured within one bin, and proxy-down on the
userspace proxy (an outage) against ebpf-tc (none)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.cluster.testbed import Testbed
from bench.cluster.topology import CLIENT_POD_IF
from bench.datapaths import make_variant
from bench.measure.disruption import BIN_NS
from bench.measure.disruption_runner import DisruptionRunner
from bench.measure.probes.latency import LatencyProbe
from bench.measure.probes.loader import TC_INGRESS, TC_PRIO, Probe, TcHook
from bench.measure.scenario import parse_scenario
from bench.measure.traffic import Target
from bench.model.generate import GenSpec, generate
from bench.present.export import write_csv
from bench.present.plots import plot_result
from bench.results.reader import load_result

pytestmark = pytest.mark.privileged
RATE = 5000
DROP_S = 0.3


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
    """A tc program at node 0's ingress from the client pod that drops every packet while
    its map says so, and stamps (bpf_ktime_get_ns, the probes' clock) the first and last
    packet it dropped and counts them: the injected stall as the packets met it, however
    late this process ran to open the gate again on a loaded machine."""

    name = "gate"
    tc_prio = TC_PRIO + 12
    SOURCE = b"""
    #include <uapi/linux/bpf.h>
    #include <uapi/linux/pkt_cls.h>
    BPF_ARRAY(state, u64, 4);  /* closed, first drop ns, last drop ns, drops */
    int kpb_gate(struct __sk_buff *skb) {
        u32 k0 = 0, k1 = 1, k2 = 2, k3 = 3;
        u64 *closed = state.lookup(&k0), *first = state.lookup(&k1);
        u64 *last = state.lookup(&k2), *drops = state.lookup(&k3);
        if (!closed || !first || !last || !drops || !*closed)
            return TC_ACT_OK;
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
