"""The map entries of kpbench's eBPF datapaths, packed as the kernel holds them.

A sync of an eBPF datapath is map programming, as in Cilium: the frontends
of every service port (its ClusterIP, its NodePort on each node address,
its external and load-balancer IPs) go into ``lb4_services`` with one
entry per backend slot (slot 0 holds the count), the backends into
``lb4_backends``, the frontend each reply is rewritten to into
``lb4_reverse_nat``, and the backends a ClientIP-affinity entry may still
point to into ``lb4_affinity_match`` (see ``bpf/lb4.h``).

:func:`render_maps` builds them as the bytes of the C structs, map by map
(key bytes -> value bytes), ready to be handed to the kernel: an eBPF agent
has no text between its model and its maps, so neither does this render, and
the apply only compares and writes. Each service port is packed once and
kept while the port and its endpoints are unchanged, as the iptables and
nftables renderers keep their text. ``str()`` of a rendering is its text,
one entry per line, ``<map> <key> <value>``, in a stable order so two
renderings diff cleanly (``kpbench render`` prints it)::

    svc 172.30.0.10:80/TCP#0 count=2 revnat=1 flags=- timeout=0
    svc 172.30.0.10:80/TCP#1 backend=1
    svc 172.30.0.10:80/TCP#2 backend=2
    backend 1 10.1.1.1:8080/TCP
    revnat 1 172.30.0.10:80
    match 1/3 1

Nothing here needs root.

Which backends a frontend gets follows kube-proxy's traffic policies:
ClusterIP uses the cluster endpoints (local ones with
``internalTrafficPolicy: Local``), external frontends the cluster endpoints
with SNAT to the node (``externalTrafficPolicy: Cluster``) or the local ones
keeping the client address (``Local``). A service with no usable endpoint
at all rejects (ICMP port unreachable); one whose policy leaves this node
without endpoints drops, as kube-proxy does. SCTP ports are not rendered:
the programs handle TCP and UDP only.
"""

from __future__ import annotations

import functools
import operator
import socket
import struct
import sys
from collections import _count_elements as count_ids  # Counter.update's C loop
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, islice, repeat
from typing import Any, NamedTuple

from bench.datapaths.base import NodeContext, held_port_names, same_context
from bench.errors import ApplyError, InputError
from bench.model.objects import ServiceEndpoint, ServicePortView, sorted_endpoints, view_names

# Flags of a frontend (lb4_service.flags); the same values as SVC_F_* in bpf/lb4.h.
SVC_F_AFFINITY = 0x1
SVC_F_SNAT = 0x2
SVC_F_DROP = 0x4
SVC_F_EXTERNAL = 0x8
FLAG_NAMES = {SVC_F_AFFINITY: "affinity", SVC_F_SNAT: "snat", SVC_F_DROP: "drop",
              SVC_F_EXTERNAL: "external"}
PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
PROTO_NAMES = {n: p for p, n in PROTO_NUMBERS.items()}

# Rendering name -> kernel map name (bpf/lb4.h), in the order a sync writes them:
# what a frontend points to exists before the frontend does.
MAPS = {"backend": "lb4_backends", "revnat": "lb4_reverse_nat",
        "match": "lb4_affinity_match", "svc": "lb4_services"}

# Struct layouts of bpf/lb4.h (native byte order, addresses and ports in network order).
_SVC_KEY = struct.Struct("=4sHHB3x")  # lb4_key
_SVC_VALUE = struct.Struct("=IIHHB3x")  # lb4_service
_BACKEND_KEY = struct.Struct("=I")
_BACKEND_VALUE = struct.Struct("=4sHBx")  # lb4_backend
_REVNAT_KEY = struct.Struct("=H")
_REVNAT_VALUE = struct.Struct("=4sHxx")  # lb4_reverse_nat
_MATCH_KEY = struct.Struct("=IHxx")  # lb4_affinity_match
_MATCH_VALUE = struct.Struct("=B")
LAYOUTS = {"svc": (_SVC_KEY, _SVC_VALUE), "backend": (_BACKEND_KEY, _BACKEND_VALUE),
           "revnat": (_REVNAT_KEY, _REVNAT_VALUE), "match": (_MATCH_KEY, _MATCH_VALUE)}
_MATCH_ONE = _MATCH_VALUE.pack(1)

MAX_REVNAT = 0xFFFF  # lb4_service.rev_nat_index is a u16
MAX_BACKEND_ID = 0xFFFFFFFF

Maps = dict[str, dict[bytes, bytes]]  # rendering name -> packed key -> packed value
Entries = dict[tuple[str, str], str]  # (map, key) -> value, as the text shows them


class Frontend(NamedTuple):
    """One address:port/protocol that leads to a service port's backends."""

    address: str
    port: int
    protocol: str
    backends: tuple[ServiceEndpoint, ...]
    flags: int
    affinity_timeout: int

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}/{self.protocol}"


def frontends(view: ServicePortView, ctx: NodeContext) -> list[Frontend]:
    """The frontends of one service port on ``ctx``'s node (see the module doc)."""
    svc, sp = view.service, view.port
    if sp.protocol not in PROTO_NUMBERS:
        return []
    affinity = svc.session_affinity == "ClientIP"
    base = SVC_F_AFFINITY if affinity else 0
    timeout = svc.affinity_timeout if affinity else 0
    cluster = view.cluster_endpoints
    any_endpoint = bool(cluster)
    ordered: dict[bool, tuple[ServiceEndpoint, ...]] = {}  # local? -> its endpoints, sorted

    def frontend(address: str, port: int, local: bool, external: bool) -> Frontend:
        eps = ordered.get(local)
        if eps is None:
            eps = ordered[local] = sorted_endpoints(view.local_endpoints if local else cluster)
        flags = base | (SVC_F_EXTERNAL if external else 0)
        if external and not local:
            flags |= SVC_F_SNAT
        if not eps and any_endpoint:
            flags |= SVC_F_DROP
        return Frontend(address, port, sp.protocol, eps, flags, timeout)

    out = [frontend(svc.cluster_ip, sp.port, svc.internal_traffic_policy == "Local", False)]
    if not (svc.external_ips or svc.type != "ClusterIP"):
        return out
    local = svc.external_policy_local
    for ip in svc.external_ips:
        out.append(frontend(ip, sp.port, local, True))
    if svc.type == "LoadBalancer":
        for ip in svc.load_balancer_ips:
            out.append(frontend(ip, sp.port, local, True))
    if svc.has_node_ports and sp.node_port:
        for ip in ctx.node_ips:
            out.append(frontend(ip, sp.node_port, local, True))
    return out


