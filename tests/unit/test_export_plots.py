"""CSV export and plots of a synthetic result: 2 datapaths x 3 scales, plus a failed point."""

from __future__ import annotations

import csv
import io
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.analysis import stats
from bench.present import export, plots
from bench.results.model import Point
from bench.results.reader import load_result
from bench.results.writer import ResultWriter, make_point, make_repetition
from tests.conftest import ROOT

SCALES = (100, 1000, 10_000)
DATAPATHS = (("iptables", "iptables-legacy"), ("nftables", "nftables"))
ENV: dict[str, Any] = {
    "kernel_release": "6.1.0", "kernel_version": "#1", "where": "vm",
    "vm": {"accel": "tcg", "kernel": "6.1.0-amd64"}, "cpu_model": "test", "cpu_count": 2,
    "governor": None, "python": "CPython 3.11", "kpbench": "0.1.0", "tools": {},
    "git_commit": None, "git_dirty": None, "hostname": "test",
}


def base_latency_us(datapath: str, services: int) -> float:
    # iptables walks a linear list (grows with services), nftables is a map lookup.
    return 10 + (services / 1000 * 5 if datapath == "iptables" else 0)


def synthetic_result(tmp_path: Path) -> Path:
    rng = np.random.default_rng(23)
    path = tmp_path / "run.json"
    with ResultWriter(path, scenario={"name": "syn", "path": "syn.toml", "text": ""},
                      environment=ENV, run_id="syn1") as w:
        for dp, variant in DATAPATHS:
            for n in SCALES:
                reps = []
                for _ in range(2):
                    lat = rng.lognormal(np.log(base_latency_us(dp, n) * 1000), 0.3, 2000)
                    reps.append(make_repetition(
                        sent=2000, delivered=2000, offered_pps=5000, achieved_pps=5000,
                        latency_hist=stats.Histogram.from_samples(lat),
                        softirq_ns=int(2000 * base_latency_us(dp, n) * 100),
                        drops={"NETFILTER_DROP": 0}))
                w.add_point(make_point(
                    datapath=dp, variant=variant, services=n, endpoints=10, workload="udp",
                    rate_pps=5000, position="last", position_index=n - 1, repetitions=reps,
                    sync_seconds=n / 1000, settle_seconds=1.0,
                    state_size={"rules": n * 12}))
        # A scale one variant could not reach, and a point whose CPU probe failed.
        w.add_point(make_point(
            datapath="iptables", variant="iptables-nft", services=10_000, endpoints=10,
            workload="udp", rate_pps=5000, position="last", position_index=9999,
            status="exceeded-limit", error="sync took more than 600 s"))
        w.add_point(make_point(
            datapath="iptables", variant="iptables-nft", services=100, endpoints=10,
            workload="udp", rate_pps=5000, position="last", position_index=99,
            repetitions=[make_repetition(sent=100, delivered=100, achieved_pps=5000,
                                         latency_hist=stats.Histogram.from_samples(
                                             np.full(100, 30_000)))],
            missing={"cpu_ns_per_packet": "softirq tracepoint not attachable"}))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_csv_rows(tmp_path: Path) -> None:
    result = load_result(synthetic_result(tmp_path))
    out = tmp_path / "run.csv"
    n = export.write_csv(result, out)
    rows = read_rows(out)
    assert len(rows) == n
    assert tuple(rows[0]) == export.COLUMNS

    def get(variant: str, services: int, metric: str, rep: str = "all") -> list[dict[str, str]]:
        return [r for r in rows if r["variant"] == variant and r["services"] == str(services)
                and r["metric"] == metric and r["repetition"] == rep]

    status = [r for r in rows if r["metric"] == "status"]
    assert len(status) == 8  # one per point, failed ones included
    (failed,) = get("iptables-nft", 10_000, "status")
    assert failed["value"] == "exceeded-limit"
    assert get("iptables-nft", 10_000, "error")[0]["value"] == "sync took more than 600 s"
    assert get("iptables-nft", 10_000, "latency_p99") == []
    (missing,) = get("iptables-nft", 100, "missing.cpu_ns_per_packet")
    assert missing["value"] == "softirq tracepoint not attachable"
    assert get("iptables-nft", 100, "cpu_ns_per_packet") == []  # absent, not zero

    (p99,) = get("iptables-legacy", 10_000, "latency_p99")
    assert p99["unit"] == "ns" and p99["rate_pps"] == "5000" and p99["run_id"] == "syn1"
    assert float(p99["value"]) > 60_000  # ~60 us median at 10k services
    (cpu,) = get("nftables", 1000, "cpu_ns_per_packet")
    assert float(cpu["value"]) == pytest.approx(1000) and cpu["unit"] == "ns/packet"
    assert get("nftables", 1000, "loss")[0]["value"] == "0.0"
    assert get("nftables", 1000, "setup.sync_seconds")[0]["value"] == "1.0"
    assert get("nftables", 1000, "drops.NETFILTER_DROP")[0]["value"] == "0"
    assert len(get("nftables", 1000, "latency_p50", "0")) == 1
    assert len(get("nftables", 1000, "sent", "1")) == 1
    assert get("nftables", 1000, "latency_count")[0]["value"] == "4000"


