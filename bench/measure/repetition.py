"""One repetition of traffic: the flows it takes, the probes that watch it, and what
they read back.

Every phase of a cluster's traffic takes its own range of sequence numbers
(:class:`SeqSpace`), so each packet of a new-flow workload is a new flow; the
probes a scenario asks for are attached together (:class:`ProbeSet`, those that
fail recorded as missing); :func:`read_repetition` turns their readings into a
repetition of the result, counting only the packets this repetition sent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench import interrupts
from bench import results as R
from bench.analysis.stats import Histogram
from bench.errors import FeatureMissing, KpbenchError
from bench.measure.probes.cpu import CpuProbe, CpuReading
from bench.measure.probes.drops import DropsProbe
from bench.measure.probes.latency import LatencyProbe, LatencyReading
from bench.measure.probes.loader import Probe
from bench.measure.probes.transit import transit_bucket_bounds
from bench.measure.traffic import ESTABLISHED_FLOWS, SPORTS, ReplayStats

#: Packets still in flight when tcpreplay returns drain in this long.
DRAIN_SECONDS = 0.05

log = logging.getLogger("kpbench")

# Source addresses every new-flow pcap of a cluster steps through: 64 x 64,512 flows,
# enough for settle, warm-up, repetitions and controls of a point.
FLOW_SRC_SPAN = 64


class SeqSpace:
    """The sequence numbers of one cluster's traffic, handed out in disjoint ranges.

    A new-flow packet's flow is its sequence number modulo the flow space
    (bench.measure.traffic), and every range lies below that modulus: settle, warm-up,
    measured, control, breakdown and overhead traffic of one cluster never
    share a flow, so "every packet a new flow" holds for each (conntrack is
    not flushed between them). Ranges only grow, so a straggler of an earlier
    phase has a sequence number below the next window and is out of its range.
    """

    def __init__(self, src_span: int = FLOW_SRC_SPAN) -> None:
        self.src_span = src_span
        self.flows = SPORTS * src_span
        self.next = 0

    def take(self, count: int) -> int:
        """The first of ``count`` sequence numbers no other phase uses."""
        if self.next + count > self.flows:
            raise KpbenchError(f"{self.next + count} packets exceed the {self.flows} fresh "
                               "flows of one cluster; lower traffic.packets or repetitions")
        first, self.next = self.next, self.next + count
        return first


@dataclass
class ProbeSet:
    """The probes a scenario asks for; the ones that failed are recorded as missing.

    ``cpu``: the cpu probe of the measured repetitions, attached only in their cpu
    passes (:meth:`cpu_window`), never beside the latency probe's stamping: each of
    the two would put its own work into the other's figure.

    ``latency`` None: a breakdown set, whose drops probe (``others["drops"]``, made to
    sink) counts what the backends took, as the latency probe's sink mode would with
    a program of its own; if that probe cannot attach (the kernel lacks what it reads),
    ``sink_fallback`` makes the latency probe that counts instead.
    """

    latency: LatencyProbe | None
    others: dict[str, Probe] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)  # shared by a run: each reason said once
    cpu: CpuProbe | None = None
    sink_fallback: Callable[[], LatencyProbe] | None = None

    def _missing(self, name: str, e: FeatureMissing) -> None:
        if str(e) not in self.warned:
            self.warned.add(str(e))
            log.warning("warning: %s; its measurement is recorded as missing "
                        "(at every point; said once)", e)
        self.missing[name] = str(e)

    @property
    def counter(self) -> LatencyProbe | DropsProbe:
        """The probe that counts delivered packets: the latency probe, else the drops
        probe sinking at the backends."""
        if self.latency is not None:
            return self.latency
        drops = self.others.get("drops")
        if not isinstance(drops, DropsProbe) or not drops.sink:
            raise ValueError("a probe set without the latency probe needs a sinking drops probe")
        return drops

    @contextlib.contextmanager
    def attached(self) -> Iterator[ProbeSet]:
        """The probes attached for the block (a missing one recorded, said once per run)."""
        try:
            # Without the probe that counts delivered packets nothing can: that is fatal.
            counter = self.counter
            try:
                counter.attach()
            except FeatureMissing as e:
                if self.latency is not None or self.sink_fallback is None:
                    raise
                # The sinking drops probe cannot attach on this kernel: recorded as
                # missing, and the latency probe in sink mode counts instead.
                self._missing("drops", e)
                del self.others["drops"]
                self.latency = counter = self.sink_fallback()
                counter.attach()
            for name, probe in list(self.others.items()):
                if probe is counter:
                    continue
                try:
                    probe.attach()
                except FeatureMissing as e:
                    self._missing(name, e)
                    del self.others[name]
            yield self
        finally:
            with interrupts.deferred():
                for probe in self.all():
                    probe.detach()

    def all(self) -> list[Probe]:
        """Every probe of the set but the cpu probe of the cpu passes."""
        return [p for p in (self.latency, *self.others.values()) if p is not None]

    @contextlib.contextmanager
    def cpu_window(self) -> Iterator[CpuProbe | None]:
        """The cpu probe attached for the block, with the latency probe in sink mode
        (None: no cpu probe, or it cannot attach: recorded as missing)."""
        cpu = self.cpu
        if cpu is not None:
            try:
                cpu.attach()  # a compiled program kept from the last pass: quick
            except FeatureMissing as e:
                self._missing("cpu", e)
                self.cpu = cpu = None
        if cpu is None:
            yield None
            return
        if self.latency is None:
            raise ValueError("a cpu pass needs the latency probe (its sink mode)")
        try:
            with self.latency.sinking():
                yield cpu
        finally:
            with interrupts.deferred():
                cpu.detach()

    def start(self, seq_base: int) -> None:
        """Start a window whose own packets have sequence numbers from ``seq_base``."""
        if self.latency is not None:
            self.latency.start(seq_base)
        for probe in self.others.values():
            probe.start()


def read_repetition(stats: Any, probes: ProbeSet, latency: bool = True,
                    seq_base: int = 0) -> R.RepetitionDoc:
    """The repetition the probes saw of the replay ``stats`` describes (``latency``:
    with its latency histogram; a breakdown repetition's latency is not reported).
    Its CPU figures come from its own cpu pass (:func:`cpu_fields`)."""
    counter = probes.counter
    by_path: dict[str, Histogram | None] | None = None
    if counter.sink:
        # A window in sink mode (the breakdown repetition): nothing stamped; delivered
        # is what the backends took (IPv4 frames; the repetition's traffic is all there
        # is, and the probes were started after the earlier traffic drained).
        delivered = min(counter.sunk(), stats.sent)
        arrivals = latency_ns = np.empty(0, dtype=np.int64)
    else:
        lat = counter.read()  # the latency probe's (only it stamps)
        # Only the packets this repetition sent: stamped on leaving the client in this
        # window, with a sequence number among the first stats.sent of its range. A
        # straggler of earlier traffic, or warm-up, is not one of them.
        mine = sent_here(lat.seqs, seq_base, stats.sent)
        delivered = int(np.count_nonzero(mine))
        arrivals = lat.arrival_ns[mine] if lat.arrival_ns is not None else np.empty(0)
        latency_ns = lat.latency_ns[mine]
        if latency and lat.arrival_dst is not None and isinstance(counter, LatencyProbe):
            by_path = latency_by_path(latency_ns, counter.other_node(lat.arrival_dst[mine]))
    kw: dict[str, Any] = {}
    if "drops" in probes.others:
        drops = probes.others["drops"].read()  # type: ignore[attr-defined]
        # The run's own packets when the probe can tell them apart, else IPv4 drops.
        kw["drops"] = (drops.run_by_reason if drops.run_by_reason is not None
                       else drops.ipv4_by_reason)
    if "transit" in probes.others:
        tr = probes.others["transit"].read()  # type: ignore[attr-defined]
        lower, upper = transit_bucket_bounds()
        mids = ((lower + upper - 1) / 2).astype("int64")
        samples = mids.repeat(tr.hist)
        kw["transit_hist"] = Histogram.from_samples(samples) if len(samples) else None
        kw["transit_sample_every"] = tr.sample_every
    if "kfunc" in probes.others:
        kw["kfunc"] = probes.others["kfunc"].read().per_packet(delivered)  # type: ignore[attr-defined]
    return R.make_repetition(
        sent=stats.sent, delivered=delivered, offered_pps=stats.offered_pps,
        achieved_pps=stats.achieved_pps,
        # Measured at the receiver: first to last arrival of the delivered packets.
        arrival_seconds=(float(arrivals.max() - arrivals.min()) / 1e9
                         if len(arrivals) > 1 else None),
        latency_hist=(Histogram.from_samples(latency_ns)
                      if latency and len(latency_ns) else None),
        latency_by_path=by_path, **kw)


def flow_endpoints(reading: LatencyReading) -> list[str] | None:
    """The backend pod each established flow reached in ``reading`` (a udp-established
    window: flow k's packets have sequence numbers k modulo ESTABLISHED_FLOWS), element
    k for flow k; the last one's where a flow moved (a userspace proxy's session that
    expired). None when a flow has no packet in it, or no destination was recorded."""
    if reading.arrival_dst is None or not len(reading.seqs):
        return None
    seqs = np.asarray(reading.seqs, dtype=np.int64)
    order = np.argsort(seqs, kind="stable")
    # Latest first: np.unique's first index of each flow is then its last packet's.
    flows = (seqs[order] % ESTABLISHED_FLOWS)[::-1]
    dsts = np.asarray(reading.arrival_dst)[order][::-1]
    found, first = np.unique(flows, return_index=True)
    if len(found) != ESTABLISHED_FLOWS:
        return None
    return [str(ipaddress.IPv4Address(int(d))) for d in dsts[first]]


def latency_by_path(latency_ns: np.ndarray,
                    other: np.ndarray | None) -> dict[str, Histogram | None] | None:
    """The latencies split by the path each packet took (``other``: True where it reached
    a pod on another node than the entry node); None where the paths are not known."""
    if other is None:
        return None
    parts = {"entry_node": latency_ns[~other], "other_node": latency_ns[other]}
    return {path: Histogram.from_samples(v) if len(v) else None for path, v in parts.items()}


def net_rx_less_probe(cpu: CpuReading, share_ns_per_softirq: float | None) -> dict[str, int]:
    """The NET_RX time of ``cpu`` less the cpu probe's own share of it.

    ``share_ns_per_softirq``: the probe's own time inside each window it times
    (bench.measure.overhead.cpu_probe_share, measured once per run). It is in every
    NET_RX softirq the probe timed, so that many times it is taken out of
    ``softirq_ns`` and kept apart as ``softirq_probe_ns``; None (not measured): the
    figure keeps it and ``softirq_probe_ns`` is absent. ``net_rx_softirqs``: the
    softirqs timed.
    """
    out = {"softirq_ns": cpu.net_rx_ns, "net_rx_softirqs": cpu.runs}
    if share_ns_per_softirq is not None:
        probe = min(round(share_ns_per_softirq * cpu.runs), cpu.net_rx_ns)
        out["softirq_probe_ns"] = probe
        out["softirq_ns"] -= probe
    return out


def cpu_fields(cpu: CpuReading, delivered: int,
               share_ns_per_softirq: float | None) -> dict[str, Any]:
    """A repetition's CPU figures from its cpu pass: ``delivered`` packets reached the
    backends (as the latency probe's sink counts them) while ``cpu`` was read; its
    NET_RX time less the cpu probe's own share (:func:`net_rx_less_probe`)."""
    fields: dict[str, Any] = net_rx_less_probe(cpu, share_ns_per_softirq)
    total = fields["softirq_ns"] + cpu.process_ns
    return {**fields,
            "process_ns": cpu.process_ns,  # the datapath's processes (0: it runs none)
            "cpu_ns_per_packet": total / delivered if delivered else None,
            "cpu_delivered": delivered}


def sent_here(seqs: np.ndarray, seq_base: int, sent: int) -> np.ndarray:
    """Mask of ``seqs`` within the first ``sent`` sequence numbers from ``seq_base``."""
    offset = seqs.astype(np.int64) - seq_base
    return (offset >= 0) & (offset < sent)


def replay_failure(stats: ReplayStats, count: int, budget: float) -> str | None:
    """Why a replay of ``count`` packets cannot stand as a repetition (None: it can)."""
    if stats.timed_out:
        return (f"tcpreplay timed out after {budget:.0f} s having sent {stats.sent} of "
                f"{count} packets")
    if stats.failed:
        return f"tcpreplay failed to send {stats.failed} of {count} packets"
    if stats.sent != count:
        return f"tcpreplay sent {stats.sent} of {count} packets"
    return None
