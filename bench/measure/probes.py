"""The probe loader: compiles the BPF programs in ``probes/`` with BCC, attaches
them, reads their maps.

Every probe is used the same way::

    with LatencyProbe.for_cluster(cluster) as lat:   # compile + attach
        lat.start()                                  # open a measurement window
        ... replay traffic ...
        reading = lat.read()                         # counts since start()

A probe that cannot be compiled or attached raises
:class:`bench.errors.FeatureMissing` naming the probe, so the runner records
that measurement as missing rather than zero. ``detach()`` is idempotent and
tolerates namespaces that are already gone.

This host's kernel headers need not match the running kernel, so the
programs read only tracepoint arguments and ``__sk_buff`` / packet bytes,
never kernel structs; kernel enums (softirq vectors, drop reasons) are read
from the tracepoints' own format files.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import mmap
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
from pyroute2 import NetNS
from pyroute2.netlink.exceptions import NetlinkError

from bench.cluster import cgroups
from bench.cluster.topology import Cluster
from bench.errors import FeatureMissing
from bench.paths import PROBES_DIR

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
NETNS_DIR = Path("/run/netns")
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
# Fixed tc priorities (TC_PRIO + n, one per probe), so a probe's filter can be
# deleted from a clsact qdisc it did not create without touching other filters.
TC_PRIO = 0x4B50
TC_PRIO_FIRST = TC_PRIO - 1  # a filter that must see packets before every other probe's
LATENCY_CAPACITY = 1 << 21  # slots: one replay of traffic.MAX_COUNT packets fits
TRANSIT_SUB_BITS = 4  # must match KPB_SUB_BITS in transit.c
TRANSIT_BUCKETS = (62 - TRANSIT_SUB_BITS + 1) << TRANSIT_SUB_BITS  # as KPB_BUCKETS
TRANSIT_HOPS = ("pc->pod", "pc->ul0", "ul0->pod", "ul0->ul0")


# --- kernel facts from tracefs -------------------------------------------------

def tracepoint_format(category: str, event: str) -> str:
    """The text of a tracepoint's ``format`` file; FeatureMissing if it has none."""
    for base in TRACEFS_DIRS:
        f = base / "events" / category / event / "format"
        if f.exists():
            return f.read_text()
    raise FeatureMissing(f"tracepoint {category}:{event} not found under "
                         f"{' or '.join(map(str, TRACEFS_DIRS))} (is tracefs mounted?)")


def print_symbolic(category: str, event: str, field_name: str) -> dict[int, str]:
    """The value -> name table the kernel prints for ``field_name`` of a tracepoint.

    Parsed from the ``__print_symbolic(REC->field, { 3, "NET_RX" }, ...)`` of
    its format file, so the table is the running kernel's own.
    """
    fmt = tracepoint_format(category, event)
    m = re.search(r"__print_symbolic\(REC->" + re.escape(field_name) + r"\s*,(.*?)\)\s*(,|$)",
                  fmt, re.DOTALL)
    if not m:
        raise FeatureMissing(f"{category}:{event} prints no symbolic names for {field_name}")
    pairs = re.findall(r"\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*\"([^\"]*)\"\s*\}", m.group(1))
    if not pairs:
        raise FeatureMissing(f"{category}:{event}: cannot parse the names of {field_name}")
    return {int(v, 0): name for v, name in pairs}


def tracepoint_field(category: str, event: str, field_name: str) -> tuple[int, int] | None:
    """(offset, size) of a field in a tracepoint's record, or None if it has no such field."""
    fmt = tracepoint_format(category, event)
    m = re.search(r"field:[^;]*\b" + re.escape(field_name) + r";\s*offset:(\d+);\s*size:(\d+);",
                  fmt)
    return (int(m.group(1)), int(m.group(2))) if m else None


# --- compile and attach --------------------------------------------------------

# Compiling a probe costs 0.2-0.8 s on this machine and 10-30 s under TCG in a VM,
# and a run attaches its probes several times at every point. A reusable probe's
# program is therefore kept, detached from every event, when the probe detaches,
# and handed to the next attach of the same source and flags; the run unloads
# them at its end with release_compiled().
_POOL: dict[tuple[str, tuple[str, ...]], list[Any]] = {}


