"""The one-way probe (probes/oneway.c) on known workloads through a real ClusterIP
(iptables-legacy: DNAT on the request, reverse NAT on the response).

N ``tcp-crr`` transactions must give exactly N request and N response samples and
exactly N SYNs at the client's egress and at the backend's ingress; the two one-way
medians together stay below the RTT median (an RTT holds both and the end hosts'
stacks); and a known hold time in the responder (the kernel has no netem) shows in the
RTT and in neither one-way part, which stop at the backend's eth0 and start there again.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.analysis.stats import summary
from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.measure import socket_tools as T
from bench.measure import sockets as S
from bench.measure.probes.oneway import OneWayProbe
from bench.model.generate import GenSpec, generate
from tests.conftest import require_feature
from tests.helpers.runs import run_points

pytestmark = pytest.mark.privileged


def _bed(protocol: str) -> Iterator[Testbed]:
    require_feature("iptables-legacy")
    services, slices = generate(GenSpec(services=1, endpoints=2, nodes=1, protocol=protocol))
    with Testbed(make_variant("iptables-legacy"), services, slices, nodes=1,
                 echo=False) as tb:
        yield tb


@pytest.fixture(scope="module")
def tcp_bed() -> Iterator[Testbed]:
    yield from _bed("TCP")


@pytest.fixture(scope="module")
def udp_bed() -> Iterator[Testbed]:
    yield from _bed("UDP")


def service_path(tb: Testbed, tcp: bool = True) -> S.SocketPath:
    svc = tb.services[0]
    return S.SocketPath(tb.cluster.client_pod_ns, svc.cluster_ip, svc.ports[0].port,
                        tuple(S.Responder(tb.cluster.pod_ns(p), p.ip,
                                          (p.tcp_ports if tcp else p.udp_ports)[0])
                              for p in tb.layout.pods))


def test_n_crr_transactions_give_exactly_n_samples_and_n_syns_each_way(
        tcp_bed: Testbed) -> None:
    n = 400
    with OneWayProbe.for_cluster(tcp_bed.cluster) as probe:
        probe.start()
        r = S.run(S.SocketWorkload("tcp-crr", flows=2, count=n, duration_s=30),
                  service_path(tcp_bed))
        reading = probe.read()
    assert (r.transactions, r.served, r.failed) == (n, n, 0)
    c = reading.counts
    assert (len(reading.request_ns), len(reading.response_ns)) == (n, n), c
    # One request segment and one response segment per connection (kpb-crr writes each
    # in one call), one SYN out of the client and into the backend, one SYN-ACK back.
    assert (c["request_departed"], c["request_arrived"]) == (n, n), c
    assert (c["response_departed"], c["response_arrived"]) == (n, n), c
    assert (c["syn_client_egress"], c["syn_backend_ingress"]) == (n, n), c
    assert (c["syn_backend_egress"], c["syn_client_ingress"]) == (n, n), c
    assert (c["unmatched"], c["duplicates"], c["inflight_full"], c["overflow"],
            c["left_in_flight"]) == (0, 0, 0, 0, 0), c
    assert reading.request_ns.min() > 0 and reading.response_ns.min() > 0
    # Each one-way part is one crossing of the node; the RTT holds both, the connect
    # and close round trips and both end stacks: the medians together stay below it.
    rtt_p50 = summary(r.rtt)["p50"]
    assert np.median(reading.request_ns) + np.median(reading.response_ns) < rtt_p50


def test_a_responder_hold_time_shows_in_the_rtt_and_in_neither_direction(
        tcp_bed: Testbed, tmp_path: Path) -> None:
    """The same workload without and with a 5 ms hold in the responder: the RTT grows by
    at least the hold, neither one-way median by anything near it."""
    hold_ns = 5_000_000
    n = 150
    medians = {}
    for hold in (0, hold_ns):
        path = service_path(tcp_bed)
        with OneWayProbe.for_cluster(tcp_bed.cluster) as probe:
            probe.start()
            stats, rtt = _crr_with_hold(path, n, hold // 1000, tmp_path)
            reading = probe.read()
        assert (stats.transactions, stats.failed) == (n, 0)
        assert len(reading.request_ns) == n and len(reading.response_ns) == n
        medians[hold] = (float(np.median(rtt)), float(np.median(reading.request_ns)),
                         float(np.median(reading.response_ns)))
    (rtt0, req0, resp0), (rtt1, req1, resp1) = medians[0], medians[hold_ns]
    assert rtt1 - rtt0 >= 0.9 * hold_ns
    # A one-way median that held the hold would be >= 5 ms; on this busy machine a
    # one-way part stays far below (tens of us): a tenth of the hold is a wide margin.
    for before, after in ((req0, req1), (resp0, resp1)):
        assert after < hold_ns / 10 and abs(after - before) < hold_ns / 10


def _crr_with_hold(path: S.SocketPath, n: int, delay_us: int,
                   tmp: Path) -> tuple[T.CrrClientStats, np.ndarray]:
    """``n`` kpb-crr transactions over ``path``, every response held ``delay_us`` by the
    responders (``kpb-crr serve --delay-us``): the client's stats and its RTT samples."""
    servers = []
    try:
        for r in path.responders:
            p = subprocess.Popen(["ip", "netns", "exec", r.netns, str(T.crr_binary()), "serve",
                                  "--listen", f"{r.ip}:{r.port}", "--delay-us", str(delay_us),
                                  "--duration", "60"], stdout=subprocess.PIPE, text=True)
            servers.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        samples = tmp / f"rtt-{delay_us}"
        out = subprocess.run(["ip", "netns", "exec", path.client_netns, str(T.crr_binary()),
                              "client", "--connect", f"{path.dst_ip}:{path.dst_port}",
                              "--flows", "2", "--count", str(n), "--duration", "30",
                              "--samples", str(samples)], check=True, capture_output=True,
                             text=True, timeout=60).stdout
        stats = T.parse_crr_client(out)
        return stats, T.read_crr_samples(samples, stats.transactions)
    finally:
        for p in servers:
            p.terminate()
            p.communicate(timeout=10)


