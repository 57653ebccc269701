"""The one small interface every datapath implements, and the facts it declares.

A datapath *renders* what it would program from plain data (no root, no
kernel), and *applies* a rendering inside one network namespace the run
created. Rendering and applying are separate so rules can be diffed and
golden-tested, and so sync timing can split render time from apply time.

Each datapath class also states, in one place, what the rest of kpbench
needs to know about it: its ``name`` (the family results record), its
``variants`` (the names scenarios use) with the kernel features each needs
(:mod:`bench.kernel.features`), the targets it cannot measure and why
(``not_measured``), and its one-off load cost (:meth:`Datapath.one_off_seconds`).
The registry (:mod:`bench.datapaths`), ``kpbench doctor`` and the runner read
these; none of them keeps its own list.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from bench.cluster.netns_exec import netns_argv
from bench.errors import ApplyError, ApplyTimeout, InputError
from bench.model.objects import ServicePortView

# What render() returns and apply() takes: the text a tool reads (iptables-restore and
# nft input, IPVS records), or a datapath's own form whose str() is that text (the eBPF
# datapaths' map entries, packed as the kernel holds them).
Rendering = Any


@dataclass(frozen=True)
class NodeContext:
    """What a node's proxy knows about itself (kube-proxy's flags and node info)."""

    node_name: str
    node_ips: tuple[str, ...]
    cluster_cidr: str  # pod CIDR of the cluster, kube-proxy's --cluster-cidr
    masquerade_bit: int = 14  # --iptables-masquerade-bit: mark 0x4000
    # kube-proxy's --nodeport-addresses. Empty means the mode's default: every local
    # address for iptables, the node's primary IP for nftables.
    nodeport_addresses: tuple[str, ...] = field(default=())
    # The cluster's service CIDRs (ServiceCIDR objects); nftables mode drops traffic
    # to unallocated ClusterIPs in them. Empty: that rule is not written.
    service_cidrs: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Network(self.cluster_cidr, strict=False)
        except ValueError:
            raise InputError(
                f"cluster CIDR {self.cluster_cidr!r} is not an IPv4 network (e.g. 10.0.0.0/8)",
                field="--cluster-cidr",
            ) from None
        for cidr in self.service_cidrs:
            try:
                ipaddress.IPv4Network(cidr, strict=False)
            except ValueError:
                raise InputError(f"service CIDR {cidr!r} is not an IPv4 network "
                                 "(e.g. 172.30.0.0/16)", field="--service-cidr") from None
        for ip in self.node_ips:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise InputError(
                    f"node IP {ip!r} is not an IPv4 address (e.g. 192.168.0.2)",
                    field="--node-ip",
                ) from None


class Datapath(ABC):
    """One way of implementing Services on a node."""

    # The datapath's name as ``--datapath`` takes it, and the family every result of its
    # variants records (e.g. "iptables" for iptables-legacy and iptables-nft).
    name: ClassVar[str]
    # The variants a scenario names, each with the features of bench.kernel.features it
    # needs (a variant runs only where every one of them works).
    variants: ClassVar[Mapping[str, tuple[str, ...]]]
    # Measurement targets this datapath cannot act on, with the reason recorded as the
    # point's "not applicable" error: replayed frames to "clusterip" or "nodeport", socket
    # workloads to "sockets-clusterip" or "sockets-nodeport".
    not_measured: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # Why this datapath programs no Service rules (``direct``, the rules-free reference):
    # its syncs are then recorded "not applicable" with this reason, not as a fast sync,
    # and its socket points measure the backend pods' own addresses. None: it programs them.
    without_rules: ClassVar[str | None] = None
    # Longest an apply may take before its tool is stopped (ApplyTimeout); the runner
    # sets it from the scenario's per-point limit. None: no limit.
    apply_timeout: float | None = None
    # True when apply() programs the kernel from the harness's own thread (netlink or
    # bpf() calls) rather than through a tool process: sync timing then traces the
    # applying thread's system calls.
    applies_in_process: bool = False

    @classmethod
    def create(cls, name: str, iptables_backend: str = "legacy") -> Datapath:
        """The datapath for ``--datapath name`` (one of :meth:`accepts`'s names)."""
        return cls()

    @classmethod
    def accepts(cls, name: str) -> bool:
        """Whether ``--datapath name`` means this datapath."""
        return name == cls.name

    @classmethod
    def for_variant(cls, variant: str) -> Datapath:
        """The datapath a scenario's ``variant`` (one of :attr:`variants`) measures."""
        return cls.create(cls.name)

    @property
    def variant(self) -> str:
        """The datapath's own variant, recorded with every result (e.g. ``iptables-nft``)."""
        return self.name

    def one_off_seconds(self) -> float:
        """Seconds the syncs so far spent on one-off set-up that does not grow with the
        Services (compiling and loading BPF programs); 0 for a datapath without any."""
        return 0.0

    def client_cgroup(self) -> Path | None:
        """The cgroup a client pod's processes must run in for this datapath to serve them
        (socket load balancing); None: any process of the pod is served."""
        return None

    @abstractmethod
    def render(self, ports: Sequence[ServicePortView], ctx: NodeContext) -> Rendering:
        """What a full sync would program, as the text (or listing) that gets applied."""

    @abstractmethod
    def apply(self, rendered: Rendering, netns: str) -> None:
        """Program ``rendered`` inside the named network namespace (never the host's)."""

    def render_partial(self, ports: Sequence[ServicePortView], ctx: NodeContext,
                       changed: Collection[str]) -> Rendering:
        """A partial sync after the Services in ``changed`` (``ns/name``) changed.

        ``ports`` is the whole current state. Datapaths without a partial mode
        render a full sync (the default).
        """
        return self.render(ports, ctx)

    def apply_partial(self, rendered: Rendering, netns: str) -> None:
        """Program a :meth:`render_partial` result (default: like a full sync)."""
        self.apply(rendered, netns)

    def transaction_seconds(self) -> list[float]:
        """Seconds of each transaction of the last apply, for a datapath that splits a
        sync into several (chunked nftables); empty: not split, or not measured."""
        return []

    def forget(self, node: str) -> None:  # noqa: B027 - optional hook
        """``node``'s programmed state was removed (:meth:`cleanup`): its next render
        starts from nothing, as on a cold start (default: nothing is kept per node)."""

    def list_state(self, netns: str, full: bool) -> bool:
        """Read back from the kernel what the agent reads on a sync (``full``: a full
        sync), as its own step; False: this datapath's agent reads nothing."""
        return False

    @property
    def process_cgroup(self) -> Path | None:
        """The run cgroup holding every process this datapath runs on the packet path
        (a userspace proxy), whose CPU time counts in the CPU per packet; None: none."""
        return None

    def state_size(self, rendered: Rendering) -> dict[str, int]:
        """Size of the programmed state (rules, chains, map elements) for a rendering."""
        return {}

    def cleanup(self, netns: str) -> None:  # noqa: B027 - optional hook
        """Remove everything this datapath programmed in ``netns``."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Free what this process holds for the nodes (BPF programs and maps, proxy
        processes) when their namespaces are about to be deleted; rules inside the
        namespaces go with them, so nothing there is undone one by one."""


_TOOL_OBSERVERS: list[Callable[[int], None]] = []


@contextlib.contextmanager
def watching_tools(observe: Callable[[int], None]) -> Iterator[None]:
    """Call ``observe(pid)`` for every tool :func:`run_in_netns` starts in the block.

    Sync measurements use it to trace the applying process's system calls.
    """
    _TOOL_OBSERVERS.append(observe)
    try:
        yield
    finally:
        _TOOL_OBSERVERS.remove(observe)


def run_in_netns(netns: str, argv: Sequence[str], stdin: str | None = None,
                 timeout: float | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool inside ``netns``.

    With ``check`` a non-zero exit raises ApplyError carrying the tool's own
    first line of error; without it the caller reads ``returncode`` (for
    tools whose exit status is an answer, like ``iptables -C``). Exceeding
    ``timeout`` stops the tool and raises ApplyTimeout.
    """
    # `ip netns exec` execs the tool in the same process: its pid is the tool's.
    cmd = netns_argv(netns, argv)
    try:
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise ApplyError(f"{argv[0]} is not installed: run scripts/setup.sh") from None
    with child:
        for observe in _TOOL_OBSERVERS:
            observe(child.pid)
        try:
            out, err = child.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise ApplyTimeout(f"{argv[0]} in {netns} did not finish within {timeout:g} s",
                               seconds=timeout or 0.0) from None
        except BaseException:
            child.kill()
            raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    if check and proc.returncode != 0:
        first = first_error_line(proc.stderr or proc.stdout) or f"exit code {proc.returncode}"
        raise ApplyError(f"{argv[0]} failed in {netns}: {first}")
    return proc


# Notices tools print before their real error (iptables-legacy-restore: "Ignoring
# deprecated --wait-interval option."), which would otherwise be all an error said.
_NOTICE = ("Ignoring deprecated ", "Warning: ")


def held_port_names(state: Any, key: str) -> list[str]:
    """The names of Service ``key``'s ports in a node's rendered state (a datapath's
    ``NodeRender``: ``ports_of``, what its partial syncs changed, over ``by_service``,
    the index of the views it was handed)."""
    got = state.ports_of.get(key)
    if got is None:
        index = state.by_service
        got = [v.name for v in index.get(key, ())] if index is not None else []
    return got


def same_context(state: Any, ctx: Any) -> bool:
    """Whether a node's rendered state (a datapath's ``NodeRender``: ``ctx``, ``cache``)
    was rendered for node context ``ctx`` (or for none yet); else its cached ports are
    dropped, to be rendered again. ``ctx`` becomes the state's context either way."""
    held = state.ctx
    if held is ctx:
        return True
    state.ctx = ctx
    if held is None or held == ctx:
        return True
    state.cache.clear()
    return False


def first_error_line(output: str) -> str:
    """The first line of a tool's output that is not one of its routine notices."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    return next((ln for ln in lines if not ln.startswith(_NOTICE)), lines[0] if lines else "")
