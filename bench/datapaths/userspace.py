"""``userspace``: kube-proxy's deprecated userspace mode, as a baseline.

What upstream's ``pkg/proxy/userspace`` (removed in Kubernetes 1.26)
programmed, rendered for one node:

- a proxy port per service port, on which the node's proxy process
  (:mod:`bench.datapaths.userspace_proxy`, one per node) listens and relays
  to a backend it picks (round robin, ``sessionAffinity: ClientIP``);
- ``nat`` chains ``KUBE-PORTALS-CONTAINER`` (from PREROUTING, first) with
  ``-d <clusterIP> --dport <port> -j REDIRECT --to-ports <proxy port>`` per
  service port, ``KUBE-PORTALS-HOST`` (from OUTPUT) with the same match and
  ``-j DNAT --to-destination <node IP>:<proxy port>``,
  ``KUBE-NODEPORT-CONTAINER`` / ``KUBE-NODEPORT-HOST`` (last in PREROUTING /
  OUTPUT, ``-m addrtype --dst-type LOCAL``) for node ports, and ``filter``
  chain ``KUBE-NODEPORT-NON-LOCAL`` (from INPUT) accepting new connections to
  the proxy ports of node ports; external and load-balancer IPs as upstream.

:meth:`UserspaceDatapath.render` returns ``iptables-restore`` input whose
``# proxy`` comment lines are the proxy's table (iptables-restore skips
them), so one text says everything a sync programs. :meth:`apply` (a full
sync) gives the proxy its whole table first (it opens and closes sockets),
then ensures the base chains and jumps and restores the chains' contents in
one ``iptables-legacy-restore --noflush``. A partial sync
(:meth:`~UserspaceDatapath.render_partial`, :func:`render_delta`) renders only
the changed Services' ports: the proxy gets just their lines (and the ports
that went), which it parses and acts on alone, and ``iptables-restore
--noflush`` deletes and appends just their portal rules, as upstream's
proxier opened and closed the portals of a changed service only. Upstream
ensured every rule with its own ``iptables -C``/``-A`` call, far slower at
scale; kpbench measures this mode for the per-packet cost of crossing into
user space, not for that.

Known differences from the other datapaths, all upstream's behaviour: the
backend sees the node's address, never the client's (the proxy makes its own
connection); ``externalTrafficPolicy`` and ``internalTrafficPolicy`` are
ignored; a service without endpoints accepts the connection and closes it
(the client sees an empty reply, not "connection refused"); only ready
endpoints are used. The proxy is a Python process here, not Go.

The proxies run in the run cgroup ``<prefix>-procs`` (:attr:`process_cgroup`),
so the CPU they spend per packet is measured with the kernel's (the CPU
probe reads the cgroup's ``cpu.stat``) — the cost this mode is measured for.
"""

from __future__ import annotations

import contextlib
import json
import operator
import subprocess
import sys
import weakref
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from bench.cluster import cgroups
from bench.cluster.netns_exec import die_with_parent, netns_argv
from bench.cluster.topology import PREFIX_RE
from bench.datapaths.base import Datapath, NodeContext, held_port_names, same_context
from bench.datapaths.ebpf_maps import IdAllocator
from bench.datapaths.kube_proxy import IptablesTools
from bench.errors import ApplyError, ApplyTimeout, InputError
from bench.model.objects import ServicePortView, view_names

CONTAINER_PORTAL = "KUBE-PORTALS-CONTAINER"
HOST_PORTAL = "KUBE-PORTALS-HOST"
CONTAINER_NODEPORT = "KUBE-NODEPORT-CONTAINER"
HOST_NODEPORT = "KUBE-NODEPORT-HOST"
NON_LOCAL_NODEPORT = "KUBE-NODEPORT-NON-LOCAL"
NAT_CHAINS = (CONTAINER_PORTAL, HOST_PORTAL, CONTAINER_NODEPORT, HOST_NODEPORT)
FILTER_CHAINS = (NON_LOCAL_NODEPORT,)