# A known extra delay on one direction (the kernel has no netem): a tc program on every
# backend pod's eth0 egress, behind the one-way probe's (a higher prio number runs
# later), spins until HOLD_NS have passed on the probe's own clock before the packet
# goes on; it counts the packets it held the full time and those it could not.
HOLD_NS = 200_000
HOLD_SRC = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
BPF_ARRAY(held, u64, 2); /* [0] held HOLD_NS, [1] ran out of spins first */
int kpb_hold(struct __sk_buff *skb)
{
    u64 t0 = bpf_ktime_get_ns();
    u32 k = 1;
    for (int i = 0; i < 8000; i++) { /* the verifier's bound on a loop's jumps */
        bpf_ktime_get_ns();
        bpf_ktime_get_ns();
        bpf_ktime_get_ns();
        if (bpf_ktime_get_ns() - t0 >= KPB_HOLD_NS) {
            k = 0;
            break;
        }
    }
    u64 *n = held.lookup(&k);
    if (n)
        __sync_fetch_and_add(n, 1);
    return TC_ACT_UNSPEC;
}
"""


@contextlib.contextmanager
def responses_held(tb: Testbed) -> Iterator[Any]:
    """Every packet a backend pod sends held HOLD_NS after the probe stamped it."""
    from bcc import BPF

    from bench.measure.probes.loader import TC_EGRESS, TC_PRIO, TcHook, _tc_attach, _tc_detach

    bpf = BPF(text=HOLD_SRC.encode(), cflags=[f"-DKPB_HOLD_NS={HOLD_NS}ULL"])
    attached = []
    try:
        fn = bpf.load_func(b"kpb_hold", BPF.SCHED_CLS)
        for pod in tb.layout.pods:
            attached.append(_tc_attach("hold", TcHook(tb.cluster.pod_ns(pod)), fn, TC_EGRESS,
                                       TC_PRIO + 9))
        yield bpf[b"held"]
    finally:
        for a in attached:
            _tc_detach(a)
        bpf.cleanup()


def test_a_delay_on_the_response_direction_shows_on_that_direction_only(
        tcp_bed: Testbed) -> None:
    """The same tcp-crr workload without and with every backend packet held 200 us after
    its departure stamp: the response's one-way median grows by at least the hold, the
    request's by nothing near it, and the RTT by at least the hold."""
    n = 150
    got = {}
    for hold in (False, True):
        with OneWayProbe.for_cluster(tcp_bed.cluster) as probe, (
                responses_held(tcp_bed) if hold else contextlib.nullcontext()) as held:
            probe.start()
            r = S.run(S.SocketWorkload("tcp-crr", flows=1, count=n, duration_s=30),
                      service_path(tcp_bed))
            reading = probe.read()
            if held is not None:
                counts = [int(held[held.Key(i)].value) for i in range(2)]
                # SYN-ACK, response, FIN (or with the response), ACKs: all held in full.
                assert counts[0] >= 2 * n and counts[1] == 0, counts
        assert (r.transactions, r.failed) == (n, 0)
        assert len(reading.request_ns) == n and len(reading.response_ns) == n
        got[hold] = (summary(r.rtt)["p50"], float(np.median(reading.request_ns)),
                     float(np.median(reading.response_ns)))
    (rtt0, req0, resp0), (rtt1, req1, resp1) = got[False], got[True]
    # A held packet arrives no sooner than the hold after its stamp; the rest of its way
    # may be quicker than an unheld packet's (its CPU spun instead of waking from idle:
    # 5.8 against 7.2 us in CI), so the growth is the hold less a part of resp0.
    assert resp1 >= HOLD_NS and resp1 - resp0 >= 0.9 * HOLD_NS, (resp0, resp1)
    assert abs(req1 - req0) < HOLD_NS / 4, (req0, req1)
    assert rtt1 - rtt0 >= HOLD_NS


