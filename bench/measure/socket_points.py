"""Socket points: the scenario's socket workloads at one datapath and scale.

:class:`bench.measure.runner.Runner` hands the socket workloads of a scale
here after the timed first sync. For each workload and concurrency (one point
each) this runs real connections (bench.measure.sockets: kpb-crr, sockperf,
iperf3) from the client pod to the measured service's ClusterIP (or, for
``nodeport-<w>``, from the external client to its NodePort on node 0), and
after every repetition its paired **direct** repetition: the same workload
from the same client to the backend pods' own addresses (spread over them as
the Service spreads its connections), through no Service rule,
so each point states what the Service costs (Service minus direct) with the
machine's drift cancelled, as the packet points' paired control does. The
``direct`` datapath (no Service rules) measures that direct path as its own
repetitions, without a control: the rules-free reference. A first,
shorter run of each workload is discarded (connections, caches and conntrack
warm), and the generator's own ceiling at the point's load is measured once
per run (:class:`bench.measure.generator_ceiling.Ceilings`). With the ``oneway``
probe asked for, a request/response point closes with a breakdown repetition of
each path (:meth:`SocketPoints._breakdown`). The NET_RX softirq
CPU of each repetition comes from the CPU probe; the generator's and
responders' from their own cgroups; a datapath's own processes (the userspace
proxy) from its process cgroup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import results as R
from bench.cluster.testbed import SyncTiming, Testbed
from bench.errors import FeatureMissing, KpbenchError
from bench.measure import sockets as S
from bench.measure.probes.cpu import CpuProbe
from bench.measure.probes.oneway import OneWayProbe
from bench.measure.repetition import net_rx_less_probe
from bench.model import layout as L
from bench.model.objects import Service
from bench.results.writer import add_one_way, make_socket_repetition

if TYPE_CHECKING:
    from bench.measure.runner import Runner

NODEPORT_PREFIX = "nodeport-"
# The client's ephemeral ports for the Service path and for the direct path, apart
# (bench.measure.sockets.SocketPath.port_range says why).
SERVICE_PORTS = (20000, 39999)
DIRECT_PORTS = (40000, 59999)
# The discarded first run of each workload: this long, or half a repetition if shorter
# (a short-point suite would spend more on warming up than on measuring).
WARMUP_S = 1.0
# The workloads with a request and a response to time one way (tcp-stream has neither).
ONE_WAY_WORKLOADS = ("tcp-crr", "tcp-rr", "udp-rr")


def is_socket_workload(workload: str) -> bool:
    """``tcp-crr``, ``tcp-rr``, ``udp-rr``, ``tcp-stream`` (or their ``nodeport-`` form)."""
    return workload.removeprefix(NODEPORT_PREFIX) in S.WORKLOADS


@dataclass(frozen=True)
class Paths:
    """Where one socket workload goes: through the Service, and the direct path."""

    service: S.SocketPath
    direct: S.SocketPath | None  # None: no direct path from this client (NodePort)


class SocketPoints:
    """Measures the socket points of one datapath at one scale (see the module doc)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.sc = runner.sc

    def measure(self, bed: Testbed, measured: Service, variant: str, n: int,
                items: list[tuple[str, int]], timing: SyncTiming,
                state: dict[str, int]) -> list[R.PointDoc]:
        """The points of ``items`` ((workload, flows) pairs), in order."""
        points = []
        self.runner.measure_cpu_share(bed)  # once per run, before the probe's first figure
        cpu = CpuProbe(bed.datapath.process_cgroup) if "cpu" in self.sc.probes else None
        missing: dict[str, str] = {}
        if cpu is not None:
            try:
                cpu.attach()
            except FeatureMissing as e:
                missing["cpu"] = str(e)
                cpu = None
        try:
            for workload, flows in items:
                points.append(self._point(bed, measured, variant, n, workload, flows, timing,
                                          state, cpu, dict(missing)))
        finally:
            if cpu is not None:
                cpu.detach()
        return points

    # -- one point --------------------------------------------------------------------
    def _point(self, bed: Testbed, measured: Service, variant: str, n: int, workload: str,
               flows: int, timing: SyncTiming, state: dict[str, int], cpu: CpuProbe | None,
               missing: dict[str, str]) -> R.PointDoc:
        sc = self.sc
        load = {"loop": sc.loop, "flows": flows, "rate_tps": sc.rate_tps}
        common: dict[str, Any] = {"socket": load, "state_size": state, **timing.setup_fields()}
        kind = "nodeport" if workload.startswith(NODEPORT_PREFIX) else "clusterip"
        why = bed.datapath.not_measured.get(f"sockets-{kind}")
        if why:
            return self.runner.loop.point(variant, n, workload, status="failed",
                                          error=f"not applicable: {why}", **common)
        work = S.SocketWorkload(workload.removeprefix(NODEPORT_PREFIX), flows=flows,
                                loop=sc.loop, rate_tps=sc.rate_tps, duration_s=sc.duration_s)
        paths = socket_paths(bed, measured, kind, work.workload)
        if bed.datapath.without_rules:  # the rules-free reference: the direct path IS the point
            assert paths.direct is not None  # a ClusterIP workload (NodePort: not_measured)
            paths = Paths(paths.direct, None)
            missing["direct"] = ("this point is the direct path (the datapath programs no "
                                 "Service rules): no separate control")
        missing["conntrack_entries_created"] = (
            "counted exactly only with conntrack -E, whose cost would be in the timed "
            "figures (tests/integration/test_sockets.py checks one entry per connection)")
        if paths.direct is None and "direct" not in missing:
            missing["direct"] = ("no direct path from the external client to a pod's own "
                                 "address (the underlay does not route pod addresses)")
        group = bed.datapath.client_cgroup() if kind == "clusterip" else None
        # The generator's own ceiling at this load: measured once per run (before this
        # point's responders start: the ceiling run has its own).
        ceiling, why = self.runner.ceilings.get(work, paths.service.client_netns,
                                                responders=len(paths.service.responders))
        if why:
            missing["generator_ceiling"] = why
        # The point's responders serve all its runs: the warm-up, each path's repetitions
        # and breakdowns (the direct path's backends are the Service's).
        runs = 2 * sc.repetitions + 3
        try:
            with S.serve(work, paths.service, runs) as serving:
                point = self._runs(bed, variant, n, workload, work, paths, group, cpu, kind,
                                   missing, common, serving)
        except KpbenchError as e:
            return self.runner.loop.point(variant, n, workload, status="failed",
                                          error=f"responders failed: {e}", missing=missing,
                                          **common)
        point["generator_ceiling"] = ceiling
        return point

    def _runs(self, bed: Testbed, variant: str, n: int, workload: str,
              work: S.SocketWorkload, paths: Paths, group: Any, cpu: CpuProbe | None,
              kind: str, missing: dict[str, str], common: dict[str, Any],
              serving: S.Serving | None) -> R.PointDoc:
        """The point's runs with its responders up: warm-up, repetitions (each followed by
        the direct one), and with the oneway probe the breakdowns."""
        sc = self.sc
        say = self.runner.progress.say
        label = f"{variant}: {n} services: {workload} x{work.flows}"
        say(f"{label}: warm-up")
        try:
            S.run(S.SocketWorkload(work.workload, flows=work.flows, loop=sc.loop,
                                   rate_tps=sc.rate_tps,
                                   duration_s=min(WARMUP_S, sc.duration_s / 2)),
                  paths.service, cgroup=group, serving=serving)
        except KpbenchError as e:
            return self.runner.loop.point(variant, n, workload, status="failed",
                                          error=f"warm-up failed: {e}", missing=missing,
                                          **common)
        reps: list[R.RepetitionDoc] = []
        direct: list[R.RepetitionDoc] = []
        failed: list[dict[str, Any]] = []
        for r in range(sc.repetitions):
            say(f"{label}: rep {r + 1}/{sc.repetitions}")
            rep, error = self._rep(work, paths.service, group, cpu, serving=serving)
            if rep is None:
                failed.append({"phase": "measured", "index": r, "error": error})
            else:
                reps.append(rep)
            if paths.direct is not None:
                rep, error = self._rep(work, paths.direct, group, cpu, serving=serving)
                if rep is None:
                    failed.append({"phase": "control", "index": r, "error": error})
                else:
                    direct.append(rep)
        share = self.runner.cpu_share_doc
        point = self.runner.loop.point(
            variant, n, workload, repetitions=reps, control=direct or None,
            status="ok" if reps else "failed",
            error=None if reps else f"every repetition failed: {failed[0]['error']}",
            missing=missing, failed_repetitions=failed,
            # Where no packet point stores the probes' overhead, the socket points keep
            # the cpu probe's own share taken out of their softirq figures.
            probe_overhead=({"in_window": {"cpu_probe_share": share}}
                            if share is not None and not sc.packet_workloads else None),
            **common)
        if reps and "oneway" in sc.probes:
            say(f"{label}: breakdown (one-way probe)")
            self._breakdown(bed, work, paths, group, kind, point, serving)
        return point

    def _breakdown(self, bed: Testbed, work: S.SocketWorkload, paths: Paths, group: Any,
                   kind: str, point: R.PointDoc, serving: S.Serving | None = None) -> None:
        """One more repetition of each path with the one-way probe attached (its cost is on
        the packet path, so never in a measured repetition): ``point["breakdown"]`` (the
        Service) and ``point["control_breakdown"]`` (the direct path), never pooled; a
        failed one is under failed_repetitions as phase "breakdown", index 0 (the Service)
        or 1 (the direct path)."""
        missing = point["missing"]
        if work.workload not in ONE_WAY_WORKLOADS:
            missing["one_way_ns"] = f"{work.workload} has no request and response to time"
            return
        probe = OneWayProbe.for_cluster(bed.cluster, external=kind == "nodeport")
        try:
            probe.attach()
        except FeatureMissing as e:
            missing["one_way_ns"] = str(e)
            return
        try:
            for key, path, index in (("breakdown", paths.service, 0),
                                     ("control_breakdown", paths.direct, 1)):
                if path is None:
                    continue
                rep, error = self._rep(work, path, group, None, probe, serving=serving)
                if rep is None:
                    point["failed_repetitions"].append(
                        {"phase": "breakdown", "index": index, "error": error or ""})
                    continue
                point[key] = rep  # type: ignore[literal-required]
                c = rep["one_way"]  # type: ignore[typeddict-item]
                if c["unmatched"] and not rep["one_way_request_hist"]:  # type: ignore[typeddict-item]
                    missing["one_way_ns"] = (
                        f"no request matched at both ends ({c['unmatched']} arrived "
                        "unmatched): the path changes the TCP sequence numbers (a proxy's "
                        "own connection to the backend) or a UDP flow's client port (SNAT)")
        finally:
            probe.detach()

    def _rep(self, work: S.SocketWorkload, path: S.SocketPath, group: Any,
             cpu: CpuProbe | None, oneway: OneWayProbe | None = None, *,
             serving: S.Serving | None = None) -> tuple[R.RepetitionDoc | None, str | None]:
        """One run of ``work`` over ``path``: (the repetition, None) or (None, why);
        with ``oneway``, its one-way parts too (a breakdown repetition)."""
        readings = []
        one_way = []

        @contextlib.contextmanager
        def window() -> Iterator[None]:  # the generator's run only
            if cpu is not None:
                cpu.start()
            if oneway is not None:
                oneway.start()
            yield
            if cpu is not None:
                readings.append(cpu.read())
            if oneway is not None:
                one_way.append(oneway.read())

        try:
            res = S.run(work, path, cgroup=group, window=window, serving=serving)
        except KpbenchError as e:
            return None, str(e)
        reading = readings[0] if readings else None
        softirq = (net_rx_less_probe(reading, self.runner.cpu_share)
                   if reading is not None else {})
        s = res.summary()
        rep = make_socket_repetition(
            seconds=res.seconds, transactions=res.transactions, failed=res.failed,
            rtt_hist=res.rtt if res.rtt.count else None,
            transactions_per_s=res.transactions_per_s, throughput_bps=res.throughput_bps,
            offered_tps=res.offered_tps, retransmits=s["retransmits"], resets=s["resets"],
            # The entry count's growth undercounts (a connection on a 4-tuple in
            # TIME_WAIT replaces its entry); exact counting (conntrack -E) would put the
            # listener's cost in the figures: not measured at timed repetitions.
            conntrack_entries_created=None,
            generator_cpu_ns=res.generator_cpu_ns, responder_cpu_ns=res.responder_cpu_ns,
            softirq_ns=softirq.get("softirq_ns"),
            softirq_probe_ns=softirq.get("softirq_probe_ns"),
            net_rx_softirqs=softirq.get("net_rx_softirqs"),
            datapath_ns=(reading.process_ns if reading is not None
                         and cpu is not None and cpu.group is not None else None),
            shared_cpu=res.shared_cpu)
        if one_way:
            h = one_way[0].histograms()
            add_one_way(rep, h["request"] if h["request"].count else None,
                        h["response"] if h["response"].count else None, one_way[0].counts)
        return rep, None


