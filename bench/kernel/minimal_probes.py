"""Minimal kernel-only probes: does the kernel itself have a feature?

``bench.kernel.features`` first tries each feature the way kpbench uses it (the
tools, BCC, our own BPF programs). When that fails, the probe here decides
whose fault it is: it asks the kernel directly, with no tool, no BCC, no
clang and none of our programs — a netfilter table or extension looked up
with ``getsockopt``, a netlink family resolved, or a two-instruction BPF
program (``r0 = verdict; exit``) loaded with the ``bpf()`` syscall and
attached the way the datapath attaches its own. Only when this probe fails
too is the feature *missing* from the kernel; otherwise our code or a tool is
broken, and that is a failure, never a skip.

Each probe returns ``(ok, detail)``; ``detail`` says what the kernel answered.
Namespace probes run in a throwaway run namespace (a thread of ours enters
it), so the host's own network state is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Probe = Callable[[str], tuple[bool, str]]

_libc = ctypes.CDLL(None, use_errno=True)
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)

# uapi/linux/bpf.h
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH, BPF_RAW_TRACEPOINT_OPEN = 5, 8, 9, 17
BPF_PROG_QUERY, BPF_LINK_CREATE = 16, 28
ATTACH_TCX_INGRESS, ATTACH_TCX_EGRESS = 46, 47  # Linux >= 6.6
BPF_F_BEFORE, BPF_F_LINK = 1 << 3, 1 << 13  # a multi-program hook's order, by a link fd
TC_ACT_UNSPEC = -1  # tcx: the next program, then the legacy tc hook, run
PROG_KPROBE, PROG_SCHED_CLS, PROG_XDP, PROG_CGROUP_SOCK_ADDR, PROG_TRACING = 2, 3, 6, 18, 26
ATTACH_CGROUP_INET4_CONNECT, ATTACH_TRACE_FENTRY = 10, 24
TC_ACT_OK, XDP_PASS = 0, 2
# uapi/linux/netfilter_ipv4/ip_tables.h
IPT_SO_GET_INFO, IPT_SO_GET_REVISION_MATCH, IPT_SO_GET_REVISION_TARGET = 64, 66, 67


class _ProgLoad(ctypes.Structure):
    """The BPF_PROG_LOAD part of ``union bpf_attr`` (zero tail: newer fields unused)."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16),
                ("prog_ifindex", ctypes.c_uint32), ("expected_attach_type", ctypes.c_uint32),
                ("prog_btf_fd", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("func_info_cnt", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("line_info_cnt", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("_tail", ctypes.c_uint8 * 24)]


def bpf_syscall(cmd: int, attr: Any) -> int:
    """The bpf(2) system call with ``attr``; OSError with the errno on failure."""
    ret = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(ret)


def trivial_prog(prog_type: int, verdict: int, expected_attach_type: int = 0,
                 attach_btf_id: int = 0) -> int:
    """Load ``r0 = verdict; exit`` as ``prog_type``; returns its fd. OSError (with the
    verifier's log, if any) when the kernel refuses it."""
    insns = ctypes.create_string_buffer(struct.pack("<BBhi", 0xB7, 0, 0, verdict)  # mov r0, imm
                                        + struct.pack("<BBhi", 0x95, 0, 0, 0))  # exit
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = _ProgLoad(prog_type=prog_type, insn_cnt=2, insns=ctypes.addressof(insns),
                     license=ctypes.addressof(license_), log_level=1, log_size=len(log),
                     log_buf=ctypes.addressof(log), prog_name=b"kpb_kernel",
                     expected_attach_type=expected_attach_type, attach_btf_id=attach_btf_id)
    try:
        return bpf_syscall(BPF_PROG_LOAD, attr)
    except OSError as e:
        text = log.value.decode(errors="replace").strip()
        raise OSError(e.errno, f"{e.strerror}{': ' + text if text else ''}") from None


def _refused(what: str, e: OSError) -> tuple[bool, str]:
    code = errno.errorcode.get(e.errno or 0, e.errno)
    return False, f"the kernel refuses {what}: {e.strerror} ({code})"


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread of ours that entered namespace ``ns`` (this thread stays put)."""
    from pyroute2 import netns as _netns

    out: dict[str, Any] = {}

    def body() -> None:
        try:
            _netns.setns(ns, flags=0)
            out["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e

    t = threading.Thread(target=body, name=f"kernel-probe-{ns}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


# --- netfilter ---------------------------------------------------------------------

def _ipt_getsockopt(opt: int, payload: bytes, size: int) -> None:
    """getsockopt on a raw IPv4 socket with ``payload`` as input (the table or extension)."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        buf = ctypes.create_string_buffer(payload.ljust(size, b"\0"), size)
        length = ctypes.c_uint32(size)
        if _libc.getsockopt(s.fileno(), socket.IPPROTO_IP, opt, buf, ctypes.byref(length)) < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))


