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
from collections import _count_elements as count_ids  # Counter.update's C loop
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

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
        self.known: dict[str, int] = {}  # key -> its id (read-only for callers)

    def __call__(self, key: str) -> int:
        got = self.known.get(key)
        if got is None:
            got = len(self.known) + 1
            if got > self.limit:
                raise InputError(f"more than {self.limit} {self.name} ids were needed; the "
                                 "map field holding them is too small for this many")
            self.known[key] = got
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
    key = fe.key
    revnat = revnat_ids(key)
    flags = ",".join(n for bit, n in FLAG_NAMES.items() if fe.flags & bit) or "-"
    lines = [f"svc {key}#0 count={len(fe.backends)} revnat={revnat} "
             f"flags={flags} timeout={fe.affinity_timeout}"]
    backends = []
    proto = fe.protocol
    known = backend_ids.known
    for slot, ep in enumerate(fe.backends, start=1):
        bkey = f"{ep.address}/{proto}"
        bid = known.get(bkey) or backend_ids(bkey)
        backends.append((bid, f"backend {bid} {bkey}"))
        lines.append(f"svc {key}#{slot} backend={bid}")
    matches = tuple((bid, revnat) for bid, _ in backends) if fe.flags & SVC_F_AFFINITY else ()
    return _FrontendEntries(key, "\n".join(lines), tuple(backends),
                            (revnat, f"revnat {revnat} {fe.address}:{fe.port}"), matches)


PortCache = dict[str, tuple[ServicePortView, NodeContext, tuple[_FrontendEntries, ...]]]

DELTA_HEADER = "# kpbench lb4 maps delta for "


@dataclass
class NodeRender:
    """What the renders for one node left behind: each service port's entries, and the
    state of the maps they make, so a partial sync renders only what changed.

    ``generation`` counts the renders; a delta names the generation it starts
    from, so it is only applied to a node holding exactly that state.
    """

    cache: PortCache = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # port order of the last full render
    text: str | None = None  # the last full rendering, while still the current state
    owner: dict[str, str] = field(default_factory=dict)  # frontend key -> its port's name
    ports_of: dict[str, list[str]] = field(default_factory=dict)  # Service key -> port names
    backend_refs: dict[int, int] = field(default_factory=dict)  # backend id -> frontends
    generation: int = 0
    rendered_entries: int = 0  # entries the last render built anew (not from the cache)


def render_maps(ports: Sequence[ServicePortView], ctx: NodeContext,
                backend_ids: IdAllocator, revnat_ids: IdAllocator,
                state: NodeRender | None = None) -> str:
    """Every map entry a full sync programs, one per line (see the module doc).

    ``state``, if given, holds each port's entries from earlier renders: a port
    equal to the cached one is not rendered again (its ids are stable, see
    :class:`IdAllocator`), and when every port is unchanged and in the same
    order, the last rendering is returned as it is.
    """
    state = NodeRender() if state is None else state
    cache = state.cache
    names = [v.name for v in ports]
    fresh = 0
    hits: list[tuple[_FrontendEntries, ...]] = []
    for view, name in zip(ports, names, strict=True):
        hit = cache.get(name)
        if hit is None or not (hit[1] is ctx or hit[1] == ctx) or not (
                hit[0] is view or hit[0] == view):
            hit = (view, ctx, tuple(_frontend_entries(fe, backend_ids, revnat_ids)
                                    for fe in frontends(view, ctx)))
            cache[name] = hit
            fresh += sum(1 + len(fe.backends) for fe in hit[2])
        hits.append(hit[2])
    state.rendered_entries = fresh
    if not fresh and state.text is not None and names == state.names:
        return state.text  # nothing changed since the last full render
    svc_lines: list[str] = []
    backends: dict[int, str] = {}
    refs: dict[int, int] = {}
    revnats: dict[int, str] = {}
    matches: set[tuple[int, int]] = set()
    owner: dict[str, str] = {}
    ports_of: dict[str, list[str]] = {}
    for view, name, entries in zip(ports, names, hits, strict=True):
        ports_of.setdefault(view.service.key, []).append(name)
        for fe in entries:
            if fe.key in owner:
                continue  # a later duplicate frontend loses, as a map key can only hold one
            owner[fe.key] = name
            revnats[fe.revnat[0]] = fe.revnat[1]
            svc_lines.append(fe.svc_lines)
            backends.update(fe.backends)
            count_ids(refs, [bid for bid, _ in fe.backends])
            matches.update(fe.matches)
    if len(cache) > 2 * len(ports) + 64:
        live = set(names)
        for name in [n for n in cache if n not in live]:
            del cache[name]
    lines = [f"# kpbench lb4 maps for {ctx.node_name}: <map> <key> <value>", *svc_lines]
    lines += [backends[bid] for bid in sorted(backends)]
    lines += [revnats[i] for i in sorted(revnats)]
    lines += [f"match {b}/{r} 1" for b, r in sorted(matches)]
    text = "\n".join(lines) + "\n"
    state.names, state.text, state.owner, state.ports_of = names, text, owner, ports_of
    state.backend_refs = refs
    state.generation += 1
    return text


def _split_lines(text: str) -> dict[tuple[str, str], str]:
    out = {}
    for line in text.splitlines():
        m, k, v = line.split(" ", 2)
        out[(m, k)] = v
    return out


