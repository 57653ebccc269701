"""Rule-sync latency: full sync, one change at scale, time until a change takes effect.

For each datapath variant and number of services the runner programs node 0
of a namespace cluster with N generated services x E endpoints and measures:

- ``sync-full``: full *resyncs* of that state, the table present (kube-proxy's
  periodic full sync, ``sync_full_proxy_rules_duration_seconds``); the
  *cold start*, the very first sync of the empty node (the table created from
  nothing, as when kube-proxy starts on a fresh node), is the point's
  ``setup.sync_seconds`` (node 0's apply time, as in packet scenarios), shown
  as "cold start" beside the resync's "apply" by ``kpbench show``;
- ``sync-<change>``: one change applied as a partial sync (KEP-3453 for
  iptables, the same for nftables; ``sync_partial_proxy_rules_duration_seconds``):
  add a service, remove one, add an endpoint, remove one, flip one to
  not-ready. The state is put back (unmeasured) after each repetition.

Each repetition splits its time into apply (the tool and the kernel: the
figure reported as the sync time), render (ours, in Python, kept apart and
never added to it), kernel (time inside the applying tool's system calls,
from the syscall tracepoints) and commit (its netlink sendmsg/recvmsg or
iptables-legacy setsockopt/getsockopt). Where the datapath's agent reads
its state back from the kernel on a sync (nftables: kube-proxy reads its
whole table twice, for its chains and its sets; ``Datapath.list_state``),
that read is timed on its own as ``list``, before the apply and never added
to it. Where a sync is several transactions (``nftables-chunked``),
``transaction_max`` is the longest one: the stall a chunked sync is meant to
bound, beside ``apply``, the total. Time to effect is measured by
traffic, never inferred from the apply time: new flows are sent to the
changed service throughout the change, and the effect probe at every backend
pod stamps the first packet that reaches a new endpoint (or the last that
reaches a removed one) on the same clock as the moment the change was issued.
Only node 0 is programmed: the client pod sits behind it, so its rules alone
decide where the measured traffic goes.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from bench import interrupts
from bench import results as R
from bench.cluster.testbed import Testbed, gc_paused
from bench.datapaths.base import watching_tools
from bench.errors import ApplyTimeout, FeatureMissing, KpbenchError
from bench.measure.probes.effect import EffectProbe
from bench.measure.probes.loader import TcHook
from bench.measure.probes.syscalls import NETLINK_CALLS, SOCKOPT_CALLS, SyscallProbe
from bench.measure.scale_loop import ScaleLoop
from bench.measure.scenario import Scenario
from bench.measure.traffic import Target
from bench.model.generate import GenSpec, generate
from bench.model.objects import EndpointSlice, PortViews, Service, service_port_views

PRE_ROLL = 0.3  # seconds of traffic before a change is issued
TAIL = 0.5  # and after the change showed (or the apply is expected to end)
QUIET = 0.5  # a removed endpoint without packets this long after the apply: it is out
EFFECT_POLL = 0.05  # how often the effect probe is read while the change's traffic runs
MAX_EFFECT_PACKETS = 1_000_000
SRC_SPAN = 16  # source addresses for new flows: 16 x 64,512 distinct flows


@dataclass(frozen=True)
class Change:
    """One change: the state after it, what it touches, and how its effect shows."""

    services: list[Service]
    slices: list[EndpointSlice]
    changed: set[str]  # service keys (ns/name)
    vip: str
    port: int
    watch: list[str]  # backend IPs whose arrivals show the effect
    mode: str  # "first": first arrival at a new endpoint; "last": last at a removed one


@dataclass
class State:
    """The base state every change starts from, and the spare service's slices."""

    services: list[Service]
    slices: list[EndpointSlice]
    spare_slices: list[EndpointSlice]