def _compile(probe: str, cflags: Sequence[str] = ()) -> Any:
    """BCC-compile ``probes/<probe>.c`` (tracepoint programs attach here too).

    A program kept by :func:`_keep` with the same source and flags is reused:
    its auto-attached tracepoints are attached again.
    """
    key = (probe, tuple(cflags))
    if _POOL.get(key):
        bpf = _POOL[key].pop()
        try:
            for tp in bpf.kpb_auto_tracepoints:
                bpf.attach_tracepoint(tp=tp, fn_name=b"tracepoint__" + tp.replace(b":", b"__"))
            for tp in bpf.kpb_auto_raw_tracepoints:
                bpf.attach_raw_tracepoint(tp=tp, fn_name=b"raw_tracepoint__" + tp)
        except Exception as e:  # BCC raises bare Exception
            bpf.cleanup()
            raise FeatureMissing(f"{probe} probe: cannot attach {probe}.c again: "
                                 f"{_first_line(e)}") from e
        return bpf
    try:
        from bcc import BPF
    except ImportError as e:
        raise FeatureMissing(f"{probe} probe: cannot import bcc ({e}); run scripts/setup.sh")
    src = PROBES_DIR / f"{probe}.c"
    try:
        bpf = BPF(src_file=str(src).encode(), cflags=list(cflags))
    except Exception as e:
        raise FeatureMissing(f"{probe} probe: cannot compile or attach {src.name}: "
                             f"{_first_line(e)}") from e
    bpf.kpb_key = key
    bpf.kpb_auto_tracepoints = list(bpf.tracepoint_fds)  # TRACEPOINT_PROBE()s
    bpf.kpb_auto_raw_tracepoints = list(bpf.raw_tracepoint_fds)  # RAW_TRACEPOINT_PROBE()s
    return bpf


def _keep(bpf: Any, transient_maps: Sequence[str]) -> None:
    """Detach ``bpf`` from every event, empty ``transient_maps``, keep it for reuse."""
    try:
        for tp in list(bpf.tracepoint_fds):
            bpf.detach_tracepoint(tp)
        for tp in list(bpf.raw_tracepoint_fds):
            bpf.detach_raw_tracepoint(tp)
        if bpf.kprobe_fds or bpf.kfunc_entry_fds:
            raise RuntimeError("only tracepoint, raw tracepoint and tc programs are kept")
        for name in transient_maps:  # state of the last window (an entry stamp, say)
            bpf[name.encode()].clear()
    except BaseException:
        bpf.cleanup()
        raise
    _POOL.setdefault(bpf.kpb_key, []).append(bpf)


def release_compiled() -> None:
    """Unload every kept probe program (a run's end; safe to call twice)."""
    while _POOL:
        _, kept = _POOL.popitem()
        for bpf in kept:
            bpf.cleanup()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _percpu_sum(table: Any, index: int) -> int:
    return int(sum(table.getvalue(table.Key(index))))


@dataclass(frozen=True)
class TcHook:
    """An interface in a run namespace where a tc program attaches."""

    netns: str
    ifname: str = "eth0"


@dataclass
class _TcAttachment:
    hook: TcHook
    parent: str
    prio: int


# clsact qdiscs a probe of this process created, with how many probe filters use
# each: the last probe to leave removes it; a clsact someone else made (a
# datapath) is never removed, only our filter on it.
_OUR_CLSACT: dict[TcHook, int] = {}


def _tc_attach(probe: str, hook: TcHook, fn: Any, parent: str, prio: int) -> _TcAttachment:
    if not (NETNS_DIR / hook.netns).exists():
        raise FeatureMissing(f"{probe} probe: namespace {hook.netns} does not exist")
    # flags=0: never create a namespace that is not there.
    with NetNS(hook.netns, flags=0) as ns:
        idx = ns.link_lookup(ifname=hook.ifname)
        if not idx:
            raise FeatureMissing(f"{probe} probe: no {hook.ifname} in {hook.netns}")
        try:
            ns.tc("add", "clsact", idx[0])
            _OUR_CLSACT[hook] = 0
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise FeatureMissing(f"{probe} probe: tc clsact on {hook.ifname} in "
                                     f"{hook.netns}: {e}") from e
        if hook in _OUR_CLSACT:
            _OUR_CLSACT[hook] += 1
        attachment = _TcAttachment(hook, parent, prio)
        try:
            ns.tc("add-filter", "bpf", idx[0], ":1", fd=fn.fd, name=fn.name, parent=parent,
                  classid=1, direct_action=True, prio=prio)
        except NetlinkError as e:
            _tc_detach(attachment)
            raise FeatureMissing(f"{probe} probe: cannot attach {fn.name} to {hook.ifname} "
                                 f"in {hook.netns}: {e}") from e
    return attachment


