"""Regression comparison of two results: what changed, by how much, and is it real.

For every point (matched by bench.analysis.metrics.point_key) and every metric of
bench.analysis.metrics.METRICS present on both sides, a change is *significant* when

- the two sets of per-repetition samples differ by a two-sided Mann-Whitney U
  test at ``alpha`` (default 0.05) — rank-based, so one slow repetition does
  not decide it and no normality is assumed — **and**
- when a side is a baseline pooled from several runs (bench.results.baseline), the
  runs differ too: a two-sample t test of the per-run figures (their
  logarithms: changes are relative) against the spread between whole runs,
  moderated over the points of each metric and Benjamini-Hochberg corrected
  over every metric so tested (bench.analysis.runlevel). Runs of the same code on one
  machine differ by more than the repetitions inside one run (what else the
  machine did, where the kernel placed its deferred work), so the repetition
  test alone calls ordinary run-to-run drift a regression; and a suite has
  hundreds of metrics, so uncorrected, some always cross ``alpha`` by
  chance — **and**
- the reported figures (pooled over repetitions) differ by at least
  ``min_effect_pct`` (default 5 %) — or, for a difference of two figures
  (Service minus its paired control, near zero), by ``min_effect_ns`` (a
  difference in transactions/s: by ``min_effect_pct`` of BASE's direct-path
  rate, bench.analysis.metrics.Metric.relative_to) — so a
  statistically clear but irrelevant difference is not called a regression
  (asv's rule: different *and* beyond a factor).

It is a regression or an improvement by the metric's direction (lower latency
and CPU are better, higher delivered pps and transactions/s are better). With n and m samples the
exact test cannot go below p = 2 / C(n+m, n): when that is above ``alpha``
(e.g. one sync time per side, or 3 vs 3 repetitions) and there are no runs to
test either, the change is reported as *untested* with the numbers needed,
never as "no change". A metric measured once per run (the full sync of a
packet scenario) is judged by the run test alone, and once per set-up: the
points of one datapath and scale hold copies of its one sync and settle figure
(Metric.per_setup), which are one test and one gate failure, not one per
workload. This module gathers that
evidence; bench.analysis.verdict turns it into the verdict and its reason.

Numbers from different environments are not comparable: :func:`compare_runs`
refuses them, listing every differing key of
:data:`bench.results.environment.ENV_KEYS`, unless told
otherwise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.analysis.metrics import METRICS, Metric, PointKey, key_label, point_key
from bench.analysis.runlevel import (
    RunStats,
    benjamini_hochberg,
    fit_prior,
    p_value,
    run_stats,
    run_values,
    within_run_variance,
)
from bench.analysis.verdict import (  # noqa: F401  (re-exported: the comparison's API)
    DEFAULT_ALPHA,
    DEFAULT_MIN_EFFECT_NS,
    DEFAULT_MIN_EFFECT_PCT,
    Gate,
    Judgement,
    Reason,
    Thresholds,
    Verdict,
    effect_text,
    judge,
    min_p_value,
    min_repetitions,
    parse_gate,
)
from bench.errors import KpbenchError
from bench.results import PointDoc, ResultDoc, iter_points, runs_of
from bench.results.environment import (
    ENV_WARN_IF_RECORDED,
    ENV_WARN_KEYS,
    env_differences,
)
from bench.results.model import scenario_content


class EnvironmentMismatch(KpbenchError):
    """Two results come from environments whose numbers are not comparable."""

    def __init__(self, differences: list[tuple[str, Any, Any]]) -> None:
        self.differences = differences
        listed = "; ".join(f"{k}: {b!r} (BASE) vs {n!r} (NEW)" for k, b, n in differences)
        super().__init__(f"the results come from different environments, their numbers are "
                         f"not comparable — {listed}; pass --allow-env-mismatch to compare "
                         f"anyway")


@dataclass
class MetricChange:
    """One metric of one point, BASE vs NEW."""

    key: PointKey
    metric: Metric
    base: float | None
    new: float | None
    n_base: int
    n_new: int
    # NEW - BASE in %, +inf when BASE is 0 and NEW is not; None for a difference metric
    # (Service minus control: near zero, a percentage of it means nothing).
    change_pct: float | None
    change_abs: float | None  # NEW - BASE, in the metric's unit
    p_value: float | None  # Mann-Whitney U over repetitions
    runs_base: int = 1
    runs_new: int = 1
    run_stats: RunStats | None = None  # per-run figures, for bench.analysis.runlevel
    run_p_value: float | None = None  # the (moderated) t test over runs, uncorrected
    run_q_value: float | None = None  # ... after the Benjamini-Hochberg correction
    judgement: Judgement | None = None  # set once every test is in (compare_runs)
    # BASE's figure a difference metric's change is a % of (Metric.relative_to), if any.
    scale: float | None = None
    # Other points holding the same figure (a per-set-up metric: the scale's one sync).
    shared_with: list[PointKey] = field(default_factory=list)

    @property
    def where(self) -> str:
        """The point's name for messages; a figure several points share says so."""
        label = key_label(self.key)
        n = len(self.shared_with)
        return label if not n else (f"{label} (one figure of its set-up, held by "
                                    f"{n} more point{'s' if n > 1 else ''})")

    def held_by(self) -> str:
        """' (of N points)' for a figure N points share (a set-up's one sync), else ''."""
        n = len(self.shared_with)
        return f" (of {n + 1} points)" if n else ""

    @property
    def effect(self) -> float | None:
        """The change the minimum effect and the gates judge: % (absolute for a difference;
        for a difference judged relative to a figure, % of BASE's figure)."""
        if self.metric.relative_to is not None:
            if self.change_abs is None or not self.scale:
                return None
            return self.change_abs / abs(self.scale) * 100
        return self.change_abs if self.metric.difference else self.change_pct

    def effect_text(self) -> str:
        """The change in words for messages: "+20.1%", "+1,860 ns"; "—" when unknown."""
        e = self.effect
        return "—" if e is None else effect_text(e, self.metric.absolute)

    @property
    def worse(self) -> bool:
        """Whether NEW moved in the metric's bad direction (whatever the significance)."""
        if self.change_abs is None or self.change_abs == 0:
            return False
        return (self.change_abs > 0) == (self.metric.better == "lower")

    def _judged(self) -> Judgement:
        if self.judgement is None:
            raise RuntimeError(f"{key_label(self.key)} {self.metric.name}: not judged yet")
        return self.judgement

    @property
    def verdict(self) -> Verdict:
        return self._judged().verdict

    @property
    def reason(self) -> Reason:
        return self._judged().reason

    @property
    def note(self) -> str:
        return self._judged().note

    @property
    def label(self) -> str:
        """The verdict as the tables show it."""
        return self._judged().label(self.n_base, self.n_new)


