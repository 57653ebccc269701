"""The latency probe (``probes/latency.c``): per-packet one-way latency, client
egress -> backend pod ingress, read back through memory-mapped stamp arrays.
"""

from __future__ import annotations

import contextlib
import ipaddress
import mmap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench.cluster.topology import Cluster
from bench.errors import FeatureMissing
from bench.measure.probes.loader import (
    TC_EGRESS,
    TC_INGRESS,
    TC_PRIO,
    Probe,
    TcHook,
    compile_probe,
    origin_hook,
    percpu_sum,
)

LATENCY_CAPACITY = 1 << 21  # slots: one replay of traffic.MAX_COUNT packets fits


@dataclass(frozen=True)
class LatencyReading:
    """One-way latencies of the packets stamped at both ends, in sequence order."""

    seqs: np.ndarray  # sequence numbers (uint32) seen at both ends
    latency_ns: np.ndarray  # int64, arrival - departure, same order as seqs
    sent_seen: int  # identified packets at the client's egress (in range or not)
    delivered_seen: int  # identified packets at a backend's ingress
    departed: int  # slots stamped at departure
    lost: int  # departed but never arrived
    out_of_range: int  # identified packets whose sequence number had no slot
    duplicates: int  # stamps that overwrote an earlier one
    seconds: float  # window length
    arrival_ns: np.ndarray | None = None  # arrival stamps (uint64), same order as seqs
    copied: int = 0  # packets parsed by the slow path (headers outside the linear data)
    # The IPv4 destination each arrived with (uint32, host order: int(IPv4Address)),
    # same order as seqs: the backend pod it reached.
    arrival_dst: np.ndarray | None = None

    def percentiles(self, qs: Sequence[float] = (50, 90, 99, 99.9)) -> dict[float, float]:
        """Percentiles (ns) over the merged per-packet samples (empty: NaN)."""
        if not len(self.latency_ns):
            return {q: float("nan") for q in qs}
        return {q: float(v) for q, v in zip(qs, np.percentile(self.latency_ns, qs), strict=True)}


