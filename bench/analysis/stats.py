"""Latency statistics: a fine log-linear histogram, merging, percentiles, summaries.

Percentiles are always computed from *merged* samples (or the merge of
histograms, which is the same thing up to the bucket width) — never as an
average of per-run percentiles: the p99 of two runs together is not the mean
of their p99s (see tests/unit/test_stats.py for a case where they differ 50x).

The histogram is HDR-like: the range [lowest_ns, highest_ns) is cut into
octaves [lowest*2^k, lowest*2^(k+1)), each split into ``sub_buckets`` linear
buckets. A bucket in octave k is lowest*2^k/sub_buckets wide and starts at no
less than lowest*2^k, so its width relative to any value inside it is at most
1/sub_buckets (0.78 % with the default 128), and a value reported as its
bucket's midpoint is off by at most half that, :data:`MAX_RELATIVE_ERROR`
(0.39 %). Values below ``lowest_ns`` or at/above ``highest_ns`` are counted as
underflow/overflow; a percentile that lands there is reported as the exact
minimum/maximum seen, which bounds it but carries no error guarantee.

Percentile definition: nearest rank (the smallest value v such that at least
q % of the samples are <= v), for samples and histograms alike, so the two
agree to within the bucket error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, cast

import numpy as np
import numpy.typing as npt

DEFAULT_LOWEST_NS = 100
DEFAULT_HIGHEST_NS = 10_000_000_000  # 10 s: anything slower is a failure, not a latency
DEFAULT_SUB_BUCKETS = 128

#: Largest bucket width relative to a value inside it, for the default parameters.
RELATIVE_WIDTH = 1 / DEFAULT_SUB_BUCKETS
#: Largest relative error of a histogram percentile against the exact one (in range).
MAX_RELATIVE_ERROR = RELATIVE_WIDTH / 2

DEFAULT_QUANTILES: tuple[float, ...] = (50, 90, 99, 99.9)

HIST_KIND = "log-linear"

Samples = npt.ArrayLike


def quantile_label(q: float) -> str:
    """The key a percentile is reported under: 50 -> "p50", 99.9 -> "p99.9"."""
    return f"p{q:g}"


@dataclass(eq=False)  # an ndarray field makes the generated __eq__ meaningless
class Histogram:
    """Counts of nanosecond samples in log-linear buckets (see the module docstring).

    Keeps the exact count, sum, minimum and maximum alongside the buckets, so
    ``mean``, ``min`` and ``max`` are exact.
    """

    lowest_ns: int = DEFAULT_LOWEST_NS
    highest_ns: int = DEFAULT_HIGHEST_NS
    sub_buckets: int = DEFAULT_SUB_BUCKETS
    # Empty means "all zeros": __post_init__ sizes it from the parameters.
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    underflow: int = 0
    overflow: int = 0
    count: int = 0
    sum_ns: float = 0.0
    min_ns: float | None = None
    max_ns: float | None = None

    def __post_init__(self) -> None:
        if not (0 < self.lowest_ns < self.highest_ns):
            raise ValueError(f"histogram range must satisfy 0 < lowest < highest, got "
                             f"{self.lowest_ns}..{self.highest_ns}")
        if self.sub_buckets < 2:
            raise ValueError(f"sub_buckets must be >= 2, got {self.sub_buckets}")
        n = self.bucket_count
        if self.counts.size == 0:
            self.counts = np.zeros(n, dtype=np.int64)
        elif self.counts.shape != (n,):
            raise ValueError(f"counts has shape {self.counts.shape}, expected ({n},)")

    # -- shape ---------------------------------------------------------------

    @property
    def octaves(self) -> int:
        """Number of powers of two between lowest_ns and highest_ns (rounded up)."""
        return math.ceil(math.log2(self.highest_ns / self.lowest_ns))

    @property
    def bucket_count(self) -> int:
        return self.octaves * self.sub_buckets

    @property
    def params(self) -> tuple[int, int, int]:
        """What must be equal for two histograms to be merged."""
        return (self.lowest_ns, self.highest_ns, self.sub_buckets)

    def bucket_bounds(self, index: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Lower (inclusive) and upper (exclusive) bound in ns of bucket(s) ``index``."""
        idx = np.asarray(index, dtype=np.int64)
        octave, sub = np.divmod(idx, self.sub_buckets)
        base = self.lowest_ns * np.exp2(octave.astype(np.float64))
        lower = base * (1 + sub / self.sub_buckets)
        upper = np.minimum(base * (1 + (sub + 1) / self.sub_buckets), self.highest_ns)
        return lower, upper

    def bucket_midpoints(self, index: npt.ArrayLike) -> np.ndarray:
        lower, upper = self.bucket_bounds(index)
        return (lower + upper) / 2

    def bucket_index(self, values_ns: npt.ArrayLike) -> np.ndarray:
        """Bucket index of each in-range value (callers filter out of range values first)."""
        v = np.asarray(values_ns, dtype=np.float64) / self.lowest_ns
        # frexp is exact, unlike log2: v = m * 2**e with m in [0.5, 1).
        m, e = np.frexp(v)
        octave = e.astype(np.int64) - 1
        sub = np.floor((2 * m - 1) * self.sub_buckets).astype(np.int64)
        idx = octave * self.sub_buckets + np.minimum(sub, self.sub_buckets - 1)
        # v/lowest may round up to the top edge for a value a hair below highest_ns.
        return np.minimum(idx, self.bucket_count - 1)

    # -- filling -------------------------------------------------------------

    @classmethod
    def from_samples(cls, samples_ns: Samples, lowest_ns: int = DEFAULT_LOWEST_NS,
                     highest_ns: int = DEFAULT_HIGHEST_NS,
                     sub_buckets: int = DEFAULT_SUB_BUCKETS) -> Histogram:
        """A histogram of ``samples_ns`` (any array-like of nanoseconds)."""
        h = cls(lowest_ns=lowest_ns, highest_ns=highest_ns, sub_buckets=sub_buckets)
        h.record(samples_ns)
        return h

    def record(self, samples_ns: Samples) -> None:
        """Add samples (nanoseconds, finite and >= 0) to the histogram."""
        v = _as_samples(samples_ns)
        if v.size == 0:
            return
        low = v < self.lowest_ns
        high = v >= self.highest_ns
        inside = v[~(low | high)]
        self.counts += np.bincount(self.bucket_index(inside), minlength=self.bucket_count)
        self.underflow += int(low.sum())
        self.overflow += int(high.sum())
        self.count += int(v.size)
        self.sum_ns += float(v.sum())
        vmin, vmax = float(v.min()), float(v.max())
        self.min_ns = vmin if self.min_ns is None else min(self.min_ns, vmin)
        self.max_ns = vmax if self.max_ns is None else max(self.max_ns, vmax)

    # -- reading -------------------------------------------------------------

    @property
    def mean_ns(self) -> float | None:
        return self.sum_ns / self.count if self.count else None

    def percentiles(self, qs: Iterable[float] = DEFAULT_QUANTILES) -> dict[str, float | None]:
        """Nearest-rank percentiles, each the midpoint of the bucket holding that rank.

        Clamped to the exact [min, max]; None for every q when the histogram is empty.
        """
        qs = _check_quantiles(qs)
        if self.count == 0:
            return {quantile_label(q): None for q in qs}
        # Cumulative counts over [underflow, buckets..., overflow].
        cum = np.cumsum(np.concatenate(([self.underflow], self.counts, [self.overflow])))
        out: dict[str, float | None] = {}
        assert self.min_ns is not None and self.max_ns is not None
        for q in qs:
            rank = nearest_rank(q, self.count)
            pos = int(np.searchsorted(cum, rank, side="left"))
            if pos == 0:
                value = self.min_ns
            elif pos == len(cum) - 1:
                value = self.max_ns
            else:
                value = float(self.bucket_midpoints(pos - 1))
            out[quantile_label(q)] = min(max(value, self.min_ns), self.max_ns)
        return out

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(x in ns, fraction of samples <= x) at the upper bound of each non-empty bucket.

        Starts with (the smallest sample, 0) so that a step plot shows even a
        single bucket. Underflow is reported at lowest_ns, overflow at max_ns.
        """
        if self.count == 0:
            return np.array([]), np.array([])
        nz = np.flatnonzero(self.counts)
        _, upper = self.bucket_bounds(nz)
        xs = [float(self.min_ns or 0.0), *upper]
        ns = [0, *self.counts[nz]]
        if self.underflow:
            xs.insert(1, float(self.lowest_ns))
            ns.insert(1, self.underflow)
        if self.overflow:
            xs.append(float(self.max_ns or self.highest_ns))
            ns.append(self.overflow)
        return np.asarray(xs, dtype=np.float64), np.cumsum(ns) / self.count

    # -- JSON ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: parameters, exact aggregates, sparse {bucket index: count}."""
        nz = np.flatnonzero(self.counts)
        return {
            "kind": HIST_KIND,
            "lowest_ns": self.lowest_ns,
            "highest_ns": self.highest_ns,
            "sub_buckets": self.sub_buckets,
            "count": self.count,
            "sum_ns": self.sum_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "underflow": self.underflow,
            "overflow": self.overflow,
            "buckets": {str(int(i)): int(self.counts[i]) for i in nz},
        }

    @staticmethod
    def check_json(doc: Mapping[str, Any]) -> tuple[int, int, int]:
        """The parameters of a :meth:`to_json` document; ValueError if :meth:`from_json`
        could not read it. Cheap (no counts array): readers check every histogram."""
        if doc.get("kind") != HIST_KIND:
            raise ValueError(f"histogram kind is {doc.get('kind')!r}, expected {HIST_KIND!r}")
        params = (int(doc["lowest_ns"]), int(doc["highest_ns"]), int(doc["sub_buckets"]))
        lowest, highest, sub = params
        if not (0 < lowest < highest) or sub < 2:
            raise ValueError(f"histogram parameters (lowest, highest, sub_buckets) = {params} "
                             "need 0 < lowest < highest and sub_buckets >= 2")
        n = math.ceil(math.log2(highest / lowest)) * sub
        buckets = doc["buckets"]
        index = [int(k) for k in buckets]
        if index and not (min(index) >= 0 and max(index) < n):
            raise ValueError(f"histogram bucket index out of range 0..{n - 1}")
        counts = [int(c) for c in buckets.values()]
        if counts and min(counts) < 0:
            raise ValueError("histogram bucket with a negative count")
        total = sum(counts) + int(doc["underflow"]) + int(doc["overflow"])
        if total != int(doc["count"]):
            raise ValueError(f"histogram count {doc['count']} != sum of its buckets {total}")
        return params

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Histogram:
        """Inverse of :meth:`to_json`; raises ValueError on a malformed document."""
        lowest, highest, sub = cls.check_json(doc)
        h = cls(lowest_ns=lowest, highest_ns=highest, sub_buckets=sub)
        for k, c in doc["buckets"].items():
            h.counts[int(k)] = int(c)
        h.underflow = int(doc["underflow"])
        h.overflow = int(doc["overflow"])
        h.count = int(doc["count"])
        h.sum_ns = float(doc["sum_ns"])
        h.min_ns = None if doc["min_ns"] is None else float(doc["min_ns"])
        h.max_ns = None if doc["max_ns"] is None else float(doc["max_ns"])
        return h


