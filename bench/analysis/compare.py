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
  ``min_effect_pct`` (default 5 %), so a statistically clear but irrelevant
  difference is not called a regression (asv's rule: different *and* beyond a
  factor).

It is a regression or an improvement by the metric's direction (lower latency
and CPU are better, higher delivered pps is better). With n and m samples the
exact test cannot go below p = 2 / C(n+m, n): when that is above ``alpha``
(e.g. one sync time per side, or 3 vs 3 repetitions) and there are no runs to
test either, the change is reported as *untested* with the numbers needed,
never as "no change". A metric measured once per run (the full sync of a
packet scenario) is judged by the run test alone.

Numbers from different environments are not comparable: :func:`compare_runs`
refuses them, listing every differing key of
:data:`bench.results.environment.ENV_KEYS`, unless told
otherwise.
"""

from __future__ import annotations

import math
import statistics
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.analysis.metrics import METRICS, METRICS_BY_NAME, Metric, PointKey, key_label, point_key
from bench.analysis.runlevel import (
    RunStats,
    benjamini_hochberg,
    fit_prior,
    p_value,
    run_stats,
    run_values,
    within_run_variance,
)
from bench.errors import InputError, KpbenchError
from bench.results import PointDoc, ResultDoc, iter_points, runs_of
from bench.results.environment import (
    ENV_WARN_IF_RECORDED,
    ENV_WARN_KEYS,
    env_differences,
)

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT_PCT = 5.0

Verdict = Literal["regression", "improvement", "same", "untested", "only in BASE",
                  "only in NEW"]


class EnvironmentMismatch(KpbenchError):
    """Two results come from environments whose numbers are not comparable."""

    def __init__(self, differences: list[tuple[str, Any, Any]]) -> None:
        self.differences = differences
        listed = "; ".join(f"{k}: {b!r} (BASE) vs {n!r} (NEW)" for k, b, n in differences)
        super().__init__(f"the results come from different environments, their numbers are "
                         f"not comparable — {listed}; pass --allow-env-mismatch to compare "
                         f"anyway")


@dataclass(frozen=True)
class Gate:
    """``--fail-on METRIC:PCT``: a significant regression of METRIC beyond PCT % fails."""

    metric: str
    pct: float

    def __str__(self) -> str:
        return f"{self.metric}:{self.pct:g}%"


def parse_gate(text: str) -> Gate:
    """Parse ``METRIC:PCT`` (``p99_latency:10%``, ``sync_full:20``); InputError if malformed."""
    name, sep, pct = text.rpartition(":")
    if not sep or not name:
        raise InputError(f"{text!r} is not METRIC:PCT (e.g. p99_latency:10%)",
                         source="--fail-on")
    if name not in METRICS_BY_NAME:
        raise InputError(f"unknown metric {name!r}; known: {', '.join(METRICS_BY_NAME)}",
                         source="--fail-on")
    try:
        value = float(pct.strip().removesuffix("%"))
    except ValueError:
        raise InputError(f"{pct!r} in {text!r} is not a percentage", source="--fail-on")
    if not math.isfinite(value) or value < 0:
        raise InputError(f"threshold {pct!r} must be a percentage >= 0", source="--fail-on")
    return Gate(name, value)


@dataclass
class MetricChange:
    """One metric of one point, BASE vs NEW."""

    key: PointKey
    metric: Metric
    base: float | None
    new: float | None
    n_base: int
    n_new: int
    change_pct: float | None  # +inf when BASE is 0 and NEW is not
    p_value: float | None  # Mann-Whitney U over repetitions
    verdict: Verdict
    note: str = ""
    runs_base: int = 1
    runs_new: int = 1
    run_stats: RunStats | None = None  # per-run figures, for bench.analysis.runlevel
    run_p_value: float | None = None  # the (moderated) t test over runs, uncorrected
    run_q_value: float | None = None  # ... after the Benjamini-Hochberg correction

    @property
    def worse(self) -> bool:
        """Whether NEW moved in the metric's bad direction (whatever the significance)."""
        if self.change_pct is None or self.change_pct == 0:
            return False
        return (self.change_pct > 0) == (self.metric.better == "lower")


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
    alpha: float
    min_effect_pct: float
    changes: list[MetricChange] = field(default_factory=list)
    points: list[PointChange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Points not measured on either side, for the same reason on both.
    unmeasured: int = 0

    def by_verdict(self, verdict: Verdict) -> list[MetricChange]:
        return [c for c in self.changes if c.verdict == verdict]

    def gate_failures(self, gates: Sequence[Gate]) -> list[tuple[Gate, MetricChange]]:
        """Significant regressions beyond a gate's threshold."""
        return [(g, c) for g in gates for c in self.by_verdict("regression")
                if c.metric.name == g.metric and c.change_pct is not None
                and abs(c.change_pct) > g.pct]

    def gate_warnings(self, gates: Sequence[Gate]) -> list[str]:
        """What a gate could not judge: changes beyond it that could not be tested."""
        out = []
        for g in gates:
            rows = [c for c in self.changes if c.metric.name == g.metric]
            if not rows:
                out.append(f"--fail-on {g}: no point has {g.metric} on both sides; "
                           f"this gate checked nothing")
                continue
            beyond = [c for c in rows if c.verdict == "untested" and c.worse
                      and c.change_pct is not None and abs(c.change_pct) > g.pct]
            if beyond:
                shown = ", ".join(f"{key_label(c.key)} {c.change_pct:+.1f}% "
                                  f"(n={c.n_base}/{c.n_new})" for c in beyond[:5])
                more = f" and {len(beyond) - 5} more" if len(beyond) > 5 else ""
                out.append(f"--fail-on {g}: {len(beyond)} points got worse beyond it but are "
                           f"untested for too few repetitions, not counted as failures: "
                           f"{shown}{more}")
        return out


def min_p_value(n: int, m: int) -> float:
    """The smallest two-sided p-value the exact Mann-Whitney U test can give for n vs m."""
    return min(1.0, 2 / math.comb(n + m, n))


def min_repetitions(alpha: float) -> int:
    """Repetitions needed on each side for the exact test to be able to reach p < alpha."""
    n = 1
    while min_p_value(n, n) >= alpha:
        n += 1
    return n


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
                   min_effect_pct: float = DEFAULT_MIN_EFFECT_PCT,
                   base_runs: Sequence[PointDoc] | None = None,
                   new_runs: Sequence[PointDoc] | None = None) -> MetricChange | None:
    """The change of ``metric`` at one point; None when neither side measured it.

    The verdict here is the repetition test's and the effect size's; when the
    sides have runs to compare, :func:`judge_by_runs` (over all metrics at once)
    confirms or overrules it.
    """
    bs, ns = metric.samples(base), metric.samples(new)
    if not bs and not ns:
        return None

    def value(p: PointDoc, samples: list[float]) -> float | None:
        v = metric.pooled(p)
        return v if v is not None or not samples else statistics.median(samples)

    bv, nv = value(base, bs), value(new, ns)
    common = dict(key=key, metric=metric, base=bv, new=nv, n_base=len(bs), n_new=len(ns))
    if not bs or not ns:
        return MetricChange(**common, change_pct=None, p_value=None,  # type: ignore[arg-type]
                            verdict="only in BASE" if bs else "only in NEW",
                            note=f"not measured in {'NEW' if bs else 'BASE'}")
    change = relative_change(bv, nv) if bv is not None and nv is not None else None
    base_runs = base_runs if base_runs is not None else runs_of(base)
    new_runs = new_runs if new_runs is not None else runs_of(new)
    rb, rn = run_values(metric, base_runs), run_values(metric, new_runs)
    within = within_run_variance(metric, [*base_runs, *new_runs])
    st = run_stats(rb, rn, metric.resolution, within)
    runs = dict(runs_base=len(rb), runs_new=len(rn), run_stats=st)
    testable = min_p_value(len(bs), len(ns)) < alpha
    if not testable and st is None:
        need = min_repetitions(alpha)
        return MetricChange(**common, change_pct=change, p_value=None,  # type: ignore[arg-type]
                            verdict="untested", **runs,  # type: ignore[arg-type]
                            note=f"too few repetitions: {len(bs)} vs {len(ns)}; the "
                                 f"Mann-Whitney U test cannot reach p < {alpha:g} (it needs "
                                 f">= {need} per side, or a base pooled from several runs "
                                 f"with `kpbench baseline`)")
    p = mann_whitney_p(bs, ns) if testable else None
    mc = MetricChange(**common, change_pct=change, p_value=p, verdict="same",  # type: ignore[arg-type]
                      **runs)  # type: ignore[arg-type]
    if p is not None and p >= alpha:
        mc.note = f"not significant (p={p:.2g})"
    elif change is None or abs(change) < min_effect_pct:
        mc.note = (f"significant (p={p:.2g}) but " if p is not None else "") + \
            f"below the {min_effect_pct:g}% minimum effect"
    else:
        mc.verdict = "regression" if mc.worse else "improvement"
        mc.note = f"p={p:.2g}" if p is not None else "one figure per run"
    return mc


