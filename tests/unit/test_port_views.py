"""service_port_views with ``previous``: the view objects of what did not change are
handed back (as an informer's cache hands the same objects), everything else is joined
again, and the result equals a fresh join."""

from __future__ import annotations

from dataclasses import replace

from bench.datapaths import NodeContext, make_variant
from bench.measure.churn import Churn
from bench.model import layout as L
from bench.model.generate import GenSpec, generate
from bench.model.objects import service_port_views


def _objects(services: int = 20):
    return generate(GenSpec(services=services, endpoints=3, nodes=2, protocol="UDP"))


def test_unchanged_services_keep_their_view_objects_and_the_rest_are_joined_again() -> None:
    services, slices = _objects()
    before = service_port_views(services, slices, "node-0")
    churn = Churn(services, slices, keep=services[0].key)
    changed = churn.apply(3)
    after_slices = churn.slices()
    renamed = replace(services[5], internal_traffic_policy="Local")
    after_services = [renamed if s is services[5] else s for s in services]
    changed.add(renamed.key)

    after = service_port_views(after_services, after_slices, "node-0", previous=before)

    assert after == service_port_views(after_services, after_slices, "node-0")
    old = {v.name: v for v in before}
    for view in after:
        if view.service.key in changed:
            assert view is not old[view.name]  # joined again from the new objects
        else:
            assert view is old[view.name]
    assert after.by_service[renamed.key][0].service is renamed


def test_views_of_another_node_are_not_reused() -> None:
    services, slices = _objects()
    before = service_port_views(services, slices, "node-0")
    after = service_port_views(services, slices, "node-1", previous=before)
    assert after == service_port_views(services, slices, "node-1")
    assert not any(a is b for a, b in zip(after, before, strict=True))


def test_a_full_render_after_a_partial_one_with_reused_views_equals_one_with_new_views() -> None:
    """The cache hits that reuse makes possible give the rendering that new (equal) view
    objects give a datapath with the same history."""
    services, slices = _objects(50)
    ctx = NodeContext(node_name="node-0", node_ips=(L.node_ip(0),),
                      cluster_cidr=L.CLUSTER_CIDR, service_cidrs=(str(L.SERVICE_CIDR),))
    for variant in ("ebpf-tc", "userspace", "iptables-legacy", "nftables"):
        out = []
        for reuse in (True, False):
            dp = make_variant(variant)
            first = service_port_views(services, slices, "node-0")
            dp.render(first, ctx)
            churn = Churn(services, slices, keep=services[0].key)
            changed = churn.apply(4)
            views = service_port_views(services, churn.slices(), "node-0",
                                       previous=first if reuse else None)
            dp.render_partial(views, ctx, changed)
            out.append(str(dp.render(views, ctx)))
        assert out[0] == out[1], variant
