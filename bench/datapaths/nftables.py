"""kube-proxy's nftables mode: the ``nft -f`` transaction of a full sync.

:meth:`NftablesDatapath.render` returns, line for line, the transaction that
kube-proxy's nftables proxier (``pkg/proxy/nftables/proxier.go``) hands to
``nft -f -`` on its first full sync after start-up, in knftables' syntax
(``add table`` / ``add chain`` / ``flush chain`` / ``add rule`` /
``add element`` ...): one ``table ip kube-proxy``, dispatch through the
``service-ips`` / ``service-nodeports`` verdict maps, per-service-port chains
``service-``, ``local-``, ``external-``, ``firewall-<H8>-ns/name/proto/port``,
per-endpoint chains ``endpoint-<H8>-ns/name/proto/port__ip/port``,
``numgen random mod N vmap`` load balancing and per-endpoint affinity sets.
:meth:`~NftablesDatapath.apply` runs it as one ``nft -f -`` inside a namespace.

Verified against upstream kubernetes/kubernetes: ``pkg/proxy/nftables/
proxier_test.go`` at commit 81810de635aa, with the rule logic read in
``proxier.go`` at b0f823e6ccd8 (that test is newer: its base chains are
``filter-prerouting-pre-dnat`` / ``filter-output-pre-dnat`` at priority -110
and ``filter-input|forward|output`` at 0, and its ClusterIP masquerade rule
has no ``<proto> dport``; both follow the test here). For the inputs of
TestOverallNFTablesRules, TestSyncProxyRulesRepeated (two of its states),
TestSyncProxyRulesStartup (final state) and TestBadIPs, the table this
transaction leaves equals upstream's expected dump, compared as the test's
``sortNFTablesTransaction`` does; the chain names of
Test_servicePortChainNameBase and Test_servicePortEndpointChainNameBase
(hashing, IPv6, truncation) match too. Known differences, all deliberate:

- The masquerade mark is printed as kube-proxy prints it (``%#08x``:
  ``0x00004000``); upstream's fake proxier sets ``0x4000``. Same value.
- Services come in input order; kube-proxy iterates a Go map, so its order
  of chains and elements varies from sync to sync (nftables ignores it).
- No ``masqueradeAll``, topology hints, LoadBalancer ``ipMode: Proxy`` or
  IPv6: :mod:`bench.model.objects` does not carry them (defaults are rendered).

Idempotence, as upstream does it: every object is ``add``-ed (a no-op when
it exists), then the chains, sets and maps whose content a full sync owns are
``flush``-ed and refilled, and the base chains are added and deleted once
first, so a table from another kube-proxy version (other priorities) is
replaced instead of failing the transaction. Affinity sets are only added,
never flushed, so client stickiness survives a resync. Chains of services
that disappeared are not removed: kube-proxy lists the table, flushes them and
deletes them a second later in a separate transaction, which needs state a
stateless render does not have; they are unreferenced and cost nothing.

A partial sync (:meth:`NftablesDatapath.render_partial`) is kube-proxy's
(the version with ``nftElementStorage``): no skeleton, the chains of the
changed Services only, and set and map elements written only where they
differ from what the node holds (a changed value is deleted and added, an
unused element deleted); stale chains are flushed and deleted one sync
later. Its size does not grow with the number of unchanged Services.

The variant ``nftables-chunked`` writes full syncs as several transactions of
at most :data:`CHUNK_OPS` operations (:func:`render_chunked_sync`, in the
order of upstream's chunking proposal); a chunked resync writes the element
differences instead of flushing the sets and maps, so nothing live is emptied
between two transactions. :meth:`NftablesDatapath.list_state` is the read-back
of the table kube-proxy does on its syncs, which the sync runner times apart.

Why one module of this size: the transaction mirrors upstream's
``pkg/proxy/nftables/proxier.go`` line for line, in its order, so that the
golden tests and a reader can hold one against the other.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from bench.datapaths.base import Datapath, NodeContext, run_in_netns
from bench.datapaths.iptables import b32_prefix
from bench.datapaths.kube_proxy import go_mark
from bench.model.objects import ServiceEndpoint, ServicePortView, sorted_endpoints

TABLE = "kube-proxy"
_T = f"ip {TABLE}"  # family + table, as every knftables command spells it

# (name, type, hook, priority): kube-proxy writes numeric priorities, because older
# nft refuses some named ones (e.g. "dstnat" on the output hook).
_BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-input", "filter", "input", 0),
    ("filter-forward", "filter", "forward", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)

# (regular chain, base chain jumping to it, match): the order of rules within each base chain
# is the order here.
_JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting-pre-dnat", "ct state new"),
    ("firewall-check", "filter-output-pre-dnat", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output", "ct state new"),
)

# Operations per transaction of the "nftables-chunked" variant, as upstream's chunking
# proposal (kubernetes PR #139546).
CHUNK_OPS = 1000
# The comment line that separates two transactions of a chunked sync.
CHUNK_MARK = "# kpbench: transaction"
# The sets and maps whose elements come from the service ports (the skeleton flushes them
# for a full sync; a chunked resync writes their differences instead).
PORT_CONTAINERS = ("cluster-ips", "service-ips", "firewall-ips", "no-endpoint-services",
                   "no-endpoint-nodeports", "service-nodeports")

_VERDICT_KEY = "ipv4_addr . inet_proto . inet_service : verdict"
_PORT_KEY = "inet_proto . inet_service : verdict"
MARK_MASQ = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"

# knftables.NameLengthMax (256) minus the longest chain-name prefix kube-proxy uses (16).
_CHAIN_NAME_BASE_MAX = 256 - 16


def _hash_and_truncate(name: str) -> str:
    # The hash keeps names unique when truncated and tells near-identical names apart.
    digest = b32_prefix(hashlib.sha256(name.encode()).digest(), 8)
    name = f"{digest}-{name}"
    if len(name) > _CHAIN_NAME_BASE_MAX:
        name = name[: _CHAIN_NAME_BASE_MAX - 3] + "..."
    return name


def service_port_chain_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """``<H8>-ns/name/proto/port``, the suffix of a service port's chains.

    ``<H8>`` is the first 8 characters of base32(sha256("ns/name/proto/port")),
    protocol in lower case, port the port's *name* (empty for an unnamed port).
    """
    return _hash_and_truncate(f"{namespace}/{name}/{protocol.lower()}/{port_name}")


def endpoint_chain_base(
    namespace: str, name: str, protocol: str, port_name: str, ip: str, port: int
) -> str:
    """``<H8>-ns/name/proto/port__ip/port``, the suffix of an endpoint's chain and set."""
    # Colons are not allowed in chain names (IPv6 endpoints).
    ip = ip.replace(":", ".")
    return _hash_and_truncate(f"{namespace}/{name}/{protocol.lower()}/{port_name}__{ip}/{port}")


