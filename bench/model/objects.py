"""The Kubernetes objects kpbench programs: Services and EndpointSlices.

Only the fields a Service proxy acts on are modelled. Parsing lives in
:mod:`bench.model.k8s_input`; this module holds the plain data and the one place
that joins a Service port to its endpoints, as kube-proxy's
ServicePortName / endpoints map does.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

DEFAULT_AFFINITY_TIMEOUT = 10800  # kube-proxy's default for sessionAffinity: ClientIP
MAX_AFFINITY_TIMEOUT = 86400  # what the API server accepts (timeoutSeconds 1-86400)

PROTOCOLS = ("TCP", "UDP", "SCTP")

_T = TypeVar("_T")


class _cached(Generic[_T]):
    """functools.cached_property without its lock: Python 3.11 takes one on every
    first read (about 1 us), and a full sync reads the names of 10k fresh ports inside
    the timed render. The value lands in the instance's __dict__, outside the
    dataclass fields, so equality and hashing ignore it."""

    def __init__(self, func: Callable[[Any], _T]) -> None:
        self.func, self.attr = func, func.__name__
        self.__doc__ = func.__doc__

    @overload
    def __get__(self, obj: None, cls: type | None = None) -> _cached[_T]: ...
    @overload
    def __get__(self, obj: object, cls: type | None = None) -> _T: ...

    def __get__(self, obj: object, cls: type | None = None) -> _T | _cached[_T]:
        if obj is None:
            return self
        value = obj.__dict__[self.attr] = self.func(obj)
        return value


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: str = "TCP"
    target_port: int | str | None = None
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer
    session_affinity: str = "None"  # None | ClientIP
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"  # Cluster | Local
    internal_traffic_policy: str = "Cluster"  # Cluster | Local
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    load_balancer_source_ranges: tuple[str, ...] = ()
    health_check_node_port: int | None = None

    @_cached
    def key(self) -> str:
        # Cached (outside the dataclass fields, so equality and hashing ignore it): a
        # partial sync looks it up for every Service at every sync.
        return f"{self.namespace}/{self.name}"

    @property
    def has_node_ports(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")

    @property
    def external_policy_local(self) -> bool:
        """externalTrafficPolicy: Local, which only applies to externally reachable types."""
        externally_reachable = self.has_node_ports or bool(self.external_ips)
        return externally_reachable and self.external_traffic_policy == "Local"


@dataclass(frozen=True)
class EndpointPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    node_name: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]
    address_type: str = "IPv4"

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service_name}"


@dataclass(frozen=True)
class ServiceEndpoint:
    """One endpoint of one service port, as a node sees it."""

    ip: str
    port: int
    node_name: str | None
    ready: bool
    serving: bool
    terminating: bool
    is_local: bool

    @_cached
    def address(self) -> str:
        """``ip:port``, the string kube-proxy hashes into KUBE-SEP names."""
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePortView:
    """A service port joined with its endpoints (kube-proxy's ServicePortName)."""

    service: Service
    port: ServicePort
    endpoints: tuple[ServiceEndpoint, ...] = field(default=())

    @_cached
    def name(self) -> str:
        """``namespace/name:port`` (``:port`` only for a named port), as upstream prints it."""
        suffix = f":{self.port.name}" if self.port.name else ""
        return f"{self.service.key}{suffix}"

    @property
    def protocol(self) -> str:
        return self.port.protocol

    @property
    def cluster_endpoints(self) -> tuple[ServiceEndpoint, ...]:
        """Endpoints used for cluster-wide traffic (kube-proxy's CategorizeEndpoints).

        Ready endpoints; when none is ready, serving-and-terminating ones, so a
        rolling update does not black-hole a service.
        """
        return _usable(self.endpoints)

    @property
    def local_endpoints(self) -> tuple[ServiceEndpoint, ...]:
        return _usable(tuple(e for e in self.endpoints if e.is_local))

    @property
    def uses_cluster_endpoints(self) -> bool:
        """Some traffic to this port may go to any endpoint (kube-proxy's UsesClusterEndpoints)."""
        svc = self.service
        return svc.internal_traffic_policy == "Cluster" or (
            self.externally_accessible and svc.external_traffic_policy == "Cluster")

    @property
    def uses_local_endpoints(self) -> bool:
        """Some traffic to this port may only go to local endpoints (UsesLocalEndpoints)."""
        svc = self.service
        return svc.internal_traffic_policy == "Local" or (
            self.externally_accessible and svc.external_traffic_policy == "Local")

    @property
    def externally_accessible(self) -> bool:
        svc = self.service
        return (self.port.node_port is not None or bool(svc.external_ips)
                or bool(svc.load_balancer_ips))

    @property
    def all_endpoints(self) -> tuple[ServiceEndpoint, ...]:
        """Every endpoint some rule is written for (kube-proxy's allReachableEndpoints):
        the cluster endpoints if the policies use them, plus the local ones if they do."""
        used: set[ServiceEndpoint] = set()
        if self.uses_cluster_endpoints:
            used |= set(self.cluster_endpoints)
        if self.uses_local_endpoints:
            used |= set(self.local_endpoints)
        return tuple(e for e in self.endpoints if e in used)


def _usable(endpoints: Sequence[ServiceEndpoint]) -> tuple[ServiceEndpoint, ...]:
    ready = tuple([e for e in endpoints if e.ready])
    if ready:
        return ready
    return tuple([e for e in endpoints if e.serving and e.terminating])


def sorted_endpoints(endpoints: Iterable[ServiceEndpoint]) -> tuple[ServiceEndpoint, ...]:
    """Endpoints in the order kube-proxy writes them (by ``ip:port`` string)."""
    return tuple(sorted(endpoints, key=_address))


_address = operator.attrgetter("address")


_service_key = operator.attrgetter("service.key")
_port_name = operator.attrgetter("port.name")


def view_names(views: Sequence[ServicePortView]) -> list[str]:
    """``[v.name for v in views]``, made by C iterators (a full render reads the names of
    10k fresh views: the ``name`` property's first read is a Python call each)."""
    keys = list(map(_service_key, views))
    suffixes = list(map(_port_name, views))
    if not any(suffixes):
        return keys
    return [f"{k}:{p}" if p else k for k, p in zip(keys, suffixes, strict=True)]


class PortViews(list[ServicePortView]):
    """The views of :func:`service_port_views`, with ``by_service`` (Service key ->
    its views, in order): what a change tracker hands a partial sync, so it renders
    the changed Services without walking every port. ``node_name`` and ``sources``
    (Service key -> the Service and the EndpointSlices its views were joined from)
    let the next call hand back the same view objects for what did not change."""

    def __init__(self, views: Iterable[ServicePortView] = (), node_name: str | None = None,
                 sources: dict[str, tuple[Service, tuple[EndpointSlice, ...]]] | None = None
                 ) -> None:
        super().__init__(views)
        self.node_name = node_name
        self.sources = sources if sources is not None else {}
        self.by_service: dict[str, list[ServicePortView]] = {}
        for v in self:
            self.by_service.setdefault(v.service.key, []).append(v)

    def reusable(self, svc: Service, slices: tuple[EndpointSlice, ...]) -> bool:
        """Whether this call's views of ``svc`` came from these very objects (``is``:
        an informer hands the same objects until one changes)."""
        was = self.sources.get(svc.key)
        return (was is not None and was[0] is svc and len(was[1]) == len(slices)
                and all(map(operator.is_, was[1], slices))
                and len(self.by_service.get(svc.key, ())) == len(svc.ports))


def service_port_views(
    services: Sequence[Service], slices: Sequence[EndpointSlice], node_name: str | None,
    previous: PortViews | None = None,
) -> PortViews:
    """Join every service port to its endpoints, as seen from ``node_name``.

    Endpoint ports are matched by port name and protocol; an address that
    appears in several slices counts once (the local copy preferred).
    Services keep their input order.

    ``previous``: an earlier result for the same node. A Service that is the same
    object with the same EndpointSlice objects as then keeps its view objects, as
    kube-proxy's change tracker keeps the entries of what did not change: a render
    then finds that port unchanged at a glance (``is``) rather than by comparing
    every field of every endpoint.
    """
    by_service: dict[str, list[EndpointSlice]] = {}
    for s in slices:
        by_service.setdefault(s.service_key, []).append(s)
    if previous is not None and previous.node_name != node_name:
        previous = None

    views: list[ServicePortView] = []
    sources: dict[str, tuple[Service, tuple[EndpointSlice, ...]]] = {}
    for svc in services:
        own = tuple(by_service.get(svc.key, ()))
        if svc.key in sources:  # a key twice: no source to tell its views apart
            previous = None
        sources[svc.key] = (svc, own)
        if previous is not None and previous.reusable(svc, own):
            views += previous.by_service.get(svc.key, ())
            continue
        for sp in svc.ports:
            seen: dict[str, ServiceEndpoint] = {}
            for sl in own:
                for ep_port in sl.ports:
                    if ep_port.name != sp.name or ep_port.protocol != sp.protocol:
                        continue
                    for ep in sl.endpoints:
                        if not ep.addresses:
                            continue
                        se = ServiceEndpoint(
                            ip=ep.addresses[0],
                            port=ep_port.port,
                            node_name=ep.node_name,
                            ready=ep.ready,
                            serving=ep.serving,
                            terminating=ep.terminating,
                            is_local=node_name is not None and ep.node_name == node_name,
                        )
                        # The same address in several slices counts once; like
                        # kube-proxy, the copy that says it is local wins.
                        if se.address not in seen or (se.is_local
                                                      and not seen[se.address].is_local):
                            seen[se.address] = se
            views.append(ServicePortView(svc, sp, sorted_endpoints(seen.values())))
    return PortViews(views, node_name, sources)
