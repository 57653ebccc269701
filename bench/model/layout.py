"""Addressing plan of the namespace cluster: plain data, computed without root.

The plan mirrors kube-proxy's own test fixtures where it can: node 0 is
192.168.0.2, the cluster (pod) CIDR is 10.0.0.0/8 with 10.<i+1>.0.0/16 for
node i, and services live in 172.30.0.0/16.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from bench.errors import InputError
from bench.model.objects import ServicePortView

UNDERLAY = ipaddress.IPv4Network("192.168.0.0/24")
CLUSTER_CIDR = "10.0.0.0/8"
SERVICE_CIDR = ipaddress.IPv4Network("172.30.0.0/16")
UNDERLAY_GATEWAY = "192.168.0.1"  # default route of every node; does not forward
CLIENT_IP = "192.168.0.100"  # the external client on the underlay
MAX_NODES = 16
DEFAULT_MAX_PODS = 32


def node_ip(i: int) -> str:
    return str(UNDERLAY.network_address + 2 + i)


def pod_cidr(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.{i + 1}.0.0/16")


def pod_gateway(i: int) -> str:
    return str(pod_cidr(i).network_address + 1)


def client_pod_ip() -> str:
    """The in-cluster client, a pod on node 0 (for ClusterIP traffic)."""
    return str(pod_cidr(0).network_address + 100)


@dataclass(frozen=True)
class PodSpec:
    node: int
    index: int
    ip: str
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"pod{self.node}-{self.index}"


@dataclass(frozen=True)
class Layout:
    """Nodes and backend pods of one cluster."""

    node_names: tuple[str, ...]
    pods: tuple[PodSpec, ...]
    omitted_endpoints: int = 0  # endpoints with no pod behind them (scale runs)

    @property
    def node_ips(self) -> tuple[str, ...]:
        return tuple(node_ip(i) for i in range(len(self.node_names)))

    def pod_by_ip(self, ip: str) -> PodSpec | None:
        return next((p for p in self.pods if p.ip == ip), None)


def default_node_names(n: int) -> tuple[str, ...]:
    return tuple(f"node-{i}" for i in range(n))


def check_nodes(nodes: int) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise InputError(f"--nodes {nodes} is out of range (1-{MAX_NODES})", field="--nodes")


def plan_layout(views: Sequence[ServicePortView], nodes: int = 2,
                max_pods: int = DEFAULT_MAX_PODS) -> Layout:
    """Decide which nodes and pods to build for these service ports.

    Node names are the endpoints' ``nodeName`` values (padded with
    ``node-<i>`` up to ``nodes``). A pod is made for each distinct endpoint
    address, in service order, up to ``max_pods``; endpoints beyond that are
    still programmed but have nothing behind them.
    """
    check_nodes(nodes)
    names: list[str] = []
    for v in views:
        for e in v.endpoints:
            if e.node_name and e.node_name not in names:
                names.append(e.node_name)
    names.sort()
    for cand in default_node_names(MAX_NODES * 2):
        if len(names) >= nodes:
            break
        if cand not in names:
            names.append(cand)
    if len(names) > MAX_NODES:
        raise InputError(f"endpoints name {len(names)} nodes; kpbench builds at most {MAX_NODES}",
                         field="nodeName")
    reserved = {CLIENT_IP, UNDERLAY_GATEWAY, client_pod_ip(),
                *(node_ip(i) for i in range(len(names))),
                *(pod_gateway(i) for i in range(len(names)))}
    ports: dict[str, tuple[int, set[int], set[int]]] = {}
    omitted = 0
    for v in views:
        for e in v.endpoints:
            if e.ip in reserved or ipaddress.IPv4Address(e.ip) in UNDERLAY:
                raise InputError(f"endpoint {e.ip} of {v.name} collides with the harness's own "
                                 f"addresses ({UNDERLAY}, gateways, clients); use pod IPs "
                                 f"in {CLUSTER_CIDR}", field="endpoints.addresses")
            if e.ip not in ports:
                if len(ports) >= max_pods:
                    omitted += 1
                    continue
                node = names.index(e.node_name) if e.node_name in names else 0
                ports[e.ip] = (node, set(), set())
            (ports[e.ip][1] if v.protocol == "TCP" else ports[e.ip][2]).add(e.port)
    pods = []
    per_node: dict[int, int] = {}
    for ip, (node, tcp, udp) in ports.items():
        j = per_node.get(node, 0)
        per_node[node] = j + 1
        pods.append(PodSpec(node, j, ip, tuple(sorted(tcp)), tuple(sorted(udp))))
    return Layout(tuple(names), tuple(pods), omitted)
