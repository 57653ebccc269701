"""Baselines pooled from several runs: merging, refusals, and what pooling buys the test."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from bench.analysis import compare
from bench.errors import InputError
from bench.results.baseline import merge_runs
from bench.results.model import runs_of
from bench.results.reader import load_result
from bench.results.schema import ResultDoc
from tests.helpers.synthetic_results import (
    ENV,
    changes,
    in_memory,
    keep_signal_handlers,  # noqa: F401  (autouse fixture)
    main,
    point,
    write,
)

SCALES = (1, 100, 1000)


def runs(seed: int, n: int = 3, reps: int = 3, **kw: float) -> list[tuple[str, ResultDoc]]:
    """``n`` runs of one scenario, each with ``reps`` repetitions per point."""
    rng = np.random.default_rng(seed)
    return [(f"run{i}.json", in_memory([point(rng, services=s, reps=reps, **kw)  # type: ignore[arg-type]
                                        for s in SCALES]))
            for i in range(n)]


def test_merge_pools_repetitions_and_recomputes_the_summary() -> None:
    rs = runs(1)
    for i, (_, doc) in enumerate(rs):
        doc["points"][0]["setup"]["sync_seconds"] = 1.0 + i  # 1, 2, 3 s
        doc["points"][0]["setup"]["sync_node_seconds"] = [1.0 + i, 10.0 - i]
    merged, warnings = merge_runs(rs)
    assert not warnings and merged["status"] == "complete"
    assert [m["run_id"] for m in merged["merged_from"]] == [d["run_id"] for _, d in rs]  # type: ignore[typeddict-item]
    p = merged["points"][0]
    assert len(p["repetitions"]) == 9
    assert p["setup"]["sync_seconds"] == 2.0  # the median over the runs
    assert p["setup"]["sync_node_seconds"] == [2.0, 9.0]  # per node, likewise
    # The summary is the pooled one: every packet of the three runs.
    assert p["summary"]["latency_ns"]["count"] == sum(  # type: ignore[index]
        d["points"][0]["summary"]["latency_ns"]["count"] for _, d in rs)  # type: ignore[index]


def test_a_point_some_runs_missed_is_pooled_from_the_others() -> None:
    rs = runs(2)
    failed = copy.deepcopy(rs[1][1]["points"][2])
    failed.update(status="failed", error="boom", repetitions=[])
    rs[1][1]["points"][2] = failed
    merged, warnings = merge_runs(rs)
    assert len(merged["points"][2]["repetitions"]) == 6
    assert any("measured in 2 of 3 runs" in w for w in warnings)


@pytest.mark.parametrize("change,needle", [
    (lambda d: d["environment"].update(kernel_release="6.1.0"), "kernel_release"),
    (lambda d: d["scenario"].update(name="other"), "scenario 'other'"),
    (lambda d: d["scenario"].update(text="packets = 1"), "was changed"),
    (lambda d: d.update(status="interrupted"), "not complete"),
])
def test_runs_that_cannot_be_pooled_are_refused(change, needle: str) -> None:  # type: ignore[no-untyped-def]
    rs = runs(3)
    change(rs[2][1])
    with pytest.raises(InputError, match=needle):
        merge_runs(rs)
    with pytest.raises(InputError, match="at least two runs"):
        merge_runs(rs[:1])


def test_runs_whose_scenarios_differ_only_in_comments_are_pooled() -> None:
    # As compare judges them: the scenario's parsed content, not its text.
    rs = runs(3)
    for i, (_, doc) in enumerate(rs):
        doc["scenario"]["text"] = f"# edited {i} times\npackets = 100  # per repetition\n"
    merged, _ = merge_runs(rs)
    assert len(merged["merged_from"]) == 3  # type: ignore[typeddict-item]


def test_pooling_lets_three_repetition_runs_be_tested() -> None:
    base_runs = runs(4, n=5)
    (_, new), = runs(5, n=1, latency_ns=12_000)  # one new run, 20 % slower
    # Run against run, 3 vs 3 repetitions: the test cannot decide.
    c = compare.compare_runs(base_runs[0][1], new)
    assert {mc.verdict for mc in changes(c, "p50_latency")} == {"untested"}
    assert "kpbench baseline" in changes(c, "p50_latency")[0].note
    # Against five runs pooled (15 vs 3 repetitions, 5 vs 1 runs) both tests can decide.
    pooled, _ = merge_runs(base_runs)
    c = compare.compare_runs(pooled, new)
    assert {mc.verdict for mc in changes(c, "p50_latency")} == {"regression"}
    assert all(mc.runs_base == 5 and mc.runs_new == 1 for mc in changes(c, "p50_latency"))
    (_, same), = runs(6, n=1)
    c = compare.compare_runs(pooled, same)
    assert not c.by_verdict("regression") and not c.by_verdict("improvement")


def _run_with_level(seed: int, level: float) -> ResultDoc:
    """One run whose every repetition sits at ``level`` x 10 us: what a run-wide
    condition (another tenant, a cold cache) does to all repetitions of a run at once."""
    rng = np.random.default_rng(seed)
    return in_memory([point(rng, services=s, latency_ns=10_000 * level, jitter=0.005)
                      for s in SCALES])


def test_run_to_run_drift_is_not_a_regression_but_a_change_beyond_it_is() -> None:
    # Five base runs whose levels differ by up to 30 %, each tight inside (0.5 %).
    levels = (1.0, 1.3, 0.9, 1.15, 1.05)
    pooled, _ = merge_runs([(f"r{i}", _run_with_level(i, lv)) for i, lv in enumerate(levels)])
    inside = _run_with_level(10, 1.25)  # a new run inside that drift
    c = compare.compare_runs(pooled, inside)
    p50 = changes(c, "p50_latency")
    assert all(mc.p_value is not None and mc.p_value < 0.05 for mc in p50)  # repetitions differ
    assert {mc.verdict for mc in p50} == {"same"}  # ... but whole runs differ as much
    assert all("run-to-run drift" in mc.note for mc in p50)
    beyond = _run_with_level(11, 3.0)  # three times as slow: far outside what runs do
    c = compare.compare_runs(pooled, beyond)
    assert {mc.verdict for mc in changes(c, "p50_latency")} == {"regression"}


def test_a_figure_measured_once_per_run_is_tested_across_runs() -> None:
    rs = runs(8, n=5)
    for i, (_, doc) in enumerate(rs):
        for p in doc["points"]:
            p["setup"]["sync_seconds"] = 2.0 + 0.02 * i
    pooled, _ = merge_runs(rs)
    (_, slow), = runs(9, n=1, sync_seconds=3.0)  # the full sync 50 % slower
    c = compare.compare_runs(pooled, slow)
    assert {mc.verdict for mc in changes(c, "sync_full")} == {"regression"}
    (_, same), = runs(9, n=1, sync_seconds=2.03)
    c = compare.compare_runs(pooled, same)
    assert {mc.verdict for mc in changes(c, "sync_full")} == {"same"}


def test_merging_a_pooled_baseline_again_keeps_every_run() -> None:
    rs = runs(12, n=4)
    first, _ = merge_runs(rs[:2])
    again, _ = merge_runs([("pooled", first), *rs[2:]])
    assert [r["repetitions"] for r in again["points"][0]["per_run"]] == [3, 3, 3, 3]
    assert [m["file"] for m in again["merged_from"]] == [f for f, _ in rs]  # type: ignore[typeddict-item]
    assert len(runs_of(again["points"][0])) == 4


def test_baseline_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(7)
    files = [write(tmp_path / f"r{i}.json", [point(rng, reps=3)]) for i in range(3)]
    out = tmp_path / "baselines" / "default.json"
    assert main("baseline", *files, "-o", out) == 0
    err = capsys.readouterr().err
    assert "3 runs" in err
    assert "spread between runs" in err and "p50_latency" in err
    doc = load_result(out)
    assert len(doc["points"][0]["repetitions"]) == 9
    assert json.loads(out.read_text())["merged_from"][2]["file"] == str(files[2])
    assert main("baseline", *files, "-o", out) == 2  # no silent overwrite
    assert "--force" in capsys.readouterr().err
    assert main("baseline", *files, "-o", out, "--force") == 0
    assert main("show", out) == 0
    assert "pooled from 3 runs" in capsys.readouterr().out
    other = write(tmp_path / "vm.json", [point(rng, reps=3)], env={**ENV, "where": "vm"})
    assert main("baseline", files[0], other, "-o", tmp_path / "x.json") == 2
    assert "where" in capsys.readouterr().err


def test_a_damaged_per_run_list_is_a_one_line_input_error(tmp_path: Path) -> None:
    pooled, _ = merge_runs(runs(13))
    pooled["points"][0]["per_run"][0]["repetitions"] = 7
    path = tmp_path / "pooled.json"
    path.write_text(json.dumps(pooled))
    with pytest.raises(InputError, match=r"points\[0\].*per_run.*counts 13 repetitions, "
                                         r"the point has 9"):
        load_result(path)


def test_merge_pools_the_paired_controls_and_splits_them_back_per_run() -> None:
    rng = np.random.default_rng(9)
    rs = []
    for i in range(3):
        p = point(rng, services=1, reps=3)
        # Each run's control: the Service minus 1000 ns, plus a run-specific offset.
        p["control"] = [c for c in point(rng, services=1, reps=2 + i,
                                         latency_ns=9_000)["repetitions"]]
        rs.append((f"run{i}.json", in_memory([p])))
    merged, _ = merge_runs(rs)
    (mp,) = merged["points"]
    assert len(mp["control"]) == 2 + 3 + 4
    assert [s["control"] for s in mp["per_run"]] == [2, 3, 4]  # type: ignore[typeddict-item]
    per_run = runs_of(mp)
    assert [len(r["control"]) for r in per_run] == [2, 3, 4]  # type: ignore[arg-type]
    for run, (_, doc) in zip(per_run, rs, strict=True):
        assert run["summary"]["service_minus_control_p50_ns"] == pytest.approx(  # type: ignore[typeddict-item]
            doc["points"][0]["summary"]["service_minus_control_p50_ns"])  # type: ignore[typeddict-item]
    assert mp["summary"]["control"]["latency_ns"]["count"] == sum(  # type: ignore[typeddict-item]
        len(r["control"]) for r in per_run) * 2000  # type: ignore[arg-type]


def test_the_spread_between_runs_and_the_run_that_stands_out_are_measured() -> None:
    from bench.analysis.spread import run_spread, spread_lines

    # Five runs at known levels, each tight inside (0.5 %): the spread is the sd of the
    # levels' logs, each run's offset its level over the levels' geometric mean.
    levels = (1.0, 1.0, 1.02, 0.98, 1.3)
    pooled, _ = merge_runs([(f"r{i}.json", _run_with_level(i, lv))
                            for i, lv in enumerate(levels)])
    (p50,) = run_spread(pooled, ["p50_latency"])
    logs = np.log(levels)
    assert p50.points == len(SCALES)
    assert p50.median_sd == pytest.approx(np.std(logs, ddof=1), rel=0.1)
    gmean = np.exp(logs.mean())
    assert p50.run_offsets == pytest.approx([lv / gmean - 1 for lv in levels], abs=0.01)
    lines = spread_lines(pooled)
    warned = [line for line in lines if line.startswith("warning")]
    assert len(warned) == 1 and "run 5 (r4.json)" in warned[0]  # +24 %: the one outlier
    # The same runs without the outlier: nothing stands out.
    quiet, _ = merge_runs([(f"r{i}.json", _run_with_level(i, lv))
                           for i, lv in enumerate(levels[:4])])
    assert not [line for line in spread_lines(quiet) if line.startswith("warning")]
    assert spread_lines(runs(3, n=1)[0][1]) == []  # one run: no spread to tell