class LatencyProbe(Probe):
    """Per-packet one-way latency (probes/latency.c): client egress -> backend ingress."""

    name = "latency"
    outside_cpu_figure = ("kpb_depart",)  # its client-egress program
    tc_prio = TC_PRIO
    transient_maps = ()  # stamps and counts are zeroed at start(), config set there

    def __init__(self, client: TcHook, backends: Sequence[TcHook],
                 capacity: int = LATENCY_CAPACITY, drop: bool = True,
                 sink: bool = False, pod_nodes: Mapping[str, int] | None = None,
                 entry_node: int = 0) -> None:
        """``drop``: backends drop identified packets at ingress (no responder noise).
        ``sink``: windows open in sink mode (what the cpu passes run with, inside
        :meth:`sinking`; made so, for measurements of its cost).
        ``pod_nodes``: each backend pod's address and node, ``entry_node`` the node the
        traffic enters: with them a reading tells each packet's path (:meth:`other_node`)."""
        super().__init__()
        self.pod_nodes = {int(ipaddress.IPv4Address(ip)): node
                          for ip, node in (pod_nodes or {}).items()}
        # The pods' addresses sorted, and their nodes in that order (other_node's table).
        ips = np.fromiter(self.pod_nodes, dtype=np.uint32, count=len(self.pod_nodes))
        order = np.argsort(ips)
        self._pod_ips = ips[order]
        self._pod_node = np.fromiter(self.pod_nodes.values(), dtype=np.int64,
                                     count=len(ips))[order]
        self.entry_node = entry_node
        self.sink = sink
        if not 1 <= capacity <= 1 << 24:
            raise ValueError(f"capacity {capacity} out of range (1-{1 << 24})")
        if not backends:
            raise ValueError("the latency probe needs at least one backend hook")
        self.client = client
        self.backends = list(backends)
        self.capacity = capacity
        self.drop = drop
        self._maps: list[mmap.mmap] = []
        self._depart: np.ndarray | None = None
        self._arrive: np.ndarray | None = None
        self._dst: np.ndarray | None = None
        self._seq_base = 0
        # The last window's reading (read()): what a caller after it may still ask of it.
        self.last_reading: LatencyReading | None = None

    @classmethod
    def for_cluster(cls, cluster: Cluster, external: bool = False,
                    capacity: int = LATENCY_CAPACITY, drop: bool = True,
                    sink: bool = False) -> LatencyProbe:
        """Client pod (or the external client) egress -> every backend pod's ingress. The
        traffic enters node 0 (the client pod lives there; NodePort traffic goes to it)."""
        pods = [TcHook(cluster.pod_ns(p)) for p in cluster.layout.pods]
        return cls(origin_hook(cluster, external), pods, capacity, drop, sink,
                   pod_nodes={p.ip: p.node for p in cluster.layout.pods}, entry_node=0)

    def other_node(self, arrival_dst: np.ndarray) -> np.ndarray | None:
        """Per packet of a reading (its ``arrival_dst``): True where the pod it reached
        lives on another node than the entry node; None when the probe was not told the
        pods' nodes, or a packet reached an address that is none of the pods'."""
        if not self.pod_nodes:
            return None
        ips, nodes = self._pod_ips, self._pod_node
        at = np.searchsorted(ips, arrival_dst).clip(0, len(ips) - 1)
        if len(arrival_dst) and not (ips[at] == arrival_dst).all():
            return None
        return nodes[at] != self.entry_node

    def pass_through(self) -> None:
        self.drop = False  # identified packets go on to the backend's stack

    def cflags(self) -> list[str]:
        return [f"-DKPB_CAPACITY={self.capacity}", f"-DKPB_DROP={int(self.drop)}"]

    def _attach(self) -> None:
        self._bpf = compile_probe(self.name, self.cflags())
        self._depart = self._mmap("depart_ns")
        self._arrive = self._mmap("arrive_ns")
        # Stored as the packet carries it (network order): read big-endian; an array
        # map's elements are 8 bytes apart whatever their size, the u32 first.
        self._dst = self._mmap("arrive_dst", ">u4", stride=8)
        self._attach_tc("kpb_depart", [self.client], TC_EGRESS)
        self._attach_tc("kpb_arrive", self.backends, TC_INGRESS)

    def _mmap(self, name: str, dtype: str = "u8", stride: int = 8) -> np.ndarray:
        # Array maps made with BPF_F_MMAPABLE map straight into our memory: a
        # million stamps are one copy, not a million syscalls.
        table = self._bpf[name.encode()]
        size = -(-self.capacity * stride // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            mm = mmap.mmap(table.map_fd, size, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise FeatureMissing(f"{self.name} probe: cannot mmap the {name} map "
                                 f"(BPF_F_MMAPABLE needs Linux 5.5): {e}") from e
        self._maps.append(mm)
        every = stride // np.dtype(dtype).itemsize
        return np.frombuffer(mm, dtype=dtype, count=self.capacity * every)[::every]

    def detach(self) -> None:
        # numpy views must go before the mmaps they export can close.
        self._depart = self._arrive = self._dst = None
        while self._maps:
            self._maps.pop().close()
        super().detach()

    def start(self, seq_base: int = 0) -> None:
        """Open a window for sequence numbers ``seq_base`` .. ``seq_base + capacity - 1``
        (stamping, unless the probe was made with ``sink``)."""
        self._require()
        config = self._bpf[b"config"]
        config[config.Key(0)] = config.Leaf(seq_base)
        config[config.Key(1)] = config.Leaf(int(self.sink))
        self._seq_base = seq_base
        super().start()

    @contextlib.contextmanager
    def sinking(self) -> Iterator[None]:
        """For the block, sink mode (probes/latency.c): nothing is stamped or counted,
        the backends drop every IPv4 frame at ingress as they drop identified ones
        otherwise; a CPU figure taken meanwhile carries only a lookup and a compare of
        this probe's (and its hook's dispatch)."""
        self._require()
        was = self.sink
        self._sink_mode(True)
        try:
            yield
        finally:
            self._sink_mode(was)

    def _sink_mode(self, on: bool) -> None:
        self.sink = on
        if self._bpf is not None:
            config = self._bpf[b"config"]
            config[config.Key(1)] = config.Leaf(int(on))

    def _zero(self) -> None:
        assert self._depart is not None and self._arrive is not None and self._dst is not None
        self._depart[:] = 0
        self._arrive[:] = 0
        self._dst[:] = 0
        self._bpf[b"counts"].clear()

    def read(self) -> LatencyReading:
        """Latencies and counts of the packets seen since :meth:`start`."""
        self._require()
        assert self._depart is not None and self._arrive is not None and self._dst is not None
        counts = self._bpf[b"counts"]
        depart, arrive = self._depart.copy(), self._arrive.copy()
        both = np.flatnonzero((depart != 0) & (arrive != 0))
        dst = self._dst[both].astype(np.uint32)
        departed = int(np.count_nonzero(depart))
        self.last_reading = LatencyReading(
            seqs=(both + self._seq_base).astype(np.uint32),
            latency_ns=arrive[both].astype(np.int64) - depart[both].astype(np.int64),
            sent_seen=percpu_sum(counts, 0), delivered_seen=percpu_sum(counts, 1),
            departed=departed, lost=departed - len(both),
            out_of_range=percpu_sum(counts, 2), duplicates=percpu_sum(counts, 3),
            seconds=self._window(), arrival_ns=arrive[both],
            copied=percpu_sum(counts, 4), arrival_dst=dst)
        return self.last_reading

    def sunk(self) -> int:
        """IPv4 frames the backends took in sink mode since the window opened
        (:meth:`start`; a window opened in sink mode counts only those): read before
        and after a pass inside :meth:`sinking`, the difference is what it delivered."""
        self._require()
        return percpu_sum(self._bpf[b"counts"], 5)

    def stamps(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the first ``count`` slots' (departure ns, arrival ns) since :meth:`start`
        (0: not seen), slot i = sequence number ``seq_base + i``: the disruption timeline
        (bench.measure.disruption) bins every sent packet, lost ones too, by its own
        departure stamp."""
        self._require()
        assert self._depart is not None and self._arrive is not None
        count = min(count, self.capacity)
        return self._depart[:count].copy(), self._arrive[:count].copy()

    def first_departure(self) -> int:
        """Slot 0's departure stamp (0: not sent yet): when the window's traffic began."""
        self._require()
        assert self._depart is not None
        return int(self._depart[0])