class IdAllocator:
    """Stable numeric ids for backends and frontends across syncs, as Cilium's agent keeps.

    An id is never reused while this allocator lives, so a connection-tracking
    entry of a removed backend can never lead to a new one; adding a service
    leaves every other entry unchanged (a small diff, a small one-change sync).
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.known: dict[Hashable, int] = {}  # key -> its id (read-only for callers)

    def __call__(self, key: Hashable) -> int:
        got = self.known.get(key)
        if got is None:
            got = len(self.known) + 1
            if got > self.limit:
                raise InputError(f"more than {self.limit} {self.name} ids were needed; the "
                                 "map field holding them is too small for this many")
            self.known[key] = got
        return got


# --- packing ------------------------------------------------------------------------------

_NATIVE = sys.byteorder
_SLOT_ZERO = bytes(12)  # lb4_service after a slot's backend id: no count, revnat or flags


class Backends:
    """Stable backend ids (never reused, as :class:`IdAllocator`'s) and each backend's
    packed lb4_backend, made once per address and protocol and shared by every
    frontend and node that names it."""

    def __init__(self, limit: int = MAX_BACKEND_ID) -> None:
        self.limit = limit
        self.ids: dict[str, dict[str, int]] = {p: {} for p in PROTO_NUMBERS}  # "ip:port"
        self.values: list[bytes] = [b""]  # lb4_backend by id (0 is no backend)

    def of(self, eps: Sequence[ServiceEndpoint], proto: str) -> tuple[int, ...]:
        """The ids of ``eps`` (backends of protocol ``proto``), new ones made."""
        ids = self.ids[proto]
        got = [ids.get(ep.address) for ep in eps]
        if None not in got:
            return tuple(got)  # type: ignore[arg-type]
        new = [ep for ep, bid in zip(eps, got, strict=True) if bid is None]
        values, first, pad = self.values, len(self.values), _PROTO_PAD[proto]
        values += [socket.inet_aton(ep.ip) + ep.port.to_bytes(2, "big") + pad for ep in new]
        ids.update(zip([ep.address for ep in new], range(first, len(values)), strict=True))
        got = [ids[ep.address] if bid is None else bid
               for ep, bid in zip(eps, got, strict=True)]
        if len(values) - 1 > self.limit:
            raise InputError(f"more than {self.limit} backend ids were needed; the map "
                             "field holding them is too small for this many")
        return tuple(got)  # type: ignore[arg-type]


# lb4_backend after the address and port: the protocol, then padding.
_PROTO_PAD = {p: bytes([n, 0]) for p, n in PROTO_NUMBERS.items()}
# lb4_key after the address and port, per protocol: slot (u16), protocol, padding.
_SLOT_TAILS: dict[int, list[bytes]] = {n: [struct.pack("=HB3x", 0, n)]
                                        for n in PROTO_NUMBERS.values()}


def _slot_tails(proto: int, n: int) -> list[bytes]:
    tails = _SLOT_TAILS[proto]
    if len(tails) <= n:
        tails += [struct.pack("=HB3x", slot, proto) for slot in range(len(tails), 2 * n + 16)]
    return tails


class _Fe(NamedTuple):
    """One frontend as the numbers its entries are packed from (a service port's cached
    render): both packers below take these."""

    key: bytes  # its slot 0's lb4_key: the frontend's identity in lb4_services
    head: bytes  # its address and port (network order), as lb4_key begins
    proto: int
    flags: int
    timeout: int
    revnat: int
    backends: tuple[int, ...]  # the backend id of each slot


def _port_frontends(view: ServicePortView, ctx: NodeContext, backends: Backends,
                    revnat_ids: IdAllocator) -> tuple[_Fe, ...]:
    out = []
    for fe in frontends(view, ctx):
        num = PROTO_NUMBERS[fe.protocol]
        head = socket.inet_aton(fe.address) + fe.port.to_bytes(2, "big")
        key = head + _SLOT_TAILS[num][0]
        out.append(_Fe(key, head, num, fe.flags, fe.affinity_timeout, revnat_ids(key),
                       backends.of(fe.backends, fe.protocol)))
    return tuple(out)


class _Packed(NamedTuple):
    """One frontend's entries, packed: its ``svc`` entries and what they point to."""

    svc: dict[bytes, bytes]  # lb4_key -> lb4_service of slots 0..count
    backends: tuple[tuple[bytes, bytes], ...]  # (id, lb4_backend) of each slot's backend
    revnat: tuple[bytes, bytes]
    matches: tuple[bytes, ...]  # lb4_affinity_match keys (value 1)


def _pack(fe: _Fe, backends: Backends) -> _Packed:
    """One frontend's entries, packed in Python (a partial sync's few frontends;
    :func:`_pack_all` packs a full sync's, to the same bytes)."""
    n = len(fe.backends)
    ids = [b.to_bytes(4, _NATIVE) for b in fe.backends]
    rev = fe.revnat.to_bytes(2, _NATIVE)
    svc = dict(zip(map(fe.head.__add__, _slot_tails(fe.proto, n)[:n + 1]),
                   [_SVC_VALUE.pack(0, fe.timeout, n, fe.revnat, fe.flags),
                    *[k + _SLOT_ZERO for k in ids]], strict=True))
    values = backends.values
    return _Packed(svc, tuple(zip(ids, [values[b] for b in fe.backends], strict=True)),
                   (rev, fe.head + b"\0\0"),
                   tuple([k + rev + b"\0\0" for k in ids]) if fe.flags & SVC_F_AFFINITY else ())


def numpy() -> Any:
    """The numpy module, imported on first use (see :func:`_records`)."""
    return _records()[0]


def prepare() -> None:
    """Import what a full render packs with (numpy) now, not in the first render."""
    _records()


@functools.cache
def _records() -> tuple[Any, ...]:
    """numpy and the structs of bpf/lb4.h as its records (native byte order, as
    LAYOUTS), imported on first use: the CLI's parser must not import numpy."""
    import numpy as np

    return (np,
            np.dtype({"names": ["head", "slot", "proto"], "formats": ["V6", "=u2", "u1"],
                      "offsets": [0, 6, 8], "itemsize": 12}),
            np.dtype({"names": ["backend", "timeout", "count", "revnat", "flags"],
                      "formats": ["=u4", "=u4", "=u2", "=u2", "u1"],
                      "offsets": [0, 4, 8, 10, 12], "itemsize": 16}),
            np.dtype({"names": ["head"], "formats": ["V6"], "offsets": [0], "itemsize": 8}),
            np.dtype({"names": ["backend", "revnat"], "formats": ["=u4", "=u2"],
                      "offsets": [0, 4], "itemsize": 8}))


_fe_head = operator.attrgetter("head")
_fe_proto = operator.attrgetter("proto")
_fe_flags = operator.attrgetter("flags")
_fe_timeout = operator.attrgetter("timeout")
_fe_revnat = operator.attrgetter("revnat")


def _pack_all(fes: Sequence[_Fe], backends: Backends) -> tuple[Maps, list[int]]:
    """Every entry of ``fes`` (frontends with distinct keys) by map, and how often each
    backend is named (by id): a full sync's 220k entries at 10k services, built as numpy
    records and handed over as the bytes objects the maps are compared in."""
    np, svc_key, svc_value, revnat_value, match_key = _records()
    n = len(fes)
    ids = list(map(_fe_backends, fes))
    counts = np.fromiter(map(len, ids), np.int64, n)
    rows = counts + 1
    total = int(rows.sum())
    starts = np.cumsum(rows) - rows
    slot_ids = np.fromiter(chain.from_iterable(ids), np.uint32, total - n)
    heads = np.frombuffer(b"".join(map(_fe_head, fes)), "V6")
    revnats = np.fromiter(map(_fe_revnat, fes), np.uint16, n)
    flags = np.fromiter(map(_fe_flags, fes), np.uint8, n)
    key = np.zeros(total, svc_key)
    key["head"] = np.repeat(heads, rows)
    key["slot"] = np.arange(total) - np.repeat(starts, rows)
    key["proto"] = np.repeat(np.fromiter(map(_fe_proto, fes), np.uint8, n), rows)
    value = np.zeros(total, svc_value)
    slots = np.ones(total, bool)
    slots[starts] = False
    value["backend"][slots] = slot_ids
    value["timeout"][starts] = np.fromiter(map(_fe_timeout, fes), np.uint32, n)
    value["count"][starts] = counts
    value["revnat"][starts] = revnats
    value["flags"][starts] = flags
    named = np.bincount(slot_ids, minlength=len(backends.values))
    used = np.flatnonzero(named)
    backend_keys = used.astype("=u4").view("V4").tolist()
    revnat = np.zeros(n, revnat_value)
    revnat["head"] = heads
    sticky = (flags & SVC_F_AFFINITY).astype(bool)
    match = np.zeros(int(counts[sticky].sum()), match_key)
    match["backend"] = slot_ids[np.repeat(sticky, counts)]
    match["revnat"] = np.repeat(revnats[sticky], counts[sticky])
    values = backends.values
    if len(used) == len(values) - 1:  # every backend made so far: ids 1..n
        backend_values = values[1:]
    else:
        backend_values = list(map(values.__getitem__, used.tolist()))
    maps = {"backend": dict(zip(backend_keys, backend_values, strict=True)),
            "revnat": dict(zip(revnats.astype("=u2").view("V2").tolist(),
                               revnat.view("V8").tolist(), strict=True)),
            "match": dict.fromkeys(match.view("V8").tolist(), _MATCH_ONE),
            "svc": dict(zip(key.view("V12").tolist(), value.view("V16").tolist(),
                            strict=True))}
    return maps, named.tolist()


# --- renderings ---------------------------------------------------------------------------

class MapsRendering:
    """What a full sync makes the four maps hold (:attr:`maps`: rendering name -> packed
    key -> packed value), for node ``node`` at render generation ``generation``.

    It shares its dictionaries with the node's render state, which a partial sync
    updates in place (a copy would cost a full sync's worth of entries): once one
    has, this rendering is out of date and refuses to be read (render again).
    ``str()`` is its text (built on first use).
    """

    def __init__(self, node: str, maps: Maps, frontends: int, generation: int) -> None:
        self.node, self.frontends, self.generation = node, frontends, generation
        self._maps: Maps | None = maps
        self._text: str | None = None

    @property
    def maps(self) -> Maps:
        if self._maps is None:
            raise ApplyError(f"this rendering of {self.node}'s maps (generation "
                             f"{self.generation}) is out of date: a partial sync has "
                             "changed them since; render a full sync again")
        return self._maps

    def retire(self) -> None:
        """The node's maps are about to change in place: this rendering is no longer."""
        self._maps = None

    def counts(self) -> dict[str, int]:
        """Entries per map, by rendering name."""
        return {m: len(self.maps[m]) for m in MAPS}

    def entries(self) -> Entries:
        """(map, key) -> value of every entry, as the text shows them."""
        return {(m, k): v for m in MAPS for k, v in _unpacked(m, self.maps[m])}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MapsRendering) and other.maps == self.maps

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        if self._text is None:
            lines = [f"# kpbench lb4 maps for {self.node}: <map> <key> <value>"]
            lines += [f"{m} {k} {v}" for m in ("svc", "backend", "revnat", "match")
                      for k, v in _unpacked(m, self.maps[m])]
            self._text = "\n".join(lines) + "\n"
        return self._text


