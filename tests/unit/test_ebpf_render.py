"""The eBPF datapaths' map entries and the userspace datapath's rules, rendered without root.

Golden files: ``tests/data/golden/ebpf/<node>.expected`` is the rendering of the
semantics cluster (tests/helpers/semantics.py) for each node. Regenerate
with ``KPBENCH_UPDATE_GOLDEN=1`` after a deliberate change and review the diff.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bench.datapaths import bpf_lb as B
from bench.datapaths import ebpf_maps as M
from bench.datapaths import userspace as U
from bench.datapaths.base import NodeContext
from bench.datapaths.ebpf_tc import EbpfTcDatapath
from bench.errors import ApplyError, InputError
from bench.model import layout as L
from bench.model.generate import GenSpec, generate
from bench.model.objects import (
    EndpointSlice,
    PortViews,
    Service,
    ServiceEndpoint,
    ServicePort,
    ServicePortView,
    service_port_views,
)
from tests.helpers import semantics as S

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "ebpf"


def ctx(i: int) -> NodeContext:
    return NodeContext(node_name=f"node-{i}", node_ips=(L.node_ip(i),),
                       cluster_cidr=L.CLUSTER_CIDR)


def render(dp: EbpfTcDatapath, i: int, services: list[Service] | None = None,
           slices: list[EndpointSlice] | None = None) -> M.MapsRendering:
    if services is None or slices is None:
        services, slices = S.semantics_cluster()
    return dp.render(service_port_views(services, slices, f"node-{i}"), ctx(i))


@pytest.mark.parametrize("node", [0, 1])
def test_semantics_cluster_matches_golden(node: int) -> None:
    text = str(render(EbpfTcDatapath(), node))
    path = GOLDEN / f"semantics-node-{node}.expected"
    if os.environ.get("KPBENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_frontends_follow_the_traffic_policies() -> None:
    entries = render(EbpfTcDatapath(), 0).entries()
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
    entries1 = render(EbpfTcDatapath(), 1).entries()
    assert entries1[("svc", "192.168.0.3:30081/TCP#0")].startswith("count=1 ")
    assert "snat" not in entries1[("svc", "192.168.0.3:30081/TCP#0")]


def test_ids_stay_stable_when_a_service_is_added() -> None:
    dp = EbpfTcDatapath()
    services, slices = generate(GenSpec(services=20, endpoints=3))
    before = render(dp, 0, services, slices).entries()
    more, more_slices = generate(GenSpec(services=21, endpoints=3))
    after = render(dp, 0, [more[-1], *services], [more_slices[-1], *slices]).entries()
    # The new service comes first in the input, yet every old entry is unchanged.
    assert all(after[k] == v for k, v in before.items())
    assert len(after) - len(before) == 1 + 3 + 3 + 1  # slot 0, 3 slots, 3 backends, revnat


def test_packed_entries_match_the_c_structs() -> None:
    """The render packs by hand (concatenated bytes, numpy records, for speed): byte
    for byte the structs of bpf/lb4.h as struct.pack lays them out (LAYOUTS, checked
    against the compiled maps' sizes when the programs load), by both packers."""
    sk, sv = M.LAYOUTS["svc"]
    bk, bv = M.LAYOUTS["backend"]
    rk, rv = M.LAYOUTS["revnat"]
    mk, mv = M.LAYOUTS["match"]
    svc = Service("ns", "sticky", "10.0.0.1", (ServicePort("", 80, "UDP"),),
                  session_affinity="ClientIP", affinity_timeout=60)
    ep = ServiceEndpoint("10.1.1.1", 8080, None, True, True, False, False)
    backends = M.Backends()
    (fe,) = M._port_frontends(ServicePortView(svc, svc.ports[0], (ep,)), ctx(0), backends,
                              M.IdAllocator("revnat", 100))
    addr, port = bytes([10, 0, 0, 1]), socket.htons(80)
    want = {"svc": {sk.pack(addr, port, 0, 17): sv.pack(0, 60, 1, 1, M.SVC_F_AFFINITY),
                    sk.pack(addr, port, 1, 17): sv.pack(1, 0, 0, 0, 0)},
            "backend": {bk.pack(1): bv.pack(bytes([10, 1, 1, 1]), socket.htons(8080), 17)},
            "revnat": {rk.pack(1): rv.pack(addr, port)},
            "match": {mk.pack(1, 1): mv.pack(1)}}
    assert _entries([M._pack(fe, backends)]) == want
    assert M._pack_all([fe], backends)[0] == want
    assert [s.size for s in M.LAYOUTS["svc"]] == [12, 16]
    # And the text shows them as they were rendered.
    assert M._unpacked("svc", want["svc"]) == [
        ("10.0.0.1:80/UDP#0", "count=1 revnat=1 flags=affinity timeout=60"),
        ("10.0.0.1:80/UDP#1", "backend=1")]
    assert M._unpacked("backend", want["backend"]) == [("1", "10.1.1.1:8080/UDP")]


@pytest.mark.parametrize("node", [0, 1])
def test_both_packers_give_the_same_entries(node: int) -> None:
    """A full sync packs all frontends at once (numpy), a partial one frontend by
    frontend (Python): over every kind of frontend of the semantics cluster (affinity,
    NodePorts, traffic policies, no endpoints) they agree byte for byte."""
    services, slices = S.semantics_cluster()
    backends, revnat = M.Backends(), M.IdAllocator("revnat", 1000)
    fes = [fe for v in service_port_views(services, slices, f"node-{node}")
           for fe in M._port_frontends(v, ctx(node), backends, revnat)]
    assert any(fe.flags & M.SVC_F_AFFINITY for fe in fes) and any(not fe.backends for fe in fes)
    by_frontend = _entries([M._pack(fe, backends) for fe in fes])
    assert M._pack_all(fes, backends)[0] == by_frontend
    assert all(by_frontend.values())


def _entries(packed: list[M._Packed]) -> M.Maps:
    maps: M.Maps = {m: {} for m in M.MAPS}
    for fe in packed:
        maps["svc"].update(fe.svc)
        maps["backend"].update(fe.backends)
        maps["revnat"][fe.revnat[0]] = fe.revnat[1]
        maps["match"].update(dict.fromkeys(fe.matches, M._MATCH_ONE))
    return maps


def test_an_out_of_date_rendering_refuses_to_be_read() -> None:
    """A partial sync changes the node's maps in place: the full rendering that shared
    them must not be applied (or shown) as if it were still that state."""
    services, slices = generate(GenSpec(services=3, endpoints=2))
    dp = EbpfTcDatapath()
    views = service_port_views(services, slices, "node-0")
    full = dp.render(views, ctx(0))
    text = str(full)
    dp.render_partial(views, ctx(0), {services[1].key})
    with pytest.raises(ApplyError, match="out of date"):
        full.counts()
    again = dp.render(views, ctx(0))
    assert again is not full and str(again) == text


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
    counts = render(EbpfTcDatapath(), 0, services, slices).counts()
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
    held = {m: dict(d) for m, d in base.maps.items()}  # what a node applying it holds
    delta = partial.render_partial(after, ctx, c.changed)
    # Only the changed Service's port was rendered: its frontend and its backends.
    (view,) = [v for v in (after if kind != "remove-service" else before)
               if v.service.key in c.changed]
    assert partial.rendered_entries("node-0") == (
        0 if kind == "remove-service" else 1 + len(view.cluster_endpoints))
    # The delta takes the node from the old full rendering to the new one exactly.
    assert isinstance(delta, M.MapsDelta) and delta.end == delta.start + 1
    old = {m: dict(d) for m, d in held.items()}
    for m, keys in delta.deletes.items():
        for k in keys:
            del held[m][k]
    assert not any(held[m].get(k) == v for m, w in delta.writes.items()
                   for k, v in w.items())  # no needless write
    for m, w in delta.writes.items():
        held[m].update(w)
    new = full.render(after, ctx)
    assert held == new.maps != old
    counts = delta.counts()
    assert counts["written"] + counts["deleted"] <= 2 * (2 + len(view.endpoints))
    # And the next full render of the partial datapath is that of a fresh one, taken
    # from the whole rendering the partial sync kept up to date: nothing packed or
    # assembled again.
    with counting(M, "_port_frontends") as packed, counting(M, "_pack_all") as assembled:
        again = partial.render(after, ctx)
    assert again == new and str(again) == str(new)
    assert packed == [] and assembled == []
    assert partial.rendered_entries("node-0") == 0


@contextlib.contextmanager
def counting(module: object, name: str) -> Iterator[list[object]]:
    """Record every call of ``module.name`` in the block."""
    real = getattr(module, name)
    calls: list[object] = []

    def spy(*args: object, **kw: object) -> object:
        calls.append(args)
        return real(*args, **kw)

    setattr(module, name, spy)
    try:
        yield calls
    finally:
        setattr(module, name, real)


def test_a_removed_service_loses_every_slot_right_after_a_full_render(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The slot keys of a removed frontend are made again for the delete: also when
    nothing was packed frontend by frontend before (a full render packs with numpy)."""
    monkeypatch.setattr(M, "_SLOT_TAILS", {n: [struct.pack("=HB3x", 0, n)]
                                           for n in M.PROTO_NUMBERS.values()})
    services, slices = generate(GenSpec(services=3, endpoints=4))
    dp = EbpfTcDatapath()
    before = dp.render(service_port_views(services, slices, "node-0"), ctx(0)).counts()
    delta = dp.render_partial(service_port_views(services[:2], slices, "node-0"), ctx(0),
                              {services[2].key})
    assert isinstance(delta, M.MapsDelta)
    assert len(delta.deletes["svc"]) == 1 + 4 and len(delta.deletes["backend"]) == 4
    after = dp.render(service_port_views(services[:2], slices, "node-0"), ctx(0))
    assert after.counts()["svc"] == before["svc"] - 5


def test_a_full_render_of_an_unchanged_state_renders_nothing_new() -> None:
    services, slices = generate(GenSpec(services=20, endpoints=3))
    dp = EbpfTcDatapath()
    first = dp.render(service_port_views(services, slices, "node-0"), ctx(0))
    assert dp.rendered_entries("node-0") == 20 * 4
    with counting(M, "_port_frontends") as packed, counting(M, "_pack_all") as assembled:
        again = dp.render(service_port_views(services, slices, "node-0"), ctx(0))
    assert again is first and dp.rendered_entries("node-0") == 0
    assert packed == [] and assembled == []


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
    assert isinstance(text, M.MapsRendering) and text == EbpfTcDatapath().render(views, ctx(0))


def test_random_partial_syncs_keep_the_whole_rendering_a_fresh_assembly() -> None:
    """Many partial syncs of random changes (endpoints gone, added, not ready; affinity,
    NodePort and traffic policy flips; services removed and added back): after each,
    the maps a node holds from applying the deltas, the whole rendering the partial
    syncs kept and a fresh assembly of every port (same ids) are the same."""
    rng = random.Random(13)
    services, slices = generate(GenSpec(services=12, endpoints=4, protocol="UDP"))
    full_views = list(service_port_views(services, slices, "node-0"))
    views = list(full_views)
    dp = EbpfTcDatapath()
    held = {m: dict(d) for m, d in dp.render(PortViews(views), ctx(0)).maps.items()}
    for step in range(150):
        i = rng.randrange(len(full_views))
        key = full_views[i].service.key
        present = [j for j, v in enumerate(views) if v.service.key == key]
        kind = rng.choice(["drop", "add", "ready", "affinity", "nodeport", "local", "remove"])
        if not present:
            views.append(full_views[i])  # the service comes back
        elif kind == "remove":
            del views[present[0]]
        else:
            j = present[0]
            v, svc = views[j], views[j].service
            eps = list(v.endpoints)
            if kind == "drop" and eps:
                eps.pop(rng.randrange(len(eps)))
            elif kind == "add":
                eps = list(full_views[i].endpoints)
            elif kind == "ready" and eps:
                k = rng.randrange(len(eps))
                eps[k] = replace(eps[k], ready=not eps[k].ready)
            elif kind == "affinity":
                svc = replace(svc, session_affinity="None" if svc.session_affinity ==
                              "ClientIP" else "ClientIP", affinity_timeout=rng.randrange(1, 99))
            elif kind == "nodeport":
                nodeport = svc.type == "ClusterIP"
                svc = replace(svc, type="NodePort" if nodeport else "ClusterIP")
                v = replace(v, port=replace(v.port, node_port=30000 + i if nodeport else None))
            elif kind == "local":
                svc = replace(svc, external_traffic_policy="Local" if
                              svc.external_traffic_policy == "Cluster" else "Cluster")
            views[j] = replace(v, service=svc, endpoints=tuple(eps))
        now = PortViews(views)
        out = dp.render_partial(now, ctx(0), {key})
        if isinstance(out, M.MapsDelta):
            for m, keys in out.deletes.items():
                for k in keys:
                    del held[m][k]  # a delete of what the node holds
            assert not any(held[m].get(k) == v for m, w in out.writes.items()
                           for k, v in w.items()), step  # no needless write
            for m, w in out.writes.items():
                held[m].update(w)
        else:
            held = {m: dict(d) for m, d in out.maps.items()}
        fresh = M.render_maps(now, ctx(0), dp._backends, dp._revnat_ids, M.NodeRender())
        assert dp.render(now, ctx(0)).maps == held == fresh.maps, (step, kind)


@pytest.mark.parametrize("kind", ["add-endpoint", "remove-endpoint", "endpoint-not-ready"])
@pytest.mark.parametrize("gen", [GenSpec(services=9, endpoints=3, protocol="UDP"),
                                 GenSpec(services=9, endpoints=3, type="LoadBalancer",
                                         session_affinity="ClientIP",
                                         external_traffic_policy="Local")])
def test_partial_syncs_leave_their_deltas_to_the_next_full_render(kind: str,
                                                                   gen: GenSpec) -> None:
    """A partial render touches nothing of the kept whole rendering: its delta waits in
    ``pending`` and the next full render folds it in, equal to a fresh render's maps. One
    port's endpoint change (the shortcut) gives the delta the general path gives."""
    from bench.measure.sync_runner import State, _make_change

    services, slices = generate(gen)
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    before = service_port_views(base.services, base.slices, "node-0")
    shortcut, general = EbpfTcDatapath(), EbpfTcDatapath()
    kept = {m: dict(d) for m, d in shortcut.render(before, ctx(0)).maps.items()}
    general.render(before, ctx(0))
    state = shortcut._renders["node-0"]
    for measured in (base.services[4], base.services[0]):
        c = _make_change(kind, base, measured, spare)
        after = service_port_views(c.services, c.slices, "node-0")
        with counting(M, "_port_frontends") as packed:
            delta = shortcut.render_partial(after, ctx(0), c.changed)
        assert packed == []  # the cached frontends, their backends chosen again
        assert isinstance(delta, M.MapsDelta) and delta.writes["svc"]
        other = M.render_delta(list(after), ctx(0), general._backends, general._revnat_ids,
                               general._renders["node-0"], c.changed)
        assert isinstance(other, M.MapsDelta)
        assert (delta.writes, delta.deletes) == (other.writes, other.deletes)
        assert state.maps == kept and len(state.pending) >= 1  # nothing folded yet
        folded = shortcut.render(after, ctx(0))
        assert not state.pending
        fresh = M.render_maps(after, ctx(0), shortcut._backends, shortcut._revnat_ids)
        assert folded.maps == fresh.maps == general.render(after, ctx(0)).maps
        # Back to the base state, the same way.
        delta = shortcut.render_partial(before, ctx(0), c.changed)
        general.render_partial(list(before), ctx(0), c.changed)
        kept = {m: dict(d) for m, d in shortcut.render(before, ctx(0)).maps.items()}
        assert kept == general.render(before, ctx(0)).maps


@pytest.mark.parametrize("seed", range(6))
def test_a_first_render_packs_runs_of_plain_ports_as_port_by_port(seed: int) -> None:
    """A first render packs runs of ClusterIP-only ports in one pass (_plain_run): the
    same entries, backend and reverse-NAT ids and cached frontends as port by port, with
    endpoints out of order, not ready, terminating, shared by two Services, protocols
    mixed and other Service types in between."""
    rng = random.Random(seed)
    mixed = seed % 2 == 1  # else every port plain, one protocol: one run of them all
    services, slices = S.semantics_cluster()
    views = list(service_port_views(services, slices, "node-0")) if mixed else []
    more, more_slices = generate(GenSpec(services=40, endpoints=5, protocol="UDP"))
    views += service_port_views(more, more_slices, "node-0")
    pool = [e for v in views for e in v.endpoints]
    out = []
    for v in views:
        eps = list(v.endpoints)
        rng.shuffle(eps)
        roll = rng.random()
        if roll < 0.2 and eps:
            k = rng.randrange(len(eps))
            eps[k] = replace(eps[k], ready=False, serving=rng.random() < 0.5,
                             terminating=True)
        elif roll < 0.3:
            eps.append(rng.choice(pool))  # an endpoint another Service has too
            eps = list({e.address: e for e in eps}.values())
        elif roll < 0.35:
            eps = [replace(e, ready=False, serving=True, terminating=True) for e in eps]
        svc = v.service
        if rng.random() < 0.2:
            svc = replace(svc, session_affinity="ClientIP", affinity_timeout=rng.randrange(9))
        if mixed and rng.random() < 0.2:
            v = replace(v, port=replace(v.port, protocol="TCP"))
        out.append(replace(v, service=svc, endpoints=tuple(eps)))
    rng.shuffle(out)
    batch, single = EbpfTcDatapath(), EbpfTcDatapath()
    with counting(M, "_plain_run") as runs:
        got = M.render_maps(out, ctx(0), batch._backends, batch._revnat_ids,
                            batch._renders.setdefault("node-0", M.NodeRender()))
    assert len(runs) >= (2 if mixed else 1)
    state = single._renders.setdefault("node-0", M.NodeRender())
    state.cache["-"] = (out[0], ())  # not empty: every port is looked up and packed alone
    with counting(M, "_plain_run") as runs:
        want = M.render_maps(out, ctx(0), single._backends, single._revnat_ids, state)
    assert runs == []
    assert got.maps == want.maps and str(got) == str(want)
    assert batch._backends.values == single._backends.values
    assert batch._backends.ids == single._backends.ids
    assert batch._revnat_ids.known == single._revnat_ids.known
    assert batch._renders["node-0"].refs == state.refs
    kept = batch._renders["node-0"]
    for v in out:
        assert kept.cache[v.name][1] == state.cache[v.name][1], v.name
        if not kept.shared:  # each frontend is its own port's
            assert all(kept.owner[fe.key] == v.name for fe in kept.cache[v.name][1])
    assert kept.owner == state.owner


def test_a_long_run_of_partial_syncs_folds_its_deltas_as_it_goes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PENDING unfolded deltas a partial render folds them itself (what it keeps
    stays bounded), and the whole rendering is still a fresh render's."""
    from bench.measure.sync_runner import State, _make_change

    monkeypatch.setattr(M, "MAX_PENDING", 2)
    services, slices = generate(GenSpec(services=7, endpoints=3, protocol="UDP"))
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    before = service_port_views(base.services, base.slices, "node-0")
    dp = EbpfTcDatapath()
    dp.render(before, ctx(0))
    state = dp._renders["node-0"]
    views = before
    for i, kind in enumerate(["remove-endpoint", "add-endpoint", "endpoint-not-ready",
                              "remove-service", "add-service", "remove-endpoint"]):
        c = _make_change(kind, base, base.services[i % 5], spare)
        assert isinstance(dp.render_partial(views, ctx(0), c.changed), M.MapsDelta)
        views = service_port_views(c.services, c.slices, "node-0")
        assert isinstance(dp.render_partial(views, ctx(0), c.changed), M.MapsDelta)
        assert len(state.pending) <= 2
        views = service_port_views(base.services, base.slices, "node-0")
        dp.render_partial(views, ctx(0), c.changed)
    fresh = M.render_maps(views, ctx(0), dp._backends, dp._revnat_ids)
    assert dp.render(views, ctx(0)).maps == fresh.maps


def test_view_names_are_the_views_names() -> None:
    from bench.model.objects import view_names

    services, slices = S.semantics_cluster()
    views = list(service_port_views(services, slices, "node-0"))
    views[1] = replace(views[1], port=replace(views[1].port, name="http"))
    assert view_names(views) == [v.name for v in views]
    assert views[1].name.endswith(":http")
    plain = service_port_views(*generate(GenSpec(services=5, endpoints=2)), "node-0")
    assert view_names(plain) == [v.name for v in plain]


def test_a_deltas_kernel_calls_keep_every_frontend_whole_at_each_step() -> None:
    """A partial sync's batches (packed by the render, made by the apply one call each)
    write what a frontend points to before the frontend and its count slot after its
    other slots, and delete the count slot first: between two calls no count names a
    slot that is not there. Each batch is its entries packed back to back."""
    services, slices = generate(GenSpec(services=3, endpoints=4))
    dp = EbpfTcDatapath()
    dp.render(service_port_views(services, slices, "node-0"), ctx(0))
    grown = [replace(s, endpoints=(*s.endpoints, replace(s.endpoints[0],
                                                         addresses=("10.244.9.9",))))
             if s.service_key == services[1].key else s for s in slices]
    for new_services, new_slices, changed in (
            (services[:1], slices, {services[1].key, services[2].key}),  # two removed
            (services, slices, {services[1].key, services[2].key}),  # both added back
            (services, grown, {services[1].key}),  # its endpoints changed
            (services, slices, {services[1].key})):  # and back
        delta = dp.render_partial(service_port_views(new_services, new_slices, "node-0"),
                                  ctx(0), changed)
        assert isinstance(delta, M.MapsDelta)
        calls = [(b.delete, b.m) for b in delta.batches]
        writes = [m for d, m in calls if not d]
        deletes = [m for d, m in calls if d]
        assert calls == [(False, m) for m in writes] + [(True, m) for m in deletes]
        assert writes == [m for m in M.MAPS if m in writes]
        assert deletes == [m for m in reversed(M.MAPS) if m in deletes]
        for b in delta.batches:
            size = M.LAYOUTS[b.m][0].size
            keys = [b.keys[i:i + size] for i in range(0, len(b.keys), size)]
            assert len(keys) == b.count
            if b.delete:
                assert sorted(keys) == sorted(delta.deletes[b.m]) and not b.values
            else:
                vsize = M.LAYOUTS[b.m][1].size
                values = [b.values[i:i + vsize] for i in range(0, len(b.values), vsize)]
                assert dict(zip(keys, values, strict=True)) == delta.writes[b.m]
            if b.m == "svc":
                count_slots = [k[6:8] == b"\0\0" for k in keys]
                # written last, deleted first
                want = sorted(count_slots, reverse=b.delete)
                assert count_slots == want, (b.delete, count_slots)


def test_a_resync_of_the_very_ports_it_rendered_walks_none_of_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full render handed the ports of the current rendering, object by object,
    returns that rendering without naming or looking up a port (a resync at 10,000
    services took 3-7 ms walking them); after a partial sync, or for another node
    context, it renders again, and what it returns is what a fresh render gives."""
    services, slices = generate(GenSpec(services=20, endpoints=3))
    dp = EbpfTcDatapath()
    views = service_port_views(services, slices, "node-0")
    first = dp.render(views, ctx(0))

    def walked(_: object) -> None:
        raise AssertionError("the ports were walked")

    with monkeypatch.context() as m:
        m.setattr(M, "view_names", walked)
        assert dp.render(views, ctx(0)) is first
        assert dp.render(PortViews(views), ctx(0)) is first  # the same view objects
        with pytest.raises(AssertionError, match="walked"):
            dp.render(service_port_views(services, slices, "node-0"), ctx(1))
    fewer = service_port_views(services[:19], slices, "node-0")
    assert isinstance(dp.render_partial(fewer, ctx(0), {services[19].key}), M.MapsDelta)
    again = dp.render(views, ctx(0))
    assert again is not first
    assert again == M.render_maps(views, ctx(0), dp._backends,  # type: ignore[attr-defined]
                                  dp._revnat_ids, M.NodeRender())  # type: ignore[attr-defined]
