"""One change at scale: the states the sync runner applies, and partial renders."""

from __future__ import annotations

import pytest

from bench.datapaths import NodeContext, make_variant
from bench.generate import GenSpec, generate
from bench.model import service_port_views
from bench.sync_runner import State, _make_change

CTX = NodeContext("node-0", ("192.168.0.2",), "10.0.0.0/8", service_cidrs=("172.30.0.0/16",))


def base_state() -> tuple[State, object, object]:
    services, slices = generate(GenSpec(services=6, endpoints=3, protocol="UDP"))
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    return base, base.services[2], spare


def endpoints_of(state_slices, key):  # type: ignore[no-untyped-def]
    return [e for s in state_slices if s.service_key == key for e in s.endpoints]


def test_add_and_remove_service() -> None:
    base, measured, spare = base_state()
    add = _make_change("add-service", base, measured, spare)
    assert spare.key in {s.key for s in add.services} and add.changed == {spare.key}
    assert add.mode == "first" and len(add.watch) == 3 and add.vip == spare.cluster_ip
    rm = _make_change("remove-service", base, measured, spare)
    assert measured.key not in {s.key for s in rm.services}
    assert not endpoints_of(rm.slices, measured.key) and rm.mode == "last"


def test_endpoint_changes_touch_only_the_measured_service() -> None:
    base, measured, spare = base_state()
    before = endpoints_of(base.slices, measured.key)
    add = _make_change("add-endpoint", base, measured, spare)
    after = endpoints_of(add.slices, measured.key)
    assert len(after) == len(before) + 1 and add.watch == [after[-1].addresses[0]]
    rm = _make_change("remove-endpoint", base, measured, spare)
    assert len(endpoints_of(rm.slices, measured.key)) == len(before) - 1
    nr = _make_change("endpoint-not-ready", base, measured, spare)
    flipped = [e for e in endpoints_of(nr.slices, measured.key) if not e.ready]
    assert [e.addresses[0] for e in flipped] == nr.watch
    for c in (add, rm, nr):
        assert c.changed == {measured.key}
        others = lambda sl: [s for s in sl if s.service_key != measured.key]  # noqa: E731
        assert others(c.slices) == others(base.slices)


@pytest.mark.parametrize("variant", ["iptables-legacy", "nftables"])
def test_partial_render_rewrites_only_the_changed_service(variant: str) -> None:
    base, measured, spare = base_state()
    dp = make_variant(variant)
    dp.render(service_port_views(base.services, base.slices, "node-0"), CTX)
    c = _make_change("remove-endpoint", base, measured, spare)
    text = dp.render_partial(service_port_views(c.services, c.slices, "node-0"), CTX, c.changed)
    # Per-service chains written: iptables declares :KUBE-SVC-/:KUBE-SEP- chains (named by
    # hash), nftables adds chains named after ns/name.
    if variant == "nftables":
        written = [ln for ln in text.splitlines()
                   if ln.startswith(("add chain ip kube-proxy service-",
                                     "add chain ip kube-proxy endpoint-")) and "/" in ln]
        assert written and all(f"{measured.namespace}/{measured.name}/" in ln for ln in written)
    else:
        written = [ln for ln in text.splitlines() if ln.startswith((":KUBE-SVC", ":KUBE-SEP"))]
        # One KUBE-SVC chain and one KUBE-SEP per remaining endpoint: the measured service's.
        assert len(written) == 1 + len(endpoints_of(c.slices, measured.key)), written
    full = dp.render(service_port_views(c.services, c.slices, "node-0"), CTX)
    assert len(text) < len(full) / 2