DELTA_HEADER = "# kpbench lb4 maps delta for "


class MapsDelta:
    """What a partial sync writes (``writes``) and deletes (``deletes``) in each map,
    packed, taking node ``node`` from render generation ``start`` to ``end``;
    ``batches`` is the same as the kernel takes it (see :func:`batches`)."""

    __slots__ = ("node", "start", "end", "writes", "deletes", "batches")

    def __init__(self, node: str, start: int, end: int, writes: Maps,
                 deletes: dict[str, list[bytes]]) -> None:
        self.node, self.start, self.end = node, start, end
        self.writes, self.deletes = writes, deletes
        self.batches = batches(writes, deletes)

    def counts(self) -> dict[str, int]:
        return {"written": sum(map(len, self.writes.values())),
                "deleted": sum(map(len, self.deletes.values()))}

    def __str__(self) -> str:
        lines = [f"{DELTA_HEADER}{self.node}: {self.start} -> {self.end}"]
        lines += [f"{m} {k} {v}" for m in MAPS for k, v in _unpacked(m, self.writes[m])]
        lines += [f"delete {m} {k}" for m in MAPS
                  for k, _ in _unpacked(m, dict.fromkeys(self.deletes[m], b""))]
        return "\n".join(lines) + "\n"


class Batch(NamedTuple):
    """One kernel call of a sync: ``count`` entries of map ``m`` (a rendering name),
    their keys (and, for a write, values) packed back to back, in their order."""

    delete: bool
    m: str
    keys: bytes
    values: bytes  # b"" for a delete
    count: int


