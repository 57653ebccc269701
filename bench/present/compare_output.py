"""How a comparison is shown: terminal table, Markdown, JSON or CSV.

Text and Markdown are for people (units scaled, a point's name on its first
row only); JSON and CSV carry the raw numbers in base units (ns, s, packets/s,
fractions) for scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.analysis.compare import Comparison, Gate, MetricChange, Verdict
from bench.analysis.metrics import key_label
from bench.present.tables import Table, dumps, fmt_change, fmt_value, records_csv, render
from bench.results.environment import commit_label

CSV_COLUMNS = ("base_file", "new_file", "variant", "workload", "services", "endpoints",
               "rate_pps", "position", "metric", "unit", "better", "base", "new", "change_pct",
               "change_abs", "n_base", "n_new", "p_value", "runs_base", "runs_new",
               "run_p_value", "run_q_value", "verdict", "reason", "note", "shared_with_n")
SHOWN_WHEN_CHANGED = (Verdict.REGRESSION, Verdict.IMPROVEMENT, Verdict.ONLY_IN_BASE,
                      Verdict.ONLY_IN_NEW)


def _p(c: MetricChange) -> str:
    return "—" if c.p_value is None else f"{c.p_value:.3f}"


def fmt_effect(c: MetricChange) -> str:
    """The change as the tables show it: relative, or signed in the metric's unit for a
    difference metric (Service minus control, near zero: "+1.86 µs", not "+686%")."""
    if not c.metric.difference or c.change_abs is None:
        return fmt_change(c.change_pct)
    return ("+" if c.change_abs > 0 else "") + fmt_value(c.change_abs, c.metric.unit)


def changes_table(c: Comparison, changed_only: bool = False) -> Table:
    """One row per point x metric; a point's name is printed on its first row only."""
    t = Table(["point", "metric", "base", "new", "change", "p", "verdict"],
              align=["l", "l", "r", "r", "r", "r", "l"])
    last = None
    for mc in c.changes:
        if changed_only and mc.verdict not in SHOWN_WHEN_CHANGED:
            continue
        label = key_label(mc.key)
        # A per-set-up figure (the scale's one sync) is listed once, at its first point.
        t.add([label if label != last else "", mc.metric.name + mc.held_by(),
               fmt_value(mc.base, mc.metric.unit), fmt_value(mc.new, mc.metric.unit),
               fmt_effect(mc), _p(mc), mc.label],
              css=str(mc.verdict) if mc.verdict in (Verdict.REGRESSION, Verdict.IMPROVEMENT)
              else "")
        last = label
    return t


def summary_line(c: Comparison) -> str:
    """Counts of each verdict and of points present or measured on one side only."""
    counts = {v: len(c.by_verdict(v)) for v in (Verdict.REGRESSION, Verdict.IMPROVEMENT,
                                                Verdict.SAME, Verdict.UNTESTED)}
    parts = [f"{counts['regression']} significant regressions",
             f"{counts['improvement']} significant improvements",
             f"{counts['same']} unchanged"]
    if counts["untested"]:
        metrics = sorted({mc.metric.name for mc in c.by_verdict(Verdict.UNTESTED)})
        parts.append(f"{counts['untested']} untested for too few repetitions "
                     f"({', '.join(metrics)})")
    one_side = len(c.by_verdict(Verdict.ONLY_IN_BASE)) + len(c.by_verdict(Verdict.ONLY_IN_NEW))
    if one_side:
        parts.append(f"{one_side} metrics measured on one side only")
    if c.points:
        parts.append(f"{len(c.points)} points missing or not measured on one side")
    if c.unmeasured:
        parts.append(f"{c.unmeasured} points not measured on either side, for the same "
                     f"reason (e.g. a kernel feature this machine lacks)")
    return "; ".join(parts)


def _run_line(doc: Any) -> str:
    env = doc["environment"]
    commit = commit_label(env)
    merged = doc.get("merged_from")  # a baseline pooled by bench.results.baseline
    pooled = f", pooled from {len(merged)} runs" if isinstance(merged, list) else ""
    return (f"scenario {doc['scenario']['name']}, {doc['started']}, {commit}, "
            f"{doc['status']}, {len(doc['points'])} points{pooled}")


def _method_line(c: Comparison) -> str:
    runs = [mc for mc in c.changes if mc.run_p_value is not None]
    across = (f"; and across runs: t test of per-run figures moderated over each metric's "
              f"points, Benjamini-Hochberg over "
              f"{len(runs)} tests ({max(mc.runs_base for mc in runs)} BASE runs vs "
              f"{max(mc.runs_new for mc in runs)} NEW)" if runs else "")
    differences = (f" ({c.min_effect_ns:g} ns for a difference against the paired control)"
                   if any(mc.metric.absolute for mc in c.changes) else "")
    if any(mc.metric.relative_to is not None for mc in c.changes):
        differences += (" (a difference in transactions/s: that % of BASE's direct-path "
                        "rate)")
    return (f"Mann-Whitney U over repetitions, two-sided, alpha {c.alpha:g}{across}; a "
            f"significant change must also be at least {c.min_effect_pct:g}%{differences}")