_PORTAL_COMMENT = "handle ClusterIPs; NOTE: this must be before the NodePort rules"
_NODEPORT_COMMENT = "handle service NodePorts; NOTE: this must be the last rule in the chain"
_NON_LOCAL_COMMENT = "Ensure that non-local NodePort traffic can flow"
# (table, built-in chain, -I or -A, rule) of upstream's iptablesInit, in its order.
JUMPS = (
    ("nat", "PREROUTING", "-I", ["-m", "comment", "--comment", _PORTAL_COMMENT,
                                 "-j", CONTAINER_PORTAL]),
    ("nat", "OUTPUT", "-I", ["-m", "comment", "--comment", _PORTAL_COMMENT, "-j", HOST_PORTAL]),
    ("nat", "PREROUTING", "-A", ["-m", "addrtype", "--dst-type", "LOCAL", "-m", "comment",
                                 "--comment", _NODEPORT_COMMENT, "-j", CONTAINER_NODEPORT]),
    ("nat", "OUTPUT", "-A", ["-m", "addrtype", "--dst-type", "LOCAL", "-m", "comment",
                             "--comment", _NODEPORT_COMMENT, "-j", HOST_NODEPORT]),
    ("filter", "INPUT", "-I", ["-m", "comment", "--comment", _NON_LOCAL_COMMENT,
                               "-j", NON_LOCAL_NODEPORT]),
)
# The userspace proxier predates kube-proxy's wait flags: it waited for the xtables lock
# with a bare -w and ran iptables-restore without one.
TOOLS = IptablesTools("legacy", wait=("-w",), restore_wait=())
# Proxy ports: below the NodePort range (30000-32767) and the ephemeral range the
# proxy's own connections to backends use (32768-60999).
PROXY_PORT_FIRST = 10000
PROXY_PORT_LAST = 29999
PROXY_START_TIMEOUT = 30.0
PROXY_SYNC_TIMEOUT = 300.0


def _common(name: str, protocol: str, port: int, dest: str | None = None,
            physdev: bool = False, dst_local: bool = False) -> str:
    # Upstream's iptablesCommonPortalArgs, in its order.
    proto = protocol.lower()
    args = f'-m comment --comment "{name}" -p {proto} -m {proto} --dport {port}'
    if dest is not None:
        args += f" -d {dest}/32"
    if physdev:
        args += " -m physdev ! --physdev-is-in"
    if dst_local:
        args += " -m addrtype --dst-type LOCAL"
    return args


class _PortRules(NamedTuple):
    """What one service port contributes to a sync: its proxy line and its rules."""

    key: tuple[str, str]  # (port name, protocol): the proxy's key for it
    proxy_line: str
    rules: tuple[tuple[str, str], ...]  # (chain, rule), in chain order
    head: str  # the proxy line up to its endpoints, which come last


_ready = operator.attrgetter("ready")
_address = operator.attrgetter("address")
_rules_of = operator.attrgetter("rules")
_rule_of = operator.itemgetter(1)
_new_part = tuple.__new__  # _PortRules(...) without its Python-level __new__


def _ready_addresses(view: ServicePortView) -> str:
    # The Endpoints API the userspace proxier read lists ready addresses only.
    return ",".join(map(_address, filter(_ready, view.endpoints))) or "-"


# _common's text after the comment, per protocol, up to the port.
_PROTO_ARGS = {"TCP": " -p tcp -m tcp --dport ", "UDP": " -p udp -m udp --dport "}