def judge_by_runs(changes: Sequence[MetricChange], alpha: float) -> None:
    """The run-level test (bench.analysis.runlevel) of every change that has runs to compare:
    each metric's variances moderated over its points, then Benjamini-Hochberg over
    all. A change whose runs do not differ at ``alpha`` is run-to-run drift ("same"),
    whatever its repetitions say."""
    tested = [mc for mc in changes if mc.run_stats is not None]
    for name in dict.fromkeys(mc.metric.name for mc in tested):
        group = [mc for mc in tested if mc.metric.name == name]
        prior = fit_prior([mc.run_stats for mc in group])  # type: ignore[misc]
        for mc in group:
            mc.run_p_value = p_value(mc.run_stats, prior)  # type: ignore[arg-type]
    qs = benjamini_hochberg([mc.run_p_value for mc in tested])  # type: ignore[misc]
    for mc, q in zip(tested, qs, strict=True):
        mc.run_q_value = q
        runs = f"{mc.runs_base} vs {mc.runs_new} runs, q={q:.2g}"
        if mc.verdict not in ("regression", "improvement"):
            continue
        if q < alpha:
            mc.note += f"; runs differ ({runs})"
        else:
            mc.verdict = "same"
            mc.note += f"; within run-to-run drift ({runs})"


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


