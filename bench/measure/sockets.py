"""Socket workloads: real connections from a client namespace to responders.

Workloads (:data:`WORKLOADS`), each closed loop at ``flows`` concurrent flows
or open loop at ``rate_tps`` (request/response workloads only):

``tcp-rr``
    request/response on ``flows`` established connections, one per flow,
    each opened before the clock starts and closed at the end (``kpb-crr
    --keep``, :mod:`bench.measure.socket_tools`).
``udp-rr``
    ping-pong of ``request_bytes`` messages on established flows (sockperf
    ``ping-pong``, open loop ``under-load --reply-every 1``); one sockperf
    client per flow, so each flow is its own socket and 5-tuple. (sockperf's
    TCP client sleeps a fixed 2 s after connecting on every run, hence
    ``kpb-crr`` for ``tcp-rr``.)
``tcp-crr``
    per transaction: connect, request, response, close (``kpb-crr``); every
    transaction is a new connection.
``tcp-stream``
    bulk transfer over ``flows`` parallel TCP streams (``iperf3 -P``).

:func:`run` starts one responder per :class:`Responder` (namespace, address),
the generator(s) in the client namespace (inside ``cgroup`` if given: socket-lb
balances only sockets of that cgroup), and reads each namespace's own TCP
counters (``nstat``) and the node's conntrack entry count before and after.
With one flow the generator and the responders share one CPU (:func:`shared_cpu`).
Every process is bounded by a timeout, dies with this process, and is killed
when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.analysis.stats import Histogram, summary
from bench.cluster import cgroups
from bench.cluster.topology import PREFIX_RE
from bench.errors import KpbenchError
from bench.measure import processes as P
from bench.measure import socket_tools as T
from bench.measure.processes import Processes, last_line

WORKLOADS = ("udp-rr", "tcp-rr", "tcp-crr", "tcp-stream")
LOOPS = ("closed", "open")
MAX_FLOWS = 256
GRACE_S = 15.0  # on top of a workload's duration before its generator is killed
CT_LISTEN_S = 0.3  # for conntrack -E to subscribe, and for the last events to arrive
CT_EVENT_BUFFER = 128 << 20  # its netlink buffer: a lost event would fail the count
# The workloads kpb-crr runs, with the flags both its sides take for them.
KPB_CRR: dict[str, tuple[str, ...]] = {"tcp-crr": (), "tcp-rr": ("--keep",)}
# The namespace counters a point reports (nstat names).
TCP_COUNTERS = {"retransmits": "TcpRetransSegs", "resets_sent": "TcpOutRsts",
                "estab_resets": "TcpEstabResets", "attempt_fails": "TcpAttemptFails",
                "udp_rcvbuf_errors": "UdpRcvbufErrors"}


@dataclass(frozen=True)
class SocketWorkload:
    """What to run: the workload, its loop and concurrency, and its bounds."""

    workload: str
    flows: int = 1
    loop: str = "closed"
    rate_tps: float | None = None  # open loop: offered transactions/s over all flows
    duration_s: float = 5.0
    count: int | None = None  # tcp-crr, tcp-rr: at most this many transactions
    request_bytes: int = 64
    response_bytes: int = 64
    timeout_ms: int = 2000  # tcp-crr, tcp-rr: one transaction's bound

    def check(self) -> None:
        """ValueError naming the bad field and the accepted values."""
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown socket workload {self.workload!r}; known: "
                             f"{', '.join(WORKLOADS)}")
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be 'closed' or 'open', not {self.loop!r}")
        if not 1 <= self.flows <= MAX_FLOWS:
            raise ValueError(f"flows {self.flows} out of range (1-{MAX_FLOWS})")
        if (self.loop == "open") != (self.rate_tps is not None):
            raise ValueError("rate_tps is required with loop = 'open' and only then")
        if self.rate_tps is not None and self.rate_tps <= 0:
            raise ValueError(f"rate_tps must be positive, not {self.rate_tps}")
        if self.loop == "open" and self.workload == "tcp-stream":
            raise ValueError("tcp-stream runs closed loop only (a stream has no transactions)")
        if not 0 < self.duration_s <= 3600:
            raise ValueError(f"duration_s {self.duration_s} out of range (0-3600]")
        if self.workload == "udp-rr" and self.request_bytes < T.SOCKPERF_MIN_MSG:
            raise ValueError(f"request_bytes must be >= {T.SOCKPERF_MIN_MSG} for sockperf")


@dataclass(frozen=True)
class Responder:
    """A responder: the namespace it runs in and the address (and port) it binds to."""

    netns: str
    ip: str
    port: int | None = None  # None: the path's dst_port (a Service's targetPort differs)


@dataclass(frozen=True)
class SocketPath:
    """Where the workload goes: client namespace to ``dst_ip:dst_port`` (a Service
    address, or a responder's own for the direct path), answered by ``responders``."""

    client_netns: str
    dst_ip: str
    dst_port: int
    responders: tuple[Responder, ...]
    node_netns: tuple[str, ...] = ()  # where conntrack entries are counted
    client_ip: str | None = None  # bind the generator to it (None: the route's source)
    # The client namespace's ephemeral ports for this path (None: leave them). Two paths
    # from one client to the same backends (a Service and the direct path) must not share
    # ports: a connection's conntrack entry outlives it (TIME_WAIT, 120 s), and a direct
    # connection from a port whose Service entry has the same reply tuple clashes with it.
    port_range: tuple[int, int] | None = None
    # More destinations (address, port) beside dst_ip:dst_port: the direct path spread
    # over several backends as a Service spreads its connections (tcp-crr: transaction i
    # to the (i mod n)-th; udp-rr/tcp-rr: flow i to the (i mod n)-th; tcp-stream: the
    # first only, as its Service has session affinity).
    spread: tuple[tuple[str, int], ...] = ()

    def destinations(self) -> list[tuple[str, int]]:
        return [(self.dst_ip, self.dst_port), *self.spread]


@dataclass
class SocketResult:
    """One workload run's figures (see :meth:`summary` for the point's metric names)."""

    workload: str
    loop: str
    flows: int
    offered_tps: float | None
    seconds: float  # measured duration (sockperf: its valid duration, per client, mean)
    transactions: int  # completed transactions (messages for *-rr); 0 for streams
    transactions_per_s: float | None
    throughput_bps: float | None
    rtt: Histogram
    failed: int  # failed connections, timeouts, resets mid-transaction, lost replies
    served: int | None  # responses the responders wrote (tcp-crr, tcp-rr)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # netns -> deltas
    # Entry count growth summed over node_netns. A connection whose 4-tuple repeats one
    # still in TIME_WAIT replaces that entry, so past ~10,000 connections to one address
    # (ports repeat) this undercounts: conntrack_new counts every entry made.
    conntrack_created: int | None = None
    conntrack_new: int | None = None  # NEW events (run(..., conntrack_events=True))
    generator_cpu_ns: int | None = None
    responder_cpu_ns: int | None = None
    connections: int | None = None  # connections the responders accepted (kpb-crr)
    shared_cpu: int | None = None  # the CPU generator and responders shared (shared_cpu)

    def summary(self) -> dict[str, Any]:
        """The point's figures under the names of the issue (rtt_ns like latency_ns)."""
        per_tx = None
        if self.transactions and self.generator_cpu_ns is not None:
            per_tx = {"generator": self.generator_cpu_ns / self.transactions,
                      "responder": (self.responder_cpu_ns or 0) / self.transactions}
        return {"workload": self.workload, "loop": self.loop, "flows": self.flows,
                "offered_tps": self.offered_tps,
                "transactions_per_s": self.transactions_per_s,
                "throughput_bps": self.throughput_bps,
                "rtt_ns": summary(self.rtt) if self.rtt.count else None,
                "failed_connections": self.failed,
                "retransmits": sum(c.get("retransmits", 0) for c in self.counters.values()),
                "resets": sum(c.get("resets_sent", 0) for c in self.counters.values()),
                "conntrack_entries_created": (self.conntrack_new if self.conntrack_new
                                              is not None else self.conntrack_created),
                "cpu_ns_per_transaction": per_tx}


@dataclass(frozen=True)
class Serving:
    """Responders started once for several runs of one workload (:func:`serve`)."""

    workload: str
    responders: tuple[Responder, ...]
    cgroup: Path  # theirs alone: its CPU time is the responders'


# A run's own cost beside its duration (process starts, counters): part of the bound of
# responders that serve several runs.
RUN_OVERHEAD_S = 5.0


@contextlib.contextmanager
def serve(work: SocketWorkload, path: SocketPath, runs: int) -> Iterator[Serving | None]:
    """Start ``path``'s responders once for up to ``runs`` runs of ``work`` (each no longer
    than ``work.duration_s``), as :func:`run`'s ``serving``: kpb-crr and sockperf serve
    run after run, so a point does not pay their start (a third of a second for ten
    backends) at every repetition. None for ``tcp-stream`` (``iperf3 -s -1`` serves one
    test): each run then starts its own. The responders are stopped at the block's end;
    a run given them reports no ``served`` count (read only when they stop)."""
    work.check()
    if work.workload == "tcp-stream":
        yield None
        return
    if work.workload == "udp-rr":
        T.require("sockperf")
    prefix = _prefix(path)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kpb-serve-")))
        cg = _own_cgroup(stack, f"{prefix}-sresp")
        procs = stack.enter_context(Processes())
        bound = replace(work, duration_s=runs * (work.duration_s + RUN_OVERHEAD_S))
        _start_responders(procs, bound, path, cg, tmp)
        yield Serving(work.workload, path.responders, cg)


def _prefix(path: SocketPath) -> str:
    m = PREFIX_RE.match(path.client_netns)
    if m is None:
        raise ValueError(f"not a run namespace: {path.client_netns}")
    return m.group(1)


def run(work: SocketWorkload, path: SocketPath, *, cgroup: Path | None = None,
        conntrack_events: bool = False,
        window: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        serving: Serving | None = None) -> SocketResult:
    """Run ``work`` over ``path``; generator processes start inside ``cgroup`` if given.

    ``conntrack_events`` also counts every conntrack entry the nodes create
    (``conntrack -E -e NEW``): exact, but the event delivery and the listener cost
    CPU on the measured path, so keep it for known-workload checks, not timed points.
    ``window``: a context entered around the generator alone (responders started,
    counters read), e.g. a CPU probe's measurement window.

    Responder and generator CPU are read from cgroups of their own
    (``<prefix>-sresp``, and ``<prefix>-sgen`` unless ``cgroup`` is given, then
    from it: it must hold nothing else). ``serving``: responders already running
    (:func:`serve`) for this workload and every responder of ``path``; else this run
    starts and stops its own. Raises KpbenchError if a tool fails.
    """
    work.check()
    for tool in {"tcp-stream": ["iperf3"], "udp-rr": ["sockperf"]}.get(work.workload, []):
        T.require(tool)
    for tool in ("nstat", *(["conntrack"] if path.node_netns else [])):
        T.require(tool)
    if not path.responders:
        raise ValueError("a socket workload needs at least one responder")
    prefix = _prefix(path)
    if serving is not None and (serving.workload != work.workload
                                or not set(path.responders) <= set(serving.responders)):
        raise ValueError("serving: responders of another workload or path")
    spaces = [path.client_netns, *dict.fromkeys(r.netns for r in path.responders)]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kpb-sock-")))
        resp_cg = serving.cgroup if serving else _own_cgroup(stack, f"{prefix}-sresp")
        gen_cg = cgroup or _own_cgroup(stack, f"{prefix}-sgen")
        procs = stack.enter_context(Processes())
        if serving is None:
            _start_responders(procs, work, path, resp_cg, tmp)
        set_port_range(path)
        before = nstat_all(spaces)
        ct_before = [conntrack_count(ns) for ns in path.node_netns]
        if conntrack_events:
            for ns in path.node_netns:
                procs.start("conntrack -E", ns, ["conntrack", "-E", "-e", "NEW", "-b",
                                                 str(CT_EVENT_BUFFER)], None,
                            discard_stdout=True)  # its total comes on stderr
            time.sleep(CT_LISTEN_S)  # it prints nothing until the first event
        cpu0 = (cgroups.cpu_usage_ns(gen_cg), cgroups.cpu_usage_ns(resp_cg))
        with window() if window is not None else contextlib.nullcontext():
            result = _GENERATORS[work.workload](procs, work, path, gen_cg, tmp)
        result.shared_cpu = shared_cpu(work.flows)
        result.generator_cpu_ns = cgroups.cpu_usage_ns(gen_cg) - cpu0[0]
        result.responder_cpu_ns = cgroups.cpu_usage_ns(resp_cg) - cpu0[1]
        if path.node_netns:
            result.conntrack_created = sum(conntrack_count(ns) - c
                                           for ns, c in zip(path.node_netns, ct_before,
                                                            strict=True))
        after = nstat_all(spaces)
        result.counters = {ns: {k: after[ns].get(v, 0) - before[ns].get(v, 0)
                                for k, v in TCP_COUNTERS.items()} for ns in spaces}
        if conntrack_events:
            time.sleep(CT_LISTEN_S)  # events are delivered asynchronously
            result.conntrack_new = sum(T.parse_conntrack_events(out) for out in
                                       procs.stop_all(signal.SIGTERM, "conntrack -E"))
        if work.workload in KPB_CRR and serving is None:
            served = [T.parse_crr_server(out)
                      for out in procs.stop_all(signal.SIGTERM, "kpb-crr serve")]
            result.served = sum(s.served for s in served)
            result.connections = sum(s.connections for s in served)
    return result


def set_port_range(path: SocketPath) -> None:
    """The client namespace's ephemeral ports for ``path`` (its ``port_range``), if any."""
    if path.port_range is not None:
        lo, hi = path.port_range
        subprocess.run(["ip", "netns", "exec", path.client_netns, "sysctl", "-qw",
                        f"net.ipv4.ip_local_port_range={lo} {hi}"], check=True,
                       capture_output=True, timeout=10)


def _own_cgroup(stack: contextlib.ExitStack, name: str) -> Path:
    path = cgroups.create(name)
    stack.callback(cgroups.remove, path)
    return path


# --- counters ------------------------------------------------------------------

def nstat(netns: str) -> dict[str, int]:
    """The namespace's SNMP counters (absolute; nstat's history is left untouched)."""
    return nstat_all([netns])[netns]


def nstat_all(spaces: list[str]) -> dict[str, dict[str, int]]:
    """:func:`nstat` of each namespace, read all at once (one after the other, a dozen
    namespaces cost each run 0.2 s)."""
    procs = {ns: subprocess.Popen(["ip", "netns", "exec", ns, "nstat", "-asz", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ns in spaces}
    counters = {}
    try:
        for ns, p in procs.items():
            out, err = p.communicate(timeout=10)
            if p.returncode != 0:
                raise KpbenchError(f"nstat in {ns} failed: {last_line(err)}")
            counters[ns] = {k: int(v) for k, v in json.loads(out).get("kernel", {}).items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return counters


def conntrack_count(netns: str) -> int:
    """How many conntrack entries the namespace holds now."""
    out = subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-C"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return int(out.strip())


# --- workloads -----------------------------------------------------------------

def shared_cpu(flows: int) -> int | None:
    """The one CPU a one-flow run's generator and responders share, None: not pinned.

    One flow is one transaction at a time: left to the scheduler, the generator and the
    responder sometimes run on one CPU (each wake-up a switch on that CPU) and sometimes
    on two (each wake-up an inter-processor interrupt to an idle CPU, which in a VM is
    tens of microseconds), so the same point measured 8 or 75 us RTT from one run to the
    next (docs/sockets.md). Pinned to one CPU, a transaction runs serially on it, the
    whole packet path included (veth delivers in the sender's context): what is left is
    the path's own cost. The last CPU of this process's set: the first takes more of
    the machine's housekeeping. Several flows are left to the scheduler (they need
    every CPU to reach saturation)."""
    if flows != 1:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[-1] if len(cpus) > 1 else None


def _pinned(work: SocketWorkload, argv: list[str]) -> list[str]:
    """``argv`` run on :func:`shared_cpu` (``taskset``), or as it is."""
    cpu = shared_cpu(work.flows)
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def _start_responders(procs: Processes, work: SocketWorkload, path: SocketPath,
                      cgroup: Path, tmp: Path) -> None:
    bound = str(math.ceil(work.duration_s + GRACE_S + P.READY_TIMEOUT_S))
    starting = []
    for r in path.responders:
        port = str(r.port or path.dst_port)
        if work.workload in KPB_CRR:
            argv = [str(T.crr_binary()), "serve", "--listen", f"{r.ip}:{port}",
                    "--request", str(work.request_bytes), "--response",
                    str(work.response_bytes), "--duration", bound, *KPB_CRR[work.workload]]
            marker, tag = "ready", "kpb-crr serve"
        elif work.workload == "tcp-stream":
            # One test per server process; the streams of one client share it.
            argv = ["timeout", bound, "iperf3", "-s", "-1", "--forceflush", "-B", r.ip, "-p",
                    port]
            marker, tag = "Server listening", "iperf3 -s"
        else:  # udp-rr
            # From a feed file, so that -F e serves many flows at once.
            feed = tmp / f"feed-{r.netns}-{r.ip}-{port}"
            feed.write_text(f"U:{r.ip}:{port}\n")
            argv = ["timeout", bound, "sockperf", "server", "-f", str(feed), "-F", "e"]
            marker, tag = "block on socket", "sockperf server"
        starting.append((procs.start(tag, r.netns, _pinned(work, argv), cgroup), marker,
                         f"{tag} in {r.netns}"))
    for p, marker, what in starting:  # started together, then each awaited
        procs.wait_ready(p, marker, what)


def crr_client_argv(work: SocketWorkload, path: SocketPath, *output: str) -> list[str]:
    """``kpb-crr client``'s command line for ``work`` over ``path`` (tcp-crr, tcp-rr);
    ``output``: where it writes its samples or records (``--samples FILE``, ...)."""
    connect = [a for ip, port in path.destinations() for a in ("--connect", f"{ip}:{port}")]
    argv = [str(T.crr_binary()), "client", *connect, "--flows", str(work.flows),
            "--duration", f"{work.duration_s:g}",
            "--request", str(work.request_bytes), "--response", str(work.response_bytes),
            "--timeout-ms", str(work.timeout_ms), *output, *KPB_CRR[work.workload]]
    if work.count is not None:
        argv += ["--count", str(work.count)]
    if work.rate_tps is not None:
        argv += ["--rate", f"{work.rate_tps:g}"]
    if path.client_ip:
        argv += ["--bind", path.client_ip]
    return argv


def _kpb_crr(procs: Processes, work: SocketWorkload, path: SocketPath, cgroup: Path,
             tmp: Path) -> SocketResult:
    samples = tmp / "crr.samples"
    argv = crr_client_argv(work, path, "--samples", str(samples))
    p = procs.start("kpb-crr client", path.client_netns, _pinned(work, argv), cgroup)
    s = T.parse_crr_client(procs.finish(p, work.duration_s + GRACE_S, "kpb-crr client"))
    return SocketResult(work.workload, work.loop, work.flows, work.rate_tps, s.seconds,
                        s.transactions, s.transactions / s.seconds if s.seconds else None,
                        None, Histogram.from_samples(T.read_crr_samples(samples,
                                                                        s.transactions)),
                        s.failed, None)


def _udp_rr(procs: Processes, work: SocketWorkload, path: SocketPath, cgroup: Path,
            tmp: Path) -> SocketResult:
    seconds = max(1, math.ceil(work.duration_s))  # sockperf takes whole seconds
    mode = ["ping-pong"] if work.loop == "closed" else [
        "under-load", "--reply-every", "1", "--mps", str(max(1, round(work.rate_tps / work.flows)))]  # type: ignore[operator]
    bind = ["--client_ip", path.client_ip] if path.client_ip else []
    clients = []
    dsts = path.destinations()
    for i in range(work.flows):
        log = tmp / f"sockperf-{i}.csv"
        ip, port = dsts[i % len(dsts)]
        argv = ["sockperf", *mode, "-i", ip, "-p", str(port),
                "-t", str(seconds), "-m", str(work.request_bytes), "--full-log", str(log),
                *bind]
        clients.append((procs.start("sockperf client", path.client_netns,
                                    _pinned(work, argv), cgroup), log))
    stats = [T.parse_sockperf(procs.finish(p, seconds + GRACE_S, "sockperf client"),
                              log.read_text()) for p, log in clients]
    rtt = Histogram()
    for s in stats:
        rtt.record(s.rtt_ns)
    received = sum(s.received for s in stats)
    tps = sum(s.received / s.seconds for s in stats if s.seconds)
    return SocketResult(work.workload, work.loop, work.flows, work.rate_tps,
                        float(np.mean([s.seconds for s in stats])), received, tps, None, rtt,
                        sum(s.dropped for s in stats), None)


def _stream(procs: Processes, work: SocketWorkload, path: SocketPath, cgroup: Path,
            tmp: Path) -> SocketResult:
    seconds = max(1, math.ceil(work.duration_s))
    bind = ["-B", path.client_ip] if path.client_ip else []
    argv = ["iperf3", "-c", path.dst_ip, "-p", str(path.dst_port), "-t", str(seconds),
            "-P", str(work.flows), "-J", *bind]
    p = procs.start("iperf3 client", path.client_netns, _pinned(work, argv), cgroup)
    try:
        s = T.parse_iperf3(procs.finish(p, seconds + GRACE_S, "iperf3 client"))
    except KpbenchError as e:
        if len(path.responders) == 1:
            raise
        # iperf3's control and data connections are separate: balanced to different
        # backends, the test never starts.
        raise KpbenchError(f"{e} (tcp-stream over {len(path.responders)} backends: iperf3 "
                           "needs all its connections on one backend; use a Service with "
                           "one endpoint or sessionAffinity ClientIP)") from None
    return SocketResult(work.workload, work.loop, work.flows, None, s.seconds, 0, None,
                        s.bits_per_second, Histogram(), 0, None)


_GENERATORS: dict[str, Callable[..., SocketResult]] = {
    "udp-rr": _udp_rr, "tcp-rr": _kpb_crr, "tcp-crr": _kpb_crr, "tcp-stream": _stream}
