"""What the probes cost per packet, measured without them: the sender's CPU time.

A burst replayed at top speed runs the whole packet path in the sender's
context: tcpreplay's send, the client's egress, and the NET_RX softirq that
carries the packet through the node and the datapath to the backend pod
(veth hands each packet to the softirq of the CPU that sent it, which runs
it as the send returns; without ``CONFIG_IRQ_TIME_ACCOUNTING`` the scheduler
charges that softirq time to the task it interrupted). So the CPU time of a
cgroup holding the sender, per delivered packet, is the whole path's cost,
and the same burst with a set of probes attached costs exactly the probes'
per-packet work more. CPU time, unlike a packet rate, does not fall when
other processes share the CPU, which is what makes this usable on a loaded
machine.

Rounds interleave the sets (each round: no probes, then every set, the order
reversed every other round). What other processes do only adds CPU time to a
burst (their softirqs run in the sender's context and are charged to it), so
each set's figure is its quietest burst less the quietest burst without
probes; the median and range of the per-round paired differences are kept as
the spread (:func:`estimate`). In these bursts every probe passes packets on
(:meth:`~bench.measure.probes.loader.Probe.pass_through`: no latency-probe drop, no
drops-probe sink) so the backend's stack does the same work in every configuration.
What this counts is every nanosecond the probes add on the packet path, including
the client-egress program, which runs before the NET_RX softirq the CPU probe
reports: an upper bound on what the probes add to the reported CPU per packet.

:func:`measure_in_window` measures at the scenario's own rate what the probes'
programs themselves take per packet, by the kernel's own BPF run-time statistics
(:func:`in_window_figures`; each point relates it to its own CPU per packet as
``probe_overhead_pct.programs_main``), beside the NET_RX per packet a cpu probe
reports with and without each set.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.cluster import cgroups
from bench.cluster.netlink import rx_packets
from bench.cluster.topology import Cluster
from bench.errors import FeatureMissing
from bench.kernel import bpf_stats
from bench.measure.probes.cpu import CpuProbe
from bench.measure.probes.loader import Probe
from bench.measure.repetition import DRAIN_SECONDS
from bench.measure.traffic import Target

WORKLOAD = "udp-established"  # 16 flows: no conntrack entry per packet, none left behind


def pods_rx_packets(cluster: Cluster) -> int:
    """Packets received on every backend pod's ``eth0`` (its own counters, no probe)."""
    return sum(rx_packets(cluster.pod_ns(pod)) for pod in cluster.layout.pods)


def sender_ns_per_packet(cluster: Cluster, target: Target, pcap: Path,
                         group: Path) -> tuple[float, float]:
    """(CPU ns of the sender's cgroup, wall ns) per delivered packet of one top-speed burst."""
    before_rx = pods_rx_packets(cluster)
    before = cgroups.cpu_usage_ns(group)
    with cgroups.member(group):  # tcpreplay starts inside it
        stats = target.replay(pcap, None, timeout=120)
    used = cgroups.cpu_usage_ns(group) - before
    time.sleep(DRAIN_SECONDS)
    delivered = pods_rx_packets(cluster) - before_rx
    if delivered <= 0 or stats.seconds <= 0:
        raise RuntimeError(f"overhead burst: {delivered} of {stats.sent} packets delivered")
    return used / delivered, stats.seconds * 1e9 / delivered


