"""The kernel's own run-time statistics of BPF programs.

With statistics on, the kernel times every run of every BPF program (a clock
read before and after the program, in ``bpf_prog_run``) and keeps the sum and
the count per program; ``/proc/<pid>/fdinfo/<prog fd>`` shows them as
``run_time_ns`` and ``run_cnt``. :func:`enabled` turns them on the way that
cannot be left behind: ``BPF_ENABLE_STATS`` returns a file descriptor, and the
statistics stay on while any such descriptor is open (the kernel counts them;
closing ours, or the process ending, gives ours back). The host's
``kernel.bpf_stats_enabled`` sysctl is never written.

What the figures hold: the program's body and one clock read's share of the
timing itself; not the hook's own dispatch (the tcx or cls_bpf loop, the
tracepoint's call into BPF).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from bench.errors import FeatureMissing
from bench.kernel.minimal_probes import _bpf

BPF_ENABLE_STATS = 32  # uapi/linux/bpf.h, Linux >= 5.8
BPF_STATS_RUN_TIME = 0


class _EnableStats(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Run-time statistics on for every BPF program while the block runs;
    FeatureMissing where the kernel cannot (before Linux 5.8)."""
    try:
        fd = _bpf(BPF_ENABLE_STATS, _EnableStats(BPF_STATS_RUN_TIME))
    except OSError as e:
        raise FeatureMissing(f"BPF run-time statistics: the kernel refused BPF_ENABLE_STATS "
                             f"({e.strerror}; Linux >= 5.8 has it)") from None
    try:
        yield
    finally:
        os.close(fd)


def run_time(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the BPF program open as ``fd`` in this process."""
    fields = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("run_time_ns", "run_cnt"):
            fields[key] = int(value.strip())
    if len(fields) != 2:
        raise FeatureMissing(f"BPF run-time statistics: fd {fd} shows no run_time_ns "
                             "(not a BPF program, or a kernel before 5.1)")
    return fields["run_time_ns"], fields["run_cnt"]


def total_run_time(fds: Iterable[int]) -> int:
    """Summed ``run_time_ns`` of the programs open as ``fds``."""
    return sum(run_time(fd)[0] for fd in fds)