def iptables_legacy(ns: str, targets: tuple[str, ...] = (),
                    matches: tuple[str, ...] = ()) -> tuple[bool, str]:
    """x_tables' nat table (and named extensions) answer a getsockopt in ``ns``."""
    def probe() -> tuple[bool, str]:
        try:
            _ipt_getsockopt(IPT_SO_GET_INFO, b"nat", 84)  # struct ipt_getinfo
        except OSError as e:
            return _refused("the legacy iptables nat table (ip_tables, iptable_nat)", e)
        for opt, names in ((IPT_SO_GET_REVISION_TARGET, targets),
                           (IPT_SO_GET_REVISION_MATCH, matches)):
            for name in names:
                try:  # struct xt_get_revision: name[29], revision
                    _ipt_getsockopt(opt, name.encode(), 30)
                except OSError as e:
                    return _refused(f"the iptables extension {name}", e)
        return True, "ip_tables nat table" + "".join(f", {n}" for n in targets + matches)
    return in_netns(ns, probe)


def _netlink(ns: str, what: str, request: Callable[[], object]) -> tuple[bool, str]:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        in_netns(ns, request)
    except NetlinkError as e:
        return False, f"the kernel has no {what} (netlink: {os.strerror(e.code)})"
    except OSError as e:
        return _refused(what, e)
    return True, f"{what} answers over netlink"


def nf_tables(ns: str) -> tuple[bool, str]:
    """The nf_tables netlink subsystem lists tables in ``ns``."""
    from pyroute2.nftables.main import NFTables

    def request() -> object:
        with NFTables() as nft:
            return nft.get_tables()
    return _netlink(ns, "nf_tables", request)


def ipset(ns: str) -> tuple[bool, str]:
    """The ip_set netlink subsystem tells its protocol version in ``ns``."""
    from pyroute2 import IPSet

    def request() -> object:
        with IPSet() as s:
            return s.get_proto_version()
    return _netlink(ns, "ip_set", request)


def ipvs(ns: str) -> tuple[bool, str]:
    """The IPVS generic netlink family exists (after asking modprobe for ip_vs)."""
    from pyroute2 import GenericNetlinkSocket

    modprobe = "modprobe not installed"
    with contextlib.suppress(FileNotFoundError, subprocess.TimeoutExpired):
        p = subprocess.run(["modprobe", "ip_vs"], capture_output=True, text=True, timeout=30)
        modprobe = (p.stderr.strip().splitlines() or ["ok"])[-1] if p.returncode else "loaded"

    def request() -> object:
        with GenericNetlinkSocket() as g:
            return g.discovery("IPVS")
    ok, detail = _netlink(ns, "IPVS generic netlink family", request)
    return ok, detail if ok else f"{detail}; modprobe ip_vs: {modprobe}"


# --- BPF ---------------------------------------------------------------------------

_VETH = ("kpbk0", "kpbk1")


def _with_veth(ns: str, fn: Callable[[Any, int], tuple[bool, str]]) -> tuple[bool, str]:
    """``fn(ipr, ifindex)`` on a veth made for the probe in ``ns`` (deleted after)."""
    from pyroute2 import NetNS
    from pyroute2.netlink.exceptions import NetlinkError

    with NetNS(ns, flags=0) as ipr:
        try:
            ipr.link("add", ifname=_VETH[0], kind="veth", peer=_VETH[1])
        except NetlinkError as e:
            return False, f"the kernel cannot make a veth pair: {os.strerror(e.code)}"
        try:
            idx = ipr.link_lookup(ifname=_VETH[0])[0]
            ipr.link("set", index=idx, state="up")
            return fn(ipr, idx)
        finally:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", ifname=_VETH[0])


