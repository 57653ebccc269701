"""A cluster with one datapath programmed on every node: what ``kpbench up``,
the semantics tests and the benchmark runner all stand on."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from bench import interrupts
from bench import layout as L
from bench.datapaths import Datapath, NodeContext
from bench.layout import Layout, plan_layout
from bench.model import EndpointSlice, Service, ServicePortView, service_port_views
from bench.topology import Cluster

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

    def node_context(self, i: int) -> NodeContext:
        return NodeContext(node_name=self.layout.node_names[i], node_ips=(L.node_ip(i),),
                           cluster_cidr=L.CLUSTER_CIDR, service_cidrs=(str(L.SERVICE_CIDR),))

    def views(self, i: int) -> list[ServicePortView]:
        return service_port_views(self.services, self.slices, self.layout.node_names[i])

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
             slices: Sequence[EndpointSlice] | None = None) -> SyncTiming:
        """Full sync of every node to ``services``/``slices``, timed render vs apply."""
        if services is not None:
            self.services = list(services)
        if slices is not None:
            self.slices = list(slices)
        timing = SyncTiming()
        for i in range(self.cluster.node_count):
            t0 = time.monotonic()
            rendered = self.datapath.render(self.views(i), self.node_context(i))
            t1 = time.monotonic()
            self.datapath.apply(rendered, self.cluster.node_ns(i))
            timing.render_seconds += t1 - t0
            timing.apply_seconds += time.monotonic() - t1
            timing.rendered.append(rendered)
        log.debug("synced %d services on %d nodes in %.3f s", len(self.services),
                  self.cluster.node_count, timing.total)
        return timing


@dataclass
class SyncTiming:
    """Wall time of one sync over every node: render (ours) and apply (tool + kernel)."""

    render_seconds: float = 0.0
    apply_seconds: float = 0.0
    rendered: list[str] = field(default_factory=list)  # per node

    @property
    def total(self) -> float:
        return self.render_seconds + self.apply_seconds