@functools.lru_cache(maxsize=1 << 18)
def _ip(addr: str) -> str:
    """Canonical IPv4 text; like Go's ParseIPSloppy, leading zeros are decimal."""
    addr = addr.strip()
    try:
        return str(ipaddress.IPv4Address(addr))
    except ValueError:
        return ".".join(str(int(part)) for part in addr.split("."))


def _cidr(cidr: str) -> str:
    """Canonical network text (host bits cleared), as kube-proxy prints a parsed CIDR."""
    addr, _, plen = cidr.strip().partition("/")
    return str(ipaddress.IPv4Network(f"{_ip(addr)}/{int(plen or 32)}", strict=False))


Element = tuple[str, str, str, str]  # set or map, key, value ("" in a set), comment


def _element_line(verb: str, name: str, key: str, value: str | None = None,
                  comment: str | None = None) -> str:
    line = f"{verb} element {_T} {name} {{ {key}"
    if comment:
        line += f' comment "{comment}"'
    if value:
        line += f" : {value}"
    return line + " }"


class _ElementStore:
    """The elements a node's sets and maps hold, as kube-proxy's ``nftElementStorage``.

    A full sync flushes every set and map and adds all elements; a partial sync
    adds an element only when it is new, deletes and re-adds it when its value
    changed, and deletes elements no service uses any more. Elements are also
    kept per service port (by name) so that a partial sync only computes the
    elements of the Services that changed; a key two ports share (the ClusterIP
    of a multi-port Service in ``cluster-ips``) stays while any port uses it.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}
        self.owners: dict[tuple[str, str], set[str]] = {}
        self.by_port: dict[str, list[Element]] = {}
        self.ports_of: dict[str, set[str]] = {}  # Service key -> its port names

    def reset(self, by_port: dict[str, list[Element]], ports_of: dict[str, set[str]]) -> None:
        """After a full sync: exactly ``by_port``'s elements are in the kernel."""
        self.values, self.owners, self.by_port, self.ports_of = {}, {}, by_port, ports_of
        for name, elements in by_port.items():
            for container, key, value, _ in elements:
                self.values[(container, key)] = value
                self.owners.setdefault((container, key), set()).add(name)

    def update(self, tx: _Transaction, fresh: dict[str, list[Element]],
               gone: Collection[str], changed: Collection[str]) -> None:
        """Write into ``tx`` what makes the kernel hold ``fresh`` (service ports rendered
        again, by name) instead of their old elements, without the ports in ``gone``;
        ``changed`` are the Service keys whose ports these are."""
        for key in changed:
            self.ports_of.pop(key, None)
        for name in fresh:
            self.ports_of.setdefault(name.partition(":")[0], set()).add(name)
        touched: dict[tuple[str, str], Element] = {}
        for name in (*fresh, *gone):
            for container, key, *_ in self.by_port.pop(name, ()):
                self.owners.get((container, key), set()).discard(name)
                touched.setdefault((container, key), (container, key, "", ""))
        for name, elements in fresh.items():
            self.by_port[name] = elements
            for e in elements:
                self.owners.setdefault((e[0], e[1]), set()).add(name)
                touched[(e[0], e[1])] = e
        deletes = []
        for k, (container, key, value, comment) in touched.items():
            if not self.owners.get(k):
                self.owners.pop(k, None)
                if self.values.pop(k, None) is not None:
                    deletes.append(_element_line("delete", container, key))
                continue
            old = self.values.get(k)
            if old == value:
                continue
            if old is not None:
                tx.op(_element_line("delete", container, key))
            tx.op(_element_line("add", container, key, value, comment))
            self.values[k] = value
        # As upstream's cleanupLeftoverKeys: unused elements go at the end.
        tx.lines.extend(deletes)