def _tc_detach(a: _TcAttachment) -> None:
    last = False
    if a.hook in _OUR_CLSACT:
        _OUR_CLSACT[a.hook] -= 1
        last = _OUR_CLSACT[a.hook] <= 0
        if last:
            del _OUR_CLSACT[a.hook]
    if not (NETNS_DIR / a.hook.netns).exists():
        return  # the namespace, and the filter with it, is gone
    with NetNS(a.hook.netns, flags=0) as ns:
        idx = ns.link_lookup(ifname=a.hook.ifname)
        if not idx:
            return
        # Already gone (e.g. the interface was re-created) is fine: detach is idempotent.
        with contextlib.suppress(NetlinkError):
            if last:
                ns.tc("del", "clsact", idx[0])
            else:
                ns.tc("del-filter", "bpf", idx[0], parent=a.parent, prio=a.prio)


def _skb_offsets(probe: str) -> list[str]:
    """cflags with the skbaddr offsets of skb:kfree_skb and skb:consume_skb."""
    flags = []
    for event in ("kfree_skb", "consume_skb"):
        f = tracepoint_field("skb", event, "skbaddr")
        if f is None or f[1] != 8:
            raise FeatureMissing(f"{probe} probe: skb:{event} has no 8-byte skbaddr field")
        flags.append(f"-DKPB_OFF_{event.split('_')[0].upper()}_SKBADDR={f[0]}")
    return flags


class Probe:
    """Common life cycle: attach (compile + attach) / detach, start a window, read."""

    name = "probe"
    tc_prio = TC_PRIO  # each probe's tc filters get their own priority
    # Maps holding state that must not outlive a window (besides what _zero()
    # clears); None: the program is unloaded on detach, not kept for reuse.
    transient_maps: tuple[str, ...] | None = None

    def __init__(self) -> None:
        self._bpf: Any = None
        self._tc: list[_TcAttachment] = []
        self._window_start = 0.0

    @property
    def attached(self) -> bool:
        return self._bpf is not None

    def attach(self) -> None:
        """Compile and attach; raises FeatureMissing (naming the probe) if it cannot.

        A failure part-way removes whatever was attached before it.
        """
        if self.attached:
            return
        try:
            self._attach()
        except BaseException as e:
            self.detach()
            if isinstance(e, FeatureMissing) and not str(e).startswith(f"{self.name} probe:"):
                raise FeatureMissing(f"{self.name} probe: {e}") from e
            raise

    def _attach(self) -> None:
        raise NotImplementedError

    def _attach_guarded(self, steps: Callable[[], None]) -> None:
        """Run ``steps()``; on failure remove what was attached, then re-raise.

        For subclasses that override :meth:`attach` itself (``attach`` already
        does this around ``_attach``).
        """
        try:
            steps()
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Remove every program and map of this probe; safe to call twice."""
        while self._tc:
            _tc_detach(self._tc.pop())
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            if self.transient_maps is None:
                bpf.cleanup()
            else:
                _keep(bpf, self.transient_maps)

    def start(self) -> None:
        """Zero the counters: a measurement window opens now."""
        self._require()
        self._zero()
        self._window_start = time.monotonic()

    def _zero(self) -> None:
        raise NotImplementedError

    def _window(self) -> float:
        return time.monotonic() - self._window_start

    def _require(self) -> None:
        if self._bpf is None:
            raise RuntimeError(f"{self.name} probe is not attached")

    def _attach_tc(self, fn_name: str, hooks: Sequence[TcHook], parent: str,
                   prio: int | None = None) -> None:
        """Load ``fn_name`` as a tc program and attach it to every hook (at ``prio``,
        default this probe's own)."""
        from bcc import BPF

        try:
            fn = self._bpf.load_func(fn_name.encode(), BPF.SCHED_CLS)
        except Exception as e:  # BCC raises bare Exception
            raise FeatureMissing(f"{self.name} probe: cannot load {fn_name}: "
                                 f"{_first_line(e)}") from e
        for hook in hooks:
            self._tc.append(_tc_attach(self.name, hook, fn, parent,
                                       self.tc_prio if prio is None else prio))

    def _attach_tracepoint(self, tp: str, fn_name: str) -> None:
        try:
            self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn_name.encode())
        except Exception as e:  # BCC raises bare Exception
            raise FeatureMissing(f"{self.name} probe: cannot attach to {tp}: "
                                 f"{_first_line(e)}") from e

    def __enter__(self) -> Self:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


