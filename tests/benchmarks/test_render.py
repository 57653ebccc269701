"""Render microbenchmarks (pytest-benchmark): what our rendering costs per datapath.

Not part of the normal test run; run with scripts/microbench.sh, which saves
pytest-benchmark JSON under results/microbench and compares with the last
saved run (--benchmark-compare).
"""

from __future__ import annotations

from functools import cache

import pytest

from bench.datapaths import VARIANTS, NodeContext, make_variant
from bench.generate import GenSpec, generate
from bench.model import ServicePortView, service_port_views

CTX = NodeContext("node-0", ("192.168.0.2",), "10.0.0.0/8", service_cidrs=("172.30.0.0/16",))
RENDERED = ["iptables-legacy", "nftables"]  # iptables-nft renders the same text as legacy


@cache
def views(services: int) -> list[ServicePortView]:
    svcs, slices = generate(GenSpec(services=services, endpoints=10))
    return service_port_views(svcs, slices, "node-0")


@pytest.mark.parametrize("services", [1000, 10000])
@pytest.mark.parametrize("variant", RENDERED)
def test_full_sync_render(benchmark, variant: str, services: int) -> None:
    assert variant in VARIANTS
    dp = make_variant(variant)
    text = benchmark.pedantic(dp.render, args=(views(services), CTX), rounds=3, iterations=1)
    assert text


@pytest.mark.parametrize("services", [1000, 10000])
@pytest.mark.parametrize("variant", RENDERED)
def test_partial_sync_render(benchmark, variant: str, services: int) -> None:
    dp = make_variant(variant)
    v = views(services)
    dp.render(v, CTX)  # the state a partial sync starts from
    text = benchmark.pedantic(dp.render_partial, args=(v, CTX, {"bench/svc-0"}), rounds=3,
                              iterations=1)
    assert text
