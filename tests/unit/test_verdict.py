"""The verdict on a change (bench.analysis.verdict): each reason from its evidence, and the
differences against the paired control judged in ns, not in % of a figure near zero."""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.analysis import compare
from bench.analysis.metrics import METRICS_BY_NAME
from bench.analysis.runlevel import run_values
from bench.analysis.verdict import Reason, Thresholds, Verdict, judge, parse_gate
from bench.errors import InputError
from bench.results import PointDoc, load_result, make_point, runs_of
from tests.conftest import ROOT
from tests.helpers.synthetic_results import (
    RATE,
    REPS,
    changes,
    in_memory,
    keep_signal_handlers,  # noqa: F401  (autouse fixture)
    main,
    repetition,
    write,
)

EVIDENCE: dict[str, Any] = dict(n_base=5, n_new=5, effect=20.0, absolute=False, worse=True,
                                p_value=0.008, run_tested=False, run_q_value=None,
                                runs_base=1, runs_new=1, thresholds=Thresholds())


def _judge(**kw: Any) -> tuple[Verdict, Reason, str]:
    j = judge(**{**EVIDENCE, **kw})
    return j.verdict, j.reason, j.label(kw.get("n_base", 5), kw.get("n_new", 5))


@pytest.mark.parametrize("evidence,expected", [
    ({}, (Verdict.REGRESSION, Reason.SIGNIFICANT, "REGRESSION")),
    ({"worse": False, "effect": -20.0},
     (Verdict.IMPROVEMENT, Reason.SIGNIFICANT, "improvement")),
    ({"p_value": 0.2}, (Verdict.SAME, Reason.NOT_SIGNIFICANT, "same")),
    ({"effect": 3.0}, (Verdict.SAME, Reason.SIGNIFICANT_BELOW_MIN_EFFECT, "same (small)")),
    ({"effect": None}, (Verdict.SAME, Reason.SIGNIFICANT_BELOW_MIN_EFFECT, "same (small)")),
    ({"p_value": None, "run_tested": True, "run_q_value": 0.5, "effect": 3.0},
     (Verdict.SAME, Reason.BELOW_MIN_EFFECT, "same")),
    ({"run_tested": True, "run_q_value": 0.3, "runs_base": 5},
     (Verdict.SAME, Reason.RUN_DRIFT, "same (run drift)")),
    ({"run_tested": True, "run_q_value": 0.01, "runs_base": 5},
     (Verdict.REGRESSION, Reason.SIGNIFICANT, "REGRESSION")),
    ({"p_value": None, "n_base": 3, "n_new": 3},
     (Verdict.UNTESTED, Reason.TOO_FEW_REPETITIONS, "untested (n=3/3)")),
    ({"n_new": 0}, (Verdict.ONLY_IN_BASE, Reason.ONE_SIDE, "only in BASE")),
    ({"n_base": 0}, (Verdict.ONLY_IN_NEW, Reason.ONE_SIDE, "only in NEW")),
    # A difference metric: 400 ns is below the 500 ns minimum effect, 600 ns is not.
    ({"absolute": True, "effect": 400.0},
     (Verdict.SAME, Reason.SIGNIFICANT_BELOW_MIN_EFFECT, "same (small)")),
    ({"absolute": True, "effect": 600.0}, (Verdict.REGRESSION, Reason.SIGNIFICANT, "REGRESSION")),
])
def test_each_reason_follows_from_its_evidence(evidence: dict[str, Any],
                                               expected: tuple[Verdict, Reason, str]) -> None:
    assert _judge(**evidence) == expected


def test_the_notes_name_their_numbers() -> None:
    j = judge(**{**EVIDENCE, "run_tested": True, "run_q_value": 0.3, "runs_base": 5})
    assert j.note == "p=0.008; within run-to-run drift (5 vs 1 runs, q=0.3)"
    j = judge(**{**EVIDENCE, "absolute": True, "effect": 400.0})
    assert j.note == "significant (p=0.008) but below the 500 ns minimum effect"
    j = judge(**{**EVIDENCE, "p_value": None, "n_base": 3, "n_new": 3})
    assert "too few repetitions: 3 vs 3" in j.note and ">= 4 per side" in j.note


def test_thresholds_out_of_range_are_input_errors() -> None:
    for kw, option in (({"alpha": 1.0}, "--alpha"), ({"min_effect_pct": -1}, "--min-effect"),
                       ({"min_effect_ns": -1}, "--min-effect-ns")):
        with pytest.raises(InputError, match=option):
            Thresholds(**kw)  # type: ignore[arg-type]