# --- latency -------------------------------------------------------------------

@dataclass(frozen=True)
class LatencyReading:
    """One-way latencies of the packets stamped at both ends, in sequence order."""

    seqs: np.ndarray  # sequence numbers (uint32) seen at both ends
    latency_ns: np.ndarray  # int64, arrival - departure, same order as seqs
    sent_seen: int  # identified packets at the client's egress (in range or not)
    delivered_seen: int  # identified packets at a backend's ingress
    departed: int  # slots stamped at departure
    lost: int  # departed but never arrived
    out_of_range: int  # identified packets whose sequence number had no slot
    duplicates: int  # stamps that overwrote an earlier one
    seconds: float  # window length
    arrival_ns: np.ndarray | None = None  # arrival stamps (uint64), same order as seqs
    copied: int = 0  # packets parsed by the slow path (headers outside the linear data)

    def percentiles(self, qs: Sequence[float] = (50, 90, 99, 99.9)) -> dict[float, float]:
        """Percentiles (ns) over the merged per-packet samples (empty: NaN)."""
        if not len(self.latency_ns):
            return {q: float("nan") for q in qs}
        return {q: float(v) for q, v in zip(qs, np.percentile(self.latency_ns, qs), strict=True)}


class LatencyProbe(Probe):
    """Per-packet one-way latency (probes/latency.c): client egress -> backend ingress."""

    name = "latency"
    tc_prio = TC_PRIO
    transient_maps = ()  # stamps and counts are zeroed at start(), config set there

    def __init__(self, client: TcHook, backends: Sequence[TcHook],
                 capacity: int = LATENCY_CAPACITY, drop: bool = True) -> None:
        """``drop``: backends drop identified packets at ingress (no responder noise)."""
        super().__init__()
        if not 1 <= capacity <= 1 << 24:
            raise ValueError(f"capacity {capacity} out of range (1-{1 << 24})")
        if not backends:
            raise ValueError("the latency probe needs at least one backend hook")
        self.client = client
        self.backends = list(backends)
        self.capacity = capacity
        self.drop = drop
        self._maps: list[mmap.mmap] = []
        self._depart: np.ndarray | None = None
        self._arrive: np.ndarray | None = None
        self._seq_base = 0

    @classmethod
    def for_cluster(cls, cluster: Cluster, external: bool = False,
                    capacity: int = LATENCY_CAPACITY, drop: bool = True) -> LatencyProbe:
        """Client pod (or the external client) egress -> every backend pod's ingress."""
        pods = [TcHook(cluster.pod_ns(p)) for p in cluster.layout.pods]
        return cls(_origin(cluster, external), pods, capacity, drop)

    def _attach(self) -> None:
        self._bpf = _compile(self.name, [f"-DKPB_CAPACITY={self.capacity}",
                                         f"-DKPB_DROP={int(self.drop)}"])
        self._depart = self._mmap("depart_ns")
        self._arrive = self._mmap("arrive_ns")
        self._attach_tc("kpb_depart", [self.client], TC_EGRESS)
        self._attach_tc("kpb_arrive", self.backends, TC_INGRESS)

    def _mmap(self, name: str) -> np.ndarray:
        # Array maps made with BPF_F_MMAPABLE map straight into our memory: a
        # million stamps are one copy, not a million syscalls.
        table = self._bpf[name.encode()]
        size = -(-self.capacity * 8 // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            mm = mmap.mmap(table.map_fd, size, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise FeatureMissing(f"{self.name} probe: cannot mmap the {name} map "
                                 f"(BPF_F_MMAPABLE needs Linux 5.5): {e}") from e
        self._maps.append(mm)
        return np.frombuffer(mm, dtype=np.uint64, count=self.capacity)

    def detach(self) -> None:
        # numpy views must go before the mmaps they export can close.
        self._depart = self._arrive = None
        while self._maps:
            self._maps.pop().close()
        super().detach()

    def start(self, seq_base: int = 0) -> None:
        """Open a window for sequence numbers ``seq_base`` .. ``seq_base + capacity - 1``."""
        self._require()
        config = self._bpf[b"config"]
        config[config.Key(0)] = config.Leaf(seq_base)
        self._seq_base = seq_base
        super().start()

    def _zero(self) -> None:
        assert self._depart is not None and self._arrive is not None
        self._depart[:] = 0
        self._arrive[:] = 0
        self._bpf[b"counts"].clear()

    def read(self) -> LatencyReading:
        """Latencies and counts of the packets seen since :meth:`start`."""
        self._require()
        assert self._depart is not None and self._arrive is not None
        counts = self._bpf[b"counts"]
        depart, arrive = self._depart.copy(), self._arrive.copy()
        both = np.flatnonzero((depart != 0) & (arrive != 0))
        departed = int(np.count_nonzero(depart))
        return LatencyReading(
            seqs=(both + self._seq_base).astype(np.uint32),
            latency_ns=arrive[both].astype(np.int64) - depart[both].astype(np.int64),
            sent_seen=_percpu_sum(counts, 0), delivered_seen=_percpu_sum(counts, 1),
            departed=departed, lost=departed - len(both),
            out_of_range=_percpu_sum(counts, 2), duplicates=_percpu_sum(counts, 3),
            seconds=self._window(), arrival_ns=arrive[both],
            copied=_percpu_sum(counts, 4))


