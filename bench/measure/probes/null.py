"""The null probe (``probes/null.c``): an empty tc program at the backend pods' ingress.

It calibrates the probes' program figures (bench.measure.overhead.measure_in_window):
with the kernel's run-time statistics on, every program's recorded time holds the
statistics' own clock reads, and what those cost in place, at the traffic's rate,
is what this program's runs record (its body is one instruction).
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.cluster.topology import Cluster
from bench.measure.probes.loader import TC_INGRESS, TC_PRIO_FIRST, Probe, TcHook, compile_probe


class NullProbe(Probe):
    """An empty program at ``backends``' tc ingress, ahead of every other probe."""

    name = "null"
    tc_prio = TC_PRIO_FIRST - 2  # before the gone probe's and every other probe's filter

    def __init__(self, backends: Sequence[TcHook]) -> None:
        super().__init__()
        self.backends = list(backends)

    @classmethod
    def for_cluster(cls, cluster: Cluster) -> NullProbe:
        return cls([TcHook(cluster.pod_ns(p)) for p in cluster.layout.pods])

    def _attach(self) -> None:
        self._bpf = compile_probe(self.name, self.cflags())
        self._attach_tc("kpb_null", self.backends, TC_INGRESS)

    def _zero(self) -> None:
        pass  # no maps: its figures are the kernel's statistics of its program