@dataclass
class PointChange:
    """A point missing on one side, or not measured ("failed", "exceeded-limit") on one."""

    key: PointKey
    what: str
    # The point was measured in BASE and is missing or not measured in NEW.
    lost: bool


@dataclass
class Comparison:
    """The comparison of one NEW run against one BASE run."""

    base_source: str
    new_source: str
    base: ResultDoc
    new: ResultDoc
    thresholds: Thresholds
    changes: list[MetricChange] = field(default_factory=list)
    points: list[PointChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Points not measured on either side, for the same reason on both.
    unmeasured: int = 0

    @property
    def alpha(self) -> float:
        return self.thresholds.alpha

    @property
    def min_effect_pct(self) -> float:
        return self.thresholds.min_effect_pct

    @property
    def min_effect_ns(self) -> float:
        return self.thresholds.min_effect_ns

    def by_verdict(self, verdict: Verdict | str) -> list[MetricChange]:
        return [c for c in self.changes if c.verdict == verdict]

    def gate_failures(self, gates: Sequence[Gate]) -> list[tuple[Gate, MetricChange]]:
        """Significant regressions beyond a gate's threshold."""
        return [(g, c) for g in gates for c in self.by_verdict(Verdict.REGRESSION)
                if c.metric.name == g.metric and g.exceeded_by(c.effect)]

    def failures(self, gates: Sequence[Gate], fail_on_missing: bool = False) -> list[str]:
        """What fails the comparison, one line each: regressions beyond a gate and, with
        ``fail_on_missing``, points BASE measured that NEW lost."""
        out = []
        for gate, mc in self.gate_failures(gates):
            evidence = (f"p={mc.p_value:.3g}" if mc.p_value is not None else
                        f"runs q={mc.run_q_value:.3g}")
            out.append(f"regression beyond --fail-on {gate}: {mc.where}: "
                       f"{mc.effect_text()} ({evidence})")
        if fail_on_missing:
            out += [f"--fail-on-missing: {key_label(p.key)}: {p.what}"
                    for p in self.points if p.lost]
        return out

    def gate_warnings(self, gates: Sequence[Gate]) -> list[str]:
        """What a gate could not judge: changes beyond it that could not be tested."""
        out = []
        for g in gates:
            rows = [c for c in self.changes if c.metric.name == g.metric]
            if not rows:
                out.append(f"--fail-on {g}: no point has {g.metric} on both sides; "
                           f"this gate checked nothing")
                continue
            beyond = [c for c in rows if c.verdict is Verdict.UNTESTED and c.worse
                      and g.exceeded_by(c.effect)]
            if beyond:
                shown = ", ".join(f"{key_label(c.key)}{c.held_by()} {c.effect_text()} "
                                  f"(n={c.n_base}/{c.n_new})" for c in beyond[:5])
                more = f" and {len(beyond) - 5} more" if len(beyond) > 5 else ""
                # A set-up's one sync is one figure however many points hold it.
                held = sum(1 + len(c.shared_with) for c in beyond)
                what = (f"{len(beyond)} points" if held == len(beyond) else
                        f"{len(beyond)} figures (held by {held} points)")
                out.append(f"--fail-on {g}: {what} got worse beyond it but are "
                           f"untested for too few repetitions, not counted as failures: "
                           f"{shown}{more}")
        return out




def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value; 1.0 when every sample is equal (no evidence at all)."""
    # Imported here: scipy.stats takes over a second to import.
    from scipy.stats import mannwhitneyu  # type: ignore[import-untyped]

    if len(set(a) | set(b)) == 1:
        return 1.0  # scipy returns NaN here: a zero-variance rank statistic
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def relative_change(base: float, new: float) -> float:
    """(new - base) / |base| in percent; +-inf from a zero base, 0 when both are zero."""
    if base == 0:
        return 0.0 if new == 0 else math.copysign(math.inf, new)
    return (new - base) / abs(base) * 100


def compare_metric(key: PointKey, metric: Metric, base: PointDoc, new: PointDoc,
                   alpha: float = DEFAULT_ALPHA,
                   base_runs: Sequence[PointDoc] | None = None,
                   new_runs: Sequence[PointDoc] | None = None) -> MetricChange | None:
    """The evidence on ``metric`` at one point, not yet judged; None when neither side
    measured it. The repetition test runs only when it can reach p < ``alpha``; the
    run-level test needs every change at once (:func:`across_runs`)."""
    bs, ns = metric.samples(base), metric.samples(new)
    if not bs and not ns:
        return None

    def value(p: PointDoc, samples: list[float]) -> float | None:
        v = metric.pooled(p)
        return v if v is not None or not samples else statistics.median(samples)

    bv, nv = value(base, bs), value(new, ns)
    common = dict(key=key, metric=metric, base=bv, new=nv, n_base=len(bs), n_new=len(ns))
    if not bs or not ns:
        return MetricChange(**common, change_pct=None, change_abs=None,  # type: ignore[arg-type]
                            p_value=None)
    both = bv is not None and nv is not None
    change_abs = nv - bv if both else None  # type: ignore[operator]
    change_pct = relative_change(bv, nv) if both and not metric.difference else None  # type: ignore[arg-type]
    base_runs = base_runs if base_runs is not None else runs_of(base)
    new_runs = new_runs if new_runs is not None else runs_of(new)
    rb, rn = run_values(metric, base_runs), run_values(metric, new_runs)
    within = within_run_variance(metric, [*base_runs, *new_runs])
    st = run_stats(rb, rn, metric.resolution, within, metric.difference)
    p = mann_whitney_p(bs, ns) if min_p_value(len(bs), len(ns)) < alpha else None
    scale = metric.relative_to(base) if metric.relative_to is not None else None
    return MetricChange(**common, change_pct=change_pct, change_abs=change_abs,  # type: ignore[arg-type]
                        p_value=p, runs_base=len(rb), runs_new=len(rn), run_stats=st,
                        scale=scale)


def _setup_figure(key: PointKey, metric: Metric, base: PointDoc, new: PointDoc,
                  base_runs: Sequence[Any], new_runs: Sequence[Any]) -> tuple[Any, ...]:
    """What identifies a per-set-up figure (Metric.per_setup): the datapath, scale and
    position of its point, and the figure itself on both sides, per repetition and per
    run — copies of one measurement are equal, two measurements practically never."""
    variant, _, services, endpoints, _, position = key
    return (metric.name, variant, services, endpoints, position,
            tuple(metric.samples(base)), tuple(metric.samples(new)),
            tuple(run_values(metric, base_runs)), tuple(run_values(metric, new_runs)))


def across_runs(changes: Sequence[MetricChange]) -> None:
    """The run-level test (bench.analysis.runlevel) of every change that has runs to compare:
    each metric's variances moderated over its points, then Benjamini-Hochberg over all;
    sets ``run_p_value`` and ``run_q_value``."""
    tested = [mc for mc in changes if mc.run_stats is not None]
    for name in dict.fromkeys(mc.metric.name for mc in tested):
        group = [mc for mc in tested if mc.metric.name == name]
        prior = fit_prior([mc.run_stats for mc in group])  # type: ignore[misc]
        for mc in group:
            mc.run_p_value = p_value(mc.run_stats, prior)  # type: ignore[arg-type]
    qs = benjamini_hochberg([mc.run_p_value for mc in tested])  # type: ignore[misc]
    for mc, q in zip(tested, qs, strict=True):
        mc.run_q_value = q


def judge_change(mc: MetricChange, thresholds: Thresholds) -> Judgement:
    """The verdict on one change, its evidence complete (bench.analysis.verdict.judge)."""
    return judge(n_base=mc.n_base, n_new=mc.n_new, effect=mc.effect,
                 absolute=mc.metric.absolute, worse=mc.worse, p_value=mc.p_value,
                 run_tested=mc.run_stats is not None, run_q_value=mc.run_q_value,
                 runs_base=mc.runs_base, runs_new=mc.runs_new, thresholds=thresholds)


def _status_change(key: PointKey, b: PointDoc | None, n: PointDoc | None) -> PointChange | None:
    def desc(p: PointDoc) -> str:
        return p["status"] + (f" ({p['error']})" if p.get("error") else "")

    if b is None and n is not None:
        return PointChange(key, "only in NEW" + ("" if n["status"] == "ok" else
                                                 f", {desc(n)}"), lost=False)
    if n is None and b is not None:
        return PointChange(key, "only in BASE" + ("" if b["status"] == "ok" else
                                                  f", {desc(b)}"), lost=b["status"] == "ok")
    assert b is not None and n is not None
    if b["status"] == "ok" and n["status"] != "ok":
        return PointChange(key, f"measured in BASE, {desc(n)} in NEW", lost=True)
    if b["status"] != "ok" and n["status"] == "ok":
        return PointChange(key, f"{desc(b)} in BASE, measured in NEW", lost=False)
    if b["status"] != "ok" and (b["status"], b.get("error")) != (n["status"], n.get("error")):
        return PointChange(key, f"not measured on either side: BASE {desc(b)}; NEW {desc(n)}",
                           lost=False)
    return None


def _index(doc: ResultDoc, side: str, warnings: list[str]) -> dict[PointKey, PointDoc]:
    points: dict[PointKey, PointDoc] = {}
    for p in iter_points(doc):
        k = point_key(p)
        if k in points:
            warnings.append(f"{side} has two points for {key_label(k)}; using the later one")
        points[k] = p
    return points


def _run_warnings(base: ResultDoc, new: ResultDoc) -> list[str]:
    out = []
    if base["scenario"]["name"] != new["scenario"]["name"]:
        out.append(f"different scenarios: {base['scenario']['name']!r} (BASE) vs "
                   f"{new['scenario']['name']!r} (NEW); only points present in both compare")
    elif scenario_content(base) != scenario_content(new):
        out.append(f"scenario {new['scenario']['name']!r} was changed between the runs "
                   f"(packets, repetitions or warm-up may differ)")
    for side, doc in (("BASE", base), ("NEW", new)):
        if doc["status"] != "complete":
            out.append(f"{side} run is {doc['status']}, not complete: points it did not "
                       f"reach are reported as missing")
    for side, doc in (("BASE", base), ("NEW", new)):
        injected = doc["environment"].get("injected_rules")
        if injected:
            out.append(f"{side} was made slower on purpose (kpbench run --inject-rules "
                       f"{injected}: {injected} extra rules in each node's PREROUTING); its "
                       f"changes test the gate, not the code")
    for k, b, n in env_differences(base["environment"], new["environment"], ENV_WARN_KEYS):
        out.append(f"environment differs in {k}: {b!r} (BASE) vs {n!r} (NEW)")
    for k, b, n in env_differences(base["environment"], new["environment"],
                                   ENV_WARN_IF_RECORDED):
        if b is not None and n is not None:
            out.append(f"the runs come from different machines ({k} {b} (BASE) vs {n} "
                       f"(NEW)) of the same kind: machines differ by more than runs do")
    return out


def compare_runs(base: ResultDoc, new: ResultDoc, *, base_source: str = "BASE",
                 new_source: str = "NEW", alpha: float = DEFAULT_ALPHA,
                 min_effect_pct: float = DEFAULT_MIN_EFFECT_PCT,
                 min_effect_ns: float = DEFAULT_MIN_EFFECT_NS,
                 allow_env_mismatch: bool = False,
                 metrics: Sequence[Metric] = METRICS) -> Comparison:
    """Compare every point and metric of ``new`` against ``base`` (see the module docstring).

    Raises :class:`EnvironmentMismatch` when the environments differ in
    :data:`ENV_KEYS`, unless ``allow_env_mismatch`` (then it is a warning).
    """
    thresholds = Thresholds(alpha, min_effect_pct, min_effect_ns)  # InputError if out of range
    diffs = env_differences(base["environment"], new["environment"])
    if diffs and not allow_env_mismatch:
        raise EnvironmentMismatch(diffs)
    c = Comparison(base_source, new_source, base, new, thresholds)
    c.warnings += [f"environments differ (allowed): {k}: {b!r} (BASE) vs {n!r} (NEW)"
                   for k, b, n in diffs]
    c.warnings += _run_warnings(base, new)
    bp = _index(base, "BASE", c.warnings)
    np_ = _index(new, "NEW", c.warnings)
    keys = list(bp) + [k for k in np_ if k not in bp]
    setup_figures: dict[tuple[Any, ...], MetricChange] = {}
    for key in keys:
        b, n = bp.get(key), np_.get(key)
        status = _status_change(key, b, n)
        if status is not None:
            c.points.append(status)
            continue
        assert b is not None and n is not None
        if b["status"] != "ok":
            # Failed the same way on both sides (a kernel feature this machine lacks, a
            # workload a datapath does not apply to): nothing changed, nothing to list.
            c.unmeasured += 1
            continue
        b_runs, n_runs = runs_of(b), runs_of(n)
        for metric in metrics:
            figure = (_setup_figure(key, metric, b, n, b_runs, n_runs)
                      if metric.per_setup else None)
            held = setup_figures.get(figure) if figure is not None else None
            if held is not None:  # a copy of a figure already compared
                held.shared_with.append(key)
                continue
            mc = compare_metric(key, metric, b, n, alpha, b_runs, n_runs)
            if mc is not None:
                c.changes.append(mc)
                if figure is not None:
                    setup_figures[figure] = mc
    across_runs(c.changes)
    for mc in c.changes:
        mc.judgement = judge_change(mc, thresholds)
    if not any(mc.run_stats is not None for mc in c.changes) and c.changes:
        c.warnings.append("BASE and NEW are one run each: only the repetitions inside each "
                          "run were tested, and runs of the same code differ by more than "
                          "that; judge against a baseline pooled from several runs "
                          "(`kpbench baseline`)")
    return c
