"""The transit probe (``probes/transit.c``): node transit time, a node's inbound hop
-> its outbound hop of the same identified packet, as a log-linear histogram.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.cluster.topology import CLIENT_POD_IF, NODE_UNDERLAY_IF, Cluster
from bench.measure.probes.loader import (
    TC_EGRESS,
    TC_INGRESS,
    TC_PRIO,
    Probe,
    TcHook,
    compile_probe,
    percpu_sum,
)

TRANSIT_SUB_BITS = 4  # must match KPB_SUB_BITS in transit.c
TRANSIT_BUCKETS = (62 - TRANSIT_SUB_BITS + 1) << TRANSIT_SUB_BITS  # as KPB_BUCKETS
TRANSIT_HOPS = ("pc->pod", "pc->ul0", "ul0->pod", "ul0->ul0")
# A run's breakdown repetition times 1 in this many of its packets (1,250 of the
# default 10,000): the others leave each hook's program after the parse
# (docs/probes.md, "Transit at the nodes' own hooks").
RUN_SAMPLE_EVERY = 8


def transit_bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) ns of every transit histogram bucket (upper exclusive)."""
    b = np.arange(TRANSIT_BUCKETS, dtype=np.int64)
    sub = 1 << TRANSIT_SUB_BITS
    exp = b >> TRANSIT_SUB_BITS
    lower = np.where(b < sub, b, (sub + (b & (sub - 1))) << np.maximum(exp - 1, 0))
    width = np.where(b < sub, 1, np.int64(1) << np.maximum(exp - 1, 0))
    return lower, lower + width


@dataclass(frozen=True)
class TransitReading:
    """Node transit times as a histogram, plus counts per hop pair."""

    hist: np.ndarray  # counts per bucket, see transit_bucket_bounds()
    by_hops: dict[str, int]  # "pc->pod", "pc->ul0", "ul0->pod", "ul0->ul0"
    stale: int  # matches older than the probe's limit, not counted as samples
    rx_seen: int  # timed packets received on a node's inbound hop
    seconds: float
    sample_every: int = 1  # 1 in this many of the packets sent were timed
    _bounds: tuple[np.ndarray, np.ndarray] = field(default_factory=transit_bucket_bounds,
                                                   repr=False)

    @property
    def count(self) -> int:
        return int(self.hist.sum())

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in ns (bucket midpoint; within 3.2 %), NaN if empty."""
        total = self.count
        if not total:
            return float("nan")
        rank = q / 100 * total
        i = int(np.searchsorted(np.cumsum(self.hist), max(rank, 1), side="left"))
        lower, upper = self._bounds
        return float(lower[i] + upper[i] - 1) / 2


class TransitProbe(Probe):
    """Node transit time of the run's identified packets, from a node's tc ingress
    hook (``pc``, ``ul0``) to its tc egress hook (``p<n>``, ``ul0``): tc programs in
    the run's node namespaces only, keyed by the packet's sequence number
    (probes/transit.c).

    ``sample_every``: only the packets whose sequence number is a multiple of it are
    timed; the others leave each hook's program after its parse.
    """

    name = "transit"
    tc_prio = TC_PRIO + 2
    transient_maps = ("stamps",)  # kept for reuse, without the last window's stamps

    def __init__(self, inbound: Sequence[TcHook], outbound: Sequence[TcHook],
                 max_ns: int = 1_000_000_000, sample_every: int = 1) -> None:
        """``inbound`` / ``outbound``: the nodes' hops whose ingress / egress times a
        packet (their ``ifname`` names the hop: ``pc``, ``ul0`` or ``p<n>``).
        ``max_ns``: longer matches count as stale (a packet dropped inside a node whose
        slot a later departure meets)."""
        super().__init__()
        if not 1 <= sample_every <= 1024:
            raise ValueError(f"sample_every {sample_every} out of range (1-1024)")
        if not inbound or not outbound:
            raise ValueError("transit needs a node's inbound and outbound hops")
        self.inbound = list(inbound)
        self.outbound = list(outbound)
        self.max_ns = max_ns
        self.sample_every = sample_every

    @classmethod
    def for_cluster(cls, cluster: Cluster, sample_every: int = 1) -> TransitProbe:
        """Transit through every node of ``cluster``: in at ``pc`` (node 0) and ``ul0``,
        out at every pod's ``p<n>`` and ``ul0``."""
        nodes = [cluster.node_ns(i) for i in range(cluster.node_count)]
        inbound = [TcHook(cluster.node_ns(0), CLIENT_POD_IF),
                   *(TcHook(ns, NODE_UNDERLAY_IF) for ns in nodes)]
        outbound = [*(TcHook(cluster.node_ns(p.node), f"p{p.index}")
                      for p in cluster.layout.pods),
                    *(TcHook(ns, NODE_UNDERLAY_IF) for ns in nodes)]
        return cls(inbound, outbound, sample_every=sample_every)

    def cflags(self) -> list[str]:
        return [f"-DKPB_MAX_NS={self.max_ns}ULL",
                *([f"-DKPB_SAMPLE_EVERY={self.sample_every}"] if self.sample_every > 1 else ())]

    def _attach(self) -> None:
        self._bpf = compile_probe(self.name, self.cflags())
        # Ingress ahead of a datapath's own programs at the hook (tcx links run before
        # clsact filters; as clsact filters the datapaths' priorities are higher);
        # egress behind them.
        for hooks, parent, prefix, other in ((self.inbound, TC_INGRESS, "kpb_in_", "pc"),
                                             (self.outbound, TC_EGRESS, "kpb_out_", "pod")):
            ul0 = [h for h in hooks if h.ifname == NODE_UNDERLAY_IF]
            rest = [h for h in hooks if h.ifname != NODE_UNDERLAY_IF]
            for fn, group in ((prefix + "ul0", ul0), (prefix + other, rest)):
                if group:
                    self._attach_tc(fn, group, parent)

    def _zero(self) -> None:
        # The stamps too: a stamp left by the last window (a packet dropped inside a
        # node) must not meet this window's departures.
        for name in (b"hist", b"counts", b"stamps"):
            self._bpf[name].clear()

    def read(self) -> TransitReading:
        """Transit histogram and counts since :meth:`start`."""
        self._require()
        hist_t, counts = self._bpf[b"hist"], self._bpf[b"counts"]
        hist = np.zeros(TRANSIT_BUCKETS, dtype=np.int64)
        for k, v in hist_t.items():
            hist[k.value] = sum(v)
        return TransitReading(
            hist=hist, by_hops={h: percpu_sum(counts, i) for i, h in enumerate(TRANSIT_HOPS)},
            stale=percpu_sum(counts, 4), rx_seen=percpu_sum(counts, 5),
            seconds=self._window(), sample_every=self.sample_every)