def test_export_cli_default_path_and_stdout(tmp_path: Path) -> None:
    path = synthetic_result(tmp_path)
    run = [sys.executable, "-m", "bench", "export", str(path)]
    p = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "run.csv").stat().st_size > 0
    p = subprocess.run([*run, "--csv", "-"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60, check=False)
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert rows == read_rows(tmp_path / "run.csv")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "kpbench-result", "schema_version": 99}')
    for cmd in ("export", "plot"):
        p = subprocess.run([sys.executable, "-m", "bench", cmd, str(bad)], capture_output=True,
                           text=True, cwd=ROOT, timeout=60, check=False)
        assert p.returncode == 2
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "schema_version 99 is newer" in lines[0], p.stderr


def test_plots_written_and_non_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = load_result(synthetic_result(tmp_path))
    out = tmp_path / "plots"
    with caplog.at_level(logging.WARNING, logger="kpbench"):
        files = plots.plot_result(result, out)
    names = sorted(f.name for f in files)
    assert names == sorted(f"{fig}_udp.{ext}" for fig in
                           ("latency-vs-services", "cpu-vs-services", "latency-cdf")
                           for ext in ("png", "svg"))
    for f in files:
        assert f.parent == out and f.stat().st_size > 1000
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "exceeded-limit" in caplog.text
    assert "softirq tracepoint not attachable" in caplog.text


def test_plot_notes_can_be_collected_instead_of_logged(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    result = load_result(synthetic_result(tmp_path))
    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger="kpbench"):
        files = plots.plot_result(result, tmp_path / "plots", formats=("png",), notes=notes)
    assert len(files) == 3 and caplog.text == ""
    assert any("exceeded-limit" in n for n in notes)
    assert any("softirq tracepoint not attachable" in n for n in notes)
    assert len(notes) == len(set(notes))  # each said once


def test_plots_with_no_usable_data_do_not_crash(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.json"
    with ResultWriter(path, scenario={"name": "s", "path": "s", "text": ""},
                      environment=ENV) as w:
        w.add_point(make_point(datapath="nftables", variant="nftables", services=10,
                               endpoints=1, workload="tcp", rate_pps=None, position="first",
                               position_index=0, status="failed", error="boom"))
        w.add_point(make_point(datapath="nftables", variant="nftables", services=10,
                               endpoints=1, workload="udp", rate_pps=None, position="first",
                               position_index=0,
                               repetitions=[make_repetition(sent=5, delivered=5,
                                                            softirq_ns=5000)],
                               missing={"latency": "probe failed"}))
    with caplog.at_level(logging.WARNING, logger="kpbench"):
        files = plots.plot_result(load_result(path), tmp_path / "p")
    # Only the CPU figure of the udp workload has anything to draw.
    assert sorted(f.name for f in files) == ["cpu-vs-services_udp.png",
                                              "cpu-vs-services_udp.svg"]
    assert "no latency (probe failed)" in caplog.text
    assert "workload tcp: no point completed" in caplog.text
    empty = load_result(path)
    empty["points"] = []
    assert plots.plot_result(empty, tmp_path / "q") == []


def test_plot_cli(tmp_path: Path) -> None:
    path = synthetic_result(tmp_path)
    p = subprocess.run([sys.executable, "-m", "bench", "plot", str(path)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    listed = [Path(x) for x in p.stdout.split()]
    assert len(listed) == 6 and all(f.parent == tmp_path / "run-plots" for f in listed)
    assert all(f.stat().st_size > 0 for f in listed)


def test_curves_split_by_what_varies_within_a_workload(tmp_path: Path) -> None:
    pts = [make_point(datapath="iptables", variant="iptables-legacy", services=n, endpoints=10,
                      workload="udp", rate_pps=1000, position=pos, position_index=0)
           for n in (1000, 10) for pos in ("first", "last")]
    groups = plots._group([Point(p) for p in pts])
    assert [plots._series_label(k) for k in groups] == [
        "iptables-legacy, position=first", "iptables-legacy, position=last"]
    assert [p["services"] for p in next(iter(groups.values()))] == [10, 1000]
