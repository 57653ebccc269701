"""The end of a run: the figures at a glance, where the files are, what was left out (once)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.commands import run as run_cmd
from bench.paths import CHECKOUT
from bench.present.summary import figures_tables, left_out
from bench.results.writer import ResultWriter, make_point
from tests.helpers.synthetic_results import ENV, in_memory, point

LACKS = "kernel feature missing: ipvs: ip_vs module not available"


def result_points(workloads: tuple[str, ...] = ("udp-new", "nodeport-udp-new")) -> list[Any]:
    rng = np.random.default_rng(3)
    pts = [point(rng, variant=v, services=n, workload=w)
           for v in ("iptables-legacy", "nftables") for n in (1, 1000, 5000) for w in workloads]
    pts += [make_point(datapath="ipvs", variant="ipvs", services=n, endpoints=10, workload=w,
                       rate_pps=5000, position="last", position_index=n - 1, status="failed",
                       error=LACKS)
            for n in (1, 1000, 5000) for w in workloads]
    pts += [make_point(datapath="socket", variant="socket-lb", services=n, endpoints=10,
                       workload=w, rate_pps=5000, position="last", position_index=n - 1,
                       status="failed", error="not applicable: replayed frames have no socket")
            for n in (1, 1000) for w in workloads]
    pts.append(make_point(datapath="nftables", variant="nftables-x", services=5000,
                          endpoints=10, workload="udp-new", rate_pps=5000, position="last",
                          position_index=4999, status="exceeded-limit", error="sync > 600 s"))
    return pts


def test_figures_table_per_workload_with_left_out_variants_said_once() -> None:
    doc = in_memory(result_points())
    assert left_out(doc) == {"ipvs": "ipvs: ip_vs module not available"}
    tables, notes = figures_tables(doc)
    assert [title for title, _ in tables] == ["udp-new: p50 latency · CPU per packet",
                                              "nodeport-udp-new: p50 latency · CPU per packet"]
    udp = tables[0][1]
    assert udp.columns == ["variant", "1 svc", "1,000 svc", "5,000 svc"]
    rows = {r[0]: r[1:] for r in udp.rows}
    assert set(rows) == {"iptables-legacy", "nftables", "nftables-x"}  # no ipvs, no socket-lb
    assert rows["nftables"][2].endswith(" ns") and "µs · " in rows["nftables"][2]
    assert rows["nftables-x"] == ["", "", "over limit"]
    assert notes == ["socket-lb: not applicable to udp-new, nodeport-udp-new"]


@pytest.fixture
def run_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    # The checkout's own results/ may hold real VM runs: the tests see only their own.
    monkeypatch.setattr(run_cmd, "DEFAULT_RESULTS", tmp_path / "checkout-results")
    return argparse.Namespace(scenario="scenarios/default.toml", results=str(tmp_path),
                              no_export=False)


def test_the_run_ends_with_its_figures_its_files_and_one_line_per_left_out_thing(
        tmp_path: Path, run_args: argparse.Namespace, capsys: pytest.CaptureFixture[str]
        ) -> None:
    path = tmp_path / "m" / "run_default.json"
    path.parent.mkdir()
    with ResultWriter(path, scenario={"name": "default", "path": "scenarios/default.toml",
                                      "text": ""}, environment=dict(ENV)) as w:
        for p in result_points(("udp-new",)):  # one workload: drawing takes seconds
            w.add_point(p)
    run_cmd.epilogue(path, run_args)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "udp-new: p50 latency · CPU per packet" in lines
    where = {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in lines
             if ln.startswith(("result:", "csv:", "plots:", "report:"))}
    assert set(where) == {"result", "csv", "plots", "report"}
    for text in where.values():
        assert Path(text.split(" (")[0]).exists(), text
    pngs = list(Path(where["plots"].split(" (")[0]).glob("*.png"))
    assert len(pngs) == 3 and "(3 figures, PNG and SVG; what a figure leaves out" in where["plots"]
    # Each thing left out is said once, not once per scale, figure or workload.
    assert sum("ipvs" in ln for ln in lines) == 2  # what is left out, and the command
    (left,) = [ln for ln in lines if ln.startswith("left out")]
    assert "ip_vs module not available" in left
    (cmd,) = [ln.strip() for ln in lines if " vm run " in ln]
    assert cmd.endswith(f"run scenarios/default.toml --datapaths ipvs --results {tmp_path}")
    assert f"--rwdir {tmp_path}" in cmd
    assert "socket-lb: not applicable to udp-new" in out and out.count("socket-lb") == 1
    assert "plot:" not in out + err  # the figures' notes are in their footnotes


VM_IPVS = "kpbench vm run -- run scenarios/default.toml --datapaths ipvs"


def write_vm_run(path: Path, minutes: int, selected: list[str] | None) -> None:
    """A complete VM result of scenario "syn" that measured for ``minutes``."""
    vm_env = {**ENV, "where": "vm", "vm": {"accel": "tcg", "kernel": "6.1.0"}}
    scenario = {"name": "syn", "path": "syn.toml", "text": "",
                **({"selected_datapaths": selected} if selected is not None else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    with ResultWriter(path, scenario=scenario, environment=vm_env) as w:
        w.add_point(point(np.random.default_rng(1), variant="ipvs"))
    w.document["started"] = "2026-11-30T08:00:00+00:00"
    w.document["finished"] = (f"2026-11-30T{8 + minutes // 60:02d}:{minutes % 60:02d}:00"
                              "+00:00")
    w._write()


def test_the_vm_time_is_the_last_run_of_that_very_command_stored_here(
        tmp_path: Path, run_args: argparse.Namespace) -> None:
    doc = in_memory(result_points())  # scenario "syn", ipvs left out
    documented = run_cmd._vm_time(run_args, doc, {"ipvs": "x"})
    assert "docs/machines.md" in documented
    # A whole-suite VM run of the scenario measured ipvs too, but its time is not the time
    # of the command that measures ipvs alone.
    write_vm_run(tmp_path / "vm" / "suite.json", 113, selected=None)
    write_vm_run(tmp_path / "vm" / "two.json", 50, selected=["ipvs", "xdp"])
    assert run_cmd._vm_time(run_args, doc, {"ipvs": "x"}) == documented
    path = tmp_path / "vm" / "r.json"
    write_vm_run(path, 25, selected=["ipvs"])
    said = run_cmd._vm_time(run_args, doc, {"ipvs": "x"})
    assert "TCG" in said and "25 min" in said and str(path) in said


def test_without_a_stored_run_the_time_is_the_one_measured_in_docs_and_the_readme_agrees(
        run_args: argparse.Namespace) -> None:
    measured = run_cmd.documented_time(VM_IPVS)
    assert measured is not None and "min" in measured
    said = run_cmd._vm_time(run_args, in_memory(result_points()), {"ipvs": "x"})
    assert measured in said and "docs/machines.md" in said and "TCG" in said
    # One figure: the README's table of times quotes the same cell for the same command.
    assert run_cmd.documented_time(VM_IPVS, CHECKOUT / "README.md") == measured


def test_documented_time_is_the_cell_after_the_exact_command(tmp_path: Path) -> None:
    doc = tmp_path / "m.md"
    doc.write_text("| run | time |\n| --- | --- |\n"
                   "| `kpbench vm run -- run s.toml` (all) | 113 min |\n"
                   "| host | `kpbench vm run -- run s.toml --datapaths ipvs`: a VM | 40 min |\n"
                   "`kpbench vm run -- run s.toml --datapaths xdp` | 9 min (not a table)\n")
    assert run_cmd.documented_time("kpbench vm run -- run s.toml --datapaths ipvs", doc) \
        == "40 min"
    assert run_cmd.documented_time("kpbench vm run -- run s.toml", doc) == "113 min"
    assert run_cmd.documented_time("kpbench vm run -- run s.toml --datapaths xdp", doc) is None
    assert run_cmd.documented_time("kpbench vm run -- run s.toml", tmp_path / "no.md") is None
