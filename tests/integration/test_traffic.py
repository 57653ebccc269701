"""Traffic workloads: the pcaps carry what the probes and datapaths rely on, and a
replay reports what tcpreplay really sent (checked against interface counters).

The pcap tests need no root; the replay tests build a one-node cluster.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from bench.cluster.netlink import in_netns
from bench.cluster.topology import Cluster
from bench.errors import KpbenchError
from bench.measure import traffic as T
from bench.model import layout as L
from bench.model.generate import GenSpec, generate
from bench.model.layout import plan_layout
from bench.model.objects import service_port_views

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
VIP, PORT = "172.30.0.10", 80


def build(tmp_path: Path, workload: str, count: int, **kw: Any) -> list[Ether]:
    path = T.build_pcap(workload, SRC_MAC, DST_MAC, L.client_pod_ip(), VIP, PORT, count,
                        tmp_path / f"{workload}.pcap", **kw)
    return [Ether(bytes(p)) for p in rdpcap(str(path))]


def identity(pkt: Ether) -> tuple[bytes, int]:
    payload = bytes(pkt[IP].payload.payload)
    magic, seq = struct.unpack("!4sI", payload[:8])
    return magic, seq


def checksums_valid(pkt: Ether) -> bool:
    """Scapy recomputes both checksums; they must equal the ones in the frame."""
    l4 = TCP if TCP in pkt else UDP
    fresh = pkt.copy()
    del fresh[IP].chksum
    del fresh[l4].chksum
    fresh = Ether(bytes(fresh))
    return fresh[IP].chksum == pkt[IP].chksum and fresh[l4].chksum == pkt[l4].chksum


@pytest.mark.parametrize("workload", T.NEW_FLOW_WORKLOADS)
def test_new_flow_pcap_every_packet_identified_and_a_new_flow(tmp_path: Path,
                                                              workload: str) -> None:
    pkts = build(tmp_path, workload, 500, seq_start=1000)
    assert len(pkts) == 500
    assert [identity(p) for p in pkts] == [(T.MAGIC, 1000 + i) for i in range(500)]
    l4 = TCP if workload == "tcp-syn" else UDP
    flows = {(p[IP].src, p[l4].sport) for p in pkts}
    assert len(flows) == 500  # no two packets share a flow: every one misses conntrack
    assert all(p.src == SRC_MAC and p.dst == DST_MAC for p in pkts)
    assert all(p[IP].dst == VIP and p[l4].dport == PORT for p in pkts)
    assert all(checksums_valid(p) for p in pkts)
    assert len({len(p) for p in pkts}) == 1
    if workload == "tcp-syn":
        assert all(p[TCP].flags == "S" and p[TCP].seq == 1000 + i for i, p in enumerate(pkts))


def test_new_flows_step_the_source_address_after_the_port_space(tmp_path: Path) -> None:
    pkts = build(tmp_path, "udp-new", 3, seq_start=T.SPORTS - 1, src_span=2)
    assert [(p[IP].src, p[UDP].sport) for p in pkts] == [
        (L.client_pod_ip(), 65535), ("10.1.0.101", T.SPORT_FIRST),
        ("10.1.0.101", T.SPORT_FIRST + 1)]
    assert all(checksums_valid(p) for p in pkts)
    with pytest.raises(ValueError, match="new flows"):
        build(tmp_path, "udp-new", T.SPORTS + 1)


def test_established_pcap_cycles_few_flows_and_warmup_opens_each(tmp_path: Path) -> None:
    pkts = build(tmp_path, "udp-established", 100, payload_len=100)
    assert [identity(p)[1] for p in pkts] == list(range(100))
    assert {p[UDP].sport for p in pkts} == set(range(T.ESTABLISHED_SPORT_FIRST,
                                                     T.ESTABLISHED_SPORT_FIRST
                                                     + T.ESTABLISHED_FLOWS))
    # Below the new flows' ports and the new-flow warm-up's: no new flow reuses one.
    assert max(p[UDP].sport for p in pkts) < T.NEW_FLOW_WARMUP_SPORT < T.SPORT_FIRST
    assert all(len(p) == T.frame_len("udp-established", 100) and checksums_valid(p)
               for p in pkts)
    warm = T.build_warmup_pcap("udp-established", SRC_MAC, DST_MAC, L.client_pod_ip(), VIP,
                               PORT, tmp_path / "w.pcap")
    wpkts = [Ether(bytes(p)) for p in rdpcap(str(warm))]
    assert sorted(p[UDP].sport for p in wpkts) == sorted({p[UDP].sport for p in pkts})
    assert {identity(p)[0] for p in wpkts} == {T.WARMUP_MAGIC}  # probes ignore these


def test_flows_spread_over_destinations_and_warm_up_opens_each(tmp_path: Path) -> None:
    pods = ["10.1.1.1", "10.2.1.1", "10.1.1.2"]
    new = build(tmp_path, "udp-new", 6, seq_start=7, dst_ips=pods)
    assert [p[IP].dst for p in new] == [pods[(7 + i) % 3] for i in range(6)]
    est = build(tmp_path, "udp-established", 32, dst_ips=pods)
    flows = {(p[UDP].sport, p[IP].dst) for p in est}
    assert len(flows) == T.ESTABLISHED_FLOWS  # one destination per flow
    assert all(checksums_valid(p) for p in new + est)
    warm = T.build_warmup_pcap("udp-established", SRC_MAC, DST_MAC, L.client_pod_ip(), VIP,
                               PORT, tmp_path / "w.pcap", dst_ips=pods)
    assert {(p[UDP].sport, p[IP].dst) for p in (Ether(bytes(x)) for x in rdpcap(str(warm)))} \
        == flows


def test_the_control_s_established_flows_have_source_ports_of_their_own(
        tmp_path: Path) -> None:
    """The paired control's flows never share a source port with the Service's, warm-up
    included (a shared one remaps the control's at the node: test_established_paths)."""
    first = T.CONTROL_SPORT_FIRST
    est = build(tmp_path, "udp-established", 32, established_sport_first=first)
    ports = {p[UDP].sport for p in est}
    assert ports == set(range(first, first + T.ESTABLISHED_FLOWS))
    warm = T.build_warmup_pcap("udp-established", SRC_MAC, DST_MAC, L.client_pod_ip(), VIP,
                               PORT, tmp_path / "w.pcap", established_sport_first=first)
    assert {Ether(bytes(x))[UDP].sport for x in rdpcap(str(warm))} == ports
    service = {p[UDP].sport for p in build(tmp_path, "udp-established", 32)}
    assert not ports & service and max(service) < T.NEW_FLOW_WARMUP_SPORT
    for bad in (0, T.ESTABLISHED_SPORT_FIRST + 1):  # no port; into the warm-up port
        with pytest.raises(ValueError, match="established_sport_first"):
            build(tmp_path, "udp-established", 1, established_sport_first=bad)


def test_warm_up_frames_carry_the_warm_up_magic(tmp_path: Path) -> None:
    pkts = build(tmp_path, "udp-new", 3, magic=T.WARMUP_MAGIC)
    assert {identity(p)[0] for p in pkts} == {T.WARMUP_MAGIC}


def test_new_flow_warmup_uses_a_flow_the_run_does_not(tmp_path: Path) -> None:
    warm = T.build_warmup_pcap("tcp-syn", SRC_MAC, DST_MAC, L.client_pod_ip(), VIP, PORT,
                               tmp_path / "w.pcap")
    (p,) = [Ether(bytes(p)) for p in rdpcap(str(warm))]
    assert p[TCP].sport < T.SPORT_FIRST and identity(p)[0] == T.WARMUP_MAGIC


@pytest.mark.parametrize("bad", [
    {"workload": "icmp-flood"}, {"count": 0}, {"count": T.MAX_COUNT + 1},
    {"payload_len": 4}, {"seq_start": 2**32 - 1, "count": 2}])
def test_build_refuses_bad_arguments(tmp_path: Path, bad: dict[str, object]) -> None:
    args: dict[str, object] = {"workload": "udp-new", "count": 10, **bad}
    with pytest.raises(ValueError):
        T.build_pcap(str(args.pop("workload")), SRC_MAC, DST_MAC, L.client_pod_ip(), VIP,
                     PORT, path=tmp_path / "x.pcap", **args)


TCPREPLAY_OUTPUT = """\
Actual: 23 packets (1150 bytes) sent in 0.022012 seconds
Rated: 52244.2 Bps, 0.417 Mbps, 1044.88 pps
Flows: 23 flows, 1044.88 fps, 23 unique flow packets, 0 unique non-flow packets
Statistics for network device: eth0
\tSuccessful packets:        23
\tFailed packets:            1
\tTruncated packets:         0
"""


def test_parse_tcpreplay_reads_its_own_figures() -> None:
    s = T.parse_tcpreplay(TCPREPLAY_OUTPUT, 1000)
    assert (s.sent, s.seconds, s.achieved_pps, s.failed, s.offered_pps) == (
        23, 0.022012, 1044.88, 1, 1000)
    with pytest.raises(KpbenchError, match="no summary: Fatal"):
        T.parse_tcpreplay("Fatal Error: failed to open device nope0\n", None)


# --- replaying into a cluster ---------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    services, slices = generate(GenSpec(services=1, endpoints=1, nodes=1, protocol="UDP"))
    with Cluster(plan_layout(service_port_views(services, slices, None), nodes=1)) as c:
        yield c


def rx_packets(netns: str, ifname: str) -> int:
    with in_netns(netns) as ns:
        link = ns.link("get", index=ns.link_lookup(ifname=ifname)[0])[0]
        return int(link.get("stats64")["rx_packets"])


@pytest.mark.privileged
def test_replay_at_a_fixed_rate_reports_what_tcpreplay_sent(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    pod = cluster.layout.pods[0]
    target = T.Target.from_client_pod(cluster, pod.ip, 8080)
    assert target.src_ip == L.client_pod_ip() and target.netns == cluster.client_pod_ns
    pcap = target.build_pcap("udp-new", 500, tmp_path / "a.pcap")
    before = rx_packets(cluster.pod_ns(pod), "eth0")
    stats = target.replay(pcap, pps=5000, timeout=30)
    assert (stats.sent, stats.failed, stats.offered_pps, stats.timed_out) == (500, 0, 5000, False)
    # tcpreplay's own rate is consistent with its own count and time ...
    assert stats.achieved_pps == pytest.approx(stats.sent / stats.seconds, rel=0.01)
    # ... and it paced: 499 gaps at 5000 pps cannot take less than ~0.1 s.
    assert stats.seconds >= 0.9 * 499 / 5000
    # Independent: the backend's interface received them (the frames are routable).
    assert rx_packets(cluster.pod_ns(pod), "eth0") - before >= 500


@pytest.mark.privileged
def test_replay_stops_at_its_timeout_and_reports_the_partial_count(cluster: Cluster,
                                                                   tmp_path: Path) -> None:
    pod = cluster.layout.pods[0]
    target = T.Target.from_client_pod(cluster, pod.ip, 8080)
    pcap = target.build_pcap("udp-established", 5000, tmp_path / "b.pcap")
    stats = target.replay(pcap, pps=2000, timeout=0.5)
    assert stats.timed_out
    assert 0 < stats.sent < 5000


@pytest.mark.privileged
def test_nodeport_target_leaves_the_external_client_for_the_node(cluster: Cluster,
                                                                 tmp_path: Path) -> None:
    target = T.Target.from_external_client(cluster, 0, 30080)
    assert (target.netns, target.src_ip, target.dst_ip) == (cluster.client_ns, L.CLIENT_IP,
                                                            L.node_ip(0))
    assert target.dst_mac == T.link_mac(cluster.node_ns(0), "ul0")
    pcap = target.build_pcap("tcp-syn", 23, tmp_path / "np.pcap")
    before = rx_packets(cluster.node_ns(0), "ul0")
    stats = target.replay(pcap, pps=1000, timeout=30)
    assert stats.sent == 23
    assert rx_packets(cluster.node_ns(0), "ul0") - before >= 23


@pytest.mark.privileged
def test_replay_failure_is_an_error_with_tcpreplays_reason(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    pcap = T.build_pcap("udp-new", SRC_MAC, DST_MAC, L.client_pod_ip(), VIP, PORT, 1,
                        tmp_path / "c.pcap")
    with pytest.raises(KpbenchError, match="tcpreplay failed"):
        T.replay(cluster.client_pod_ns, "nope0", pcap, pps=None, timeout=30)