def _item_slot0(item: tuple[bytes, bytes]) -> bool:
    return item[0][6:8] == b"\0\0"


def _not_slot0(svc_key: bytes) -> bool:
    """Whether a packed lb4_key is not a frontend's slot 0 (its u16 backend_slot, after
    the address and port, is not zero)."""
    return svc_key[6:8] != b"\0\0"


def batches(writes: dict[str, dict[bytes, bytes]] | dict[str, list[tuple[bytes, bytes]]],
            deletes: dict[str, list[bytes]]) -> tuple[Batch, ...]:
    """The kernel calls that make ``writes`` (by map: key -> value, or (key, value)
    pairs) and ``deletes``, in the order they must run:
    the writes map by map (what a frontend points to before the frontend; a frontend's
    slot 0 last, so its count never names a slot not written yet), then the deletes in
    the reverse order (slot 0 first: a shrinking frontend stops naming a slot before it
    goes). Packing them is the render's work; the apply only hands them to the kernel."""
    out = []
    for m in MAPS:
        w = writes[m]
        if w:
            items = w.items() if isinstance(w, dict) else w
            if m == "svc":
                items = sorted(items, key=_item_slot0)
            out.append(Batch(False, m, b"".join([k for k, _ in items]),
                             b"".join([v for _, v in items]), len(w)))
    for m in reversed(MAPS):
        d = deletes[m]
        if d:
            out.append(Batch(True, m, b"".join(sorted(d, key=_not_slot0) if m == "svc" else d),
                             b"", len(d)))
    return tuple(out)


def _hostport(addr: bytes, port: bytes) -> str:
    return f"{socket.inet_ntoa(addr)}:{int.from_bytes(port, 'big')}"


def _flags(bits: int) -> str:
    return ",".join(n for bit, n in FLAG_NAMES.items() if bits & bit) or "-"


def _svc_order(key: bytes) -> tuple[bytes, int, int]:
    return key[:6], key[8], int.from_bytes(key[6:8], _NATIVE)


def _unpacked(m: str, entries: dict[bytes, bytes]) -> list[tuple[str, str]]:
    """(key, value) of map ``m``'s packed entries as the text shows them, in its order:
    frontends by address, port and protocol, then slot; the others by id."""
    out = []
    if m == "svc":
        for k in sorted(entries, key=_svc_order):
            v = entries[k]
            slot = int.from_bytes(k[6:8], _NATIVE)
            bid, timeout, count, revnat, flags = _SVC_VALUE.unpack(v) if v else (0,) * 5
            out.append((f"{_hostport(k[:4], k[4:6])}/{PROTO_NAMES[k[8]]}#{slot}",
                        "" if not v else f"backend={bid}" if slot else
                        f"count={count} revnat={revnat} flags={_flags(flags)} "
                        f"timeout={timeout}"))
    elif m == "backend":
        for k in sorted(entries, key=lambda k: int.from_bytes(k, _NATIVE)):
            v = entries[k]
            out.append((str(int.from_bytes(k, _NATIVE)),
                        v and f"{_hostport(v[:4], v[4:6])}/{PROTO_NAMES[v[6]]}"))
    elif m == "revnat":
        for k in sorted(entries, key=lambda k: int.from_bytes(k, _NATIVE)):
            v = entries[k]
            out.append((str(int.from_bytes(k, _NATIVE)), v and _hostport(v[:4], v[4:6])))
    else:
        for k in sorted(entries, key=_MATCH_KEY.unpack):
            b, r = _MATCH_KEY.unpack(k)
            out.append((f"{b}/{r}", str(entries[k][0]) if entries[k] else ""))
    return out


# --- a node's renders ---------------------------------------------------------------------

@dataclass
class NodeRender:
    """What the renders for one node left behind: each service port's packed entries, and
    the whole rendering they make, kept up to date with partial syncs, so a partial sync
    renders only what changed and a full one after it assembles nothing again.

    A partial sync leaves its delta in ``pending``; the next full render folds the
    deltas into ``maps`` (a few dictionary operations each) before it uses them, so a
    partial render touches nothing of the whole rendering's 200k entries.

    ``generation`` counts the renders; a delta names the generation it starts
    from, so it is only applied to a node holding exactly that state.
    """

    cache: dict[str, tuple[ServicePortView, tuple[_Fe, ...]]] = field(default_factory=dict)
    ctx: NodeContext | None = None  # the node context every cached port was rendered for
    # The whole rendering of the ports in ``live`` once ``pending`` is folded in (None
    # before the first full render).
    maps: Maps | None = None
    pending: list[tuple[Maps, dict[str, list[bytes]]]] = field(default_factory=list)
    live: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)  # ``live`` in the last full render's order
    refs: list[int] = field(default_factory=list)  # backend id -> frontends naming it
    owner: dict[bytes, str] = field(default_factory=dict)  # frontend -> its port's name
    # Service key -> its port names, for the Services partial syncs changed since the
    # last full render; any other Service's ports are those of ``by_service``, the
    # index of the ports that render was handed (objects.PortViews), or none.
    ports_of: dict[str, list[str]] = field(default_factory=dict)
    by_service: dict[str, list[ServicePortView]] | None = None
    # Some frontend is claimed by two ports: the port order decides which holds it, so
    # a full render assembles the maps again.
    shared: bool = False
    rendering: MapsRendering | None = None  # the last full rendering, while current
    views: list[ServicePortView] | None = None  # the ports ``rendering`` was made of
    generation: int = 0
    rendered_entries: int = 0  # entries the last render built anew (not from the cache)