class SyncRunner:
    """Runs a ``kind = "sync"`` scenario (see the module doc): the run's loop
    (:class:`bench.measure.scale_loop.ScaleLoop`) with this measurement at each scale."""

    def __init__(self, scenario: Scenario, results_dir: Path, out: TextIO = sys.stderr) -> None:
        self.sc = scenario
        self.loop = ScaleLoop(scenario, results_dir, self, out)
        self.progress = self.loop.progress
        self.workdir = self.loop.workdir
        self._seq = 0  # the effect traffic's sequence numbers, fresh for every change
        self._last_text = ""  # the last rendering applied (its state size is recorded)
        self._last_times = (0.0, 0.0)  # (render, apply) seconds of the last sync, also cut short
        self._last_views: tuple[Any, Any, str, PortViews] | None = None

    def run(self) -> Path:
        """Run every point; returns the result file (complete, or partial on Ctrl-C)."""
        return self.loop.run()

    def rate_pps(self, workload: str) -> int | None:
        """A full sync sends no traffic; a change is watched by traffic at this rate."""
        return None if workload == "sync-full" else self.sc.effect_rate_pps

    def measure_scale(self, variant: str, n: int) -> None:
        """Build the cluster of ``n`` services (plus the spare one a change adds), attach
        the syscall and effect probes, and measure the scale (:meth:`_measure_scale`)."""
        sc = self.sc
        self.progress.say(f"{variant}: {n} services x {sc.endpoints} endpoints: building")
        # One more service than measured: the one "add-service" adds, whose pods exist.
        services, slices = generate(GenSpec(services=n + 1, endpoints=sc.endpoints,
                                            nodes=sc.nodes, protocol="UDP"))
        spare = services[-1]
        base = State(services[:-1], [s for s in slices if s.service_name != spare.name],
                     [s for s in slices if s.service_name == spare.name])
        measured = base.services[sc.position_index(n)]
        bed = Testbed(self.loop.datapath(variant), services, slices, sc.nodes,
                      pod_services={measured.key, spare.key}, echo=False, sync_on_enter=False)
        with bed:
            syscalls = SyscallProbe()
            effect = EffectProbe([TcHook(bed.cluster.pod_ns(p)) for p in bed.layout.pods])
            try:
                with _attached(syscalls, effect):
                    self._measure_scale(bed, variant, n, base, measured, spare, syscalls,
                                        effect)
            except FeatureMissing as e:
                self.loop.record_rest(variant, n, "failed", str(e))

    # --- one scale ------------------------------------------------------------
    def _measure_scale(self, bed: Testbed, variant: str, n: int,
                       base: State, measured: Service, spare: Service,
                       syscalls: SyscallProbe, effect: EffectProbe) -> None:
        """The timed first full sync of node 0, then the points: full resyncs, and each
        change with its time to effect; each point recorded as it ends."""
        sc = self.sc
        self.progress.say(f"{variant}: {n} services: first full sync")
        first_change = Change(base.services, base.slices, {s.key for s in base.services},
                              measured.cluster_ip, measured.ports[0].port,
                              _endpoint_ips(base.slices, measured), "first")
        try:
            # No time to effect here: traffic would have to span a sync of unknown length.
            first = self._sync(bed, first_change, None, syscalls, None, expect_s=None)
        except ApplyTimeout as e:
            # The time reached when the tool was stopped, not the limit.
            render_s, apply_s = self._last_times
            self.loop.record_rest(variant, n, "exceeded-limit", str(e),
                                  sync_seconds=apply_s, sync_render_seconds=render_s,
                                  sync_node_seconds=[apply_s])
            return
        except KpbenchError as e:
            self.loop.record_rest(variant, n, "failed", str(e))
            return
        render_s, apply_s = first["sync"]["render"] or 0.0, first["sync"]["apply"] or 0.0
        self.progress.record_sync(variant, n, render_s + apply_s)
        # The same meaning as a packet scenario's setup (bench.results.SetupDoc); only
        # node 0 is programmed here.
        setup = {"sync_seconds": apply_s, "sync_render_seconds": render_s,
                 "sync_node_seconds": [apply_s],
                 "state_size": bed.datapath.state_size(self._last_text)}
        full_apply = apply_s or 1.0

        self._repeat(variant, n, "sync-full", setup, lambda: self._sync(
            bed, replace(first_change, changed=set()), None, syscalls, None, expect_s=None))
        for change in sc.changes:
            def once(change: str = change) -> R.RepetitionDoc:
                c = _make_change(change, base, measured, spare)
                rep = self._sync(bed, c, c.changed, syscalls, effect, expect_s=full_apply)
                # Put the state back for the next repetition (not measured).
                back = replace(c, services=base.services, slices=base.slices)
                self._sync(bed, back, c.changed, None, None, expect_s=None)
                return rep
            self._repeat(variant, n, f"sync-{change}", setup, once)

    def _repeat(self, variant: str, n: int, workload: str,
                setup: dict[str, Any], once: Callable[[], R.RepetitionDoc]) -> None:
        """The point's repetitions; a sync beyond the limit or failing ends the point
        (recorded with the repetitions done), and the run goes on."""
        reps: list[R.RepetitionDoc] = []
        status, error = "ok", None
        for r in range(self.sc.sync_repetitions):
            self.progress.say(f"{variant}: {n} services: {workload} rep {r + 1}/"
                              f"{self.sc.sync_repetitions}")
            try:
                reps.append(once())
            except KpbenchError as e:
                status = "exceeded-limit" if isinstance(e, ApplyTimeout) else "failed"
                error = str(e)
                break
        self.loop.record(self.loop.point(variant, n, workload, status=status, error=error,
                                         repetitions=reps, **setup))

    # --- one sync -------------------------------------------------------------
    def _sync(self, bed: Testbed, change: Change, partial: set[str] | None,
              syscalls: SyscallProbe | None, effect: EffectProbe | None,
              expect_s: float | None) -> R.RepetitionDoc:
        """Render and apply ``change`` on node 0 (partial if ``partial`` is a set)."""
        dp = bed.datapath
        ctx = bed.node_context(0)
        ns = bed.cluster.node_ns(0)
        views = self._views(change, ctx.node_name)
        with gc_paused():  # the collector's pauses are ours, not render's or apply's
            t0 = time.monotonic()
            text = (dp.render(views, ctx) if partial is None
                    else dp.render_partial(views, ctx, partial))
            render_s = time.monotonic() - t0
        self._last_text = text
        # What the agent reads back from the kernel on this sync (kube-proxy's nftables
        # proxier lists its table): its own step and figure, before the change's traffic
        # and the apply, never part of either (the time to effect starts at the apply).
        t0 = time.monotonic()
        listed = dp.list_state(ns, full=partial is None)
        list_s = time.monotonic() - t0
        traffic = None
        if effect is not None:
            traffic = self._start_traffic(bed, change, expect_s)
            effect.start()
            time.sleep(PRE_ROLL)
        own = threading.get_native_id() if dp.applies_in_process else None
        if syscalls is not None:
            syscalls.start()
            if own is not None:
                syscalls.watch(own)
        issued = done = time.monotonic_ns()
        try:
            # The collector paused and the tool watcher set before the clock starts:
            # entering them is the harness's work, not the apply's.
            with gc_paused(), watching_tools(syscalls.watch if syscalls
                                             else (lambda pid: None)):
                issued = time.monotonic_ns()
                try:
                    if partial is None:
                        dp.apply(text, ns)
                    else:
                        dp.apply_partial(text, ns)
                finally:
                    done = time.monotonic_ns()
        except BaseException:
            if traffic is not None:
                traffic[1].set()  # stopping: no effect to watch for
            raise
        finally:
            apply_s = (done - issued) / 1e9
            self._last_times = (render_s, apply_s)
            if syscalls is not None and own is not None:
                syscalls.unwatch(own)
            if traffic is not None:
                if effect is not None and not traffic[1].is_set():
                    # An effect can come well after the apply returns (rules programmed
                    # asynchronously): the traffic runs until it shows, at most its window.
                    _await_effect(effect, change, issued, traffic[0])
                traffic[1].set()
                traffic[0].join()
        bed.services, bed.slices = change.services, change.slices
        # "apply" is the figure (the datapath's time); "render" is kpbench's, kept apart.
        sync: dict[str, float | None] = {"render": render_s, "apply": apply_s}
        if listed:
            sync["list"] = list_s
        transactions = dp.transaction_seconds()
        if transactions:  # the longest single transaction: the stall a chunked sync bounds
            sync["transaction_max"] = max(transactions)
        if syscalls is not None:
            reading = syscalls.read()
            sync["kernel"] = reading.seconds()
            sync["commit"] = reading.seconds(NETLINK_CALLS + SOCKOPT_CALLS)
        if effect is not None:
            sync["effect"] = _effect_seconds(effect.read(), change, issued)
        return R.make_repetition(sent=0, delivered=0, sync=sync)

    def _views(self, change: Change, node: str) -> PortViews:
        """The service ports of ``change``'s state; the same objects as last time while
        its Services and slices are (an informer hands the same objects until one
        changes), so a resync's render finds every port unchanged at a glance; after a
        change, the same objects for every Service the change left alone."""
        last = self._last_views
        if last is not None and last[0] is change.services and last[1] is change.slices \
                and last[2] == node:
            return last[3]
        views = service_port_views(change.services, change.slices, node,
                                   previous=last[3] if last is not None else None)
        self._last_views = (change.services, change.slices, node, views)
        return views

    def _start_traffic(self, bed: Testbed, change: Change,
                       expect_s: float | None) -> tuple[threading.Thread, threading.Event]:
        """New flows to the changed service from the client pod, for the whole change
        (sized for twice the expected apply); setting the event stops them early."""
        rate = self.sc.effect_rate_pps
        window = PRE_ROLL + max(2 * (expect_s if expect_s is not None else 5.0), 2.0) + TAIL
        window = min(window, self.sc.point_time_limit + TAIL)
        packets = min(MAX_EFFECT_PACKETS, max(1, math.ceil(rate * window)))
        target = Target.from_client_pod(bed.cluster, change.vip, change.port)
        pcap = self.workdir / "effect.pcap"
        self._seq += packets
        target.build_pcap("udp-new", packets, pcap, seq_start=self._seq, src_span=SRC_SPAN)
        stop = threading.Event()
        thread = threading.Thread(target=target.replay, args=(pcap, rate, window + 30, stop),
                                  daemon=True)
        thread.start()
        return thread, stop


