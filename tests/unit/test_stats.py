"""Latency statistics on synthetic data whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.analysis import stats
from bench.analysis.stats import MAX_RELATIVE_ERROR, Histogram, merge, percentiles, summary

US = 1000  # ns


def uniform_1_to_1000_us() -> np.ndarray:
    return np.arange(1, 1001, dtype=np.int64) * US


def test_uniform_exact_percentiles_from_samples() -> None:
    s = summary(uniform_1_to_1000_us())
    # Nearest rank: p99.9 of 1000 samples is the 999th, not the 1000th.
    assert s == {"count": 1000, "min": 1 * US, "mean": 500.5 * US, "p50": 500 * US,
                 "p90": 900 * US, "p99": 990 * US, "p99.9": 999 * US, "max": 1000 * US}


def test_uniform_histogram_within_stated_error() -> None:
    samples = uniform_1_to_1000_us()
    h = Histogram.from_samples(samples)
    exact = percentiles(samples)
    approx = percentiles(h)
    for key, want in exact.items():
        assert abs(approx[key] - want) / want <= MAX_RELATIVE_ERROR, key
    s = summary(h)
    # count, min, mean and max are kept exactly, not from buckets.
    assert (s["count"], s["min"], s["mean"], s["max"]) == (1000, 1 * US, 500.5 * US, 1000 * US)


def test_relative_error_bound_holds_across_the_range() -> None:
    rng = np.random.default_rng(23)
    # Log-uniform from 100 ns to 10 s: every octave of the histogram gets samples.
    samples = np.exp(rng.uniform(np.log(100), np.log(1e10 - 1), 200_000))
    h = Histogram.from_samples(samples)
    assert h.underflow == 0 and h.overflow == 0
    qs = [0.1, 1, 5, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100]
    exact = percentiles(samples, qs)
    approx = percentiles(h, qs)
    worst = max(abs(approx[k] - exact[k]) / exact[k] for k in exact)
    assert worst <= MAX_RELATIVE_ERROR * (1 + 1e-9)
    # Every bucket is at most 1/sub_buckets wide relative to its lower edge.
    lower, upper = h.bucket_bounds(np.arange(h.bucket_count))
    assert np.all((upper - lower) / lower <= stats.RELATIVE_WIDTH * (1 + 1e-12))
    assert stats.RELATIVE_WIDTH <= 0.01


def test_every_value_lands_in_a_bucket_that_contains_it() -> None:
    h = Histogram()
    edges_lo, _ = h.bucket_bounds(np.arange(h.bucket_count))
    values = np.concatenate([edges_lo, edges_lo * (1 + 1e-9), np.nextafter(edges_lo, 0)])
    values = values[(values >= h.lowest_ns) & (values < h.highest_ns)]
    lo, hi = h.bucket_bounds(h.bucket_index(values))
    assert np.all((lo <= values * (1 + 1e-12)) & (values < hi * (1 + 1e-12)))


def test_two_runs_merged_equal_one_run_of_the_concatenation() -> None:
    rng = np.random.default_rng(7)
    a = rng.lognormal(np.log(20 * US), 0.5, 5000)
    b = rng.lognormal(np.log(80 * US), 0.8, 3000)
    merged = merge([Histogram.from_samples(a), Histogram.from_samples(b)])
    whole = Histogram.from_samples(np.concatenate([a, b]))
    assert np.array_equal(merged.counts, whole.counts)
    assert (merged.count, merged.min_ns, merged.max_ns) == (whole.count, whole.min_ns,
                                                            whole.max_ns)
    assert merged.sum_ns == pytest.approx(whole.sum_ns)
    assert percentiles(merged) == percentiles(whole)
    # And a list of histograms is merged by percentiles() itself.
    assert percentiles([Histogram.from_samples(a), Histogram.from_samples(b)]) == \
        percentiles(whole)


def test_averaging_per_run_p99_is_wrong() -> None:
    # Run A: 100 packets at 10 us. Run B: 98 at 10 us and 2 outliers at 1 ms.
    run_a = np.full(100, 10 * US)
    run_b = np.concatenate([np.full(98, 10 * US), np.full(2, 1000 * US)])
    averaged = (percentiles(run_a)["p99"] + percentiles(run_b)["p99"]) / 2
    merged = percentiles(np.concatenate([run_a, run_b]))["p99"]
    # 2 slow packets in 200 are 1 %: the p99 (rank 198) is still 10 us.
    assert merged == 10 * US
    assert averaged == 505 * US
    hist = percentiles(merge([Histogram.from_samples(run_a), Histogram.from_samples(run_b)]))
    assert hist["p99"] == pytest.approx(10 * US, rel=MAX_RELATIVE_ERROR)


def test_json_round_trip_is_sparse_and_exact() -> None:
    h = Histogram.from_samples([150, 150, 2_000, 5 * US, 20_000_000_000, 50])
    doc = json.loads(json.dumps(h.to_json()))
    assert len(doc["buckets"]) == 3  # sparse: only the non-empty buckets
    assert doc["underflow"] == 1 and doc["overflow"] == 1
    back = Histogram.from_json(doc)
    assert np.array_equal(back.counts, h.counts) and back.to_json() == h.to_json()
    # Percentiles landing in underflow / overflow are the exact min / max.
    p = percentiles(back, (1, 100))
    assert p == {"p1": 50.0, "p100": 20_000_000_000.0}


def test_malformed_json_is_refused() -> None:
    doc = Histogram.from_samples([1000]).to_json()
    with pytest.raises(ValueError, match="count"):
        Histogram.from_json({**doc, "count": 2})
    with pytest.raises(ValueError, match="kind"):
        Histogram.from_json({**doc, "kind": "hdr"})


def test_merge_refuses_different_parameters() -> None:
    with pytest.raises(ValueError, match="different parameters"):
        merge([Histogram(), Histogram(sub_buckets=64)])


def test_bad_samples_and_quantiles_are_refused() -> None:
    with pytest.raises(ValueError, match="negative or not finite"):
        Histogram.from_samples([100, -5])
    with pytest.raises(ValueError, match="negative or not finite"):
        summary(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="not in"):
        percentiles([1, 2, 3], (0,))


def test_empty() -> None:
    assert summary(np.array([])) == {"count": 0, "min": None, "mean": None, "p50": None,
                                     "p90": None, "p99": None, "p99.9": None, "max": None}
    assert summary(Histogram())["p99"] is None
    assert merge([]).count == 0


def test_nearest_rank_avoids_float_error() -> None:
    assert stats.nearest_rank(99.9, 1000) == 999
    assert stats.nearest_rank(50, 1) == 1
    assert stats.nearest_rank(0.001, 10) == 1


def test_cdf_starts_at_zero_and_ends_at_one() -> None:
    h = Histogram.from_samples([30 * US] * 5)
    xs, fr = h.cdf()
    assert fr[0] == 0 and fr[-1] == 1 and xs[0] == 30 * US
    assert np.all(np.diff(xs) >= 0) and np.all(np.diff(fr) >= 0)
    xs, fr = Histogram.from_samples([50, 1000, 2e10]).cdf()
    assert list(fr) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert Histogram().cdf()[0].size == 0
