"""Service semantics under socket workloads (docs/sockets.md), for each datapath here.

The packet-level semantics (tests/integration/test_semantics.py) are proven
with one connection at a time from an echo client; these run the benchmark's
own socket workloads (bench.measure.sockets: sockperf, kpb-crr) through the
same cluster of services (tests/helpers/semantics.py) and check, from the
kernel's own view of the sockets, that the semantics still hold under load:

- the client's connections are to the ClusterIP (``ss`` in the client pod:
  the replies come from the service address, reverse-translated);
- NodePort with ``externalTrafficPolicy: Local`` keeps the external client's
  address (``ss`` at the backend), with ``Cluster`` the backend sees a node's;
- ``sessionAffinity: ClientIP`` puts every connection of a ``tcp-crr`` run on one
  backend (each backend pod's ``TcpPassiveOpens``), where a service without it
  spreads them.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.measure import sockets as S
from bench.model import layout as L
from tests.conftest import require_feature
from tests.helpers import semantics as H

pytestmark = pytest.mark.privileged

VARIANTS = ("iptables-legacy", "nftables", "ebpf-tc")
NODE_ADDRESSES = {L.node_ip(0), L.node_ip(1), L.pod_gateway(0), L.pod_gateway(1)}
POLL_S = 0.1


@pytest.fixture(scope="module", params=VARIANTS)
def bed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    require_feature(request.param)
    services, slices = H.semantics_cluster()
    # No echo servers: the workloads' own responders listen on the target port.
    with Testbed(make_variant(request.param), services, slices, nodes=2, echo=False) as tb:
        yield tb
        for i in range(tb.cluster.node_count):
            tb.datapath.cleanup(tb.cluster.node_ns(i))


def pod_ns(tb: Testbed, ip: str) -> str:
    return tb.cluster.pod_ns(next(p for p in tb.layout.pods if p.ip == ip))


def responders(tb: Testbed, *ips: str) -> tuple[S.Responder, ...]:
    return tuple(S.Responder(pod_ns(tb, ip), ip, H.TARGET_PORT) for ip in ips)


def established_peers(netns: str) -> set[str]:
    """``addr:port`` of the peer of every established TCP socket in ``netns``."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-tnH", "state", "established"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return {line.split()[3] for line in out.splitlines() if line.strip()}


def peers_during(run: Callable[[], S.SocketResult],
                 spaces: list[str]) -> tuple[S.SocketResult, dict[str, set[str]]]:
    """Run the workload while polling the established peers in ``spaces``."""
    done: list[S.SocketResult] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            done.append(run())
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    seen: dict[str, set[str]] = {ns: set() for ns in spaces}
    t = threading.Thread(target=target)
    t.start()
    while t.is_alive():
        for ns in spaces:
            seen[ns] |= established_peers(ns)
        time.sleep(POLL_S)
    t.join()
    if errors:
        raise errors[0]
    return done[0], seen


def passive_opens(spaces: list[str]) -> dict[str, int]:
    return {ns: S.nstat(ns).get("TcpPassiveOpens", 0) for ns in spaces}


def test_a_tcp_rr_clients_peer_is_the_clusterip(bed: Testbed) -> None:
    vip, port, *_ = H.SERVICES["web"]
    backs = responders(bed, H.A, H.B, H.C, H.D)
    path = S.SocketPath(bed.cluster.client_pod_ns, vip, port, backs)
    r, seen = peers_during(
        lambda: S.run(S.SocketWorkload("tcp-rr", flows=4, duration_s=2), path),
        [path.client_netns, *(b.netns for b in backs)])
    assert r.transactions > 100 and r.failed == 0
    # The client talks to the service address only; the replies it reads come from it.
    assert seen[path.client_netns] == {f"{vip}:{port}"}
    # The backends saw the client pod's own address (a ClusterIP is not masqueraded).
    at_backends = {peer.rsplit(":", 1)[0] for b in backs for peer in seen[b.netns]}
    assert at_backends == {L.client_pod_ip()}


def test_nodeport_local_keeps_the_client_ip_and_cluster_snats_it(bed: Testbed) -> None:
    client = bed.cluster.client_ns
    # Local: the only endpoint (C) is on node-1; traffic enters node-1.
    _, _, _, _, local_port, *_ = H.SERVICES["np-local"]
    (back,) = responders(bed, H.C)
    path = S.SocketPath(client, L.node_ip(1), local_port, (back,))
    r, seen = peers_during(
        lambda: S.run(S.SocketWorkload("tcp-rr", flows=2, duration_s=2), path), [back.netns])
    assert r.transactions > 100 and r.failed == 0
    assert {p.rsplit(":", 1)[0] for p in seen[back.netns]} == {L.CLIENT_IP}
    # Cluster: endpoints A (node-0) and C (node-1), traffic enters node-0: masqueraded.
    _, _, _, _, cluster_port, *_ = H.SERVICES["np-cluster"]
    backs = responders(bed, H.A, H.C)
    path = S.SocketPath(client, L.node_ip(0), cluster_port, backs)
    r, seen = peers_during(
        lambda: S.run(S.SocketWorkload("tcp-rr", flows=4, duration_s=2), path),
        [b.netns for b in backs])
    assert r.transactions > 100 and r.failed == 0
    at_backends = {p.rsplit(":", 1)[0] for b in backs for p in seen[b.netns]}
    assert at_backends and at_backends <= NODE_ADDRESSES, at_backends


def test_client_ip_affinity_puts_every_crr_connection_on_one_backend(bed: Testbed) -> None:
    n = 200
    for name, sticky in (("web", False), ("sticky", True)):
        vip, port, *_ = H.SERVICES[name]
        backs = responders(bed, H.A, H.B, H.C, H.D)
        spaces = [b.netns for b in backs]
        path = S.SocketPath(bed.cluster.client_pod_ns, vip, port, backs)
        if sticky:
            # The affinity is recorded by the client's first connection; first SYNs of
            # several flows sent at the same instant can each pick before it exists (as in
            # the kernel datapaths themselves). One connection first, then the concurrent
            # run: every one of its connections must stick.
            S.run(S.SocketWorkload("tcp-crr", flows=1, count=1, duration_s=5), path)
        before = passive_opens(spaces)
        r = S.run(S.SocketWorkload("tcp-crr", flows=4, count=n, duration_s=20), path)
        after = passive_opens(spaces)
        assert (r.transactions, r.served, r.failed) == (n, n, 0), name
        per_backend = sorted((after[ns] - before[ns] for ns in spaces), reverse=True)
        assert sum(per_backend) == n, (name, per_backend)
        if sticky:
            assert per_backend == [n, 0, 0, 0], per_backend
        else:  # without affinity the same run spreads: the check above can fail
            assert per_backend[1] > 0, per_backend
