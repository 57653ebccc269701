"""Kernel and tool features, detected by trying them (never assumed).

Each feature is first tried the way kpbench uses it: the tools, BCC and our
own BPF programs. A failure is then judged by a minimal kernel-only probe
(:mod:`bench.kernel.minimal_probes`): if the kernel refuses even that, the feature is
``missing`` (the kernel lacks it); if the kernel accepts it, the feature is
``broken`` — our code, a tool or the set-up fails, with their own message —
and that is an error to fix, never a reason to skip. A failed check with no
kernel-only probe is ``broken`` too: missing is only what is proven.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import netns as _netns

from bench import interrupts
from bench.cluster.netns_exec import run_netns
from bench.cluster.topology import new_prefix, register_run, remove_run
from bench.datapaths import VARIANT_NEEDS
from bench.kernel import minimal_probes as K
from bench.measure.probes.bcc_output import captured_stderr

OK, MISSING, BROKEN = "ok", "missing", "broken"
TOOL_TIMEOUT = 120.0  # seconds a tool may take to answer a check


@dataclass(frozen=True)
class Feature:
    """A feature's state: ``ok``, ``missing`` (the kernel lacks it) or ``broken`` (we do)."""

    name: str
    state: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.state == OK

    @property
    def missing(self) -> bool:
        """The kernel itself lacks it (a minimal kernel-only probe failed too)."""
        return self.state == MISSING


@contextlib.contextmanager
def scratch_netns() -> Iterator[str]:
    prefix = new_prefix()
    name = f"{prefix}-probe"
    # A signal held while the namespace is made and while it is removed: pyroute2 makes
    # it in a child process, which finished after a SIGINT had already run the removal
    # (CI, 2026-12-01: an interrupt 0.78 s into a run left it behind).
    # A signal held during the creation is raised as that block ends, when the namespace
    # exists: the removal's try must already enclose it (CI, 2026-12-01: an interrupt
    # 0.79 s into a run still left one behind when the try began after the block).
    try:
        with interrupts.deferred():
            register_run(prefix)  # not a leftover to `kpbench clean` or a concurrent run
            _netns.create(name)
        yield name
    finally:
        with interrupts.deferred():
            remove_run(prefix)


