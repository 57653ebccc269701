"""Measure a packet scenario: datapath x services x workload x repetition.

For every datapath variant and scale (the loop: bench.measure.scale_loop)
:meth:`Runner.measure_scale` goes through these steps: build a namespace
cluster with N generated services (backend pods only behind the measured
one) and time its first full sync; then for each kind of target (the
ClusterIP from the client pod, the NodePort from the external client) wait
until the kernel settles, attach the probes, and replay each workload at the
scenario's fixed offered rate, each repetition followed by its paired control
(the same traffic to the backend pods' own addresses); then close each point
with a breakdown repetition kept apart; record the points. Every phase takes
its own flows (:class:`SeqSpace`). A point that fails is recorded with its
error and the run goes on; a sync beyond the per-point limit is recorded as
``exceeded-limit`` with the time it reached; Ctrl-C stops at once, tears
everything down and keeps the points already measured.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bench import results as R
from bench.cluster.testbed import SyncTiming, Testbed
from bench.errors import FeatureMissing, KpbenchError
from bench.measure.generator_ceiling import Ceilings
from bench.measure.overhead import (
    in_window_figures,
    measure_cpu_probe_share,
    measure_in_window,
)
from bench.measure.overhead import measure as measure_overhead
from bench.measure.probes.cpu import CpuProbe
from bench.measure.probes.drops import DropsProbe
from bench.measure.probes.kfunc import KfuncProbe
from bench.measure.probes.latency import LatencyProbe
from bench.measure.probes.loader import Probe, tc_mode
from bench.measure.probes.transit import RUN_SAMPLE_EVERY, TransitProbe
from bench.measure.quiet import wait_quiet
from bench.measure.repetition import (
    DRAIN_SECONDS,
    ProbeSet,
    SeqSpace,
    cpu_fields,
    flow_endpoints,
    read_repetition,
    replay_failure,
)
from bench.measure.scale_loop import ScaleLoop
from bench.measure.scenario import Scenario
from bench.measure.slowdown import inject_rules
from bench.measure.socket_points import SocketPoints
from bench.measure.traffic import NEW_FLOW_WORKLOADS, WARMUP_MAGIC, Target
from bench.model.generate import GenSpec, generate
from bench.model.objects import EndpointPort, EndpointSlice, Service

# Settling: bursts of this many new-flow packets (of the point's own protocol) at this
# rate, until two consecutive medians agree within the scenario's tolerance.
SETTLE_PACKETS = 300
SETTLE_RATE_PPS = 3000
OVERHEAD_PACKETS = 50_000  # top-speed burst for the probe overhead (a few tenths of a second)
OVERHEAD_ROUNDS = 5  # paired rounds of none / main / breakdown
CPU_SHARE_BURSTS = 9  # bursts measuring the cpu probe's own share: its quietest is taken out
# A workload "nodeport-<w>" sends <w> from the external client to the measured
# service's NodePort on node 0 (made a NodePort service for it) instead of from the
# client pod to its ClusterIP: the path NodePort accelerations such as XDP take.
NODEPORT_PREFIX = "nodeport-"
MEASURED_NODE_PORT = 30000


def protocol_of(workload: str) -> str:
    """"UDP" or "TCP": the protocol of a packet or socket workload's traffic."""
    return "UDP" if workload.removeprefix(NODEPORT_PREFIX).startswith("udp") else "TCP"


def with_port(svc: Service, slices: list[EndpointSlice],
               protocol: str) -> tuple[Service, list[EndpointSlice]]:
    """``svc`` with a second port of ``protocol`` (same port numbers, the next node port
    if it has one), and its slices serving it."""
    first = svc.ports[0]
    port = replace(first, name=protocol.lower(), protocol=protocol,
                   node_port=first.node_port + 1 if first.node_port else None)
    svc = replace(svc, ports=(*svc.ports, port))
    target = first.target_port if isinstance(first.target_port, int) else first.port
    return svc, [replace(sl, ports=(*sl.ports, EndpointPort(port.name, target, protocol)))
                 if sl.service_key == svc.key else sl for sl in slices]


