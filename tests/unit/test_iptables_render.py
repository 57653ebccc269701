"""The iptables datapath renders what kube-proxy's iptables proxier would restore.

Golden files: ``tests/data/golden/iptables/<case>.yaml`` holds Kubernetes objects,
``<case>.expected`` our rendering of them with the flags of upstream's test proxier
(no ``--random-fully``). The inputs are those of upstream kube-proxy's tests:
``overall`` is TestOverallIPTablesRules (our rendering equals upstream's expected dump
after upstream's own order normalisation); ``no_endpoints``, ``load_balancer``,
``external_policy_local``, ``traffic_policies`` and ``terminating_local`` are
TestNoEndpointsReject, TestLoadBalancer, TestExternalTrafficPolicyLocal,
TestInternalExternalMasquerade and TestTerminatingEndpointsTrafficPolicyLocal, whose
packet-flow expectations our renderings were checked against (see the module doc of
bench.datapaths.iptables). After a deliberate change, regenerate with
``KPBENCH_UPDATE_GOLDEN=1 pytest ...`` and review the diff.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest

from bench.datapaths.base import NodeContext
from bench.datapaths.iptables import (
    IptablesDatapath,
    count_rules,
    endpoint_chain_name,
    port_proto_hash,
    port_proto_hashes,
    probability,
    with_stale_chains_deleted,
)
from bench.errors import InputError
from bench.model.k8s_input import load_objects
from bench.model.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    service_port_views,
)

GOLDEN = Path(__file__).parents[1] / "data" / "golden" / "iptables"
NODE = "test-node"
# Upstream's test conventions: node IP 192.168.0.2, pod CIDR 10.0.0.0/8, mark bit 14.
CTX = NodeContext(NODE, ("192.168.0.2",), "10.0.0.0/8")
UPSTREAM_TEST_PROXIER = IptablesDatapath(random_fully=False)
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


def _render(services: list[Service], slices: list[EndpointSlice],
            datapath: IptablesDatapath = UPSTREAM_TEST_PROXIER, ctx: NodeContext = CTX) -> str:
    return datapath.render(service_port_views(services, slices, NODE), ctx)


def _svc(name: str = "svc1", cluster_ip: str = "172.30.0.41", node_port: int | None = None,
         **kw: Any) -> Service:
    return Service("ns1", name, cluster_ip, (ServicePort("p80", 80, "TCP", node_port=node_port),),
                   **kw)


def _slice(name: str, *endpoints: Endpoint) -> EndpointSlice:
    return EndpointSlice("ns1", f"{name}-1", name, endpoints, (EndpointPort("p80", 80),))


def _rules(rendered: str, chain: str) -> list[str]:
    return [line for line in rendered.splitlines() if line.startswith(f"-A {chain} ")]


def _chain_of(rendered: str, prefix: str) -> str:
    (name,) = {m for m in re.findall(r"^:(\S+) ", rendered, re.MULTILINE) if m.startswith(prefix)}
    return name


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    objs = load_objects(GOLDEN / f"{case}.yaml")
    assert objs.warnings == []
    rendered = UPSTREAM_TEST_PROXIER.render(
        service_port_views(objs.services, objs.slices, NODE), CTX)
    expected = GOLDEN / f"{case}.expected"
    if os.environ.get("KPBENCH_UPDATE_GOLDEN"):
        expected.write_text(rendered)
    assert rendered == expected.read_text()


@pytest.mark.parametrize("case", CASES)
def test_golden_jumps_are_consistent(case: str) -> None:
    """Upstream's checkIPTablesRuleJumps: every jump and every filled chain is declared."""
    rendered = (GOLDEN / f"{case}.expected").read_text()
    builtin = {"ACCEPT", "REJECT", "DROP", "MARK", "RETURN", "DNAT", "SNAT", "MASQUERADE"}
    for table in re.findall(r"^\*\w+\n(.*?)^COMMIT$", rendered, re.MULTILINE | re.DOTALL):
        declared = set(re.findall(r"^:(\S+) ", table, re.MULTILINE))
        filled = set(re.findall(r"^-A (\S+) ", table, re.MULTILINE))
        jumped = set(re.findall(r" -j (\S+)", table)) - builtin
        assert jumped <= declared and filled <= declared
        # KUBE-SERVICES always jumps to KUBE-NODEPORTS, even when it is empty.
        assert jumped - filled <= {"KUBE-NODEPORTS"}


