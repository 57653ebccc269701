"""A baseline made of several runs: each point's repetitions pooled across the runs.

Why: the regression test of bench.analysis.compare compares per-repetition values,
and the repetitions of one run share that run's conditions (what else the
machine was doing, where the kernel put its deferred work). Two runs of the
same commit therefore differ by more than the repetitions inside either one,
and a base of one run makes ordinary run-to-run drift look significant. A
base pooled from K runs keeps which run measured what, so bench.analysis.compare can
also test a change against how much whole runs vary (a t test of the per-run
figures). It also gives the repetition test enough samples: with 3
repetitions per run, 3 vs 3 can never reach p < 0.05, while a base of 5 runs
(15 repetitions) against one new run (3) can reach p = 0.003.

The merged document is an ordinary result (same schema version): every
point keeps the repetitions of the runs that measured it, in run order, and
``per_run`` says how many came from each run together with that run's setup
times (bench.results.model.Point.runs splits the point back into its runs). Its
setup times are the median over the runs, and its summary is recomputed
from the pooled repetitions (percentiles from the merged histograms). The
runs it was made from are listed under the top-level key ``merged_from``.
Merging a merged baseline with more runs keeps every original run.
"""

from __future__ import annotations

import copy
import statistics
import uuid
from collections.abc import Sequence
from typing import Any

from bench.analysis.metrics import PointKey, key_label, point_key
from bench.errors import InputError
from bench.results.environment import ENV_KEYS, env_differences
from bench.results.model import runs_of, scenario_content
from bench.results.reader import validate_result
from bench.results.schema import PointDoc, ResultDoc
from bench.results.summarise import summarise_point


def _median(values: Sequence[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def _check_runs(runs: Sequence[tuple[str, ResultDoc]]) -> list[str]:
    """Refuse runs that cannot be pooled; returns warnings about the ones that can."""
    if len(runs) < 2:
        raise InputError("a merged baseline needs at least two runs")
    first_src, first = runs[0]
    warnings = []
    for src, doc in runs:
        if doc["status"] != "complete":
            raise InputError(f"run is {doc['status']}, not complete; a baseline needs "
                             f"complete runs", source=src)
        if doc["scenario"]["name"] != first["scenario"]["name"]:
            raise InputError(f"scenario {doc['scenario']['name']!r} differs from "
                             f"{first['scenario']['name']!r} ({first_src})", source=src)
        if scenario_content(doc) != scenario_content(first):  # comments may differ
            raise InputError(f"scenario {doc['scenario']['name']!r} was changed between this "
                             f"run and {first_src}; pool runs of one scenario",
                             source=src)
        diffs = env_differences(first["environment"], doc["environment"], ENV_KEYS)
        if diffs:
            listed = "; ".join(f"{k}: {a!r} vs {b!r}" for k, a, b in diffs)
            raise InputError(f"environment differs from {first_src}: {listed}", source=src)
        if doc["environment"].get("git_commit") != first["environment"].get("git_commit"):
            warnings.append(f"{src}: commit {doc['environment'].get('git_commit')} differs "
                            f"from {first['environment'].get('git_commit')} ({first_src})")
    return warnings


def _merge_point(points: list[PointDoc]) -> PointDoc:
    ok = [sub.as_doc() for p in points if p["status"] == "ok" for sub in runs_of(p)]
    if not ok:
        return copy.deepcopy(points[0])
    merged: Any = copy.deepcopy(ok[0])
    merged.pop("summary", None)
    merged["repetitions"] = [copy.deepcopy(r) for p in ok for r in p["repetitions"]]
    if any(p.get("control") is not None for p in ok):
        merged["control"] = [copy.deepcopy(r) for p in ok for r in p.get("control") or []]
    for key in ("sync_seconds", "sync_render_seconds", "settle_seconds"):
        merged["setup"][key] = _median([(p.get("setup") or {}).get(key) for p in ok])
    nodes = [(p.get("setup") or {}).get("sync_node_seconds") or [] for p in ok]
    merged["setup"]["sync_node_seconds"] = (
        [_median([n[i] for n in nodes]) for i in range(len(nodes[0]))]
        if len({len(n) for n in nodes}) == 1 else [])
    if any((p.get("setup") or {}).get("settle_converged") is not None for p in ok):
        # Settled only if every pooled run settled.
        merged["setup"]["settle_converged"] = all(
            (p.get("setup") or {}).get("settle_converged") is not False for p in ok)
    for p in ok[1:]:
        merged["missing"].update(p.get("missing") or {})
    # Which run measured which repetitions: bench.analysis.compare judges a change against
    # how much whole runs differ, not only repetitions.
    merged["per_run"] = [{"repetitions": len(p["repetitions"]),
                          "setup": copy.deepcopy(p.get("setup") or {}),
                          **({"control": len(p.get("control") or [])}
                             if "control" in merged else {})} for p in ok]
    merged["summary"] = summarise_point(merged)
    return merged  # type: ignore[no-any-return]


def merge_runs(runs: Sequence[tuple[str, ResultDoc]]) -> tuple[ResultDoc, list[str]]:
    """Pool ``runs`` (source, document) of one scenario into one baseline document.

    Refuses (InputError) runs that are incomplete, of another scenario or
    scenario text, or from another environment (bench.results.environment.ENV_KEYS).
    Returns the document and warnings (differing commits, points some runs
    did not measure).
    """
    warnings = _check_runs(runs)
    by_key: dict[PointKey, list[PointDoc]] = {}
    for _, doc in runs:
        for p in doc["points"]:
            by_key.setdefault(point_key(p), []).append(p)
    for key, pts in by_key.items():
        ok = sum(p["status"] == "ok" for p in pts)
        if 0 < ok < len(runs):
            warnings.append(f"{key_label(key)}: measured in {ok} of {len(runs)} runs; "
                            f"pooled from those")
    first = runs[0][1]
    out: dict[str, Any] = {
        "schema_version": first["schema_version"], "kind": first["kind"],
        "run_id": f"merged-{uuid.uuid4().hex[:8]}",
        "started": min(d["started"] for _, d in runs),
        "finished": max(d["finished"] or d["started"] for _, d in runs),
        "status": "complete",
        "scenario": copy.deepcopy(first["scenario"]),
        "environment": copy.deepcopy(first["environment"]),
        "points": [_merge_point(pts) for pts in by_key.values()],
        "merged_from": [entry for src, d in runs for entry in d.get("merged_from") or [  # type: ignore[attr-defined]
            {"file": src, "run_id": d["run_id"], "started": d["started"],
             "git_commit": d["environment"].get("git_commit"),
             "git_dirty": d["environment"].get("git_dirty")}]],
    }
    return validate_result(out, "merged baseline"), warnings