def measure(cluster: Cluster, target: Target, workdir: Path,
            configs: Mapping[str, Callable[[], Sequence[Probe]]],
            rounds: int = 5, packets: int = 50_000, seq_start: int = 0,
            say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Per probe set: the CPU ns it adds per packet (median of paired differences with
    a burst without probes, and their range) and as a fraction of the path's own cost.

    ``configs`` maps a set's name to a factory of unattached probes. Keys of the
    result: ``none_ns_per_packet`` (the path's CPU per packet without probes,
    sender included), ``<set>_ns_per_packet`` (added, median),
    ``<set>_ns_per_packet_range`` ([min, max]), ``<set>_pct_of_path``, ``rounds``,
    ``packets``, ``workload``, and ``missing`` ({probe: reason} of probes that
    could not attach, measured without them).
    """
    pcap = target.build_pcap(WORKLOAD, packets, workdir / "overhead.pcap", seq_start=seq_start)
    group = cgroups.create(f"{cluster.prefix}-sender")
    try:
        samples, missing = paired_rounds(
            lambda *_: sender_ns_per_packet(cluster, target, pcap, group)[0], configs, rounds,
            "probe overhead", say, pass_through=True)
    finally:
        cgroups.remove(group)
    out: dict[str, Any] = {"workload": WORKLOAD, "packets": packets, "rounds": rounds,
                           "missing": missing, **estimate(samples)}
    return out


def paired_rounds(burst: Callable[[str, Sequence[Probe]], float],
                  configs: Mapping[str, Callable[[], Sequence[Probe]]], rounds: int,
                  what: str, say: Callable[[str], None] = lambda _: None,
                  pass_through: bool = False,
                  ) -> tuple[dict[str, list[float]], dict[str, str]]:
    """``burst("warm-up", [])`` once unmeasured, then ``rounds`` rounds of one burst per
    probe set
    (``none`` first: no probe of a set attached; the order reversed every other round,
    so drift within a round hits every set alike).

    ``burst`` gets the set's name and its attached probes. Returns the samples per set and
    {probe: reason} of probes that could not attach
    (the set is measured without them, as the measured repetitions would run).

    ``pass_through``: every probe passes what reaches the backends on
    (:meth:`Probe.pass_through`: the latency probe with ``drop=False``, the drops probe
    without its sink), so the backends' stack does the same work in every set. For a
    figure of the whole path's CPU (:func:`measure`): a set that dropped there would
    read the stack's work it skipped as a negative cost (the breakdown set did: -0.4 to
    -0.7 us a packet). Without it the probes run as the repetitions run them, which is
    what a figure of the probes' own programs must time (:func:`measure_in_window`:
    the breakdown set's drops probe passing packets on ran its skb-end program later
    and dearer, 6-14 ns a packet above what its repetition costs, 2026-12-03).
    """
    samples: dict[str, list[float]] = {"none": [], **{name: [] for name in configs}}
    missing: dict[str, str] = {}
    burst("warm-up", [])  # neighbours resolved, flows established, caches warm
    for r in range(rounds):
        say(f"{what}: round {r + 1}/{rounds}")
        order = ["none", *configs]
        if r % 2:
            order.reverse()
        for name in order:
            with contextlib.ExitStack() as stack:
                attached: list[Probe] = []
                for probe in configs[name]() if name != "none" else ():
                    if pass_through:
                        probe.pass_through()
                    try:
                        stack.enter_context(probe)
                    except FeatureMissing as e:
                        missing[probe.name] = str(e)
                        continue
                    probe.start()
                    attached.append(probe)
                samples[name].append(burst(name, attached))
    return samples, missing


# --- at the scenario's rate: the programs, and the reported NET_RX ------------------

IN_WINDOW_SECONDS = 0.5  # one burst at the scenario's rate


def least_stats_cost(samples: Sequence[float]) -> float:
    """The statistics' own cost a run (``stats_ns_per_run``): the least of the samples
    taken at every burst. It is a constant of the machine (two clock reads and a counter
    update around each run) that anything else happening only adds to, so the least is
    the estimate; one sample taken at a slow moment (70.8 ns against 46.8 ns in the run
    before, 2026-12-02) took 24 ns too much out of each of 11 runs a packet, and the
    breakdown set came out at -6 ns a packet. Too little taken out leaves the programs'
    figures an upper bound."""
    if not samples:
        raise ValueError("no sample of the statistics' own cost")
    return min(samples)


def net_rx_ns_per_packet(cluster: Cluster, target: Target, pcap: Path, rate_pps: int,
                         packets: int, reporter: CpuProbe,
                         programs: Mapping[str, Sequence[int]] | None = None,
                         ) -> tuple[float, dict[str, tuple[float, float]]]:
    """NET_RX softirq ns per delivered packet, as ``reporter`` (an attached cpu probe)
    reports it, of one burst of ``pcap`` at ``rate_pps``; and per group of BPF program
    fds in ``programs``, their run time and their runs per delivered packet by the
    kernel's own statistics (bench.kernel.bpf_stats, which must be on)."""
    groups = dict(programs or {})
    before_rx = pods_rx_packets(cluster)
    before = {k: bpf_stats.total_run_time(fds) for k, fds in groups.items()}
    reporter.start()
    stats = target.replay(pcap, rate_pps, timeout=packets / rate_pps * 3 + 30)
    time.sleep(DRAIN_SECONDS)
    reading = reporter.read()
    after = {k: bpf_stats.total_run_time(fds) for k, fds in groups.items()}
    delivered = pods_rx_packets(cluster) - before_rx
    if stats.timed_out or delivered <= 0:
        raise RuntimeError(f"in-window overhead burst: {delivered} of {stats.sent} packets "
                           f"delivered{' (replay timed out)' if stats.timed_out else ''}")
    return reading.net_rx_ns / delivered, {
        k: ((after[k][0] - before[k][0]) / delivered, (after[k][1] - before[k][1]) / delivered)
        for k in groups}