MAX_PENDING = 256  # deltas a partial render leaves unfolded at most


def _fold(state: NodeRender) -> None:
    """Apply the partial syncs' deltas to the kept whole rendering, in their order."""
    maps = state.maps
    assert maps is not None
    for writes, deletes in state.pending:
        for m in MAPS:
            held = maps[m]
            for k in deletes[m]:
                del held[k]
            held.update(writes[m])
    state.pending.clear()


_fe_key = operator.attrgetter("key")
_fe_backends = operator.attrgetter("backends")


def _ports_frontends(ports: Sequence[ServicePortView], ctx: NodeContext, backends: Backends,
                     revnat_ids: IdAllocator) -> list[tuple[_Fe, ...]]:
    """:func:`_port_frontends` of every port of a first render, with the same ids: runs
    of ports that have their ClusterIP frontend alone (:func:`_plain_run`) are packed
    together, any other port by itself, in the ports' order."""
    services = list(map(_service_of, ports))
    protocols = set(map(_protocol_of, map(_port_of, ports)))
    if (len(protocols) == 1 and protocols <= PROTO_NUMBERS.keys()
            and set(map(_type_of, services)) <= {"ClusterIP"}
            and not any(map(_external_ips_of, services))
            and set(map(_internal_policy_of, services)) <= {"Cluster"}):
        return _plain_run(list(ports), protocols.pop(), backends, revnat_ids)  # all plain
    out: list[tuple[_Fe, ...]] = []
    run: list[ServicePortView] = []
    proto = ""
    for view in ports:
        svc = view.service
        p = view.port.protocol
        if (svc.type == "ClusterIP" and not svc.external_ips
                and svc.internal_traffic_policy == "Cluster" and p in PROTO_NUMBERS):
            if p != proto and run:
                out += _plain_run(run, proto, backends, revnat_ids)
                run = []
            run.append(view)
            proto = p
            continue
        if run:
            out += _plain_run(run, proto, backends, revnat_ids)
            run = []
        out.append(_port_frontends(view, ctx, backends, revnat_ids))
    if run:
        out += _plain_run(run, proto, backends, revnat_ids)
    return out


_endpoints_of = operator.attrgetter("endpoints")
_ready = operator.attrgetter("ready")
_address = operator.attrgetter("address")
_ip = operator.attrgetter("ip")
_port_number = operator.attrgetter("port")
_service_of = operator.attrgetter("service")
_port_of = operator.attrgetter("port")
_cluster_ip = operator.attrgetter("cluster_ip")
_protocol_of = operator.attrgetter("protocol")
_type_of = operator.attrgetter("type")
_external_ips_of = operator.attrgetter("external_ips")
_internal_policy_of = operator.attrgetter("internal_traffic_policy")


def _plain_run(views: list[ServicePortView], proto: str, backends: Backends,
               revnat_ids: IdAllocator) -> list[tuple[_Fe, ...]]:
    """:func:`_port_frontends` of ports of protocol ``proto`` whose Service is a
    ClusterIP one without external IPs and with ``internalTrafficPolicy: Cluster``: one
    frontend each (the ClusterIP), its backends the cluster endpoints, never ``drop``.
    The ids are made as port by port, in one pass over all their endpoints."""
    np = numpy()
    num = PROTO_NUMBERS[proto]
    n = len(views)
    cluster = list(map(_endpoints_of, views))
    flat = list(chain.from_iterable(cluster))
    if not all(map(_ready, flat)):  # ports with endpoints not ready: theirs chosen alone
        cluster = [v.cluster_endpoints for v in views]
        flat = list(chain.from_iterable(cluster))
    counts = list(map(len, cluster))
    addresses = list(map(_address, flat))
    # Each port's endpoints in address order (sorted_endpoints): only the ports with a
    # descent inside them are sorted.
    descents = np.flatnonzero(~np.fromiter(map(operator.le, addresses,
                                               islice(addresses, 1, None)),
                                           bool, max(len(addresses) - 1, 0)))
    if len(descents):
        ends = np.cumsum(counts)
        at = np.searchsorted(ends, descents, side="right")
        unsorted = np.unique(at[descents + 1 < ends[at]]).tolist()
        for i in unsorted:
            cluster[i] = sorted_endpoints(cluster[i])
        if unsorted:
            flat = list(chain.from_iterable(cluster))
            addresses = list(map(_address, flat))
    # Backend ids, new ones in order of first appearance (as Backends.of, port by port).
    ids = backends.ids[proto]
    values = backends.values
    first = len(values)
    if not ids:  # none of this protocol known yet: ids in order, if no address comes twice
        made = dict(zip(addresses, range(first, first + len(addresses)), strict=True))
        if len(made) == len(addresses):
            backends.ids[proto] = made
            values += _backend_values(addresses, num)
            got: list[int | None] = list(range(first, len(values)))
        else:
            got = [None] * len(addresses)
    else:
        got = list(map(ids.get, addresses))
    if None in got:
        new = list(dict.fromkeys(compress(addresses, map(operator.is_, got, repeat(None)))))
        values += _backend_values(new, num)
        ids.update(zip(new, range(first, len(values)), strict=True))
        got = list(map(ids.__getitem__, addresses))
    if len(values) - 1 > backends.limit:
        raise InputError(f"more than {backends.limit} backend ids were needed; the map "
                         "field holding them is too small for this many")
    slots = iter(got)
    per_port = [tuple(islice(slots, k)) for k in counts]
    # Frontend keys: the ClusterIP and port, slot 0, the protocol.
    services = list(map(_service_of, views))
    heads_record = np.zeros(n, _HEAD_RECORD)
    heads_record["ip"] = np.frombuffer(
        b"".join(map(socket.inet_aton, map(_cluster_ip, services))), "V4")
    heads_record["port"] = np.fromiter(map(_port_number, map(_port_of, views)), ">u2", n)
    heads = heads_record.view("V6").tolist()
    keys = list(map(operator.add, heads, repeat(_SLOT_TAILS[num][0])))
    known = revnat_ids.known
    revnats = list(map(known.get, keys))
    if None in revnats:  # new ones numbered in order, as IdAllocator does one by one
        new = list(dict.fromkeys(compress(keys, map(operator.is_, revnats, repeat(None)))))
        first = len(known) + 1
        room = max(revnat_ids.limit - len(known), 0)
        known.update(zip(new[:room], range(first, first + room), strict=False))
        if len(new) > room:
            revnat_ids(new[room])  # raises: the field is too small
        revnats = list(map(known.__getitem__, keys))
    sticky = [svc.session_affinity == "ClientIP" for svc in services]
    if any(sticky):
        flags = [SVC_F_AFFINITY if s else 0 for s in sticky]
        timeouts = [svc.affinity_timeout if s else 0
                    for svc, s in zip(services, sticky, strict=True)]
    else:
        flags = timeouts = [0] * n
    fes = map(_new_fe, repeat(_Fe), zip(keys, heads, [num] * n, flags, timeouts, revnats,
                                        per_port, strict=True))
    return list(zip(fes))


