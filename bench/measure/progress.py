"""A run's progress on stderr: one line per step, with the elapsed time and an ETA
taken from the run's own measurements (see :class:`Progress`)."""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from bench import interrupts
from bench.measure.scenario import Scenario


@dataclass(frozen=True)
class Eta:
    """What is left of a run, as far as it is known: seconds, or None before anything
    was measured; ``lower_bound`` when part of it (syncs at scale) is not known yet."""

    seconds: float | None
    lower_bound: bool = False
    why: str = ""

    def __str__(self) -> str:
        if self.seconds is None:
            return f"ETA unknown {self.why}"
        if self.lower_bound:
            return f"ETA > {_fmt(self.seconds)} ({self.why})"
        return f"ETA ~{_fmt(self.seconds)}"


class Progress:
    """One line per step on stderr, with elapsed time and an ETA.

    The ETA models each remaining scale point as a fixed part (building the
    cluster, settling, traffic, probes: the median measured so far) plus its
    sync, extrapolated from the variant's own syncs with their measured growth
    (a power of the number of services, fitted to its two largest syncs; linear
    from one) and capped at the scenario's ``point_time_limit``, past which a
    sync is stopped. A sync rate is only taken from a sync of at least
    RATE_MIN_SERVICES services: at 1 service the sync time is all fixed cost.

    Everything comes from this run's own measurements, so a run in a VM under
    TCG emulation (several times slower) is estimated at its own speed. Until
    the first point is measured the ETA says it is unknown (until the first scale
    ends, its fixed part comes from the points of the current scale done so far);
    while no sync at scale has been measured it is a lower bound, and says so.
    """

    RATE_MIN_SERVICES = 100
    MAX_GROWTH = 3.0  # a sync growing faster than n**3 is not extrapolated further

    def __init__(self, scenario: Scenario, out: TextIO = sys.stderr) -> None:
        self.sc = scenario
        self.out = out
        self.total = len(scenario.points)
        self.done = 0
        self.start = time.monotonic()
        self.syncs: list[tuple[str, int, float]] = []  # (variant, services, seconds)
        self.fixed_seconds: list[float] = []  # per scale point: its time without the sync
        self.one_off = 0.0  # once-per-run work inside the current point (probe overhead)
        self.skipped: set[str] = set()  # variants this kernel lacks: recorded, not measured
        # The scale being measured: when it started and how many points were done then.
        self.scale_start: tuple[float, int] | None = None

    def start_scale(self) -> None:
        """A scale starts (its cluster is built next): until one has ended, the ETA's fixed
        part comes from this one's points done so far."""
        self.scale_start = (time.monotonic(), self.done)

    def record_sync(self, variant: str, services: int, seconds: float) -> None:
        self.syncs.append((variant, services, seconds))

    def record_scale(self, variant: str, services: int, wall: float) -> None:
        """A scale point took ``wall`` seconds; its sync (last recorded) is not fixed cost."""
        sync = next((s for v, n, s in reversed(self.syncs) if (v, n) == (variant, services)),
                    0.0)
        self.fixed_seconds.append(max(wall - sync - self.one_off, 0.0))
        self.one_off = 0.0
        self.scale_start = None

    def _fixed_estimate(self) -> float | None:
        """Seconds of a scale without its sync: the median of the scales measured; before
        one has ended, the points done in the current one scaled to all its points
        (its sync, recorded last, taken out); None before any point."""
        if self.fixed_seconds:
            return statistics.median(self.fixed_seconds)
        if self.scale_start is None or self.done <= self.scale_start[1] or not self.syncs:
            return None
        t0, done0 = self.scale_start
        spent = time.monotonic() - t0 - self.syncs[-1][2] - self.one_off
        return max(spent, 0.0) / (self.done - done0) * len(self.sc.measured)

    def _sync_estimate(self, variant: str, services: int) -> tuple[float, bool]:
        """Seconds of this variant's sync at ``services``, and whether that is grounded in
        a measured sync at scale (False: a lower bound)."""
        own = [(n, s) for v, n, s in self.syncs if v == variant]
        largest: dict[int, float] = {}
        for n, s in own:
            if n >= self.RATE_MIN_SERVICES:
                largest[n] = s  # the latest sync at each scale
        limit = self.sc.point_time_limit
        if largest:
            (n1, s1), *rest = sorted(largest.items(), reverse=True)
            growth = 1.0
            if rest:  # measured growth between the two largest scales
                n2, s2 = rest[0]
                if s1 > 0 and s2 > 0:
                    growth = min(max(math.log(s1 / s2) / math.log(n1 / n2), 1.0),
                                 self.MAX_GROWTH)
            return min(s1 * (services / n1) ** growth, limit), True
        small = own[-1][1] if own else 0.0
        if services < self.RATE_MIN_SERVICES:
            return min(small, limit), True
        # Not seen at scale yet: the typical rate of the variants seen so far.
        rates = sorted(s / n for _, n, s in self.syncs if n >= self.RATE_MIN_SERVICES)
        if not rates:
            return min(small, limit), False
        return min(max(small, rates[len(rates) // 2] * services), limit), True

    def _estimate(self, variant: str, services: int) -> tuple[float, bool]:
        """Seconds for one remaining point (one workload at one scale), and whether its
        sync part is grounded (see _sync_estimate)."""
        sync, known = self._sync_estimate(variant, services)
        if self.sc.kind == "sync":
            # Per repetition: the change and the change back, each a sync, and the
            # traffic window that watches the change (a few seconds at least).
            return self.sc.sync_repetitions * (2 * sync + 3.5), known
        fixed = self._fixed_estimate() or 0.0
        return (fixed + sync) / len(self.sc.measured), known

    def eta(self) -> Eta:
        """The time left, or why it is not known yet."""
        remaining = self.sc.points[self.done:]
        if not remaining:
            return Eta(0.0)
        measured = self.syncs if self.sc.kind == "sync" else self._fixed_estimate() is not None
        if not measured:
            return Eta(None, why="until the first point is measured")
        total, grounded = 0.0, True
        for dp, n, _ in remaining:
            if dp in self.skipped:
                continue
            seconds, known = self._estimate(dp, n)
            total += seconds
            grounded &= known
        if grounded:
            return Eta(total)
        return Eta(total, lower_bound=True,
                   why=f"no sync at {self.RATE_MIN_SERVICES}+ services measured yet")

    def say(self, what: str) -> None:
        interrupts.check()
        elapsed = time.monotonic() - self.start
        pct = 100 * self.done // max(self.total, 1)
        print(f"[{self.done:>3}/{self.total} {pct:>3}%] {what}  "
              f"(elapsed {_fmt(elapsed)}, {self.eta()})", file=self.out, flush=True)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