def _target_kind(workload: str) -> str:
    return "nodeport" if workload.startswith(NODEPORT_PREFIX) else "clusterip"


def _by_target(workloads: tuple[str, ...]) -> dict[str, list[str]]:
    """The workloads by the kind of target they are sent to, in the scenario's order."""
    kinds: dict[str, list[str]] = {}
    for w in workloads:
        kinds.setdefault(_target_kind(w), []).append(w)
    return kinds


class Runner:
    """Runs a packet scenario (see the module doc): the run's loop
    (:class:`bench.measure.scale_loop.ScaleLoop`) with this measurement at each scale.

    ``inject_rules``: a known slowdown on purpose (bench.measure.slowdown), recorded.
    """

    def __init__(self, scenario: Scenario, results_dir: Path, out: TextIO = sys.stderr, *,
                 inject_rules: int = 0) -> None:
        self.sc = scenario
        self.inject_rules = inject_rules
        self.loop = ScaleLoop(scenario, results_dir, self, out,
                              environment={"injected_rules": inject_rules} if inject_rules
                              else None)
        self.progress = self.loop.progress
        self.workdir = self.loop.workdir
        self.overhead: dict[str, Any] | None = None  # the probes' cost, once per run
        self.overhead_done = False
        # The cpu probe's own share of the windows it times (cpu_probe_share), once per
        # run before its first figure; its ns per NET_RX softirq is taken out of every
        # figure the probe reports (bench.measure.repetition.net_rx_less_probe).
        self.cpu_share_doc: dict[str, Any] | None = None
        self.cpu_share: float | None = None
        self.warned: set[str] = set()  # missing-probe reasons already said in this run
        self.seqs = SeqSpace()
        self.ceilings = Ceilings()  # socket generators' own ceilings, once per run

    def run(self) -> Path:
        """Run every point; returns the result file (complete, or partial on Ctrl-C)."""
        return self.loop.run()

    def rate_pps(self, workload: str) -> int | None:
        """Every workload is offered at the scenario's one fixed rate."""
        return self.sc.rate_pps

    def _protocol(self) -> str:
        """The generated services' protocol: the packet workloads' (their control and
        settle traffic are of it), or the first socket workload's."""
        protocols = {protocol_of(w) for w in self.sc.packet_workloads}
        if len(protocols) > 1:
            raise KpbenchError("a scenario mixes UDP and TCP packet workloads; split it in "
                               "two (services are generated with one protocol)")
        return protocols.pop() if protocols else protocol_of(self.sc.workloads[0])

    def _other_protocols(self) -> list[str]:
        """Protocols socket workloads need beyond :meth:`_protocol`: the measured service
        gets a port of each (as a Service with TCP and UDP ports, e.g. DNS)."""
        main = self._protocol()
        return sorted({protocol_of(w) for w, _ in self.sc.socket_items} - {main})

    # --- one datapath at one scale, step by step --------------------------------
    def measure_scale(self, variant: str, n: int) -> None:
        """Build the cluster and program it (the timed first sync); then, for each kind
        of target, settle, measure every workload's repetitions with their paired
        controls, and the breakdown repetition; record the points."""
        self.progress.say(f"{variant}: {n} services x {self.sc.endpoints} endpoints: building")
        bed, measured = self._build(variant, n)
        with bed:
            timing = self._program(bed, variant, n)
            if timing is None:
                return  # recorded as failed or exceeded-limit
            setup = {"state_size": bed.datapath.state_size(timing.rendered[0]),
                     **timing.setup_fields()}
            try:
                points: list[R.PointDoc] = []
                for kind, workloads in _by_target(self.sc.packet_workloads).items():
                    points += self._measure_target(bed, measured, variant, n, kind, workloads,
                                                   timing, setup["state_size"])
                if self.sc.socket_items:
                    points += SocketPoints(self).measure(bed, measured, variant, n,
                                                         list(self.sc.socket_items), timing,
                                                         setup["state_size"])
            except FeatureMissing as e:
                self.loop.record_rest(variant, n, "failed", str(e), say=False, **setup)
                return
            for point in points:
                self.loop.record(point)

    def _build(self, variant: str, n: int) -> tuple[Testbed, Service]:
        """The cluster of ``n`` generated services (not built yet), and the measured one:
        a NodePort service when a workload goes to its NodePort."""
        sc = self.sc
        services, slices = generate(GenSpec(services=n, endpoints=sc.endpoints, nodes=sc.nodes,
                                            protocol=self._protocol()))
        i = sc.position_index(n)
        if any(_target_kind(w) == "nodeport" for w in sc.workloads):
            port = replace(services[i].ports[0], node_port=MEASURED_NODE_PORT)
            services[i] = replace(services[i], type="NodePort", ports=(port,))
        for proto in self._other_protocols():
            services[i], slices = with_port(services[i], slices, proto)
        if any(w.endswith("tcp-stream") for w in sc.workloads):
            # iperf3's control and data connections must reach the same backend.
            services[i] = replace(services[i], session_affinity="ClientIP")
        self.seqs = SeqSpace()  # a fresh cluster, a fresh conntrack: a fresh flow space
        bed = Testbed(self.loop.datapath(variant), services, slices, sc.nodes,
                      pod_services={services[i].key}, echo=False, sync_on_enter=False)
        return bed, services[i]

    def _program(self, bed: Testbed, variant: str, n: int) -> SyncTiming | None:
        """The timed first full sync of every node (and the slowdown injected on purpose);
        None when it failed or went past the limit, its points recorded so."""
        timing = self.loop.first_sync(bed, variant, n)
        if timing is None:
            return None
        inject_rules([bed.cluster.node_ns(i) for i in range(bed.cluster.node_count)],
                     self.inject_rules)
        return timing

    def _measure_target(self, bed: Testbed, measured: Service, variant: str, n: int,
                        kind: str, workloads: list[str], timing: SyncTiming,
                        state: dict[str, int]) -> list[R.PointDoc]:
        """The points of ``workloads``, all sent to one kind of target: settled, then
        measured with their controls, then each one's breakdown repetition."""
        # Targets a datapath cannot act on (e.g. socket LB and replayed frames), with why.
        not_measured = bed.datapath.not_measured
        if kind in not_measured:
            return [self.loop.point(variant, n, w, status="failed",
                                    error=f"not applicable: {not_measured[kind]}",
                                    state_size=state, **timing.setup_fields())
                    for w in workloads]
        external = kind == "nodeport"
        target = (Target.from_external_client(bed.cluster, 0, MEASURED_NODE_PORT)
                  if external else Target.from_client_pod(
                      bed.cluster, measured.cluster_ip, measured.ports[0].port))
        control = self._control_target(bed, target)
        if self.sc.overhead and not self.overhead_done:
            # Once per run, at its first point, before any probe is attached.
            self.measure_cpu_share(bed)
            t0 = time.monotonic()
            self.overhead = self._overhead(bed, target, external)
            self.progress.one_off += time.monotonic() - t0
            self.overhead_done = True
        probes = self._main_probes(bed, external)
        with probes.attached():
            settle = self._settle(target, probes, self._settle_workload())
            group = [self._measure(target, control, variant, n, w, probes, timing, settle,
                                   state)
                     for w in workloads]
        self._breakdown(bed, target, external, group)
        return group

    def _breakdown(self, bed: Testbed, target: Target, external: bool,
                   group: list[R.PointDoc]) -> None:
        """Each measured point's breakdown repetition (point["breakdown"]).

        The breakdown probes (drops, transit; kernel functions where the kernel has
        them) add per-packet cost of their own: a repetition of their own, kept apart
        from the measured ones.
        """
        probes = self._breakdown_probes(bed, external)
        with probes.attached():
            for point in group:
                if point["status"] != "ok":
                    continue
                rep, error = self._breakdown_rep(target, point["workload"], probes)
                point["breakdown"] = rep
                if error:
                    point["failed_repetitions"].append(
                        {"phase": "breakdown", "index": 0, "error": error})
                point["missing"].update(probes.missing)

    def _main_probes(self, bed: Testbed, external: bool = False) -> ProbeSet:
        """Latency (which also counts delivered packets) and CPU per packet: NET_RX
        softirq plus the datapath's own processes (its process cgroup, if it runs any).

        ``external``: the traffic comes from the external client, not the client pod.
        """
        cpu = CpuProbe(bed.datapath.process_cgroup) if "cpu" in self.sc.probes else None
        return ProbeSet(LatencyProbe.for_cluster(bed.cluster, external=external), {},
                        warned=self.warned, cpu=cpu)

    def _breakdown_probes(self, bed: Testbed, external: bool = False) -> ProbeSet:
        # The run's own drops (tagged at the client: costs ~1 us a packet, docs/probes.md),
        # node transit and kernel-function time would inflate latency and CPU per packet.
        others: dict[str, Probe] = {}
        sinking = "drops" in self.sc.probes
        if sinking:
            # Its backend program also counts and drops what reaches the backends, as
            # the latency probe's sink mode would with a program of its own. The run's
            # drops only (what the repetition stores): no machine-wide counts beside,
            # 11 ns a packet less (probes/drops.c, KPB_MACHINE).
            others["drops"] = DropsProbe.for_cluster(
                bed.cluster, external=external, process_group=bed.datapath.process_cgroup,
                sink=True, machine_wide=False)
        if "transit" in self.sc.probes:
            others["transit"] = TransitProbe.for_cluster(bed.cluster,
                                                         sample_every=RUN_SAMPLE_EVERY)
        # Kernel-function time wherever the kernel has kprobes (e.g. in the VM);
        # elsewhere it is recorded as missing with the reason.
        others["kfunc"] = KfuncProbe()
        # Its latency is not reported: what reaches the backends is counted and dropped
        # there (by the drops probe, else the latency probe in sink mode), nothing stamped.
        def sink() -> LatencyProbe:
            return LatencyProbe.for_cluster(bed.cluster, external=external, sink=True)
        return ProbeSet(None if sinking else sink(), others, warned=self.warned,
                        sink_fallback=sink)

    def _breakdown_rep(self, target: Target, workload: str,
                       probes: ProbeSet) -> tuple[R.RepetitionDoc | None, str | None]:
        """One more repetition with the breakdown probes; its latency is not reported
        (what reaches the backends is counted and dropped there: delivered).

        Returns the repetition, or None and why its replay failed.
        """
        return self._traffic_rep(target, workload, self.sc.packets, probes, latency=False)

    def _overhead(self, bed: Testbed, target: Target, external: bool) -> dict[str, Any]:
        """CPU ns per packet the main probes and the breakdown probes add (bench.measure.overhead:
        the sender's CPU time at top speed with and without them, paired, interleaved).

        Once per run, at its first point, before any probe is attached.
        """
        def main() -> list[Probe]:  # both at once: the top-speed figure's upper bound
            probes = self._main_probes(bed, external)
            return [probes.latency, *([probes.cpu] if probes.cpu else [])]

        def breakdown() -> list[Probe]:
            return self._breakdown_probes(bed, external).all()

        def latency() -> list[Probe]:
            return [LatencyProbe.for_cluster(bed.cluster, external=external)]

        def sink() -> list[Probe]:  # the latency probe as the cpu passes run it
            probe = LatencyProbe.for_cluster(bed.cluster, external=external)
            probe.sink = True
            return [probe]

        self.progress.say("measuring the probes' overhead: waiting for a quiet machine")
        # Measured once, related to every point: not beside other work (bench.measure.quiet).
        quiet = wait_quiet()
        self.progress.say("measuring the probes' overhead" + _not_quiet(quiet))
        # The bursts are udp-established: their 16 flows' source ports lie below every
        # new flow's (bench.measure.traffic), so they take nothing from the cluster's flow space.
        out = measure_overhead(bed.cluster, target, self.workdir,
                               {"main": main, "breakdown": breakdown},
                               rounds=OVERHEAD_ROUNDS, packets=OVERHEAD_PACKETS,
                               seq_start=0, say=self.progress.say)
        out["tc_attach"] = tc_mode()  # the probes' tc programs: tcx links or clsact filters
        out["quiet"] = quiet
        if "cpu" not in self.sc.probes:
            out["in_window"] = {"error": "the scenario's probes leave out cpu"}
            return out
        if self.cpu_share is None:  # it failed (said in cpu_share_doc)
            out["in_window"] = dict(self.cpu_share_doc or {})
            return out
        try:
            window = measure_in_window(
                bed.cluster, target, self.workdir, self.sc.rate_pps,
                {"latency": latency, "sink": sink, "breakdown": breakdown},
                rounds=OVERHEAD_ROUNDS, say=self.progress.say, share=self.cpu_share_doc)
        except FeatureMissing as e:  # no cpu probe to report a figure: nothing to relate
            out["in_window"] = {"error": str(e), "cpu_probe_share": self.cpu_share_doc}
            return out
        out["in_window"] = window
        out.update(in_window_figures(window))
        return out

    def measure_cpu_share(self, bed: Testbed) -> None:
        """The cpu probe's own share of the windows it times (bench.measure.overhead.
        cpu_probe_share), once per run, before the probe's first figure, when the run
        measures its probes' overhead: bursts at the scenario's rate from the client pod
        to the backend pods' own addresses (the share is per NET_RX softirq, whatever
        the path). Not measured (overhead off, no cpu probe, or it failed: said in the
        result): the figures keep it."""
        if self.cpu_share_doc is not None or not self.sc.overhead \
                or "cpu" not in self.sc.probes:
            return
        self.progress.say("the cpu probe's own share of its figure: waiting for a quiet machine")
        t0 = time.monotonic()
        quiet = wait_quiet()  # measured once, it moves every figure: not beside other work
        self.progress.say("the cpu probe's own share of its figure" + _not_quiet(quiet))
        try:
            pods = [p for p in bed.layout.pods if p.udp_ports]
            if not pods:
                raise KpbenchError("no backend pod serves UDP to send its bursts to")
            target = Target.from_client_pod(bed.cluster, pods[0].ip, pods[0].udp_ports[0])
            self.cpu_share_doc = measure_cpu_probe_share(
                bed.cluster, target, self.workdir, self.sc.rate_pps, rounds=CPU_SHARE_BURSTS)
            self.cpu_share_doc["quiet"] = quiet
            self.cpu_share = self.cpu_share_doc["taken_ns_per_softirq"]
        except (FeatureMissing, KpbenchError, RuntimeError) as e:
            self.cpu_share_doc = {"error": f"the cpu probe's own share: {e}"}
        self.progress.one_off += time.monotonic() - t0

    def _settle_workload(self) -> str:
        """New flows of the scenario's own protocol: TCP SYNs walk the TCP rules."""
        return "tcp-syn" if self._protocol() == "TCP" else "udp-new"

    def _control_target(self, bed: Testbed, target: Target) -> Target:
        """The paired control: ``target``'s frames sent to the backend pods' own addresses
        (no Service translation), on the port each pod serves, spread over the pods as the
        Service spreads new flows over its endpoints."""
        return target.to_backend_pods(bed.layout, tcp=self._protocol() == "TCP")

    def _same_endpoints(self, control: Target, probes: ProbeSet, packets: str,
                        measured: bool) -> Target:
        """The control of a udp-established repetition, warmed up: each of its flows to the
        pod the Service's flow of the same number reached in the repetition just measured
        (``measured``; the latency probe's last reading). The Service drew those pods at
        random, so how many flows cross to the other node differs from point to point (and,
        through a userspace proxy whose sessions expire between phases, from repetition to
        repetition); round-robin would not follow. Round-robin is kept, and said, where the
        repetition failed or left a flow without a packet."""
        assert probes.latency is not None
        reading = probes.latency.last_reading if measured else None
        pods = flow_endpoints(reading) if reading is not None else None
        if pods is None:
            self.progress.say("the Service's established flows could not all be traced to "
                              "their pods: the control spreads its flows round-robin")
        else:
            control = control.to_addresses(pods, control.dport)
        self._warm_up(control, packets, 1)  # one packet per flow: the flows established
        return control

    def _settle(self, target: Target, probes: ProbeSet,
                workload: str = "udp-new") -> tuple[float, bool]:
        """Wait until new-flow latency stops drifting after the sync.

        Returns (seconds waited, converged): not converged when the timeout
        came first or nothing arrived to judge by.
        """
        start = time.monotonic()
        pcap = self.workdir / "settle.pcap"
        last: float | None = None
        while time.monotonic() - start < self.sc.settle_timeout:
            seq = self.seqs.take(SETTLE_PACKETS)
            target.build_pcap(workload, SETTLE_PACKETS, pcap, seq_start=seq,
                              src_span=self.seqs.src_span)
            probes.latency.start(seq)
            target.replay(pcap, SETTLE_RATE_PPS, timeout=30)
            time.sleep(DRAIN_SECONDS)
            reading = probes.latency.read()
            if not len(reading.latency_ns):
                break  # nothing arrives: the measurement itself will say why
            median = float(np.median(reading.latency_ns))
            if last is not None and abs(median - last) <= self.sc.settle_tolerance * last:
                return time.monotonic() - start, True
            last = median
        return time.monotonic() - start, False

    def _warm_up(self, target: Target, packets: str, count: int) -> None:
        """Warm-up traffic the probes ignore (WARMUP_MAGIC) on flows no other phase uses."""
        if not count:
            return
        warm = self.workdir / "warmup.pcap"
        if packets in NEW_FLOW_WORKLOADS:
            target.build_pcap(packets, count, warm, seq_start=self.seqs.take(count),
                              src_span=self.seqs.src_span, magic=WARMUP_MAGIC)
        else:
            target.build_warmup_pcap(packets, warm)
        target.replay(warm, self.sc.rate_pps, timeout=count / self.sc.rate_pps * 3 + 30)

    def _traffic_rep(self, target: Target, workload: str, count: int, probes: ProbeSet,
                     latency: bool = True) -> tuple[R.RepetitionDoc | None, str | None]:
        """Replay ``count`` packets of ``workload`` on fresh sequence numbers and read the
        probes: (the repetition, None), or (None, why) when the replay failed, timed out or
        sent less than asked (such a repetition measures an unknown share of the traffic)."""
        packets = workload.removeprefix(NODEPORT_PREFIX)  # what the frames are
        pcap = self.workdir / f"{packets}.pcap"
        seq = self.seqs.take(count)
        target.build_pcap(packets, count, pcap, seq_start=seq, src_span=self.seqs.src_span)
        budget = count / self.sc.rate_pps * 3 + 30
        probes.start(seq)
        try:
            stats = target.replay(pcap, self.sc.rate_pps, timeout=budget)
        except KpbenchError as e:
            return None, str(e)
        time.sleep(DRAIN_SECONDS)
        error = replay_failure(stats, count, budget)
        if error:
            return None, error
        rep = read_repetition(stats, probes, latency, seq_base=seq)
        if probes.cpu is not None:
            cpu, error = self._cpu_pass(target, packets, count, probes)
            if error:
                return None, f"cpu pass: {error}"
            if cpu is not None:
                rep.update(cpu)  # type: ignore[typeddict-item]
        return rep, None

    def _cpu_pass(self, target: Target, packets: str, count: int,
                  probes: ProbeSet) -> tuple[dict[str, Any] | None, str | None]:
        """The repetition's CPU figures: its traffic again, on flows of its own, with the
        cpu probe timing NET_RX and the latency probe sinking (probes/latency.c), so the
        figure carries neither latency stamp; delivered as the sink counts it.
        (None, None) when there is no cpu probe; (None, why) when the replay failed."""
        pcap = self.workdir / f"{packets}-cpu.pcap"
        seq = self.seqs.take(count)
        target.build_pcap(packets, count, pcap, seq_start=seq, src_span=self.seqs.src_span)
        budget = count / self.sc.rate_pps * 3 + 30
        with probes.cpu_window() as cpu:
            if cpu is None:
                return None, None
            before = probes.latency.sunk()  # the sink counts what reaches the backends
            cpu.start()
            try:
                stats = target.replay(pcap, self.sc.rate_pps, timeout=budget)
            except KpbenchError as e:
                return None, str(e)
            time.sleep(DRAIN_SECONDS)
            reading = cpu.read()
            delivered = probes.latency.sunk() - before
        error = replay_failure(stats, count, budget)
        if error:
            return None, error
        return cpu_fields(reading, min(delivered, stats.sent), self.cpu_share), None

    def _measure(self, target: Target, control: Target, variant: str, n: int, workload: str,
                 probes: ProbeSet, timing: SyncTiming, settle: tuple[float, bool],
                 state: dict[str, int]) -> R.PointDoc:
        """The point's repetitions, each followed by its paired control repetition."""
        sc = self.sc
        packets = workload.removeprefix(NODEPORT_PREFIX)
        self._warm_up(target, packets, sc.warmup_packets)
        # A udp-established control follows each repetition's own flows (_same_endpoints),
        # warmed up then.
        same_flows = packets == "udp-established" and probes.latency is not None
        if sc.control_packets and not same_flows:
            self._warm_up(control, packets, min(sc.warmup_packets, sc.control_packets))
        reps: list[R.RepetitionDoc] = []
        controls: list[R.RepetitionDoc] = []
        failed: list[dict[str, Any]] = []
        for r in range(sc.repetitions):
            self.progress.say(f"{variant}: {n} services: {workload} rep {r + 1}/"
                              f"{sc.repetitions}")
            rep, error = self._traffic_rep(target, workload, sc.packets, probes)
            if rep is None:
                failed.append({"phase": "measured", "index": r, "error": error})
            else:
                reps.append(rep)
            if sc.control_packets:
                # Interleaved, so the machine's drift moves both alike.
                paired = (self._same_endpoints(control, probes, packets, rep is not None)
                          if same_flows else control)
                rep, error = self._traffic_rep(paired, workload, sc.control_packets, probes)
                if rep is None:
                    failed.append({"phase": "control", "index": r, "error": error})
                else:
                    controls.append(rep)
        status: R.PointStatus = "ok" if reps else "failed"
        return self.loop.point(
            variant, n, workload, repetitions=reps, **timing.setup_fields(),
            settle_seconds=settle[0], settle_converged=settle[1], state_size=state,
            missing=dict(probes.missing), probe_overhead=self.overhead, status=status,
            error=None if reps else f"every repetition failed: {failed[0]['error']}",
            control=controls if sc.control_packets else None, failed_repetitions=failed)


def _not_quiet(quiet: dict[str, Any]) -> str:
    """What a progress line adds when the quiet gate gave up (bench.measure.quiet)."""
    if quiet.get("quiet"):
        return ""
    return (f" (the machine stayed {quiet.get('busy_pct')} % busy for {quiet.get('waited_s')} s:"
            " measured anyway, recorded as probe_overhead.quiet)")
