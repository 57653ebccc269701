"""The cpu probe (``probes/cpu.c``): NET_RX softirq CPU time, plus the CPU time
of the datapath's own processes from their cgroup's ``cpu.stat``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from bench.cluster import cgroups
from bench.errors import FeatureMissing
from bench.measure.probes.loader import Probe, compile_probe, percpu_sum, print_symbolic


@dataclass(frozen=True)
class CpuReading:
    """CPU time over a window: NET_RX softirq (machine-wide) and the datapath's processes."""

    net_rx_ns: int  # NET_RX softirq time summed over CPUs
    runs: int  # NET_RX softirqs that ran
    per_cpu_ns: tuple[int, ...]
    seconds: float  # window length
    # Process-context CPU of the processes in the probe's cgroup (the datapath's own,
    # e.g. a userspace proxy), NET_RX time already in net_rx_ns taken out; 0 without
    # a cgroup (no process of the datapath on the packet path).
    process_ns: int = 0
    group_net_rx_ns: int = 0  # NET_RX time that ran while a task of the cgroup was current

    @property
    def total_ns(self) -> int:
        """Softirq plus process CPU: everything the datapath cost, counted once."""
        return self.net_rx_ns + self.process_ns

    def per_packet_ns(self, delivered: int) -> float:
        """CPU ns (softirq + process) per delivered packet (NaN when nothing was delivered)."""
        return self.total_ns / delivered if delivered else float("nan")


@dataclass(frozen=True)
class OwnShare:
    """A bracketed cpu probe's reading of its own share (probes/cpu.c, KPB_GAP)."""

    bracket_ns: int  # all bracketed time: the probe's own share plus the bracket's edges
    softirqs: int  # NET_RX softirqs bracketed
    edges_ns: int  # the bracket's edges alone (kpb_cal_stamp to kpb_cal_gap)
    edge_runs: int  # NET_RX softirqs those were timed in

    @property
    def bound_per_softirq(self) -> float:
        """Upper bound on the probe's own ns inside one window it times."""
        return self.bracket_ns / self.softirqs if self.softirqs else float("nan")

    @property
    def estimate_per_softirq(self) -> float:
        """The bound less the bracket's edges: the probe's own ns inside one window."""
        edges = self.edges_ns / self.edge_runs if self.edge_runs else float("nan")
        return self.bound_per_softirq - edges


KERNEL_CONFIGS = (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}"))


def irq_time_in_task_time() -> bool:
    """Whether softirq time that runs in a task's context is charged to the task.

    It is, unless the kernel accounts IRQ time apart (CONFIG_IRQ_TIME_ACCOUNTING,
    not switched off with ``noirqtime``). FeatureMissing if the kernel's
    configuration cannot be read: then no one can tell, and a process figure
    could count NET_RX time twice.
    """
    for path in KERNEL_CONFIGS:
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except OSError:
            continue
        on = b"\nCONFIG_IRQ_TIME_ACCOUNTING=y" in b"\n" + raw
        return not on or "noirqtime" in Path("/proc/cmdline").read_text().split()
    raise FeatureMissing("cannot read the kernel configuration (/proc/config.gz or "
                         f"/boot/config-{os.uname().release}) to tell whether IRQ time is "
                         "accounted apart from process time")