def _as_samples(samples_ns: Samples) -> np.ndarray:
    v = np.asarray(samples_ns, dtype=np.float64).ravel()
    bad = ~np.isfinite(v) | (v < 0)
    if bad.any():
        # A negative or NaN latency means the probe's clocks or matching are wrong;
        # dropping them silently would hide that.
        raise ValueError(f"{int(bad.sum())} of {v.size} latency samples are negative or "
                         f"not finite (first: {v[bad][0]!r})")
    return v


def nearest_rank(q: float, n: int) -> int:
    """1-based rank of the q-th percentile of n samples: ceil(q/100 * n), at least 1.

    Computed on the decimal value of q, because in floats 99.9/100*1000 is
    999.0000000000001 and the ceiling would pick the wrong sample (numpy's
    ``method="inverted_cdf"`` has exactly that error).
    """
    return max(1, math.ceil(Fraction(str(q)) * n / 100))


def _check_quantiles(qs: Iterable[float]) -> tuple[float, ...]:
    qs = tuple(float(q) for q in qs)
    for q in qs:
        if not 0 < q <= 100:
            raise ValueError(f"percentile {q} is not in (0, 100]")
    return qs


def merge(hists: Iterable[Histogram]) -> Histogram:
    """One histogram holding every sample of ``hists`` (all with the same parameters).

    Merging is exact: the merge of per-run histograms equals the histogram of
    the runs' concatenated samples.
    """
    hists = list(hists)
    if not hists:
        return Histogram()
    first = hists[0]
    out = Histogram(*first.params)
    for i, h in enumerate(hists):
        if h.params != first.params:
            raise ValueError(f"cannot merge histograms with different parameters: "
                             f"#0 has (lowest, highest, sub_buckets) = {first.params}, "
                             f"#{i} has {h.params}")
        out.counts += h.counts
        out.underflow += h.underflow
        out.overflow += h.overflow
        out.count += h.count
        out.sum_ns += h.sum_ns
        if h.min_ns is not None:
            out.min_ns = h.min_ns if out.min_ns is None else min(out.min_ns, h.min_ns)
        if h.max_ns is not None:
            out.max_ns = h.max_ns if out.max_ns is None else max(out.max_ns, h.max_ns)
    return out