def tc_bpf(ns: str) -> tuple[bool, str]:
    """A trivial SCHED_CLS program loads and attaches at tc clsact ingress (direct action)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        fd = trivial_prog(PROG_SCHED_CLS, TC_ACT_OK)
    except OSError as e:
        return _refused("a trivial tc (SCHED_CLS) program", e)

    def attach(ipr: Any, idx: int) -> tuple[bool, str]:
        try:
            ipr.tc("add", "clsact", idx)
            ipr.tc("add-filter", "bpf", idx, ":1", fd=fd, name="kpb_kernel",
                   parent="ffff:fff2", classid=1, direct_action=True)
        except NetlinkError as e:
            return False, f"the kernel refuses tc clsact/bpf: {os.strerror(e.code)}"
        return True, "a trivial tc program attaches at clsact ingress"
    try:
        return _with_veth(ns, attach)
    finally:
        os.close(fd)


class _LinkCreateTcx(ctypes.Structure):
    """The BPF_LINK_CREATE part of ``union bpf_attr`` for a tcx link (zero tail)."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("relative_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("expected_revision", ctypes.c_uint64), ("_tail", ctypes.c_uint8 * 32)]


def tcx_link(prog_fd: int, ifindex: int, ingress: bool, before_link_fd: int | None = None) -> int:
    """Attach the tc program ``prog_fd`` to ``ifindex`` of the calling thread's network
    namespace as a tcx link (Linux >= 6.6): at the end of the hook's programs, or right
    before the program of link ``before_link_fd``. Returns the link's fd: closing it
    detaches the program. OSError when the kernel refuses (EINVAL: no tcx)."""
    attr = _LinkCreateTcx(prog_fd=prog_fd, target_ifindex=ifindex,
                          attach_type=ATTACH_TCX_INGRESS if ingress else ATTACH_TCX_EGRESS,
                          flags=0 if before_link_fd is None else BPF_F_BEFORE | BPF_F_LINK,
                          relative_fd=before_link_fd or 0)
    return bpf_syscall(BPF_LINK_CREATE, attr)


