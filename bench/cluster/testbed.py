"""A cluster with one datapath programmed on every node: what ``kpbench up``,
the semantics tests and the benchmark runner all stand on."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import interrupts
from bench.cluster.topology import Cluster
from bench.datapaths import Datapath, NodeContext
from bench.errors import ApplyTimeout
from bench.model import layout as L
from bench.model.layout import Layout, plan_layout
from bench.model.objects import EndpointSlice, PortViews, Service, service_port_views

log = logging.getLogger(__name__)


class Testbed:
    """Build the namespace cluster for ``services`` and program ``datapath`` on each node.

    ``pod_services`` (service keys ``ns/name``) limits which services get real
    backend pods: a scale run programs thousands of services but only sends
    traffic to the measured one. ``echo`` starts the TCP/UDP echo listeners
    (semantics checks); benchmarks leave it off so no userspace process
    perturbs what is measured. ``sync_on_enter`` programs the datapath when
    the cluster is up; the runner turns it off to time the first sync itself.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, datapath: Datapath, services: Sequence[Service],
                 slices: Sequence[EndpointSlice], nodes: int = 2,
                 max_pods: int = L.DEFAULT_MAX_PODS, *,
                 pod_services: Collection[str] | None = None, echo: bool = True,
                 sync_on_enter: bool = True) -> None:
        self.datapath = datapath
        self.services = list(services)
        self.slices = list(slices)
        backed = [s for s in services if pod_services is None or s.key in pod_services]
        self.layout: Layout = plan_layout(service_port_views(backed, slices, None), nodes,
                                          max_pods)
        self.cluster = Cluster(self.layout)
        self.echo = echo
        self.sync_on_enter = sync_on_enter
        self.last_timing = SyncTiming()
        self._contexts: dict[int, NodeContext] = {}
        self._views: dict[int, PortViews] = {}  # node -> its last views (views())

    def node_context(self, i: int) -> NodeContext:
        """Node ``i``'s context: one object per node for the testbed's life (it is frozen),
        as a proxy's node configuration is, so a render finds it unchanged at a glance
        (``is``) rather than comparing its fields."""
        ctx = self._contexts.get(i)
        if ctx is None:
            ctx = self._contexts[i] = NodeContext(
                node_name=self.layout.node_names[i], node_ips=(L.node_ip(i),),
                cluster_cidr=L.CLUSTER_CIDR, service_cidrs=(str(L.SERVICE_CIDR),))
        return ctx

    def views(self, i: int, slices: Sequence[EndpointSlice] | None = None) -> PortViews:
        """Node ``i``'s service ports (of ``slices``, else the testbed's own): the same
        view objects as the last call's for every Service whose objects are unchanged,
        as an informer's cache hands them (objects.service_port_views, ``previous``)."""
        views = service_port_views(self.services, self.slices if slices is None else slices,
                                   self.layout.node_names[i], previous=self._views.get(i))
        self._views[i] = views
        return views

    def __enter__(self) -> Testbed:
        self.cluster.__enter__()
        try:
            if self.echo:
                self.cluster.start_echo()
            if self.sync_on_enter:
                self.sync()
        except BaseException:
            self.cluster.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with interrupts.deferred():
            try:
                self.datapath.release()
            except Exception as e:  # the namespaces must go regardless
                log.warning("%s: could not free its programs: %s", self.datapath.name, e)
            finally:
                self.cluster.teardown()

    def sync(self, services: Sequence[Service] | None = None,
             slices: Sequence[EndpointSlice] | None = None, *,
             limit: float | None = None) -> SyncTiming:
        """Full sync of every node to ``services``/``slices``, timed render vs apply per node.

        ``limit``: seconds the applies of all nodes may take together (a point's
        time limit): each node's apply may take what the nodes before it left (and
        at most the datapath's own ``apply_timeout``); past it, ApplyTimeout.
        :attr:`last_timing` holds the nodes done so far, also when an apply
        fails or exceeds its limit (then its last entry is the time reached).
        """
        if services is not None:
            self.services = list(services)
        if slices is not None:
            self.slices = list(slices)
        timing = self.last_timing = SyncTiming()
        own_timeout = self.datapath.apply_timeout
        try:
            for i in range(self.cluster.node_count):
                views, ctx = self.views(i), self.node_context(i)
                if limit is not None:
                    self.datapath.apply_timeout = _time_left(limit, timing, own_timeout)
                with gc_paused():
                    t0 = time.monotonic()
                    rendered = self.datapath.render(views, ctx)
                    t1 = time.monotonic()
                    timing.render.append(t1 - t0)
                    try:
                        self.datapath.apply(rendered, self.cluster.node_ns(i))
                    except ApplyTimeout as e:
                        if i == 0 or limit is None:
                            raise
                        raise ApplyTimeout(f"the sync of {self.cluster.node_count} nodes did "
                                           f"not finish within {limit:g} s: {e}", limit) from e
                    finally:
                        timing.apply.append(time.monotonic() - t1)
                timing.rendered.append(rendered)
        finally:
            self.datapath.apply_timeout = own_timeout
        log.debug("synced %d services on %d nodes in %.3f s", len(self.services),
                  self.cluster.node_count, timing.wall)
        return timing


def _time_left(limit: float, timing: SyncTiming, own: float | None) -> float:
    """What the nodes applied so far left of a sync's ``limit`` (at most ``own``)."""
    left = limit - sum(timing.apply)
    if left <= 0:
        raise ApplyTimeout(f"the sync of the nodes did not finish within {limit:g} s "
                           f"({len(timing.apply)} nodes programmed)", limit)
    return left if own is None else min(left, own)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (a timed sync).

    At 10,000 services the harness holds millions of objects; a full collection
    triggered by a render's allocations walked all of them and took seconds
    here, billed to whichever figure was being timed (render, or the apply of
    an in-process datapath). Reference counting still frees everything; the
    collector runs again after the block.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class SyncTiming:
    """Wall time of one sync, per node: render (kpbench's Python) and apply (tool + kernel).

    The figure a result reports for a sync is :attr:`apply_seconds`, node 0's
    apply: kube-proxy's ``sync_proxy_rules_duration_seconds`` is per node too,
    and render is ours, not the datapath's (:attr:`render_seconds`, apart).
    """

    render: list[float] = field(default_factory=list)  # per node, seconds
    apply: list[float] = field(default_factory=list)  # per node, seconds
    rendered: list[str] = field(default_factory=list)  # per node

    @property
    def apply_seconds(self) -> float | None:
        """Node 0's apply time (None before node 0 was applied)."""
        return self.apply[0] if self.apply else None

    @property
    def render_seconds(self) -> float | None:
        """Node 0's render time."""
        return self.render[0] if self.render else None

    @property
    def wall(self) -> float:
        """Everything the sync took over all nodes (for progress estimates, not results)."""
        return sum(self.render) + sum(self.apply)

    def setup_fields(self) -> dict[str, Any]:
        """The point's ``setup`` keys for this sync (see bench.results.schema.SetupDoc)."""
        return {"sync_seconds": self.apply_seconds, "sync_render_seconds": self.render_seconds,
                "sync_node_seconds": list(self.apply)}