@pytest.mark.parametrize("workload", ["tcp-rr", "udp-rr"])
def test_rr_every_reply_received_is_one_sample_each_way(
        tcp_bed: Testbed, udp_bed: Testbed, workload: str) -> None:
    tb = tcp_bed if workload == "tcp-rr" else udp_bed
    with OneWayProbe.for_cluster(tb.cluster) as probe:
        probe.start()
        r = S.run(S.SocketWorkload(workload, flows=2, duration_s=1),
                  service_path(tb, tcp=workload == "tcp-rr"))
        reading = probe.read()
    c = reading.counts
    assert r.transactions > 100 and r.failed == 0
    # sockperf's (udp-rr) warm-up messages are not in its log, so the probe sees at least
    # as many (kpb-crr, tcp-rr, has no warm-up); every one departed is matched (none
    # unmatched, none left over).
    assert len(reading.request_ns) >= r.transactions, c
    assert len(reading.response_ns) >= r.transactions, c
    assert c["request_departed"] == c["request_arrived"] == len(reading.request_ns), c
    assert c["response_departed"] == c["response_arrived"] == len(reading.response_ns), c
    assert (c["unmatched"], c["left_in_flight"], c["short"]) == (0, 0, 0), c


# --- through the runner: the breakdown repetitions of socket points ----------------------

ONEWAY_SCENARIO = """
name = "socket-oneway"
[sweep]
datapaths = ["iptables-legacy", "nftables"]
services = [20]
endpoints = 2
nodes = 1
[traffic]
workloads = ["tcp-crr", "tcp-rr", "tcp-stream"]
flows = [2]
duration_s = 1
repetitions = 2
[measure]
probes = ["cpu", "oneway"]
overhead = false
"""