def test_chain_names_hash_like_kube_proxy() -> None:
    # Names taken from upstream's test dumps for the same service ports and endpoints.
    assert port_proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"
    assert port_proto_hash("ns2/svc2:p8080", "tcp") == "2VJB64SDSIJUP5T6"
    assert (endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80")
            == "KUBE-SEP-SXIVWICOYRO3J4NJ")
    assert endpoint_chain_name("ns1/svc1:p80", "tcp", "10.0.0.0:80") == "KUBE-SEP-DKGQUZGBKLTPAR56"
    # The protocol is hashed in lowercase, as kube-proxy passes it.
    assert port_proto_hash("ns1/svc1:p80", "TCP") != "XPGD46QRK7WJZT7O"
    rendered = _render([_svc()], [_slice("svc1", Endpoint(("10.180.0.1",)))])
    assert ":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]" in rendered
    assert ":KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]" in rendered


def test_chain_hashes_in_one_batch_equal_the_standard_library_ones() -> None:
    """The batch encoder (one numpy pass for every name of a render) gives, for each
    key, base32(sha256(key))[:16] as the standard library computes it: every byte
    value at every place of the 10 encoded bytes, many names at once, none at all."""
    keys = [f"ns{i}/svc{i}:p{i % 7}udp10.{i % 256}.{i // 256 % 256}.{i % 13}:{i}"
            for i in range(5000)]
    expected = [base64.b32encode(hashlib.sha256(k.encode()).digest()).decode()[:16]
                for k in keys]
    heads = [hashlib.sha256(k.encode()).digest()[:10] for k in keys]
    assert all(len({h[i] for h in heads}) == 256 for i in range(10))  # the coverage claimed
    assert port_proto_hashes(keys) == expected
    assert port_proto_hashes(keys[:1]) == expected[:1]
    assert port_proto_hashes([]) == []


def test_unnamed_port_is_hashed_without_colon() -> None:
    svc = Service("ns1", "svc1", "172.30.1.1", (ServicePort("", 80),))
    sl = EndpointSlice("ns1", "svc1-1", "svc1", (Endpoint(("10.0.1.1",)),), (EndpointPort("", 80),))
    rendered = _render([svc], [sl])
    assert f"KUBE-SVC-{port_proto_hash('ns1/svc1', 'tcp')}" in rendered
    assert '--comment "ns1/svc1 cluster IP"' in rendered


def test_probability_ladder_for_four_endpoints() -> None:
    eps = [Endpoint((f"10.180.0.{i}",)) for i in range(1, 5)]
    rendered = _render([_svc()], [_slice("svc1", *eps)])
    ladder = [r for r in _rules(rendered, "KUBE-SVC-XPGD46QRK7WJZT7O") if "KUBE-SEP-" in r]
    probabilities = [re.search(r"--probability (\S+)", r) for r in ladder]
    assert [p.group(1) if p else None for p in probabilities] == [
        "0.2500000000", "0.3333333333", "0.5000000000", None]
    # Each rule jumps to its endpoint, in ip:port order.
    assert [r.split(" -j ")[1] for r in ladder] == [
        endpoint_chain_name("ns1/svc1:p80", "tcp", f"10.180.0.{i}:80") for i in range(1, 5)]
    assert probability(100001) == "0.0000099999"