def socket_paths(bed: Testbed, measured: Service, kind: str, workload: str) -> Paths:
    """The Service path (to every backend pod of the measured service) and the direct
    one (to the backend pods' own addresses, on their target port)."""
    tcp = workload.startswith("tcp")
    pods = [p for p in bed.layout.pods if (p.tcp_ports if tcp else p.udp_ports)]
    if not pods:
        raise KpbenchError("the measured service has no backend pod to answer")
    responders = tuple(S.Responder(bed.cluster.pod_ns(p), p.ip,
                                   (p.tcp_ports if tcp else p.udp_ports)[0]) for p in pods)
    sp = next((p for p in measured.ports if p.protocol == ("TCP" if tcp else "UDP")), None)
    if sp is None:
        raise KpbenchError(f"the measured service has no {'TCP' if tcp else 'UDP'} port")
    if kind == "nodeport":
        if sp.node_port is None:
            raise KpbenchError("the measured service has no node port")
        service = S.SocketPath(bed.cluster.client_ns, L.node_ip(0), sp.node_port,
                               responders, port_range=SERVICE_PORTS)
        return Paths(service, None)
    port = sp.port
    service = S.SocketPath(bed.cluster.client_pod_ns, measured.cluster_ip, port,
                           responders, port_range=SERVICE_PORTS)
    # Spread over the backends as the Service spreads connections (one backend would
    # serve a concurrent load with fewer processes than the Service path has).
    dsts = [(r.ip, r.port or port) for r in responders]
    # With ClientIP affinity (a scenario with tcp-stream gives the measured service
    # one) every connection of this client goes to one backend: so does the direct path.
    if measured.session_affinity == "ClientIP":
        dsts, responders = dsts[:1], responders[:1]
    direct = S.SocketPath(bed.cluster.client_pod_ns, dsts[0][0], dsts[0][1], responders,
                          port_range=DIRECT_PORTS, spread=tuple(dsts[1:]))
    return Paths(service, direct)