def _scenario_content(doc: ResultDoc) -> Any:
    """What a run's scenario asks for: its parsed TOML (a changed comment changes nothing),
    or the text itself when it does not parse."""
    text = doc["scenario"].get("text") or ""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text


def _run_warnings(base: ResultDoc, new: ResultDoc) -> list[str]:
    out = []
    if base["scenario"]["name"] != new["scenario"]["name"]:
        out.append(f"different scenarios: {base['scenario']['name']!r} (BASE) vs "
                   f"{new['scenario']['name']!r} (NEW); only points present in both compare")
    elif _scenario_content(base) != _scenario_content(new):
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
                 allow_env_mismatch: bool = False,
                 metrics: Sequence[Metric] = METRICS) -> Comparison:
    """Compare every point and metric of ``new`` against ``base`` (see the module docstring).

    Raises :class:`EnvironmentMismatch` when the environments differ in
    :data:`ENV_KEYS`, unless ``allow_env_mismatch`` (then it is a warning).
    """
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be between 0 and 1, got {alpha}", source="--alpha")
    if min_effect_pct < 0:
        raise InputError(f"must be >= 0, got {min_effect_pct}", source="--min-effect")
    diffs = env_differences(base["environment"], new["environment"])
    if diffs and not allow_env_mismatch:
        raise EnvironmentMismatch(diffs)
    c = Comparison(base_source, new_source, base, new, alpha, min_effect_pct)
    c.warnings += [f"environments differ (allowed): {k}: {b!r} (BASE) vs {n!r} (NEW)"
                   for k, b, n in diffs]
    c.warnings += _run_warnings(base, new)
    bp = _index(base, "BASE", c.warnings)
    np_ = _index(new, "NEW", c.warnings)
    keys = list(bp) + [k for k in np_ if k not in bp]
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
            mc = compare_metric(key, metric, b, n, alpha, min_effect_pct, b_runs, n_runs)
            if mc is not None:
                c.changes.append(mc)
    judge_by_runs(c.changes, alpha)
    if not any(mc.run_stats is not None for mc in c.changes) and c.changes:
        c.warnings.append("BASE and NEW are one run each: only the repetitions inside each "
                          "run were tested, and runs of the same code differ by more than "
                          "that; judge against a baseline pooled from several runs "
                          "(`kpbench baseline`)")
    return c
