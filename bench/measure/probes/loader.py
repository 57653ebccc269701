"""The shared probe loader: kernel facts from tracefs, compiling the BPF programs
in ``probes/`` with BCC (and keeping them for reuse), attaching tc programs in
run namespaces, and the :class:`Probe` life cycle every probe module builds on.

Every probe is used the same way::

    with LatencyProbe.for_cluster(cluster) as lat:   # compile + attach
        lat.start()                                  # open a measurement window
        ... replay traffic ...
        reading = lat.read()                         # counts since start()

tc programs attach as tcx links where the kernel has them (Linux >= 6.6: the
program runs straight from the device's hook, no clsact qdisc or cls_bpf
classifier in between), else as cls_bpf filters on a clsact qdisc; either way
in the order of their priorities (:data:`TC_PRIO`). ``KPBENCH_PROBE_TC=tcx`` or
``clsact`` forces one (an A/B of the hook's cost, docs/probes.md).

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
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pyroute2.netlink.exceptions import NetlinkError

from bench import interrupts
from bench.cluster.netlink import in_netns
from bench.cluster.topology import Cluster
from bench.errors import FeatureMissing, KpbenchError
from bench.kernel import minimal_probes
from bench.paths import PROBES_DIR

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
NETNS_DIR = Path("/run/netns")
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
# Fixed tc priorities (TC_PRIO + n, one per probe), so a probe's filter can be
# deleted from a clsact qdisc it did not create without touching other filters.
TC_PRIO = 0x4B50
TC_PRIO_FIRST = TC_PRIO - 1  # a filter that must see packets before every other probe's


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


def compile_probe(probe: str, cflags: Sequence[str] = ()) -> Any:
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
        # -I: the probes' shared header (kpb_identity.h) beside them.
        bpf = BPF(src_file=str(src).encode(), cflags=[*cflags, f"-I{PROBES_DIR}"])
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


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.h)"$', re.M)


def compiled_source(probe: str, cflags: Sequence[str]) -> str:
    """``probes/<probe>.c`` as the compiler gets it from the loader: its ``-D`` flags
    written as the ``#define`` lines they are equivalent to, ahead of the source, and
    each ``#include "x.h"`` of a header in ``probes/`` replaced by that header's text
    (the whole program in one text)."""
    defines = []
    for flag in cflags:
        if not flag.startswith("-D"):
            raise ValueError(f"not a -D flag: {flag}")
        name, _, value = flag[2:].partition("=")
        defines.append(f"#define {name} {value or 1}\n")
    source = (PROBES_DIR / f"{probe}.c").read_text()
    return "".join(defines) + _LOCAL_INCLUDE.sub(
        lambda m: (PROBES_DIR / m.group(1)).read_text().rstrip("\n"), source)


def release_compiled() -> None:
    """Unload every kept probe program (a run's end; safe to call twice)."""
    while _POOL:
        _, kept = _POOL.popitem()
        for bpf in kept:
            bpf.cleanup()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def percpu_sum(table: Any, index: int) -> int:
    """The sum over CPUs of entry ``index`` of a per-CPU array map."""
    return int(sum(table.getvalue(table.Key(index))))


def clear_live(table: Any) -> None:
    """Empty a hash map that an attached program keeps changing.

    BCC's own ``clear()`` deletes key by key and raises KeyError for an entry
    the program deleted between the listing and its deletion.
    """
    for k in list(table.keys()):
        with contextlib.suppress(KeyError):
            del table[k]


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
    link_fd: int | None = None  # a tcx link (closing it detaches); None: a clsact filter


TC_MODE_ENV = "KPBENCH_PROBE_TC"
TC_MODES = ("tcx", "clsact")
_tc_mode: str | None = None  # decided at the first attach, kept for the process


def tc_mode(netns: str | None = None) -> str | None:
    """How this process attaches tc programs: ``tcx`` or ``clsact`` (None: not decided
    yet and no ``netns`` given to find out in).

    ``KPBENCH_PROBE_TC`` decides if set; else ``tcx`` when the kernel attaches a
    trivial program as a tcx link in ``netns`` (a run namespace), ``clsact`` if not.
    """
    global _tc_mode
    if _tc_mode is None:
        forced = os.environ.get(TC_MODE_ENV, "")
        if forced and forced not in TC_MODES:
            raise KpbenchError(f"{TC_MODE_ENV}={forced}: not a way to attach tc programs; "
                               f"set it to {' or '.join(TC_MODES)}, or unset it")
        if forced:
            _tc_mode = forced
        elif netns is not None:
            _tc_mode = "tcx" if minimal_probes.tcx(netns)[0] else "clsact"
    return _tc_mode


# tcx links of this process per hook and direction, in the hooks' order: a link is
# placed before the first one of a higher priority, as clsact orders filters.
_TCX_LINKS: dict[tuple[TcHook, str], list[_TcAttachment]] = {}


def _tcx_attach(probe: str, hook: TcHook, fn: Any, parent: str, prio: int) -> _TcAttachment:
    links = _TCX_LINKS.setdefault((hook, parent), [])
    later = [a for a in links if a.prio > prio]
    before = min(later, key=lambda a: a.prio).link_fd if later else None

    def attach() -> int:
        return minimal_probes.tcx_link(fn.fd, socket.if_nametoindex(hook.ifname),
                                       ingress=parent == TC_INGRESS, before_link_fd=before)
    # A signal held until the link is registered: the helper thread would otherwise
    # finish making a link that no detach knows of.
    with interrupts.deferred():
        try:
            fd = minimal_probes.in_netns(hook.netns, attach)
        except OSError as e:
            raise FeatureMissing(f"{probe} probe: cannot attach {fn.name} to {hook.ifname} "
                                 f"in {hook.netns} as a tcx link: {e.strerror or e}") from e
        attachment = _TcAttachment(hook, parent, prio, link_fd=fd)
        links.append(attachment)
    return attachment


# clsact qdiscs a probe of this process created, with how many probe filters use
# each: the last probe to leave removes it; a clsact someone else made (a
# datapath) is never removed, only our filter on it.
_OUR_CLSACT: dict[TcHook, int] = {}


def _tc_attach(probe: str, hook: TcHook, fn: Any, parent: str, prio: int) -> _TcAttachment:
    if not (NETNS_DIR / hook.netns).exists():
        raise FeatureMissing(f"{probe} probe: namespace {hook.netns} does not exist")
    if tc_mode(hook.netns) == "tcx":
        return _tcx_attach(probe, hook, fn, parent, prio)
    # flags=0: never create a namespace that is not there.
    with in_netns(hook.netns) as ns:
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
    if a.link_fd is not None:  # a tcx link: closing it detaches, namespace or not
        links = _TCX_LINKS.get((a.hook, a.parent), [])
        if a in links:
            links.remove(a)
        os.close(a.link_fd)
        a.link_fd = None
        return
    last = False
    if a.hook in _OUR_CLSACT:
        _OUR_CLSACT[a.hook] -= 1
        last = _OUR_CLSACT[a.hook] <= 0
        if last:
            del _OUR_CLSACT[a.hook]
    if not (NETNS_DIR / a.hook.netns).exists():
        return  # the namespace, and the filter with it, is gone
    with in_netns(a.hook.netns) as ns:
        idx = ns.link_lookup(ifname=a.hook.ifname)
        if not idx:
            return
        # Already gone (e.g. the interface was re-created) is fine: detach is idempotent.
        with contextlib.suppress(NetlinkError):
            if last:
                ns.tc("del", "clsact", idx[0])
            else:
                ns.tc("del-filter", "bpf", idx[0], parent=a.parent, prio=a.prio)


def skb_offset_flags(probe: str) -> list[str]:
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
    # Programs of this probe that run outside every CPU figure a point reports: at the
    # client's tc egress, in the sender's own send, before the NET_RX softirq the cpu
    # probe times begins (and the sender is in no cgroup the cpu probe counts).
    outside_cpu_figure: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._bpf: Any = None
        self._tc: list[_TcAttachment] = []
        self._cgroups: list[tuple[int, Any]] = []  # (cgroup directory fd, program)
        self._window_start = 0.0

    @property
    def attached(self) -> bool:
        return self._bpf is not None

    def pass_through(self) -> None:
        """Leave every packet to the stack after the probe's hooks (before attaching):
        what the probes' overhead is measured with (bench.measure.overhead.paired_rounds),
        so the backends do the same work with and without the probe. A probe that drops
        or sinks what reaches the backends overrides this."""

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

    def cflags(self) -> list[str]:
        """The ``-D`` flags this probe compiles ``probes/<name>.c`` with (kernel facts
        read now); FeatureMissing if the kernel lacks what they describe."""
        return []

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
        while self._cgroups:
            from bcc import BPF, BPFAttachType

            fd, fn = self._cgroups.pop()
            with contextlib.suppress(Exception):  # the cgroup may be gone already
                BPF.detach_func(fn, fd, BPFAttachType.CGROUP_INET_INGRESS)
            os.close(fd)
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            if self.transient_maps is None:
                bpf.cleanup()
            else:
                _keep(bpf, self.transient_maps)

    def prog_fds(self) -> list[int]:
        """File descriptors of this probe's loaded BPF programs (attached or kept)."""
        return list(self.prog_fds_by_name().values())

    def prog_fds_by_name(self) -> dict[str, int]:
        """{program name: file descriptor} of this probe's loaded BPF programs."""
        self._require()
        return {(k.decode() if isinstance(k, bytes) else str(k)): f.fd
                for k, f in self._bpf.funcs.items()}

    def outside_prog_fds(self) -> list[int]:
        """File descriptors of the programs named in :attr:`outside_cpu_figure`."""
        return [fd for k, fd in self.prog_fds_by_name().items()
                if k in self.outside_cpu_figure]

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

    def _attach_cgroup_ingress(self, fn_name: str, group: Path) -> None:
        """Load ``fn_name`` as a cgroup_skb program and attach it at the ingress of the
        sockets of cgroup ``group`` (beside whatever else is attached there)."""
        from bcc import BPF, BPFAttachType

        fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fn = self._bpf.load_func(fn_name.encode(), BPF.CGROUP_SKB)
            BPF.attach_func(fn, fd, BPFAttachType.CGROUP_INET_INGRESS, 2)  # ALLOW_MULTI
        except Exception as e:  # BCC raises bare Exception
            os.close(fd)
            raise FeatureMissing(f"{self.name} probe: cannot attach {fn_name} to {group}: "
                                 f"{_first_line(e)}") from e
        self._cgroups.append((fd, fn))

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


def origin_hook(cluster: Cluster, external: bool) -> TcHook:
    """Where the traffic starts: the external client's namespace (NodePort) or the client
    pod's (ClusterIP)."""
    return TcHook(cluster.client_ns if external else cluster.client_pod_ns)
