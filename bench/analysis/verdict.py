"""The verdict on one metric of one point, BASE vs NEW, and the gates that act on it.

bench.analysis.compare gathers the evidence (the figures, the Mann-Whitney U
p-value over repetitions, the run-level q-value); :func:`judge` turns it into
a :class:`Verdict` and the :class:`Reason` for it, in one place, and the
output (tables, JSON, JUnit) shows that verdict without deciding anything:

- measured on one side only: ``only in BASE`` / ``only in NEW``;
- *untested*: too few repetitions for the exact test to ever reach p < alpha,
  and no runs to test across either;
- *same*, because the repetitions do not differ (not significant), or the
  change is below the minimum effect (whether the test found it significant
  or there was no repetition test), or the whole runs do not differ (run
  drift);
- *regression* / *improvement* (by the metric's direction) otherwise.

The minimum effect is relative (``min_effect_pct``) for every metric but a
*difference* of two figures (Service minus its paired control): that one sits
near zero and may change sign, so a percentage of it means nothing; its
effect, minimum effect and gate threshold are absolute, in the metric's unit
(ns). The defaults of every threshold are here and nowhere else.

No numpy or scipy at import: ``kpbench compare``'s parser reads the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from bench.errors import InputError

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT_PCT = 5.0
#: The minimum effect of a difference metric (Service minus paired control). At the
#: committed baseline's points the Service adds 0.1-2 µs of p50 latency to a control of
#: 2.5-15 µs, whose histogram buckets are 20-120 ns wide (1/128 of the figure): half a
#: microsecond is a few buckets, and a few % of the control's own latency.
DEFAULT_MIN_EFFECT_NS = 500.0


class Verdict(StrEnum):
    """What happened to a metric at a point (the strings are what JSON and CSV carry)."""

    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    SAME = "same"
    UNTESTED = "untested"
    ONLY_IN_BASE = "only in BASE"
    ONLY_IN_NEW = "only in NEW"


class Reason(StrEnum):
    """Why the verdict is what it is."""

    SIGNIFICANT = "significant"  # regression or improvement: every test and the effect agree
    NOT_SIGNIFICANT = "not significant"  # the repetitions' p >= alpha
    SIGNIFICANT_BELOW_MIN_EFFECT = "significant but below the minimum effect"
    BELOW_MIN_EFFECT = "below the minimum effect"  # no repetition test (one figure per run)
    RUN_DRIFT = "within run-to-run drift"  # the repetitions differ, whole runs do not
    TOO_FEW_REPETITIONS = "too few repetitions"
    ONE_SIDE = "measured on one side only"


@dataclass(frozen=True)
class Thresholds:
    """The significance level and the minimum effects a verdict is judged by."""

    alpha: float = DEFAULT_ALPHA
    min_effect_pct: float = DEFAULT_MIN_EFFECT_PCT
    min_effect_ns: float = DEFAULT_MIN_EFFECT_NS

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha must be between 0 and 1, got {self.alpha}",
                             source="--alpha")
        if self.min_effect_pct < 0:
            raise InputError(f"must be >= 0, got {self.min_effect_pct}", source="--min-effect")
        if self.min_effect_ns < 0:
            raise InputError(f"must be >= 0, got {self.min_effect_ns}",
                             source="--min-effect-ns")

    def min_effect(self, absolute: bool) -> float:
        """The minimum effect of a relative (%) or an absolute (difference) metric."""
        return self.min_effect_ns if absolute else self.min_effect_pct

    def min_effect_text(self, absolute: bool) -> str:
        return f"{self.min_effect_ns:g} ns" if absolute else f"{self.min_effect_pct:g}%"


def effect_text(effect: float, absolute: bool) -> str:
    """A change for a message: "+20.1%", or "+1,860 ns" for a difference metric."""
    return f"{effect:+,.0f} ns" if absolute else f"{effect:+.1f}%"


def min_p_value(n: int, m: int) -> float:
    """The smallest two-sided p-value the exact Mann-Whitney U test can give for n vs m."""
    return min(1.0, 2 / math.comb(n + m, n))


def min_repetitions(alpha: float) -> int:
    """Repetitions needed on each side for the exact test to be able to reach p < alpha."""
    n = 1
    while min_p_value(n, n) >= alpha:
        n += 1
    return n


@dataclass(frozen=True)
class Judgement:
    """A verdict, its reason, and the numbers behind it in words (the tables' note)."""

    verdict: Verdict
    reason: Reason
    note: str

    def label(self, n_base: int, n_new: int) -> str:
        """The verdict as the tables show it."""
        if self.verdict is Verdict.REGRESSION:
            return "REGRESSION"
        if self.verdict is Verdict.UNTESTED:
            return f"untested (n={n_base}/{n_new})"
        if self.reason is Reason.RUN_DRIFT:
            return "same (run drift)"
        if self.reason is Reason.SIGNIFICANT_BELOW_MIN_EFFECT:
            return "same (small)"
        return str(self.verdict)


def judge(*, n_base: int, n_new: int, effect: float | None, absolute: bool, worse: bool,
          p_value: float | None, run_tested: bool, run_q_value: float | None,
          runs_base: int, runs_new: int, thresholds: Thresholds) -> Judgement:
    """The verdict on one metric at one point, from all the evidence at once.

    ``effect`` is the change in % (or, ``absolute``, in the metric's unit) and
    ``worse`` whether it went in the metric's bad direction; ``p_value`` is the
    repetition test's (None when the exact test cannot reach alpha);
    ``run_tested`` says whether the sides have runs to compare, and
    ``run_q_value`` is that test's Benjamini-Hochberg corrected p.
    """
    alpha = thresholds.alpha
    if not n_base or not n_new:
        return Judgement(Verdict.ONLY_IN_BASE if n_base else Verdict.ONLY_IN_NEW,
                         Reason.ONE_SIDE, f"not measured in {'NEW' if n_base else 'BASE'}")
    if p_value is None and not run_tested:
        return Judgement(Verdict.UNTESTED, Reason.TOO_FEW_REPETITIONS,
                         f"too few repetitions: {n_base} vs {n_new}; the Mann-Whitney U test "
                         f"cannot reach p < {alpha:g} (it needs >= {min_repetitions(alpha)} "
                         f"per side, or a base pooled from several runs with "
                         f"`kpbench baseline`)")
    if p_value is not None and p_value >= alpha:
        return Judgement(Verdict.SAME, Reason.NOT_SIGNIFICANT,
                         f"not significant (p={p_value:.2g})")
    if effect is None or abs(effect) < thresholds.min_effect(absolute):
        small = f"below the {thresholds.min_effect_text(absolute)} minimum effect"
        if p_value is None:
            return Judgement(Verdict.SAME, Reason.BELOW_MIN_EFFECT, small)
        return Judgement(Verdict.SAME, Reason.SIGNIFICANT_BELOW_MIN_EFFECT,
                         f"significant (p={p_value:.2g}) but {small}")
    note = f"p={p_value:.2g}" if p_value is not None else "one figure per run"
    verdict = Verdict.REGRESSION if worse else Verdict.IMPROVEMENT
    if run_q_value is None:
        return Judgement(verdict, Reason.SIGNIFICANT, note)
    runs = f"{runs_base} vs {runs_new} runs, q={run_q_value:.2g}"
    if run_q_value < alpha:
        return Judgement(verdict, Reason.SIGNIFICANT, f"{note}; runs differ ({runs})")
    return Judgement(Verdict.SAME, Reason.RUN_DRIFT, f"{note}; within run-to-run drift ({runs})")


# -- gates ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gate:
    """``--fail-on METRIC:THRESHOLD``: a significant regression of METRIC beyond it fails.

    The threshold is a percentage, or ns for a difference metric (``absolute``).
    """

    metric: str
    threshold: float
    absolute: bool = False

    @property
    def threshold_text(self) -> str:
        """"10%", or "500ns" for a difference metric."""
        return f"{self.threshold:g}{'ns' if self.absolute else '%'}"

    def __str__(self) -> str:
        return f"{self.metric}:{self.threshold_text}"

    def exceeded_by(self, effect: float | None) -> bool:
        """Whether a change of ``effect`` (in the gate's terms) is beyond the threshold."""
        return effect is not None and abs(effect) > self.threshold


def parse_gate(text: str) -> Gate:
    """Parse ``METRIC:PCT`` (``p99_latency:10%``, ``sync_full:20``), or ``METRIC:NS`` for a
    difference metric (``service_minus_control_p50_ns:500ns``); InputError if malformed."""
    from bench.analysis.metrics import METRICS_BY_NAME  # numpy: not for the parser

    name, sep, value_text = text.rpartition(":")
    if not sep or not name:
        raise InputError(f"{text!r} is not METRIC:PCT (e.g. p99_latency:10%)",
                         source="--fail-on")
    if name not in METRICS_BY_NAME:
        raise InputError(f"unknown metric {name!r}; known: {', '.join(METRICS_BY_NAME)}",
                         source="--fail-on")
    absolute = METRICS_BY_NAME[name].absolute
    raw = value_text.strip()
    if absolute and raw.endswith("%"):
        raise InputError(f"{name} is a difference (Service minus its paired control) that sits "
                         f"near zero, so a percentage of it means nothing: give its threshold "
                         f"in ns, e.g. {name}:500ns", source="--fail-on")
    if absolute and not raw.endswith("ns"):
        # Explicit: a bare number meant % here before these metrics were judged in ns.
        raise InputError(f"{name} is judged in ns: give the unit, e.g. {name}:500ns",
                         source="--fail-on")
    if not absolute and raw.endswith("ns"):
        raise InputError(f"{name}'s threshold is a percentage, e.g. {name}:10%",
                         source="--fail-on")
    number = raw.removesuffix("ns" if absolute else "%")
    unit = "ns" if absolute else "a percentage"
    try:
        value = float(number)
    except ValueError:
        raise InputError(f"{value_text!r} in {text!r} is not {unit}", source="--fail-on")
    if not math.isfinite(value) or value < 0:
        raise InputError(f"threshold {value_text!r} must be {unit} >= 0", source="--fail-on")
    return Gate(name, value, absolute)