def _backend_value(address: str, proto: int) -> bytes:
    ip, _, port = address.rpartition(":")
    return socket.inet_aton(ip) + int(port).to_bytes(2, "big") + bytes([proto, 0])


_BACKEND_RECORD = [("ip", "V4"), ("port", ">u2"), ("proto", "u1"), ("pad", "u1")]  # lb4_backend
_HEAD_RECORD = [("ip", "V4"), ("port", ">u2")]  # lb4_key's address and port


def _backend_values(addresses: list[str], proto: int) -> list[bytes]:
    """lb4_backend of each ``ip:port``, as Backends.of packs them: the addresses (dotted
    decimal, as the input's validation leaves them) parsed as one text by numpy rather
    than one inet_aton each; any other form is packed one by one."""
    np = numpy()
    k = len(addresses)
    if not k:
        return []
    text = " ".join(addresses).replace(".", " ").replace(":", " ")
    numbers = np.fromstring(text, dtype=np.int64, sep=" ")
    if numbers.shape != (5 * k,):
        return [_backend_value(a, proto) for a in addresses]
    numbers = numbers.reshape(k, 5)
    if numbers.min() < 0 or numbers[:, :4].max() > 255 or numbers[:, 4].max() > 0xFFFF:
        return [_backend_value(a, proto) for a in addresses]
    record = np.zeros(k, _BACKEND_RECORD)
    record["ip"] = numbers[:, :4].astype(np.uint8).view("V4").ravel()
    record["port"] = numbers[:, 4]
    record["proto"] = proto
    return record.view("V8").tolist()


def render_maps(ports: Sequence[ServicePortView], ctx: NodeContext, backends: Backends,
                revnat_ids: IdAllocator, state: NodeRender | None = None) -> MapsRendering:
    """Every map entry a full sync programs, packed (see the module doc).

    ``state``, if given, holds each port's entries from earlier renders: a port
    equal to the cached one is not rendered again (its ids are stable, see
    :class:`IdAllocator`). When every port is cached and they are the ports the
    node's whole rendering holds (kept up to date with :func:`render_delta`'s
    deltas), that rendering is returned without assembling anything.
    """
    state = NodeRender() if state is None else state
    if same_context(state, ctx) and state.rendering is not None and state.views == ports:
        # The ports of the current rendering, object by object (list equality tries
        # ``is`` first, in C): a resync of an unchanged state, nothing to look up.
        state.rendered_entries = 0
        return state.rendering
    cache = state.cache
    names = view_names(ports)
    fresh = misses = 0
    hits: list[tuple[_Fe, ...]]
    if not cache:  # the first render: nothing to look up
        hits = _ports_frontends(ports, ctx, backends, revnat_ids)
        cache.update(zip(names, zip(ports, hits, strict=True), strict=True))
        misses = len(hits)
        every = list(chain.from_iterable(hits))
        fresh = len(every) + sum(map(len, map(_fe_backends, every)))
    else:
        hits = []
        for view, name in zip(ports, names, strict=True):
            hit = cache.get(name)
            if hit is None or not (hit[0] is view or hit[0] == view):
                hit = (view, _port_frontends(view, ctx, backends, revnat_ids))
                cache[name] = hit
                misses += 1
                fresh += sum([1 + len(fe.backends) for fe in hit[1]])
            hits.append(hit[1])
    state.rendered_entries = fresh
    if not misses and state.maps is not None and not state.shared and (
            names == state.names or state.live == set(names)):
        if state.pending:
            _fold(state)  # what the partial syncs since the last full render changed
        if state.rendering is None:
            state.rendering = MapsRendering(ctx.node_name, state.maps, len(state.owner),
                                            state.generation)
        state.names, state.views = names, list(ports)
        return state.rendering
    index = getattr(ports, "by_service", None)  # objects.PortViews: nothing to build
    ports_of: dict[str, list[str]] = {}
    if index is None:
        for view, name in zip(ports, names, strict=True):
            ports_of.setdefault(view.service.key, []).append(name)
    kept = list(chain.from_iterable(hits))
    owner = dict(zip(map(_fe_key, kept), chain.from_iterable(map(repeat, names, map(len, hits))),
                     strict=True))
    shared = len(owner) != len(kept)
    if shared:  # a later duplicate frontend loses, as a map key holds one
        owner = {}
        kept = []
        for name, entries in zip(names, hits, strict=True):
            for fe in entries:
                if fe.key not in owner:
                    owner[fe.key] = name
                    kept.append(fe)
    maps, refs = _pack_all(kept, backends)
    if len(cache) > 2 * len(ports) + 64:
        live = set(names)
        for name in [n for n in cache if n not in live]:
            del cache[name]
    state.generation += 1
    state.maps, state.refs, state.owner, state.ports_of = maps, refs, owner, ports_of
    state.pending.clear()  # (folded into nothing: these maps are new)
    state.live, state.shared, state.names = set(names), shared, names
    state.by_service = index
    # (An earlier rendering keeps the dictionaries replaced here: nothing changes them.)
    state.rendering = MapsRendering(ctx.node_name, maps, len(owner), state.generation)
    state.views = list(ports)
    return state.rendering


