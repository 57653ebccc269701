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
them), so one text says everything a sync programs. :meth:`apply` gives the
proxy its table first (it opens and closes sockets), then ensures the base
chains and jumps and restores the chains' contents in one
``iptables-legacy-restore --noflush``. Upstream ensured every rule with its
own ``iptables -C``/``-A`` call, far slower at scale; kpbench measures this
mode for the per-packet cost of crossing into user space, not for that.

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
import subprocess
import sys
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.cluster import cgroups
from bench.cluster.netns_exec import die_with_parent, netns_argv
from bench.cluster.topology import PREFIX_RE
from bench.datapaths.base import Datapath, NodeContext
from bench.datapaths.ebpf_maps import IdAllocator
from bench.datapaths.kube_proxy import IptablesTools
from bench.errors import ApplyError, ApplyTimeout
from bench.model.objects import ServicePortView

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


def render_rules(ports: Sequence[ServicePortView], ctx: NodeContext,
                 proxy_ports: IdAllocator) -> str:
    """The iptables-restore text (with ``# proxy`` lines) of a full userspace sync."""
    host_ip = ctx.node_ips[0] if ctx.node_ips else "127.0.0.1"
    rules: dict[str, list[str]] = {c: [] for c in (*NAT_CHAINS, *FILTER_CHAINS)}
    proxy_lines: list[str] = []
    for view in ports:
        svc, sp = view.service, view.port
        if sp.protocol not in ("TCP", "UDP"):
            continue  # the userspace proxier had no SCTP
        pport = PROXY_PORT_FIRST - 1 + proxy_ports(f"{view.name}/{sp.protocol}")
        name = view.name
        redirect = f"-j REDIRECT --to-ports {pport}"
        dnat = f"-j DNAT --to-destination {host_ip}:{pport}"
        portals = [(svc.cluster_ip, False)]
        portals += [(ip, True) for ip in svc.external_ips]
        if svc.type == "LoadBalancer":
            portals += [(ip, False) for ip in svc.load_balancer_ips]
        claims = []
        for ip, external in portals:
            if ip in ctx.node_ips:
                claims.append(sp.port)  # a portal on a local address holds that port
            common = _common(name, sp.protocol, sp.port, ip, physdev=external)
            rules[CONTAINER_PORTAL].append(f"{common} {redirect}")
            if external:
                local = _common(name, sp.protocol, sp.port, ip, dst_local=True)
                rules[CONTAINER_PORTAL].append(f"{local} {redirect}")
                rules[HOST_PORTAL].append(f"{local} {dnat}")
            else:
                rules[HOST_PORTAL].append(f"{common} {dnat}")
        if svc.has_node_ports and sp.node_port:
            claims.append(sp.node_port)
            common = _common(name, sp.protocol, sp.node_port)
            rules[CONTAINER_NODEPORT].append(f"{common} {redirect}")
            rules[HOST_NODEPORT].append(f"{common} {dnat}")
            rules[NON_LOCAL_NODEPORT].append(
                f"{_common(name, sp.protocol, pport)} -m state --state NEW -j ACCEPT")
        # The Endpoints API the userspace proxier read lists ready addresses only.
        eps = ",".join(e.address for e in view.endpoints if e.ready) or "-"
        affinity = (f"ClientIP:{svc.affinity_timeout}" if svc.session_affinity == "ClientIP"
                    else "None")
        proxy_lines.append(f"# proxy {name} {sp.protocol} port={pport} affinity={affinity} "
                           f"claims={','.join(map(str, sorted(set(claims)))) or '-'} "
                           f"endpoints={eps}")
    lines = [f"# kpbench userspace proxy for {ctx.node_name}: iptables-restore --noflush "
             "input; '# proxy' lines are the proxy's table", *proxy_lines]
    for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
        lines.append(f"*{table}")
        lines += [f":{c} - [0:0]" for c in chains]
        lines += [f"-A {c} {r}" for c in chains for r in rules[c]]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


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
        return render_rules(ports, ctx, self._proxy_ports)

    def state_size(self, rendered: str) -> dict[str, int]:
        lines = rendered.splitlines()
        return {"rules": sum(1 for ln in lines if ln.startswith("-A ")),
                "chains": sum(1 for ln in lines if ln.startswith(":")),
                "proxy_sockets": sum(1 for ln in lines if ln.startswith("# proxy "))}

    def apply(self, rendered: str, netns: str) -> None:
        """Give the node's proxy its table, then program the portals."""
        self._sync_proxy(netns, parse_proxy_table(rendered))
        if netns not in self._initialised:
            self._ensure_base(netns)
            self._initialised.add(netns)
        TOOLS.restore(netns, rendered, "--noflush", timeout=self.apply_timeout)

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

    def _sync_proxy(self, netns: str, services: list[dict[str, Any]]) -> None:
        proc = self._proxy(netns)
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps({"services": services}) + "\n")
            proc.stdin.flush()
        except OSError as e:
            raise ApplyError(f"userspace proxy in {netns} is gone: {e}") from e
        line = self._read_line(proc, self.apply_timeout or PROXY_SYNC_TIMEOUT, netns)
        if not line.startswith("ok"):
            raise ApplyError(f"userspace proxy in {netns}: {line or 'no answer'}")

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

    def cleanup(self, netns: str) -> None:
        """Stop the node's proxy, unlink the jumps, delete the chains."""
        proc = self._procs.pop(netns, None)
        if proc is not None:
            _stop(proc)
        self._initialised.discard(netns)
        for table, builtin, _, rule in JUMPS:
            if TOOLS.rc(netns, "-t", table, "-C", builtin, *rule, timeout=None) == 0:
                TOOLS.run(netns, "-t", table, "-D", builtin, *rule)
        for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS)):
            for chain in chains:
                TOOLS.rc(netns, "-t", table, "-F", chain, timeout=None)
                TOOLS.rc(netns, "-t", table, "-X", chain, timeout=None)
