"""The one-way probe (``probes/oneway.c``): a socket workload's request time (client pod
egress -> backend pod ingress) and response time (backend pod egress -> client pod
ingress), each packet matched at its two ends by what NAT keeps (docs/sockets.md,
"One-way parts").
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.analysis.stats import Histogram
from bench.cluster.topology import Cluster
from bench.errors import FeatureMissing
from bench.measure.probes.loader import (
    TC_EGRESS,
    TC_INGRESS,
    TC_PRIO,
    Probe,
    TcHook,
    clear_live,
    compile_probe,
    origin_hook,
    percpu_sum,
)

ONEWAY_CAPACITY = 1 << 20  # samples per direction
ONEWAY_INFLIGHT = 1 << 16  # packets in flight at once (the in-flight map's bound)
DIRECTIONS = ("request", "response")
# The counters of probes/oneway.c, in its enum's order.
COUNTERS = ("request_departed", "request_arrived", "response_departed", "response_arrived",
            "syn_client_egress", "syn_backend_ingress", "syn_backend_egress",
            "syn_client_ingress", "duplicates", "unmatched", "inflight_full", "overflow",
            "short")


@dataclass(frozen=True)
class OneWayReading:
    """One window's one-way samples (ns) per direction and the probe's counts."""

    request_ns: np.ndarray  # int64, one per matched request packet
    response_ns: np.ndarray  # int64, one per matched response packet
    counts: dict[str, int]  # COUNTERS, plus "left_in_flight" (departed, never arrived)
    seconds: float

    def histograms(self) -> dict[str, Histogram]:
        """{"request": ..., "response": ...}: each direction's samples as a histogram."""
        return {"request": Histogram.from_samples(self.request_ns),
                "response": Histogram.from_samples(self.response_ns)}


class OneWayProbe(Probe):
    """Request and response one-way times of socket workloads (see the module doc)."""

    name = "oneway"
    tc_prio = TC_PRIO + 5
    transient_maps = ("inflight",)  # departures of the last window

    def __init__(self, client: TcHook, backends: Sequence[TcHook],
                 capacity: int = ONEWAY_CAPACITY, inflight: int = ONEWAY_INFLIGHT,
                 match_port: bool = True) -> None:
        """``match_port``: TCP keys hold the client port (False: SNAT may change it, the
        sequence and acknowledgment numbers alone tell connections apart)."""
        super().__init__()
        self.match_port = match_port
        if not 1 <= capacity <= 1 << 24:
            raise ValueError(f"capacity {capacity} out of range (1-{1 << 24})")
        if not 1 <= inflight <= 1 << 22:
            raise ValueError(f"inflight {inflight} out of range (1-{1 << 22})")
        if not backends:
            raise ValueError("the one-way probe needs at least one backend hook")
        self.client = client
        self.backends = list(backends)
        self.capacity = capacity
        self.inflight = inflight
        self._map: mmap.mmap | None = None
        self._samples: np.ndarray | None = None

    @classmethod
    def for_cluster(cls, cluster: Cluster, external: bool = False,
                    capacity: int = ONEWAY_CAPACITY) -> OneWayProbe:
        """The client pod (or the external client, ``external``: NodePort, whose SNAT
        picks a random source port, so TCP keys leave the port out) and every backend
        pod."""
        return cls(origin_hook(cluster, external),
                   [TcHook(cluster.pod_ns(p)) for p in cluster.layout.pods], capacity,
                   match_port=not external)

    def cflags(self) -> list[str]:
        return [f"-DKPB_CAPACITY={self.capacity}", f"-DKPB_INFLIGHT={self.inflight}",
                f"-DKPB_MATCH_PORT={int(self.match_port)}"]

    def _attach(self) -> None:
        self._bpf = compile_probe(self.name, self.cflags())
        table = self._bpf[b"samples"]
        size = -(-2 * self.capacity * 8 // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            self._map = mmap.mmap(table.map_fd, size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise FeatureMissing(f"{self.name} probe: cannot mmap the samples map "
                                 f"(BPF_F_MMAPABLE needs Linux 5.5): {e}") from e
        self._samples = np.frombuffer(self._map, dtype=np.uint64, count=2 * self.capacity)
        self._attach_tc("kpb_req_depart", [self.client], TC_EGRESS)
        self._attach_tc("kpb_resp_arrive", [self.client], TC_INGRESS)
        self._attach_tc("kpb_req_arrive", self.backends, TC_INGRESS)
        self._attach_tc("kpb_resp_depart", self.backends, TC_EGRESS)

    def detach(self) -> None:
        self._samples = None  # the numpy view goes before the mmap it exports
        if self._map is not None:
            self._map.close()
            self._map = None
        super().detach()

    def _zero(self) -> None:
        clear_live(self._bpf[b"inflight"])  # the programs change it meanwhile
        self._bpf[b"next"].clear()
        self._bpf[b"counts"].clear()

    def read(self) -> OneWayReading:
        """Samples and counts since :meth:`start` (read once the traffic has stopped)."""
        self._require()
        assert self._samples is not None
        nxt = self._bpf[b"next"]
        written = [min(int(nxt[nxt.Key(d)].value), self.capacity) for d in range(2)]
        parts = [self._samples[d * self.capacity:d * self.capacity + written[d]]
                 .astype(np.int64) for d in range(2)]
        c = self._bpf[b"counts"]
        counts = {name: percpu_sum(c, i) for i, name in enumerate(COUNTERS)}
        counts["left_in_flight"] = len(self._bpf[b"inflight"])
        return OneWayReading(parts[0], parts[1], counts, self._window())