def _origin(cluster: Cluster, external: bool) -> TcHook:
    return TcHook(cluster.client_ns if external else cluster.client_pod_ns)


# --- cpu -----------------------------------------------------------------------

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

    def __init__(self, group: Path | None = None) -> None:
        """``group``: the run cgroup of the datapath's processes (None: it has none)."""
        super().__init__()
        self.group = group
        self.net_rx_vector: int | None = None  # read from the kernel on attach
        self._group_start_ns = 0
        self._subtract_net_rx = False

    def _attach(self) -> None:
        vectors = {v: k for k, v in print_symbolic("irq", "softirq_entry", "vec").items()}
        if "NET_RX" not in vectors:
            raise FeatureMissing(f"{self.name} probe: irq:softirq_entry names no NET_RX vector")
        self.net_rx_vector = vectors["NET_RX"]
        if self.group is not None:
            self._subtract_net_rx = irq_time_in_task_time()
            cgroups.cpu_usage_ns(self.group)  # readable, or FeatureMissing now
        self._bpf = _compile(self.name, [f"-DKPB_NET_RX={self.net_rx_vector}"])

    def _zero(self) -> None:
        self._bpf[b"stats"].clear()
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
        in_group = _percpu_sum(stats, 2)
        process = 0
        if self.group is not None:
            used = cgroups.cpu_usage_ns(self.group) - self._group_start_ns
            # usage_usec is rounded to the microsecond: never below zero.
            process = max(used - (in_group if self._subtract_net_rx else 0), 0)
        return CpuReading(sum(per_cpu), _percpu_sum(stats, 1), per_cpu, self._window(),
                          process_ns=process, group_net_rx_ns=in_group)


# --- drops ---------------------------------------------------------------------

@dataclass(frozen=True)
class DropsReading:
    """skb drops by the kernel's own reason names."""

    by_reason: dict[str, int]  # machine-wide, every protocol
    ipv4_by_reason: dict[str, int]  # machine-wide, IPv4
    # Packets sent from the origin hook, dropped before a backend hook (with backend
    # hooks: the datapath's drops only); None: no origin.
    run_by_reason: dict[str, int] | None
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