def _port_rules(view: ServicePortView, ctx: NodeContext, proxy_ports: IdAllocator,
                name: str | None = None) -> _PortRules | None:
    svc, sp = view.service, view.port
    protocol = sp.protocol
    args = _PROTO_ARGS.get(protocol)
    if args is None:
        return None  # the userspace proxier had no SCTP
    node_ips = ctx.node_ips
    host_ip = node_ips[0] if node_ips else "127.0.0.1"
    if name is None:
        name = view.name
    key = (name, protocol)
    pport = (proxy_ports.known.get(key) or proxy_ports(key)) + (PROXY_PORT_FIRST - 1)
    redirect = f" -j REDIRECT --to-ports {pport}"
    dnat = f" -j DNAT --to-destination {host_ip}:{pport}"
    # The ClusterIP portal, as the loop below writes any non-external one (_common's
    # text, written out: every port has one).
    common = f'-m comment --comment "{name}"{args}{sp.port} -d {svc.cluster_ip}/32'
    if not (svc.external_ips or svc.type != "ClusterIP"):
        # The ClusterIP portal alone (most ports).
        held = str(sp.port) if svc.cluster_ip in node_ips else "-"  # a local portal
        affinity = (f"ClientIP:{svc.affinity_timeout}" if svc.session_affinity == "ClientIP"
                    else "None")
        head = (f"# proxy {name} {protocol} port={pport} affinity={affinity} "
                f"claims={held} endpoints=")
        line = head + (",".join(map(_address, filter(_ready, view.endpoints))) or "-")
        return _new_part(_PortRules, (key, line, ((CONTAINER_PORTAL, common + redirect),
                                                  (HOST_PORTAL, common + dnat)), head))
    rules = [(CONTAINER_PORTAL, common + redirect), (HOST_PORTAL, common + dnat)]
    claims = [sp.port] if svc.cluster_ip in node_ips else []  # a local portal holds it
    portals = [(ip, True) for ip in svc.external_ips]
    if svc.type == "LoadBalancer":
        portals += [(ip, False) for ip in svc.load_balancer_ips]
    for ip, external in portals:
        if ip in node_ips:
            claims.append(sp.port)
        common = _common(name, protocol, sp.port, ip, physdev=external)
        rules.append((CONTAINER_PORTAL, common + redirect))
        if external:
            local = _common(name, protocol, sp.port, ip, dst_local=True)
            rules.append((CONTAINER_PORTAL, local + redirect))
            rules.append((HOST_PORTAL, local + dnat))
        else:
            rules.append((HOST_PORTAL, common + dnat))
    if svc.has_node_ports and sp.node_port:
        claims.append(sp.node_port)
        common = _common(name, protocol, sp.node_port)
        rules.append((CONTAINER_NODEPORT, common + redirect))
        rules.append((HOST_NODEPORT, common + dnat))
        rules.append((NON_LOCAL_NODEPORT,
                      f"{_common(name, protocol, pport)} -m state --state NEW -j ACCEPT"))
    affinity = (f"ClientIP:{svc.affinity_timeout}" if svc.session_affinity == "ClientIP"
                else "None")
    held = ",".join(map(str, sorted(set(claims)))) if claims else "-"
    head = (f"# proxy {name} {protocol} port={pport} affinity={affinity} "
            f"claims={held} endpoints=")
    line = head + (",".join(map(_address, filter(_ready, view.endpoints))) or "-")
    return _new_part(_PortRules, (key, line, tuple(rules), head))


@dataclass
class NodeRender:
    """What the renders for one node left behind: each service port's proxy line and
    rules, so a partial sync renders only the changed Services' ports.

    ``generation`` counts the renders; a delta names the generation it starts
    from, so it is only applied to a node holding exactly that state.
    """

    cache: dict[str, tuple[ServicePortView, _PortRules | None]] = field(default_factory=dict)
    ctx: NodeContext | None = None  # the node context every cached part was rendered for
    names: list[str] = field(default_factory=list)  # port order of the last full render
    text: str | None = None  # the last full rendering, while still the current state
    # Service key -> its port names, for the Services partial syncs changed since the
    # last full render; any other Service's ports are those of ``by_service``, the
    # index of the ports that render was handed (objects.PortViews), or none.
    ports_of: dict[str, list[str]] = field(default_factory=dict)
    by_service: dict[str, list[ServicePortView]] | None = None
    full: bool = False  # a full render was made (a partial one has a state to start from)
    generation: int = 0
    rendered_ports: int = 0  # ports the last render built anew (not from the cache)


DELTA_HEADER = "# kpbench userspace proxy delta for "
REMOVE = "# proxy-remove "


