"""The transit probe (``probes/transit.c``): node transit time, inbound hop ->
outbound hop of the same skb, as a log-linear histogram.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.cluster.topology import Cluster
from bench.errors import FeatureMissing
from bench.measure.probes.loader import (
    TC_EGRESS,
    TC_PRIO,
    Probe,
    TcHook,
    clear_live,
    compile_probe,
    origin_hook,
    percpu_sum,
    skb_offset_flags,
    tracepoint_field,
)

TRANSIT_SUB_BITS = 4  # must match KPB_SUB_BITS in transit.c
TRANSIT_BUCKETS = (62 - TRANSIT_SUB_BITS + 1) << TRANSIT_SUB_BITS  # as KPB_BUCKETS
TRANSIT_HOPS = ("pc->pod", "pc->ul0", "ul0->pod", "ul0->ul0")
# A run's breakdown repetition times 1 in this many of its packets (1,250 of the
# default 10,000): a timed packet costs about 400 ns of programs on a pod -> node ->
# pod path, one that is not about 15 ns a hit (docs/probes.md, "The breakdown set").
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
    rx_seen: int  # packets received on a node's inbound hop
    seconds: float
    sample_every: int = 1  # tagged: 1 in this many of the packets sent were timed
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
    """Node transit time, inbound hop -> outbound hop of the same skb (probes/transit.c).

    With ``origin`` (the client's egress hook) only the skbs the client sent
    count; without it, every packet through any kpbench node on the machine.
    ``sample_every`` (with an origin): only 1 in that many of the IPv4 skbs the
    client sends is tagged and timed; the others leave every hit at the tag
    table's first compare, so the probe costs the packets it does not time little.
    """

    name = "transit"
    outside_cpu_figure = ("kpb_tag",)  # its client-egress program
    tc_prio = TC_PRIO + 2
    transient_maps: tuple[str, ...] = ()

    def __init__(self, origin: TcHook | None = None, max_ns: int = 1_000_000_000,
                 sample_every: int = 1, process_group: Path | None = None) -> None:
        """``max_ns``: longer matches count as stale (an untracked skb's address reused).
        ``process_group``: the cgroup of the datapath's own processes (a userspace
        proxy): a run's skb that reaches their sockets is forgotten there, as it ends
        without a tracepoint (needs ``origin``)."""
        super().__init__()
        if not 1 <= sample_every <= 1024:
            raise ValueError(f"sample_every {sample_every} out of range (1-1024)")
        if sample_every > 1 and origin is None:
            raise ValueError("sampling needs an origin hook (it tags the skbs it times)")
        if process_group is not None and origin is None:
            raise ValueError("a process group needs an origin hook (it forgets tagged skbs)")
        self.origin = origin
        self.process_group = process_group
        self.max_ns = max_ns
        self.sample_every = sample_every
        # Untagged: the skbs of the last window, stamped at a node's inbound hop.
        # Tagged: the table of the run's skbs holds only live ones (ended ones are
        # forgotten), and a stamp at least KPB_MAX_NS old counts as stale.
        self.transient_maps = ("inflight",) if origin is None else ()

    @classmethod
    def for_cluster(cls, cluster: Cluster, external: bool = False,
                    sample_every: int = 1, process_group: Path | None = None) -> TransitProbe:
        """Transit of the packets the client pod (or the external client) sends."""
        return cls(origin_hook(cluster, external), sample_every=sample_every,
                   process_group=process_group)

    def cflags(self) -> list[str]:
        for event in ("netif_receive_skb", "net_dev_start_xmit"):
            if tracepoint_field("net", event, "name") is None:
                raise FeatureMissing(f"{self.name} probe: net:{event} has no device name")
        tagged = self.origin is not None
        return [f"-DKPB_MAX_NS={self.max_ns}ULL", f"-DKPB_TAGGED={int(tagged)}",
                *([f"-DKPB_SAMPLE_EVERY={self.sample_every}"] if self.sample_every > 1 else ()),
                *(skb_offset_flags(self.name) if tagged else ())]

    def _attach(self) -> None:
        self._bpf = compile_probe(self.name, self.cflags())
        if self.origin is not None:
            self._attach_tracepoint("skb:kfree_skb", "kpb_kfree_skb")
            self._attach_tracepoint("skb:consume_skb", "kpb_consume_skb")
            self._attach_tc("kpb_tag", [self.origin], TC_EGRESS)
        if self.process_group is not None:
            self._attach_cgroup_ingress("kpb_delivered_cg", self.process_group)

    def _zero(self) -> None:
        for name in (b"hist", b"counts"):
            self._bpf[name].clear()
        if self.origin is None:
            # Tagged entries belong to live skbs; untagged ones may be stale.
            clear_live(self._bpf[b"inflight"])
        elif self.sample_every > 1:
            self._bpf[b"sent"].clear()  # every window times its 1st, (N+1)th, ... packet

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