def _try(ns: str, argv: list[str], stdin: str | None = None) -> tuple[bool, str]:
    if shutil.which(argv[0]) is None:
        return False, f"{argv[0]} not installed (run scripts/setup.sh)"
    try:
        # Long enough to wait out another run's big iptables-restore: the xtables lock
        # (-w) is one file for every namespace of the machine.
        p = run_netns(ns, argv, stdin=stdin, timeout=TOOL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return False, f"{argv[0]} did not answer within {TOOL_TIMEOUT:.0f} s"
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


Check = Callable[[str], tuple[bool, str]]

NETNS_CHECKS: dict[str, Check] = {
    "iptables-legacy": _iptables("iptables-legacy"),
    "iptables-nft": _iptables("iptables-nft"),
    "nftables": _nftables,
    "ipset": _ipset,
    "ipvs": _ipvs,
    "ebpf-tc": _datapath_check("check_tc"),
    "tcx": K.tcx,  # the probes' tc programs as tcx links (else clsact filters)
    "xdp": _datapath_check("check_xdp"),
    "socket-lb": _datapath_check("check_socket_lb"),
    "userspace": _datapath_check("check_userspace"),
}


# The kernel-only probe that judges a failed check: missing only if it fails too.
KERNEL_PROBES: dict[str, Check] = {
    "iptables-legacy": K.iptables_legacy,
    "iptables-nft": K.nf_tables,
    "nftables": K.nf_tables,
    "ipset": K.ipset,
    "ipvs": K.ipvs,
    "ebpf-tc": K.tc_bpf,
    "tcx": K.tcx,
    "xdp": K.xdp,
    "socket-lb": K.cgroup_sock_addr,
    "userspace": lambda ns: K.iptables_legacy(ns, targets=("REDIRECT",), matches=("addrtype",)),
    "tracepoints": K.tracepoints,
    "kprobes": K.kprobes,
    "fentry": K.fentry,
}


def judge(name: str, ok: bool, detail: str, ns: str) -> Feature:
    """The Feature of a check's outcome; a failure is ``missing`` only if the kernel probe fails."""
    if ok:
        return Feature(name, OK, detail)
    probe = KERNEL_PROBES.get(name)
    if probe is None:
        return Feature(name, BROKEN, detail)
    try:
        kernel_ok, kernel_detail = probe(ns)
    except Exception as e:  # a probe that cannot run proves nothing: not "missing"
        return Feature(name, BROKEN, f"{detail} (the kernel-only probe failed to run: {e!r})")
    if not kernel_ok:
        return Feature(name, MISSING, kernel_detail)
    return Feature(name, BROKEN, f"{detail} (yet the kernel supports it: {kernel_detail})")


def _bcc() -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401
    except ImportError as e:
        return False, (f"cannot import bcc ({e}); run scripts/setup.sh, which makes a venv "
                       "that sees Debian's python3-bpfcc")
    return True, "Debian python3-bpfcc importable"


def _headers() -> tuple[bool, str]:
    rel = platform.release()
    build = Path(f"/lib/modules/{rel}/build")
    if not (build / "include").exists():
        return False, f"no headers at {build}: run scripts/setup.sh"
    target = build.resolve().name.removeprefix("linux-headers-")
    if target == rel:
        return True, f"match {rel}: kernel structs readable"
    return True, (f"{target} headers for kernel {rel} (mismatch): probes read only tracepoint "
                  "arguments and __sk_buff fields")


def _tracefs() -> tuple[bool, str]:
    ok = Path("/sys/kernel/tracing/events/skb/kfree_skb").is_dir()
    return ok, ("skb, net, irq tracepoints visible" if ok
                else "tracefs not mounted or no skb tracepoints: run scripts/setup.sh")


def _bpf_attach(text: str, what: str) -> tuple[bool, str]:
    """Compile and load ``text`` with BCC: the only honest test of a probe kind."""
    try:
        from bcc import BPF
    except ImportError as e:
        return False, f"cannot import bcc ({e})"
    try:
        with captured_stderr() as out:  # clang's and libbpf's own words
            BPF(text=text.encode()).cleanup()
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "super-user" in reason and os.geteuid() == 0:  # BCC's words for any EPERM
            reason = "the kernel refused to load it (EPERM) although we are root"
        return False, f"{reason}{': ' + out.summary() if out.summary() else ''}"
    return True, f"attached {what}"


def _kprobes(ns: str) -> tuple[bool, str]:
    if not Path("/sys/kernel/tracing/kprobe_events").exists():
        return False, "no /sys/kernel/tracing/kprobe_events"
    return _bpf_attach("int kprobe__nf_hook_slow(void *ctx) { return 0; }",
                       "a kprobe to nf_hook_slow")


def _fentry(ns: str) -> tuple[bool, str]:
    return _bpf_attach("KFUNC_PROBE(nf_hook_slow) { return 0; }", "an fentry to nf_hook_slow")


# Checks that need no namespace (nor root, except the BPF ones).
HOST_CHECKS: dict[str, Check] = {
    "bcc": lambda ns: _bcc(),
    "kernel-headers": lambda ns: _headers(),
    "tracepoints": lambda ns: _tracefs(),
    "kprobes": _kprobes,
    "fentry": _fentry,
}
_ROOT_ONLY = {*NETNS_CHECKS, "kprobes", "fentry"}
_found: dict[str, Feature] = {}


def _check(name: str, ns: str) -> Feature:
    if name in _ROOT_ONLY and os.geteuid() != 0:
        return Feature(name, BROKEN, "not checked: needs root")
    check = NETNS_CHECKS.get(name) or HOST_CHECKS[name]
    return judge(name, *check(ns), ns)


def _checked(names: list[str]) -> dict[str, Feature]:
    todo = [n for n in names if n not in _found]
    if todo:
        if os.geteuid() == 0:
            with scratch_netns() as ns:
                for n in todo:
                    _found[n] = _check(n, ns)
        else:
            for n in todo:
                _found[n] = _check(n, "")
    return {n: _found[n] for n in names}


def feature(name: str) -> Feature:
    """One feature, checked once per process. Needs root for the namespace checks."""
    if name not in NETNS_CHECKS and name not in HOST_CHECKS:
        raise KeyError(f"unknown feature {name!r}")
    return _checked([name])[name]


def detect() -> dict[str, Feature]:
    """Every feature, by name. Needs root for the namespace checks."""
    return _checked([*NETNS_CHECKS, *HOST_CHECKS])


def forget() -> None:
    """Check again on the next call (the checks are otherwise made once per process)."""
    _found.clear()


def lacking(names: tuple[str, ...] | list[str]) -> tuple[str | None, str | None]:
    """(missing, broken) reasons among features ``names``: what the kernel lacks, what fails."""
    found = [feature(n) for n in names]
    missing = "; ".join(f"{f.name}: {f.detail}" for f in found if f.missing) or None
    broken = "; ".join(f"{f.name}: {f.detail}" for f in found
                       if not f.ok and not f.missing) or None
    return missing, broken


#: What each datapath variant needs from the kernel, as its class declares it.
DATAPATH_NEEDS = VARIANT_NEEDS