def test_socket_points_keep_the_one_way_breakdown_apart(tmp_path: Path) -> None:
    """Each request/response point gets one breakdown repetition per path with the probe
    (point["breakdown"], point["control_breakdown"]), never pooled: the summary's RTT and
    rate come from the measured repetitions alone; tcp-stream says why it has none."""

    for name in ("iptables-legacy", "nftables"):
        require_feature(name)
    points = {pt["id"]: pt for pt in run_points(tmp_path, ONEWAY_SCENARIO)}
    assert len(points) == 6, sorted(points)
    for pid, pt in points.items():
        assert pt["status"] == "ok", (pid, pt["error"], pt.get("failed_repetitions"))
        s = pt["summary"]
        if pt["workload"] == "tcp-stream":
            assert "breakdown" not in pt and "one_way_ns" not in s
            assert "no request and response" in pt["missing"]["one_way_ns"]
            continue
        assert len(pt["repetitions"]) == 2 and len(pt["control"]) == 2
        for key in ("breakdown", "control_breakdown"):
            b = pt[key]
            c = b["one_way"]
            assert c["unmatched"] == c["inflight_full"] == c["overflow"] == 0, (pid, key, c)
            assert b["one_way_request_hist"] and b["one_way_response_hist"], (pid, key)
            if pt["workload"] == "tcp-crr":  # one request and one response a transaction
                n = b["socket"]["transactions"]
                assert c["request_arrived"] == c["response_arrived"] == n, (pid, key, c)
                assert c["syn_client_egress"] == c["syn_backend_ingress"] == n, (pid, key, c)
        # Never pooled: the measured repetitions' transactions alone make the RTT count.
        measured = sum(r["socket"]["transactions"] for r in pt["repetitions"])
        assert s["rtt_ns"]["count"] == measured
        for part in ("request", "response"):
            assert s["one_way_ns"][part]["count"] > 0
            assert s["direct"]["one_way_ns"][part]["count"] > 0
            assert s[f"service_minus_direct_{part}_p50_ns"] is not None
        assert (s["one_way_ns"]["request"]["p50"] + s["one_way_ns"]["response"]["p50"]
                < s["rtt_ns"]["p50"])


NODEPORT_SCENARIO = """
name = "socket-oneway-nodeport"
[sweep]
datapaths = ["iptables-legacy"]
services = [5]
endpoints = 2
nodes = 2
[traffic]
workloads = ["nodeport-tcp-crr"]
flows = [2]
duration_s = 1
repetitions = 1
[measure]
probes = ["oneway"]
overhead = false
"""


def test_nodeport_one_way_parts_through_snat(tmp_path: Path) -> None:
    """From the external client to a NodePort (DNAT, and SNAT to the node's address with a
    random port, MASQUERADE --random-fully): TCP keys leave the port out, so every request
    and response is matched by its sequence and acknowledgment numbers; no direct path,
    so no direct breakdown and no difference."""

    require_feature("iptables-legacy")
    (pt,) = run_points(tmp_path, NODEPORT_SCENARIO)
    assert pt["status"] == "ok", (pt["error"], pt.get("failed_repetitions"))
    c, n = pt["breakdown"]["one_way"], pt["breakdown"]["socket"]["transactions"]
    assert n > 100 and c["request_arrived"] == c["response_arrived"] == n, c
    assert (c["unmatched"], c["left_in_flight"]) == (0, 0), c
    assert "control_breakdown" not in pt and "direct" in pt["missing"]
    s = pt["summary"]
    assert s["one_way_ns"]["request"]["count"] == n
    assert "service_minus_direct_request_p50_ns" not in s


def test_nodeport_udp_through_snat_is_unmatched_and_says_so(tmp_path: Path) -> None:
    """UDP keys keep the client port (every flow numbers its messages alike): SNAT's random
    port leaves the datagrams unmatched, counted, and the point says why; never paired
    with another flow's datagram."""

    require_feature("iptables-legacy")
    (pt,) = run_points(tmp_path, NODEPORT_SCENARIO.replace("nodeport-tcp-crr", "nodeport-udp-rr"))
    assert pt["status"] == "ok", (pt["error"], pt.get("failed_repetitions"))
    c = pt["breakdown"]["one_way"]
    assert c["request_arrived"] > 100 and c["unmatched"] >= c["request_arrived"], c
    assert "SNAT" in pt["missing"]["one_way_ns"]
    assert pt["summary"]["one_way_ns"]["request"] is None