@contextlib.contextmanager
def _attached(*probes: Any) -> Iterator[None]:
    """``probes`` attached for the block, detached after it (also on Ctrl-C)."""
    try:
        for p in probes:
            p.attach()
        yield
    finally:
        with interrupts.deferred():
            for p in probes:
                p.detach()


def _endpoint_ips(slices: list[EndpointSlice], svc: Service) -> list[str]:
    return [e.addresses[0] for s in slices if s.service_key == svc.key for e in s.endpoints]


def _make_change(kind: str, base: State, measured: Service, spare: Service) -> Change:
    """The state after one change of ``kind`` to the base state."""
    svc_slices = [s for s in base.slices if s.service_key == measured.key]
    others = [s for s in base.slices if s.service_key != measured.key]
    port = measured.ports[0].port
    if kind == "add-service":
        return Change(base.services + [spare], base.slices + base.spare_slices,
                      {spare.key}, spare.cluster_ip, spare.ports[0].port,
                      _endpoint_ips(base.spare_slices, spare), "first")
    if kind == "remove-service":
        return Change([s for s in base.services if s.key != measured.key], others,
                      {measured.key}, measured.cluster_ip, port,
                      _endpoint_ips(base.slices, measured), "last")
    first = svc_slices[0]
    if kind == "add-endpoint":
        # The new endpoint is a pod of the spare service: it exists and listens already.
        new = base.spare_slices[0].endpoints[0]
        grown = replace(first, endpoints=(*first.endpoints, new))
        return Change(base.services, others + [grown, *svc_slices[1:]], {measured.key},
                      measured.cluster_ip, port, [new.addresses[0]], "first")
    victim = first.endpoints[-1]
    if kind == "remove-endpoint":
        eps = first.endpoints[:-1]
    elif kind == "endpoint-not-ready":
        eps = (*first.endpoints[:-1], replace(victim, ready=False, serving=False))
    else:
        raise ValueError(f"unknown change {kind!r}")
    return Change(base.services, others + [replace(first, endpoints=eps), *svc_slices[1:]],
                  {measured.key}, measured.cluster_ip, port, [victim.addresses[0]], "last")


