"""kube-proxy's IPVS mode: what its proxier programs on a full sync, and applying it.

``render`` returns the whole plan of one ``syncProxyRules`` of kube-proxy's
IPVS proxier (``pkg/proxy/ipvs/proxier.go``) as text, in sections:

- ``*sysctl``: the sysctls ``NewProxier`` sets (``net/ipv4/vs/conntrack``,
  ``expire_nodest_conn``, ``expire_quiescent_template``, ``ip_forward``;
  ``conn_reuse_mode=0`` only on kernels older than 5.9, as upstream);
- ``*dummy kube-ipvs0``: the addresses bound to the dummy device (ClusterIPs,
  external IPs and load-balancer IPs, so the node accepts them locally);
- ``*ipvs``: one virtual server per service port and address, listed as
  ``ipvsadm -Ln`` prints it (no connection counters): ClusterIP, external
  IPs, load-balancer IPs and every node IP for a NodePort; scheduler ``rr``
  unless another is chosen; ``persistent <timeout>`` for ClientIP affinity;
  real servers in masquerading mode (``Masq``), weight 1;
- ``*ipset``: ``ipset restore`` lines creating kube-proxy's sets and their
  entries (``KUBE-CLUSTER-IP``, ``KUBE-LOOP-BACK``, ``KUBE-NODE-PORT-TCP``,
  ``KUBE-NODE-PORT-LOCAL-TCP``, ``KUBE-IPVS-IPS`` and the rest);
- ``*jumps``: the jumps ``createAndLinkKubeChain`` ensures in the built-in
  chains (``iptables -I`` unless ``-C`` finds them);
- ``*nat`` / ``*filter``: the ``iptables-restore --noflush`` input of
  ``writeIptablesRules``, in upstream's order (nat first).

Which endpoints a virtual server gets follows ``syncEndpoint``: ready
endpoints (or serving-and-terminating ones when none is ready); for
``externalTrafficPolicy: Local`` the NodePort, external and load-balancer
servers get only the node's local endpoints, and, when the node has none,
all of them (upstream PR 97081: local pods keep working; an external
client's reply then comes from the pod address and the connection fails).

Verified against upstream kubernetes/kubernetes ``pkg/proxy/ipvs/proxier.go``
(the version with ``KUBE-IPVS-FILTER``, ``KUBE-IPVS-OUT-FILTER`` and the
``KUBE-IPVS-IPS`` set) and ``proxier_test.go`` (``TestNodePortIPv4``,
``TestOnlyLocalNodePorts``, ``TestLoadBalancerSourceRanges``,
``TestOnlyLocalLoadBalancing``, ``TestAcceptIPVSTraffic``,
``TestHealthCheckNodePort``): the same virtual servers and real servers,
ipset entries and per-chain jump/set sequences for the same inputs (see
``tests/unit/test_ipvs_render.py``). Known differences:

- Node IPs for NodePort servers come from ``NodeContext.node_ips``; kube-proxy
  takes every non-loopback local address not on ``kube-ipvs0``.
- Upstream's test proxier has no local-traffic detector, so its
  ``KUBE-CLUSTER-IP`` rule matches ``src,dst``; a real kube-proxy with
  ``--cluster-cidr`` writes ``dst,dst ! -s <cidr>``, as here.
- Applying batches ipset changes into one ``ipset restore`` (kube-proxy execs
  ``ipset add``/``del`` per changed entry) and programs IPVS and the dummy
  device over netlink from the harness's process
  (:mod:`bench.datapaths._ipvs_netlink`), as kube-proxy does from its own;
  graceful termination (weight 0, then delete) is not modelled: a removed
  real server is deleted at once.
- The iptables backend is ``iptables-legacy`` by default (``nft`` selectable).

Why one module of this size: render and apply follow upstream's single
``pkg/proxy/ipvs/proxier.go`` step for step (its ``syncProxyRules`` is one
function), and keeping them side by side is what lets a reader check one
against the other; the netlink side is already apart (``_ipvs_netlink``).
"""

from __future__ import annotations

import ipaddress
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.datapaths.base import Datapath, NodeContext, run_in_netns
from bench.datapaths.kube_proxy import (
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICES,
    IptablesTools,
    forward_rules,
    go_mark,
    masquerade_rules,
)
from bench.errors import ApplyError, ApplyTimeout, InputError
from bench.model.objects import ServiceEndpoint, ServicePortView

