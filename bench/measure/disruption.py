"""The background traffic's timeline around a disruption event, and its summary.

Everything here is on the harness's one clock, CLOCK_MONOTONIC: the latency
probe's stamps are ``bpf_ktime_get_ns()`` and the event's start and end are
``time.monotonic_ns()``, the same clock.

Where each figure comes from (the latency probe, bench.measure.probes.latency):
every background packet carries a sequence number; the probe stamps its
departure at the client's egress (``depart_ns[seq]``) and its arrival at a
backend pod's ingress (``arrive_ns[seq]``). A packet is *sent* when it has a
departure stamp -- a lost packet has one too, so the send time of every packet,
lost or not, is its own stamp, not a guess from the sender's schedule. It is
*delivered* when it also has an arrival stamp; *lost* otherwise. Its latency
is arrival - departure.

Bins (:data:`BIN_NS`, 10 ms) are by **send time**, aligned so that the event's
start is a bin edge: a packet counts in the bin it was sent in, delivered or
lost, so ``delivered + lost == sent`` holds in every bin; a packet held up by
the event and delivered late counts as delivered in its send bin, and its
latency shows the delay.

Per event (:func:`summarise`):

- ``stall_ms``: the longest time packets were in flight with no arrival
  (ns precision, not bins), among the gaps that end after the event's
  start: for each gap between consecutive arrivals (and first departure ->
  first arrival, last arrival -> last departure when trailing packets are
  lost), the part of it from the first departure inside it, so a pause of
  the sender is not counted as a stall. ``baseline_stall_ms`` is the same
  over the baseline's packets (below): what the machine does on its own.
- ``lost``: packets sent from the event's start to the end of the watch
  window and never delivered; ``baseline_lost`` those sent in the baseline.

The **baseline** is the traffic sent in the last ``baseline_ns`` before the
event (the runner: the second half of ``before_s``; the first half is the
traffic's own start, whose first ~100 ms show higher latency on a loaded
2-core machine, kept in the timeline but not in the baseline).
- ``excess_p99_ns``: the p99 latency of the packets sent in the bins the
  event overlaps minus the p99 of the packets sent in the baseline (None
  when nothing sent during the event was delivered).
- ``recovery_ms``: from the event's end to the start of the first run of
  :data:`RECOVERY_RUN` consecutive *normal* bins (0 when the traffic was
  never off its baseline); a bin is normal when its loss fraction is no
  higher than the worst baseline bin's and its p99 no higher than the worst
  baseline bin's p99. None: not back within the watch window.
- ``off_baseline_after_ms``: the time in bins that are *not* normal from the
  bin holding the event's end to the end of the watch window: relapses after
  the first recovery count here (e.g. a restarted proxy that stumbles again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BIN_NS = 10_000_000  # 10 ms
RECOVERY_RUN = 10  # consecutive normal bins (100 ms) that count as "back to baseline"


@dataclass(frozen=True)
class Timeline:
    """Per-bin counts and latency percentiles; bin ``i`` starts at ``t0_ns + i * bin_ns``."""

    t0_ns: int
    bin_ns: int
    sent: np.ndarray  # int64 per bin
    delivered: np.ndarray  # int64 per bin
    p50_ns: np.ndarray  # float per bin, NaN where nothing was delivered
    p99_ns: np.ndarray

    @property
    def lost(self) -> np.ndarray:
        return self.sent - self.delivered

    def starts_ns(self) -> np.ndarray:
        return self.t0_ns + np.arange(len(self.sent), dtype=np.int64) * self.bin_ns

    def document(self, event_start_ns: int, event_end_ns: int) -> dict[str, Any]:
        """Compact JSON: times relative to the event's start (ns), lists per bin."""
        def pct(a: np.ndarray) -> list[int | None]:
            return [None if np.isnan(v) else int(v) for v in a]
        return {"bin_ns": self.bin_ns, "t0_ns": int(self.t0_ns - event_start_ns),
                "event_start_ns": 0, "event_end_ns": int(event_end_ns - event_start_ns),
                "sent": [int(v) for v in self.sent],
                "delivered": [int(v) for v in self.delivered],
                "p50_ns": pct(self.p50_ns), "p99_ns": pct(self.p99_ns)}