def render_rules(ports: Sequence[ServicePortView], ctx: NodeContext,
                 proxy_ports: IdAllocator, state: NodeRender | None = None) -> str:
    """The iptables-restore text (with ``# proxy`` lines) of a full userspace sync.

    ``state``, if given, holds each port's part from earlier renders: a port
    equal to the cached one is not rendered again, and when every port is
    unchanged and in the same order the last rendering is returned as it is.
    """
    state = NodeRender() if state is None else state
    same_context(state, ctx)
    names = view_names(ports)
    parts: list[_PortRules | None]
    cache = state.cache
    if not cache:  # the first render: nothing to look up
        _number_proxy_ports(ports, names, proxy_ports)
        parts = [_port_rules(view, ctx, proxy_ports, name)
                 for view, name in zip(ports, names, strict=True)]
        cache.update(zip(names, zip(ports, parts, strict=True), strict=True))
        fresh = len(parts)
    else:
        parts = []
        fresh = 0
        for view, name in zip(ports, names, strict=True):
            hit = cache.get(name)
            if hit is None or not (hit[0] is view or hit[0] == view):
                hit = cache[name] = (view, _port_rules(view, ctx, proxy_ports))
                fresh += 1
            parts.append(hit[1])
    state.rendered_ports = fresh
    if not fresh and state.text is not None and names == state.names:
        return state.text
    if len(state.cache) > 2 * len(ports) + 64:
        live = set(names)
        for name in [n for n in state.cache if n not in live]:
            del state.cache[name]
    ports_of: dict[str, list[str]] = {}
    index = getattr(ports, "by_service", None)  # objects.PortViews: nothing to build
    if index is None:
        for view, name in zip(ports, names, strict=True):
            ports_of.setdefault(view.service.key, []).append(name)
    rendered = [part for part in parts if part is not None]
    # Most ports have the ClusterIP portal's two rules alone: those go straight to
    # their chains; any other port's rules are sorted into them one by one.
    container: list[str] = []
    host: list[str] = []
    rules = {CONTAINER_PORTAL: container, HOST_PORTAL: host, CONTAINER_NODEPORT: [],
             HOST_NODEPORT: [], NON_LOCAL_NODEPORT: []}
    each = list(map(_rules_of, rendered))
    if rendered and set(map(len, each)) == {2}:
        first, second = zip(*each, strict=True)
        container += map(_rule_of, first)
        host += map(_rule_of, second)
    else:
        for part in rendered:
            for chain, rule in part.rules:
                rules[chain].append(rule)
    lines = [f"# kpbench userspace proxy for {ctx.node_name}: iptables-restore --noflush "
             "input; '# proxy' lines are the proxy's table"]
    lines += [part.proxy_line for part in rendered]
    for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
        lines.append(f"*{table}")
        lines += [f":{c} - [0:0]" for c in chains]
        for c in chains:
            if rules[c]:  # one join per chain, no string per rule in between
                lines.append(f"-A {c} " + f"\n-A {c} ".join(rules[c]))
        lines.append("COMMIT")
    text = "\n".join(lines) + "\n"
    state.names, state.text, state.ports_of = names, text, ports_of
    state.by_service, state.full = index, True
    state.generation += 1
    return text


def _number_proxy_ports(ports: Sequence[ServicePortView], names: list[str],
                        proxy_ports: IdAllocator) -> None:
    """Proxy ports for the TCP and UDP ports among ``ports`` that have none yet, numbered
    in their order as _port_rules would one by one."""
    known = proxy_ports.known
    keys = [k for k in zip(names, map(_protocol_of, map(_port_of, ports)), strict=True)
            if k[1] in _PROTO_ARGS and k not in known]
    if not keys:
        return
    new = list(dict.fromkeys(keys))
    first = len(known) + 1
    room = max(proxy_ports.limit - len(known), 0)
    known.update(zip(new[:room], range(first, first + room), strict=False))
    if len(new) > room:
        proxy_ports(new[room])  # raises: no proxy port left


_protocol_of = operator.attrgetter("protocol")
_port_of = operator.attrgetter("port")


