"""The userspace datapath behaves as upstream's userspace proxier did, and its proxies are bounded.

The semantics cases it does not implement (NOT_IMPLEMENTED in
test_semantics.py) are asserted here as what upstream did instead:

- a service without endpoints: the connection is accepted by the proxy and
  closed at once (an empty reply), never "refused";
- the backend sees the node's address (the proxy's own connection), for
  ClusterIP and NodePort alike; externalTrafficPolicy: Local is ignored.

And: one proxy process per node, gone when clean-up runs or when the run's
namespaces are deleted without it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from bench.cluster.netclient import connect_many
from bench.cluster.testbed import Testbed
from bench.datapaths import make_variant
from bench.datapaths import userspace as U
from bench.measure import traffic as T
from bench.measure.probes.cpu import CpuProbe
from bench.measure.probes.drops import DropsProbe
from bench.measure.probes.latency import LatencyProbe
from bench.measure.probes.transit import TransitProbe
from bench.model import layout as L
from bench.model.generate import GenSpec, generate
from tests.conftest import require_feature
from tests.helpers import semantics as S

pytestmark = pytest.mark.privileged

NODE_ADDRESSES = {L.node_ip(0), L.node_ip(1), L.pod_gateway(0), L.pod_gateway(1)}


def _proxies(prefix: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "bench.datapaths.userspace_proxy"],
                         capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if f"/run/netns/{prefix}-" in ln]


def _gone(prefix: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _proxies(prefix):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_userspace_does_what_upstream_did_where_it_differs() -> None:
    require_feature("userspace")
    services, slices = S.semantics_cluster()
    dp = make_variant("userspace")
    with Testbed(dp, services, slices, nodes=2) as tb:
        prefix = tb.cluster.prefix
        assert len(_proxies(prefix)) == tb.cluster.node_count  # one per node
        vip, port, proto, *_ = S.SERVICES["empty"]
        (a,) = connect_many(tb.cluster.client_pod_ns, proto, vip, port, timeout=3)
        assert not a.ok and a.error == "short-reply", a  # accepted, then closed
        vip, port, proto, *_ = S.SERVICES["web"]
        attempts = connect_many(tb.cluster.client_pod_ns, proto, vip, port, count=40)
        assert all(a.ok for a in attempts)
        assert {a.peer_ip for a in attempts} <= NODE_ADDRESSES
        # eTP Local ignored: node 0 has no local endpoint and still proxies to node 1's.
        attempts = connect_many(tb.cluster.client_ns, "TCP", L.node_ip(0), 30081, count=5)
        assert all(a.ok for a in attempts) and {a.pod for a in attempts} == {S.POD_OF[S.C]}
        dp.cleanup(tb.cluster.node_ns(0))
        assert len(_proxies(prefix)) == tb.cluster.node_count - 1
    # Node 1's proxy was never cleaned up: it leaves with its namespace.
    assert _gone(prefix)


def test_cpu_per_packet_counts_the_proxy(tmp_path: Path) -> None:
    """The proxy's own CPU (recv, Python, send) is the cost this mode is measured for:
    the proxies run in the datapath's process cgroup, and the CPU probe reads it next
    to the NET_RX time (which it exceeds by far), each nanosecond counted once. The
    drops probe forgets the client's skbs at the proxies' sockets: no drop of the run.
    Node transit, keyed by the payload a proxy forwards as it came, spans the proxy."""
    require_feature("userspace")
    require_feature("bcc")
    services, slices = generate(GenSpec(services=1, endpoints=2, nodes=2, protocol="UDP"))
    svc = services[0]
    dp = make_variant("userspace")
    with Testbed(dp, services, slices, nodes=2, pod_services={svc.key}, echo=False) as tb:
        group = dp.process_cgroup
        assert group is not None
        pids = {int(p) for p in (group / "cgroup.procs").read_text().split()}
        assert len(pids) == tb.cluster.node_count  # every node's proxy, nothing else
        target = T.Target.from_client_pod(tb.cluster, svc.cluster_ip, svc.ports[0].port)
        pcap = target.build_pcap("udp-established", 2000, tmp_path / "u.pcap")
        with LatencyProbe.for_cluster(tb.cluster) as lat, CpuProbe(group) as cpu, \
                DropsProbe.for_cluster(tb.cluster, process_group=group) as drops, \
                TransitProbe.for_cluster(tb.cluster) as transit:
            for probe in (lat, cpu, drops, transit):
                probe.start()
            assert target.replay(pcap, 2000, timeout=60).sent == 2000
            time.sleep(0.2)
            delivered, r, d = lat.read().delivered_seen, cpu.read(), drops.read()
            tr = transit.read()
            # The client's skbs end at the proxies' sockets (UDP frees a read datagram
            # with no tracepoint): forgotten there, or their reused addresses would
            # count later skbs' drops as the run's.
            still_tagged = drops.tagged_left()
    assert not group.exists()  # removed with the proxies
    assert d.run_by_reason == {} and still_tagged < 100, (d, still_tagged)
    # Every packet entered node 0 from the client and left it, as the proxy's send,
    # toward a pod or the underlay (then node 1 timed it again, ul0 -> pod).
    assert delivered >= 1900, delivered
    assert tr.by_hops["pc->pod"] + tr.by_hops["pc->ul0"] >= 1900, tr
    assert tr.by_hops["ul0->pod"] == tr.by_hops["pc->ul0"] and tr.stale == 0, tr
    # The proxy's receive, Python and send are inside node 0's transit: microseconds
    # (the kernel's own forwarding is 1-3 us here, the proxy's CPU alone above 5 us).
    assert tr.percentile(50) > 5_000, tr.percentile(50)
    softirq, process = r.net_rx_ns / delivered, r.process_ns / delivered
    in_proxies = r.group_net_rx_ns / delivered  # NET_RX that ran in a proxy's context
    # A Python recvfrom + sendto per packet costs microseconds: several times the NET_RX
    # the proxies' sends run (machine-wide NET_RX is not compared: other runs on the
    # machine add to it).
    assert process > 5_000 and process > 2 * in_proxies > 0, (softirq, process, in_proxies)
    assert r.per_packet_ns(delivered) == pytest.approx(softirq + process)


def _portal_rules(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy-save"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return sorted(ln for ln in out.splitlines()
                  if ln.startswith("-A ") and ln.split()[1] in U.NAT_CHAINS + U.FILTER_CHAINS)


def test_a_partial_sync_leaves_what_a_fresh_full_sync_leaves() -> None:
    """A partial sync hands the proxy only the changed ports and deletes and appends only
    their portal rules; after each one the proxy's table and the rules equal those of a
    fresh full sync of the new state in another namespace."""
    from dataclasses import replace

    from pyroute2 import netns as nsmod

    from bench.cluster.topology import new_prefix, remove_run
    from bench.errors import ApplyError
    from bench.measure.sync_runner import State, _make_change
    from bench.model.objects import service_port_views

    require_feature("userspace")
    services, slices = generate(GenSpec(services=13, endpoints=3, type="NodePort"))
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    measured = base.services[5]
    dp = make_variant("userspace")
    with Testbed(dp, base.services, base.slices, nodes=1, echo=False) as bed:
        ns, ctx = bed.cluster.node_ns(0), bed.node_context(0)
        prefix = new_prefix()
        scratch = f"{prefix}-fresh"
        nsmod.create(scratch)
        try:
            for kind in ("add-service", "remove-service", "add-endpoint", "remove-endpoint",
                         "endpoint-not-ready"):
                change = _make_change(kind, base, measured, spare)
                for state in (change,
                              replace(change, services=base.services, slices=base.slices)):
                    views = service_port_views(state.services, state.slices, ctx.node_name)
                    delta = dp.render_partial(views, ctx, change.changed)
                    assert U.parse_delta_header(delta) is not None
                    assert len(U.parse_proxy_table(delta)) + len(U.removed_ports(delta)) == 1
                    dp.apply_partial(delta, ns)
                    fresh = make_variant("userspace")
                    # The same proxy ports (stable per port name) as the long-lived one.
                    fresh._proxy_ports = dp._proxy_ports  # type: ignore[attr-defined]
                    try:
                        fresh.apply(fresh.render(views, ctx), scratch)
                        assert dp.proxy_table(ns) == fresh.proxy_table(scratch), kind  # type: ignore[attr-defined]
                        assert _portal_rules(ns) == _portal_rules(scratch), kind
                    finally:
                        fresh.release()
                        fresh.cleanup(scratch)
            # A proxy that died starts empty: a delta is refused until a full sync.
            dp.kill_proxies(ns)  # type: ignore[attr-defined]
            with pytest.raises(ApplyError, match="full sync first"):
                dp.apply_partial(dp.render_partial(bed.views(0), ctx, {measured.key}), ns)
        finally:
            remove_run(prefix)
