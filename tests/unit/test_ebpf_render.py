"""The eBPF datapaths' map entries and the userspace datapath's rules, rendered without root.

Golden files: ``tests/data/golden/ebpf/<node>.expected`` is the rendering of the
semantics cluster (tests/helpers/semantics.py) for each node. Regenerate
with ``KPBENCH_UPDATE_GOLDEN=1`` after a deliberate change and review the diff.
"""

from __future__ import annotations

import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from bench.datapaths import bpf_lb as B
from bench.datapaths import ebpf_maps as M
from bench.datapaths import userspace as U
from bench.datapaths.base import NodeContext
from bench.datapaths.ebpf_tc import EbpfTcDatapath
from bench.errors import InputError
from bench.model import layout as L
from bench.model.generate import GenSpec, generate
from bench.model.objects import EndpointSlice, Service, service_port_views
from tests.helpers import semantics as S

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "ebpf"


def ctx(i: int) -> NodeContext:
    return NodeContext(node_name=f"node-{i}", node_ips=(L.node_ip(i),),
                       cluster_cidr=L.CLUSTER_CIDR)


def render(dp: EbpfTcDatapath, i: int, services: list[Service] | None = None,
           slices: list[EndpointSlice] | None = None) -> str:
    if services is None or slices is None:
        services, slices = S.semantics_cluster()
    return dp.render(service_port_views(services, slices, f"node-{i}"), ctx(i))