def render_delta(ports: Sequence[ServicePortView], ctx: NodeContext,
                 proxy_ports: IdAllocator, state: NodeRender, changed: Collection[str]) -> str:
    """A partial sync after the Services in ``changed`` (``ns/name``) changed: the proxy
    lines of their changed ports, ``# proxy-remove <name> <protocol>`` for ports gone,
    and ``iptables-restore --noflush`` input deleting (``-D``) their rules that went
    and appending (``-A``) the new ones, as upstream's proxier opened and closed the
    portals of a changed service only. Without a full render to start from, or for
    another node context, this is a full rendering.
    """
    held = state.ctx
    if not state.full or held is None or not (held is ctx or held == ctx):
        return render_rules(ports, ctx, proxy_ports, state)
    state.ctx = ctx
    cache = state.cache
    index = getattr(ports, "by_service", None)  # objects.PortViews: no walk over every port
    if index is not None and len(changed) == 1:
        key = next(iter(changed))
        views = index.get(key, ())
        old_names = held_port_names(state, key)
        if len(views) == 1 and len(old_names) == 1 and views[0].name == old_names[0]:
            # One port changed: when its Service and port are the ones cached, only its
            # endpoints can differ, and they are in its proxy line alone.
            view = views[0]
            was_view, was = cache[old_names[0]]
            if was is not None and (was_view.service is view.service
                                    or was_view.service == view.service) and (
                    was_view.port is view.port or was_view.port == view.port):
                now = _PortRules(was.key, was.head + _ready_addresses(view), was.rules, was.head)
                cache[view.name] = (view, now)
                state.text = None  # the next full render assembles the text again
                start = state.generation
                state.generation += 1
                state.rendered_ports = 1
                header = f"{DELTA_HEADER}{ctx.node_name}: {start} -> {state.generation}\n"
                if now.proxy_line == was.proxy_line:
                    return header
                return f"{header}{now.proxy_line}\n"
    keys = set(changed)
    views = ([v for k in keys for v in index.get(k, ())] if index is not None
             else [v for v in ports if v.service.key in keys])
    old_names = {n for k in keys for n in held_port_names(state, k)}
    old = {p.key: p for n in old_names if n in cache
           for p in (cache[n][1],) if p is not None}
    new_parts = {v.name: _port_rules(v, ctx, proxy_ports) for v in views}
    new = {p.key: p for p in new_parts.values() if p is not None}
    proxy = [p.proxy_line for k, p in new.items()
             if k not in old or old[k].proxy_line != p.proxy_line]
    removed = [f"{REMOVE}{name} {proto}" for name, proto in old if (name, proto) not in new]
    gone = {r for p in old.values() for r in p.rules} - {r for p in new.values() for r in p.rules}
    added = [r for p in new.values() for r in p.rules
             if not any(r in o.rules for o in old.values())]
    for name in old_names - new_parts.keys():
        cache.pop(name, None)
    for key in keys:
        state.ports_of[key] = []  # (hides what by_service says of it)
    for view in views:
        cache[view.name] = (view, new_parts[view.name])
        state.ports_of[view.service.key].append(view.name)
    state.text, state.names = None, []  # the next full render assembles the text again
    start = state.generation
    state.generation += 1
    state.rendered_ports = len(views)
    lines = [f"{DELTA_HEADER}{ctx.node_name}: {start} -> {state.generation}", *proxy, *removed]
    for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
        body = [f"-D {c} {r}" for c, r in sorted(gone) if c in chains]
        body += [f"-A {c} {r}" for c, r in added if c in chains]
        if body:
            lines += [f"*{table}", *body, "COMMIT"]
    return "\n".join(lines) + "\n"


def parse_delta_header(rendered: str) -> tuple[int, int] | None:
    """(from, to) generation of a :func:`render_delta` text; None for a full rendering."""
    if not rendered.startswith(DELTA_HEADER):
        return None
    header = rendered.partition("\n")[0]
    try:
        start, _, end = header.rsplit(": ", 1)[1].partition(" -> ")
        return int(start), int(end)
    except (IndexError, ValueError):
        raise InputError(f"line 1: expected '{DELTA_HEADER}<node>: <from> -> <to>': "
                         f"{header!r}", source="userspace proxy delta") from None


def removed_ports(rendered: str) -> list[list[str]]:
    """[name, protocol] of every ``# proxy-remove`` line of a delta."""
    return [line[len(REMOVE):].split(" ") for line in rendered.splitlines()
            if line.startswith(REMOVE)]


def parse_proxy_table(rendered: str) -> list[dict[str, Any]]:
    """The ``# proxy`` lines of a rendering as the proxy's configuration."""
    services = []
    for line in rendered.splitlines():
        if not line.startswith("# proxy "):
            continue
        _, _, name, protocol, *fields = line.split(" ")
        kv = dict(f.split("=", 1) for f in fields)
        affinity = kv["affinity"]
        services.append({
            "name": name, "protocol": protocol, "proxy_port": int(kv["port"]),
            "endpoints": [] if kv["endpoints"] == "-" else kv["endpoints"].split(","),
            "affinity_timeout": (int(affinity.split(":")[1]) if affinity.startswith("ClientIP")
                                 else None),
            "claims": [] if kv["claims"] == "-" else [int(p) for p in kv["claims"].split(",")],
        })
    return services


