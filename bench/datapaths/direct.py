"""``direct``: no Service rules at all, the rules-free reference.

A point of ``direct`` sends its socket workload from the client pod to the
backend pods' own addresses (spread over them as a Service spreads its
connections: :func:`bench.measure.socket_points.socket_paths`), so
its repetitions are the direct path itself and every other datapath's point
at the same workload can be read against it (Service minus direct). Its
syncs program nothing, so their figures are "not applicable" rather than a
fast sync (:attr:`Datapath.without_rules`, read by
:meth:`bench.measure.scale_loop.ScaleLoop.point`), and replayed frames to a
ClusterIP or NodePort, which nothing would translate, are not measured.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.datapaths.base import Datapath, NodeContext
from bench.model.objects import ServicePortView

WHY = "direct programs no Service rules (it is the rules-free reference)"


class DirectDatapath(Datapath):
    """Programs nothing: socket workloads go to the backend pods' own addresses."""

    name = "direct"
    variants = {"direct": ()}  # needs nothing from the kernel beyond the run's namespaces
    without_rules = WHY
    not_measured = {
        "clusterip": "direct programs no Service rules: frames replayed to a ClusterIP "
                     "would go nowhere (its socket points measure the backend pods' own "
                     "addresses)",
        "nodeport": "direct programs no Service rules: frames replayed to a NodePort "
                    "would go nowhere",
        "sockets-nodeport": "direct programs no Service rules: a NodePort from outside "
                            "the cluster reaches nothing, and the underlay does not route "
                            "pod addresses",
    }

    def render(self, ports: Sequence[ServicePortView], ctx: NodeContext) -> str:
        return ""

    def apply(self, rendered: str, netns: str) -> None:
        """Nothing to program."""
