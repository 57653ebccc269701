"""``xdp``: NodePort in XDP on the node's underlay interface, the rest as ``ebpf-tc``.

This is Cilium's NodePort acceleration (``loadBalancer.acceleration=native``):
``kpb_lb_xdp`` (``bpf/lb.c``) runs on ``ul0``, where external traffic
arrives, and handles external frontends (NodePort, external and
load-balancer IPs) and their replies in the driver: the packet is
translated, its MACs set from ``bpf_fib_lookup`` and it leaves with
``XDP_TX`` (a backend on another node, back out the underlay) or
``XDP_REDIRECT`` (a backend pod on this node) without an skb ever being
made. Everything else passes to the stack, where the ``ebpf-tc`` programs
(same maps) handle ClusterIP and whatever XDP could not forward itself
(e.g. a neighbour not resolved yet: tc resolves it with
``bpf_redirect_neigh`` and the next packets stay in XDP).

The XDP mode the kernel granted (native, or generic when the driver refuses
native) is recorded in the point's ``state_size`` (``xdp_mode``,
``xdp_native``). On veth, a frame sent with XDP_TX or XDP_REDIRECT is only
received if the receiving veth runs XDP itself (GRO-only NAPI was tried:
frames XDP_TX'd into a bridge port vanished on 6.18), so the datapath gives
the peers of the node's veths (the underlay port in ``<prefix>-ul`` and each
pod's ``eth0``) ``kpb_xdp_pass``, which passes everything. It also turns
checksum offload off on the underlay port, so frames reach ``ul0`` with
complete checksums as they do off a real wire: a veth otherwise hands over
locally made TCP segments as CHECKSUM_PARTIAL, which an XDP program cannot
see or finish (only real-socket traffic pays for that; replayed frames
carry full checksums anyway). Clean-up restores both. A physical NIC needs
none of this.
"""

from __future__ import annotations

from typing import Any

from bench.cluster.topology import NODE_UNDERLAY_IF
from bench.datapaths import bpf_lb as B
from bench.datapaths.ebpf_tc import EbpfTcDatapath


class XdpDatapath(EbpfTcDatapath):
    """ebpf-tc plus the NodePort fast path in XDP on the underlay interface."""

    name = "xdp"
    # The tc programs too: XDP hands them whatever it does not forward itself.
    variants = {"xdp": ("bcc", "ebpf-tc", "xdp")}
    # ClusterIP takes the tc programs here: measuring it would measure ebpf-tc again.
    not_measured = {"clusterip": "xdp accelerates NodePort only; its ClusterIP path is "
                                 "ebpf-tc's (measured as ebpf-tc)",
                    "sockets-clusterip": "xdp accelerates NodePort only; its ClusterIP path "
                                         "is ebpf-tc's (measured as ebpf-tc)"}

    def __init__(self) -> None:
        super().__init__()
        self.xdp_mode: str | None = None  # what the kernel granted on the last node loaded

    @property
    def variant(self) -> str:
        return f"xdp-{self.xdp_mode}" if self.xdp_mode else self.name

    def state_size(self, rendered: str) -> dict[str, Any]:
        size = super().state_size(rendered)
        size["xdp_mode"] = self.xdp_mode or "not-loaded"
        size["xdp_native"] = int(self.xdp_mode == "native")
        return size

    def _attach(self, node: B.LoadedLb) -> None:
        from bcc import BPF

        super()._attach(node)
        passing = B.load_func(node.bpf, "kpb_xdp_pass", BPF.XDP)
        for ifname in node.tc_links:
            peer = B.veth_peer(node.netns, ifname)
            if peer is None:
                continue
            # A veth receives XDP_TX/XDP_REDIRECT frames only if it runs XDP itself.
            B.xdp_attach(*peer, passing)
            node.xdp_links.append(peer)
            if ifname == NODE_UNDERLAY_IF:
                # The underlay port is the node's wire: it hands over complete checksums,
                # as a frame off a real wire has (XDP cannot finish a CHECKSUM_PARTIAL one).
                node.tuned.append((*peer, B.set_features(*peer, {"tx": False})))
        fn = B.load_func(node.bpf, "kpb_lb_xdp", BPF.XDP)
        node.xdp_mode = B.xdp_attach(node.netns, NODE_UNDERLAY_IF, fn)
        node.xdp_links.append((node.netns, NODE_UNDERLAY_IF))
        self.xdp_mode = node.xdp_mode
