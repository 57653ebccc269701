"""Wait until the machine is quiet before a measurement taken once per run.

The probes' own cost is measured once per run, at its first point, and every
point's overhead figure is related to it; so is the cpu probe's own share,
taken out of every CPU figure. Other work on the machine in those few seconds
(the previous run's teardown still running in kernel workers, another job)
only slows the bursts, and one slowed measurement moves every point of the
run. So before them the runner waits, bounded, until the CPUs have been
nearly idle for a whole window, and records how long it waited and how busy
the machine was; a machine that does not quiet down is measured anyway, and
the result says so.

Busy is everything ``/proc/stat`` counts but idle and iowait, steal included
(time the hypervisor gave another guest is time this one's bursts lose).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROC_STAT = Path("/proc/stat")
QUIET_BUSY = 0.10  # at most this fraction of all CPUs' time busy over a window
QUIET_WINDOW_S = 1.0
QUIET_TIMEOUT_S = 30.0


def cpu_times(text: str | None = None) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs together, from ``/proc/stat``'s ``cpu`` line."""
    text = PROC_STAT.read_text() if text is None else text
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total = sum(values)
            return total - values[3] - values[4], total
    raise ValueError("no aggregate cpu line in /proc/stat")


def wait_quiet(max_busy: float = QUIET_BUSY, window_s: float = QUIET_WINDOW_S,
               timeout_s: float = QUIET_TIMEOUT_S,
               read: Callable[[], tuple[int, int]] = cpu_times,
               sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Wait until one window of ``window_s`` has the CPUs at most ``max_busy`` busy, at
    most ``timeout_s``. Returns ``{"quiet": bool, "waited_s": s, "busy_pct": the last
    window's}``."""
    start = clock()
    busy_pct = None
    while True:
        b0, t0 = read()
        sleep(window_s)
        b1, t1 = read()
        busy = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        busy_pct = round(100 * busy, 1)
        waited = clock() - start
        if busy <= max_busy:
            return {"quiet": True, "waited_s": round(waited, 1), "busy_pct": busy_pct}
        if waited >= timeout_s:
            return {"quiet": False, "waited_s": round(waited, 1), "busy_pct": busy_pct}