class DropsProbe(Probe):
    """Dropped skbs by reason (probes/drops.c).

    With ``origin`` (the client's egress hook), drops of the skbs the client
    sent are also counted apart, so other traffic on the machine cannot blur them.
    """

    name = "drops"
    tc_prio = TC_PRIO + 1
    transient_maps = ()

    def __init__(self, origin: TcHook | None = None,
                 backends: Sequence[TcHook] = (), process_group: Path | None = None) -> None:
        """``backends``: where the run's packets end their crossing of the datapath
        (the backend pods' ingress); a run's packet that reaches one is no longer
        counted, whatever happens to it there (needs ``origin``). ``process_group``:
        the cgroup of the datapath's own processes (a userspace proxy), whose
        sockets are such an end too."""
        super().__init__()
        if (backends or process_group) and origin is None:
            raise ValueError("backend hooks need an origin hook (they forget tagged skbs)")
        self.origin = origin
        self.backends = list(backends)
        self.process_group = process_group
        self.reasons: dict[int, str] = {}  # the kernel's names, read on attach
        self._cgroup_attached: tuple[int, Any] | None = None  # (directory fd, program)

    @classmethod
    def for_cluster(cls, cluster: Cluster, external: bool = False,
                    process_group: Path | None = None) -> DropsProbe:
        """The datapath's drops of the run's own packets (sent by the client pod or the
        external client, not yet at a backend pod or the datapath's own processes),
        with machine-wide counts beside."""
        pods = [TcHook(cluster.pod_ns(p)) for p in cluster.layout.pods]
        return cls(_origin(cluster, external), pods, process_group)

    def _attach(self) -> None:
        reason = tracepoint_field("skb", "kfree_skb", "reason")
        protocol = tracepoint_field("skb", "kfree_skb", "protocol")
        if reason is None:
            raise FeatureMissing(f"{self.name} probe: skb:kfree_skb has no reason field "
                                 "(kernel older than 5.17)")
        if reason[1] != 4 or protocol is None or protocol[1] != 2:
            raise FeatureMissing(f"{self.name} probe: skb:kfree_skb has an unexpected layout "
                                 f"(reason {reason}, protocol {protocol})")
        self.reasons = print_symbolic("skb", "kfree_skb", "reason")
        tagged = self.origin is not None
        self._bpf = _compile(self.name, [f"-DKPB_OFF_REASON={reason[0]}",
                                         f"-DKPB_OFF_PROTOCOL={protocol[0]}",
                                         f"-DKPB_TAGGED={int(tagged)}", *_skb_offsets(self.name)])
        self._attach_tracepoint("skb:kfree_skb", "kpb_kfree_skb")
        if self.origin is not None:
            self._attach_tracepoint("skb:consume_skb", "kpb_consume_skb")
            self._attach_tc("kpb_tag", [self.origin], TC_EGRESS)
        if self.backends:
            # Ahead of every probe filter there (the latency probe's drop comes after).
            self._attach_tc("kpb_delivered", self.backends, TC_INGRESS, prio=TC_PRIO_FIRST)
        if self.process_group is not None:
            self._attach_cgroup_ingress("kpb_delivered_cg", self.process_group)

    def _attach_cgroup_ingress(self, fn_name: str, group: Path) -> None:
        from bcc import BPF, BPFAttachType

        fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fn = self._bpf.load_func(fn_name.encode(), BPF.CGROUP_SKB)
            # BPF_F_ALLOW_MULTI: beside whatever else is attached there.
            BPF.attach_func(fn, fd, BPFAttachType.CGROUP_INET_INGRESS, 2)
        except Exception as e:  # BCC raises bare Exception
            os.close(fd)
            raise FeatureMissing(f"{self.name} probe: cannot attach {fn_name} to {group}: "
                                 f"{_first_line(e)}") from e
        self._cgroup_attached = (fd, fn)

    def detach(self) -> None:
        if self._cgroup_attached is not None:
            from bcc import BPF, BPFAttachType

            fd, fn = self._cgroup_attached
            self._cgroup_attached = None
            with contextlib.suppress(Exception):  # the cgroup may be gone already
                BPF.detach_func(fn, fd, BPFAttachType.CGROUP_INET_INGRESS)
            os.close(fd)
        super().detach()

    def _zero(self) -> None:
        for name in (b"drops", b"drops_ip", b"drops_run"):
            self._bpf[name].clear()

    def reason_name(self, value: int) -> str:
        """The kernel's name of drop reason ``value`` (``reason-<n>`` if it prints none)."""
        return self.reasons.get(value, f"reason-{value}")

    def read(self) -> DropsReading:
        """Drops by reason since :meth:`start`."""
        self._require()

        def named(table: str) -> dict[str, int]:
            return {self.reason_name(k.value): int(v.value)
                    for k, v in self._bpf[table.encode()].items()}

        return DropsReading(named("drops"), named("drops_ip"),
                            named("drops_run") if self.origin is not None else None,
                            self._window())