def render_text(comparisons: Sequence[Comparison], fmt: str, changed_only: bool,
                notes: Sequence[str] = ()) -> str:
    """The comparisons as "table" (terminal) or "markdown"."""
    md = fmt == "markdown"
    out: list[str] = []
    for c in comparisons:
        if md:
            out += [f"### {c.new['scenario']['name']}: NEW vs BASE", "",
                    f"- BASE: `{c.base_source}` — {_run_line(c.base)}",
                    f"- NEW: `{c.new_source}` — {_run_line(c.new)}",
                    f"- {_method_line(c)}", ""]
        else:
            out += [f"BASE {c.base_source}  ({_run_line(c.base)})",
                    f"NEW  {c.new_source}  ({_run_line(c.new)})", _method_line(c), ""]
        t = changes_table(c, changed_only)
        out.append(render(t, fmt) if t.rows else
                   "(no significant change)" if changed_only else "(no metric to compare)")
        out.append("")
        if c.points:
            out.append("**Points**" if md else "points:")
            out += [f"- {key_label(p.key)}: {p.what}" if md
                    else f"  {key_label(p.key)}: {p.what}" for p in c.points]
            out.append("")
        if c.warnings:
            out.append("**Warnings**" if md else "warnings:")
            out += [f"- {w}" if md else f"  {w}" for w in c.warnings]
            out.append("")
        out.append(("**Summary:** " if md else "summary: ") + summary_line(c))
        out.append("")
    if notes:
        out += ["**Not compared**" if md else "not compared:"]
        out += [f"- {n}" if md else f"  {n}" for n in notes]
    return "\n".join(out).rstrip() + "\n"


def change_record(c: Comparison, mc: MetricChange) -> dict[str, Any]:
    """One metric change as raw values (base units), for JSON and CSV."""
    variant, workload, services, endpoints, rate, position = mc.key
    return {
        "base_file": c.base_source, "new_file": c.new_source, "point": key_label(mc.key),
        "variant": variant, "workload": workload, "services": services,
        "endpoints": endpoints, "rate_pps": rate, "position": position,
        "metric": mc.metric.name, "unit": mc.metric.unit, "better": mc.metric.better,
        "base": mc.base, "new": mc.new, "change_pct": mc.change_pct,
        "change_abs": mc.change_abs, "n_base": mc.n_base, "n_new": mc.n_new,
        "p_value": mc.p_value, "runs_base": mc.runs_base, "runs_new": mc.runs_new,
        "run_p_value": mc.run_p_value, "run_q_value": mc.run_q_value,
        "verdict": str(mc.verdict), "reason": str(mc.reason), "note": mc.note,
        # Other points holding this figure (the set-up's one sync or settle), and how many.
        "shared_with": [key_label(k) for k in mc.shared_with],
        "shared_with_n": len(mc.shared_with),
    }


def comparison_json(c: Comparison, gates: Sequence[Gate]) -> dict[str, Any]:
    """A comparison as a JSON-ready dict (changes, points, warnings, gate failures)."""
    def run(doc: Any, source: str) -> dict[str, Any]:
        env = doc["environment"]
        return {"file": source, "run_id": doc["run_id"], "scenario": doc["scenario"]["name"],
                "started": doc["started"], "status": doc["status"],
                "git_commit": env.get("git_commit"), "git_dirty": env.get("git_dirty")}

    return {
        "base": run(c.base, c.base_source), "new": run(c.new, c.new_source),
        "alpha": c.alpha, "min_effect_pct": c.min_effect_pct, "min_effect_ns": c.min_effect_ns,
        "summary": summary_line(c),
        "changes": [change_record(c, mc) for mc in c.changes],
        "points": [{"point": key_label(p.key), "what": p.what, "lost": p.lost}
                   for p in c.points],
        "warnings": c.warnings,
        "gate_failures": [{"gate": str(g), "point": key_label(mc.key),
                           "shared_with": [key_label(k) for k in mc.shared_with],
                           "change_pct": mc.change_pct, "change_abs": mc.change_abs,
                           "p_value": mc.p_value}
                          for g, mc in c.gate_failures(gates)],
    }


def render_machine(comparisons: Sequence[Comparison], fmt: str, gates: Sequence[Gate],
                   notes: Sequence[str], failed: bool) -> str:
    """The comparisons as "json" (one document) or "csv" (one row per point x metric)."""
    if fmt == "json":
        return dumps({"comparisons": [comparison_json(c, gates) for c in comparisons],
                      "not_compared": list(notes), "failed": failed}) + "\n"
    if fmt == "csv":
        return records_csv([change_record(c, mc) for c in comparisons for mc in c.changes],
                           CSV_COLUMNS)
    raise ValueError(f"unknown machine format {fmt!r}")
