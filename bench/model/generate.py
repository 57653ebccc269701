"""Synthetic clusters of N services x E endpoints, for scale runs and tests.

Services get cluster IPs from 172.30.0.0/16 in order and endpoint addresses
from the pod CIDR of the node they are placed on (round-robin over nodes),
so a generated file is the same kind of input a user's cluster dump is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from bench.errors import InputError
from bench.model import layout as L
from bench.model.objects import (
    MAX_AFFINITY_TIMEOUT,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
)

NODEPORT_RANGE = (30000, 32767)
MAX_ENDPOINTS_PER_SLICE = 100  # what the EndpointSlice controller writes
# Pod addresses start at 10.<node+1>.1.1: the first /24 is the harness's own.
_POD_OFFSET = 257


@dataclass(frozen=True)
class GenSpec:
    services: int
    endpoints: int = 10
    nodes: int = 2
    type: str = "ClusterIP"
    protocol: str = "TCP"
    port: int = 80
    target_port: int = 8080
    session_affinity: str = "None"
    affinity_timeout: int = 10800
    external_traffic_policy: str = "Cluster"
    namespace: str = "bench"


def capacity(nodes: int) -> tuple[int, int]:
    """(max services, max endpoints) the address plan holds for this many nodes."""
    per_node = 255 * 254  # 10.<n>.1.1 - 10.<n>.255.254, skipping .0 and .255
    return L.SERVICE_CIDR.num_addresses - 12, per_node * nodes


def generate(spec: GenSpec) -> tuple[list[Service], list[EndpointSlice]]:
    """Build the model objects of a synthetic cluster (no Kubernetes objects in between)."""
    max_svc, max_eps = capacity(spec.nodes)
    if not 1 <= spec.services <= max_svc:
        raise InputError(f"{spec.services} services do not fit the service CIDR "
                         f"{L.SERVICE_CIDR} (1-{max_svc})", field="services")
    if spec.endpoints < 0 or spec.services * spec.endpoints > max_eps:
        raise InputError(f"{spec.services}x{spec.endpoints} endpoints exceed the pod CIDRs of "
                         f"{spec.nodes} nodes ({max_eps}); use fewer endpoints or more nodes",
                         field="endpoints")
    if spec.session_affinity == "ClientIP" and not 1 <= spec.affinity_timeout <= \
            MAX_AFFINITY_TIMEOUT:
        # What the reader (and the API server) refuses must not be written.
        raise InputError(f"affinity timeout {spec.affinity_timeout} is outside "
                         f"1-{MAX_AFFINITY_TIMEOUT} seconds", field="affinity_timeout")
    nodeports = spec.type in ("NodePort", "LoadBalancer")
    if nodeports and spec.services > NODEPORT_RANGE[1] - NODEPORT_RANGE[0] + 1:
        raise InputError(f"{spec.services} NodePort services exceed the node port range "
                         f"{NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]}", field="services")
    names = L.default_node_names(spec.nodes)
    next_addr = [int(L.pod_cidr(n).network_address) + _POD_OFFSET for n in range(spec.nodes)]
    services, slices = [], []
    slot = 0
    for k in range(spec.services):
        name = f"svc-{k}"
        sp = ServicePort("p", spec.port, spec.protocol, spec.target_port,
                         NODEPORT_RANGE[0] + k if nodeports else None)
        services.append(Service(
            namespace=spec.namespace, name=name,
            cluster_ip=str(L.SERVICE_CIDR.network_address + 10 + k), ports=(sp,),
            type=spec.type, session_affinity=spec.session_affinity,
            affinity_timeout=spec.affinity_timeout,
            external_traffic_policy=spec.external_traffic_policy))
        eps = []
        for _ in range(spec.endpoints):
            node = slot % spec.nodes
            slot += 1
            eps.append(Endpoint((str(ipaddress.IPv4Address(next_addr[node])),), names[node]))
            next_addr[node] += 1
            if next_addr[node] & 0xFF in (0, 255):  # skip .0 and .255, as IPAM does
                next_addr[node] += 1 + (next_addr[node] & 0xFF == 255)
        for c in range(0, max(len(eps), 1), MAX_ENDPOINTS_PER_SLICE):
            slices.append(EndpointSlice(
                spec.namespace, f"{name}-{c // MAX_ENDPOINTS_PER_SLICE:05d}", name,
                tuple(eps[c:c + MAX_ENDPOINTS_PER_SLICE]),
                (EndpointPort("p", spec.target_port, spec.protocol),)))
    return services, slices


def to_k8s(services: list[Service], slices: list[EndpointSlice]) -> dict[str, Any]:
    """A ``List`` of v1 Service and discovery.k8s.io/v1 EndpointSlice objects."""
    items: list[dict[str, Any]] = []
    for s in services:
        spec: dict[str, Any] = {
            "type": s.type, "clusterIP": s.cluster_ip, "clusterIPs": [s.cluster_ip],
            "ports": [_port(p) for p in s.ports], "sessionAffinity": s.session_affinity,
        }
        if s.session_affinity == "ClientIP":
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": s.affinity_timeout}}
        if s.has_node_ports:
            spec["externalTrafficPolicy"] = s.external_traffic_policy
        items.append({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": s.name, "namespace": s.namespace}, "spec": spec})
    for sl in slices:
        items.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": sl.name, "namespace": sl.namespace,
                         "labels": {"kubernetes.io/service-name": sl.service_name}},
            "addressType": sl.address_type,
            "endpoints": [{"addresses": list(e.addresses), "nodeName": e.node_name,
                           "conditions": {"ready": e.ready, "serving": e.serving,
                                          "terminating": e.terminating}}
                          for e in sl.endpoints],
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol}
                      for p in sl.ports],
        })
    return {"apiVersion": "v1", "kind": "List", "items": items}


def _port(p: ServicePort) -> dict[str, Any]:
    d: dict[str, Any] = {"name": p.name, "port": p.port, "protocol": p.protocol,
                         "targetPort": p.target_port if p.target_port is not None else p.port}
    if p.node_port is not None:
        d["nodePort"] = p.node_port
    return d