def test_session_affinity_checks_before_ladder_and_sets_in_endpoint() -> None:
    svc = _svc(session_affinity="ClientIP", affinity_timeout=600)
    rendered = _render([svc], [_slice("svc1", Endpoint(("10.180.0.1",)),
                                      Endpoint(("10.180.0.2",)))])
    sep1 = endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80")
    sep2 = endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.2:80")
    assert _rules(rendered, "KUBE-SVC-XPGD46QRK7WJZT7O")[1:] == [
        (f'-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" '
         f"-m recent --name {sep1} --rcheck --seconds 600 --reap -j {sep1}"),
        (f'-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" '
         f"-m recent --name {sep2} --rcheck --seconds 600 --reap -j {sep2}"),
        (f'-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" '
         f"-m statistic --mode random --probability 0.5000000000 -j {sep1}"),
        (f'-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" '
         f"-j {sep2}"),
    ]
    assert _rules(rendered, sep1)[1] == (
        f"-A {sep1} -m comment --comment ns1/svc1:p80 -m recent --name {sep1} --set "
        "-m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80")


def test_defaults_are_a_stock_kube_proxy() -> None:
    rendered = _render([], [], IptablesDatapath())
    assert _rules(rendered, "KUBE-POSTROUTING")[-1].endswith("-j MASQUERADE --random-fully")
    assert _rules(rendered, "KUBE-MARK-MASQ") == ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    assert _rules(rendered, "KUBE-SERVICES") == [
        ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
         'the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')]
    assert IptablesDatapath().variant == "iptables-legacy"
    assert IptablesDatapath("nft").variant == "iptables-nft"


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(InputError, match="choose one of legacy, nft"):
        IptablesDatapath("xtables")


def test_masquerade_bit_sets_the_mark() -> None:
    ctx = NodeContext(NODE, ("192.168.0.2",), "10.0.0.0/8", masquerade_bit=3)
    rendered = _render([], [], ctx=ctx)
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x8" in rendered
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x8/0x8 -j RETURN" in rendered


def test_masquerade_all_masquerades_every_cluster_ip_packet() -> None:
    rendered = _render([_svc()], [_slice("svc1", Endpoint(("10.180.0.1",)))],
                       IptablesDatapath(masquerade_all=True))
    assert _rules(rendered, "KUBE-SVC-XPGD46QRK7WJZT7O")[0] == (
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" '
        "-m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ")


def test_internal_policy_local_without_local_endpoints_drops() -> None:
    svc = _svc(internal_traffic_policy="Local")
    rendered = _render([svc], [_slice("svc1", Endpoint(("10.180.0.1",), "other-node"))])
    assert _rules(rendered, "KUBE-SERVICES")[0] == (
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" '
        "-m tcp -p tcp -d 172.30.0.41 --dport 80 -j DROP")
    assert "KUBE-SVC-" not in rendered and "KUBE-SVL-" not in rendered


def test_nodeport_addresses_list_node_ips_instead_of_addrtype() -> None:
    ctx = NodeContext(NODE, ("192.168.0.2", "10.9.0.2"), "10.0.0.0/8",
                      nodeport_addresses=("192.168.0.0/24",))
    rendered = _render([_svc(node_port=30080, type="NodePort")],
                       [_slice("svc1", Endpoint(("10.180.0.1",)))], ctx=ctx)
    assert _rules(rendered, "KUBE-SERVICES")[-1] == (
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be '
        'the last rule in this chain" -d 192.168.0.2 -j KUBE-NODEPORTS')
    # 127.0.0.1 is outside --nodeport-addresses: no localhost NodePorts, so no
    # localnet-blocking rule and no localhost accounting rule.
    assert "KUBE-FIREWALL" not in rendered
    assert "127.0.0.0/8" not in rendered


