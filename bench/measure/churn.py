"""Churn: K endpoint changes per second, applied the way kube-proxy applies them.

The disruption scenario's ``churn`` event (bench/measure/disruption_runner.py,
docs/disruption.md). Two pieces, both free of the kernel so they are tested
on their own:

- :class:`Churn`: the changes themselves. Change ``i`` touches one Service
  other than the measured one (round robin over them): on a Service as
  generated it removes its last endpoint, makes its first endpoint not ready,
  or adds an endpoint (the first endpoint of the next Service's slice: an
  address that exists), in turn; on a Service a change already touched it
  puts the Service back as generated (the endpoint added again, ready again,
  removed again). So the three kinds of change and their inverses all occur,
  and the state stays within one change per Service of the generated one.
- :func:`run_schedule`: kube-proxy's coalescing. Changes arrive at
  ``i / K`` seconds; a sync starts when a change is pending and at least
  ``min_sync_period_s`` after the previous sync's start (kube-proxy's
  ``minSyncPeriod``, its sync runner's minimum interval), and applies every
  change that arrived by then as one partial sync; a sync that takes longer
  than the period is followed at once by the next. A sync that starts
  ``full_sync_period_s`` or more after the last full one is a full sync
  (kube-proxy's ``FullSyncPeriod``, one hour in the v1.32/v1.33 line that
  bench/datapaths/iptables.py follows; the state was fully synced when the
  churn starts). After the last change, the changes still pending get their
  sync, and the churn ends when that sync does.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bench.model.objects import Endpoint, EndpointSlice, Service

# What a change on a Service as generated does, in turn (change i uses KINDS[i % 3]).
KINDS = ("remove-endpoint", "endpoint-not-ready", "add-endpoint")
# kube-proxy's FullSyncPeriod (pkg/proxy/util, v1.28 on): a full sync at most hourly.
FULL_SYNC_PERIOD_S = 3600.0


def change_times(per_s: int, seconds: float) -> list[float]:
    """When each of ``per_s`` x ``seconds`` changes arrives, in seconds from the start."""
    return [i / per_s for i in range(max(1, round(per_s * seconds)))]


@dataclass(frozen=True)
class SyncRecord:
    """One sync the schedule ran (times in seconds from the churn's start)."""

    start: float
    end: float
    changes: int  # changes it applied
    full: bool
    cpu_s: float | None  # the applying tools' CPU (None: not measured)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def run_schedule(times: Sequence[float], min_sync_period_s: float, full_sync_period_s: float,
                 clock: Callable[[], float], sleep: Callable[[float], None],
                 sync: Callable[[int, int, bool], float | None]) -> list[SyncRecord]:
    """Apply changes arriving at ``times`` (seconds from now, sorted) as kube-proxy does
    (see the module doc): ``sync(first, stop, full)`` applies changes ``first..stop-1``
    as one sync (a full one if ``full``) and returns its CPU seconds or None."""
    t0 = clock()
    applied = 0
    last_start: float | None = None
    last_full = 0.0
    records: list[SyncRecord] = []
    while applied < len(times):
        at = times[applied]
        if last_start is not None:
            at = max(at, last_start + min_sync_period_s)
        now = clock() - t0
        if at > now:
            sleep(at - now)
            now = clock() - t0
        due = max(bisect.bisect_right(times, now), applied + 1)
        full = now - last_full >= full_sync_period_s
        cpu = sync(applied, due, full)
        records.append(SyncRecord(now, clock() - t0, due - applied, full, cpu))
        applied, last_start = due, now
        if full:
            last_full = now
    return records


class Churn:
    """The churn's changes to a cluster's EndpointSlices (see the module doc)."""

    def __init__(self, services: Sequence[Service], slices: Sequence[EndpointSlice],
                 keep: str) -> None:
        """``keep``: the key of the Service no change touches (the background's)."""
        self.original: dict[str, list[EndpointSlice]] = {}
        for s in slices:
            self.original.setdefault(s.service_key, []).append(s)
        self.keys = [s.key for s in services if s.key != keep and self.original.get(s.key)]
        if not self.keys:
            raise ValueError("churn needs a Service with endpoints besides the measured one")
        self.current = {k: list(v) for k, v in self.original.items()}
        self.order = [s.service_key for s in slices]  # the slices' order, kept
        self.touched: set[str] = set()
        self.count = 0

    def apply(self, n: int) -> set[str]:
        """Make the next ``n`` changes; returns the keys of the Services they changed."""
        changed: set[str] = set()
        for _ in range(n):
            i = self.count
            self.count += 1
            j = i % len(self.keys)
            key = self.keys[j]
            changed.add(key)
            if key in self.touched:
                self.current[key] = list(self.original[key])
                self.touched.discard(key)
                continue
            first, *rest = self.original[key]
            kind = KINDS[i % len(KINDS)]
            eps: tuple[Endpoint, ...] = first.endpoints
            if kind == "remove-endpoint" and eps:
                eps = eps[:-1]
            elif kind == "endpoint-not-ready" and eps:
                eps = (replace(eps[0], ready=False, serving=False), *eps[1:])
            else:  # add-endpoint (also for a Service without endpoints)
                donor = self.original[self.keys[(j + 1) % len(self.keys)]][0].endpoints
                new = [e for e in donor[:1] if e.addresses not in {x.addresses for x in eps}]
                eps = (*eps, *new)
            self.current[key] = [replace(first, endpoints=eps), *rest]
            self.touched.add(key)
        return changed

    def slices(self) -> list[EndpointSlice]:
        """Every EndpointSlice as the changes so far left it (in the original order)."""
        out: list[EndpointSlice] = []
        seen: set[str] = set()
        for key in self.order:
            if key not in seen:
                seen.add(key)
                out.extend(self.current[key])
        return out
