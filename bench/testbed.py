"""A cluster with one datapath programmed on every node: what ``kpbench up``,
the semantics tests and the benchmark runner all stand on."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from bench import layout as L
from bench.datapaths import Datapath, NodeContext
from bench.layout import Layout, plan_layout
from bench.model import EndpointSlice, Service, ServicePortView, service_port_views
from bench.topology import Cluster

log = logging.getLogger(__name__)


class Testbed:
    __test__ = False  # not a pytest test class, despite the name

    """Build the namespace cluster for ``services`` and program ``datapath`` on each node."""

    def __init__(self, datapath: Datapath, services: Sequence[Service],
                 slices: Sequence[EndpointSlice], nodes: int = 2,
                 max_pods: int = L.DEFAULT_MAX_PODS) -> None:
        self.datapath = datapath
        self.services = list(services)
        self.slices = list(slices)
        self.layout: Layout = plan_layout(service_port_views(services, slices, None), nodes,
                                          max_pods)
        self.cluster = Cluster(self.layout)

    def node_context(self, i: int) -> NodeContext:
        return NodeContext(node_name=self.layout.node_names[i], node_ips=(L.node_ip(i),),
                           cluster_cidr=L.CLUSTER_CIDR, service_cidrs=(str(L.SERVICE_CIDR),))

    def views(self, i: int) -> list[ServicePortView]:
        return service_port_views(self.services, self.slices, self.layout.node_names[i])

    def __enter__(self) -> Testbed:
        self.cluster.__enter__()
        try:
            self.cluster.start_echo()
            self.sync()
        except BaseException:
            self.cluster.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.teardown()

    def sync(self, services: Sequence[Service] | None = None,
             slices: Sequence[EndpointSlice] | None = None) -> float:
        """Full sync of every node to ``services``/``slices``; returns the wall seconds."""
        if services is not None:
            self.services = list(services)
        if slices is not None:
            self.slices = list(slices)
        start = time.monotonic()
        for i in range(self.cluster.node_count):
            rendered = self.datapath.render(self.views(i), self.node_context(i))
            self.datapath.apply(rendered, self.cluster.node_ns(i))
        took = time.monotonic() - start
        log.debug("synced %d services on %d nodes in %.3f s", len(self.services),
                  self.cluster.node_count, took)
        return took