class _Transaction:
    """The lines of one ``nft -f`` transaction, written as knftables writes them."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._ensured: set[str] = set()
        # Every element added, as (set or map, key, value, comment): what a partial
        # sync diffs against the elements the node holds (see _ElementStore).
        self.elements: list[Element] = []

    def op(self, line: str) -> None:
        self.lines.append(line)

    def ensure_chain(self, chain: str) -> None:
        """Add and flush ``chain`` once, so it holds exactly what this transaction puts there."""
        # A second flush would drop rules this transaction has already written.
        if chain in self._ensured:
            return
        self._ensured.add(chain)
        self.op(f"add chain {_T} {chain}")
        self.op(f"flush chain {_T} {chain}")

    def chains(self) -> set[str]:
        """The per-service chains this transaction added and flushed."""
        return {c for c in self._ensured if "/" in c}

    def rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        suffix = f' comment "{comment}"' if comment else ""
        self.op(f"add rule {_T} {chain} {rule}{suffix}")

    def element(
        self,
        name: str,
        key: Sequence[str | int],
        value: str | None = None,
        comment: str | None = None,
    ) -> None:
        key_text = " . ".join(str(k) for k in key)
        self.elements.append((name, key_text, value or "", comment or ""))
        self.op(_element_line("add", name, key_text, value, comment))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _nodeport_ips(ctx: NodeContext) -> list[str] | None:
    """Addresses for the ``nodeport-ips`` set, or None for "every local address".

    kube-proxy's nftables mode defaults ``--nodeport-addresses`` to ``primary`` (the
    node's IP), not to every local address as iptables mode does; a CIDR of length 0
    (``0.0.0.0/0``) asks for every local address (``fib daddr type local``).
    """
    if not ctx.nodeport_addresses or tuple(ctx.nodeport_addresses) == ("primary",):
        return [_ip(ip) for ip in ctx.node_ips[:1]]
    nets = [ipaddress.IPv4Network(_cidr(c)) for c in ctx.nodeport_addresses if ":" not in c]
    if any(n.prefixlen == 0 for n in nets):
        return None
    # kube-proxy matches the CIDRs against interface addresses; the node IPs are ours.
    return [
        _ip(ip) for ip in ctx.node_ips if any(ipaddress.IPv4Address(_ip(ip)) in n for n in nets)
    ]


def _setup(tx: _Transaction, ctx: NodeContext, service_cidrs: Sequence[str],
           startup: bool = True) -> None:
    """The fixed skeleton kube-proxy's setupNFTables writes at the start of every sync."""
    mark = go_mark(ctx.masquerade_bit)
    tx.op(f'add table {_T} {{ comment "rules for kube-proxy" ; }}')
    # First sync after start-up: recreate the base chains so that a table left by another
    # kube-proxy version, with other hooks or priorities, cannot fail the transaction.
    for name, *_ in _BASE_CHAINS if startup else ():
        tx.op(f"add chain {_T} {name}")
        tx.op(f"delete chain {_T} {name}")
    for name, typ, hook, prio in _BASE_CHAINS:
        tx.op(f"add chain {_T} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
        tx.op(f"flush chain {_T} {name}")
    for dst, src, match in _JUMP_CHAINS:
        tx.ensure_chain(dst)
        tx.rule(src, f"{match} jump {dst}".lstrip())
    for chain in ("services", "cluster-ips-check", "masquerading", MARK_MASQ):
        tx.ensure_chain(chain)

    tx.rule(MARK_MASQ, f"mark set mark or {mark}")
    tx.rule("masquerading", f"mark and {mark} == 0 return")
    tx.rule("masquerading", f"mark set mark xor {mark}")
    tx.rule("masquerading", "masquerade fully-random")

    tx.op(f'add set {_T} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}')
    tx.rule(
        "cluster-ips-check",
        "ip daddr @cluster-ips reject",
        "Reject traffic to invalid ports of ClusterIPs",
    )
    if service_cidrs:
        cidrs = ",".join(_cidr(c) for c in service_cidrs)
        tx.rule(
            "cluster-ips-check",
            f"ip daddr {{ {cidrs} }} drop",
            "Drop traffic to unallocated ClusterIPs",
        )

    # "add" then "delete" rather than a bare "delete", which fails if the set is absent.
    tx.op(
        f"add set {_T} nodeport-ips {{ type ipv4_addr ; "
        f'comment "IPs that accept NodePort traffic" ; }}'
    )
    nodeport_ips = _nodeport_ips(ctx)
    if nodeport_ips is None:
        tx.op(f"delete set {_T} nodeport-ips")
    else:
        tx.op(f"flush set {_T} nodeport-ips")
        for ip in nodeport_ips:
            tx.element("nodeport-ips", [ip])

    tx.op(
        f"add map {_T} no-endpoint-services {{ type {_VERDICT_KEY} ; "
        f'comment "vmap to drop or reject packets to services with no endpoints" ; }}'
    )
    tx.op(
        f"add map {_T} no-endpoint-nodeports {{ type {_PORT_KEY} ; "
        f'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}'
    )
    tx.op(
        f"add chain {_T} {REJECT_CHAIN} "
        f'{{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}'
    )
    tx.op(f"flush chain {_T} {REJECT_CHAIN}")
    tx.rule(REJECT_CHAIN, "reject")
    tx.rule(
        "service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    )
    nodeport_match = "ip daddr != 127.0.0.0/8" if nodeport_ips is None else "ip daddr @nodeport-ips"
    tx.rule(
        "nodeport-endpoints-check",
        f"{nodeport_match} meta l4proto . th dport vmap @no-endpoint-nodeports",
    )

    tx.op(
        f"add map {_T} firewall-ips {{ type {_VERDICT_KEY} ; "
        f'comment "destinations that are subject to LoadBalancerSourceRanges" ; }}'
    )
    tx.ensure_chain("firewall-check")
    tx.rule("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips")

    tx.op(
        f"add map {_T} service-ips {{ type {_VERDICT_KEY} ; "
        f'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}'
    )
    tx.op(f'add map {_T} service-nodeports {{ type {_PORT_KEY} ; comment "NodePort traffic" ; }}')
    tx.rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips")
    nodeport_dispatch = (
        "fib daddr type local ip daddr != 127.0.0.0/8"
        if nodeport_ips is None
        else "ip daddr @nodeport-ips"
    )
    tx.rule("services", f"{nodeport_dispatch} meta l4proto . th dport vmap @service-nodeports")

    # A full sync owns every element of the dispatch sets and maps: empty them here.
    tx.op(f"flush set {_T} cluster-ips")
    for name in (
        "service-ips",
        "firewall-ips",
        "no-endpoint-services",
        "no-endpoint-nodeports",
        "service-nodeports",
    ):
        tx.op(f"flush map {_T} {name}")


def _render_service_port(tx: _Transaction, view: ServicePortView, ctx: NodeContext) -> None:
    """Chains, rules and map elements of one service port (the unit of a partial sync)."""
    svc, sp = view.service, view.port
    proto = sp.protocol.lower()
    base = service_port_chain_base(svc.namespace, svc.name, proto, sp.name)
    cluster_chain, local_chain = f"service-{base}", f"local-{base}"
    external_chain, fw_chain = f"external-{base}", f"firewall-{base}"
    cluster_ip = _ip(svc.cluster_ip)
    external_ips = [_ip(ip) for ip in svc.external_ips]
    lb_ips = [_ip(ip) for ip in svc.load_balancer_ips] if svc.type == "LoadBalancer" else []
    node_port = sp.node_port if svc.has_node_ports else None
    affinity = svc.session_affinity == "ClientIP"
    masq_mark_jump = f"jump {MARK_MASQ}"

    # kube-proxy's CategorizeEndpoints: which endpoint lists each traffic policy uses.
    internal_local = svc.internal_traffic_policy == "Local"
    external_local = svc.external_policy_local
    externally_accessible = bool(node_port or lb_ips or external_ips)
    uses_cluster = not internal_local or externally_accessible
    uses_local = internal_local or (external_local and externally_accessible)
    # Ready endpoints, or else serving-and-terminating ones; "any" is cluster-wide.
    has_endpoints = bool(view.cluster_endpoints)
    cluster_eps = sorted_endpoints(view.cluster_endpoints) if uses_cluster else ()
    local_eps = sorted_endpoints(view.local_endpoints) if uses_local else ()
    reachable = sorted_endpoints(set(cluster_eps) | set(local_eps))

    bases: dict[ServiceEndpoint, str] = {}

    def ep_base(ep: ServiceEndpoint) -> str:
        # A SHA-256 per endpoint, needed by up to four lines: computed once.
        base = bases.get(ep)
        if base is None:
            base = bases[ep] = endpoint_chain_base(svc.namespace, svc.name, proto, sp.name,
                                                   _ip(ep.ip), ep.port)
        return base

    for ep in reachable:
        tx.ensure_chain(f"endpoint-{ep_base(ep)}")
    uses_cluster_chain = bool(cluster_eps)
    if uses_cluster_chain:
        tx.ensure_chain(cluster_chain)
    uses_local_chain = bool(local_eps)
    if uses_local_chain:
        tx.ensure_chain(local_chain)

    internal_chain, has_internal = cluster_chain, has_endpoints
    if internal_local:
        internal_chain, has_internal = local_chain, has_endpoints and bool(local_eps)
    external_policy_chain, has_external = cluster_chain, has_endpoints
    if external_local:
        external_policy_chain, has_external = local_chain, has_endpoints and bool(local_eps)
    # Needed even without external endpoints: it holds the local-traffic short circuits.
    uses_external_chain = has_endpoints and externally_accessible
    if uses_external_chain:
        tx.ensure_chain(external_chain)

    if not has_endpoints:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        # Local policy with no local endpoint: drop, but the other kind of traffic still works.
        internal_verdict = external_verdict = "drop"

    tx.element("cluster-ips", [cluster_ip])
    if has_internal:
        tx.element("service-ips", [cluster_ip, proto, sp.port], f"goto {internal_chain}")
    else:
        tx.element(
            "no-endpoint-services", [cluster_ip, proto, sp.port], internal_verdict, view.name
        )
    for ip in external_ips:
        if has_endpoints:
            tx.element("service-ips", [ip, proto, sp.port], f"goto {external_chain}")
        if not has_external:
            tx.element("no-endpoint-services", [ip, proto, sp.port], external_verdict, view.name)

    uses_fw_chain = bool(lb_ips) and bool(svc.load_balancer_source_ranges)
    if uses_fw_chain:
        tx.ensure_chain(fw_chain)
    for ip in lb_ips:
        if has_endpoints:
            tx.element("service-ips", [ip, proto, sp.port], f"goto {external_chain}")
        if uses_fw_chain:
            tx.element("firewall-ips", [ip, proto, sp.port], f"goto {fw_chain}")
    if not has_external:
        for ip in lb_ips:
            tx.element("no-endpoint-services", [ip, proto, sp.port], external_verdict, view.name)

    if node_port:
        # NodePorts are not subject to loadBalancerSourceRanges (kube-proxy cannot change that).
        if has_endpoints:
            tx.element("service-nodeports", [proto, node_port], f"goto {external_chain}")
        if not has_external:
            tx.element("no-endpoint-nodeports", [proto, node_port], external_verdict, view.name)

    pod_cidr = _cidr(ctx.cluster_cidr)
    if has_internal:
        # Off-cluster clients of a ClusterIP may be routed via another node: masquerade them.
        tx.rule(internal_chain, f"ip daddr {cluster_ip} ip saddr != {pod_cidr} {masq_mark_jump}")

    if uses_external_chain:
        if not external_local:
            tx.rule(external_chain, masq_mark_jump)
        else:
            # Pods and the node itself reach eTP:Local services through every endpoint, as
            # if they had gone out to the load balancer and come back; only the node's own
            # traffic needs masquerading (its source would be the service IP).
            tx.rule(
                external_chain,
                f"ip saddr {pod_cidr} goto {cluster_chain}",
                "short-circuit pod traffic",
            )
            tx.rule(
                external_chain, f"fib saddr type local {masq_mark_jump}", "masquerade local traffic"
            )
            tx.rule(
                external_chain,
                f"fib saddr type local goto {cluster_chain}",
                "short-circuit local traffic",
            )
        if has_external:
            tx.rule(external_chain, f"goto {external_policy_chain}")

    if uses_fw_chain:
        sources = [_cidr(c) for c in svc.load_balancer_source_ranges]
        # A node connecting to a VIP-style LB IP it holds locally arrives from the LB IP.
        node_ip = ipaddress.IPv4Address(_ip(ctx.node_ips[0])) if ctx.node_ips else None
        if node_ip is not None and any(node_ip in ipaddress.IPv4Network(c) for c in sources):
            sources += lb_ips
        tx.rule(fw_chain, f"ip saddr != {{ {' , '.join(sources)} }} drop")

    if affinity:
        for ep in reachable:
            # "dynamic" although nft only needs it for stateful objects: some kernels add it
            # themselves, and re-adding the set without it would then fail.
            tx.op(
                f"add set {_T} affinity-{ep_base(ep)} {{ type ipv4_addr ; "
                f"flags dynamic,timeout ; timeout {svc.affinity_timeout}s ; }}"
            )

    for chain, eps, used in (
        (cluster_chain, cluster_eps, uses_cluster_chain),
        (local_chain, local_eps, uses_local_chain),
    ):
        if not used:
            continue
        if affinity:
            for ep in eps:
                tx.rule(chain, f"ip saddr @affinity-{ep_base(ep)} goto endpoint-{ep_base(ep)}")
        vmap = " , ".join(f"{i} : goto endpoint-{ep_base(ep)}" for i, ep in enumerate(eps))
        tx.rule(chain, f"numgen random mod {len(eps)} vmap {{ {vmap} }}")

    for ep in reachable:
        chain = f"endpoint-{ep_base(ep)}"
        # Hairpin: a pod reaching itself through the service must not see its own address.
        tx.rule(chain, f"ip saddr {_ip(ep.ip)} {masq_mark_jump}")
        if affinity:
            tx.rule(chain, f"update @affinity-{ep_base(ep)} {{ ip saddr }}")
        tx.rule(chain, f"meta l4proto {proto} dnat to {_ip(ep.ip)}:{ep.port}")


@dataclass(frozen=True)
class _PortRender:
    """One service port's part of a sync: the port it was rendered from and its output."""

    view: ServicePortView
    text: str  # its lines of a full sync, in order
    elements: list[Element]
    chains: frozenset[str]


def render_port(view: ServicePortView, ctx: NodeContext) -> _PortRender:
    """One service port's chains, rules and elements, on their own."""
    part = _Transaction()
    _render_service_port(part, view, ctx)
    return _PortRender(view, "\n".join(part.lines), part.elements, frozenset(part.chains()))


PortCache = dict[str, _PortRender]  # by service port name, for one node and one context


def render_full_sync(
    ports: Sequence[ServicePortView], ctx: NodeContext, service_cidrs: Sequence[str] = (),
    cache: PortCache | None = None,
) -> str:
    """The transaction of a kube-proxy full sync for ``ports`` as seen by ``ctx``'s node.

    ``cache``, if given, holds each service port's output from earlier renders
    with the same ``ctx``: a port equal to its cached one is not rendered
    again. It is refreshed in place (ports that went away are dropped).
    """
    skeleton, parts = _full_sync_parts(ports, ctx, service_cidrs, cache)
    return "\n".join([*skeleton, *(p.text for p in parts if p.text), ""])


def _full_sync_parts(
    ports: Sequence[ServicePortView], ctx: NodeContext, service_cidrs: Sequence[str],
    cache: PortCache | None,
) -> tuple[list[str], list[_PortRender]]:
    """A full sync's skeleton lines and each port's part, in order (see render_full_sync)."""
    tx = _Transaction()
    _setup(tx, ctx, service_cidrs)
    cache = {} if cache is None else cache
    fresh: PortCache = {}
    for view in ports:
        hit = cache.get(view.name)
        if hit is None or not (hit.view is view or hit.view == view):
            hit = render_port(view, ctx)
        fresh[view.name] = hit
    cache.clear()
    cache.update(fresh)
    return tx.lines, list(fresh.values())


def render_chunked_sync(
    skeleton: Sequence[str], parts: Sequence[_PortRender], chunk: int,
    held: dict[tuple[str, str], str] | None,
) -> str:
    """A full sync split into transactions of at most ``chunk`` operations.

    The order is the chunking proposal's (kubernetes PR #139546): the table
    and its base objects (the whole skeleton, one transaction of its own),
    then the endpoint chains and affinity sets, then the service chains, then
    the rules (endpoint chains' first) and the set and map elements. Each
    transaction is one ``nft -f``; the transactions are separated by
    :data:`CHUNK_MARK` comment lines (nft ignores them, so the text is also a
    valid single transaction).

    ``held`` is None for a cold start (the table is created from nothing):
    every element is added. On a resync ``held`` is what the node's sets and
    maps hold (``(set or map, key) -> value``), and nothing live is ever
    emptied between two transactions: the skeleton does not flush the
    per-service sets and maps (their elements are written where they differ
    from ``held``, a changed value deleted and re-added in one transaction,
    unused ones deleted last), and a chain's ``flush chain`` travels with its
    rules in one transaction. The state left equals the one-transaction sync's.
    """
    resync = held is not None
    first = [ln for ln in skeleton
             if not (resync and ln.startswith(("flush set ", "flush map "))
                     and ln.split(" ")[4] in PORT_CONTAINERS)]
    endpoint_decls: list[list[str]] = []
    service_decls: list[list[str]] = []
    endpoint_rules: dict[str, list[str]] = {}
    service_rules: dict[str, list[str]] = {}
    for part in parts:
        for ln in part.text.split("\n"):
            words = ln.split(" ", 5)
            if len(words) < 5 or words[1] == "element":
                continue  # elements: from part.elements below
            verb, kind, name = words[0], words[1], words[4]
            is_endpoint = name.startswith("endpoint-")
            if kind == "set":  # an affinity set
                endpoint_decls.append([ln])
            elif kind == "chain" and verb == "add":
                (endpoint_decls if is_endpoint else service_decls).append([ln])
            else:  # "flush chain" and its "add rule"s: one group, never split
                (endpoint_rules if is_endpoint else service_rules).setdefault(name, []).append(ln)
    elements: list[list[str]] = []
    wanted: dict[tuple[str, str], Element] = {
        (e[0], e[1]): e for part in parts for e in part.elements}
    for (container, key), (_, _, value, comment) in wanted.items():
        old = None if held is None else held.get((container, key))
        if old == value:
            continue
        group = [] if old is None else [_element_line("delete", container, key)]
        elements.append([*group, _element_line("add", container, key, value, comment)])
    for container, key in (held or {}).keys() - wanted.keys():
        elements.append([_element_line("delete", container, key)])
    rest = [*endpoint_decls, *service_decls, *endpoint_rules.values(),
            *service_rules.values(), *elements]
    chunks = [first, *_pack(rest, chunk)]
    return "".join(f"{CHUNK_MARK} {i}/{len(chunks)}\n" + "".join(f"{ln}\n" for ln in c)
                   for i, c in enumerate(chunks, 1))


def _pack(groups: Sequence[list[str]], chunk: int) -> list[list[str]]:
    """Consecutive groups of lines into transactions of at most ``chunk`` lines (a group
    larger than that is a transaction of its own: it must not be split)."""
    out: list[list[str]] = []
    cur: list[str] = []
    for group in groups:
        if cur and len(cur) + len(group) > chunk:
            out.append(cur)
            cur = []
        cur.extend(group)
    if cur:
        out.append(cur)
    return out


def split_transactions(text: str) -> list[str]:
    """The transactions of a :func:`render_chunked_sync` text (the whole text when it
    has no :data:`CHUNK_MARK`)."""
    out: list[list[str]] = []
    for ln in text.splitlines():
        if ln.startswith(CHUNK_MARK) or not out:
            out.append([])
        if not ln.startswith(CHUNK_MARK):
            out[-1].append(ln)
    return ["".join(f"{ln}\n" for ln in lines) for lines in out if lines]


def render_partial_sync(
    changed_ports: Sequence[ServicePortView], ctx: NodeContext, changed: Collection[str],
    store: _ElementStore, stale_chains: Collection[str] = (),
) -> tuple[str, dict[str, _PortRender]]:
    """A kube-proxy partial sync: only the Services in ``changed`` are rendered again.

    ``changed_ports`` are the current ports of those Services (none for a
    removed Service); every other Service is unchanged since the last sync,
    as kube-proxy's change tracker says, and is not looked at.

    As upstream: the skeleton is not written (only a full sync does that), the
    chains of changed services are rewritten, set and map elements are written
    only where they differ from what ``store`` says the node holds (and
    ``store`` is brought up to date), and chains no longer used are flushed by
    the caller now and deleted on the next sync (``stale_chains``, once nothing
    can reference them). Unchanged services cost nothing: their chains and
    elements are already in place. Returns the transaction and what each
    changed port rendered (by name).
    """
    tx = _Transaction()
    for chain in sorted(stale_chains):
        tx.op(f"add chain {_T} {chain}")
        tx.op(f"delete chain {_T} {chain}")
    parts: dict[str, _PortRender] = {}
    for view in changed_ports:
        part = parts[view.name] = render_port(view, ctx)
        tx.lines.extend(ln for ln in part.text.split("\n")
                        if ln and not ln.startswith("add element "))
    gone = [name for key in changed for name in store.ports_of.get(key, ())
            if name not in parts]
    store.update(tx, {name: p.elements for name, p in parts.items()}, gone, changed)
    return tx.text(), parts


def service_chains(rendered: str) -> set[str]:
    """Per-service and per-endpoint chains a transaction writes (to find stale ones)."""
    prefix = f"add chain {_T} "
    # As upstream's isServiceChainName: only per-service names hold a "/" (ns/name), so
    # "service-endpoints-check" or "firewall-check" are not taken for one.
    names = (ln[len(prefix):].split(" ", 1)[0] for ln in rendered.splitlines()
             if ln.startswith(prefix))
    return {n for n in names if "/" in n and n.startswith(
        ("service-", "local-", "external-", "firewall-", "endpoint-"))}


def _chain_service(chain: str) -> str:
    """``ns/name`` of a per-service chain (``<kind>-<HASH8>-ns/name/proto/port[__ep]``)."""
    rest = chain.split("-", 2)[-1]
    return "/".join(rest.split("/")[:2])


def _by_service(chains: Collection[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for c in chains:
        out.setdefault(_chain_service(c), set()).add(c)
    return out


def count_objects(rendered: str) -> dict[str, int]:
    """What a rendering leaves in the table: chains, rules, sets, maps, set/map elements."""
    chains: set[str] = set()
    sets: set[str] = set()
    maps: set[str] = set()
    counts = {"rules": 0, "elements": 0}
    for line in rendered.splitlines():
        words = line.split(" ", 5)
        if len(words) < 5:
            continue
        verb, kind, name = words[0], words[1], words[4]
        live = {"chain": chains, "set": sets, "map": maps}.get(kind)
        if live is not None and verb == "add":
            live.add(name)
        elif live is not None and verb == "delete":
            live.discard(name)
        elif verb == "add" and kind in ("rule", "element"):
            counts[f"{kind}s"] += 1
    return {
        "chains": len(chains),
        "rules": counts["rules"],
        "sets": len(sets),
        "maps": len(maps),
        "elements": counts["elements"],
    }


class NftablesDatapath(Datapath):
    """kube-proxy in nftables mode: one ``nft -f`` transaction per sync."""

    name = "nftables"
    # "nftables-chunked": full syncs as transactions of CHUNK_OPS operations each
    # (render_chunked_sync); partial syncs stay one transaction.
    variants = {"nftables": ("nftables",), "nftables-chunked": ("nftables",)}

    def __init__(self, chunk: int = 0) -> None:
        self.chunk = chunk  # operations per full-sync transaction; 0: one transaction
        # Seconds of each transaction of the last apply (several when chunked).
        self._transactions: list[float] = []
        # Per node: the service chains in use after the last sync (by Service), the chains
        # a partial sync flushed that the next one deletes (as upstream's staleChains),
        # and the elements its sets and maps hold.
        self._chains: dict[str, dict[str, set[str]]] = {}
        self._stale: dict[str, set[str]] = {}
        self._elements: dict[str, _ElementStore] = {}
        # Per node: the context and each service port's output of the last render.
        self._ports: dict[str, tuple[NodeContext, PortCache]] = {}

    @classmethod
    def for_variant(cls, variant: str) -> NftablesDatapath:
        return cls(chunk=CHUNK_OPS if variant == "nftables-chunked" else 0)

    @property
    def variant(self) -> str:
        return "nftables-chunked" if self.chunk else "nftables"

    def render(self, ports: Sequence[ServicePortView], ctx: NodeContext) -> str:
        """The ``nft -f`` transaction of kube-proxy's first full sync (see module doc);
        chunked (:func:`render_chunked_sync`) when the variant is: a cold start when this
        node has had no render since it was created or :meth:`forget`-ten, else a resync."""
        node = ctx.node_name
        cached_ctx, cache = self._ports.get(node, (ctx, {}))
        if cached_ctx != ctx:
            cache = {}
        skeleton, parts = _full_sync_parts(ports, ctx, ctx.service_cidrs, cache)
        if self.chunk:
            store = self._elements.get(node)
            text = render_chunked_sync(skeleton, parts, self.chunk,
                                       None if store is None else dict(store.values))
        else:
            text = "\n".join([*skeleton, *(p.text for p in parts if p.text), ""])
        self._ports[node] = (ctx, cache)
        by_port: dict[str, list[Element]] = {}
        ports_of: dict[str, set[str]] = {}
        chains: dict[str, set[str]] = {}
        for name, part in cache.items():
            key = part.view.service.key
            by_port[name] = part.elements
            ports_of.setdefault(key, set()).add(name)
            if part.chains:
                chains.setdefault(key, set()).update(part.chains)
        self._elements.setdefault(node, _ElementStore()).reset(by_port, ports_of)
        self._chains[node] = chains
        self._stale[node] = set()
        return text

    def render_partial(self, ports: Sequence[ServicePortView], ctx: NodeContext,
                       changed: Collection[str]) -> str:
        """A partial sync after the Services in ``changed`` (``ns/name``) changed.

        Without a full sync of this node before it, it is a full sync (as
        kube-proxy's first sync always is).
        """
        node = ctx.node_name
        store = self._elements.get(node)
        if store is None:
            return self.render(ports, ctx)
        changed = set(changed)
        views = [v for v in ports if v.service.key in changed]
        text, parts = render_partial_sync(views, ctx, changed, store,
                                          self._stale.get(node, set()))
        cached_ctx, cache = self._ports.get(node, (ctx, {}))
        if cached_ctx == ctx:  # the next full render starts from this state
            for name in [n for n, p in cache.items() if p.view.service.key in changed]:
                del cache[name]
            cache.update(parts)
        chains = {c for p in parts.values() for c in p.chains}
        # Chains of changed or removed services that this sync no longer writes are
        # flushed now and deleted next time. Unchanged services keep their chains.
        by_service = self._chains.setdefault(node, {})
        written = _by_service(chains)
        removed = changed - {v.service.key for v in views}
        gone: set[str] = set()
        for key in {*changed, *removed, *written}:
            old = by_service.pop(key, set())
            new = written.get(key, set())
            gone |= old - new
            if new:
                by_service[key] = new
        if gone:
            text += "".join(f"add chain {_T} {c}\nflush chain {_T} {c}\n" for c in sorted(gone))
        self._stale[node] = gone
        return text

    def state_size(self, rendered: str) -> dict[str, int]:
        return count_objects(rendered)

    def apply(self, rendered: str, netns: str) -> None:
        """Run ``rendered`` inside ``netns``: one ``nft -f -`` per transaction (one, unless
        the render was chunked), each timed (:meth:`transaction_seconds`)."""
        self._transactions = []
        for tx in split_transactions(rendered):
            t0 = time.monotonic()
            run_in_netns(netns, ["nft", "-f", "-"], stdin=tx, timeout=self.apply_timeout)
            self._transactions.append(time.monotonic() - t0)

    def transaction_seconds(self) -> list[float]:
        return list(self._transactions)

    def forget(self, node: str) -> None:
        """``node``'s table was deleted: its next render is a cold start."""
        for state in (self._chains, self._stale, self._elements, self._ports):
            state.pop(node, None)

    def list_state(self, netns: str, full: bool) -> bool:
        """What kube-proxy's nftables proxier reads back from the kernel on a sync.

        As the proxier this module follows (the one with ``nftElementStorage``): on
        every sync, full or partial, it lists the table's chains (to flush the
        service chains no longer used) and its sets (to delete unused affinity
        sets): ``List("chains")`` and ``List("sets")``. knftables' ``List`` reads
        the whole table for each, ``nft --json list table ip kube-proxy`` (every
        chain, rule, set and element: it grows with the Services), and keeps the
        objects of the one type. Elements are not read back (the element storage
        is kept in memory and reset with a flush on a full sync). A missing table
        (a cold start) is not an error, as kube-proxy ignores NotFound. ``full``
        does not change the reads. The render does not use them: it keeps the same
        facts itself, so the transaction is the same with or without them.
        """
        for _ in ("chains", "sets"):
            run_in_netns(netns, ["nft", "--json", "list", "table", "ip", TABLE],
                         timeout=self.apply_timeout, check=False)
        return True

    def cleanup(self, netns: str) -> None:
        """Delete ``table ip kube-proxy`` in ``netns``; nothing to do if it is absent."""
        # "add" first so that the delete cannot fail on a missing table (no "destroy"
        # before nft 1.0.8), as kube-proxy's CleanupLeftovers tolerates NotFound.
        run_in_netns(netns, ["nft", "-f", "-"], stdin=f"add table {_T}\ndelete table {_T}\n")
