"""Render microbenchmarks (pytest-benchmark): what our rendering costs per datapath.

Not part of the normal test run; run with scripts/microbench.sh, which saves
pytest-benchmark JSON under results/microbench and compares with the last
saved run (--benchmark-compare). Four cases per datapath: the first full
sync (nothing cached), a full resync of the same state (kube-proxy's periodic
full sync; each service port's output comes from the cache), a partial sync
of one change (only the changed Service is rendered) and a full sync right
after that partial one. Compare them with the apply times of a sync scenario
(`sync.apply`, the datapath's own time).
"""

from __future__ import annotations

import gc
from functools import cache

import pytest

from bench.datapaths import VARIANTS, NodeContext, make_variant
from bench.model.generate import GenSpec, generate
from bench.model.objects import ServicePortView, service_port_views

CTX = NodeContext("node-0", ("192.168.0.2",), "10.0.0.0/8", service_cidrs=("172.30.0.0/16",))
# iptables-nft renders the same text as legacy; xdp and socket-lb the maps of ebpf-tc.
RENDERED = ["iptables-legacy", "nftables", "ipvs", "ebpf-tc", "userspace"]
SCALES = [1000, 10000]


@cache
def views(services: int) -> list[ServicePortView]:
    svcs, slices = generate(GenSpec(services=services, endpoints=10))
    return service_port_views(svcs, slices, "node-0")


@pytest.fixture(autouse=True)
def _no_gc():  # type: ignore[no-untyped-def]
    # As the runners time a sync (bench.cluster.testbed.gc_paused).
    gc.disable()
    yield
    gc.enable()


def _changed(services: int) -> tuple[list[ServicePortView], set[str]]:
    """The state after one endpoint of the middle service went away, and its key."""
    from dataclasses import replace

    v = list(views(services))
    i = services // 2
    v[i] = replace(v[i], endpoints=v[i].endpoints[:-1])
    return v, {v[i].service.key}


@pytest.mark.parametrize("services", SCALES)
@pytest.mark.parametrize("variant", RENDERED)
def test_full_sync_render(benchmark, variant: str, services: int) -> None:
    assert variant in VARIANTS
    v = views(services)
    text = benchmark.pedantic(lambda: make_variant(variant).render(v, CTX), rounds=3,
                              iterations=1)
    assert text


@pytest.mark.parametrize("services", SCALES)
@pytest.mark.parametrize("variant", RENDERED)
def test_full_resync_render(benchmark, variant: str, services: int) -> None:
    dp = make_variant(variant)
    v = views(services)
    first = dp.render(v, CTX)
    text = benchmark.pedantic(dp.render, args=(v, CTX), rounds=3, iterations=1)
    assert text == first


@pytest.mark.parametrize("services", SCALES)
@pytest.mark.parametrize("variant", RENDERED)
def test_partial_sync_render(benchmark, variant: str, services: int) -> None:
    before = views(services)
    after, changed = _changed(services)

    def setup():  # type: ignore[no-untyped-def]
        dp = make_variant(variant)
        dp.render(before, CTX)  # the state a partial sync starts from
        return (dp, after, changed), {}

    text = benchmark.pedantic(lambda dp, v, c: dp.render_partial(v, CTX, c), setup=setup,
                              rounds=3, iterations=1)
    assert text


@pytest.mark.parametrize("services", SCALES)
@pytest.mark.parametrize("variant", RENDERED)
def test_full_render_after_partial(benchmark, variant: str, services: int) -> None:
    """A full sync right after a partial one: no port changed since, but the last full
    rendering is gone (ebpf-tc takes the whole rendering its partial syncs kept)."""
    before = views(services)
    after, changed = _changed(services)

    def setup():  # type: ignore[no-untyped-def]
        dp = make_variant(variant)
        dp.render(before, CTX)
        dp.render_partial(after, CTX, changed)
        return (dp, after), {}

    text = benchmark.pedantic(lambda dp, v: dp.render(v, CTX), setup=setup, rounds=3,
                              iterations=1)
    assert text