def cpu_probe_share(cluster: Cluster, target: Target, pcap: Path, rate_pps: int,
                    packets: int, bursts: int = 3, pad: int = 0) -> dict[str, Any]:
    """The cpu probe's own time inside the windows it times (probes/cpu.c, KPB_GAP):
    ``bursts`` bursts of ``pcap`` at ``rate_pps`` with a bracketed cpu probe.

    Per burst and NET_RX softirq: ``bound_ns_per_softirq`` (the bracket: the probe's
    own share plus the bracket's edges, an upper bound) and ``ns_per_softirq`` (less
    the edges, timed apart in the same softirqs: the estimate); per delivered packet,
    ``bound_ns_per_packet`` and ``ns_per_packet``, medians over the bursts. Also the
    bracketed probe's NET_RX per packet (inflated by the bracket). ``pad``: known work
    inside the window (tests).

    What the runner takes out of every figure the probe reports is the quietest burst's
    share (``taken_ns_per_softirq``; ``taken_ns_per_packet``): other work on the machine
    only ever slows a burst, the share with it, so no figure is made to read lower than
    the probe's share at its quietest; ``left_ns_per_packet`` (the median less that) is
    what the compensation typically leaves in a figure.
    """
    rows: list[tuple[float, float, float, float, float]] = []
    with CpuProbe(own_share=True, pad=pad) as probe:
        for _ in range(bursts):
            before_rx = pods_rx_packets(cluster)
            probe.start()
            stats = target.replay(pcap, rate_pps, timeout=packets / rate_pps * 3 + 30)
            time.sleep(DRAIN_SECONDS)
            share = probe.own_share()
            reading = probe.read()
            delivered = pods_rx_packets(cluster) - before_rx
            if stats.timed_out or delivered <= 0 or not share.softirqs or not share.edge_runs:
                raise RuntimeError(f"cpu probe share burst: {delivered} of {stats.sent} "
                                   "packets delivered")
            per_packet = share.softirqs / delivered  # softirqs a packet
            rows.append((share.bound_per_softirq, share.estimate_per_softirq,
                         share.bound_per_softirq * per_packet,
                         share.estimate_per_softirq * per_packet,
                         reading.net_rx_ns / delivered))
    cols = list(zip(*rows, strict=True))
    out: dict[str, Any] = {"bursts": bursts, "pad": pad}
    for i, key in enumerate(("bound_ns_per_softirq", "ns_per_softirq", "bound_ns_per_packet",
                             "ns_per_packet", "bracketed_net_rx_ns_per_packet")):
        out[key] = statistics.median(cols[i])
        out[f"{key}_samples"] = [round(x, 1) for x in cols[i]]
    for i, key in ((1, "ns_per_softirq"), (3, "ns_per_packet")):
        out[f"taken_{key}"] = min(cols[i])
    out["left_ns_per_packet"] = out["ns_per_packet"] - out["taken_ns_per_packet"]
    return out


def measure_cpu_probe_share(cluster: Cluster, target: Target, workdir: Path, rate_pps: int,
                            rounds: int = 9,
                            seconds: float = IN_WINDOW_SECONDS) -> dict[str, Any]:
    """:func:`cpu_probe_share` on bursts of the in-window workload at ``rate_pps`` (the
    measured repetitions' own rate), ``seconds`` each."""
    packets = max(int(rate_pps * seconds), 1000)
    pcap = target.build_pcap(WORKLOAD, packets, workdir / "cpu-share.pcap", seq_start=0)
    return cpu_probe_share(cluster, target, pcap, rate_pps, packets, bursts=rounds)