def test_large_cluster_mode_drops_endpoint_comments() -> None:
    eps = [Endpoint((f"10.1.{i // 250}.{i % 250 + 1}",)) for i in range(1001)]
    rendered = _render([_svc()], [_slice("svc1", *eps)])
    sep = endpoint_chain_name("ns1/svc1:p80", "tcp", "10.1.0.1:80")
    assert _rules(rendered, sep) == [
        f"-A {sep} -s 10.1.0.1 -j KUBE-MARK-MASQ",
        f"-A {sep} -m tcp -p tcp -j DNAT --to-destination 10.1.0.1:80"]
    masq, *ladder = _rules(rendered, "KUBE-SVC-XPGD46QRK7WJZT7O")
    assert len(ladder) == 1001 and not any("--comment" in r for r in ladder)
    assert ladder[0].startswith(
        "-A KUBE-SVC-XPGD46QRK7WJZT7O -m statistic --mode random "
        f"--probability {probability(1001)}")
    # Service-level comments stay.
    assert '--comment "ns1/svc1:p80 cluster IP"' in masq


def test_partial_sync_rewrites_only_changed_services() -> None:
    svc2 = _svc("svc2", cluster_ip="172.30.0.42")
    slices = [_slice("svc1", Endpoint(("10.180.0.1",))), _slice("svc2", Endpoint(("10.180.0.2",)))]
    views = service_port_views([_svc(), svc2], slices, NODE)
    dp = IptablesDatapath()
    partial = dp.render_partial(views, CTX, {"ns1/svc2"})
    # Both services keep their KUBE-SERVICES rules; only svc2's own chains are written.
    assert len(_rules(partial, "KUBE-SERVICES")) == 3
    svc1_chain = "KUBE-SVC-" + port_proto_hash("ns1/svc1:p80", "tcp")
    svc2_chain = "KUBE-SVC-" + port_proto_hash("ns1/svc2:p80", "tcp")
    assert f":{svc1_chain} " not in partial and f":{svc2_chain} " in partial
    full = dp.render(views, CTX)
    assert f":{svc1_chain} " in full and f":{svc2_chain} " in full
    assert count_rules(full)["nat_rules"] == count_rules(partial)["nat_rules"] + 4


def test_stale_chains_are_flushed_and_deleted() -> None:
    dp = IptablesDatapath()
    views = service_port_views([_svc()], [_slice("svc1", Endpoint(("10.180.0.2",)))], NODE)
    rendered = dp.render_partial(views, CTX, set())
    old_sep = endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.1:80")
    new_sep = endpoint_chain_name("ns1/svc1:p80", "tcp", "10.180.0.2:80")
    saved = ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n"
             f":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n:{old_sep} - [0:0]\n:{new_sep} - [0:0]\n"
             ":KUBE-SVC-UNRELATED - [0:0]\nCOMMIT\n")
    active = {"KUBE-SVC-XPGD46QRK7WJZT7O", new_sep, "KUBE-SVC-UNRELATED"}
    out = with_stale_chains_deleted(rendered, saved, active)
    nat = out.split("*nat\n")[1].splitlines()
    # Only the unused endpoint chain goes: declared (flushed) then deleted before COMMIT.
    assert [line for line in nat if old_sep in line] == [f":{old_sep} - [0:0]", f"-X {old_sep}"]
    assert nat[-2:] == [f"-X {old_sep}", "COMMIT"]
    assert "-X KUBE-SVC" not in out and count_rules(out)["nat_deleted"] == 1
    # Nothing stale: the text is unchanged.
    assert with_stale_chains_deleted(rendered, "*nat\nCOMMIT\n", active) == rendered


def test_count_rules_of_overall() -> None:
    rendered = (GOLDEN / "overall.expected").read_text()
    assert count_rules(rendered) == {
        "filter_chains": 6, "filter_rules": 10, "filter_deleted": 0,
        "nat_chains": 20, "nat_rules": 55, "nat_deleted": 0}


def test_a_tool_error_is_its_real_message_not_a_notice_before_it() -> None:
    from bench.datapaths.base import first_error_line

    out = ("Ignoring deprecated --wait-interval option.\n"
           "Another app is currently holding the xtables lock. Stopped waiting after 5s.\n")
    assert first_error_line(out).startswith("Another app is currently holding")
    assert first_error_line("Ignoring deprecated --wait-interval option.\n") == \
        "Ignoring deprecated --wait-interval option."
    assert first_error_line("") == ""
