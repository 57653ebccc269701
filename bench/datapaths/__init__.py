"""Datapath registry: one name per way of implementing Services on a node."""

from __future__ import annotations

import importlib

from bench.datapaths.base import Datapath, NodeContext
from bench.errors import InputError

DATAPATH_NAMES = ("iptables", "nftables", "ipvs", "ebpf-tc", "xdp", "socket-lb", "userspace")
IPTABLES_BACKENDS = ("legacy", "nft")
# What scenarios and results call a datapath: its name plus its own variant.
VARIANTS: dict[str, tuple[str, str]] = {
    "iptables-legacy": ("iptables", "legacy"),
    "iptables-nft": ("iptables", "nft"),
    "nftables": ("nftables", "legacy"),
    "ipvs": ("ipvs", "legacy"),  # scheduler rr; `--datapath ipvs-<scheduler>` picks another
    "ebpf-tc": ("ebpf-tc", "legacy"),
    "xdp": ("xdp", "legacy"),
    "socket-lb": ("socket-lb", "legacy"),
    "userspace": ("userspace", "legacy"),
}


def make_datapath(name: str, iptables_backend: str = "legacy") -> Datapath:
    """The datapath called ``name``; an unknown name is an InputError listing the known ones."""
    if name == "iptables":
        if iptables_backend not in IPTABLES_BACKENDS:
            raise InputError(f"unknown iptables backend {iptables_backend!r}; choose one of "
                             f"{', '.join(IPTABLES_BACKENDS)}", field="--iptables-backend")
        from bench.datapaths.iptables import IptablesDatapath

        return IptablesDatapath(backend=iptables_backend)
    if name == "nftables":
        from bench.datapaths.nftables import NftablesDatapath

        return NftablesDatapath()
    if name == "ipvs" or name.startswith("ipvs-"):
        from bench.datapaths.ipvs import IpvsDatapath

        return IpvsDatapath(name.partition("-")[2] or "rr", iptables_backend=iptables_backend)
    if name in _OTHERS:
        module, cls = _OTHERS[name]
        datapath: Datapath = getattr(importlib.import_module(f"bench.datapaths.{module}"), cls)()
        return datapath
    raise InputError(f"unknown datapath {name!r}; choose one of {', '.join(DATAPATH_NAMES)}",
                     field="--datapath")


# Datapaths without a backend choice: (module, class), imported only when asked for.
_OTHERS = {"ebpf-tc": ("ebpf_tc", "EbpfTcDatapath"), "xdp": ("xdp", "XdpDatapath"),
           "socket-lb": ("socket_lb", "SocketLbDatapath"),
           "userspace": ("userspace", "UserspaceDatapath")}


def make_variant(variant: str) -> Datapath:
    """The datapath for a variant name such as ``iptables-nft``."""
    if variant not in VARIANTS:
        raise InputError(f"unknown datapath {variant!r}; choose one of {', '.join(VARIANTS)}",
                         field="datapath")
    return make_datapath(*VARIANTS[variant])


__all__ = ["DATAPATH_NAMES", "IPTABLES_BACKENDS", "VARIANTS", "Datapath", "NodeContext",
           "make_datapath", "make_variant"]
