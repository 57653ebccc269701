"""The IPVS rendering compared with what kube-proxy's IPVS proxier programs.

Each case feeds the same Services and EndpointSlices as a test of upstream's
``pkg/proxy/ipvs/proxier_test.go`` (node ``test-node`` with IP
100.101.102.103, ClusterIP 10.20.30.41, endpoints 10.180.x.y) and checks
what that test checks, written here in our own terms: the virtual servers
and their real servers (upstream's FakeIPVS / checkIPVS), the ipset entries
(checkIPSet) and, per chain, the sequence of (target, match-set) pairs
(checkIptables, which looks at chains by name across tables). The expected
values were compared with upstream's by hand when this was written; the
cases name the upstream test they mirror.
"""

from __future__ import annotations

import re

import pytest

from bench.cli import main
from bench.datapaths import NodeContext, make_datapath
from bench.datapaths.ipvs import IpvsDatapath, IpvsPlan, parse_plan
from bench.errors import InputError
from bench.model.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    service_port_views,
)
from tests.conftest import DATA

NODE = "test-node"
NODE_IP = "100.101.102.103"
CTX = NodeContext(node_name=NODE, node_ips=(NODE_IP,), cluster_cidr="10.0.0.0/8")
CIP = "10.20.30.41"
EP, EP_OTHER = "10.180.0.1", "10.180.1.1"


def svc(**kw: object) -> Service:
    port = ServicePort("p80", 80, str(kw.pop("protocol", "TCP")), 80,
                       kw.pop("node_port", None))  # type: ignore[arg-type]
    return Service(namespace="ns1", name=str(kw.pop("name", "svc1")), cluster_ip=CIP,
                   ports=(port,), **kw)  # type: ignore[arg-type]


def slice_(*eps: tuple[str, str | None], protocol: str = "TCP", name: str = "svc1",
           port: int = 80) -> EndpointSlice:
    return EndpointSlice("ns1", f"{name}-1", name,
                         tuple(Endpoint((ip,), node) for ip, node in eps),
                         (EndpointPort("p80", port, protocol),))


def plan(services: list[Service], slices: list[EndpointSlice],
         dp: IpvsDatapath | None = None) -> IpvsPlan:
    """Render, then read the rendering back: what apply would program."""
    dp = dp or IpvsDatapath(kernel_release="6.1.0")
    return parse_plan(dp.render(service_port_views(services, slices, NODE), CTX))


def servers(p: IpvsPlan) -> dict[tuple[str, str, int], list[tuple[str, int]]]:
    return {v.key: sorted((r.ip, r.port) for r in v.real_servers) for v in p.virtual_servers}


