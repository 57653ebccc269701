"""The namespace cluster: underlay, nodes, backend pods and clients (pyroute2).

Every namespace carries the run prefix (``kpb<6 hex>-``), so a run never
touches a name it did not create and ``kpbench clean`` can find leftovers.
The host's own namespace is never modified: veth pairs are created inside a
run namespace with their peer placed straight into another run namespace.

::

    client (eth0 192.168.0.100) ─┐
                                 ├─ br0 192.168.0.1 in <prefix>-ul (underlay, router)
    node-i (ul0 192.168.0.2+i) ──┘
      ├─ p<j> ── pod<i>-<j> (10.<i+1>.x.y/32, default via 10.<i+1>.0.1)
      └─ pc  ── cpod (10.1.0.100, node 0 only: the in-cluster client)

Pods are wired like the CNI ``ptp`` plugin (a /32 per pod, the gateway
address on every node-side veth), so all pod traffic is routed through the
node's netfilter — no bridge on the node, no br_netfilter hairpin issues.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from pyroute2 import NetNS, netns

from bench import interrupts
from bench.cluster import cgroups
from bench.cluster.netlink import in_netns
from bench.cluster.netns_exec import dying_with_parent, run_netns
from bench.errors import FeatureMissing, KpbenchError
from bench.model import layout as L
from bench.model.layout import Layout, PodSpec

log = logging.getLogger(__name__)

PREFIX_RE = re.compile(r"^(kpb[0-9a-f]{6})-")
RUN_DIR = Path("/run/kpbench")
RT_SCOPE_LINK = 253
# Interface names inside a node are unique across the cluster (pods and
# clients use eth0), so tracepoints that only see a device name can tell
# the node's own hops: ul0 to the underlay, p<j> to pod j, pc to the client pod.
NODE_UNDERLAY_IF = "ul0"
CLIENT_POD_IF = "pc"

# Set in every node, like kube-proxy and a CNI would.
NODE_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.conf.all.route_localnet=1",
    "net.ipv4.vs.conntrack=1",
)


def new_prefix() -> str:
    return f"kpb{secrets.token_hex(3)}"


class Cluster:
    """A cluster of namespaces, built on enter and always removed on exit.

    Use as a context manager; ``teardown()`` is idempotent and is also what
    signal handlers and ``kpbench clean`` end up calling.
    """

    def __init__(self, layout: Layout, prefix: str | None = None) -> None:
        self.layout = layout
        self.prefix = prefix or new_prefix()
        self._created: list[str] = []
        self._echo: subprocess.Popen[str] | None = None

    # --- names -------------------------------------------------------------
    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def underlay_ns(self) -> str:
        return self.ns("ul")

    @property
    def client_ns(self) -> str:
        """The external client, on the underlay (NodePort traffic)."""
        return self.ns("client")

    @property
    def client_pod_ns(self) -> str:
        """The in-cluster client, a pod on node 0 (ClusterIP traffic)."""
        return self.ns("cpod")

    def node_ns(self, i: int) -> str:
        return self.ns(f"node{i}")

    def pod_ns(self, pod: PodSpec) -> str:
        return self.ns(pod.name)

    @property
    def node_count(self) -> int:
        return len(self.layout.node_names)

    @property
    def namespaces(self) -> list[str]:
        return list(self._created)

    # --- lifecycle ---------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def build(self) -> None:
        """Create every namespace, link, address and route of the layout."""
        _check_root()
        register_run(self.prefix)
        self._add_ns(self.underlay_ns)
        with in_netns(self.underlay_ns) as ul:
            ul.link("add", ifname="br0", kind="bridge")
            br = ul.link_lookup(ifname="br0")[0]
            # The underlay's router: nodes need a default route, as real ones have, or
            # traffic to a service without rules would fail routing before netfilter's
            # FORWARD hook sees it. It does not forward (ip_forward stays 0).
            ul.addr("add", index=br, address=L.UNDERLAY_GATEWAY, prefixlen=L.UNDERLAY.prefixlen)
            ul.link("set", index=br, state="up")
            self._underlay_member(ul, br, self.client_ns, "c0", L.CLIENT_IP, "eth0")
            for i in range(self.node_count):
                self._underlay_member(ul, br, self.node_ns(i), f"n{i}", L.node_ip(i),
                                      NODE_UNDERLAY_IF)
        for i in range(self.node_count):
            self._node(i)
        self._pod(self.client_pod_ns, 0, CLIENT_POD_IF, L.client_pod_ip())
        for pod in self.layout.pods:
            self._pod(self.pod_ns(pod), pod.node, f"p{pod.index}", pod.ip)

    def teardown(self) -> None:
        """Stop the echo servers and delete every namespace this run made."""
        with interrupts.deferred():
            self._teardown()

    def _teardown(self) -> None:
        if self._echo is not None:
            with contextlib.suppress(ProcessLookupError):
                self._echo.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._echo.wait(timeout=5)
            if self._echo.poll() is None:
                self._echo.kill()
            self._echo = None
        remove_run(self.prefix)
        self._created.clear()

    # --- building blocks ----------------------------------------------------
    def _add_ns(self, name: str) -> None:
        if not PREFIX_RE.match(name):
            raise ValueError(f"refusing to create a namespace without a run prefix: {name}")
        with in_netns(name, create=True) as ns:
            self._created.append(name)
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")

    def _underlay_member(self, ul: NetNS, br: int, name: str, port: str, ip: str,
                         ifname: str) -> None:
        self._add_ns(name)
        with in_netns(name) as ns:
            ns.link("add", ifname=ifname, kind="veth",
                    peer={"ifname": port, "net_ns_fd": self.underlay_ns})
            idx = ns.link_lookup(ifname=ifname)[0]
            ns.addr("add", index=idx, address=ip, prefixlen=L.UNDERLAY.prefixlen)
            ns.link("set", index=idx, state="up")
        pidx = ul.link_lookup(ifname=port)[0]
        ul.link("set", index=pidx, master=br, state="up")

    def _node(self, i: int) -> None:
        run_netns(self.node_ns(i), ["sysctl", "-q", "-e", "-w", *NODE_SYSCTLS])
        with in_netns(self.node_ns(i)) as ns:
            for k in range(self.node_count):
                if k != i:
                    ns.route("add", dst=str(L.pod_cidr(k)), gateway=L.node_ip(k))
            ns.route("add", dst="0.0.0.0/0", gateway=L.UNDERLAY_GATEWAY)

    def _pod(self, name: str, node: int, node_port: str, ip: str) -> None:
        gw = L.pod_gateway(node)
        self._add_ns(name)
        with in_netns(name) as pod:
            pod.link("add", ifname="eth0", kind="veth",
                     peer={"ifname": node_port, "net_ns_fd": self.node_ns(node)})
            idx = pod.link_lookup(ifname="eth0")[0]
            pod.addr("add", index=idx, address=ip, prefixlen=32)
            pod.link("set", index=idx, state="up")
            pod.route("add", dst=f"{gw}/32", oif=idx, scope=RT_SCOPE_LINK)
            pod.route("add", dst="0.0.0.0/0", gateway=gw)
        with in_netns(self.node_ns(node)) as ns:
            idx = ns.link_lookup(ifname=node_port)[0]
            ns.addr("add", index=idx, address=gw, prefixlen=32)
            ns.link("set", index=idx, state="up")
            ns.route("add", dst=f"{ip}/32", oif=idx, scope=RT_SCOPE_LINK)

    # --- backends -----------------------------------------------------------
    def start_echo(self, timeout: float = 30.0) -> None:
        """Start the TCP/UDP echo listeners of every pod (one process for all)."""
        spec = [{"netns": self.pod_ns(p), "name": p.name, "tcp": list(p.tcp_ports),
                 "udp": list(p.udp_ports)} for p in self.layout.pods
                if p.tcp_ports or p.udp_ports]
        if not spec:
            return
        self._echo = subprocess.Popen(
            dying_with_parent([sys.executable, "-m", "bench.cluster.echo"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._echo.stdin is not None and self._echo.stdout is not None
        self._echo.stdin.write(json.dumps(spec))
        self._echo.stdin.close()
        line = self._echo.stdout.readline().strip()
        if line != "ready":
            self.teardown()
            raise KpbenchError(f"echo servers failed to start: {line or 'no output'}")


# --- helpers shared with `kpbench clean` -------------------------------------

def _check_root() -> None:
    if os.geteuid() != 0:
        raise FeatureMissing("building the namespace cluster needs root (CAP_NET_ADMIN, "
                             "CAP_SYS_ADMIN): run as root, e.g. sudo .venv/bin/kpbench ...")


def register_run(prefix: str) -> None:
    """Record this process as the owner of run ``prefix`` (before its first namespace),
    so that `kpbench clean` and other runs never take its namespaces for leftovers."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"{prefix}.pid").write_text(f"{os.getpid()}\n")