class _ProgQuery(ctypes.Structure):
    """The BPF_PROG_QUERY part of ``union bpf_attr``."""

    _fields_ = [("target_ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("prog_attach_flags", ctypes.c_uint64),
                ("link_ids", ctypes.c_uint64), ("link_attach_flags", ctypes.c_uint64),
                ("revision", ctypes.c_uint64)]


def tcx_prog_ids(ifindex: int, ingress: bool, most: int = 64) -> list[int]:
    """Ids of the programs attached to ``ifindex`` (the calling thread's network
    namespace) by tcx, in the order they run."""
    ids = (ctypes.c_uint32 * most)()
    attr = _ProgQuery(target_ifindex=ifindex,
                      attach_type=ATTACH_TCX_INGRESS if ingress else ATTACH_TCX_EGRESS,
                      prog_ids=ctypes.addressof(ids), prog_cnt=most)
    bpf_syscall(BPF_PROG_QUERY, attr)
    return list(ids[:attr.prog_cnt])


def tcx(ns: str) -> tuple[bool, str]:
    """A trivial SCHED_CLS program attaches as a tcx link (to ``lo`` of ``ns``)."""
    try:
        fd = trivial_prog(PROG_SCHED_CLS, TC_ACT_UNSPEC)
    except OSError as e:
        return _refused("a trivial tc (SCHED_CLS) program", e)

    def attach() -> tuple[bool, str]:
        try:
            os.close(tcx_link(fd, socket.if_nametoindex("lo"), ingress=True))
        except OSError as e:
            return _refused("a tcx link (BPF_TCX_INGRESS)", e)
        return True, "a trivial tc program attaches as a tcx link"
    try:
        return in_netns(ns, attach)
    finally:
        os.close(fd)


def xdp(ns: str) -> tuple[bool, str]:
    """A trivial XDP program loads and attaches to a veth (native or generic)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        fd = trivial_prog(PROG_XDP, XDP_PASS)
    except OSError as e:
        return _refused("a trivial XDP program", e)

    def attach(ipr: Any, idx: int) -> tuple[bool, str]:
        try:
            ipr.link("set", index=idx, xdp_fd=fd)
        except NetlinkError as e:
            return False, f"the kernel refuses to attach XDP to a veth: {os.strerror(e.code)}"
        return True, "a trivial XDP program attaches to a veth"
    try:
        return _with_veth(ns, attach)
    finally:
        os.close(fd)


def cgroup_sock_addr(ns: str) -> tuple[bool, str]:
    """A trivial connect4 program loads and attaches to a scratch cgroup v2 group."""
    try:
        fd = trivial_prog(PROG_CGROUP_SOCK_ADDR, 1, ATTACH_CGROUP_INET4_CONNECT)
    except OSError as e:
        return _refused("a trivial cgroup sock_addr program", e)
    mounts = (ln.split() for ln in Path("/proc/self/mounts").read_text().splitlines())
    root = next((Path(f[1]) for f in mounts if len(f) > 2 and f[2] == "cgroup2"), None)
    try:
        if root is None:
            if "cgroup2" in Path("/proc/filesystems").read_text():
                return True, "the kernel has cgroup v2, but it is not mounted"
            return False, "the kernel has no cgroup v2"
        path = root / f"{ns}k"  # the run prefix of the scratch namespace: not a leftover
        path.mkdir(exist_ok=True)
        cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        attr = (ctypes.c_uint32 * 4)(cg, fd, ATTACH_CGROUP_INET4_CONNECT, 0)
        try:
            bpf_syscall(BPF_PROG_ATTACH, attr)
            bpf_syscall(BPF_PROG_DETACH, attr)
        except OSError as e:
            return _refused("to attach a cgroup connect4 program", e)
        finally:
            os.close(cg)
            path.rmdir()
        return True, "a trivial connect4 program attaches to a cgroup"
    finally:
        os.close(fd)


def kprobes(ns: str = "") -> tuple[bool, str]:
    """The kernel has kprobe events (CONFIG_KPROBE_EVENTS) and loads a trivial kprobe program."""
    if not Path("/sys/kernel/tracing/kprobe_events").exists():
        if not Path("/sys/kernel/tracing/events").is_dir():
            return True, "tracefs is not mounted, so kprobe support cannot be seen"
        return False, "kernel built without CONFIG_KPROBE_EVENTS (use `kpbench vm run`)"
    try:
        os.close(trivial_prog(PROG_KPROBE, 0))
    except OSError as e:
        return _refused("a trivial kprobe program", e)
    return True, "kprobe events and kprobe programs"


def btf_func_id(name: str, path: Path = Path("/sys/kernel/btf/vmlinux")) -> int | None:
    """The BTF type id of kernel function ``name`` in the kernel's own BTF (None if absent)."""
    data = path.read_bytes()
    magic, _, _, hdr_len, type_off, type_len, str_off, _ = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        return None
    # Bytes after the 12-byte btf_type of each kind, per vlen entry or flat (uapi/linux/btf.h).
    per_entry = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    flat = {1: 4, 3: 12, 14: 4, 17: 4}
    want = name.encode() + b"\0"
    strings = hdr_len + str_off
    off, end, tid = hdr_len + type_off, hdr_len + type_off + type_len, 1
    while off < end:
        name_off, info, _ = struct.unpack_from("<III", data, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == 12 and data.startswith(want, strings + name_off):  # BTF_KIND_FUNC
            return tid
        off += 12 + per_entry.get(kind, 0) * vlen + flat.get(kind, 0)
        tid += 1
    return None


def fentry(ns: str = "", function: str = "nf_hook_slow") -> tuple[bool, str]:
    """A trivial fentry program on ``function`` loads and attaches (BPF trampolines)."""
    btf = Path("/sys/kernel/btf/vmlinux")
    if not btf.exists():
        return False, "kernel without BTF (CONFIG_DEBUG_INFO_BTF): no fentry programs"
    tid = btf_func_id(function, btf)
    if tid is None:
        return False, f"the kernel's BTF has no function {function}"
    try:
        fd = trivial_prog(PROG_TRACING, 0, ATTACH_TRACE_FENTRY, tid)
    except OSError as e:
        return _refused(f"a trivial fentry program on {function} (no BPF trampolines; use "
                        "`kpbench vm run`)", e)
    try:
        link = bpf_syscall(BPF_RAW_TRACEPOINT_OPEN, (ctypes.c_uint64 * 2)(0, fd))
        os.close(link)
    except OSError as e:
        return _refused(f"to attach a trivial fentry program to {function}", e)
    finally:
        os.close(fd)
    return True, f"a trivial fentry program attaches to {function}"


def tracepoints(ns: str = "") -> tuple[bool, str]:
    """The kernel has the skb tracepoints (tracefs mounted, or at least known)."""
    if Path("/sys/kernel/tracing/events/skb/kfree_skb").is_dir():
        return True, "skb tracepoints visible"
    if not Path("/sys/kernel/tracing/events").is_dir():
        if "tracefs" in Path("/proc/filesystems").read_text():
            return True, "the kernel has tracefs, but it is not mounted at /sys/kernel/tracing"
        return False, "kernel without tracefs"
    return False, "kernel without skb tracepoints"
