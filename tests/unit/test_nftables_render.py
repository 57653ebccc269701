"""The nftables datapath renders what kube-proxy's nftables proxier would send.

Golden files: ``tests/data/golden/nftables/<case>.yaml`` holds Kubernetes objects,
``<case>.expected`` our rendering of them. ``overall.yaml`` is the input of upstream
kube-proxy's TestOverallNFTablesRules; the state its rendering leaves was checked to
equal upstream's expected dump (see the module doc of bench.datapaths.nftables).
After a deliberate change, regenerate with ``KPBENCH_UPDATE_GOLDEN=1 pytest ...`` and
review the diff.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.datapaths import nftables
from bench.datapaths.base import NodeContext
from bench.datapaths.nftables import (
    NftablesDatapath,
    count_objects,
    endpoint_chain_base,
    service_port_chain_base,
)
from bench.model.k8s_input import load_objects
from bench.model.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    service_port_views,
)

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "nftables"
NODE = "test-node"
# Upstream's test conventions: node IP 192.168.0.2, pod CIDR 10.0.0.0/8,
# service CIDR 172.30.0.0/16, --nodeport-addresses 192.168.0.2/32, mark bit 14.
CTX = NodeContext(NODE, ("192.168.0.2",), "10.0.0.0/8", nodeport_addresses=("192.168.0.2/32",),
                  service_cidrs=("172.30.0.0/16",))
DATAPATH = NftablesDatapath()


def _render(
    services: list[Service], slices: list[EndpointSlice], ctx: NodeContext = CTX
) -> list[str]:
    return DATAPATH.render(service_port_views(services, slices, NODE), ctx).splitlines()


def _svc(
    name: str, cluster_ip: str = "172.30.0.41", node_port: int | None = None, **kw: Any
) -> Service:
    port = ServicePort("p80", 80, "TCP", node_port=node_port)
    return Service("ns1", name, cluster_ip, (port,), **kw)


def _slice(name: str, *endpoints: Endpoint) -> EndpointSlice:
    return EndpointSlice("ns1", f"{name}-1", name, endpoints, (EndpointPort("p80", 80),))


def _chain(name: str, ip: str | None = None) -> str:
    if ip is None:
        return service_port_chain_base("ns1", name, "tcp", "p80")
    return endpoint_chain_base("ns1", name, "tcp", "p80", ip, 80)


def _rules(lines: list[str], chain: str) -> list[str]:
    prefix = f"add rule ip kube-proxy {chain} "
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


def _elements(lines: list[str], container: str) -> list[str]:
    prefix = f"add element ip kube-proxy {container} "
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


@pytest.mark.parametrize("case", sorted(p.stem for p in GOLDEN.glob("*.yaml")))
def test_golden(case: str) -> None:
    objs = load_objects(GOLDEN / f"{case}.yaml")
    assert objs.warnings == []
    rendered = DATAPATH.render(service_port_views(objs.services, objs.slices, NODE), CTX)
    expected = GOLDEN / f"{case}.expected"
    if os.environ.get("KPBENCH_UPDATE_GOLDEN"):
        expected.write_text(rendered)
    assert rendered == expected.read_text()


def test_chain_names_hash_like_kube_proxy() -> None:
    # base32(sha256("ns1/svc1/tcp/p80"))[:8], the name upstream's tests use for this port.
    assert service_port_chain_base("ns1", "svc1", "TCP", "p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert (
        endpoint_chain_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80)
        == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    )
    # Unnamed port: the name ends with the empty port name.
    assert service_port_chain_base("ns", "web", "udp", "").endswith("-ns/web/udp/")
    # Colons are not allowed in chain names.
    assert "__fd00.10..1/80" in endpoint_chain_base("ns", "web", "tcp", "", "fd00:10::1", 80)


def test_long_chain_names_are_truncated_with_a_distinct_hash() -> None:
    long = "x" * 63
    a = endpoint_chain_base(long, long, "sctp", long, "1234:5678:9abc:def0::abcd:1234:5678", 443)
    b = endpoint_chain_base(long, long, "sctp", long, "1234:5678:9abc:def0::abcd:1234:8765", 443)
    assert len(a) == len(b) == 240 and a.endswith("...")
    assert a[:8] != b[:8] and a[8:] == b[8:]


def test_numgen_maps_three_endpoints_in_address_order() -> None:
    # kube-proxy orders endpoints by their "ip:port" string, so .10 comes before .2.
    eps = [Endpoint((ip,)) for ip in ("10.1.0.3", "10.1.0.10", "10.1.0.2")]
    lines = _render([_svc("web")], [_slice("web", *eps)])
    targets = [f"endpoint-{_chain('web', ip)}" for ip in ("10.1.0.10", "10.1.0.2", "10.1.0.3")]
    assert _rules(lines, f"service-{_chain('web')}") == [
        "ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
        (
            f"numgen random mod 3 vmap {{ 0 : goto {targets[0]} , 1 : goto {targets[1]} , "
            f"2 : goto {targets[2]} }}"
        ),
    ]
    assert _rules(lines, targets[1]) == [
        "ip saddr 10.1.0.2 jump mark-for-masquerade",
        "meta l4proto tcp dnat to 10.1.0.2:80",
    ]


def test_client_ip_affinity_sets() -> None:
    svc = _svc("sticky", session_affinity="ClientIP", affinity_timeout=600)
    lines = _render([svc], [_slice("sticky", Endpoint(("10.1.0.1",)), Endpoint(("10.1.0.2",)))])
    ep1 = _chain("sticky", "10.1.0.1")
    assert (
        f"add set ip kube-proxy affinity-{ep1} "
        "{ type ipv4_addr ; flags dynamic,timeout ; timeout 600s ; }"
    ) in lines
    # Sticky clients are matched before the random choice...
    rules = _rules(lines, f"service-{_chain('sticky')}")
    assert rules[1] == f"ip saddr @affinity-{ep1} goto endpoint-{ep1}"
    assert rules[3].startswith("numgen random mod 2 vmap")
    # ...and the endpoint chain records the client before DNAT.
    assert _rules(lines, f"endpoint-{ep1}") == [
        "ip saddr 10.1.0.1 jump mark-for-masquerade",
        f"update @affinity-{ep1} {{ ip saddr }}",
        "meta l4proto tcp dnat to 10.1.0.1:80",
    ]
    # Affinity sets are never flushed: a resync keeps clients where they are.
    assert not any(line.startswith("flush set ip kube-proxy affinity-") for line in lines)


def test_internal_traffic_policy_local() -> None:
    local, remote = Endpoint(("10.1.0.1",), NODE), Endpoint(("10.2.0.1",), "node-2")
    lines = _render([_svc("itp", internal_traffic_policy="Local")], [_slice("itp", local, remote)])
    base = _chain("itp")
    assert _elements(lines, "service-ips") == [f"{{ 172.30.0.41 . tcp . 80 : goto local-{base} }}"]
    assert f"add chain ip kube-proxy service-{base}" not in lines
    assert _rules(lines, f"local-{base}")[1] == (
        f"numgen random mod 1 vmap {{ 0 : goto endpoint-{_chain('itp', '10.1.0.1')} }}"
    )

    # No local endpoint: ClusterIP traffic is dropped, not rejected.
    lines = _render([_svc("itp", internal_traffic_policy="Local")], [_slice("itp", remote)])
    assert _elements(lines, "no-endpoint-services") == [
        '{ 172.30.0.41 . tcp . 80 comment "ns1/itp:p80" : drop }'
    ]
    assert _elements(lines, "service-ips") == []


def test_external_traffic_policy_local_with_a_local_endpoint() -> None:
    svc = _svc("etp", type="NodePort", node_port=30080, external_traffic_policy="Local")
    local, remote = Endpoint(("10.1.0.1",), NODE), Endpoint(("10.2.0.1",), "node-2")
    lines = _render([svc], [_slice("etp", local, remote)])
    base = _chain("etp")
    assert _rules(lines, f"external-{base}") == [
        f'ip saddr 10.0.0.0/8 goto service-{base} comment "short-circuit pod traffic"',
        'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
        f'fib saddr type local goto service-{base} comment "short-circuit local traffic"',
        f"goto local-{base}",
    ]
    # Only the local endpoint behind local-, both behind service- (pods and the node).
    assert "mod 1" in _rules(lines, f"local-{base}")[0]
    assert "mod 2" in _rules(lines, f"service-{base}")[1]
    assert _elements(lines, "service-nodeports") == [f"{{ tcp . 30080 : goto external-{base} }}"]
    assert _elements(lines, "no-endpoint-nodeports") == []


def test_terminating_endpoints_are_used_only_when_none_is_ready() -> None:
    terminating = Endpoint(("10.1.0.1",), ready=False, serving=True, terminating=True)
    gone = Endpoint(("10.1.0.2",), ready=False, serving=False, terminating=True)
    lines = _render([_svc("term")], [_slice("term", terminating, gone)])
    assert _rules(lines, f"service-{_chain('term')}")[1] == (
        f"numgen random mod 1 vmap {{ 0 : goto endpoint-{_chain('term', '10.1.0.1')} }}"
    )

    ready = Endpoint(("10.1.0.3",))
    lines = _render([_svc("term")], [_slice("term", terminating, ready)])
    assert f"add chain ip kube-proxy endpoint-{_chain('term', '10.1.0.1')}" not in lines


def test_load_balancer_without_endpoints_rejects_every_address() -> None:
    svc = _svc(
        "lb",
        type="LoadBalancer",
        node_port=30080,
        external_ips=("192.168.99.11",),
        load_balancer_ips=("1.2.3.4",),
    )
    lines = _render([svc], [])
    verdict = 'comment "ns1/lb:p80" : goto reject-chain }'
    assert _elements(lines, "no-endpoint-services") == [
        f"{{ 172.30.0.41 . tcp . 80 {verdict}",
        f"{{ 192.168.99.11 . tcp . 80 {verdict}",
        f"{{ 1.2.3.4 . tcp . 80 {verdict}",
    ]
    assert _elements(lines, "no-endpoint-nodeports") == [f"{{ tcp . 30080 {verdict}"]
    assert _elements(lines, "service-ips") == []
    assert not any("-ns1/lb/" in line for line in lines if line.startswith("add chain"))


def test_source_ranges_that_hold_the_node_also_allow_the_lb_ip() -> None:
    svc = _svc(
        "fw",
        type="LoadBalancer",
        node_port=30080,
        load_balancer_ips=("1.2.3.4",),
        load_balancer_source_ranges=("192.168.0.0/24", " 203.0.113.0/25"),
    )
    lines = _render([svc], [_slice("fw", Endpoint(("10.1.0.1",)))])
    assert _rules(lines, f"firewall-{_chain('fw')}") == [
        "ip saddr != { 192.168.0.0/24 , 203.0.113.0/25 , 1.2.3.4 } drop"
    ]
    assert _elements(lines, "firewall-ips") == [
        f"{{ 1.2.3.4 . tcp . 80 : goto firewall-{_chain('fw')} }}"
    ]


def test_nodeport_addresses() -> None:
    # nftables mode defaults to the node's primary IP, not every local address.
    default = NodeContext(NODE, ("192.168.0.2", "192.168.1.2"), "10.0.0.0/8")
    lines = _render([], [], default)
    assert _elements(lines, "nodeport-ips") == ["{ 192.168.0.2 }"]
    assert (
        "add rule ip kube-proxy services ip daddr @nodeport-ips "
        "meta l4proto . th dport vmap @service-nodeports"
    ) in lines

    every = NodeContext(NODE, ("192.168.0.2",), "10.0.0.0/8", nodeport_addresses=("0.0.0.0/0",))
    lines = _render([], [], every)
    assert "delete set ip kube-proxy nodeport-ips" in lines
    assert (
        "add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 "
        "meta l4proto . th dport vmap @service-nodeports"
    ) in lines
    assert (
        "add rule ip kube-proxy nodeport-endpoints-check ip daddr != 127.0.0.0/8 "
        "meta l4proto . th dport vmap @no-endpoint-nodeports"
    ) in lines


def test_skeleton_is_idempotent_and_written_like_kube_proxy() -> None:
    no_cidrs = NodeContext(NODE, ("192.168.0.2",), "10.0.0.0/8",
                           nodeport_addresses=("192.168.0.2/32",))
    lines = NftablesDatapath().render([], no_cidrs).splitlines()
    assert lines[0] == 'add table ip kube-proxy { comment "rules for kube-proxy" ; }'
    # Base chains are recreated once, then added with numeric priorities and flushed.
    assert lines[1:3] == [
        "add chain ip kube-proxy filter-prerouting-pre-dnat",
        "delete chain ip kube-proxy filter-prerouting-pre-dnat",
    ]
    assert (
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }"
    ) in lines
    # Go's "%#08x" of 1<<14.
    assert "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x00004000" in lines
    # Without service CIDRs there is nothing to drop unallocated ClusterIPs against.
    assert not any("Drop traffic to unallocated ClusterIPs" in line for line in lines)
    for name in ("service-ips", "service-nodeports", "no-endpoint-services", "firewall-ips"):
        assert f"flush map ip kube-proxy {name}" in lines


def test_count_objects_of_the_overall_golden() -> None:
    rendered = (GOLDEN / "overall.expected").read_text()
    assert count_objects(rendered) == {
        "chains": 32,
        "rules": 57,
        "sets": 3,
        "maps": 5,
        "elements": 24,
    }


def test_apply_and_cleanup_are_one_nft_transaction_each(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], str | None]] = []
    monkeypatch.setattr(
        nftables,
        "run_in_netns",
        lambda netns, argv, stdin=None, **kw: calls.append((netns, list(argv), stdin)),
    )
    dp = NftablesDatapath()
    dp.apply("add table ip kube-proxy\n", "kpb-node-1")
    dp.cleanup("kpb-node-1")
    assert calls == [
        ("kpb-node-1", ["nft", "-f", "-"], "add table ip kube-proxy\n"),
        ("kpb-node-1", ["nft", "-f", "-"], "add table ip kube-proxy\ndelete table ip kube-proxy\n"),
    ]


# --- nftables-chunked: a full sync in transactions of CHUNK_OPS operations ----------------

def _many(n: int, endpoints: int = 3, affinity: bool = False) -> tuple[list[Service],
                                                                      list[EndpointSlice]]:
    kw: dict[str, Any] = {"session_affinity": "ClientIP"} if affinity else {}
    services = [_svc(f"s{i}", f"172.30.{i // 250}.{i % 250 + 1}", **kw) for i in range(n)]
    slices = [_slice(f"s{i}", *(Endpoint((f"10.{i // 250}.{i % 250}.{e + 1}",), node_name=NODE)
                                for e in range(endpoints))) for i in range(n)]
    return services, slices


def _views(services: list[Service], slices: list[EndpointSlice]) -> list[Any]:
    return service_port_views(services, slices, NODE)


def _kinds(line: str) -> tuple[str, str, str]:
    verb, kind, _, _, name = line.split(" ", 5)[:5]
    return verb, kind, name


def test_chunked_variant_is_the_nftables_family_with_its_own_name() -> None:
    from bench.datapaths import family, make_variant

    dp = make_variant("nftables-chunked")
    assert isinstance(dp, NftablesDatapath) and dp.chunk == nftables.CHUNK_OPS == 1000
    assert dp.variant == "nftables-chunked" and family("nftables-chunked") == "nftables"
    assert make_variant("nftables").chunk == 0 and make_variant("nftables").variant == "nftables"


def test_chunked_cold_start_is_the_same_operations_in_the_proposal_s_order() -> None:
    services, slices = _many(200, affinity=True)
    one = NftablesDatapath().render(_views(services, slices), CTX)
    text = NftablesDatapath(chunk=1000).render(_views(services, slices), CTX)
    txs = nftables.split_transactions(text)
    lines = [ln for tx in txs for ln in tx.splitlines()]
    # The same operations as one transaction (nothing lost, nothing added).
    assert sorted(lines) == sorted(one.splitlines()) and len(txs) > 3
    # The skeleton first, alone; then at most 1000 operations per transaction.
    assert txs[0].startswith("add table ip kube-proxy") and "ns1/" not in txs[0]
    assert all(len(tx.splitlines()) <= 1000 for tx in txs[1:])
    # Endpoint chains and affinity sets, then service chains, then rules, then elements.
    rank = {("add", "chain", True): 0, ("add", "set", True): 0, ("add", "chain", False): 1,
            ("flush", "chain", True): 2, ("add", "rule", True): 2,
            ("flush", "chain", False): 3, ("add", "rule", False): 3, ("add", "element", False): 4}
    after = [ln for tx in txs[1:] for ln in tx.splitlines()]
    ranks = [rank[(v, k, n.startswith(("endpoint-", "affinity-")))]
             for v, k, n in map(_kinds, after)]
    assert ranks == sorted(ranks) and set(ranks) == {0, 1, 2, 3, 4}
    # The text is also one valid transaction (the separators are nft comments).
    assert nftables.count_objects(text) == nftables.count_objects(one)


def test_a_chunked_resync_keeps_each_chain_whole_and_writes_element_differences() -> None:
    services, slices = _many(200)
    dp = NftablesDatapath(chunk=1000)
    dp.render(_views(services, slices), CTX)  # the cold start
    # Same state: no per-service set or map is flushed, no element written.
    txs = nftables.split_transactions(dp.render(_views(services, slices), CTX))
    text = "".join(txs)
    assert not any(f"flush {k} ip kube-proxy {c}" in text
                   for k in ("set", "map") for c in nftables.PORT_CONTAINERS)
    assert [ln for ln in text.splitlines() if " element " in ln] == [
        "add element ip kube-proxy nodeport-ips { 192.168.0.2 }"]  # the skeleton's own
    # A chain's flush and its rules are in one transaction: never empty between two.
    for tx in txs:
        flushed = {n for v, k, n in map(_kinds, tx.splitlines()) if (v, k) == ("flush", "chain")}
        ruled = {n for v, k, n in map(_kinds, tx.splitlines()) if (v, k) == ("add", "rule")}
        assert ruled <= flushed
    # Another state: a service gone, one with a new endpoint (a new value), one new.
    gone, grown = services[0], services[1]
    new_svc, new_slices = _many(201)
    services2 = [*services[1:], new_svc[-1]]
    slices2 = [*slices[2:], new_slices[-1],
               replace(slices[1], endpoints=(*slices[1].endpoints,
                                             Endpoint(("10.9.9.9",), node_name=NODE)))]
    lines = dp.render(_views(services2, slices2), CTX).splitlines()
    elements = [ln for ln in lines if " element " in ln and "nodeport-ips" not in ln]
    assert set(elements[-2:]) == {  # unused elements deleted, last
        f"delete element ip kube-proxy cluster-ips {{ {gone.cluster_ip} }}",
        f"delete element ip kube-proxy service-ips {{ {gone.cluster_ip} . tcp . 80 }}"}
    assert sum(ln.startswith("delete element") for ln in elements) == 2
    assert f"add element ip kube-proxy cluster-ips {{ {new_svc[-1].cluster_ip} }}" in elements
    # The grown service keeps its element (same chain): only its chain's rules change.
    assert not any(grown.cluster_ip + " " in ln for ln in elements)
    assert any(ln.startswith("add rule") and "10.9.9.9" in ln for ln in lines)


def test_forget_makes_the_next_chunked_render_a_cold_start() -> None:
    services, slices = _many(50)
    dp = NftablesDatapath(chunk=1000)
    cold = dp.render(_views(services, slices), CTX)
    assert "flush map ip kube-proxy service-ips" in cold
    assert "flush map ip kube-proxy service-ips" not in dp.render(_views(services, slices), CTX)
    dp.forget(NODE)
    assert dp.render(_views(services, slices), CTX) == cold


def test_a_chunked_apply_is_one_nft_per_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str | None] = []
    monkeypatch.setattr(nftables, "run_in_netns",
                        lambda netns, argv, stdin=None, **kw: calls.append(stdin))
    services, slices = _many(200)
    dp = NftablesDatapath(chunk=1000)
    text = dp.render(_views(services, slices), CTX)
    dp.apply(text, "kpb-node-0")
    assert calls == nftables.split_transactions(text) and len(calls) > 3
    assert len(dp.transaction_seconds()) == len(calls)
    assert nftables.split_transactions("add table ip kube-proxy\n") == [
        "add table ip kube-proxy\n"]


def test_list_state_reads_the_table_twice_on_every_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """List("chains") and List("sets"), each knftables' read of the whole table."""
    calls: list[list[str]] = []
    monkeypatch.setattr(nftables, "run_in_netns",
                        lambda netns, argv, stdin=None, **kw: calls.append(list(argv)))
    dp = NftablesDatapath()
    for full in (True, False):
        calls.clear()
        assert dp.list_state("kpb-node-0", full=full) is True
        assert calls == [["nft", "--json", "list", "table", "ip", "kube-proxy"]] * 2
