"""Datapath registry: one class per way of implementing Services on a node.

Each class declares its own facts (:class:`~bench.datapaths.base.Datapath`):
its name, which is the family its results record, its variants with the
kernel features each needs, what it cannot measure, its one-off load cost.
This module only lists the classes; every name list below derives from them.
A new datapath is a module here with its class, added to :data:`CLASSES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bench.datapaths.base import Datapath, NodeContext
from bench.datapaths.direct import DirectDatapath
from bench.datapaths.ebpf_tc import EbpfTcDatapath
from bench.datapaths.iptables import IptablesDatapath
from bench.datapaths.ipvs import IpvsDatapath
from bench.datapaths.kube_proxy import IPTABLES_BACKENDS, check_backend
from bench.datapaths.nftables import NftablesDatapath
from bench.datapaths.socket_lb import SocketLbDatapath
from bench.datapaths.userspace import UserspaceDatapath
from bench.datapaths.xdp import XdpDatapath
from bench.errors import InputError

CLASSES: tuple[type[Datapath], ...] = (
    DirectDatapath, IptablesDatapath, NftablesDatapath, IpvsDatapath, EbpfTcDatapath, XdpDatapath,
    SocketLbDatapath, UserspaceDatapath)
DATAPATH_NAMES = tuple(c.name for c in CLASSES)


def _by_variant() -> Mapping[str, type[Datapath]]:
    # A subclass that forgot to declare its own name or variants inherits its parent's.
    if len(set(DATAPATH_NAMES)) != len(DATAPATH_NAMES):
        raise TypeError(f"two datapath classes share a name: {DATAPATH_NAMES}")
    found: dict[str, type[Datapath]] = {}
    for cls in CLASSES:
        for variant in cls.variants:
            if variant in found:
                raise TypeError(f"variant {variant!r} declared by both {found[variant].__name__} "
                                f"and {cls.__name__}")
            found[variant] = cls
    return MappingProxyType(found)


_CLASS_OF = _by_variant()
#: What scenarios and results call a datapath: every class's variants, in registry order.
VARIANTS: tuple[str, ...] = tuple(_CLASS_OF)
#: The kernel features (:mod:`bench.kernel.features`) each variant needs.
VARIANT_NEEDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {v: cls.variants[v] for v, cls in _CLASS_OF.items()})


def family(variant: str) -> str:
    """The datapath family a variant's results record: its class's name (``ebpf-tc``
    for ``ebpf-tc``, ``iptables`` for ``iptables-nft``)."""
    return _class_of(variant).name


def without_rules(variant: str) -> str | None:
    """Why ``variant`` programs no Service rules (``direct``), or None."""
    return _class_of(variant).without_rules


def make_datapath(name: str, iptables_backend: str = "legacy") -> Datapath:
    """The datapath called ``name``; an unknown name is an InputError listing the known ones."""
    if name == IptablesDatapath.name:
        check_backend(iptables_backend)  # said before anything else about the datapath
    for cls in CLASSES:
        if cls.accepts(name):
            return cls.create(name, iptables_backend)
    raise InputError(f"unknown datapath {name!r}; choose one of {', '.join(DATAPATH_NAMES)}",
                     field="--datapath")


def make_variant(variant: str) -> Datapath:
    """The datapath for a variant name such as ``iptables-nft``."""
    return _class_of(variant).for_variant(variant)


def _class_of(variant: str) -> type[Datapath]:
    cls = _CLASS_OF.get(variant)
    if cls is None:
        raise InputError(f"unknown datapath {variant!r}; choose one of {', '.join(VARIANTS)}",
                         field="datapath")
    return cls


__all__ = ["CLASSES", "DATAPATH_NAMES", "IPTABLES_BACKENDS", "VARIANTS", "VARIANT_NEEDS",
           "Datapath", "NodeContext", "family", "make_datapath", "make_variant",
           "without_rules"]