def _await_effect(effect: EffectProbe, change: Change, issued_ns: int,
                  traffic: threading.Thread) -> None:
    """Return once the traffic has shown the change (then TAIL more seconds), or ended.

    "first" changes show with the first packet at a new endpoint. "last" changes
    show when the removed endpoints have had no packet for QUIET seconds after
    the apply: at the effect traffic's rate each endpoint gets one every few
    milliseconds while it is still chosen.
    """
    applied_ns = time.monotonic_ns()
    while traffic.is_alive():
        arrivals = effect.read()
        now = time.monotonic_ns()
        if change.mode == "first":
            shown = _effect_seconds(arrivals, change, issued_ns) is not None
        else:
            last = max((arrivals[ip].last_ns for ip in change.watch if ip in arrivals),
                       default=0)
            shown = now - max(last, applied_ns) >= QUIET * 1e9
        if shown:
            time.sleep(TAIL)
            return
        time.sleep(EFFECT_POLL)


def _effect_seconds(arrivals: dict[str, Any], change: Change, issued_ns: int) -> float | None:
    """Seconds from issuing the change to its effect as the traffic saw it (None: not seen)."""
    seen = [arrivals[ip] for ip in change.watch if ip in arrivals]
    if change.mode == "first":
        after = [a.first_ns for a in seen if a.first_ns >= issued_ns]
        return (min(after) - issued_ns) / 1e9 if after else None
    # "last": the removed endpoint's last packet; none after the change means it took
    # effect before the first packet that followed it (within the traffic's spacing).
    last = max((a.last_ns for a in seen), default=None)
    if last is None:
        return None
    return max(0, last - issued_ns) / 1e9