def packets(depart: np.ndarray, arrive: np.ndarray,
            until_ns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(departure ns, arrival ns or 0) of every sent packet (departure stamped; sent
    before ``until_ns`` when given), in departure order."""
    sent = depart != 0
    if until_ns is not None:
        sent &= depart < np.uint64(until_ns)
    d = depart[sent].astype(np.int64)
    a = arrive[sent].astype(np.int64)
    order = np.argsort(d, kind="stable")
    return d[order], a[order]


def bin_timeline(depart_ns: np.ndarray, arrive_ns: np.ndarray, event_start_ns: int,
                 bin_ns: int = BIN_NS) -> Timeline:
    """Bin sent packets by departure (``arrive_ns`` 0: lost), edges aligned on the event."""
    if not len(depart_ns):
        empty = np.zeros(0, dtype=np.int64)
        return Timeline(event_start_ns, bin_ns, empty, empty, empty.astype(float),
                        empty.astype(float))
    idx = np.floor_divide(depart_ns - event_start_ns, bin_ns)
    first = int(idx.min())
    idx = idx - first
    n = int(idx.max()) + 1
    sent = np.bincount(idx, minlength=n).astype(np.int64)
    ok = arrive_ns != 0
    delivered = np.bincount(idx[ok], minlength=n).astype(np.int64)
    p50 = np.full(n, np.nan)
    p99 = np.full(n, np.nan)
    lat = (arrive_ns[ok] - depart_ns[ok])
    bins = idx[ok]
    if len(lat):
        order = np.argsort(bins, kind="stable")
        bins, lat = bins[order], lat[order]
        cuts = np.flatnonzero(np.diff(bins)) + 1
        for b, group in zip(bins[np.r_[0, cuts]], np.split(lat, cuts), strict=True):
            p50[b], p99[b] = np.percentile(group, (50, 99))
    return Timeline(event_start_ns + first * bin_ns, bin_ns, sent, delivered, p50, p99)


def longest_gap_ns(depart_ns: np.ndarray, arrive_ns: np.ndarray,
                   ends_after_ns: int | None = None, ends_by_ns: int | None = None) -> int:
    """The longest time packets were in flight with no arrival (see the module doc).

    For each gap between consecutive arrivals (and from the first departure to
    the first arrival, and from the last arrival to the last departure), its
    part from the first departure inside it: a pause of the sender is not a
    stall of the datapath. Only gaps that end after ``ends_after_ns`` / by
    ``ends_by_ns`` count, when given. ``depart_ns`` sorted.
    """
    if not len(depart_ns):
        return 0
    arrivals = np.sort(arrive_ns[arrive_ns != 0])
    first, last = int(depart_ns[0]), int(depart_ns[-1])
    ends = np.concatenate((arrivals, [max(last, int(arrivals[-1]) if len(arrivals) else last)]))
    begins = np.concatenate(([first - 1], arrivals))
    # The first departure after each gap's begin (none: nothing sent in it).
    nxt = np.searchsorted(depart_ns, begins, side="right")
    sent_in = nxt < len(depart_ns)
    d = np.where(sent_in, depart_ns[np.minimum(nxt, len(depart_ns) - 1)], ends)
    gaps = np.where(sent_in & (d < ends), ends - np.maximum(begins, d), 0)
    keep = np.ones(len(gaps), dtype=bool)
    if ends_after_ns is not None:
        keep &= ends > ends_after_ns
    if ends_by_ns is not None:
        keep &= ends <= ends_by_ns
    return int(gaps[keep].max()) if keep.any() else 0


def _p99(depart_ns: np.ndarray, arrive_ns: np.ndarray) -> float | None:
    ok = arrive_ns != 0
    if not ok.any():
        return None
    return float(np.percentile(arrive_ns[ok] - depart_ns[ok], 99))


def normal_bins(tl: Timeline, event_start_ns: int,
                baseline_from_ns: int | None = None) -> np.ndarray | None:
    """Which bins are normal (see the module doc); the baseline bins are those wholly
    before the event (from ``baseline_from_ns`` on). None: no baseline bin."""
    starts = tl.starts_ns()
    base = starts + tl.bin_ns <= event_start_ns
    if baseline_from_ns is not None:
        base &= starts >= baseline_from_ns
    base &= tl.sent > 0
    if not base.any():
        return None
    loss = np.where(tl.sent > 0, tl.lost / np.maximum(tl.sent, 1), 0.0)
    max_loss = float(loss[base].max())
    base_p99 = tl.p99_ns[base]
    max_p99 = float(np.nanmax(base_p99)) if np.isfinite(base_p99).any() else np.inf
    p99 = np.where(np.isnan(tl.p99_ns), -np.inf, tl.p99_ns)
    normal = (loss <= max_loss) & (p99 <= max_p99)
    # A bin with nothing delivered but something sent is lost traffic: not normal.
    normal &= ~((tl.sent > 0) & (tl.delivered == 0))
    return normal


def recovery_ns(tl: Timeline, event_start_ns: int, event_end_ns: int,
                run: int = RECOVERY_RUN, baseline_from_ns: int | None = None) -> int | None:
    """Event end -> the first run of ``run`` normal bins (see the module doc)."""
    normal = normal_bins(tl, event_start_ns, baseline_from_ns)
    if normal is None:
        return None
    starts = tl.starts_ns()
    first = int(np.searchsorted(starts + tl.bin_ns, event_end_ns, side="right"))
    streak = 0
    for i in range(first, len(normal)):
        streak = streak + 1 if normal[i] else 0
        if streak == run:
            back = int(starts[i - run + 1])
            return max(0, back - event_end_ns)
    return None


def summarise(depart_ns: np.ndarray, arrive_ns: np.ndarray, event_start_ns: int,
              event_end_ns: int, bin_ns: int = BIN_NS,
              baseline_ns: int | None = None) -> tuple[Timeline, dict[str, Any]]:
    """The timeline and the event's figures (see the module doc) of sent packets
    ``depart_ns`` (sorted) with ``arrive_ns`` (0: lost); the baseline is the last
    ``baseline_ns`` before the event (None: all of the traffic before it)."""
    tl = bin_timeline(depart_ns, arrive_ns, event_start_ns, bin_ns)
    after = depart_ns >= event_start_ns
    base_from = None if baseline_ns is None else event_start_ns - baseline_ns
    before = ~after
    if base_from is not None:
        before &= depart_ns >= base_from
    # The bins the event overlaps: at least one bin's worth of packets for its p99.
    lo = event_start_ns
    hi = event_start_ns + -(-(max(event_end_ns, event_start_ns + 1) - event_start_ns)
                            // bin_ns) * bin_ns
    during = (depart_ns >= lo) & (depart_ns < hi)
    base_p99 = _p99(depart_ns[before], arrive_ns[before])
    ev_p99 = _p99(depart_ns[during], arrive_ns[during])
    rec = recovery_ns(tl, event_start_ns, event_end_ns, baseline_from_ns=base_from)
    normal = normal_bins(tl, event_start_ns, base_from)
    after_end = tl.starts_ns() + tl.bin_ns > event_end_ns  # from the bin holding the end
    off_after = (None if normal is None
                 else int(np.count_nonzero(after_end & ~normal)) * bin_ns / 1e6)
    figures = {
        "stall_ms": longest_gap_ns(depart_ns, arrive_ns, ends_after_ns=event_start_ns) / 1e6,
        "baseline_stall_ms": longest_gap_ns(depart_ns[before], arrive_ns[before],
                                            ends_by_ns=event_start_ns) / 1e6,
        "lost": int(np.count_nonzero(arrive_ns[after] == 0)),
        "baseline_lost": int(np.count_nonzero(arrive_ns[before] == 0)),
        "sent": int(len(depart_ns)),
        "delivered": int(np.count_nonzero(arrive_ns)),
        "baseline_p99_ns": base_p99,
        "event_p99_ns": ev_p99,
        "excess_p99_ns": (ev_p99 - base_p99 if ev_p99 is not None and base_p99 is not None
                          else None),
        "recovery_ms": rec / 1e6 if rec is not None else None,
        "off_baseline_after_ms": off_after,
        "event_ms": (event_end_ns - event_start_ns) / 1e6,
    }
    return tl, figures
