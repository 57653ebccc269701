"""The syscalls probe (``probes/syscalls.c``): kernel time inside the system calls
of watched processes, for rule-sync measurements (the applying tool's kernel time,
and its commit calls: :data:`NETLINK_CALLS`, :data:`SOCKOPT_CALLS`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench.measure.probes.loader import Probe, compile_probe

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
# Where the commit of each tool happens: netlink messages (nft, iptables-nft) or
# the legacy iptables socket options (IPT_SO_SET_REPLACE / IPT_SO_GET_ENTRIES).
NETLINK_CALLS = ("sendmsg", "recvmsg", "sendto", "recvfrom")
SOCKOPT_CALLS = ("setsockopt", "getsockopt")


@cache
def syscall_names() -> dict[int, str]:
    """Syscall number -> name, from the userspace ABI header (not a hard-coded table)."""
    try:
        text = UNISTD.read_text()
    except OSError:
        return {}
    return {int(n): name for name, n in re.findall(r"#define __NR_(\w+)\s+(\d+)", text)}


@dataclass(frozen=True)
class SyscallReading:
    by_call: dict[str, tuple[int, int]]  # name -> (ns, calls)

    def seconds(self, names: Iterable[str] | None = None) -> float:
        """Seconds spent in the named syscalls (all of them with None)."""
        wanted = None if names is None else set(names)
        return sum(ns for name, (ns, _) in self.by_call.items()
                   if wanted is None or name in wanted) / 1e9


class SyscallProbe(Probe):
    """Kernel time inside the system calls of watched processes (probes/syscalls.c)."""

    name = "syscalls"

    def attach(self) -> None:
        if self.attached:
            return
        self._bpf = compile_probe(self.name, self.cflags())

    def watch(self, pid: int) -> None:
        """Count the system calls of thread ``pid`` (a tool's pid) from now on."""
        self._require()
        # An entry stamp left from an earlier watch (the unwatch call's own entry, say)
        # would otherwise be taken for the start of the next call.
        entered = self._bpf[b"entered"]
        try:
            del entered[entered.Key(pid)]
        except KeyError:
            pass
        pids = self._bpf[b"pids"]
        try:
            pids[pids.Key(pid)] = pids.Leaf(1)
        except Exception:  # bcc's "Could not update table": the map (64 threads) is full
            # A sync of many tool runs (nftables-chunked: one nft per transaction) fills
            # it with tools that have exited; their calls are already counted in stats.
            for key in list(pids.keys()):
                if not os.path.exists(f"/proc/{key.value}"):
                    del pids[key]
            pids[pids.Key(pid)] = pids.Leaf(1)

    def unwatch(self, pid: int) -> None:
        """Stop counting thread ``pid`` (the harness's own, once its apply returned)."""
        self._require()
        pids = self._bpf[b"pids"]
        try:
            del pids[pids.Key(pid)]
        except KeyError:
            pass

    def _zero(self) -> None:
        self._bpf[b"pids"].clear()
        self._bpf[b"entered"].clear()
        stats = self._bpf[b"stats"]
        for i in range(len(stats)):
            stats[stats.Key(i)] = stats.Leaf()

    def read(self) -> SyscallReading:
        self._require()
        names = syscall_names()
        out = {}
        for k, v in self._bpf[b"stats"].items():
            if v.calls:
                out[names.get(k.value, f"nr-{k.value}")] = (int(v.ns), int(v.calls))
        return SyscallReading(out)