def test_the_parser_does_not_import_numpy_or_scipy() -> None:
    # The defaults come from bench.analysis.verdict, which the parser imports.
    code = ("import sys, bench.commands.compare; "
            "sys.exit(1 if {'numpy', 'scipy'} & set(sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# -- differences against the paired control ----------------------------------------------

def control_point(rng: np.random.Generator, added_ns: float) -> PointDoc:
    """A point whose Service path adds ``added_ns`` to a 2 µs control, tightly measured (a
    bucket of the latency histogram is 16 ns wide there)."""
    return make_point(
        datapath="nftables", variant="nftables", services=1000, endpoints=10,
        workload="udp-new", rate_pps=int(RATE), position="last", position_index=999,
        repetitions=[repetition(rng, 2_000 + added_ns, 5_000, jitter=0.001)
                     for _ in range(REPS)],
        control=[repetition(rng, 2_000, 5_000, jitter=0.001) for _ in range(REPS)],
        sync_seconds=2.0, settle_seconds=0.5)


def test_a_difference_near_zero_is_judged_in_ns_not_in_percent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(21)
    base = in_memory([control_point(rng, 60)])
    small = in_memory([control_point(rng, 360)])  # +300 ns: +500 % of a figure near zero
    large = in_memory([control_point(rng, 1_200)])  # +1.1 µs
    (mc,) = changes(compare.compare_runs(base, small), "service_minus_control_p50_ns")
    assert mc.p_value is not None and mc.p_value < 0.05 and mc.change_pct is None
    assert 200 < mc.change_abs < 400  # type: ignore[operator]
    assert mc.verdict == "same" and mc.reason is Reason.SIGNIFICANT_BELOW_MIN_EFFECT
    assert "500 ns minimum effect" in mc.note
    (mc,) = changes(compare.compare_runs(base, large), "service_minus_control_p50_ns")
    assert mc.verdict == "regression" and 900 < mc.change_abs < 1_300  # type: ignore[operator]
    (lat,) = changes(compare.compare_runs(base, large), "p50_latency")
    assert lat.change_pct is not None and 40 < lat.change_pct < 70  # relative as before

    b = write(tmp_path / "b.json", [control_point(rng, 60)])
    n = write(tmp_path / "n.json", [control_point(rng, 1_200)])
    assert main("compare", b, n) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if "service_minus_control_p50_ns" in line)
    assert "µs" in row.split("service_minus_control_p50_ns")[1] and "%" not in row
    assert "REGRESSION" in row
    assert main("compare", b, n, "--format", "csv") == 0
    rows = {r["metric"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    diff = rows["service_minus_control_p50_ns"]
    assert diff["change_pct"] == "" and 900 < float(diff["change_abs"]) < 1_300
    assert diff["verdict"] == "regression" and diff["reason"] == "significant"
    # A smaller minimum effect in ns, and the gate in ns.
    assert main("compare", b, n, "--min-effect-ns", "2000") == 0
    assert "REGRESSION" not in next(line for line in capsys.readouterr().out.splitlines()
                                    if "service_minus_control_p50_ns" in line)
    xml = tmp_path / "gate.xml"
    assert main("compare", b, n, "--fail-on", "service_minus_control_p50_ns:800ns",
                "--junit", xml) == 1
    err = capsys.readouterr().err
    assert "regression beyond --fail-on service_minus_control_p50_ns:800ns" in err
    assert " ns (p=" in err
    (case,) = ET.parse(xml).getroot().findall(".//testcase")
    assert "service_minus_control_p50_ns within +800ns" in (case.get("name") or "")
    failure = case.find("failure")
    assert failure is not None and "µs" in (failure.get("message") or "")
    assert main("compare", b, n, "--fail-on", "service_minus_control_p50_ns:2000ns") == 0


def test_a_difference_gate_in_percent_is_refused_with_the_fix() -> None:
    with pytest.raises(InputError, match=r"service_minus_control_p50_ns:500ns"):
        parse_gate("service_minus_control_p50_ns:10%")
    with pytest.raises(InputError, match="percentage"):
        parse_gate("p99_latency:10ns")
    assert str(parse_gate("service_minus_control_cpu_ns_per_packet:300ns")) == \
        "service_minus_control_cpu_ns_per_packet:300ns"
    assert parse_gate("service_minus_control_p99_ns:250 ns").absolute
    with pytest.raises(InputError, match=r"give the unit, e.g. service_minus_control_p99_ns:500ns"):
        parse_gate("service_minus_control_p99_ns:250")  # once meant 250 %: not silently ns


def test_a_gate_failure_judged_by_runs_alone_is_reported(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    # One full sync per run: no repetition test (p is None), the runs decide.
    rng = np.random.default_rng(22)
    runs = [write(tmp_path / f"r{i}.json", [control_point(rng, 60)]) for i in range(3)]
    pooled = tmp_path / "pooled.json"
    assert main("baseline", *runs, "-o", pooled) == 0
    slow = in_memory([control_point(rng, 60)])
    slow["points"][0]["setup"]["sync_seconds"] = 4.0
    new = tmp_path / "slow.json"
    new.write_text(json.dumps(slow))
    capsys.readouterr()
    assert main("compare", pooled, new, "--fail-on", "sync_full:20%") == 1
    err = capsys.readouterr().err
    assert "regression beyond --fail-on sync_full:20%" in err and "+100.0% (runs q=" in err
    # The difference against the control is tested across runs in ns, not in logs.
    base_doc = load_result(pooled)
    (mc,) = changes(compare.compare_runs(base_doc, slow), "service_minus_control_p50_ns")
    metric = METRICS_BY_NAME["service_minus_control_p50_ns"]
    rb = run_values(metric, runs_of(base_doc["points"][0]))
    rn = run_values(metric, runs_of(slow["points"][0]))
    assert len(rb) == 3 and mc.run_stats is not None
    assert mc.run_stats.diff == pytest.approx(statistics.fmean(rn) - statistics.fmean(rb))
