"""Datapath registry: one name per way of implementing Services on a node."""

from __future__ import annotations

from bench.datapaths.base import Datapath, NodeContext
from bench.errors import InputError

DATAPATH_NAMES = ("iptables", "nftables")
IPTABLES_BACKENDS = ("legacy", "nft")


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
    raise InputError(f"unknown datapath {name!r}; choose one of {', '.join(DATAPATH_NAMES)}",
                     field="--datapath")


__all__ = ["DATAPATH_NAMES", "IPTABLES_BACKENDS", "Datapath", "NodeContext", "make_datapath"]
