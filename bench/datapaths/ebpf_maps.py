"""The map entries of kpbench's eBPF datapaths, as text and as kernel bytes.

A sync of an eBPF datapath is map programming, as in Cilium: the frontends
of every service port (its ClusterIP, its NodePort on each node address,
its external and load-balancer IPs) go into ``lb4_services`` with one
entry per backend slot (slot 0 holds the count), the backends into
``lb4_backends``, the frontend each reply is rewritten to into
``lb4_reverse_nat``, and the backends a ClientIP-affinity entry may still
point to into ``lb4_affinity_match`` (see ``bpf/lb4.h``).

:func:`render_maps` writes them one entry per line, ``<map> <key> <value>``,
in a stable order so two renderings diff cleanly::

    svc 172.30.0.10:80/TCP#0 count=2 revnat=1 flags=- timeout=0
    svc 172.30.0.10:80/TCP#1 backend=1
    svc 172.30.0.10:80/TCP#2 backend=2
    backend 1 10.1.1.1:8080/TCP
    revnat 1 172.30.0.10:80
    match 1/3 1

:func:`parse_maps` reads that text back and :func:`pack` turns entries into
the bytes of the C structs. Nothing here needs root.

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
import socket
import struct
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from bench.datapaths.base import NodeContext
from bench.errors import InputError
from bench.model.objects import ServiceEndpoint, ServicePortView, sorted_endpoints

# Flags of a frontend (lb4_service.flags); the same values as SVC_F_* in bpf/lb4.h.
SVC_F_AFFINITY = 0x1
SVC_F_SNAT = 0x2
SVC_F_DROP = 0x4
SVC_F_EXTERNAL = 0x8
FLAG_NAMES = {SVC_F_AFFINITY: "affinity", SVC_F_SNAT: "snat", SVC_F_DROP: "drop",
              SVC_F_EXTERNAL: "external"}
PROTO_NUMBERS = {"TCP": 6, "UDP": 17}

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

MAX_REVNAT = 0xFFFF  # lb4_service.rev_nat_index is a u16
MAX_BACKEND_ID = 0xFFFFFFFF

Entries = dict[tuple[str, str], str]  # (map, key) -> value, as rendered


@dataclass(frozen=True)
class Frontend:
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
    any_endpoint = bool(view.cluster_endpoints)

    def frontend(address: str, port: int, local: bool, external: bool) -> Frontend:
        eps = view.local_endpoints if local else view.cluster_endpoints
        flags = base | (SVC_F_EXTERNAL if external else 0)
        if external and not local:
            flags |= SVC_F_SNAT
        if not eps and any_endpoint:
            flags |= SVC_F_DROP
        return Frontend(address, port, sp.protocol, sorted_endpoints(eps), flags, timeout)

    out = [frontend(svc.cluster_ip, sp.port, svc.internal_traffic_policy == "Local", False)]
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
        self._ids: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        got = self._ids.get(key)
        if got is None:
            got = len(self._ids) + 1
            if got > self.limit:
                raise InputError(f"more than {self.limit} {self.name} ids were needed; the "
                                 "map field holding them is too small for this many")
            self._ids[key] = got
        return got


@dataclass(frozen=True)
class _FrontendEntries:
    """What one frontend contributes to a sync: its ``svc`` lines and what they point to."""

    key: str
    svc_lines: str
    backends: tuple[tuple[int, str], ...]  # (id, its "backend" line)
    revnat: tuple[int, str]  # (index, its "revnat" line)
    matches: tuple[tuple[int, int], ...]


def _frontend_entries(fe: Frontend, backend_ids: IdAllocator,
                      revnat_ids: IdAllocator) -> _FrontendEntries:
    revnat = revnat_ids(f"{fe.address}:{fe.port}/{fe.protocol}")
    flags = ",".join(n for bit, n in FLAG_NAMES.items() if fe.flags & bit) or "-"
    lines = [f"svc {fe.key}#0 count={len(fe.backends)} revnat={revnat} "
             f"flags={flags} timeout={fe.affinity_timeout}"]
    backends = []
    for slot, ep in enumerate(fe.backends, start=1):
        bkey = f"{ep.ip}:{ep.port}/{fe.protocol}"
        bid = backend_ids(bkey)
        backends.append((bid, f"backend {bid} {bkey}"))
        lines.append(f"svc {fe.key}#{slot} backend={bid}")
    matches = tuple((bid, revnat) for bid, _ in backends) if fe.flags & SVC_F_AFFINITY else ()
    return _FrontendEntries(fe.key, "\n".join(lines), tuple(backends),
                            (revnat, f"revnat {revnat} {fe.address}:{fe.port}"), matches)


PortCache = dict[str, tuple[ServicePortView, NodeContext, tuple[_FrontendEntries, ...]]]


def render_maps(ports: Sequence[ServicePortView], ctx: NodeContext,
                backend_ids: IdAllocator, revnat_ids: IdAllocator,
                cache: PortCache | None = None, changed: Collection[str] | None = None) -> str:
    """Every map entry a full sync programs, one per line (see the module doc).

    ``cache`` (service port name -> the port, the node and its entries), if
    given, holds each port's entries from earlier renders: a port equal to
    the cached one is not rendered again (its ids are stable, see
    :class:`IdAllocator`), and it is refreshed in place. With ``changed``
    (Service keys), the ports of other Services are taken from the cache
    without comparing them, as a partial sync trusts its change tracker.
    """
    svc_lines: list[str] = []
    backends: dict[int, str] = {}
    revnats: dict[int, str] = {}
    matches: set[tuple[int, int]] = set()
    seen: set[str] = set()
    cache = {} if cache is None else cache
    for view in ports:
        hit = cache.get(view.name)
        trusted = changed is not None and view.service.key not in changed
        if hit is None or not (hit[1] is ctx or hit[1] == ctx) or not (
                trusted or hit[0] is view or hit[0] == view):
            hit = (view, ctx, tuple(_frontend_entries(fe, backend_ids, revnat_ids)
                                    for fe in frontends(view, ctx)))
            cache[view.name] = hit
        for fe in hit[2]:
            if fe.key in seen:
                continue  # a later duplicate frontend loses, as a map key can only hold one
            seen.add(fe.key)
            revnats[fe.revnat[0]] = fe.revnat[1]
            svc_lines.append(fe.svc_lines)
            backends.update(fe.backends)
            matches.update(fe.matches)
    if len(cache) > 2 * len(ports) + 64:
        live = {v.name for v in ports}
        for name in [n for n in cache if n not in live]:
            del cache[name]
    lines = [f"# kpbench lb4 maps for {ctx.node_name}: <map> <key> <value>", *svc_lines]
    lines += [backends[bid] for bid in sorted(backends)]
    lines += [revnats[i] for i in sorted(revnats)]
    lines += [f"match {b}/{r} 1" for b, r in sorted(matches)]
    return "\n".join(lines) + "\n"


def parse_maps(rendered: str) -> Entries:
    """(map, key) -> value of every entry in a rendering; comments and blanks skipped."""
    entries: Entries = {}
    for n, line in enumerate(rendered.splitlines(), start=1):
        if not line or line.startswith("#"):
            continue
        parts = line.split(" ", 2)
        if len(parts) != 3 or parts[0] not in MAPS:
            raise InputError(f"line {n}: expected '<map> <key> <value>' with a map among "
                             f"{', '.join(MAPS)}: {line!r}", source="eBPF map rendering")
        entries[(parts[0], parts[1])] = parts[2]
    return entries


def count_entries(entries: Entries | Iterable[tuple[str, str]]) -> dict[str, int]:
    """Entries per map, by rendering name."""
    counts = dict.fromkeys(MAPS, 0)
    for m, _ in entries:
        counts[m] += 1
    return counts


def _addr(text: str) -> bytes:
    # Renderings hold canonical addresses (the model validated them): no re-validation.
    return socket.inet_aton(text)


def _port(port: str | int) -> int:
    # Stored in network order in a u16 the program reads natively.
    return socket.htons(int(port))


# A frontend's address repeats on every slot line and backends repeat across
# frontends: remember the parsed form (a full sync at 10k services packs 220k lines).
@functools.lru_cache(maxsize=1 << 18)
def _hostport(text: str) -> tuple[bytes, int, str]:
    hostport, _, proto = text.partition("/")
    host, _, port = hostport.rpartition(":")
    return _addr(host), _port(port), proto


def _fields(value: str) -> dict[str, str]:
    return dict(f.split("=", 1) for f in value.split())


def pack_key(m: str, key: str) -> bytes:
    """The kernel bytes of one rendered key of map ``m``."""
    if m == "svc":
        frontend, _, slot = key.partition("#")
        addr, port, proto = _hostport(frontend)
        return _SVC_KEY.pack(addr, port, int(slot), PROTO_NUMBERS[proto])
    if m == "backend":
        return _BACKEND_KEY.pack(int(key))
    if m == "revnat":
        return _REVNAT_KEY.pack(int(key))
    backend, _, revnat = key.partition("/")
    return _MATCH_KEY.pack(int(backend), int(revnat))


def pack_value(m: str, value: str) -> bytes:
    """The kernel bytes of one rendered value of map ``m``."""
    if m == "svc":
        if value.startswith("backend="):
            return _SVC_VALUE.pack(int(value[8:]), 0, 0, 0, 0)
        f = _fields(value)
        bits = {name: bit for bit, name in FLAG_NAMES.items()}
        flags = sum(bits[n] for n in f["flags"].split(",") if n != "-")
        return _SVC_VALUE.pack(0, int(f["timeout"]), int(f["count"]), int(f["revnat"]), flags)
    if m == "backend":
        addr, port, proto = _hostport(value)
        return _BACKEND_VALUE.pack(addr, port, PROTO_NUMBERS[proto])
    if m == "revnat":
        addr, port, _ = _hostport(value)
        return _REVNAT_VALUE.pack(addr, port)
    return _MATCH_VALUE.pack(int(value))


def pack(m: str, items: Sequence[tuple[str, str]]) -> tuple[bytes, bytes]:
    """Keys and values of ``items`` (rendered key, value) of map ``m``, concatenated."""
    return (b"".join(pack_key(m, k) for k, _ in items),
            b"".join(pack_value(m, v) for _, v in items))
