"""The run-level test (bench.analysis.runlevel): floors, moderation and the correction, on
numbers whose right answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.analysis import runlevel as rt
from bench.analysis.metrics import METRICS_BY_NAME
from tests.helpers.synthetic_results import point


def _p(base: list[float], new: list[float], resolution: float = 0.0,
       within: float = 0.0) -> float | None:
    """The unmoderated run test of one point (None: no run-to-run spread to judge by)."""
    st = rt.run_stats(base, new, resolution, within)
    return None if st is None else rt.p_value(st)


def test_runs_that_agree_to_a_histogram_bucket_have_not_shown_zero_spread() -> None:
    # Two base runs whose p50 fell into one bucket, a new run 6.7 % off: without the
    # rounding floor the variance would be 0 and any change "certain" (p = 0).
    assert _p([5937.5, 5937.5], [6337.5]) == 0.0
    assert _p([5937.5, 5937.5], [6337.5], 1 / 128) > 0.02
    assert _p([5937.5, 5937.5], [5937.5], 1 / 128) == 1.0
    assert _p([1.0], [2.0]) is None  # one run a side: no spread to judge by


def test_runs_that_happen_to_agree_do_not_make_their_repetitions_noise_a_change() -> None:
    # Two base runs agree by chance, though each run's repetitions spread by 30 %: a new
    # run 20 % off is not outside what one run's own repetitions allow.
    rng = np.random.default_rng(4)
    noisy = [point(rng, jitter=0.3, reps=3) for _ in range(3)]
    within = rt.within_run_variance(METRICS_BY_NAME["p50_latency"], noisy)
    assert within > 0.01  # about 0.3^2 / 3 in logs
    assert _p([10_000, 10_000], [12_000]) == 0.0
    assert _p([10_000, 10_000], [12_000], within=within) > 0.05


def test_a_difference_metric_is_tested_the_same_wherever_zero_falls() -> None:
    # Service minus control at three points of one metric: one crosses zero. In logs the
    # all-positive points would be tested on another scale than the one that crosses zero
    # (and moderated together with it); as figures, a shift changes nothing.
    points = [([80.0, 120.0, 100.0], [400.0]), ([-60.0, 40.0, -10.0], [300.0]),
              ([900.0, 1100.0, 1000.0], [1300.0])]
    for shift in (0.0, 5_000.0):
        stats = [rt.run_stats([v + shift for v in b], [v + shift for v in n], difference=True)
                 for b, n in points]
        assert [st.diff for st in stats] == pytest.approx([300.0, 310.0, 300.0])  # type: ignore[union-attr]
        assert [st.var for st in stats] == pytest.approx([800 / 2, 5_000 / 2, 20_000 / 2])  # type: ignore[union-attr]
    within = rt.within_run_variance(METRICS_BY_NAME["service_minus_control_p50_ns"], [])
    assert within == 0.0


def test_benjamini_hochberg_matches_the_textbook() -> None:
    q = rt.benjamini_hochberg([0.01, 0.04, 0.03, 0.005])
    assert q == pytest.approx([0.02, 0.04, 0.04, 0.02])


BH_VECTORS = [
    [0.01, 0.04, 0.03, 0.005], [1.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5],
    [0.2, 0.2, 0.01, 1.0, 0.04], [0.05] * 10 + [0.001],
    list(np.random.default_rng(0).uniform(size=462)),  # a suite's worth of run tests
    list(np.random.default_rng(1).uniform(size=50) ** 4),  # many small p-values
]


def _step_up(p: list[float]) -> list[float]:
    """Benjamini-Hochberg by its definition (the implementation kpbench had before it took
    scipy's): q of the i-th smallest p is min over j >= i of p_(j) * m / j, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = min(1.0, running)
    return q


@pytest.mark.parametrize("p", BH_VECTORS, ids=[str(len(v)) for v in BH_VECTORS])
def test_benjamini_hochberg_gives_the_step_up_q_values(p: list[float]) -> None:
    # The same step-up, its products taken in another order: equal to the last bit or two.
    assert rt.benjamini_hochberg(p) == pytest.approx(_step_up(p), rel=1e-14, abs=1e-15)
    assert rt.benjamini_hochberg([]) == []


def test_trigamma_inverse_inverts() -> None:
    from scipy.special import polygamma

    for y in (0.3, 2.0, 7.5, 40.0):
        assert rt.trigamma_inverse(float(polygamma(1, y))) == pytest.approx(y, rel=1e-6)


def _stats(rng: np.random.Generator, sd: float, n_points: int, k: int = 5,
           shift: float = 0.0) -> list[rt.RunStats]:
    """Points whose runs vary by ``sd`` (log), ``k`` base runs vs one new run."""
    out = []
    for _ in range(n_points):
        base = np.exp(rng.normal(0, sd, k)) * 1000
        new = np.exp(rng.normal(shift, sd, 1)) * 1000
        st = rt.run_stats(list(base), list(new))
        assert st is not None
        out.append(st)
    return out


def test_the_prior_recovers_the_common_spread_of_the_points() -> None:
    rng = np.random.default_rng(11)
    prior = rt.fit_prior(_stats(rng, 0.1, 400))
    assert prior is not None
    assert math.sqrt(prior.var) == pytest.approx(0.1, rel=0.15)
    assert prior.df > 20  # all points alike: the prior is worth many runs
    assert rt.fit_prior(_stats(rng, 0.1, 4)) is None  # too few points to fit


def test_moderation_finds_a_broad_slowdown_five_runs_alone_cannot() -> None:
    """40 points whose runs spread by 10 %; the new run 40 % slower at every point.
    With each point's own 4 degrees of freedom the corrected test misses most of
    them; moderated over the points it finds nearly all, and same-run noise stays
    quiet."""
    rng = np.random.default_rng(5)

    def found(stats: list[rt.RunStats], moderate: bool) -> int:
        prior = rt.fit_prior(stats) if moderate else None
        q = rt.benjamini_hochberg([rt.p_value(st, prior) for st in stats])
        return sum(v < 0.05 for v in q)

    slow = _stats(rng, 0.1, 40, shift=math.log(1.4))
    assert found(slow, moderate=False) < 20
    assert found(slow, moderate=True) >= 30
    same = _stats(rng, 0.1, 40)
    assert found(same, moderate=True) == 0


def test_a_noisier_point_keeps_its_own_spread() -> None:
    # Points whose runs spread anywhere from 2 % to 30 % (as the datapaths and workloads
    # of one metric do here) and one whose runs spread by 30 %: the prior is worth
    # little, and a 50 % change at the noisy point stays within its own drift.
    rng = np.random.default_rng(8)
    stats = [st for sd in np.linspace(0.02, 0.3, 39) for st in _stats(rng, float(sd), 1)]
    noisy = rt.run_stats([1000.0, 1500.0, 800.0, 1300.0, 700.0], [1500.0])
    assert noisy is not None
    prior = rt.fit_prior([*stats, noisy])
    assert prior is not None and prior.df < 10  # the points differ: the prior says so
    assert rt.p_value(noisy, prior) > 0.05
