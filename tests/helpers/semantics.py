"""The Service semantics every datapath must implement, as a cluster fixture.

Four backend pods (A, B on node-0; C, D on node-1) serve every service; each
service exercises one behaviour. Shared by the semantics, eBPF, userspace and
sync tests (integration, and the VM stage) and by the eBPF render golden test.
"""

from __future__ import annotations

from bench.model.objects import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort

A, B, C, D = "10.1.1.1", "10.1.1.2", "10.2.1.1", "10.2.1.2"
NODE_OF = {A: "node-0", B: "node-0", C: "node-1", D: "node-1"}
POD_OF = {A: "pod0-0", B: "pod0-1", C: "pod1-0", D: "pod1-1"}
AFFINITY_TIMEOUT = 2  # seconds; short so the test can see it expire

# name -> (cluster IP, port, protocol, type, nodePort, policy, affinity, endpoints)
# endpoints: (ip, ready)
SERVICES = {
    "web": ("172.30.0.10", 80, "TCP", "ClusterIP", None, "Cluster", False,
            [(A, True), (B, True), (C, True), (D, True)]),
    "dns": ("172.30.0.11", 53, "UDP", "ClusterIP", None, "Cluster", False,
            [(A, True), (C, True)]),
    "sticky": ("172.30.0.12", 80, "TCP", "ClusterIP", None, "Cluster", True,
               [(A, True), (B, True), (C, True), (D, True)]),
    "np-cluster": ("172.30.0.13", 80, "TCP", "NodePort", 30080, "Cluster", False,
                   [(A, True), (C, True)]),
    "np-local": ("172.30.0.14", 80, "TCP", "NodePort", 30081, "Local", False, [(C, True)]),
    "readiness": ("172.30.0.15", 80, "TCP", "ClusterIP", None, "Cluster", False,
                  [(A, True), (B, False), (C, True)]),
    "empty": ("172.30.0.16", 80, "TCP", "ClusterIP", None, "Cluster", False, []),
}
TARGET_PORT = 8080


def semantics_cluster() -> tuple[list[Service], list[EndpointSlice]]:
    services, slices = [], []
    for name, (vip, port, proto, typ, np_, etp, sticky, eps) in SERVICES.items():
        services.append(Service(
            namespace="sem", name=name, cluster_ip=vip, type=typ,
            ports=(ServicePort("", port, proto, TARGET_PORT, np_),),
            session_affinity="ClientIP" if sticky else "None",
            affinity_timeout=AFFINITY_TIMEOUT if sticky else 10800,
            external_traffic_policy=etp))
        slices.append(EndpointSlice(
            "sem", f"{name}-1", name,
            tuple(Endpoint((ip,), NODE_OF[ip], ready=ready, serving=ready) for ip, ready in eps),
            (EndpointPort("", TARGET_PORT, proto),)))
    return services, slices
