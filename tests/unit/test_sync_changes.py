"""One change at scale: the states the sync runner applies, and partial renders."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import pytest

from bench.datapaths import NodeContext, make_variant
from bench.datapaths.iptables import SERVICE_CHAIN_PREFIXES
from bench.measure.sync_runner import State, _make_change
from bench.model.generate import GenSpec, generate
from bench.model.objects import ServicePortView, service_port_views

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


@functools.cache
def scaled_state(n: int) -> tuple[State, object, object]:
    services, slices = generate(GenSpec(services=n + 1, endpoints=10, protocol="UDP"))
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    return base, base.services[n // 2], spare


# Lines kube-proxy's iptables proxier rewrites in full on every sync, partial or not:
# the filter table, the KUBE-SERVICES / KUBE-NODEPORTS dispatch and the fixed chains.
_IPTABLES_EVERY_SYNC = ("-A KUBE-SERVICES ", "-A KUBE-NODEPORTS ", "-A KUBE-POSTROUTING ",
                        "-A KUBE-MARK-MASQ ", ":KUBE-SERVICES ", ":KUBE-NODEPORTS ",
                        ":KUBE-POSTROUTING ", ":KUBE-MARK-MASQ ", "*", "COMMIT")


def _service_lines(variant: str, text: str) -> list[str]:
    """The lines of a partial sync beyond what kube-proxy itself rewrites every time."""
    if variant == "nftables":
        return text.splitlines()  # a partial nftables sync writes nothing else
    nat = text[text.index("*nat\n"):]
    return [ln for ln in nat.splitlines() if not ln.startswith(_IPTABLES_EVERY_SYNC)]


@pytest.mark.parametrize("variant", ["iptables-legacy", "nftables"])
def test_a_partial_render_at_10000_services_touches_only_the_changed_service(
        variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Render work and output of one change do not grow with the number of services
    (beyond kube-proxy's own full rewrite of the iptables dispatch chains)."""
    module = importlib.import_module(f"bench.datapaths.{variant.split('-')[0]}")
    real = module._render_service_port
    rendered: list[str] = []

    def counting(*args, **kw):  # type: ignore[no-untyped-def]
        view = next(a for a in args if isinstance(a, ServicePortView))
        rendered.append(view.service.key)
        return real(*args, **kw)

    lines = {}
    for n in (200, 10_000):  # both past the large-cluster threshold (1000 endpoints)
        base, measured, spare = scaled_state(n)
        dp = make_variant(variant)
        dp.render(service_port_views(base.services, base.slices, "node-0"), CTX)
        c = _make_change("add-endpoint", base, measured, spare)
        views = service_port_views(c.services, c.slices, "node-0")
        monkeypatch.setattr(module, "_render_service_port", counting)
        rendered.clear()
        text = dp.render_partial(views, CTX, c.changed)
        monkeypatch.setattr(module, "_render_service_port", real)
        assert rendered == [measured.key]  # type: ignore[attr-defined]
        own = _service_lines(variant, text)
        lines[n] = len(own)
        # 11 endpoints now: the service's chains, its rules and (nftables) its elements.
        of_measured = _of(variant, measured, [v for v in views if v.service.key == measured.key])  # type: ignore[attr-defined]
        assert own and all(of_measured(ln) for ln in own), own[:5]
    assert lines[10_000] == lines[200]


def _of(variant: str, svc: object, views: list[ServicePortView]) -> Callable[[str], bool]:
    """Whether a line belongs to ``svc``: it names the Service (nftables) or one of the
    chains a render of that Service alone writes (iptables, whose chains are hashed)."""
    if variant == "nftables":
        return lambda ln: f"/{svc.name}/" in ln or f"{svc.cluster_ip} " in ln  # type: ignore[attr-defined]
    alone = make_variant(variant).render(views, CTX)
    chains = {ln[1:].split()[0] for ln in alone.splitlines()
              if ln.startswith(":KUBE-") and ln[1:].startswith(SERVICE_CHAIN_PREFIXES)}
    return lambda ln: (ln[1:] if ln.startswith(":") else ln[3:]).split()[0] in chains