def measure_in_window(cluster: Cluster, target: Target, workdir: Path, rate_pps: int,
                      configs: Mapping[str, Callable[[], Sequence[Probe]]],
                      rounds: int = 5, seconds: float = IN_WINDOW_SECONDS,
                      say: Callable[[str], None] = lambda _: None,
                      share: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What probe sets cost per packet at the scenario's own rate, two ways.

    A cpu probe (the reporter, attached first and throughout) times NET_RX softirqs
    while bursts of ``rate_pps`` (the measured repetitions' own rate) run with each set
    attached besides it, paired and interleaved as :func:`paired_rounds`, every probe
    as its repetitions run it (the latency probe dropping what it identified at the
    backends, the breakdown set's drops probe sinking what reaches them).

    - Programs (``<set>_programs_ns_per_packet``, and ``reporter_programs_ns_per_packet``
      for the reporter's own): the run time of the set's BPF programs per delivered
      packet, by the kernel's own statistics, less what the statistics put into every
      run (``stats_ns_per_run``: :func:`least_stats_cost` of
      bench.kernel.bpf_stats.own_cost_ns sampled at every burst, times the runs), of
      the quietest round (:func:`quietest`; the medians kept as ``..._median``). Their
      bodies' whole time at every hook they use, without the hooks' dispatch. It
      moves far less than the NET_RX figure with what else the machine does, but it
      does move: what runs beside a burst slows the programs too. Apart
      (``<set>_programs_outside_ns_per_packet``) the programs a probe names in
      ``outside_cpu_figure``: at the client's egress, in the sender's send, before the
      NET_RX softirq the reported CPU figure times; the rest is
      ``<set>_programs_in_figure_ns_per_packet``, what the set can add to that figure
      (an upper bound: a tracepoint program's every hit is in it).
    - The reported figure (``<set>_ns_per_packet``, :func:`estimate`): each set's
      quietest burst of NET_RX per packet less the quietest without it. At a rate that
      leaves the CPUs idle between packets this moves by tens of percent from burst to
      burst here, far more than the probes cost, and a set that drops at the backends
      skips the pods' stack the set without probes runs: kept as the raw samples and
      that estimate, not as a figure to relate points to.
    """
    packets = max(int(rate_pps * seconds), 1000)
    pcap = target.build_pcap(WORKLOAD, packets, workdir / "in-window.pcap", seq_start=0)
    # Per burst: (run time ns, runs) a packet of each set's programs, and apart of those
    # at the client's egress; the statistics' own cost is taken out at the end.
    raw: dict[str, list[tuple[float, float]]] = {"reporter": [], **{n: [] for n in configs}}
    raw_outside: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    owns: list[float] = []
    with bpf_stats.enabled(), CpuProbe() as reporter:

        def burst(name: str, attached: Sequence[Probe]) -> float:
            # The statistics' clock reads, in every run's time: sampled at every burst
            # (bench.kernel.bpf_stats.own_cost_ns), the least taken below.
            owns.append(bpf_stats.own_cost_ns(tries=1))
            groups = {"reporter": reporter.prog_fds(),
                      "set": [fd for p in attached for fd in p.prog_fds()],
                      "outside": [fd for p in attached for fd in p.outside_prog_fds()]}
            rx, per_packet = net_rx_ns_per_packet(cluster, target, pcap, rate_pps, packets,
                                                  reporter, groups)
            if name == "warm-up":
                return rx
            for group, key in (("set", name), ("reporter", "reporter")):
                if key in raw:
                    raw[key].append(per_packet[group])
            if name in raw_outside:
                raw_outside[name].append(per_packet["outside"])
            return rx

        samples, missing = paired_rounds(burst, configs, rounds,
                                         "probe overhead in the reported figure", say)
    own = least_stats_cost(owns)
    programs = {k: [ns - n * own for ns, n in v] for k, v in raw.items()}
    runs = {k: [n for _, n in v] for k, v in raw.items()}
    outside = {k: [ns - n * own for ns, n in v] for k, v in raw_outside.items()}
    if share is None:
        # With the statistics off, as in the measured repetitions: their clock reads
        # around every program would fall inside the bracket.
        say("the cpu probe's own share of its figure")
        share = cpu_probe_share(cluster, target, pcap, rate_pps, packets, bursts=rounds)
    out = {"cpu_probe_share": dict(share),
           # Taken out of every figure the probe reports (bench.measure.repetition.
           # net_rx_less_probe): what that typically leaves in it.
           "reporter_in_figure_ns_per_packet": share["left_ns_per_packet"],
           "reporter_share_ns_per_packet": share["taken_ns_per_packet"],
           "reporter_in_figure_bound_ns_per_packet": share["bound_ns_per_packet"],
           "workload": WORKLOAD, "rate_pps": rate_pps, "packets": packets,
           "rounds": rounds, "missing": missing, **estimate(samples),
           "programs": {k: [round(x, 1) for x in v] for k, v in programs.items()},
           "programs_outside": {k: [round(x, 1) for x in v] for k, v in outside.items()},
           "program_runs_per_packet": {k: [round(x, 2) for x in v] for k, v in runs.items()},
           "stats_ns_per_run": own,
           "stats_ns_per_run_samples": [round(x, 1) for x in owns]}
    for name, values in programs.items():
        if values:
            out[f"{name}_programs_ns_per_packet"] = quietest(values)
            out[f"{name}_programs_ns_per_packet_median"] = statistics.median(values)
    for name, values in outside.items():
        if values:
            # Per round: the part inside the figure is each round's total less its outside.
            inside = [t - o for t, o in zip(programs[name], values, strict=True)]
            out[f"{name}_programs_outside_ns_per_packet"] = quietest(values)
            out[f"{name}_programs_in_figure_ns_per_packet"] = quietest(inside)
            out[f"{name}_programs_outside_ns_per_packet_median"] = statistics.median(values)
            out[f"{name}_programs_in_figure_ns_per_packet_median"] = statistics.median(inside)
    return out


def quietest(rounds: Sequence[float]) -> float:
    """A set's program figure over its rounds: the least. A program's recorded run time
    only grows with what else the machine does while it runs (the caches others fill,
    interrupts, time the hypervisor takes), so, as the NET_RX estimate (:func:`estimate`)
    and the cpu probe's share take their quietest burst, the quietest round is the
    programs' own cost. Measured 2026-12-02: the breakdown set's rounds read 214-821 ns
    a packet at one default run's first point (median 446) and 209-383 ns on the quiet
    machine right after it (median 238): the least agrees, the median does not."""
    if not rounds:
        raise ValueError("no round to take the quietest of")
    return min(rounds)


def in_window_figures(window: Mapping[str, Any]) -> dict[str, float]:
    """What the probes cost per packet at the scenario's rate, from
    :func:`measure_in_window` with the sets ``latency`` and ``breakdown``: their BPF
    programs' run time per packet, ``programs_main_ns_per_packet`` (latency + the cpu
    probe's own, the reporter's: the measured repetitions' probes) and
    ``programs_breakdown_ns_per_packet`` (the breakdown set alone: its repetition runs
    no cpu probe), and of each the part inside the reported CPU figure,
    ``programs_<set>_in_figure_ns_per_packet`` (less the client-egress programs; the
    main set's with what the cpu probe's compensation leaves of its own share,
    ``reporter_in_figure_ns_per_packet``). Each point relates them to its own CPU per
    packet (``probe_overhead_pct.programs_main_in_figure``: what the probes add to the
    figure it reports).
    """
    own = window.get("reporter_programs_ns_per_packet")
    out: dict[str, float] = {}
    if own is None:
        return out
    # The cpu probe's own part inside its window: what compensation leaves of it
    # (reporter_in_figure_ns_per_packet: the median share less the quietest burst's, which
    # is taken out; runs before the compensation stored the share itself there), else its
    # programs' whole time.
    own_inside = window.get("reporter_in_figure_ns_per_packet", own)
    # The cpu probe is in the measured repetitions' cpu passes, not in the breakdown
    # repetition (bench.measure.runner: its probe set has no cpu probe, its CPU figure is
    # None); until 2026-12-03 its time was added to the breakdown set's figures too.
    for name, key, whole, inside_own in (("main", "latency", own, own_inside),
                                         ("breakdown", "breakdown", 0.0, 0.0)):
        added = window.get(f"{key}_programs_ns_per_packet")
        if added is not None:
            out[f"programs_{name}_ns_per_packet"] = added + whole
        # The measured repetitions' CPU figure comes from their cpu passes, where the
        # latency probe is in sink mode (the set "sink"; runs before those passes were
        # split have none: the latency probe stamping, as they ran).
        in_key = "sink" if name == "main" and "sink_programs_in_figure_ns_per_packet" in window \
            else key
        inside = window.get(f"{in_key}_programs_in_figure_ns_per_packet")
        if inside is not None:
            out[f"programs_{name}_in_figure_ns_per_packet"] = inside + inside_own
    return out


def estimate(samples: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The added ns per packet of every probe set from the sender's CPU per packet of
    each round (``samples["none"]``: without probes; rounds paired by index).

    Work of other processes (their softirqs, run in the sender's context, are
    charged to it) only ever adds to a burst, so a set's cost is its quietest
    burst: ``<set>_ns_per_packet`` = min(set) - min(none). The median of the
    paired differences and their range are kept beside it as the spread.
    """
    base = min(samples["none"])
    out: dict[str, Any] = {"none_ns_per_packet": base,
                           "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()}}
    for name, values in samples.items():
        if name == "none":
            continue
        added = [s - n for s, n in zip(values, samples["none"], strict=True)]
        out[f"{name}_ns_per_packet"] = min(values) - base
        out[f"{name}_ns_per_packet_paired_median"] = statistics.median(added)
        out[f"{name}_ns_per_packet_range"] = [min(added), max(added)]
        out[f"{name}_pct_of_path"] = 100 * (min(values) - base) / base
    return out
