"""The drops probe (``probes/drops.c``): skbs the kernel dropped, by the kernel's
own drop reason names, machine-wide and for the run's own packets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.cluster.topology import Cluster
from bench.errors import FeatureMissing
from bench.measure.probes.loader import (
    TC_EGRESS,
    TC_INGRESS,
    TC_PRIO,
    TC_PRIO_FIRST,
    Probe,
    TcHook,
    compile_probe,
    origin_hook,
    percpu_sum,
    print_symbolic,
    skb_offset_flags,
    tracepoint_field,
)

CORE_REASONS = 512  # drops.c KPB_CORE_REASONS


@dataclass(frozen=True)
class DropsReading:
    """skb drops by the kernel's own reason names."""

    # Machine-wide (None: the probe was made without them, ``machine_wide=False``).
    by_reason: dict[str, int] | None  # every protocol
    ipv4_by_reason: dict[str, int] | None  # IPv4
    # Packets sent from the origin hook, dropped before a backend hook (with backend
    # hooks: the datapath's drops only); None: no origin.
    run_by_reason: dict[str, int] | None
    seconds: float

    @property
    def total(self) -> int:
        """Every drop the probe counted: machine-wide, else the run's."""
        return sum((self.by_reason if self.by_reason is not None
                    else self.run_by_reason or {}).values())


class DropsProbe(Probe):
    """Dropped skbs by reason (probes/drops.c).

    With ``origin`` (the client's egress hook), drops of the skbs the client
    sent are also counted apart, so other traffic on the machine cannot blur them.
    """

    name = "drops"
    outside_cpu_figure = ("kpb_tag",)  # its client-egress program
    tc_prio = TC_PRIO + 1
    transient_maps = ()

    def __init__(self, origin: TcHook | None = None,
                 backends: Sequence[TcHook] = (), process_group: Path | None = None,
                 sink: bool = False, machine_wide: bool = True) -> None:
        """``backends``: where the run's packets end their crossing of the datapath
        (the backend pods' ingress); a run's packet that reaches one is no longer
        counted, whatever happens to it there (needs ``origin``). ``process_group``:
        the cgroup of the datapath's own processes (a userspace proxy), whose
        sockets are such an end too. ``sink``: the backend hooks also count every IPv4
        frame that reaches them and drop it (:meth:`sunk`; the latency probe's sink
        mode, for a repetition whose latency is not reported: one program a packet
        there instead of two). ``machine_wide=False`` (needs ``origin``): count the run's
        drops only, not every skb drop of the machine beside them; the program at the
        skb's end then skips two counter updates a packet (what the breakdown
        repetition, which stores the run's drops only, runs)."""
        super().__init__()
        if (backends or process_group) and origin is None:
            raise ValueError("backend hooks need an origin hook (they forget tagged skbs)")
        if sink and not backends:
            raise ValueError("sinking needs backend hooks (it counts what reaches them)")
        if not machine_wide and origin is None:
            raise ValueError("without machine-wide counts a drops probe needs an origin hook")
        self.sink = sink
        self.machine_wide = machine_wide
        self.origin = origin
        self.backends = list(backends)
        self.process_group = process_group
        self.reasons: dict[int, str] = {}  # the kernel's names, read on attach

    @classmethod
    def for_cluster(cls, cluster: Cluster, external: bool = False,
                    process_group: Path | None = None, sink: bool = False,
                    machine_wide: bool = True) -> DropsProbe:
        """The datapath's drops of the run's own packets (sent by the client pod or the
        external client, not yet at a backend pod or the datapath's own processes),
        with machine-wide counts beside unless ``machine_wide=False``."""
        pods = [TcHook(cluster.pod_ns(p)) for p in cluster.layout.pods]
        return cls(origin_hook(cluster, external), pods, process_group, sink, machine_wide)

    def pass_through(self) -> None:
        self.sink = False  # the backend hooks count what reaches them and let it pass

    def cflags(self) -> list[str]:
        reason = tracepoint_field("skb", "kfree_skb", "reason")
        protocol = tracepoint_field("skb", "kfree_skb", "protocol")
        if reason is None:
            raise FeatureMissing(f"{self.name} probe: skb:kfree_skb has no reason field "
                                 "(kernel older than 5.17)")
        if reason[1] != 4 or protocol is None or protocol[1] != 2:
            raise FeatureMissing(f"{self.name} probe: skb:kfree_skb has an unexpected layout "
                                 f"(reason {reason}, protocol {protocol})")
        tagged = self.origin is not None
        return [f"-DKPB_OFF_REASON={reason[0]}", f"-DKPB_OFF_PROTOCOL={protocol[0]}",
                f"-DKPB_TAGGED={int(tagged)}", f"-DKPB_SINK={int(self.sink)}",
                f"-DKPB_MACHINE={int(self.machine_wide)}",
                *skb_offset_flags(self.name)]

    def _attach(self) -> None:
        cflags = self.cflags()
        self.reasons = print_symbolic("skb", "kfree_skb", "reason")
        self._bpf = compile_probe(self.name, cflags)
        self._attach_tracepoint("skb:kfree_skb", "kpb_kfree_skb")
        if self.origin is not None:
            self._attach_tracepoint("skb:consume_skb", "kpb_consume_skb")
            self._attach_tc("kpb_tag", [self.origin], TC_EGRESS)
        if self.backends:
            # Ahead of every probe filter there (the latency probe's drop comes after;
            # with sink, this program counts and drops there itself).
            self._attach_tc("kpb_delivered", self.backends, TC_INGRESS, prio=TC_PRIO_FIRST)
        if self.process_group is not None:
            self._attach_cgroup_ingress("kpb_delivered_cg", self.process_group)

    def _zero(self) -> None:
        self._bpf[b"core_drops"].clear()  # zeroes every entry
        self._bpf[b"drops"].clear()
        if self.sink:
            self._bpf[b"sunk"].clear()

    def sunk(self) -> int:
        """IPv4 frames the backends took since the window opened (:meth:`start`; made
        with ``sink``)."""
        self._require()
        if not self.sink:
            raise RuntimeError("the drops probe was not made to sink")
        return percpu_sum(self._bpf[b"sunk"], 0)

    def tagged_left(self) -> int:
        """How many of the run's skbs the tag table holds now (sent, neither delivered
        nor ended yet; with an origin hook)."""
        self._require()
        return sum(1 for _, v in self._bpf[b"tags"].items_lookup_batch() if v.skb)

    def reason_name(self, value: int) -> str:
        """The kernel's name of drop reason ``value`` (``reason-<n>`` if it prints none)."""
        return self.reasons.get(value, f"reason-{value}")

    def read(self) -> DropsReading:
        """Drops by reason since :meth:`start`."""
        self._require()

        # Per-CPU counts (drops.c), summed over the CPUs: the core reasons in an array
        # at kind * CORE_REASONS + reason, the others keyed kind << 32 | reason.
        counts: list[dict[str, int]] = [{}, {}, {}]  # every protocol, IPv4, the run's
        for k, v in self._bpf[b"core_drops"].items():
            if n := int(sum(v)):
                kind, reason = divmod(k.value, CORE_REASONS)
                counts[kind][self.reason_name(reason)] = n
        for k, v in self._bpf[b"drops"].items():
            counts[k.value >> 32][self.reason_name(k.value & 0xFFFFFFFF)] = int(sum(v))
        machine = self.machine_wide
        return DropsReading(counts[0] if machine else None, counts[1] if machine else None,
                            counts[2] if self.origin is not None else None, self._window())
