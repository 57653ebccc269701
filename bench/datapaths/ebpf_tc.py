"""``ebpf-tc``: Services as an eBPF load balancer at tc, after Cilium's kube-proxy replacement.

Every interface of a node (its underlay ``ul0`` and the pod-facing veths)
gets ``kpb_lb_tc`` (``bpf/lb.c``) at tc clsact ingress. A packet to a
frontend (ClusterIP, NodePort on a node address, external or load-balancer
IP) picks a backend from ``lb4_services`` — at random, or from the ClientIP
affinity map — is translated, tracked in an LRU connection table and
redirected to its egress interface without netfilter; replies are
translated back. NodePort with ``externalTrafficPolicy: Cluster`` SNATs to
the node; ``Local`` keeps the client address and only uses local endpoints.

A sync is map programming (:mod:`bench.datapaths.ebpf_maps`), as an eBPF
kube-proxy replacement does it. A full sync: ``render`` packs every map
entry as the kernel holds it (each service port packed once and cached;
unchanged, the last rendering is returned as it is, and after partial syncs
the whole rendering they kept up to date); ``apply`` reads the four maps back
from the kernel and writes the entries that differ, deleting the ones nothing
wants, with the batch map syscalls (Cilium's agent likewise updates only
frontends that changed and prunes what nothing wants). A partial sync:
``render_partial`` packs only the changed Services' ports and lists the
entries to write and delete against the state the node holds
(:func:`~bench.datapaths.ebpf_maps.render_delta`); ``apply_partial`` writes
and deletes just those. The first apply on a node compiles and loads the programs
(about a second and a half here, included in that first sync) with maps
sized from that rendering; ``state_size`` reports that part as
``program_load_ms``. Readiness and endpoint changes are map updates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

from bench.datapaths import bpf_lb as B
from bench.datapaths import ebpf_maps as M
from bench.datapaths.base import Datapath, NodeContext
from bench.errors import ApplyError
from bench.model.objects import ServicePortView

log = logging.getLogger(__name__)


class EbpfTcDatapath(Datapath):
    """The eBPF service load balancer at tc ingress of every node interface."""

    applies_in_process = True  # bpf() / netlink calls from the harness's thread

    name = "ebpf-tc"
    variants = {"ebpf-tc": ("bcc", "ebpf-tc")}
    program = "lb"  # bpf/lb.c

    def __init__(self) -> None:
        self._backends = M.Backends()
        M.prepare()  # numpy's import: process set-up, not the first render's time
        self._revnat_ids = M.IdAllocator("frontend (reverse-NAT index)", M.MAX_REVNAT)
        # Per node: each service port's entries and the maps' state they make, rendered
        # again only when a port changed.
        self._renders: dict[str, M.NodeRender] = {}
        self._nodes: dict[str, B.LoadedLb] = {}
        # Seconds each node's first apply spent compiling, loading and attaching.
        self.load_seconds: dict[str, float] = {}
        # Entries the last apply wrote and deleted, per node: what a sync really changed.
        self.last_sync: dict[str, dict[str, int]] = {}

    def render(self, ports: Sequence[ServicePortView], ctx: NodeContext) -> M.MapsRendering:
        """Every map entry of a full sync, packed (see :mod:`ebpf_maps`)."""
        return M.render_maps(ports, ctx, self._backends, self._revnat_ids,
                             self._node_render(ctx.node_name))

    def render_partial(self, ports: Sequence[ServicePortView], ctx: NodeContext,
                       changed: Collection[str]) -> M.MapsDelta | M.MapsRendering:
        """The entries to write and delete after the Services in ``changed`` changed: only
        their ports are packed (:func:`ebpf_maps.render_delta`)."""
        return M.render_delta(ports, ctx, self._backends, self._revnat_ids,
                              self._node_render(ctx.node_name), changed)

    def _node_render(self, node_name: str) -> M.NodeRender:
        state = self._renders.get(node_name)  # (no NodeRender made to be thrown away)
        if state is None:
            state = self._renders[node_name] = M.NodeRender()
        return state

    def rendered_entries(self, node_name: str) -> int:
        """Entries the node's last render built anew rather than took from its cache."""
        return self._renders[node_name].rendered_entries

    def state_size(self, rendered: M.MapsRendering | M.MapsDelta) -> dict[str, Any]:
        if isinstance(rendered, M.MapsDelta):
            return rendered.counts()
        counts = rendered.counts()
        # The first sync of a node includes loading the programs: say how much of it.
        return {"frontends": rendered.frontends, "service_entries": counts["svc"],
                "backends": counts["backend"], "reverse_nat": counts["revnat"],
                "affinity_match": counts["match"],
                "program_load_ms": round(1000 * self.one_off_seconds())}

    def apply(self, rendered: M.MapsRendering | M.MapsDelta, netns: str) -> None:
        """Make ``netns``'s maps hold exactly ``rendered`` (loading the programs the first time)."""
        if isinstance(rendered, M.MapsDelta):
            self.apply_partial(rendered, netns)
            return
        if not isinstance(rendered, M.MapsRendering):
            raise ApplyError(f"{self.name} applies what its own render() returns (packed map "
                             f"entries), not a {type(rendered).__name__}")
        node = self._nodes.get(netns)
        if node is None:
            node = self._load(netns, rendered.counts())
        self.last_sync[netns] = node.program(rendered.maps)
        # A node holding a node's latest full rendering can take that node's next delta.
        state = self._renders.get(rendered.node)
        node.generation = (rendered.generation if state is not None
                           and state.generation == rendered.generation else None)

    def apply_partial(self, rendered: M.MapsDelta | M.MapsRendering, netns: str) -> None:
        """Write and delete what a :meth:`render_partial` delta lists; a full rendering
        (what a partial render falls back to) is applied as a full sync."""
        if not isinstance(rendered, M.MapsDelta):
            self.apply(rendered, netns)
            return
        node = self._nodes.get(netns)
        if node is None or node.generation != rendered.start:
            held = "no maps" if node is None else f"generation {node.generation}"
            raise ApplyError(f"a partial sync of {netns} from generation {rendered.start} "
                             f"cannot apply: the node holds {held}; run a full sync first")
        self.last_sync[netns] = node.program_delta(rendered.batches)
        node.generation = rendered.end

    def _load(self, netns: str, counts: dict[str, int]) -> B.LoadedLb:
        B.require_netns(netns)
        start = time.monotonic()
        sizes = B.MapSizes.for_counts(counts)
        bpf = B.compile_lb(self.program, sizes)
        node = B.LoadedLb(netns, bpf, sizes)
        try:
            B.ctypes_sizes_match(bpf)
            self._attach(node)
        except BaseException:
            node.close()
            raise
        self._nodes[netns] = node
        self.load_seconds[netns] = time.monotonic() - start
        return node

    def _attach(self, node: B.LoadedLb) -> None:
        """Attach the tc program to every veth of the node."""
        from bcc import BPF

        fn = B.load_func(node.bpf, "kpb_lb_tc", BPF.SCHED_CLS)
        for ifname in B.node_links(node.netns):
            B.tc_attach(node.netns, ifname, fn)
            node.tc_links.append(ifname)

    def one_off_seconds(self) -> float:
        """Seconds spent compiling, loading and attaching the programs, every node."""
        return sum(self.load_seconds.values())

    def stats(self, netns: str) -> dict[str, int]:
        """What the programs on ``netns`` counted since load (or :meth:`reset_stats`)."""
        return self._nodes[netns].stats()

    def reset_stats(self, netns: str) -> None:
        self._nodes[netns].reset_stats()

    def release(self) -> None:
        for netns in list(self._nodes):
            self.cleanup(netns)

    def cleanup(self, netns: str) -> None:
        """Detach the programs from ``netns`` and free its maps."""
        node = self._nodes.pop(netns, None)
        if node is not None:
            node.close()