def _changes(old: dict[bytes, _Fe], new: dict[bytes, _Fe], backends: Backends,
             refs: list[int]) -> tuple[Maps, dict[str, list[bytes]]]:
    """The entries to write and delete that turn frontends ``old`` into ``new`` (by
    key): only the slots, counts, backends and affinity entries that differ. ``refs``
    (backend id -> frontends naming it) is updated."""
    writes: Maps = {m: {} for m in MAPS}
    deletes: dict[str, list[bytes]] = {m: [] for m in MAPS}
    svc_w, svc_d = writes["svc"], deletes["svc"]
    gone: list[int] = []  # backend ids named by one frontend fewer (one per frontend)
    came: list[int] = []
    for key, was in old.items():
        if key not in new:
            n = len(was.backends)
            svc_d += map(was.head.__add__, _slot_tails(was.proto, n)[:n + 1])
            rev = was.revnat.to_bytes(2, _NATIVE)
            deletes["revnat"].append(rev)
            if was.flags & SVC_F_AFFINITY:
                deletes["match"] += [_match_key(b, rev) for b in was.backends]
            gone += was.backends
    for key, now in new.items():
        was = old.get(key)
        if was is None:
            packed = _pack(now, backends)
            svc_w.update(packed.svc)
            writes["revnat"][packed.revnat[0]] = packed.revnat[1]
            writes["match"].update(dict.fromkeys(packed.matches, _MATCH_ONE))
            came += now.backends
            continue
        if was == now:
            continue
        ob, nb = was.backends, now.backends
        tails = _slot_tails(now.proto, max(len(ob), len(nb)))
        if (was.flags, was.timeout, len(ob)) != (now.flags, now.timeout, len(nb)):
            svc_w[key] = _SVC_VALUE.pack(0, now.timeout, len(nb), now.revnat, now.flags)
        for slot, b in enumerate(nb, start=1):
            if slot > len(ob) or ob[slot - 1] != b:
                svc_w[now.head + tails[slot]] = b.to_bytes(4, _NATIVE) + _SLOT_ZERO
        svc_d += map(now.head.__add__, tails[len(nb) + 1:len(ob) + 1])
        so, sn = set(ob), set(nb)
        gone += so - sn
        came += sn - so
        # The revnat entry is the key's (same address, port and index): unchanged.
        rev = now.revnat.to_bytes(2, _NATIVE)
        om = so if was.flags & SVC_F_AFFINITY else set()
        nm = sn if now.flags & SVC_F_AFFINITY else set()
        writes["match"].update(dict.fromkeys([_match_key(b, rev) for b in nm - om], _MATCH_ONE))
        deletes["match"] += [_match_key(b, rev) for b in om - nm]
    _count(came, gone, backends, refs, writes["backend"], deletes["backend"])
    return writes, deletes


def _count(came: list[int], gone: list[int], backends: Backends, refs: list[int],
           written: dict[bytes, bytes], deleted: list[bytes]) -> None:
    """Count the frontends naming each backend (``refs``, by id): the backends ``came``
    (named once more each) and ``gone`` (once less) make; a backend named by none now is
    deleted, one named again written."""
    named: dict[int, int] = {}
    count_ids(named, came)
    for b in gone:
        named[b] = named.get(b, 0) - 1
    held = len(refs)
    for b, change in named.items():
        if not change:
            continue
        had = refs[b] if b < held else 0
        has = had + change
        if has and not had:
            written[b.to_bytes(4, _NATIVE)] = backends.values[b]
        elif had and not has:
            deleted.append(b.to_bytes(4, _NATIVE))
        if b >= held:
            refs += [0] * (b + 1 - held)
            held = b + 1
        refs[b] = has


def _match_key(backend: int, rev: bytes) -> bytes:
    return backend.to_bytes(4, _NATIVE) + rev + b"\0\0"


def render_delta(ports: Sequence[ServicePortView], ctx: NodeContext, backends: Backends,
                 revnat_ids: IdAllocator, state: NodeRender,
                 changed: Collection[str]) -> MapsDelta | MapsRendering:
    """The entries a partial sync writes and deletes after the Services in ``changed``
    (``ns/name``) changed: only those Services' ports are packed, as an eBPF agent
    updates the map entries of the frontends that changed.

    Ports of other Services are trusted to be unchanged, as a partial sync trusts
    its change tracker. The delta is left for the next full render to fold into the
    node's whole rendering (``state.pending``). Without a full render to start from,
    for another node context, or when a changed frontend shares its address with
    another port's (only one of them can hold the map key), this is a full rendering.
    """
    if state.maps is None or not same_context(state, ctx):
        return render_maps(ports, ctx, backends, revnat_ids, state)
    index = getattr(ports, "by_service", None)  # objects.PortViews: no walk over every port
    if index is not None and len(changed) == 1:
        delta = _endpoints_delta(index, ctx, backends, state, next(iter(changed)))
        if delta is not None:
            return delta
    keys = set(changed)
    views = ([v for k in keys for v in index.get(k, ())] if index is not None
             else [v for v in ports if v.service.key in keys])
    old_names = {n for k in keys for n in held_port_names(state, k)}
    old_ports = [(n, state.cache[n][1]) for n in old_names if n in state.cache]
    new = {v.name: _port_frontends(v, ctx, backends, revnat_ids) for v in views}
    owner = state.owner
    claimed = [fe.key for entries in new.values() for fe in entries]
    if (len(set(claimed)) != len(claimed)
            or any(owner.get(fe.key) != n for n, entries in old_ports for fe in entries)
            or any(owner.get(k) not in (None, *old_names) for k in claimed)):
        # A frontend address held by two ports: which one wins depends on the order
        # of all ports, so render them all.
        return render_maps(ports, ctx, backends, revnat_ids, state)
    old = [fe for _, entries in old_ports for fe in entries]
    writes, deletes = _changes({fe.key: fe for fe in old},
                               {fe.key: fe for entries in new.values() for fe in entries},
                               backends, state.refs)
    # The state a full render of the new ports would leave (the maps: once folded).
    state.names = []  # ``live`` changes order (and maybe members) below
    for name in old_names - new.keys():
        state.cache.pop(name, None)
        state.live.discard(name)
    for key in keys:
        state.ports_of[key] = []  # (hides what by_service says of it)
    for fe in old:
        owner.pop(fe.key, None)
    for view in views:
        state.cache[view.name] = (view, new[view.name])
        state.ports_of[view.service.key].append(view.name)
        state.live.add(view.name)
        for fe in new[view.name]:
            owner[fe.key] = view.name
    state.rendered_entries = sum(1 + len(fe.backends) for e in new.values() for fe in e)
    return _delta(state, ctx, writes, deletes)