class CpuProbe(Probe):
    """NET_RX softirq CPU time (probes/cpu.c), plus the CPU time of a run cgroup's
    processes (the datapath's own, e.g. a userspace proxy) from its ``cpu.stat``."""

    name = "cpu"
    transient_maps = ("entered_ns",)  # a softirq entered before detach never exits

    def __init__(self, group: Path | None = None, *, own_share: bool = False,
                 pad: int = 0) -> None:
        """``group``: the run cgroup of the datapath's processes (None: it has none).

        ``own_share``: bracket the probe with the programs that bound its own time
        inside the window it times (probes/cpu.c, KPB_GAP; :meth:`own_share`); they
        add to its figure, so such a probe measures nothing else. ``pad``: that many
        clock reads inside the window, a known workload for tests of the bound.
        """
        super().__init__()
        self.group = group
        self.own_share_on = own_share
        self.pad = pad
        if own_share or pad:
            self.transient_maps = None  # a build of its own: unloaded on detach
        self.net_rx_vector: int | None = None  # read from the kernel on attach
        self._group_start_ns = 0
        self._subtract_net_rx = False
        self._gap_links: list[int] = []

    def cflags(self) -> list[str]:
        vectors = {v: k for k, v in print_symbolic("irq", "softirq_entry", "vec").items()}
        if "NET_RX" not in vectors:
            raise FeatureMissing(f"{self.name} probe: irq:softirq_entry names no NET_RX vector")
        self.net_rx_vector = vectors["NET_RX"]
        flags = [f"-DKPB_NET_RX={self.net_rx_vector}"]
        if self.own_share_on:
            flags.append("-DKPB_GAP")
        if self.pad:
            flags.append(f"-DKPB_PAD={int(self.pad)}")
        return flags

    def _attach(self) -> None:
        cflags = self.cflags()
        if self.group is not None:
            self._subtract_net_rx = irq_time_in_task_time()
            cgroups.cpu_usage_ns(self.group)  # readable, or FeatureMissing now
        self._bpf = compile_probe(self.name, cflags)
        if self.own_share_on:
            self._bracket()

    def _bracket(self) -> None:
        """Attach kpb_gap_exit ahead of the probe's own exit program and kpb_gap_entry
        behind its entry program: a tracepoint runs its programs in the order they were
        attached, so the exit program is detached and attached again after the other."""
        from bcc import BPF, lib

        def link(fn_name: bytes, tp: bytes) -> None:
            fn = self._bpf.load_func(fn_name, BPF.RAW_TRACEPOINT)
            fd = lib.bpf_attach_raw_tracepoint(fn.fd, tp)
            if fd < 0:
                raise FeatureMissing(f"{self.name} probe: cannot attach {fn_name.decode()} "
                                     f"to {tp.decode()}")
            self._gap_links.append(fd)

        self._bpf.detach_raw_tracepoint(b"softirq_exit")
        link(b"kpb_gap_exit", b"softirq_exit")
        self._bpf.attach_raw_tracepoint(tp=b"softirq_exit",
                                        fn_name=b"raw_tracepoint__softirq_exit")
        link(b"kpb_gap_entry", b"softirq_entry")
        link(b"kpb_cal_stamp", b"softirq_exit")  # the bracket's edges, outside the window
        link(b"kpb_cal_gap", b"softirq_exit")

    def detach(self) -> None:
        while self._gap_links:
            os.close(self._gap_links.pop())
        super().detach()

    def own_share(self) -> OwnShare:
        """Since :meth:`start`, summed over CPUs: the bracket around this probe's own
        time inside the windows it timed, and the bracket's edges (probes/cpu.c,
        KPB_GAP)."""
        self._require()
        if not self.own_share_on:
            raise RuntimeError("cpu probe attached without own_share")
        gap = self._bpf[b"gap_stats"]
        return OwnShare(bracket_ns=percpu_sum(gap, 0) + percpu_sum(gap, 1),
                        softirqs=percpu_sum(gap, 2), edges_ns=percpu_sum(gap, 3),
                        edge_runs=percpu_sum(gap, 4))

    def _zero(self) -> None:
        self._bpf[b"stats"].clear()
        if self.own_share_on:
            self._bpf[b"gap_stats"].clear()
            self._bpf[b"gap_exit_ns"].clear()
        config = self._bpf[b"config"]
        gid = cgroups.group_id(self.group) if self.group is not None else 0
        config[config.Key(0)] = config.Leaf(gid)
        if self.group is not None:
            self._group_start_ns = cgroups.cpu_usage_ns(self.group)

    def read(self) -> CpuReading:
        """NET_RX time and runs, and the cgroup's process time, since :meth:`start`."""
        self._require()
        stats = self._bpf[b"stats"]
        per_cpu = tuple(int(v) for v in stats.getvalue(stats.Key(0)))
        in_group = percpu_sum(stats, 2)
        process = 0
        if self.group is not None:
            used = cgroups.cpu_usage_ns(self.group) - self._group_start_ns
            # usage_usec is rounded to the microsecond: never below zero.
            process = max(used - (in_group if self._subtract_net_rx else 0), 0)
        return CpuReading(sum(per_cpu), percpu_sum(stats, 1), per_cpu, self._window(),
                          process_ns=process, group_net_rx_ns=in_group)