def run_owner(prefix: str) -> int | None:
    """The pid of the live process that owns a run, or None if it is gone."""
    try:
        pid = int((RUN_DIR / f"{prefix}.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def run_namespaces() -> dict[str, list[str]]:
    """Namespaces of every kpbench run on this machine, by run prefix."""
    runs: dict[str, list[str]] = {}
    for name in netns.listnetns():
        m = PREFIX_RE.match(name)
        if m:
            runs.setdefault(m.group(1), []).append(name)
    for f in RUN_DIR.glob("kpb*.pid") if RUN_DIR.is_dir() else ():
        runs.setdefault(f.stem, [])
    for cg in _run_cgroups():
        runs.setdefault(cg.name.split("-", 1)[0], [])
    return runs


def _run_cgroups() -> list[Path]:
    """Run-prefixed cgroups (socket load balancing puts the client pod in one)."""
    try:
        root = cgroups.cgroup2_root()
    except FeatureMissing:
        return []
    return [p for p in root.glob("kpb*-*") if cgroups.RUN_CGROUP_RE.match(p.name)]


def remove_run(prefix: str) -> list[str]:
    """Delete every namespace and cgroup of one run (and its pid file); returns what was
    removed."""
    removed = []
    for name in run_namespaces().get(prefix, []):
        with contextlib.suppress(FileNotFoundError, OSError):
            netns.remove(name)
            removed.append(name)
    for cg in _run_cgroups():
        if cg.name.startswith(f"{prefix}-"):
            cgroups.remove(cg)
            removed.append(str(cg))
    with contextlib.suppress(FileNotFoundError):
        (RUN_DIR / f"{prefix}.pid").unlink()
    return removed


def leftovers() -> dict[str, list[str]]:
    """Runs whose owning process is gone but whose namespaces remain."""
    return {p: ns for p, ns in run_namespaces().items() if run_owner(p) is None}