HistOrSamples = Histogram | Sequence[Histogram] | Samples


def _resolve(data: HistOrSamples) -> Histogram | np.ndarray:
    if isinstance(data, Histogram):
        return data
    if isinstance(data, Sequence) and data and all(isinstance(h, Histogram) for h in data):
        return merge(cast(Sequence[Histogram], data))
    return _as_samples(cast(Samples, data))


def percentiles(data: HistOrSamples,
                qs: Iterable[float] = DEFAULT_QUANTILES) -> dict[str, float | None]:
    """Nearest-rank percentiles {"p50": ns, ...} of samples, a histogram, or a list of them.

    A list of histograms is merged first; pass every run's samples together
    (``np.concatenate``) rather than combining per-run results.
    """
    d = _resolve(data)
    if isinstance(d, Histogram):
        return d.percentiles(qs)
    qs = _check_quantiles(qs)
    if d.size == 0:
        return {quantile_label(q): None for q in qs}
    ranks = np.array([nearest_rank(q, d.size) for q in qs], dtype=np.int64)
    vals = np.partition(d, ranks - 1)[ranks - 1]
    return {quantile_label(q): float(v) for q, v in zip(qs, vals, strict=True)}


def summary(data: HistOrSamples,
            qs: Iterable[float] = DEFAULT_QUANTILES) -> dict[str, float | int | None]:
    """count, min, mean, the percentiles ``qs`` and max, in ns (None when there are no samples)."""
    d = _resolve(data)
    pct = percentiles(d, qs)
    if isinstance(d, Histogram):
        count, lo, mean, hi = d.count, d.min_ns, d.mean_ns, d.max_ns
    elif d.size:
        count, lo, mean, hi = int(d.size), float(d.min()), float(d.mean()), float(d.max())
    else:
        count, lo, mean, hi = 0, None, None, None
    return {"count": count, "min": lo, "mean": mean, **pct, "max": hi}
