"""Disruption: what a sync or a proxy failure does to everyone else's traffic.

A ``kind = "disruption"`` scenario (see docs/disruption.md). For each datapath
variant and number of services the runner builds the cluster, programs every
node (the timed first sync, as in packet scenarios), attaches the latency
probe, and for every event and background workload measures repetitions of:

1. background traffic (``udp-new`` or ``udp-established`` replayed and stamped
   by the latency probe, or ``tcp-rr`` transactions on kept connections,
   bench.measure.rr_background) at the scenario's fixed rate from the client
   pod to the measured service, a service the event does not change;
2. ``before_s`` seconds after its first packet left the client (tcp-rr: its
   first transaction was due), the event;
3. ``after_s`` seconds after the event's end, the traffic stops.

Events (:func:`prepare_event`):

``full-sync``
    a full *resync* of node 0 (the node the traffic enters; its rules present)
    to the state it already has, N services: iptables-restore swaps whole tables, nftables
    commits one transaction, eBPF rewrites its maps. Start and end are the
    apply's; ``sync.apply`` is its duration.
``cold-start``
    node 0 created from nothing, as when kube-proxy starts on an empty node:
    before the traffic its datapath's state is removed (``cleanup``), and the
    event is its first full sync (for nftables, the table created; for
    ``nftables-chunked``, in transactions of 1000 operations). An empty node
    has no Service the background could use, so for this event the background
    goes to the measured service's backend pods' own addresses through node 0
    (what node 0 carries while its rules are created); ``sync.apply`` is the
    sync's duration, ``sync.transaction_max`` its longest transaction.
``proxy-down``
    node 0's agent stops for ``down_s`` seconds and comes back. For
    ``userspace`` its proxy process is killed (SIGKILL) and, after ``down_s``,
    started again by the returning agent's full sync; for the other datapaths
    the agent's absence means no syncs (the rules stay in the kernel) and its
    return is the same full sync of node 0. The event ends when that sync is
    done; ``sync.down`` is the time down, ``sync.apply`` the return sync's
    duration. (The background enters the cluster at node 0 and only node 0's
    agent is on its path: node 1's agent does not matter to it.)
``churn``
    K endpoint changes per second to other Services for ``churn_s``, applied
    by node 0's agent as kube-proxy does: coalesced into at most one partial
    sync per ``min_sync_period_s``, a full one every ``full_sync_period_s``
    (:meth:`DisruptionRunner.churn_event`, bench.measure.churn). One point
    per K. Its batches are rendered as their syncs start, during the event.
``endpoint-removed``
    the measured Service's endpoint established UDP flows are pinned to goes
    away (its pod gone, probes/gone.c) and node 0's agent removes it, with or
    without kube-proxy's conntrack cleanup (``conntrack_cleanup``; one point
    each): the one event that changes the background's own Service
    (:meth:`DisruptionRunner.endpoint_removed_event`).

Every rendering of full-sync and proxy-down is done before the traffic
starts: kpbench's Python render is not the datapath's time and must not
perturb the background (churn's batches cannot be: see above).

What one repetition stores (bench.measure.disruption): the timeline in 10 ms
bins of send time (tcp-rr: due time) (sent, delivered, p50, p99) with the
event's start and end, and the event's figures (stall_ms, lost, excess_p99_ns,
recovery_ms, ...), all on CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns() and
of kpb-crr's records.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from bench import interrupts
from bench import results as R
from bench.analysis.stats import Histogram
from bench.cluster.testbed import Testbed, gc_paused
from bench.datapaths.base import Datapath, run_in_netns
from bench.datapaths.userspace import UserspaceDatapath
from bench.errors import ApplyTimeout, FeatureMissing, KpbenchError
from bench.measure import disruption as D
from bench.measure import rr_background as RR
from bench.measure.churn import Churn, SyncRecord, change_times, run_schedule
from bench.measure.probes.gone import GoneProbe
from bench.measure.probes.latency import LatencyProbe
from bench.measure.probes.loader import TcHook
from bench.measure.repetition import SeqSpace
from bench.measure.runner import with_port
from bench.measure.scale_loop import ScaleLoop
from bench.measure.scenario import Scenario, event_label
from bench.measure.socket_points import socket_paths
from bench.measure.traffic import MAX_COUNT, WARMUP_MAGIC, ReplayStats, Target
from bench.model.generate import GenSpec, generate
from bench.model.objects import Service

log = logging.getLogger("kpbench")

DRAIN_S = 0.2  # after the traffic stops: packets still in flight arrive
FIRST_PACKET_TIMEOUT_S = 15.0  # tcpreplay preloads its pcap before the first packet
MIN_EVENT_BUDGET_S = 5.0
WARMUP_S = 0.5  # the background's own traffic before each repetition, not measured
BUDGET_FACTOR = 10  # the traffic lasts up to this many times node 0's first sync
# Event = (start ns, end ns, sync figures) on CLOCK_MONOTONIC.
Event = tuple[int, int, dict[str, float | None]]


def prepare_event(bed: Testbed, event: str, down_s: float) -> Callable[[], Event]:
    """Render what ``event`` applies to node 0 (now, before any traffic); return the event."""
    dp = bed.datapath
    ns = bed.cluster.node_ns(0)
    if event == "cold-start":
        return _prepare_cold_start(bed)
    with gc_paused():
        text = dp.render(bed.views(0), bed.node_context(0))

    if event == "full-sync":
        def full_sync() -> Event:
            with gc_paused():
                start = time.monotonic_ns()
                listed, applied = agent_sync(dp, ns, text, full=True)
                end = time.monotonic_ns()
            return start, end, _apply_figures(dp, listed, applied)
        return full_sync

    if event == "proxy-down":
        def proxy_down() -> Event:
            start = time.monotonic_ns()
            if isinstance(dp, UserspaceDatapath):
                dp.kill_proxies(ns)  # node 0's proxy dies; the rules stay
            # Otherwise the agent is simply absent: no sync, the kernel keeps forwarding.
            time.sleep(max(0.0, down_s - (time.monotonic_ns() - start) / 1e9))
            back = time.monotonic_ns()
            with gc_paused():  # the returning agent's full sync (starts the proxy)
                listed, applied = agent_sync(dp, ns, text, full=True)
            end = time.monotonic_ns()
            return start, end, {"down": (back - start) / 1e9,
                                **_apply_figures(dp, listed, applied)}
        return proxy_down

    raise KpbenchError(f"disruption event {event!r} is not implemented")


def _prepare_cold_start(bed: Testbed) -> Callable[[], Event]:
    """Empty node 0 (its datapath's state removed, now, before any traffic) and render its
    first sync; the event creates everything from nothing (see the module doc)."""
    dp = bed.datapath
    ns = bed.cluster.node_ns(0)
    ctx = bed.node_context(0)
    dp.cleanup(ns)
    dp.forget(ctx.node_name)
    with gc_paused():
        text = dp.render(bed.views(0), ctx)

    def cold_start() -> Event:
        with gc_paused():
            start = time.monotonic_ns()
            listed, applied = agent_sync(dp, ns, text, full=True)
            end = time.monotonic_ns()
        return start, end, _apply_figures(dp, listed, applied)
    return cold_start


def agent_sync(dp: Datapath, ns: str, text: str, full: bool) -> tuple[float | None, float]:
    """One sync of the agent of node ``ns``, as kube-proxy runs it: first what it reads
    back from the kernel (:meth:`Datapath.list_state`: the nftables proxier lists its
    table on every sync, full or partial), then the apply of ``text`` (full or partial).
    Returns (the read-back's seconds, None when the agent reads nothing; the apply's
    seconds). Both are inside the event; the apply is ``sync.apply`` as everywhere in
    kpbench, the read-back ``sync.list``, never added to it."""
    t0 = time.monotonic_ns()
    listed = dp.list_state(ns, full=full)
    t1 = time.monotonic_ns()
    if full:
        dp.apply(text, ns)
    else:
        dp.apply_partial(text, ns)
    t2 = time.monotonic_ns()
    return ((t1 - t0) / 1e9 if listed else None), (t2 - t1) / 1e9


def _apply_figures(dp: Datapath, listed: float | None,
                   applied: float) -> dict[str, float | None]:
    """A sync event's figures: its apply, its read-back where the agent reads one
    (``list``) and, where the apply was several transactions, the longest one
    (nftables-chunked)."""
    out: dict[str, float | None] = {"apply": applied}
    if listed is not None:
        out["list"] = listed
    transactions = dp.transaction_seconds()
    if transactions:
        out["transaction_max"] = max(transactions)
    return out


def cold_start_target(bed: Testbed, target: Target) -> Target:
    """The background of a cold start: ``target``'s frames to the measured service's
    backend pods' own addresses, which node 0 forwards with or without its Service rules
    (an empty node has no Service yet; this traffic is what it carries meanwhile)."""
    return target.to_backend_pods(bed.layout, tcp=False)


class DisruptionRunner:
    """Runs a ``kind = "disruption"`` scenario (see the module doc): the run's loop
    (:class:`bench.measure.scale_loop.ScaleLoop`) with this measurement at each scale."""

    def __init__(self, scenario: Scenario, results_dir: Path, out: TextIO = sys.stderr) -> None:
        self.sc = scenario
        self.loop = ScaleLoop(scenario, results_dir, self, out)
        self.progress = self.loop.progress
        self.workdir = self.loop.workdir
        self.seqs = SeqSpace()
        self.gone: GoneProbe | None = None  # endpoint-removed: the removed pod is gone

    def run(self) -> Path:
        """Run every point; returns the result file (complete, or partial on Ctrl-C)."""
        return self.loop.run()

    def rate_pps(self, workload: str) -> int | None:
        """The background's fixed rate."""
        return self.sc.disruption_rate_pps

    def measure_scale(self, variant: str, n: int) -> None:
        sc = self.sc
        self.progress.say(f"{variant}: {n} services x {sc.endpoints} endpoints: building")
        services, slices = generate(GenSpec(services=n, endpoints=sc.endpoints, nodes=sc.nodes,
                                            protocol="UDP"))
        i = sc.position_index(n)
        if "tcp-rr" in sc.background:  # its connections go to a TCP port of the service
            services[i], slices = with_port(services[i], slices, "TCP")
        measured = services[i]
        self.seqs = SeqSpace()
        bed = Testbed(self.loop.datapath(variant), services, slices, sc.nodes,
                      pod_services={measured.key}, echo=False, sync_on_enter=False)
        with bed:
            timing = self.loop.first_sync(bed, variant, n)
            if timing is None:
                return
            setup = {"state_size": bed.datapath.state_size(timing.rendered[0]),
                     **timing.setup_fields()}
            target = Target.from_client_pod(bed.cluster, measured.cluster_ip,
                                            measured.ports[0].port)
            probe = LatencyProbe.for_cluster(bed.cluster)
            self.gone = (GoneProbe([TcHook(bed.cluster.pod_ns(p)) for p in bed.layout.pods])
                         if "endpoint-removed" in sc.events else None)
            try:
                probe.attach()
                if self.gone is not None:
                    self.gone.attach()
                    self.gone.start()
                # An event's traffic is sized for this long (it stops at the watch
                # window's end): node 0's first sync, with a wide margin (a loaded
                # machine's syncs vary by several times), plus proxy-down's time away.
                sync_s = timing.apply_seconds or 0.0
                budget = min(max(MIN_EVENT_BUDGET_S, BUDGET_FACTOR * sync_s),
                             sc.point_time_limit)
                for event in sc.events:
                    to = cold_start_target(bed, target) if event == "cold-start" else target
                    for bg in sc.event_backgrounds(event):
                        for option in sc.event_options(event):
                            if bg == "tcp-rr":
                                point = self._rr_point(bed, measured, variant, n, event,
                                                       budget, setup, option)
                            else:
                                point = self._point(
                                    bed, partial(_Replay, self, to, probe, bg), variant, n,
                                    event, bg, budget, setup, option, measured.key)
                            self.loop.record(point)
            except FeatureMissing as e:
                self.loop.record_rest(variant, n, "failed", str(e), say=False, **setup)
            finally:
                with interrupts.deferred():
                    probe.detach()
                    if self.gone is not None:
                        self.gone.detach()
                        self.gone = None

    def _rr_point(self, bed: Testbed, measured: Service, variant: str, n: int, event: str,
                  budget: float, setup: dict[str, Any],
                  option: int | bool | None) -> R.PointDoc:
        """A ``tcp-rr`` background point (bench.measure.rr_background): its responders in
        the backend pods serve all its repetitions; through the Service's ClusterIP (for
        ``cold-start``, to the backend pods' own addresses, as the packet backgrounds)."""
        workload = f"disruption-{event_label(event, option)}/tcp-rr"
        why = bed.datapath.not_measured.get("sockets-clusterip")
        if why:
            return self.loop.point(variant, n, workload, status="failed",
                                   error=f"not applicable: {why}", **setup)
        paths = socket_paths(bed, measured, "clusterip", "tcp-rr")
        path = paths.direct if event == "cold-start" and paths.direct else paths.service
        rate = self.sc.disruption_rate_pps
        try:
            with RR.responders(path, rate, self.window_s(event, budget),
                               self.sc.repetitions) as serving:
                return self._point(
                    bed, lambda: RR.TcpRrTraffic.on(bed, path, serving, rate, self.workdir),
                    variant, n, event, "tcp-rr", budget, setup, option, measured.key)
        # ValueError: a window past a socket workload's bounds (bench.measure.sockets).
        except (KpbenchError, ValueError) as e:
            return self.loop.point(variant, n, workload, status="failed",
                                   error=f"responders failed: {e}", **setup)

    def _point(self, bed: Testbed, traffic: Callable[[], Traffic], variant: str, n: int,
               event: str, background: str, budget: float,
               setup: dict[str, Any], option: int | bool | None = None,
               measured: str = "") -> R.PointDoc:
        reps: list[R.RepetitionDoc] = []
        failed: list[dict[str, Any]] = []
        workload = f"disruption-{event_label(event, option)}/{background}"
        for r in range(self.sc.repetitions):
            self.progress.say(f"{variant}: {n} services: {workload} rep {r + 1}/"
                              f"{self.sc.repetitions}")
            try:
                fire = None
                if event == "churn":
                    fire = self.churn_event(bed, measured, int(option or 1))
                elif event == "endpoint-removed":
                    fire = self.endpoint_removed_event(bed, measured, option is not False)
                reps.append(self.watch(bed, traffic(), event, budget, fire=fire))
            except ApplyTimeout as e:
                failed.append({"phase": "measured", "index": r, "error": str(e)})
                break
            except KpbenchError as e:
                failed.append({"phase": "measured", "index": r, "error": str(e)})
        status: R.PointStatus = "ok" if reps else "failed"
        return self.loop.point(
            variant, n, workload, repetitions=reps, status=status,
            error=None if reps else f"every repetition failed: {failed[0]['error']}",
            failed_repetitions=failed, **setup)

    def repetition(self, bed: Testbed, target: Target, probe: LatencyProbe, event: str,
                   background: str, budget: float,
                   fire: Callable[[], Event] | None = None) -> R.RepetitionDoc:
        """One repetition of a packet background (``udp-new``, ``udp-established``) to
        ``target``, stamped by ``probe`` (see :meth:`watch`)."""
        return self.watch(bed, _Replay(self, target, probe, background), event, budget,
                          fire)

    def window_s(self, event: str, budget: float) -> float:
        """How long a repetition's background is sized for (it stops at the watch window's
        end): ``before_s``, the event's budget and ``after_s``, plus proxy-down's time
        away and churn's changes."""
        sc = self.sc
        window = sc.before_s + budget + sc.after_s + 1.0
        if event == "proxy-down":
            window += sc.down_s
        if event == "churn":
            window += sc.churn_s
        return window

    def watch(self, bed: Testbed, traffic: Traffic, event: str, budget: float,
              fire: Callable[[], Event] | None = None) -> R.RepetitionDoc:
        """One repetition: background ``traffic``, the event ``before_s`` after its
        first packet (or transaction), ``after_s`` watched after the event's end
        (``fire``: another event, e.g. a test's own)."""
        sc = self.sc
        if fire is None:
            fire = prepare_event(bed, event, sc.down_s)
        rate = sc.disruption_rate_pps
        window = self.window_s(event, budget)
        traffic.start(window)
        out: dict[str, Any] = {}
        try:
            first = traffic.first()
            time.sleep(max(0.0, sc.before_s - (time.monotonic_ns() - first) / 1e9))
            start_ns, end_ns, sync = fire()
            until = end_ns + int(sc.after_s * 1e9)
            while time.monotonic_ns() < until and traffic.running():
                time.sleep(0.05)
            ended_early = not traffic.running()
        finally:
            traffic.end()
            after = getattr(fire, "after", None)
            if after is not None:
                out["figures"] = after()  # the event's own figures, then its state undone
        traffic.check()  # the traffic's own failure first
        if ended_early:
            raise KpbenchError(f"the background traffic ({rate}/s for {window:.1f} s) ended "
                               f"before the watch window did: the event took "
                               f"{(end_ns - start_ns) / 1e9:.1f} s")
        d, a, achieved, own = traffic.result(until)
        timeline, figures = D.summarise(d, a, start_ns, end_ns,
                                        baseline_ns=int(sc.before_s / 2 * 1e9))
        figures.update(own)
        figures.update(getattr(fire, "figures", {}))
        figures.update(out.get("figures") or {})
        ok = a != 0
        return {**R.make_repetition(
            sent=len(d), delivered=int(np.count_nonzero(ok)), offered_pps=rate,
            achieved_pps=achieved,
            arrival_seconds=(float(a[ok].max() - a[ok].min()) / 1e9 if ok.sum() > 1 else None),
            latency_hist=Histogram.from_samples(a[ok] - d[ok]) if ok.any() else None,
            sync=sync),
            "disruption": {"event": event, **figures,
                           "timeline": timeline.document(start_ns, end_ns)}}  # type: ignore[typeddict-item]

    def churn_event(self, bed: Testbed, measured: str, per_s: int) -> Callable[[], Event]:
        """The ``churn`` event at ``per_s`` changes per second (bench.measure.churn): node
        0's agent applies them for ``churn_s`` seconds, coalesced into at most one sync
        per ``min_sync_period_s``, each a partial sync (a full one every
        ``full_sync_period_s``). The event's ``figures`` (set when it fired) go into the
        repetition's ``disruption``: syncs run and per second, each sync's apply time and
        CPU, the sync CPU per second."""
        sc = self.sc
        dp = bed.datapath
        ns = bed.cluster.node_ns(0)
        ctx = bed.node_context(0)
        churn = Churn(bed.services, bed.slices, keep=measured)
        times = change_times(per_s, sc.churn_s)
        applies: list[float] = []
        lists: list[float] = []
        renders: list[float] = []

        def sync(first: int, stop: int, full: bool) -> float:
            changed = churn.apply(stop - first)
            slices = churn.slices()
            with gc_paused():
                t0 = time.monotonic()
                views = bed.views(0, slices)
                text = dp.render(views, ctx) if full else dp.render_partial(views, ctx, changed)
                renders.append(time.monotonic() - t0)
                cpu0 = sync_cpu_seconds()
                listed, applied = agent_sync(dp, ns, text, full)
                applies.append(applied)
                if listed is not None:
                    lists.append(listed)
                cpu = sync_cpu_seconds() - cpu0
            bed.slices = slices
            return cpu

        def fire() -> Event:
            start = time.monotonic_ns()
            records = run_schedule(times, sc.min_sync_period_s, sc.full_sync_period_s,
                                   time.monotonic, time.sleep, sync)
            end = time.monotonic_ns()
            fire.figures = churn_figures(records, applies, per_s, (end - start) / 1e9,  # type: ignore[attr-defined]
                                         lists)
            figures: dict[str, float | None] = {
                "apply": max(applies), "apply_total": sum(applies), "render": sum(renders),
                "cpu": sum(r.cpu_s or 0.0 for r in records), "syncs": float(len(records))}
            if lists:
                figures["list"] = max(lists)
                figures["list_total"] = sum(lists)
            return start, end, figures
        return fire

    def endpoint_removed_event(self, bed: Testbed, measured: str,
                               cleanup: bool) -> Callable[[], Event]:
        """The ``endpoint-removed`` event: the endpoint of the measured Service that most
        background packets reached (where established flows are pinned) is removed --
        its pod is gone (the gone probe drops what still reaches it, counted as lost),
        node 0's agent applies the removal as a partial sync and, with ``cleanup``,
        deletes the removed UDP endpoint's conntrack entries as kube-proxy does
        (:func:`clear_udp_conntrack`). Start: the pod gone; end: the sync (and the
        cleanup) done. After the watch window the endpoint and its pod come back
        (unmeasured), and the event's figures are read (``after``)."""
        gone = self.gone
        if gone is None:
            raise KpbenchError("endpoint-removed needs the gone probe attached")
        dp = bed.datapath
        ns = bed.cluster.node_ns(0)
        ctx = bed.node_context(0)
        svc = next(s for s in bed.services if s.key == measured)
        original = list(bed.slices)
        state: dict[str, Any] = {}
        # Arrivals from this repetition's own traffic only (its warm-up and baseline):
        # earlier points' traffic may have been pinned elsewhere (a cold start's went to
        # the pods' own addresses, a flow's conntrack entry may have expired since).
        gone.start()

        def sync(slices: list[Any]) -> float:
            with gc_paused():
                views = bed.views(0, slices)
                text = dp.render_partial(views, ctx, {measured})
                _, applied = agent_sync(dp, ns, text, full=False)
                bed.slices = slices
                return applied

        def fire() -> Event:
            arrivals = gone.arrivals()
            ips = [e.addresses[0] for sl in original if sl.service_key == measured
                   for e in sl.endpoints if e.ready]
            if not ips:
                raise KpbenchError(f"endpoint-removed: the measured Service {measured} has "
                                   "no ready endpoint to remove")
            ip = max(ips, key=lambda a: arrivals.get(a, 0))
            slices = [replace(sl, endpoints=tuple(e for e in sl.endpoints
                                                  if e.addresses[0] != ip))
                      if sl.service_key == measured else sl for sl in original]
            with gc_paused():
                views = bed.views(0, slices)
                text = dp.render_partial(views, ctx, {measured})
                start = time.monotonic_ns()
                gone.set_gone(ip)  # the pod is gone
                listed, _ = agent_sync(dp, ns, text, full=False)
                applied = time.monotonic_ns()
                bed.slices = slices
                deleted = (clear_udp_conntrack(ns, svc.cluster_ip, svc.ports[0].port, ip)
                           if cleanup else None)
                end = time.monotonic_ns()
            state.update(start=start, ip=ip, deleted=deleted,
                         pinned_packets=arrivals.get(ip, 0))
            sync_doc = _apply_figures(dp, listed, (applied - start) / 1e9 - (listed or 0.0))
            if cleanup:
                sync_doc["cleanup"] = (end - applied) / 1e9
            return start, end, sync_doc

        def after() -> dict[str, Any]:
            first, last, drops = gone.dropped()
            gone.set_gone(None)
            sync(original)  # the endpoint back; its pod is back too
            if "start" not in state:
                return {}
            return {"conntrack_cleanup": cleanup, "removed_endpoint": state["ip"],
                    "removed_endpoint_packets_before": state["pinned_packets"],
                    "conntrack_deleted": state["deleted"],
                    "to_removed_packets": drops,
                    "to_removed_ms": (last - state["start"]) / 1e6 if drops else 0.0}

        fire.after = after  # type: ignore[attr-defined]
        return fire

    def _warm_up(self, target: Target, background: str, rate: int) -> None:
        """WARMUP_S of the background's own traffic, which the probes ignore (its magic):
        the flows established, neighbours resolved, a proxy's first packets' costs paid,
        so the baseline before the event is the steady state, not a start."""
        warm = self.workdir / "warmup.pcap"
        if background == "udp-established":
            target.build_warmup_pcap(background, warm)  # one packet per flow first
            target.replay(warm, rate, timeout=30)
        count = max(1, math.ceil(rate * WARMUP_S))
        target.build_pcap(background, count, warm, seq_start=self._take(count),
                          src_span=self.seqs.src_span, magic=WARMUP_MAGIC)
        target.replay(warm, rate, timeout=WARMUP_S * 3 + 30)

    def _take(self, count: int) -> int:
        """Fresh sequence numbers (fresh new flows). Traffic is sized for the longest the
        event may take and mostly stops far earlier, so a long run may exhaust the
        cluster's flow space: it then starts over from the first flows, all sent long
        (the time of at least one window) before, whose unreplied UDP conntrack entries
        (30 s) have expired -- the backends drop the packets, so nothing replies."""
        try:
            return self.seqs.take(count)
        except KpbenchError:
            self.seqs = SeqSpace()
            return self.seqs.take(count)


class Traffic(Protocol):
    """A repetition's background (:meth:`DisruptionRunner.watch`): packets replayed and
    stamped by the latency probe (:class:`_Replay`), or tcp-rr transactions
    (:class:`bench.measure.rr_background.TcpRrTraffic`)."""

    def start(self, window_s: float) -> None:
        """Warm up, then start the traffic, sized for at most ``window_s``."""

    def first(self) -> int:
        """Its first send (ns, CLOCK_MONOTONIC), once it has started."""

    def running(self) -> bool: ...

    def end(self) -> None:
        """Stop it and wait for it; never raises (:meth:`check` does)."""

    def check(self) -> None:
        """Raise the error that stopped the traffic, if one did."""

    def result(self, until_ns: int) -> tuple[np.ndarray, np.ndarray, float | None,
                                             dict[str, Any]]:
        """(departure ns, arrival ns or 0) of everything sent before ``until_ns`` in
        departure order, the achieved rate, and the background's own figures."""


class _Replay:
    """A packet background: ``background``'s frames replayed by tcpreplay to ``target``
    at the scenario's rate, each stamped by the latency probe at the client's egress and
    a backend's ingress."""

    def __init__(self, runner: DisruptionRunner, target: Target, probe: LatencyProbe,
                 background: str) -> None:
        self.runner, self.target, self.probe, self.background = (runner, target, probe,
                                                                  background)
        self.rate = runner.sc.disruption_rate_pps
        self.stop = threading.Event()
        self.out: dict[str, Any] = {}
        self.count = 0

    def start(self, window_s: float) -> None:
        runner, probe = self.runner, self.probe
        self.count = min(math.ceil(self.rate * window_s), probe.capacity, MAX_COUNT)
        runner._warm_up(self.target, self.background, self.rate)
        seq = runner._take(self.count)
        pcap = runner.workdir / "background.pcap"
        self.target.build_pcap(self.background, self.count, pcap, seq_start=seq,
                               src_span=runner.seqs.src_span)
        probe.start(seq)

        def send() -> None:
            try:
                self.out["stats"] = self.target.replay(pcap, self.rate, window_s + 30,
                                                       self.stop)
            except BaseException as e:  # reported by check()
                self.out["error"] = e

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()

    def first(self) -> int:
        return _await_first(self.probe, self.thread)

    def running(self) -> bool:
        return self.thread.is_alive()

    def end(self) -> None:
        self.stop.set()
        self.thread.join()

    def check(self) -> None:
        if "error" in self.out:
            raise self.out["error"]

    def result(self, until_ns: int) -> tuple[np.ndarray, np.ndarray, float | None,
                                             dict[str, Any]]:
        time.sleep(DRAIN_S)
        depart, arrive = self.probe.stamps(self.count)
        d, a = D.packets(depart, arrive, until_ns=until_ns)
        stats: ReplayStats = self.out["stats"]
        return d, a, stats.achieved_pps, {}


def clear_udp_conntrack(netns: str, service_ip: str, port: int, endpoint_ip: str) -> int:
    """Delete the conntrack entries of UDP flows to ``service_ip``:``port`` that were
    NATed to ``endpoint_ip``, as kube-proxy does after a sync that removed that UDP
    endpoint (its conntrack cleanup: entries by original destination, port and the
    endpoint as reply source). Returns how many were deleted."""
    p = run_in_netns(netns, ["conntrack", "-D", "-p", "udp", "--orig-dst", service_ip,
                             "--dport", str(port), "--reply-src", endpoint_ip], check=False)
    out = (p.stderr or "") + (p.stdout or "")
    for line in out.splitlines():  # "conntrack v1.4.7 (...): 2 flow entries have been deleted."
        if "flow entries have been deleted" in line:
            with contextlib.suppress(ValueError, IndexError):
                return int(line.split(":")[-1].split()[0])
    if p.returncode not in (0, 1):
        raise KpbenchError(f"conntrack -D failed in {netns}: {out.strip()[:200]}")
    return 0


def sync_cpu_seconds() -> float:
    """CPU seconds of the syncs' appliers so far: the tools this process ran and waited
    for (iptables-restore, nft, ipset: RUSAGE_CHILDREN) plus this thread's own (the
    datapaths that program the kernel in-process: bpf() and netlink calls)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime + time.thread_time()


def churn_figures(records: list[SyncRecord], applies: list[float], per_s: int,
                  seconds: float, lists: list[float] | None = None) -> dict[str, Any]:
    """A churn repetition's own figures (docs/disruption.md), over the event's
    ``seconds`` (first change to the end of the last sync); ``lists``: each sync's
    read-back, where the agent reads one."""
    cpu = [r.cpu_s for r in records]
    total_cpu = sum(c for c in cpu if c is not None)
    return {**({"sync_list_s": lists} if lists else {}),
            "churn_per_s": per_s, "changes": sum(r.changes for r in records),
            "syncs": len(records), "full_syncs": sum(1 for r in records if r.full),
            "syncs_per_s": len(records) / seconds if seconds > 0 else None,
            "sync_cpu_s_per_s": total_cpu / seconds if seconds > 0 else None,
            "sync_apply_s": applies, "sync_cpu_s": cpu,
            "sync_start_ms": [r.start * 1e3 for r in records],
            "sync_changes": [r.changes for r in records]}


def _await_first(probe: LatencyProbe, thread: threading.Thread) -> int:
    """The first background packet's departure stamp (ns), once it left the client."""
    deadline = time.monotonic() + FIRST_PACKET_TIMEOUT_S
    while time.monotonic() < deadline:
        first = probe.first_departure()
        if first:
            return first
        if not thread.is_alive():
            break
        time.sleep(0.005)
    raise KpbenchError("the background traffic did not start: no packet left the client "
                       f"within {FIRST_PACKET_TIMEOUT_S:g} s")

