"""The probe-overhead estimator (bench.measure.overhead.estimate): quietest bursts, paired
spread."""

from __future__ import annotations

import pytest

from bench.measure.overhead import estimate


def test_added_cost_is_the_quietest_burst_less_the_quietest_without_probes() -> None:
    # The path costs 3000 ns, the probes 90; other processes' work lands on some bursts.
    noise = [0, 800, 150, 0, 2000]
    samples = {"none": [3000 + n for n in noise],
               "main": [3090 + n for n in reversed(noise)],
               "breakdown": [3900 + n for n in noise]}
    out = estimate(samples)
    assert out["none_ns_per_packet"] == 3000
    assert out["main_ns_per_packet"] == pytest.approx(90)
    assert out["main_pct_of_path"] == pytest.approx(3.0)
    assert out["breakdown_ns_per_packet"] == pytest.approx(900)
    # The paired differences carry the noise: kept as the spread, not as the figure.
    lo, hi = out["main_ns_per_packet_range"]
    assert lo == pytest.approx(90 - 2000) and hi == pytest.approx(90 + 2000)
    assert out["breakdown_ns_per_packet_paired_median"] == pytest.approx(900)
    assert out["samples"]["none"] == [3000 + n for n in noise]


def test_rounds_must_pair() -> None:
    with pytest.raises(ValueError):
        estimate({"none": [1.0, 2.0], "main": [1.0]})