DUMMY_DEVICE = "kube-ipvs0"
DEFAULT_SCHEDULER = "rr"
# The schedulers of Linux IPVS (ip_vs_<name> modules) kube-proxy accepts in --ipvs-scheduler.
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh")
CONN_REUSE_FIXED_KERNEL = (5, 9)  # utilkernel.IPVSConnReuseModeFixedKernelVersion
CONN_REUSE_MIN_KERNEL = (4, 1)

# Flags of struct ip_vs_service_user (include/uapi/linux/ip_vs.h).
IP_VS_SVC_F_PERSISTENT = 0x0001
IP_VS_SVC_F_HASHED = 0x0002
IP_VS_SVC_F_SCHED1 = 0x0008  # "flag-1": mh's source-port hashing (FlagSourceHash)

KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"

NAT_CHAINS = (KUBE_SERVICES, KUBE_POSTROUTING, KUBE_NODE_PORT, KUBE_LOAD_BALANCER, KUBE_MARK_MASQ)
FILTER_CHAINS = (KUBE_FORWARD, KUBE_NODE_PORT, KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL,
                 KUBE_IPVS_FILTER, KUBE_IPVS_OUT_FILTER)

# (table, built-in chain, kube chain, comment): upstream's iptablesJumpChain, each prepended.
JUMPS = (
    ("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    ("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    ("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    ("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    ("filter", "INPUT", KUBE_NODE_PORT, "kubernetes health check rules"),
    ("filter", "INPUT", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    ("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    ("filter", "INPUT", KUBE_IPVS_FILTER, "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", KUBE_IPVS_OUT_FILTER, "kubernetes ipvs access filter"),
)


@dataclass(frozen=True)
class IPSetSpec:
    """One of kube-proxy's ipsets: name, ipset type and the comment its rules carry."""

    name: str
    type: str
    comment: str

    def create_line(self) -> str:
        """The ``ipset restore`` line that creates it (upstream's CreateSet defaults)."""
        if self.type == "bitmap:port":
            opts = "range 0-65535"
        else:
            opts = "family inet hashsize 1024 maxelem 65536"
        return f"create {self.name} {self.type} {opts} comment"


def _set(name: str, kind: str, comment: str) -> IPSetSpec:
    return IPSetSpec(name, kind, comment)


# Upstream's ipsetInfo, in its order (IPv4 names).
LOOP_BACK = _set("KUBE-LOOP-BACK", "hash:ip,port,ip",
                 "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose")
CLUSTER_IP = _set("KUBE-CLUSTER-IP", "hash:ip,port",
                  "Kubernetes service cluster ip + port for masquerade purpose")
EXTERNAL_IP = _set("KUBE-EXTERNAL-IP", "hash:ip,port",
                   "Kubernetes service external ip + port for masquerade and filter purpose")
EXTERNAL_IP_LOCAL = _set("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port",
                         "Kubernetes service external ip + port with externalTrafficPolicy=local")
LOAD_BALANCER = _set("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal")
LOAD_BALANCER_FW = _set("KUBE-LOAD-BALANCER-FW", "hash:ip,port",
                        "Kubernetes service load balancer ip + port for load balancer with "
                        "sourceRange")
LOAD_BALANCER_LOCAL = _set("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port",
                           "Kubernetes service load balancer ip + port with "
                           "externalTrafficPolicy=local")
LB_SOURCE_IP = _set("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip",
                    "Kubernetes service load balancer ip + port + source IP for packet filter "
                    "purpose")
LB_SOURCE_CIDR = _set("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net",
                      "Kubernetes service load balancer ip + port + source cidr for packet "
                      "filter purpose")
NODE_PORT_TCP = _set("KUBE-NODE-PORT-TCP", "bitmap:port",
                     "Kubernetes nodeport TCP port for masquerade purpose")
NODE_PORT_LOCAL_TCP = _set("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port",
                           "Kubernetes nodeport TCP port with externalTrafficPolicy=local")
NODE_PORT_UDP = _set("KUBE-NODE-PORT-UDP", "bitmap:port",
                     "Kubernetes nodeport UDP port for masquerade purpose")
NODE_PORT_LOCAL_UDP = _set("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port",
                           "Kubernetes nodeport UDP port with externalTrafficPolicy=local")
NODE_PORT_SCTP = _set("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port",
                      "Kubernetes nodeport SCTP port for masquerade purpose with type "
                      "'hash ip:port'")
NODE_PORT_LOCAL_SCTP = _set("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port",
                            "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with "
                            "type 'hash ip:port'")
HEALTH_CHECK_NODE_PORT = _set("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port",
                              "Kubernetes health check node port")
IPVS_IPS = _set("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface")

IPSETS = (LOOP_BACK, CLUSTER_IP, EXTERNAL_IP, EXTERNAL_IP_LOCAL, LOAD_BALANCER, LOAD_BALANCER_FW,
          LOAD_BALANCER_LOCAL, LB_SOURCE_IP, LB_SOURCE_CIDR, NODE_PORT_TCP, NODE_PORT_LOCAL_TCP,
          NODE_PORT_UDP, NODE_PORT_LOCAL_UDP, NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP,
          HEALTH_CHECK_NODE_PORT, IPVS_IPS)
IPSET_NAMES = tuple(s.name for s in IPSETS)

# Upstream's ipsetWithIptablesChain: (set, table, chain, target, match, protocol), in order.
# The local NodePort sets come before their masquerading ones, so Local traffic RETURNs first.
_SET_RULES = (
    (LOOP_BACK, "nat", KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", ""),
    (LOAD_BALANCER, "nat", KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", ""),
    (LOAD_BALANCER_LOCAL, "nat", KUBE_LOAD_BALANCER, "RETURN", "dst,dst", ""),
    (NODE_PORT_LOCAL_TCP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
    (NODE_PORT_TCP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
    (NODE_PORT_LOCAL_UDP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "udp"),
    (NODE_PORT_UDP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
    (NODE_PORT_LOCAL_SCTP, "nat", KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
    (NODE_PORT_SCTP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
    (LOAD_BALANCER_FW, "filter", KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL, "dst,dst", ""),
    (LB_SOURCE_CIDR, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
    (LB_SOURCE_IP, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
)

_PROTO_NUM = {"TCP": 6, "UDP": 17, "SCTP": 132}


@dataclass(frozen=True)
class RealServer:
    ip: str
    port: int
    weight: int = 1


@dataclass
class VirtualServer:
    """One IPVS service (upstream's utilipvs.VirtualServer) and its real servers."""

    protocol: str  # TCP | UDP | SCTP
    address: str
    port: int
    scheduler: str
    persistent_timeout: int = 0  # > 0: IP_VS_SVC_F_PERSISTENT with this timeout
    source_hash: bool = False  # mh's FlagSourceHash
    bind: bool = True  # the address goes on kube-ipvs0
    real_servers: list[RealServer] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol, self.address, self.port)

    @property
    def flags(self) -> int:
        f = IP_VS_SVC_F_PERSISTENT if self.persistent_timeout else 0
        return f | (IP_VS_SVC_F_SCHED1 if self.source_hash else 0)

    def listing(self) -> list[str]:
        """``ipvsadm -Ln`` lines of this server (without connection counters)."""
        head = f"{self.protocol}  {self.address}:{self.port} {self.scheduler}"
        if self.source_hash:
            head += " (flag-1)"
        if self.persistent_timeout:
            head += f" persistent {self.persistent_timeout}"
        lines = [head]
        for rs in sorted(self.real_servers, key=lambda r: (_ip_key(r.ip), r.port)):
            # ipvsadm's "  -> %-28s %-7s %-6d" without the connection counters.
            lines.append(f"  -> {f'{rs.ip}:{rs.port}':<28} {'Masq':<7} {rs.weight}")
        return lines


@dataclass
class IpvsPlan:
    """Everything one sync programs; :meth:`text` is the rendering, :func:`parse_plan` reads it."""

    sysctls: list[tuple[str, str]] = field(default_factory=list)
    bind_addresses: list[str] = field(default_factory=list)
    virtual_servers: list[VirtualServer] = field(default_factory=list)
    ipset_entries: dict[str, list[str]] = field(default_factory=dict)
    restore: str = ""  # iptables-restore input (*nat then *filter)

    def text(self, header: str) -> str:
        out = [f"# {header}", "*sysctl"]
        out += [f"{k} = {v}" for k, v in self.sysctls]
        out += [f"*dummy {DUMMY_DEVICE}", *self.bind_addresses]
        out += ["*ipvs", "Prot LocalAddress:Port Scheduler Flags",
                "  -> RemoteAddress:Port           Forward Weight"]
        for vs in sorted(self.virtual_servers, key=_vs_order):
            lines = vs.listing()
            if not vs.bind:
                lines[0] += f"  # a node address: not bound to {DUMMY_DEVICE}"
            out += lines
        out.append("*ipset")
        for spec in IPSETS:
            out.append(spec.create_line())
        for spec in IPSETS:
            out += [f"add {spec.name} {e}" for e in self.ipset_entries.get(spec.name, [])]
        out.append("*jumps")
        out += [f"-t {t} -I {src} -m comment --comment {_q(c)} -j {dst}"
                for t, src, dst, c in JUMPS]
        return "\n".join(out) + "\n" + self.restore


def _q(text: str) -> str:
    return f'"{text}"'


def _ip_key(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def _vs_order(vs: VirtualServer) -> tuple[str, int, int]:
    # ipvsadm lists services by hash bucket; a stable, readable order diffs better.
    return (vs.protocol, _ip_key(vs.address), vs.port)


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class IpvsDatapath(Datapath):
    """kube-proxy in IPVS mode: virtual servers, the dummy device, ipsets and iptables glue.

    ``scheduler`` is kube-proxy's ``--ipvs-scheduler`` (``rr`` by default);
    ``masquerade_all`` its ``--masquerade-all``; ``iptables_backend`` which
    iptables binaries apply the glue; ``kernel_release`` decides the
    ``conn_reuse_mode`` sysctl as upstream does (default: the running kernel).
    """

    applies_in_process = True  # bpf() / netlink calls from the harness's thread

    name = "ipvs"
    # IPVS itself, the ipsets its rules match, and iptables-legacy for that glue.
    variants = {"ipvs": ("ipvs", "ipset", "iptables-legacy")}

    def __init__(self, scheduler: str = DEFAULT_SCHEDULER, *, iptables_backend: str = "legacy",
                 masquerade_all: bool = False, random_fully: bool = True,
                 kernel_release: str | None = None) -> None:
        if scheduler not in SCHEDULERS:
            raise InputError(f"unknown IPVS scheduler {scheduler!r}; choose one of "
                             f"{', '.join(SCHEDULERS)}", field="scheduler")
        self.tools = IptablesTools(iptables_backend)
        self.scheduler = scheduler
        self.iptables_backend = iptables_backend
        self.masquerade_all = masquerade_all
        self.random_fully = random_fully
        self.kernel_release = kernel_release or platform.release()

    @classmethod
    def accepts(cls, name: str) -> bool:
        return name == cls.name or name.startswith(f"{cls.name}-")  # ipvs-<scheduler>

    @classmethod
    def create(cls, name: str, iptables_backend: str = "legacy") -> IpvsDatapath:
        return cls(name.partition("-")[2] or DEFAULT_SCHEDULER, iptables_backend=iptables_backend)

    @property
    def variant(self) -> str:
        return "ipvs" if self.scheduler == DEFAULT_SCHEDULER else f"ipvs-{self.scheduler}"

    # --- rendering -------------------------------------------------------------

    def plan(self, ports: Sequence[ServicePortView], ctx: NodeContext) -> IpvsPlan:
        """The structured plan of a full sync (what :meth:`render` prints)."""
        plan = IpvsPlan(sysctls=self._sysctls())
        entries: dict[str, set[str]] = {s.name: set() for s in IPSETS}
        bound: list[str] = []
        lb_no_node_access: list[tuple[str, str, int]] = []
        node_ips = [ip for ip in ctx.node_ips if not ip.startswith("127.")]

        for view in ports:
            svc, sp = view.service, view.port
            proto = sp.protocol.lower()
            for ep in view.endpoints:
                if ep.is_local:
                    # Hairpin: a local pod reaching itself through the service is masqueraded.
                    entries[LOOP_BACK.name].add(f"{ep.ip},{proto}:{ep.port},{ep.ip}")

            def server(addr: str, port: int, local: bool, bind: bool,
                       view: ServicePortView = view) -> None:
                plan.virtual_servers.append(self._virtual_server(view, addr, port, local, bind))
                if bind and addr not in bound:
                    bound.append(addr)

            cip = svc.cluster_ip
            entries[CLUSTER_IP.name].add(f"{cip},{proto}:{sp.port}")
            server(cip, sp.port, svc.internal_traffic_policy == "Local", True)

            ext_local = svc.external_policy_local
            for ip in svc.external_ips:
                target = EXTERNAL_IP_LOCAL if ext_local else EXTERNAL_IP
                entries[target.name].add(f"{ip},{proto}:{sp.port}")
                server(ip, sp.port, ext_local, ip not in node_ips)
            for ip in svc.load_balancer_ips:
                entry = f"{ip},{proto}:{sp.port}"
                entries[LOAD_BALANCER.name].add(entry)
                if ext_local:
                    entries[LOAD_BALANCER_LOCAL.name].add(entry)
                if svc.load_balancer_source_ranges:
                    entries[LOAD_BALANCER_FW.name].add(entry)
                    allow_from_node = False
                    for cidr in svc.load_balancer_source_ranges:
                        net = ipaddress.IPv4Network(cidr.strip(), strict=False)
                        entries[LB_SOURCE_CIDR.name].add(f"{entry},{net}")
                        if node_ips and ipaddress.IPv4Address(node_ips[0]) in net:
                            allow_from_node = True
                    if allow_from_node:
                        entries[LB_SOURCE_IP.name].add(f"{entry},{ip}")
                    else:
                        lb_no_node_access.append((ip, proto, sp.port))
                server(ip, sp.port, ext_local, ip not in node_ips)

            if sp.node_port and node_ips:
                if proto == "sctp":
                    np_entries = [f"{ip},{proto}:{sp.node_port}" for ip in node_ips]
                    np_set, np_local = NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP
                else:
                    np_entries = [str(sp.node_port)]
                    np_set, np_local = ((NODE_PORT_TCP, NODE_PORT_LOCAL_TCP) if proto == "tcp"
                                        else (NODE_PORT_UDP, NODE_PORT_LOCAL_UDP))
                entries[np_set.name].update(np_entries)
                if ext_local:
                    entries[np_local.name].update(np_entries)
                for ip in node_ips:
                    server(ip, sp.node_port, ext_local, False)
            if svc.type == "LoadBalancer" and ext_local and svc.health_check_node_port:
                entries[HEALTH_CHECK_NODE_PORT.name].add(str(svc.health_check_node_port))

        entries[IPVS_IPS.name] = set(bound)
        plan.bind_addresses = bound
        plan.ipset_entries = {k: sorted(v, key=_entry_key) for k, v in entries.items() if v}
        plan.restore = self._iptables_rules(ctx, {k for k, v in entries.items() if v},
                                            lb_no_node_access)
        return plan

    def _virtual_server(self, view: ServicePortView, addr: str, port: int, local: bool,
                        bind: bool) -> VirtualServer:
        svc = view.service
        affinity = svc.session_affinity == "ClientIP"
        return VirtualServer(
            view.port.protocol, addr, port, self.scheduler,
            persistent_timeout=svc.affinity_timeout if affinity else 0,
            source_hash=self.scheduler == "mh", bind=bind,
            real_servers=[RealServer(e.ip, e.port) for e in _endpoints(view, local)])

    def render(self, ports: Sequence[ServicePortView], ctx: NodeContext) -> str:
        """The plan as text: sysctls, dummy addresses, ipvsadm listing, ipsets, iptables."""
        head = (f"kube-proxy IPVS mode on {ctx.node_name}: scheduler {self.scheduler}, "
                f"masquerade mark {go_mark(ctx.masquerade_bit)}")
        return self.plan(ports, ctx).text(head)

    def _sysctls(self) -> list[tuple[str, str]]:
        out = [("net/ipv4/vs/conntrack", "1")]
        kv = kernel_version(self.kernel_release)
        if CONN_REUSE_MIN_KERNEL <= kv < CONN_REUSE_FIXED_KERNEL:
            out.append(("net/ipv4/vs/conn_reuse_mode", "0"))
        out += [("net/ipv4/vs/expire_nodest_conn", "1"),
                ("net/ipv4/vs/expire_quiescent_template", "1"),
                ("net/ipv4/ip_forward", "1")]
        return out

    def _iptables_rules(self, ctx: NodeContext, nonempty: set[str],
                        lb_no_node_access: list[tuple[str, str, int]]) -> str:
        """Upstream's writeIptablesRules, line for line."""
        mark = go_mark(ctx.masquerade_bit)
        nat = [f"-A {KUBE_SERVICES} -s 127.0.0.0/8 -j RETURN"]
        fil: list[str] = []
        for spec, table, chain, target, match, proto in _SET_RULES:
            if spec.name not in nonempty:
                continue
            p = f" -p {proto}" if proto else ""
            rule = (f"-A {chain}{p} -m comment --comment {_q(spec.comment)} "
                    f"-m set --match-set {spec.name} {match} -j {target}")
            (fil if table == "filter" else nat).append(rule)
        if CLUSTER_IP.name in nonempty:
            head = (f"-A {KUBE_SERVICES} -m comment --comment {_q(CLUSTER_IP.comment)} "
                    f"-m set --match-set {CLUSTER_IP.name} dst,dst")
            if self.masquerade_all:
                nat.append(f"{head} -j {KUBE_MARK_MASQ}")
            else:
                # Off-cluster sources reaching a VIP may be bridged to another node: masquerade.
                cidr = ipaddress.IPv4Network(ctx.cluster_cidr, strict=False)
                nat.append(f"{head} ! -s {cidr} -j {KUBE_MARK_MASQ}")
        for spec in (EXTERNAL_IP, EXTERNAL_IP_LOCAL):
            if spec.name not in nonempty:
                continue
            head = (f"-A {KUBE_SERVICES} -m comment --comment {_q(spec.comment)} "
                    f"-m set --match-set {spec.name} dst,dst")
            if spec is EXTERNAL_IP:
                nat.append(f"{head} -j {KUBE_MARK_MASQ}")
            nat.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL "
                       "-j ACCEPT")
            nat.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")
        nat.append(f"-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}")
        nat.append(f"-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}")
        fil.append(f"-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP")
        for ip, proto, port in lb_no_node_access:
            fil.append(f"-A {KUBE_IPVS_OUT_FILTER} -s {ip} -m ipvs --vaddr {ip} --vproto {proto} "
                       f"--vport {port} -j DROP")
        # acceptIPVSTraffic: service traffic must reach IPVS whatever other rules say.
        for spec in (CLUSTER_IP, LOAD_BALANCER):
            if spec.name in nonempty:
                nat.append(f"-A {KUBE_SERVICES} -m set --match-set {spec.name} dst,dst -j ACCEPT")
        fil += [
            *forward_rules(mark),
            (f"-A {KUBE_NODE_PORT} -m comment --comment {_q(HEALTH_CHECK_NODE_PORT.comment)} "
             f"-m set --match-set {HEALTH_CHECK_NODE_PORT.name} dst -j ACCEPT"),
        ]
        # KUBE-IPVS-FILTER: the VIPs on kube-ipvs0 are local addresses; only service ports
        # may be reached through them (kubernetes issue 72236).
        for spec, match in ((LOAD_BALANCER, "dst,dst"), (CLUSTER_IP, "dst,dst"),
                            (EXTERNAL_IP, "dst,dst"), (EXTERNAL_IP_LOCAL, "dst,dst"),
                            (HEALTH_CHECK_NODE_PORT, "dst")):
            fil.append(f"-A {KUBE_IPVS_FILTER} -m set --match-set {spec.name} {match} -j RETURN")
        fil.append(f"-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW "
                   f"-m set --match-set {IPVS_IPS.name} dst -j REJECT")
        nat += masquerade_rules(mark, self.random_fully)
        out = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), *nat, "COMMIT",
               "*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), *fil, "COMMIT"]
        return "\n".join(out) + "\n"

    # --- applying --------------------------------------------------------------

    def state_size(self, rendered: str) -> dict[str, int]:
        plan = parse_plan(rendered)
        nat, _, fil = plan.restore.partition("*filter")
        return {
            "virtual_servers": len(plan.virtual_servers),
            "real_servers": sum(len(v.real_servers) for v in plan.virtual_servers),
            "bound_addresses": len(plan.bind_addresses),
            "ipset_entries": sum(len(v) for v in plan.ipset_entries.values()),
            "nat_rules": sum(1 for ln in nat.splitlines() if ln.startswith("-A ")),
            "filter_rules": sum(1 for ln in fil.splitlines() if ln.startswith("-A ")),
        }

    def apply(self, rendered: str, netns: str) -> None:
        """Program a full sync in ``netns``: sysctls, jumps, dummy + IPVS, ipsets, iptables.

        The steps share one ``apply_timeout``: each gets what the steps before it left
        (a limit per step let a large sync run for several times the limit).
        """
        plan = parse_plan(rendered)
        _ensure_module("ip_vs")
        left = _TimeLeft(self.apply_timeout, netns)
        try:
            run_in_netns(netns, ["sysctl", "-q", "-w",
                                 *(f"{k.replace('/', '.')}={v}" for k, v in plan.sysctls)],
                         timeout=left())
            self._ensure_jumps(netns, left)
            self._sync_ipvs(plan, netns, left())
            self._sync_ipsets(plan, netns, left)
            self.tools.restore(netns, plan.restore, "--noflush", "--counters",
                               timeout=left())
        except ApplyTimeout as e:
            raise left.exceeded(e) from e

    def cleanup(self, netns: str) -> None:
        """kube-proxy's ``CleanupLeftovers``: flush IPVS, delete kube-ipvs0, chains, then sets."""
        _netlink(netns, {"flush": True, "device": DUMMY_DEVICE})
        for table, src, dst, comment in JUMPS:
            rule = [src, "-m", "comment", "--comment", comment, "-j", dst]
            if self.tools.rc(netns, "-t", table, "-C", *rule) == 0:
                self.tools.run(netns, "-t", table, "-D", *rule)
        for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
            for op in ("-F", "-X"):
                for c in chains:
                    self.tools.rc(netns, "-t", table, op, c)
        for name in IPSET_NAMES:
            run_in_netns(netns, ["ipset", "destroy", name], check=False)

    def _ensure_jumps(self, netns: str, left: _TimeLeft) -> None:
        # createAndLinkKubeChain: EnsureChain for every chain, then EnsureRule(Prepend) jumps.
        for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
            for c in chains:
                self.tools.ensure_chain(netns, table, c, timeout=left(30))
        for table, src, dst, comment in JUMPS:
            rule = [src, "-m", "comment", "--comment", comment, "-j", dst]
            if self.tools.rc(netns, "-t", table, "-C", *rule, timeout=left(30)) != 0:
                self.tools.run(netns, "-t", table, "-I", *rule, timeout=left())

    def _sync_ipvs(self, plan: IpvsPlan, netns: str, timeout: float | None) -> None:
        _netlink(netns, {
            "device": DUMMY_DEVICE,
            "addresses": plan.bind_addresses,
            "services": [{"protocol": _PROTO_NUM[v.protocol], "addr": v.address,
                          "port": v.port, "sched": v.scheduler, "flags": v.flags,
                          "timeout": v.persistent_timeout,
                          "dests": [[r.ip, r.port, r.weight] for r in v.real_servers]}
                         for v in plan.virtual_servers],
            "timeout": timeout,
        })

    def _sync_ipsets(self, plan: IpvsPlan, netns: str, left: _TimeLeft) -> None:
        """Create the sets, then add and delete only the entries that differ (syncIPSetEntries)."""
        saved = run_in_netns(netns, ["ipset", "save"], timeout=left()).stdout
        current: dict[str, set[str]] = {}
        for line in saved.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "add":
                current.setdefault(parts[1], set()).add(parts[2])
        lines = [spec.create_line() + " -exist" for spec in IPSETS]
        for spec in IPSETS:
            want = set(plan.ipset_entries.get(spec.name, ()))
            have = current.get(spec.name, set())
            lines += [f"del {spec.name} {e}" for e in sorted(have - want)]
            lines += [f"add {spec.name} {e} -exist" for e in sorted(want - have)]
        run_in_netns(netns, ["ipset", "restore"], stdin="\n".join(lines) + "\n",
                     timeout=left())


class _TimeLeft:
    """What is left of one apply's time limit (None: no limit), shared by its steps."""

    def __init__(self, limit: float | None, netns: str) -> None:
        self.limit = limit
        self.netns = netns
        self.start = time.monotonic()
        self.capped = False  # the last step got its own cap, less than what was left
        self.raised: ApplyTimeout | None = None

    def __call__(self, cap: float | None = None) -> float | None:
        """Seconds the next step may take (at most ``cap``); ApplyTimeout when none."""
        if self.limit is None:
            self.capped = cap is not None
            return cap
        left = self.limit - (time.monotonic() - self.start)
        if left <= 0:
            raise self.exceeded(None)
        self.capped = cap is not None and cap < left
        return left if cap is None else min(left, cap)

    def exceeded(self, step: ApplyTimeout | None) -> ApplyTimeout:
        """The apply's timeout; ``step``, a step stopped at the time it was given, is
        returned as it is when that was its own cap, not what the limit left."""
        if step is not None and (self.capped or step is self.raised or self.limit is None):
            return step
        why = f" (stopped: {step})" if step is not None else ""
        self.raised = ApplyTimeout(f"IPVS sync in {self.netns} did not finish within "
                                   f"{self.limit:g} s{why}", self.limit or 0.0)
        return self.raised


def _endpoints(view: ServicePortView, only_local: bool) -> tuple[ServiceEndpoint, ...]:
    """Upstream's syncEndpoint choice of endpoints for one virtual server."""
    if only_local:
        local = view.local_endpoints
        # With no local endpoint kube-proxy falls back to all of them (upstream PR 97081).
        return local if local else view.cluster_endpoints
    return view.cluster_endpoints


def _entry_key(entry: str) -> tuple[int, str]:
    head = entry.split(",", 1)[0]
    try:
        return (_ip_key(head), entry)
    except ValueError:
        return (int(head) if head.isdigit() else 0, entry)


def _ensure_module(name: str) -> None:
    # The namespaces share the kernel: loading ip_vs once serves them all. A kernel with
    # IPVS built in, or without modprobe, is left to the netlink call to report.
    if Path(f"/sys/module/{name}").exists():
        return
    subprocess.run(["modprobe", "-q", name], capture_output=True, check=False, timeout=30)


def _netlink(netns: str, plan: dict[str, Any]) -> dict[str, int]:
    from pyroute2.netlink.exceptions import NetlinkError

    from bench.datapaths import _ipvs_netlink

    if not netns:
        raise ValueError("refusing to program IPVS outside a run's namespace")
    try:
        return _ipvs_netlink.sync(plan, netns)
    except NetlinkError as e:
        raise ApplyError(f"programming IPVS in {netns} failed: {e}") from e
    except TimeoutError as e:
        raise ApplyTimeout(f"{e} in {netns}", float(plan.get("timeout") or 0)) from e


# --- reading a rendering back -------------------------------------------------------

_VS_RE = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+):(\d+)\s+(\S+)(.*)$")
_RS_RE = re.compile(r"^\s+->\s+(\S+):(\d+)\s+Masq\s+(\d+)")


def parse_plan(rendered: str) -> IpvsPlan:
    """Read a rendering back into a plan (what :meth:`IpvsDatapath.apply` programs)."""
    plan = IpvsPlan()
    head, sep, restore = rendered.partition("\n*nat\n")
    if not sep:
        raise ValueError("IPVS rendering has no *nat section")
    plan.restore = "*nat\n" + restore
    section = ""
    for line in head.splitlines():
        if line.startswith("*"):
            section = line[1:].split()[0]
            continue
        if not line.strip() or line.startswith("#"):
            continue
        if section == "sysctl":
            k, _, v = line.partition("=")
            plan.sysctls.append((k.strip(), v.strip()))
        elif section == "dummy":
            plan.bind_addresses.append(line.strip())
        elif section == "ipvs":
            if m := _VS_RE.match(line):
                rest = m.group(5)
                pm = re.search(r"persistent (\d+)", rest)
                plan.virtual_servers.append(VirtualServer(
                    m.group(1), m.group(2), int(m.group(3)), m.group(4),
                    persistent_timeout=int(pm.group(1)) if pm else 0,
                    source_hash="flag-1" in rest, bind="not bound" not in rest))
            elif (m := _RS_RE.match(line)) and plan.virtual_servers:
                plan.virtual_servers[-1].real_servers.append(
                    RealServer(m.group(1), int(m.group(2)), int(m.group(3))))
        elif section == "ipset":
            parts = line.split()
            if parts[0] == "add":
                plan.ipset_entries.setdefault(parts[1], []).append(parts[2])
    return plan
