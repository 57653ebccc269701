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
from bench.kernel.minimal_probes import PROG_SCHED_CLS, TC_ACT_UNSPEC, bpf_syscall, trivial_prog

BPF_PROG_TEST_RUN, BPF_ENABLE_STATS = 10, 32  # uapi/linux/bpf.h; statistics: Linux >= 5.8
BPF_STATS_RUN_TIME = 0


class _EnableStats(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


class _TestRun(ctypes.Structure):
    """The BPF_PROG_TEST_RUN part of ``union bpf_attr``."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Run-time statistics on for every BPF program while the block runs;
    FeatureMissing where the kernel cannot (before Linux 5.8)."""
    try:
        fd = bpf_syscall(BPF_ENABLE_STATS, _EnableStats(BPF_STATS_RUN_TIME))
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


def total_run_time(fds: Iterable[int]) -> tuple[int, int]:
    """Summed (``run_time_ns``, ``run_cnt``) of the programs open as ``fds``."""
    ns = runs = 0
    for fd in fds:
        t, n = run_time(fd)
        ns, runs = ns + t, runs + n
    return ns, runs


def own_cost_ns(repeat: int = 200_000, tries: int = 3) -> float:
    """What the statistics themselves put into each run's ``run_time_ns``: the recorded
    time per run of an empty program (``r0 = TC_ACT_UNSPEC; exit``) run ``repeat`` times
    by ``BPF_PROG_TEST_RUN``, the least of ``tries`` (the two clock reads around a
    program: tens of ns in a VM). Call with statistics on (:func:`enabled`)."""
    fd = trivial_prog(PROG_SCHED_CLS, TC_ACT_UNSPEC)
    try:
        frame = ctypes.create_string_buffer(64)  # a zeroed Ethernet frame
        best = float("inf")
        for _ in range(tries):
            before = run_time(fd)
            bpf_syscall(BPF_PROG_TEST_RUN, _TestRun(prog_fd=fd, data_size_in=len(frame),
                                                    data_in=ctypes.addressof(frame),
                                                    repeat=repeat))
            ns, runs = (a - b for a, b in zip(run_time(fd), before, strict=True))
            if runs <= 0:
                raise FeatureMissing("BPF run-time statistics: an empty program's runs were "
                                     "not counted (statistics off?)")
            best = min(best, ns / runs)
        return best
    finally:
        os.close(fd)