@pytest.mark.parametrize("node", [0, 1])
def test_semantics_cluster_matches_golden(node: int) -> None:
    text = render(EbpfTcDatapath(), node)
    path = GOLDEN / f"semantics-node-{node}.expected"
    if os.environ.get("KPBENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_frontends_follow_the_traffic_policies() -> None:
    entries = M.parse_maps(render(EbpfTcDatapath(), 0))
    slot0 = {k.split("#")[0]: v for (m, k), v in entries.items() if m == "svc" and
             k.endswith("#0")}
    # No endpoint at all: count 0 and no drop flag (the program rejects).
    assert slot0["172.30.0.16:80/TCP"] == "count=0 revnat=9 flags=- timeout=0"
    # eTP Local on a node without a local endpoint: count 0, drop (kube-proxy drops).
    assert slot0["192.168.0.2:30081/TCP"].startswith("count=0 ")
    assert "drop" in slot0["192.168.0.2:30081/TCP"]
    # eTP Cluster NodePort SNATs; ClusterIP does not; readiness leaves B out.
    assert "snat" in slot0["192.168.0.2:30080/TCP"]
    assert "snat" not in slot0["172.30.0.13:80/TCP"]
    assert slot0["172.30.0.15:80/TCP"].startswith("count=2 ")
    # Affinity carries its timeout and one match entry per backend.
    assert slot0["172.30.0.12:80/TCP"].endswith(f"flags=affinity timeout={S.AFFINITY_TIMEOUT}")
    assert sum(1 for m, _ in entries if m == "match") == 4
    # eTP Local on the node that has the endpoint: only that one, client address kept.
    entries1 = M.parse_maps(render(EbpfTcDatapath(), 1))
    assert entries1[("svc", "192.168.0.3:30081/TCP#0")].startswith("count=1 ")
    assert "snat" not in entries1[("svc", "192.168.0.3:30081/TCP#0")]


def test_ids_stay_stable_when_a_service_is_added() -> None:
    dp = EbpfTcDatapath()
    services, slices = generate(GenSpec(services=20, endpoints=3))
    before = M.parse_maps(render(dp, 0, services, slices))
    more, more_slices = generate(GenSpec(services=21, endpoints=3))
    after = M.parse_maps(render(dp, 0, [more[-1], *services], [more_slices[-1], *slices]))
    # The new service comes first in the input, yet every old entry is unchanged.
    assert all(after[k] == v for k, v in before.items())
    assert len(after) - len(before) == 1 + 3 + 3 + 1  # slot 0, 3 slots, 3 backends, revnat


def test_packed_entries_match_the_c_structs() -> None:
    keys, values = M.pack("svc", [("10.0.0.1:80/TCP#2", "backend=7")])
    assert keys == bytes([10, 0, 0, 1]) + b"\x00\x50" + struct.pack("=H", 2) + b"\x06" + bytes(3)
    assert values == struct.pack("=IIHHB3x", 7, 0, 0, 0, 0)
    _, v0 = M.pack("svc", [("10.0.0.1:80/UDP#0",
                            "count=3 revnat=9 flags=affinity,snat timeout=60")])
    assert v0 == struct.pack("=IIHHB3x", 0, 60, 3, 9, M.SVC_F_AFFINITY | M.SVC_F_SNAT)
    _, b = M.pack("backend", [("7", "10.1.1.1:8080/UDP")])
    assert b == bytes([10, 1, 1, 1]) + b"\x1f\x90" + b"\x11\x00"
    assert [s.size for s in M.LAYOUTS["svc"]] == [12, 16]


def test_a_malformed_rendering_is_refused_with_its_line() -> None:
    with pytest.raises(InputError, match="line 2"):
        M.parse_maps("# header\nsvc only-two\n")


def test_map_sizes_come_from_the_rendering_and_have_limits() -> None:
    sizes = B.MapSizes.for_counts({"svc": 110_000, "backend": 100_000, "revnat": 10, "match": 0})
    assert sizes.svc == 1 << 18 and sizes.backend == 1 << 18 and sizes.match == B.MIN_ENTRIES
    with pytest.raises(InputError, match="exceed that map"):
        sizes.check({"svc": sizes.svc + 1, "backend": 0, "revnat": 0, "match": 0})
    with pytest.raises(InputError, match="largest map kpbench loads"):
        B.MapSizes.for_counts({"svc": B.MAX_ENTRIES + 1, "backend": 1, "revnat": 1,
                               "match": 0})


def test_ten_thousand_services_of_ten_endpoints_fit() -> None:
    services, slices = generate(GenSpec(services=10_000, endpoints=10, type="ClusterIP"))
    services = [replace(s, type="NodePort", ports=(replace(s.ports[0], node_port=30000),))
                if i == 0 else s for i, s in enumerate(services)]
    counts = M.count_entries(M.parse_maps(render(EbpfTcDatapath(), 0, services, slices)))
    sizes = B.MapSizes.for_counts(counts)
    sizes.check(counts)
    assert counts["svc"] >= 110_000


def test_stat_names_come_from_the_header() -> None:
    names = B.stat_names()
    assert names[0] == "xdp_seen" and "tc_reject" in names and "sock_xlate" in names


def test_userspace_rules_are_the_upstream_portals() -> None:
    services, slices = S.semantics_cluster()
    text = U.render_rules(service_port_views(services, slices, "node-0"), ctx(0),
                          M.IdAllocator("proxy port", 100))
    lines = text.splitlines()
    web = next(ln for ln in lines if ln.startswith("# proxy sem/web "))
    assert web == ("# proxy sem/web TCP port=10000 affinity=None claims=- endpoints="
                   "10.1.1.1:8080,10.1.1.2:8080,10.2.1.1:8080,10.2.1.2:8080")
    assert ('-A KUBE-PORTALS-CONTAINER -m comment --comment "sem/web" -p tcp -m tcp --dport 80'
            ' -d 172.30.0.10/32 -j REDIRECT --to-ports 10000') in lines
    assert ('-A KUBE-PORTALS-HOST -m comment --comment "sem/web" -p tcp -m tcp --dport 80'
            ' -d 172.30.0.10/32 -j DNAT --to-destination 192.168.0.2:10000') in lines
    np_ = next(ln for ln in lines if ln.startswith("# proxy sem/np-cluster "))
    assert "claims=30080" in np_
    assert any(ln.startswith("-A KUBE-NODEPORT-NON-LOCAL") and "--dport 10003" in ln
               and ln.endswith("-m state --state NEW -j ACCEPT") for ln in lines)
    # Readiness: only ready endpoints; no endpoints: a portal all the same.
    table = {s["name"]: s for s in U.parse_proxy_table(text)}
    assert table["sem/readiness"]["endpoints"] == ["10.1.1.1:8080", "10.2.1.1:8080"]
    assert table["sem/empty"]["endpoints"] == []
    assert table["sem/sticky"]["affinity_timeout"] == S.AFFINITY_TIMEOUT


@pytest.mark.parametrize("kind", ["add-service", "remove-service", "add-endpoint",
                                  "remove-endpoint", "endpoint-not-ready"])
def test_a_partial_render_equals_a_full_render_of_the_new_state(kind: str) -> None:
    """Ports of unchanged Services come from the render cache unchecked: the entries
    must still be exactly those a full render (which checks every port) gives."""
    from bench.measure.sync_runner import State, _make_change

    ctx = NodeContext("node-0", ("192.168.0.2",), "10.0.0.0/8")
    services, slices = generate(GenSpec(services=9, endpoints=3, protocol="UDP"))
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    c = _make_change(kind, base, base.services[4], spare)
    before = service_port_views(base.services, base.slices, "node-0")
    after = service_port_views(c.services, c.slices, "node-0")
    partial, full = EbpfTcDatapath(), EbpfTcDatapath()
    base = partial.render(before, ctx)
    assert base == full.render(before, ctx)
    delta = partial.render_partial(after, ctx, c.changed)
    # Only the changed Service's port was rendered: its frontend and its backends.
    (view,) = [v for v in (after if kind != "remove-service" else before)
               if v.service.key in c.changed]
    assert partial.rendered_entries("node-0") == (
        0 if kind == "remove-service" else 1 + len(view.cluster_endpoints))
    # The delta takes the node from the old full rendering to the new one exactly.
    start, end, writes, deletes = M.parse_delta(delta)
    assert end == start + 1
    entries = M.parse_maps(base)
    for key in deletes:
        del entries[key]
    assert not any(entries.get(k) == v for k, v in writes.items())  # no needless write
    entries.update(writes)
    new = full.render(after, ctx)
    assert entries == M.parse_maps(new) != M.parse_maps(base)
    assert len(writes) + len(deletes) <= 2 * (2 + len(view.endpoints))
    # And the next full render of the partial datapath is that of a fresh one.
    assert partial.render(after, ctx) == new


def test_a_full_render_of_an_unchanged_state_renders_nothing_new() -> None:
    services, slices = generate(GenSpec(services=20, endpoints=3))
    dp = EbpfTcDatapath()
    first = dp.render(service_port_views(services, slices, "node-0"), ctx(0))
    assert dp.rendered_entries("node-0") == 20 * 4
    again = dp.render(service_port_views(services, slices, "node-0"), ctx(0))
    assert again is first and dp.rendered_entries("node-0") == 0


def test_a_partial_render_with_a_shared_frontend_renders_everything() -> None:
    """Two Services on one ClusterIP:port: which one holds the map key depends on
    the order of all ports, so the partial render falls back to a full one."""
    services, slices = generate(GenSpec(services=4, endpoints=2))
    twin = replace(services[2], cluster_ip=services[1].cluster_ip)
    services = [*services[:2], twin, services[3]]
    views = service_port_views(services, slices, "node-0")
    dp = EbpfTcDatapath()
    dp.render(views, ctx(0))
    text = dp.render_partial(views, ctx(0), {twin.key})
    assert not M.is_delta(text) and text == EbpfTcDatapath().render(views, ctx(0))
