"""Does a new run stand out from the baseline's runs? The run-level test of bench.analysis.compare.

Runs of the same code on one machine differ by more than the repetitions
inside one run, so bench.analysis.compare also compares whole runs: each run's figure
of a metric at a point (bench.results.model.Point.runs splits a pooled baseline back
into its runs), in logarithms (changes are relative), by a two-sample t test.

With five runs a point's own between-run variance has 4 degrees of freedom:
the t test is then so unsure of it that only changes of about twice the
usual spread reach significance — and a suite has hundreds of tests, so the
Benjamini-Hochberg correction asks more still. The spread between runs is,
however, alike across the points of one metric. So each point's variance is
moderated toward the metric's typical one, the empirical Bayes step of
limma (Smyth 2004, "Linear models and empirical Bayes methods for assessing
differential expression in microarray experiments"): the variances of all
points of the metric are fitted by a scaled inverse chi-square distribution
(prior variance s0², prior degrees of freedom d0), each point's variance
becomes (d0·s0² + ss) / (d0 + df), and the t test gets d0 + df degrees of
freedom. Points that really are noisier keep most of their own variance
when the fitted d0 is small, which it is when the variances differ widely.

A difference of two figures (Service minus its paired control) sits near
zero and may change sign: its figures are compared as they are, in ns, never
in logarithms, so that every point of such a metric has its variance on one
scale for the moderation, and where zero falls does not change the test.

Two floors keep a variance honest: what a run's figure varies by from its
own repetitions alone (runs that happen to agree have not shown that runs
agree), and the rounding of the figure (a histogram bucket, a settle round).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.analysis.metrics import Metric, PointLike


@dataclass(frozen=True)
class RunStats:
    """The per-run figures of one metric at one point, BASE vs NEW, reduced for the test."""

    diff: float  # mean(NEW) - mean(BASE), of logs when every figure is positive
    # (never for a difference metric)
    ss: float  # sum of squares of each side's figures about their side's mean
    df: int  # k + m - 2
    k: int  # runs in BASE
    m: int  # runs in NEW
    floor: float  # the least variance one run's figure can have (repetitions, rounding)

    @property
    def var(self) -> float:
        """The point's own between-run variance (0 when it has no degree of freedom)."""
        return self.ss / self.df if self.df else 0.0


@dataclass(frozen=True)
class Prior:
    """The typical between-run variance of a metric, as fitted over its points."""

    var: float
    df: float  # how many degrees of freedom the prior is worth (inf: all points alike)


def run_values(metric: Metric, runs: Sequence[PointLike]) -> list[float]:
    """The metric's figure in each run a point was measured in."""
    out = []
    for p in runs:
        v = metric.pooled(p)
        if v is None:
            samples = metric.samples(p)
            v = statistics.median(samples) if samples else None
        if v is not None and math.isfinite(v):
            out.append(float(v))
    return out


def within_run_variance(metric: Metric, runs: Sequence[PointLike]) -> float:
    """The variance (of logs; of the figures themselves for a difference metric) a run's
    figure has from its own repetitions alone: the pooled spread of the per-repetition
    samples inside each run, over a run's count. 0 when the samples cannot say (fewer than
    two per run, or, in logs, not all positive)."""
    ss, df, n = 0.0, 0, 0
    for p in runs:
        samples = metric.samples(p)
        if len(samples) < 2 or (not metric.difference and min(samples) <= 0):
            continue
        values = samples if metric.difference else [math.log(v) for v in samples]
        mean = statistics.fmean(values)
        ss += sum((v - mean) ** 2 for v in values)
        df += len(values) - 1
        n += 1
    return ss / df / ((df + n) / n) if df else 0.0


def run_stats(base: Sequence[float], new: Sequence[float], resolution: float = 0.0,
              within: float = 0.0, difference: bool = False) -> RunStats | None:
    """Reduce per-run figures for the test; None when neither side has two runs (there
    is no run-to-run spread to judge by). ``resolution`` is relative (a bucket's width),
    ``within`` a variance of logs (:func:`within_run_variance`); for a ``difference``
    metric the figures stay as they are and ``within`` is in their unit squared."""
    k, m = len(base), len(new)
    if not k or not m or max(k, m) < 2:
        return None
    xs, ys = list(base), list(new)
    floor = 0.0
    if difference:
        floor = within
    elif all(v > 0 for v in xs + ys):
        xs, ys = [math.log(v) for v in xs], [math.log(v) for v in ys]
        floor = max(within, math.log1p(resolution) ** 2 / 12)  # rounding: uniform error
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    ss = sum((v - mx) ** 2 for v in xs) + sum((v - my) ** 2 for v in ys)
    return RunStats(diff=my - mx, ss=ss, df=k + m - 2, k=k, m=m, floor=floor)


def p_value(st: RunStats, prior: Prior | None = None) -> float:
    """Two-sided p of the (moderated, with ``prior``) two-sample t test."""
    from scipy.stats import norm, t  # type: ignore[import-untyped]

    if prior is None or prior.df == 0:
        var, df = st.var, float(st.df)
    elif math.isinf(prior.df):
        var, df = prior.var, math.inf
    else:
        var, df = (prior.df * prior.var + st.ss) / (prior.df + st.df), prior.df + st.df
    var = max(var, st.floor)
    if var == 0 or df == 0:
        return 1.0 if st.diff == 0 else 0.0
    z = abs(st.diff) / math.sqrt(var * (1 / st.k + 1 / st.m))
    return float(2 * (norm.sf(z) if math.isinf(df) else t.sf(z, df)))


def trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Smyth's Newton iteration, as limma's trigammaInverse)."""
    from scipy.special import polygamma  # type: ignore[import-untyped]

    if x > 1e7:
        return 1 / math.sqrt(x)
    if x < 1e-6:
        return 1 / x
    y = 0.5 + 1 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1 - tri / x) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


MIN_POINTS_FOR_PRIOR = 5


def fit_prior(stats: Sequence[RunStats]) -> Prior | None:
    """Fit a scaled inverse chi-square distribution to the points' variances (limma's
    fitFDist, by moments of log variances). None with fewer than
    :data:`MIN_POINTS_FOR_PRIOR` points that have a variance."""
    from scipy.special import digamma, polygamma  # type: ignore[import-untyped]

    usable = [s for s in stats if s.df > 0 and s.var > 0]
    if len(usable) < MIN_POINTS_FOR_PRIOR:
        return None
    e = [math.log(s.var) - float(digamma(s.df / 2)) + math.log(s.df / 2) for s in usable]
    emean = statistics.fmean(e)
    evar = statistics.variance(e) - statistics.fmean(
        [float(polygamma(1, s.df / 2)) for s in usable])
    if evar <= 0:
        return Prior(var=math.exp(emean), df=math.inf)
    d0 = 2 * trigamma_inverse(evar)
    return Prior(var=math.exp(emean + float(digamma(d0 / 2)) - math.log(d0 / 2)), df=d0)


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the order given
    (``scipy.stats.false_discovery_control``)."""
    from scipy.stats import false_discovery_control  # type: ignore[import-untyped]

    if not p_values:
        return []
    return [float(q) for q in false_discovery_control(list(p_values), method="bh")]