# --- transit -------------------------------------------------------------------

def transit_bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) ns of every transit histogram bucket (upper exclusive)."""
    b = np.arange(TRANSIT_BUCKETS, dtype=np.int64)
    sub = 1 << TRANSIT_SUB_BITS
    exp = b >> TRANSIT_SUB_BITS
    lower = np.where(b < sub, b, (sub + (b & (sub - 1))) << np.maximum(exp - 1, 0))
    width = np.where(b < sub, 1, np.int64(1) << np.maximum(exp - 1, 0))
    return lower, lower + width


@dataclass(frozen=True)
class TransitReading:
    """Node transit times as a histogram, plus counts per hop pair."""

    hist: np.ndarray  # counts per bucket, see transit_bucket_bounds()
    by_hops: dict[str, int]  # "pc->pod", "pc->ul0", "ul0->pod", "ul0->ul0"
    stale: int  # matches older than the probe's limit, not counted as samples
    rx_seen: int  # packets received on a node's inbound hop
    seconds: float
    _bounds: tuple[np.ndarray, np.ndarray] = field(default_factory=transit_bucket_bounds,
                                                   repr=False)

    @property
    def count(self) -> int:
        return int(self.hist.sum())

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in ns (bucket midpoint; within 3.2 %), NaN if empty."""
        total = self.count
        if not total:
            return float("nan")
        rank = q / 100 * total
        i = int(np.searchsorted(np.cumsum(self.hist), max(rank, 1), side="left"))
        lower, upper = self._bounds
        return float(lower[i] + upper[i] - 1) / 2


class TransitProbe(Probe):
    """Node transit time, inbound hop -> outbound hop of the same skb (probes/transit.c).

    With ``origin`` (the client's egress hook) only the skbs the client sent
    count; without it, every packet through any kpbench node on the machine.
    """

    name = "transit"
    tc_prio = TC_PRIO + 2
    transient_maps = ("inflight",)  # skbs of the last window

    def __init__(self, origin: TcHook | None = None, max_ns: int = 1_000_000_000) -> None:
        """``max_ns``: longer matches count as stale (an untracked skb's address reused)."""
        super().__init__()
        self.origin = origin
        self.max_ns = max_ns

    @classmethod
    def for_cluster(cls, cluster: Cluster, external: bool = False) -> TransitProbe:
        """Transit of the packets the client pod (or the external client) sends."""
        return cls(_origin(cluster, external))

    def _attach(self) -> None:
        for event in ("netif_receive_skb", "net_dev_start_xmit"):
            if tracepoint_field("net", event, "name") is None:
                raise FeatureMissing(f"{self.name} probe: net:{event} has no device name")
        tagged = self.origin is not None
        self._bpf = _compile(self.name, [f"-DKPB_MAX_NS={self.max_ns}ULL",
                                         f"-DKPB_TAGGED={int(tagged)}",
                                         *(_skb_offsets(self.name) if tagged else ())])
        if self.origin is not None:
            self._attach_tracepoint("skb:kfree_skb", "kpb_kfree_skb")
            self._attach_tracepoint("skb:consume_skb", "kpb_consume_skb")
            self._attach_tc("kpb_tag", [self.origin], TC_EGRESS)

    def _zero(self) -> None:
        for name in (b"hist", b"counts"):
            self._bpf[name].clear()
        if self.origin is None:
            # Tagged entries belong to live skbs; untagged ones may be stale.
            self._bpf[b"inflight"].clear()

    def read(self) -> TransitReading:
        """Transit histogram and counts since :meth:`start`."""
        self._require()
        hist_t, counts = self._bpf[b"hist"], self._bpf[b"counts"]
        hist = np.zeros(TRANSIT_BUCKETS, dtype=np.int64)
        for k, v in hist_t.items():
            hist[k.value] = sum(v)
        return TransitReading(
            hist=hist, by_hops={h: _percpu_sum(counts, i) for i, h in enumerate(TRANSIT_HOPS)},
            stale=_percpu_sum(counts, 4), rx_seen=_percpu_sum(counts, 5),
            seconds=self._window())


PROBES: dict[str, type[Probe]] = {
    "latency": LatencyProbe, "cpu": CpuProbe, "drops": DropsProbe, "transit": TransitProbe,
}