def _delta(state: NodeRender, ctx: NodeContext, writes: Maps,
           deletes: dict[str, list[bytes]]) -> MapsDelta:
    """The partial sync's delta, left in ``state.pending`` for the next full render."""
    if state.rendering is not None:
        state.rendering.retire()  # its dictionaries change when the delta is folded in
        state.rendering = state.views = None
    pending = state.pending
    pending.append((writes, deletes))
    if len(pending) > MAX_PENDING:
        _fold(state)
    start = state.generation
    state.generation += 1
    return MapsDelta(ctx.node_name, start, start + 1, writes, deletes)


def _endpoints_delta(index: dict[str, list[ServicePortView]], ctx: NodeContext,
                     backends: Backends, state: NodeRender, key: str) -> MapsDelta | None:
    """The delta of a Service of one port whose endpoints alone changed (the Service and
    the port are the cached ones): its frontends keep their addresses, ids and flags
    but for ``drop``, so only their backends are chosen again. None: not that case."""
    views = index.get(key)
    if views is None or len(views) != 1:
        return None
    view = views[0]
    name = view.name
    hit = state.cache.get(name)
    if hit is None:
        return None
    was_view, old = hit
    svc = view.service
    if not ((was_view.service is svc or was_view.service == svc)
            and (was_view.port is view.port or was_view.port == view.port)):
        return None
    names = held_port_names(state, key)
    if len(names) != 1 or names[0] != name:
        return None
    owner = state.owner
    for fe in old:
        if owner.get(fe.key) != name:
            return None  # a frontend another port holds: render them all
    cluster = view.cluster_endpoints
    ordered: dict[bool, tuple[ServiceEndpoint, ...]] = {}
    local_internal = svc.internal_traffic_policy == "Local"
    new = []
    for fe in old:
        flags = fe.flags
        # As frontends(): external frontends are local unless they SNAT.
        local = not flags & SVC_F_SNAT if flags & SVC_F_EXTERNAL else local_internal
        eps = ordered.get(local)
        if eps is None:
            eps = ordered[local] = sorted_endpoints(view.local_endpoints if local
                                                    else cluster)
        flags &= ~SVC_F_DROP
        if not eps and cluster:
            flags |= SVC_F_DROP
        new.append(_new_fe(_Fe, (fe.key, fe.head, fe.proto, flags, fe.timeout, fe.revnat,
                                 backends.of(eps, PROTO_NAMES[fe.proto]))))
    writes, deletes = _backend_changes(old, new, backends, state.refs)
    state.cache[name] = (view, tuple(new))
    state.rendered_entries = sum([1 + len(fe.backends) for fe in new])
    return _delta(state, ctx, writes, deletes)


_new_fe = tuple.__new__  # _Fe(...) without its Python-level __new__


def _backend_changes(old: Sequence[_Fe], new: Sequence[_Fe], backends: Backends,
                     refs: list[int]) -> tuple[Maps, dict[str, list[bytes]]]:
    """:func:`_changes` of frontends that differ only in their backends and the ``drop``
    flag (``old[i]`` and ``new[i]`` have one key): the same entries, in the same order,
    without building the general case's maps of frontends."""
    svc_w: dict[bytes, bytes] = {}
    svc_d: list[bytes] = []
    match_w: dict[bytes, bytes] = {}
    match_d: list[bytes] = []
    came: list[int] = []
    gone: list[int] = []
    for was, now in zip(old, new, strict=True):
        ob, nb = was.backends, now.backends
        flags = now.flags
        if ob == nb and was.flags == flags:
            continue
        no, nn = len(ob), len(nb)
        if no != nn or was.flags != flags:
            svc_w[now.key] = _SVC_VALUE.pack(0, now.timeout, nn, now.revnat, flags)
        head = now.head
        tails = _slot_tails(now.proto, max(no, nn))
        for slot, b in enumerate(nb, start=1):
            if slot > no or ob[slot - 1] != b:
                svc_w[head + tails[slot]] = b.to_bytes(4, _NATIVE) + _SLOT_ZERO
        if no > nn:
            svc_d += map(head.__add__, tails[nn + 1:no + 1])
        so, sn = set(ob), set(nb)
        gone += so - sn
        came += sn - so
        if flags & SVC_F_AFFINITY:  # (both have it: the flags differ in drop at most)
            rev = now.revnat.to_bytes(2, _NATIVE)
            match_w.update(dict.fromkeys([_match_key(b, rev) for b in sn - so], _MATCH_ONE))
            match_d += [_match_key(b, rev) for b in so - sn]
    back_w: dict[bytes, bytes] = {}
    back_d: list[bytes] = []
    _count(came, gone, backends, refs, back_w, back_d)
    return ({"backend": back_w, "revnat": {}, "match": match_w, "svc": svc_w},
            {"backend": back_d, "revnat": [], "match": match_d, "svc": svc_d})
