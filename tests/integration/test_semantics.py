"""Service semantics proven with real packets, for each datapath.

Each datapath variant gets its own namespace cluster (see tests/helpers/semantics.py);
connections are real TCP connections (and UDP requests) from the in-cluster
client pod or the external client, answered by echo servers that report the
peer address they saw. A case runs for every datapath that implements it
(:data:`NOT_IMPLEMENTED` says which do not, and why); nothing is skipped.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from scipy.stats import chisquare

from bench.cluster import cgroups
from bench.cluster.netclient import connect_many
from bench.cluster.testbed import Testbed
from bench.datapaths import VARIANTS, make_variant, without_rules
from bench.model import layout as L
from tests.conftest import require_feature
from tests.helpers import semantics as S

pytestmark = pytest.mark.privileged

NODE_ADDRESSES = {L.node_ip(0), L.node_ip(1), L.pod_gateway(0), L.pod_gateway(1)}
IPVS_TIME_WAIT_S = 120  # ip_vs_proto_tcp.c: tcp_timeouts[IP_VS_TCP_S_TIME_WAIT]

# The datapaths that implement Services (direct, the rules-free reference, implements none).
SERVICE_VARIANTS = [v for v in VARIANTS if without_rules(v) is None]

# Cases a datapath does not implement, by design, with the reason; every other case runs.
NOT_IMPLEMENTED = {
    "socket-lb": {
        "nodeport": "socket LB rewrites connect() of the client pod's sockets; NodePort "
                    "traffic comes from outside",
        "nodeport-local": "as nodeport",
    },
    "userspace": {
        "client-ip": "the proxy opens its own connection: backends see the node (upstream)",
        "nodeport-local": "the userspace proxier ignored externalTrafficPolicy",
        "reject": "upstream accepted and closed (an empty reply), see test_userspace.py",
    },
}


def applies(case: str) -> pytest.MarkDecorator:
    """Run a test for the datapath variants that implement ``case``."""
    return pytest.mark.parametrize(
        "bed", [v for v in SERVICE_VARIANTS if case not in NOT_IMPLEMENTED.get(v, {})],
        indirect=True)


def implements(bed: Testbed, case: str) -> bool:
    return case not in NOT_IMPLEMENTED.get(bed.datapath.name, {})


@contextlib.contextmanager
def client_pod_processes(tb: Testbed) -> Iterator[None]:
    """Run the block with our children in the client pod's cgroup, if the datapath has one
    (socket LB only sees sockets of processes inside it; netclient inherits ours)."""
    path = tb.datapath.client_cgroup()
    with cgroups.member(path) if path is not None else contextlib.nullcontext():
        yield


@pytest.fixture(scope="module", params=SERVICE_VARIANTS)
def bed(request: pytest.FixtureRequest):
    require_feature(request.param)
    services, slices = S.semantics_cluster()
    with Testbed(make_variant(request.param), services, slices, nodes=2) as tb:
        with client_pod_processes(tb):
            yield tb
        for i in range(tb.cluster.node_count):
            tb.datapath.cleanup(tb.cluster.node_ns(i))


def svc(name: str) -> tuple[str, int, str]:
    vip, port, proto, *_ = S.SERVICES[name]
    return vip, port, proto


@applies("clusterip")
def test_clusterip_reaches_backends_on_both_nodes_uniformly(bed: Testbed) -> None:
    vip, port, proto = svc("web")
    attempts = connect_many(bed.cluster.client_pod_ns, proto, vip, port, count=400)
    assert all(a.ok for a in attempts), Counter(a.error for a in attempts)
    seen = Counter(a.pod for a in attempts)
    assert set(seen) == {S.POD_OF[ip] for ip in (S.A, S.B, S.C, S.D)}
    # Random balancing: chi-square must not reject uniformity at p = 0.001. Over every
    # datapath and CI run a fair balancer still fails that about once in a hundred runs
    # (socket-lb once: 128/105/98/69), so a rejected sample is drawn again, fresh, and
    # must pass: a fair one then fails once in a million, a biased one (say 40/20/20/20 %,
    # p ~ 1e-10 at 400) both times.
    if chisquare(list(seen.values())).pvalue <= 0.001:
        again = Counter(a.pod for a in connect_many(bed.cluster.client_pod_ns, proto, vip,
                                                    port, count=400) if a.ok)
        assert chisquare([again[p] for p in seen]).pvalue > 0.001, (seen, again)
    if implements(bed, "client-ip"):
        # Pod-to-service traffic inside the cluster CIDR is not masqueraded.
        assert {a.peer_ip for a in attempts} == {L.client_pod_ip()}
    else:
        assert {a.peer_ip for a in attempts} <= NODE_ADDRESSES


@applies("udp")
def test_udp_clusterip(bed: Testbed) -> None:
    vip, port, proto = svc("dns")
    attempts = connect_many(bed.cluster.client_pod_ns, proto, vip, port, count=40)
    assert all(a.ok for a in attempts), Counter(a.error for a in attempts)
    assert {a.pod for a in attempts} <= {S.POD_OF[S.A], S.POD_OF[S.C]}


@applies("nodeport")
def test_nodeport_through_either_node_is_snatted_to_a_node(bed: Testbed) -> None:
    _, _, proto = svc("np-cluster")
    for i in range(2):
        attempts = connect_many(bed.cluster.client_ns, proto, L.node_ip(i), 30080, count=40)
        assert all(a.ok for a in attempts), (i, Counter(a.error for a in attempts))
        assert {a.pod for a in attempts} == {S.POD_OF[S.A], S.POD_OF[S.C]}
        # externalTrafficPolicy: Cluster masquerades: the backend sees a node address.
        assert {a.peer_ip for a in attempts} <= NODE_ADDRESSES
        assert L.CLIENT_IP not in {a.peer_ip for a in attempts}


@applies("nodeport-local")
def test_nodeport_local_keeps_client_ip_and_fails_without_local_endpoint(bed: Testbed) -> None:
    # node-1 has the only endpoint: the backend sees the real client address.
    attempts = connect_many(bed.cluster.client_ns, "TCP", L.node_ip(1), 30081, count=20)
    assert all(a.ok for a in attempts), Counter(a.error for a in attempts)
    assert {a.peer_ip for a in attempts} == {L.CLIENT_IP}
    # node-0 has none: kube-proxy drops there, so the connection is never delivered.
    # A drop shows as a timeout; 1 s is plenty on a veth where a reply takes < 1 ms.
    (a,) = connect_many(bed.cluster.client_ns, "TCP", L.node_ip(0), 30081, count=1, timeout=1)
    assert not a.ok and a.error == "timeout", a


@applies("readiness")
def test_not_ready_endpoint_gets_no_new_connections(bed: Testbed) -> None:
    vip, port, proto = svc("readiness")
    attempts = connect_many(bed.cluster.client_pod_ns, proto, vip, port, count=120)
    assert all(a.ok for a in attempts)
    seen = Counter(a.pod for a in attempts)
    assert S.POD_OF[S.B] not in seen
    assert set(seen) == {S.POD_OF[S.A], S.POD_OF[S.C]}


@applies("reject")
def test_service_without_endpoints_is_rejected_at_once(bed: Testbed) -> None:
    vip, port, proto = svc("empty")
    # A REJECT answers with an ICMP error: the client sees "refused", not a timeout.
    (a,) = connect_many(bed.cluster.client_pod_ns, proto, vip, port, count=1, timeout=3)
    assert not a.ok and a.error == "refused", a


@applies("affinity")
def test_client_ip_affinity_sticks_then_expires(bed: Testbed) -> None:
    vip, port, proto = svc("sticky")
    ns = bed.cluster.client_pod_ns
    attempts = connect_many(ns, proto, vip, port, count=60)
    assert all(a.ok for a in attempts)
    assert len({a.pod for a in attempts}) == 1, Counter(a.pod for a in attempts)
    if bed.datapath.name == "ipvs":
        # IPVS keeps a persistence template while connections it scheduled are still in
        # its own table (a closed TCP connection waits there in TIME_WAIT, 120 s, which
        # kube-proxy's flags do not change); only then does the timeout run. rr then
        # schedules the next endpoint, so one expiry shows a different pod.
        time.sleep(IPVS_TIME_WAIT_S + S.AFFINITY_TIMEOUT + 5)
        (a,) = connect_many(ns, proto, vip, port, count=1)
        assert a.ok and a.pod != attempts[0].pod, (a, attempts[0].pod)
        return
    # After the timeout with no traffic the choice is random again: over 8 expiries
    # at least two endpoints must be chosen (all-equal by chance: 4**-7, about 6e-5).
    firsts = []
    for _ in range(8):
        time.sleep(S.AFFINITY_TIMEOUT + 1)
        (a,) = connect_many(ns, proto, vip, port, count=1)
        assert a.ok
        firsts.append(a.pod)
    assert len(set(firsts)) > 1, firsts