def _entries_of(frontends: Iterable[_FrontendEntries]) -> tuple[Entries, dict[int, int]]:
    """The svc, revnat and match entries of ``frontends``, and how often each backend
    id is named by them."""
    entries: Entries = {}
    refs: dict[int, int] = {}
    for fe in frontends:
        entries.update(_split_lines(fe.svc_lines))
        entries.update(_split_lines(fe.revnat[1]))
        for bid, _ in fe.backends:
            refs[bid] = refs.get(bid, 0) + 1
        for b, r in fe.matches:
            entries[("match", f"{b}/{r}")] = "1"
    return entries, refs


def render_delta(ports: Sequence[ServicePortView], ctx: NodeContext,
                 backend_ids: IdAllocator, revnat_ids: IdAllocator,
                 state: NodeRender, changed: Collection[str]) -> str:
    """The entries a partial sync writes and deletes after the Services in ``changed``
    (``ns/name``) changed: only those Services' ports are rendered, as an eBPF agent
    updates the map entries of the frontends that changed.

    Lines are ``<map> <key> <value>`` (write) and ``delete <map> <key>``,
    after a header naming the generation of ``state`` they start from. Ports
    of other Services are trusted to be unchanged, as a partial sync trusts its
    change tracker. Without a full render to start from, for another node
    context, or when a changed frontend shares its address with another
    port's (only one of them can hold the map key), this is a full rendering.
    """
    first = next(iter(state.cache.values()), None)
    if state.text is None and not state.owner or first is not None and not (
            first[1] is ctx or first[1] == ctx):
        return render_maps(ports, ctx, backend_ids, revnat_ids, state)
    keys = set(changed)
    index = getattr(ports, "by_service", None)  # objects.PortViews: no walk over every port
    views = ([v for k in keys for v in index.get(k, ())] if index is not None
             else [v for v in ports if v.service.key in keys])
    old_names = {n for k in keys for n in state.ports_of.get(k, ())}
    old_ports = [(n, state.cache[n][2]) for n in old_names if n in state.cache]
    old = [fe for _, entries in old_ports for fe in entries]
    new = {v.name: tuple(_frontend_entries(fe, backend_ids, revnat_ids)
                         for fe in frontends(v, ctx)) for v in views}
    claimed = [fe.key for entries in new.values() for fe in entries]
    if (len(set(claimed)) != len(claimed)
            or any(state.owner.get(fe.key) != n for n, entries in old_ports for fe in entries)
            or any(state.owner.get(k) not in (None, *old_names) for k in claimed)):
        # A frontend address held by two ports: which one wins depends on the order
        # of all ports, so render them all.
        return render_maps(ports, ctx, backend_ids, revnat_ids, state)
    before, refs_before = _entries_of(old)
    after, refs_after = _entries_of(fe for entries in new.values() for fe in entries)
    writes = [(m, k, v) for (m, k), v in after.items() if before.get((m, k)) != v]
    deletes = [(m, k) for (m, k) in before if (m, k) not in after]
    refs = state.backend_refs
    lines_of = {bid: line for entries in new.values() for fe in entries
                for bid, line in fe.backends}
    for bid in set(refs_before) | set(refs_after):
        had = refs.get(bid, 0)
        has = had - refs_before.get(bid, 0) + refs_after.get(bid, 0)
        if has and not had:
            writes.append(("backend", str(bid), lines_of[bid].split(" ", 2)[2]))
        elif had and not has:
            deletes.append(("backend", str(bid)))
        if has:
            refs[bid] = has
        else:
            refs.pop(bid, None)
    # The state a full render of the new ports would leave.
    for name in old_names - new.keys():
        state.cache.pop(name, None)
    for key in keys:
        state.ports_of.pop(key, None)
    for fe in old:
        state.owner.pop(fe.key, None)
    for view in views:
        state.cache[view.name] = (view, ctx, new[view.name])
        state.ports_of.setdefault(view.service.key, []).append(view.name)
        for fe in new[view.name]:
            state.owner[fe.key] = view.name
    state.text, state.names = None, []  # the next full render assembles the text again
    start = state.generation
    state.generation += 1
    state.rendered_entries = sum(1 + len(fe.backends) for e in new.values() for fe in e)
    out = [f"{DELTA_HEADER}{ctx.node_name}: {start} -> {state.generation}"]
    out += [f"{m} {k} {v}" for m, k, v in writes]
    out += [f"delete {m} {k}" for m, k in deletes]
    return "\n".join(out) + "\n"


def parse_delta(rendered: str) -> tuple[int, int, Entries, list[tuple[str, str]]]:
    """(from, to generation, entries to write, (map, key) to delete) of a delta."""
    header, _, body = rendered.partition("\n")
    try:
        span = header.removeprefix(DELTA_HEADER).rsplit(": ", 1)[1]
        start, _, end = span.partition(" -> ")
        gens = int(start), int(end)
    except (IndexError, ValueError):
        raise InputError(f"line 1: expected '{DELTA_HEADER}<node>: <from> -> <to>': "
                         f"{header!r}", source="eBPF map delta") from None
    writes: Entries = {}
    deletes: list[tuple[str, str]] = []
    for n, line in enumerate(body.splitlines(), start=2):
        if not line or line.startswith("#"):
            continue
        parts = line.split(" ", 2)
        if parts[0] == "delete" and len(parts) == 3 and parts[1] in MAPS:
            deletes.append((parts[1], parts[2]))
        elif len(parts) == 3 and parts[0] in MAPS:
            writes[(parts[0], parts[1])] = parts[2]
        else:
            raise InputError(f"line {n}: expected '<map> <key> <value>' or 'delete <map> "
                             f"<key>' with a map among {', '.join(MAPS)}: {line!r}",
                             source="eBPF map delta")
    return gens[0], gens[1], writes, deletes


def is_delta(rendered: str) -> bool:
    return rendered.startswith(DELTA_HEADER)


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
