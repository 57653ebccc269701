"""Kernel and tool features, detected by trying them (never assumed).

Each check runs inside a throwaway namespace carrying a run prefix, so the
host's own network state is never touched. ``kpbench doctor`` prints them;
tests use them to decide what a machine provably lacks.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pyroute2 import netns as _netns

from bench.topology import new_prefix, register_run, remove_run


@dataclass(frozen=True)
class Feature:
    name: str
    ok: bool
    detail: str


@contextlib.contextmanager
def scratch_netns() -> Iterator[str]:
    prefix = new_prefix()
    name = f"{prefix}-probe"
    register_run(prefix)  # not a leftover to `kpbench clean` or a concurrent run
    try:
        _netns.create(name)
        yield name
    finally:
        remove_run(prefix)


def _try(ns: str, argv: list[str], stdin: str | None = None) -> tuple[bool, str]:
    if shutil.which(argv[0]) is None:
        return False, f"{argv[0]} not installed (run scripts/setup.sh)"
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True,
                       text=True, timeout=30)
    msg = (p.stderr or p.stdout).strip().splitlines()
    return p.returncode == 0, (msg[0] if msg else "") if p.returncode else "works"


def _iptables(binary: str) -> Callable[[str], tuple[bool, str]]:
    def check(ns: str) -> tuple[bool, str]:
        return _try(ns, [binary, "-w", "-t", "nat", "-N", "KPB-PROBE"])
    return check


def _nftables(ns: str) -> tuple[bool, str]:
    return _try(ns, ["nft", "-f", "-"],
                "add table ip kpb\nadd chain ip kpb c { type nat hook prerouting priority 0 ; }\n"
                "add map ip kpb m { type ipv4_addr . inet_proto . inet_service : verdict ; }\n"
                "add rule ip kpb c numgen random mod 2 vmap { 0 : accept, 1 : accept }\n")


def _ipvs(ns: str) -> tuple[bool, str]:
    ok, msg = _try(ns, ["ipvsadm", "-Ln"])
    return ok, msg if not ok else "works"


def _ipset(ns: str) -> tuple[bool, str]:
    return _try(ns, ["ipset", "create", "KPB-PROBE", "hash:ip"])


def _datapath_check(name: str) -> Callable[[str], tuple[bool, str]]:
    """A check in bench.datapaths.ebpf_checks (imported late: it needs BCC)."""
    def check(ns: str) -> tuple[bool, str]:
        try:
            from bench.datapaths import ebpf_checks
        except ImportError as e:
            return False, f"cannot import the datapath checks ({e})"
        return getattr(ebpf_checks, name)(ns)
    return check


NETNS_CHECKS: dict[str, Callable[[str], tuple[bool, str]]] = {
    "iptables-legacy": _iptables("iptables-legacy"),
    "iptables-nft": _iptables("iptables-nft"),
    "nftables": _nftables,
    "ipset": _ipset,
    "ipvs": _ipvs,
    "ebpf-tc": _datapath_check("check_tc"),
    "xdp": _datapath_check("check_xdp"),
    "socket-lb": _datapath_check("check_socket_lb"),
    "userspace": _datapath_check("check_userspace"),
}


def _bcc() -> Feature:
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        return Feature("bcc", False, f"cannot import bcc ({e}); run scripts/setup.sh, which "
                                     "makes a venv that sees Debian's python3-bpfcc")
    return Feature("bcc", True, "Debian python3-bpfcc importable")


def _headers() -> Feature:
    rel = platform.release()
    build = Path(f"/lib/modules/{rel}/build")
    if not (build / "include").exists():
        return Feature("kernel-headers", False, f"no headers at {build}: run scripts/setup.sh")
    target = build.resolve().name.removeprefix("linux-headers-")
    if target == rel:
        return Feature("kernel-headers", True, f"match {rel}: kernel structs readable")
    return Feature("kernel-headers", True,
                   f"{target} headers for kernel {rel} (mismatch): probes read only tracepoint "
                   "arguments and __sk_buff fields")


def _tracefs() -> Feature:
    ok = Path("/sys/kernel/tracing/events/skb/kfree_skb").is_dir()
    return Feature("tracepoints", ok, "skb, net, irq tracepoints visible" if ok
                   else "tracefs not mounted or no skb tracepoints")


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """Silence file descriptor 2 (C libraries write there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _bpf_attach(name: str, text: str, hint: str) -> Feature:
    """Compile and load ``text`` with BCC: the only honest test of a probe kind."""
    try:
        from bcc import BPF
    except ImportError:
        return Feature(name, False, "bcc not importable")
    try:
        with _stderr_to_devnull():  # libbpf prints its own "bpf: Failed to load program"
            BPF(text=text).cleanup()
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "super-user" in reason and os.geteuid() == 0:  # BCC's words for any EPERM
            reason = "the kernel refused to load it (EPERM) although we are root"
        return Feature(name, False, f"{reason} ({hint})")
    return Feature(name, True, "attached a probe to nf_hook_slow")


def _kprobes() -> Feature:
    if not Path("/sys/kernel/tracing/kprobe_events").exists():
        return Feature("kprobes", False, "kernel built without CONFIG_KPROBE_EVENTS "
                                         "(use `kpbench vm run`)")
    return _bpf_attach("kprobes", "int kprobe__nf_hook_slow(void *ctx) { return 0; }",
                       "use `kpbench vm run`")


def _fentry() -> Feature:
    return _bpf_attach("fentry", "KFUNC_PROBE(nf_hook_slow) { return 0; }",
                       "kernel lacks BPF trampolines; use `kpbench vm run`")


@cache
def detect() -> dict[str, Feature]:
    """Every feature, by name. Needs root for the namespace checks."""
    found: dict[str, Feature] = {}
    if os.geteuid() == 0:
        with scratch_netns() as ns:
            for name, check in NETNS_CHECKS.items():
                ok, detail = check(ns)
                found[name] = Feature(name, ok, detail)
    else:
        for name in NETNS_CHECKS:
            found[name] = Feature(name, False, "not checked: needs root")
    for f in (_bcc(), _headers(), _tracefs()):
        found[f.name] = f
    for f in ((_kprobes(), _fentry()) if os.geteuid() == 0 and found["bcc"].ok else ()):
        found[f.name] = f
    return found


# What each datapath needs from the kernel.
DATAPATH_NEEDS = {
    "iptables-legacy": ("iptables-legacy",),
    "iptables-nft": ("iptables-nft",),
    "nftables": ("nftables",),
    "ipvs": ("ipvs", "ipset", "iptables-legacy"),
    "ebpf-tc": ("bcc", "ebpf-tc"),
    "xdp": ("bcc", "ebpf-tc", "xdp"),
    "socket-lb": ("bcc", "socket-lb"),
    "userspace": ("userspace",),
}
