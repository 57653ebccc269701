"""Execute a scenario: datapath x services x workload x repetition.

For every datapath variant and scale the runner builds a namespace cluster
with N generated services (backend pods only behind the measured one),
times the first full sync, waits until the kernel settles, attaches the
probes, and replays each workload at the scenario's fixed offered rate. A
point that fails is recorded with its error and the run goes on; a sync
beyond the per-point limit is recorded as ``exceeded-limit`` with the time
it reached; Ctrl-C stops at once, tears everything down and keeps the
points already measured (the result file is rewritten atomically after
every point).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bench import interrupts
from bench import probes as P
from bench import results as R
from bench.datapaths import make_variant
from bench.errors import ApplyTimeout, FeatureMissing, KpbenchError
from bench.features import DATAPATH_NEEDS, detect
from bench.generate import GenSpec, generate
from bench.kfunc_probes import KfuncProbe
from bench.scenario import Scenario
from bench.slowdown import inject_rules
from bench.stats import Histogram
from bench.testbed import SyncTiming, Testbed
from bench.traffic import NEW_FLOW_WORKLOADS, Target
from bench.vm import guest_environment

log = logging.getLogger("kpbench")

# Settling: bursts of this many new-flow packets at this rate, until two
# consecutive medians agree within the scenario's tolerance.
SETTLE_PACKETS = 300
SETTLE_RATE_PPS = 3000
DRAIN_SECONDS = 0.05  # packets still in flight when tcpreplay returns
SEQ_STRIDE = 1 << 20  # sequence space per repetition: fresh flows every time
OVERHEAD_PACKETS = 100_000  # top-speed burst for the probe overhead (about half a second)
OVERHEAD_SRC_SPAN = 16  # source addresses, so six bursts of fresh flows fit
# A workload "nodeport-<w>" sends <w> from the external client to the measured
# service's NodePort on node 0 (made a NodePort service for it) instead of from the
# client pod to its ClusterIP: the path NodePort accelerations such as XDP take.
NODEPORT_PREFIX = "nodeport-"
MEASURED_NODE_PORT = 30000


def _target_kind(workload: str) -> str:
    return "nodeport" if workload.startswith(NODEPORT_PREFIX) else "clusterip"


class Progress:
    """One line per step on stderr, with elapsed time and an ETA.

    The ETA models each remaining scale point as a fixed part (building the
    cluster, settling, traffic, probes: the mean measured so far) plus its sync,
    which grows about linearly with the number of services. A sync rate is only
    taken from a sync of at least RATE_MIN_SERVICES services: at 1 service the
    sync time is all fixed cost, and extrapolating it would be absurd.
    """

    RATE_MIN_SERVICES = 100

    def __init__(self, scenario: Scenario, out: TextIO = sys.stderr) -> None:
        self.sc = scenario
        self.out = out
        self.total = len(scenario.points)
        self.done = 0
        self.start = time.monotonic()
        self.syncs: list[tuple[str, int, float]] = []  # (variant, services, seconds)
        self.fixed_seconds: list[float] = []  # per scale point: its time without the sync
        self.one_off = 0.0  # once-per-run work inside the current point (probe overhead)
        self.traffic_seconds: list[float] = []

    def record_sync(self, variant: str, services: int, seconds: float) -> None:
        self.syncs.append((variant, services, seconds))

    def record_scale(self, variant: str, services: int, wall: float) -> None:
        """A scale point took ``wall`` seconds; its sync (last recorded) is not fixed cost."""
        sync = next((s for v, n, s in reversed(self.syncs) if (v, n) == (variant, services)),
                    0.0)
        self.fixed_seconds.append(max(wall - sync - self.one_off, 0.0))
        self.one_off = 0.0

    def _sync_estimate(self, variant: str, services: int) -> float:
        own = [(n, s) for v, n, s in self.syncs if v == variant]
        big = [(n, s) for n, s in own if n >= self.RATE_MIN_SERVICES]
        if big:
            n0, s0 = big[-1]
            return s0 * services / n0
        # Not seen at scale yet: the typical rate of the variants seen so far.
        rates = sorted(s / n for _, n, s in self.syncs if n >= self.RATE_MIN_SERVICES)
        rate = rates[len(rates) // 2] if rates else 0.0
        return max(own[-1][1] if own else 0.0, rate * services)

    def _estimate(self, variant: str, services: int) -> float:
        """Seconds for one remaining point (one workload at one scale)."""
        sync = self._sync_estimate(variant, services)
        if self.sc.kind == "sync":
            # Per repetition: the change and the change back, each a sync, and the
            # traffic window that watches the change (a few seconds at least).
            return self.sc.sync_repetitions * (2 * sync + 3.5)
        if self.fixed_seconds:
            fixed = sum(self.fixed_seconds) / len(self.fixed_seconds)
        else:
            traffic = (sum(self.traffic_seconds) / len(self.traffic_seconds)
                       if self.traffic_seconds else
                       self.sc.repetitions * self.sc.packets / self.sc.rate_pps + 2)
            fixed = traffic * len(self.sc.measured)
        return (fixed + sync) / len(self.sc.measured)

    def eta(self) -> float:
        return sum(self._estimate(dp, n) for dp, n, _ in self.sc.points[self.done:])

    def say(self, what: str) -> None:
        interrupts.check()
        elapsed = time.monotonic() - self.start
        pct = 100 * self.done // max(self.total, 1)
        print(f"[{self.done:>3}/{self.total} {pct:>3}%] {what}  "
              f"(elapsed {_fmt(elapsed)}, ETA ~{_fmt(self.eta())})", file=self.out, flush=True)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class ProbeSet:
    """The probes a scenario asks for; the ones that failed are recorded as missing."""

    latency: P.LatencyProbe
    others: dict[str, P.Probe] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)  # shared by a run: each reason said once

    @contextlib.contextmanager
    def attached(self) -> Iterator[ProbeSet]:
        try:
            # Without the latency probe nothing counts delivered packets: that is fatal.
            self.latency.attach()
            for name, probe in list(self.others.items()):
                try:
                    probe.attach()
                except FeatureMissing as e:
                    if str(e) not in self.warned:
                        self.warned.add(str(e))
                        log.warning("warning: %s; its measurement is recorded as missing "
                                    "(at every point; said once)", e)
                    self.missing[name] = str(e)
                    del self.others[name]
            yield self
        finally:
            with interrupts.deferred():
                for probe in (self.latency, *self.others.values()):
                    probe.detach()

    def start(self, seq_base: int) -> None:
        self.latency.start(seq_base)
        for probe in self.others.values():
            probe.start()


class Runner:
    def __init__(self, scenario: Scenario, results_dir: Path, out: TextIO = sys.stderr, *,
                 inject_rules: int = 0) -> None:
        self.sc = scenario
        self.inject_rules = inject_rules  # bench.slowdown: a known slowdown, on purpose
        self.results_dir = results_dir
        self.progress = Progress(scenario, out)
        self.workdir = Path(tempfile.mkdtemp(prefix="kpbench-"))
        self.overhead_done = False
        self.warned: set[str] = set()  # missing-probe reasons already said in this run
        self.writer: R.ResultWriter | None = None

    def finished_complete(self) -> Path | None:
        """The result file if this run already wrote it as complete (else None)."""
        w = self.writer
        return w.path if w is not None and w.document["status"] == "complete" else None

    def run(self) -> Path:
        """Run every point; returns the result file (complete, or partial on Ctrl-C)."""
        env = R.capture_environment(**guest_environment())  # 'vm', KVM or TCG, in a guest
        if self.inject_rules:
            env["injected_rules"] = self.inject_rules
        scenario_doc = {"name": self.sc.name, "path": self.sc.path, "text": self.sc.text}
        writer = self.writer = self._writer(R.result_path(self.results_dir, self.sc.name, env),
                                            scenario_doc, env)
        path = writer.path
        log.info("result: %s", path)
        try:
            with writer:
                for variant in self.sc.datapaths:
                    missing = self._missing_feature(variant)
                    for n in self.sc.scales(variant):
                        if missing:
                            self._record_all(writer, variant, n, "failed", missing)
                            continue
                        t0 = time.monotonic()
                        self._scale_point(writer, variant, n)
                        self.progress.record_scale(variant, n, time.monotonic() - t0)
        finally:
            with interrupts.deferred():
                P.release_compiled()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return path

    @staticmethod
    def _writer(path: Path, scenario_doc: dict[str, str], env: Any) -> R.ResultWriter:
        """A writer on ``path``, or on ``<stem>-2``, ``-3``... when another run took it."""
        for k in range(1, 100):
            candidate = path if k == 1 else path.with_name(f"{path.stem}-{k}{path.suffix}")
            try:
                return R.ResultWriter(candidate, scenario=scenario_doc, environment=env)
            except R.ResultExists:
                continue
        raise KpbenchError(f"{path}: 99 results of this scenario in one second; "
                           "use another --results directory")

    # --- one datapath at one scale -------------------------------------------
    def _missing_feature(self, variant: str) -> str | None:
        found = detect()
        lacking = [found[f] for f in DATAPATH_NEEDS.get(variant, ()) if not found[f].ok]
        if lacking:
            reason = "; ".join(f"{f.name}: {f.detail}" for f in lacking)
            log.warning("warning: %s is not available on this kernel (%s); its points are "
                        "recorded as failed", variant, reason)
            return f"kernel feature missing: {reason}"
        return None

    def _record_all(self, writer: R.ResultWriter, variant: str, n: int, status: str,
                    error: str, **setup: Any) -> None:
        for w in self.sc.workloads:
            writer.add_point(self._point(variant, n, w, status=status, error=error, **setup))
            self.progress.done += 1
        self.progress.say(f"{variant} {n} services: {status}: {error}")

    def _point(self, variant: str, n: int, workload: str, **kw: Any) -> R.PointDoc:
        position = self.sc.position if isinstance(self.sc.position, str) else "index"
        return R.make_point(datapath=variant.split("-")[0], variant=variant, services=n,
                            endpoints=self.sc.endpoints, workload=workload,
                            rate_pps=self.sc.rate_pps, position=position,
                            position_index=self.sc.position_index(n), **kw)

    def _protocol(self) -> str:
        base = [w.removeprefix(NODEPORT_PREFIX) for w in self.sc.workloads]
        if all(w.startswith("udp") for w in base):
            return "UDP"
        if all(w.startswith("tcp") for w in base):
            return "TCP"
        raise KpbenchError("a scenario mixes UDP and TCP workloads; split it in two "
                           "(services are generated with one protocol)")

    def _scale_point(self, writer: R.ResultWriter, variant: str, n: int) -> None:
        sc = self.sc
        self.progress.say(f"{variant}: {n} services x {sc.endpoints} endpoints: building")
        services, slices = generate(GenSpec(services=n, endpoints=sc.endpoints, nodes=sc.nodes,
                                            protocol=self._protocol()))
        if any(_target_kind(w) == "nodeport" for w in sc.workloads):
            i = sc.position_index(n)
            port = replace(services[i].ports[0], node_port=MEASURED_NODE_PORT)
            services[i] = replace(services[i], type="NodePort", ports=(port,))
        measured = services[sc.position_index(n)]
        datapath = make_variant(variant)
        # Targets a datapath cannot act on (e.g. socket LB and replayed frames), with why.
        not_measured: dict[str, str] = getattr(datapath, "not_measured", {})
        datapath.apply_timeout = sc.point_time_limit
        bed = Testbed(datapath, services, slices, sc.nodes, pod_services={measured.key},
                      echo=False, sync_on_enter=False)
        with bed:
            self.progress.say(f"{variant}: {n} services: full sync")
            try:
                timing = bed.sync()
            except ApplyTimeout as e:
                # The time reached on each node (the last one stopped), not the limit.
                self._record_all(writer, variant, n, "exceeded-limit", str(e),
                                 **bed.last_timing.setup_fields())
                return
            except KpbenchError as e:
                self._record_all(writer, variant, n, "failed", str(e))
                return
            # Loading BPF programs is a fixed cost, not a per-service one: not for the ETA.
            load = sum(getattr(datapath, "load_seconds", {}).values())
            self.progress.record_sync(variant, n, max(timing.wall - load, 0.0))
            inject_rules([bed.cluster.node_ns(i) for i in range(bed.cluster.node_count)],
                         self.inject_rules)
            state = datapath.state_size(timing.rendered[0])
            try:
                points = []
                for kind in dict.fromkeys(_target_kind(w) for w in sc.workloads):
                    workloads = [w for w in sc.workloads if _target_kind(w) == kind]
                    if kind in not_measured:
                        points += [self._point(variant, n, w, status="failed",
                                               error=f"not applicable: {not_measured[kind]}",
                                               state_size=state, **timing.setup_fields())
                                   for w in workloads]
                        continue
                    external = kind == "nodeport"
                    target = (Target.from_external_client(bed.cluster, 0, MEASURED_NODE_PORT)
                              if external else Target.from_client_pod(
                                  bed.cluster, measured.cluster_ip, measured.ports[0].port))
                    if sc.overhead and not self.overhead_done:
                        # Once per run, at its first point, before any probe is attached.
                        t0 = time.monotonic()
                        self.overhead = self._overhead(bed, target, external)
                        self.progress.one_off += time.monotonic() - t0
                        self.overhead_done = True
                    probes = self._main_probes(bed, external)
                    group = []
                    with probes.attached():
                        settle = self._settle(target, probes)
                        for workload in workloads:
                            group.append(self._measure(target, variant, n, workload, probes,
                                                       timing, settle, state))
                    # Breakdown probes (drops, transit; kernel functions where the kernel has
                    # them) add per-packet cost of their own: a repetition of their own.
                    breakdown = self._breakdown_probes(bed, external)
                    with breakdown.attached():
                        for point in group:
                            point["repetitions"].append(self._breakdown_rep(
                                target, point["workload"], breakdown))
                            point["missing"].update(breakdown.missing)
                    points += group
                for point in points:
                    writer.add_point(point)
                    self.progress.done += 1
            except FeatureMissing as e:
                remaining = [w for w in sc.workloads
                             if not any(p["id"] == self._point(variant, n, w)["id"]
                                        for p in writer.document["points"])]
                for w in remaining:
                    writer.add_point(self._point(variant, n, w, status="failed", error=str(e),
                                                 state_size=state, **timing.setup_fields()))
                    self.progress.done += 1

    def _main_probes(self, bed: Testbed, external: bool = False) -> ProbeSet:
        """Latency (which also counts delivered packets) and CPU per packet.

        ``external``: the traffic comes from the external client, not the client pod.
        """
        others: dict[str, P.Probe] = {"cpu": P.CpuProbe()} if "cpu" in self.sc.probes else {}
        return ProbeSet(P.LatencyProbe.for_cluster(bed.cluster, external=external), others,
                        warned=self.warned)

    def _breakdown_probes(self, bed: Testbed, external: bool = False) -> ProbeSet:
        # The run's own drops (tagged at the client: costs ~1 us a packet, docs/probes.md),
        # node transit and kernel-function time would inflate latency and CPU per packet.
        others: dict[str, P.Probe] = {}
        if "drops" in self.sc.probes:
            others["drops"] = P.DropsProbe.for_cluster(bed.cluster, external=external)
        if "transit" in self.sc.probes:
            others["transit"] = P.TransitProbe.for_cluster(bed.cluster, external=external)
        # Kernel-function time wherever the kernel has kprobes (e.g. in the VM);
        # elsewhere it is recorded as missing with the reason.
        others["kfunc"] = KfuncProbe()
        return ProbeSet(P.LatencyProbe.for_cluster(bed.cluster, external=external), others,
                        warned=self.warned)

    def _breakdown_rep(self, target: Target, workload: str,
                       probes: ProbeSet) -> R.RepetitionDoc:
        """One more repetition with the breakdown probes; its latency is not reported."""
        pcap = self.workdir / "breakdown.pcap"
        seq = SEQ_STRIDE * (self.sc.repetitions + 1)
        target.build_pcap(workload.removeprefix(NODEPORT_PREFIX), self.sc.packets, pcap,
                          seq_start=seq)
        probes.start(seq)
        stats = target.replay(pcap, self.sc.rate_pps,
                              timeout=self.sc.packets / self.sc.rate_pps * 3 + 30)
        time.sleep(DRAIN_SECONDS)
        return self._repetition(stats, probes, latency=False)

    def _overhead(self, bed: Testbed, target: Target, external: bool) -> dict[str, float]:
        """Delivered packets/s at top speed with no probe, the main probes, and all probes.

        Counted from the backend pods' own interface counters, so the figure
        does not depend on a probe; the latency probe does not drop here, so
        every configuration leaves the pod the same work. Configurations run
        in the order none, main, all, all, main, none (drift cancels out) and
        every burst is made of fresh flows (no conntrack hits).
        """
        from bench.topology import in_netns

        pcap = self.workdir / "overhead.pcap"

        def delivered() -> int:
            total = 0
            for pod in bed.layout.pods:
                with in_netns(bed.cluster.pod_ns(pod)) as ns:
                    (link,) = ns.get_links(ifname="eth0")
                    total += link.get_attr("IFLA_STATS64")["rx_packets"]
            return total

        samples: dict[str, list[float]] = {"none": [], "main": [], "all": []}
        self.progress.say("measuring the probes' overhead")
        for i, config in enumerate(("none", "main", "all", "all", "main", "none")):
            target.build_pcap("udp-new", OVERHEAD_PACKETS, pcap,
                              seq_start=SEQ_STRIDE * 500 + i * OVERHEAD_PACKETS,
                              src_span=OVERHEAD_SRC_SPAN)
            probes = {"none": None, "main": self._main_probes(bed, external),
                      "all": self._all_probes(bed, external)}[config]
            with contextlib.ExitStack() as stack:
                if probes is not None:
                    probes.latency.drop = False
                    stack.enter_context(probes.attached())
                    probes.start(0)
                before = delivered()
                stats = target.replay(pcap, None, timeout=120)
                time.sleep(DRAIN_SECONDS)
                if stats.seconds:
                    samples[config].append((delivered() - before) / stats.seconds)
        out = {f"{c}_pps": sum(v) / len(v) for c, v in samples.items() if v}
        for c in ("main", "all"):
            if out.get("none_pps") and f"{c}_pps" in out:
                out[f"{c}_overhead_pct"] = 100 * (1 - out[f"{c}_pps"] / out["none_pps"])
        return out

    def _all_probes(self, bed: Testbed, external: bool = False) -> ProbeSet:
        main, extra = self._main_probes(bed, external), self._breakdown_probes(bed, external)
        main.others.update(extra.others)
        return main

    def _settle(self, target: Target, probes: ProbeSet) -> float:
        """Wait until new-flow latency stops drifting after the sync; returns seconds waited."""
        start = time.monotonic()
        pcap = self.workdir / "settle.pcap"
        last: float | None = None
        seq = 0
        while time.monotonic() - start < self.sc.settle_timeout:
            target.build_pcap("udp-new", SETTLE_PACKETS, pcap, seq_start=seq)
            probes.latency.start(seq)
            target.replay(pcap, SETTLE_RATE_PPS, timeout=30)
            time.sleep(DRAIN_SECONDS)
            reading = probes.latency.read()
            seq += SEQ_STRIDE
            if not len(reading.latency_ns):
                break  # nothing arrives: the measurement itself will say why
            median = float(np.median(reading.latency_ns))
            if last is not None and abs(median - last) <= self.sc.settle_tolerance * last:
                return time.monotonic() - start
            last = median
        return time.monotonic() - start

    def _measure(self, target: Target, variant: str, n: int, workload: str,
                 probes: ProbeSet, timing: SyncTiming, settle: float,
                 state: dict[str, int]) -> R.PointDoc:
        sc = self.sc
        packets = workload.removeprefix(NODEPORT_PREFIX)  # what the frames are
        if sc.warmup_packets:
            warm = self.workdir / "warmup.pcap"
            if packets in NEW_FLOW_WORKLOADS:
                target.build_pcap(packets, sc.warmup_packets, warm, seq_start=SEQ_STRIDE * 999)
            else:
                target.build_warmup_pcap(packets, warm)
            target.replay(warm, sc.rate_pps, timeout=60)
        reps = []
        budget = sc.packets / sc.rate_pps * 3 + 30
        for r in range(sc.repetitions):
            self.progress.say(f"{variant}: {n} services: {workload} rep {r + 1}/"
                              f"{sc.repetitions}")
            pcap = self.workdir / f"{workload}.pcap"
            seq = SEQ_STRIDE * (r + 1)
            target.build_pcap(packets, sc.packets, pcap, seq_start=seq)
            probes.start(seq)
            t0 = time.monotonic()
            stats = target.replay(pcap, sc.rate_pps, timeout=budget)
            self.progress.traffic_seconds.append(time.monotonic() - t0)
            time.sleep(DRAIN_SECONDS)
            reps.append(self._repetition(stats, probes))
        overhead = getattr(self, "overhead", None)
        return self._point(variant, n, workload, repetitions=reps, **timing.setup_fields(),
                           settle_seconds=settle, state_size=state,
                           missing=dict(probes.missing), probe_overhead=overhead)

    @staticmethod
    def _repetition(stats: Any, probes: ProbeSet, latency: bool = True) -> R.RepetitionDoc:
        lat = probes.latency.read()
        delivered = lat.delivered_seen
        kw: dict[str, Any] = {}
        if "cpu" in probes.others:
            cpu = probes.others["cpu"].read()  # type: ignore[attr-defined]
            kw["softirq_ns"] = cpu.net_rx_ns
            kw["cpu_ns_per_packet"] = cpu.net_rx_ns / delivered if delivered else None
        if "drops" in probes.others:
            drops = probes.others["drops"].read()  # type: ignore[attr-defined]
            # The run's own packets when the probe can tell them apart, else IPv4 drops.
            kw["drops"] = (drops.run_by_reason if drops.run_by_reason is not None
                           else drops.ipv4_by_reason)
        if "transit" in probes.others:
            tr = probes.others["transit"].read()  # type: ignore[attr-defined]
            lower, upper = P.transit_bucket_bounds()
            mids = ((lower + upper - 1) / 2).astype("int64")
            samples = mids.repeat(tr.hist)
            kw["transit_hist"] = Histogram.from_samples(samples) if len(samples) else None
        if "kfunc" in probes.others:
            kw["kfunc"] = probes.others["kfunc"].read().per_packet(delivered)  # type: ignore[attr-defined]
        return R.make_repetition(
            sent=stats.sent, delivered=delivered, offered_pps=stats.offered_pps,
            achieved_pps=stats.achieved_pps,
            latency_hist=(Histogram.from_samples(lat.latency_ns)
                          if latency and len(lat.latency_ns) else None),
            **kw)