def _proxy_preexec(group: Path) -> Callable[[], None]:
    def preexec() -> None:
        die_with_parent()
        # In the run's process cgroup before it runs a line: all its CPU time is counted.
        cgroups.enter_in_child(group)
    return preexec


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        if proc.stdin:
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_all(procs: dict[str, subprocess.Popen[str]], group: list[Path]) -> None:
    for proc in procs.values():
        _stop(proc)
    procs.clear()
    while group:
        cgroups.remove(group.pop())


class UserspaceDatapath(Datapath):
    """iptables portals to one relaying proxy process per node."""

    name = "userspace"
    variants = {"userspace": ("userspace",)}

    def __init__(self) -> None:
        self._proxy_ports = IdAllocator("proxy port", PROXY_PORT_LAST - PROXY_PORT_FIRST + 1)
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._initialised: set[str] = set()
        self._group: list[Path] = []  # the run cgroup of the proxies, once made
        # Per node: each service port's part of a sync, rendered again only when it changed.
        self._renders: dict[str, NodeRender] = {}
        # Per node namespace: the render generation its proxy and rules hold (None: unknown).
        self._generation: dict[str, int | None] = {}
        # Proxies (and their cgroup) go with this object even if nobody calls cleanup().
        weakref.finalize(self, _stop_all, self._procs, self._group)

    @property
    def process_cgroup(self) -> Path | None:
        """The run cgroup every node's proxy process runs in."""
        return self._group[0] if self._group else None

    def _cgroup(self, netns: str) -> Path:
        if not self._group:
            m = PREFIX_RE.match(netns)
            if m is None:
                raise ValueError(f"not a run namespace: {netns}")
            self._group.append(cgroups.create(f"{m.group(1)}-procs"))
        return self._group[0]

    def render(self, ports: Sequence[ServicePortView], ctx: NodeContext) -> str:
        """iptables-restore input for the portal chains plus the proxy's table."""
        return render_rules(ports, ctx, self._proxy_ports,
                            self._renders.setdefault(ctx.node_name, NodeRender()))

    def render_partial(self, ports: Sequence[ServicePortView], ctx: NodeContext,
                       changed: Collection[str]) -> str:
        """The changed Services' proxy lines and portal rules only (:func:`render_delta`)."""
        state = self._renders.get(ctx.node_name)
        if state is None:
            state = self._renders[ctx.node_name] = NodeRender()
        return render_delta(ports, ctx, self._proxy_ports, state, changed)

    def rendered_ports(self, node_name: str) -> int:
        """Service ports the node's last render built anew rather than took from its cache."""
        return self._renders[node_name].rendered_ports

    def state_size(self, rendered: str) -> dict[str, int]:
        lines = rendered.splitlines()
        return {"rules": sum(1 for ln in lines if ln.startswith("-A ")),
                "chains": sum(1 for ln in lines if ln.startswith(":")),
                "proxy_sockets": sum(1 for ln in lines if ln.startswith("# proxy "))}

    def apply(self, rendered: str, netns: str) -> None:
        """Give the node's proxy its whole table, then program the portals."""
        if parse_delta_header(rendered) is not None:
            self.apply_partial(rendered, netns)
            return
        self._generation[netns] = None  # until this sync completes
        self._sync_proxy(netns, {"services": parse_proxy_table(rendered)})
        if netns not in self._initialised:
            self._ensure_base(netns)
            self._initialised.add(netns)
        TOOLS.restore(netns, rendered, "--noflush", timeout=self.apply_timeout)
        self._generation[netns] = next(
            (r.generation for r in self._renders.values()
             if r.text is rendered or r.text == rendered), None)

    def apply_partial(self, rendered: str, netns: str) -> None:
        """Give the proxy only the changed ports (it parses and acts on those alone), then
        delete and append the changed portal rules; a full rendering (what a partial
        render falls back to) is applied as a full sync."""
        span = parse_delta_header(rendered)
        if span is None:
            self.apply(rendered, netns)
            return
        held = self._generation.get(netns)
        proc = self._procs.get(netns)
        if proc is None or proc.poll() is not None:
            held = None  # a new proxy would start with an empty table
        if held != span[0] or netns not in self._initialised:
            raise ApplyError(f"a partial sync of {netns} from generation {span[0]} cannot "
                             f"apply: the node holds {held}; run a full sync first")
        self._generation[netns] = None  # until this sync completes
        update = parse_proxy_table(rendered)
        remove = removed_ports(rendered)
        if update or remove:
            self._sync_proxy(netns, {"update": update, "remove": remove})
        if "\nCOMMIT" in rendered:
            TOOLS.restore(netns, rendered, "--noflush", timeout=self.apply_timeout)
        self._generation[netns] = span[1]

    def _ensure_base(self, netns: str) -> None:
        # Upstream's iptablesInit: EnsureChain, then EnsureRule (check, insert/append).
        for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
            for chain in chains:
                TOOLS.rc(netns, "-t", table, "-N", chain, timeout=None)
        for table, builtin, how, rule in JUMPS:
            if TOOLS.rc(netns, "-t", table, "-C", builtin, *rule, timeout=None) != 0:
                TOOLS.run(netns, "-t", table, how, builtin, *rule)

    def _proxy(self, netns: str) -> subprocess.Popen[str]:
        proc = self._procs.get(netns)
        if proc is not None and proc.poll() is None:
            return proc
        proc = subprocess.Popen(
            netns_argv(netns, [sys.executable, "-m", "bench.datapaths.userspace_proxy",
                               "--netns-file", f"/run/netns/{netns}"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=_proxy_preexec(self._cgroup(netns)))
        self._procs[netns] = proc
        line = self._read_line(proc, PROXY_START_TIMEOUT, netns)
        if line != "ready":
            raise ApplyError(f"userspace proxy in {netns} failed to start: {line or 'no output'}")
        return proc

    def _sync_proxy(self, netns: str, doc: dict[str, Any]) -> None:
        proc = self._proxy(netns)
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(doc) + "\n")
            proc.stdin.flush()
        except OSError as e:
            raise ApplyError(f"userspace proxy in {netns} is gone: {e}") from e
        line = self._read_line(proc, self.apply_timeout or PROXY_SYNC_TIMEOUT, netns)
        if not line.startswith("ok"):
            raise ApplyError(f"userspace proxy in {netns}: {line or 'no answer'}")

    def proxy_table(self, netns: str) -> list[dict[str, Any]]:
        """What the node's proxy holds, in the form of :func:`parse_proxy_table` (sorted
        by name and protocol, endpoints and claims sorted)."""
        proc = self._procs[netns]
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"show": True}) + "\n")
        proc.stdin.flush()
        line = self._read_line(proc, PROXY_SYNC_TIMEOUT, netns)
        if not line.startswith("table "):
            raise ApplyError(f"userspace proxy in {netns}: {line or 'no answer'}")
        return list(json.loads(line[len("table "):]))

    @staticmethod
    def _read_line(proc: subprocess.Popen[str], timeout: float, netns: str) -> str:
        import select

        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            proc.kill()
            raise ApplyTimeout(f"userspace proxy in {netns} did not answer within {timeout:g} s",
                               seconds=timeout)
        return proc.stdout.readline().strip()

    def kill_proxies(self, netns: str | None = None) -> int:
        """SIGKILL the proxy process of node ``netns`` (None: of every node): a proxy that
        dies (the disruption scenario's ``proxy-down``); the node's next :meth:`apply`
        starts a new one. Returns how many were killed."""
        killed = 0
        for ns, proc in self._procs.items():
            if netns is not None and ns != netns:
                continue
            self._generation[ns] = None  # its successor starts empty: a full sync must follow
            if proc.poll() is None:
                proc.kill()
                killed += 1
            proc.wait()
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
            with contextlib.suppress(OSError):
                if proc.stdout:
                    proc.stdout.close()
        return killed

    def release(self) -> None:
        _stop_all(self._procs, self._group)
        self._initialised.clear()
        self._generation.clear()

    def cleanup(self, netns: str) -> None:
        """Stop the node's proxy, unlink the jumps, delete the chains."""
        proc = self._procs.pop(netns, None)
        if proc is not None:
            _stop(proc)
        self._initialised.discard(netns)
        self._generation.pop(netns, None)
        for table, builtin, _, rule in JUMPS:
            if TOOLS.rc(netns, "-t", table, "-C", builtin, *rule, timeout=None) == 0:
                TOOLS.run(netns, "-t", table, "-D", builtin, *rule)
        for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
            for chain in chains:
                TOOLS.rc(netns, "-t", table, "-F", chain, timeout=None)
                TOOLS.rc(netns, "-t", table, "-X", chain, timeout=None)
