"""The userspace datapath's partial sync: only the changed Services' ports are rendered,
and the delta takes the proxy's table and the portal rules to a full sync's state."""

from __future__ import annotations

import pytest

from bench.datapaths import userspace as U
from bench.datapaths.base import NodeContext
from bench.measure.sync_runner import State, _make_change
from bench.model.generate import GenSpec, generate
from bench.model.objects import service_port_views

CTX = NodeContext("node-0", ("192.168.0.2",), "10.0.0.0/8")
CHANGES = ["add-service", "remove-service", "add-endpoint", "remove-endpoint",
           "endpoint-not-ready"]


def _rules(text: str) -> list[str]:
    return sorted(ln for ln in text.splitlines() if ln.startswith("-A "))


def _table(text: str) -> dict[tuple[str, str], dict[str, object]]:
    return {(s["name"], s["protocol"]): s for s in U.parse_proxy_table(text)}


@pytest.mark.parametrize("kind", CHANGES)
def test_a_partial_render_is_the_changed_ports_only_and_reaches_a_full_sync(
        kind: str) -> None:
    services, slices = generate(GenSpec(services=9, endpoints=3, type="NodePort"))
    spare = services[-1]
    base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                 [s for s in slices if s.service_name == spare.name])
    c = _make_change(kind, base, base.services[4], spare)
    before = service_port_views(base.services, base.slices, "node-0")
    after = service_port_views(c.services, c.slices, "node-0")
    partial, full = U.UserspaceDatapath(), U.UserspaceDatapath()
    base_text = partial.render(before, CTX)
    assert base_text == full.render(before, CTX)
    delta = partial.render_partial(after, CTX, c.changed)
    assert partial.rendered_ports("node-0") == (0 if kind == "remove-service" else 1)
    assert U.parse_delta_header(delta) is not None
    new = full.render(after, CTX)
    # The proxy's table: the delta's lines replace or remove only the changed ports.
    table = _table(base_text)
    changed_lines = U.parse_proxy_table(delta)
    assert len(changed_lines) + len(U.removed_ports(delta)) == 1
    for name, proto in U.removed_ports(delta):
        del table[(name, proto)]
    table.update({(s["name"], s["protocol"]): s for s in changed_lines})
    assert table == _table(new) != _table(base_text)
    # The rules: -D and -A of the changed port's rules only.
    rules = _rules(base_text)
    body = [ln for ln in delta.splitlines() if ln.startswith(("-A ", "-D "))]
    # An endpoint change is the proxy's alone: the portals stay.
    assert bool(body) == kind.endswith("-service")
    assert all(f'--comment "{next(iter(c.changed))}' in ln for ln in body)
    for ln in body:
        if ln.startswith("-D "):
            rules.remove("-A " + ln[3:])
        else:
            rules.append(ln)
    assert sorted(rules) == _rules(new)
    assert partial.render(after, CTX) == new
    # One port's endpoints changing takes a shortcut (its proxy line alone); it says
    # what the general path, handed a plain list of ports, says.
    general = U.UserspaceDatapath()
    general.render(before, CTX)
    state = general._renders["node-0"]
    assert U.render_delta(list(after), CTX, general._proxy_ports, state, c.changed) == delta
    assert general.render(after, CTX) == new


def test_a_full_render_of_an_unchanged_state_renders_nothing_new() -> None:
    services, slices = generate(GenSpec(services=20, endpoints=3))
    dp = U.UserspaceDatapath()
    first = dp.render(service_port_views(services, slices, "node-0"), CTX)
    assert dp.rendered_ports("node-0") == 20
    again = dp.render(service_port_views(services, slices, "node-0"), CTX)
    assert again is first and dp.rendered_ports("node-0") == 0