def chains(p: IpvsPlan) -> dict[str, list[tuple[str, str]]]:
    """Per chain (nat and filter together, as upstream's fake), (target, set or source)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for line in p.restore.splitlines():
        if not line.startswith("-A "):
            continue
        chain = line.split()[1]
        target = re.search(r" -j (\S+)", line).group(1)  # type: ignore[union-attr]
        m = re.search(r"--match-set (\S+)", line)
        s = re.search(r" -s (\S+)", line)
        out.setdefault(chain, []).append((target, m.group(1) if m else s.group(1) if s else ""))
    return out


def test_node_port_tcp_with_endpoint() -> None:
    # TestNodePortIPv4 "1 service with node port, has 2 endpoints" (the IPv6 one is ignored).
    p = plan([svc(type="NodePort", node_port=3001)], [slice_((EP, None))])
    assert servers(p) == {("TCP", CIP, 80): [(EP, 80)], ("TCP", NODE_IP, 3001): [(EP, 80)]}
    assert {v.scheduler for v in p.virtual_servers} == {"rr"}
    assert p.bind_addresses == [CIP]  # node IPs are never bound to kube-ipvs0


def test_node_port_udp_sets_and_chains() -> None:
    # TestNodePortIPv4 "1 UDP service with node port, has endpoints".
    p = plan([svc(type="NodePort", node_port=3001, protocol="UDP")],
             [slice_((EP, None), protocol="UDP")])
    assert servers(p) == {("UDP", CIP, 80): [(EP, 80)], ("UDP", NODE_IP, 3001): [(EP, 80)]}
    assert p.ipset_entries["KUBE-NODE-PORT-UDP"] == ["3001"]
    c = chains(p)
    assert c["KUBE-NODE-PORT"] == [("KUBE-MARK-MASQ", "KUBE-NODE-PORT-UDP"),
                                   ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]
    assert c["KUBE-SERVICES"] == [("RETURN", "127.0.0.0/8"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
                                  ("KUBE-NODE-PORT", ""), ("ACCEPT", "KUBE-CLUSTER-IP")]


def test_node_port_without_endpoints_has_servers_without_real_servers() -> None:
    # TestNodePortIPv4 "service has node port but no endpoints".
    p = plan([svc(type="NodePort", node_port=3001)], [])
    assert servers(p) == {("TCP", CIP, 80): [], ("TCP", NODE_IP, 3001): []}


def test_sctp_node_port_local() -> None:
    # TestNodePortIPv4 "node port service with protocol sctp and externalTrafficPolicy local".
    p = plan([svc(type="NodePort", node_port=3001, protocol="SCTP",
                  external_traffic_policy="Local")],
             [slice_((EP, NODE), (EP_OTHER, "other-node"), protocol="SCTP")])
    assert servers(p) == {("SCTP", CIP, 80): [(EP, 80), (EP_OTHER, 80)],
                          ("SCTP", NODE_IP, 3001): [(EP, 80)]}
    assert p.ipset_entries["KUBE-NODE-PORT-SCTP-HASH"] == [f"{NODE_IP},sctp:3001"]
    assert p.ipset_entries["KUBE-NODE-PORT-LOCAL-SCTP-HASH"] == [f"{NODE_IP},sctp:3001"]
    assert chains(p)["KUBE-NODE-PORT"] == [
        ("RETURN", "KUBE-NODE-PORT-LOCAL-SCTP-HASH"),
        ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-SCTP-HASH"),
        ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]


def test_only_local_node_ports() -> None:
    # TestOnlyLocalNodePorts: the NodePort server gets the local endpoint only.
    p = plan([svc(type="NodePort", node_port=3001, external_traffic_policy="Local")],
             [slice_((EP, NODE), (EP_OTHER, "other-node"))])
    assert len(p.virtual_servers) == 2
    assert servers(p)[("TCP", NODE_IP, 3001)] == [(EP, 80)]
    assert p.ipset_entries["KUBE-NODE-PORT-TCP"] == ["3001"]
    assert p.ipset_entries["KUBE-NODE-PORT-LOCAL-TCP"] == ["3001"]
    c = chains(p)
    assert c["KUBE-SERVICES"] == [("RETURN", "127.0.0.0/8"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
                                  ("KUBE-NODE-PORT", ""), ("ACCEPT", "KUBE-CLUSTER-IP")]
    assert c["KUBE-NODE-PORT"] == [("RETURN", "KUBE-NODE-PORT-LOCAL-TCP"),
                                   ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-TCP"),
                                   ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]
    # Hairpin: only the local endpoint is in KUBE-LOOP-BACK.
    assert p.ipset_entries["KUBE-LOOP-BACK"] == [f"{EP},tcp:80,{EP}"]


def test_local_policy_without_local_endpoint_falls_back_to_all() -> None:
    # syncEndpoint (upstream PR 97081): no local endpoint -> the cluster endpoints.
    p = plan([svc(type="NodePort", node_port=3001, external_traffic_policy="Local")],
             [slice_((EP_OTHER, "other-node"))])
    assert servers(p)[("TCP", NODE_IP, 3001)] == [(EP_OTHER, 80)]


def test_health_check_node_ports() -> None:
    # TestHealthCheckNodePort: only LoadBalancers with Local policy get one.
    def lb(name: str, etp: str, hc: int) -> Service:
        return svc(name=name, type="LoadBalancer", node_port=3000,
                   external_traffic_policy=etp, health_check_node_port=hc)

    p = plan([lb("valid-svc1", "Local", 30000), lb("valid-svc2", "Local", 30001),
              lb("invalid-svc3", "Cluster", 30002)], [])
    assert p.ipset_entries["KUBE-HEALTH-CHECK-NODE-PORT"] == ["30000", "30001"]
    assert chains(p)["KUBE-NODE-PORT"] == [("RETURN", "KUBE-NODE-PORT-LOCAL-TCP"),
                                           ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-TCP"),
                                           ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]


def test_load_balancer_source_ranges() -> None:
    # TestLoadBalancerSourceRanges.
    p = plan([svc(type="LoadBalancer", load_balancer_ips=("1.2.3.4",),
                  load_balancer_source_ranges=("10.0.0.0/8",))], [slice_((EP, None))])
    assert servers(p) == {("TCP", CIP, 80): [(EP, 80)], ("TCP", "1.2.3.4", 80): [(EP, 80)]}
    assert p.ipset_entries["KUBE-LOAD-BALANCER"] == ["1.2.3.4,tcp:80"]
    assert p.ipset_entries["KUBE-LOAD-BALANCER-FW"] == ["1.2.3.4,tcp:80"]
    assert p.ipset_entries["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == ["1.2.3.4,tcp:80,10.0.0.0/8"]
    c = chains(p)
    assert c["KUBE-SERVICES"] == [
        ("RETURN", "127.0.0.0/8"), ("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"),
        ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"), ("KUBE-NODE-PORT", ""),
        ("ACCEPT", "KUBE-CLUSTER-IP"), ("ACCEPT", "KUBE-LOAD-BALANCER")]
    assert c["KUBE-PROXY-FIREWALL"] == [("KUBE-SOURCE-RANGES-FIREWALL", "KUBE-LOAD-BALANCER-FW")]
    assert c["KUBE-SOURCE-RANGES-FIREWALL"] == [("RETURN", "KUBE-LOAD-BALANCER-SOURCE-CIDR"),
                                                ("DROP", "")]
    # The node is outside the ranges: its own access to the LB IP is blocked (issue 119656).
    assert c["KUBE-IPVS-OUT-FILTER"] == [("DROP", "1.2.3.4")]


def test_only_local_load_balancing() -> None:
    # TestOnlyLocalLoadBalancing.
    p = plan([svc(type="LoadBalancer", node_port=3001, load_balancer_ips=("1.2.3.4",),
                  external_traffic_policy="Local")],
             [slice_((EP, NODE), (EP_OTHER, "other-node"))])
    assert servers(p)[("TCP", "1.2.3.4", 80)] == [(EP, 80)]
    assert p.ipset_entries["KUBE-LOAD-BALANCER-LOCAL"] == ["1.2.3.4,tcp:80"]
    assert chains(p)["KUBE-LOAD-BALANCER"] == [("RETURN", "KUBE-LOAD-BALANCER-LOCAL"),
                                               ("KUBE-MARK-MASQ", "")]


def test_accept_ipvs_traffic() -> None:
    # TestAcceptIPVSTraffic: ClusterIP with an external IP, a LoadBalancer, a NodePort.
    services = [
        Service("ns1", "svc1", "10.20.30.40", (ServicePort("p80", 80, "TCP", 80, None),),
                external_ips=("5.6.7.8",)),
        Service("ns1", "svc2", "10.20.30.41", (ServicePort("p80", 80, "TCP", 80, 80),),
                type="LoadBalancer", load_balancer_ips=("1.2.3.4",)),
        Service("ns1", "svc3", "10.20.30.42", (ServicePort("p80", 80, "TCP", 80, 80),),
                type="NodePort"),
    ]
    assert chains(plan(services, []))["KUBE-SERVICES"] == [
        ("RETURN", "127.0.0.0/8"), ("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"),
        ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"), ("KUBE-MARK-MASQ", "KUBE-EXTERNAL-IP"),
        ("ACCEPT", "KUBE-EXTERNAL-IP"), ("ACCEPT", "KUBE-EXTERNAL-IP"),
        ("KUBE-NODE-PORT", ""), ("ACCEPT", "KUBE-CLUSTER-IP"), ("ACCEPT", "KUBE-LOAD-BALANCER")]


def test_session_affinity_is_a_persistent_service() -> None:
    # TestSessionAffinity: persistence with the affinity timeout (default 10800).
    p = plan([svc(session_affinity="ClientIP", external_ips=("50.60.70.81",))],
             [slice_((EP, None))])
    assert {(v.address, v.persistent_timeout) for v in p.virtual_servers} == {
        (CIP, 10800), ("50.60.70.81", 10800)}


@pytest.mark.parametrize("scheduler", ["lc", "sh", "wrr", "mh"])
def test_scheduler_is_selectable(scheduler: str) -> None:
    dp = make_datapath(f"ipvs-{scheduler}")
    assert isinstance(dp, IpvsDatapath) and dp.variant == f"ipvs-{scheduler}"
    p = plan([svc()], [slice_((EP, None))], dp)
    assert {v.scheduler for v in p.virtual_servers} == {scheduler}
    # mh hashes on source port as well: kube-proxy sets FlagSourceHash ("flag-1").
    assert all(v.source_hash == (scheduler == "mh") for v in p.virtual_servers)


def test_unknown_scheduler_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown IPVS scheduler"):
        make_datapath("ipvs-fastest")


def test_conn_reuse_mode_only_on_old_kernels() -> None:
    def sysctls(release: str) -> dict[str, str]:
        return dict(plan([svc()], [], IpvsDatapath(kernel_release=release)).sysctls)

    assert "net/ipv4/vs/conn_reuse_mode" not in sysctls("6.1.0-56-amd64")
    assert sysctls("5.4.0")["net/ipv4/vs/conn_reuse_mode"] == "0"
    assert sysctls("6.1.0")["net/ipv4/vs/expire_nodest_conn"] == "1"


def test_listing_is_ipvsadm_style_and_round_trips() -> None:
    dp = IpvsDatapath(kernel_release="6.1.0")
    text = dp.render(service_port_views([svc(session_affinity="ClientIP", affinity_timeout=60)],
                                        [slice_((EP, None))], NODE), CTX)
    assert f"TCP  {CIP}:80 rr persistent 60" in text.splitlines()
    assert f"  -> {f'{EP}:80':<28} Masq    1" in text.splitlines()
    assert dp.state_size(text)["real_servers"] == 1
    assert plan([svc(session_affinity="ClientIP", affinity_timeout=60)],
                [slice_((EP, None))]).virtual_servers[0].persistent_timeout == 60


def test_render_command_needs_no_root(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--datapath", "ipvs",
                 "--services", str(DATA / "good" / "kubectl-list.yaml")]) == 0
    out = capsys.readouterr().out
    for section in ("*sysctl", "*dummy kube-ipvs0", "*ipvs", "*ipset", "*jumps", "*nat",
                    "*filter"):
        assert section in out.splitlines()
    assert "create KUBE-CLUSTER-IP hash:ip,port" in out
