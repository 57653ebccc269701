"""Results other tools read, each read back with a real parser of its format: OpenSearch
bulk NDJSON (json, line by line), perfdash PerfData (its documented field set), and the
compare gate as JUnit XML (xml.etree)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from bench.present.export import summary_metrics
from bench.results.reader import iter_points, load_result
from bench.results.writer import make_point
from tests.helpers.synthetic_results import (
    ENV,
    REGRESSED_SCALES,
    keep_signal_handlers,
    main,
    point,
    regressed_results,
    write,
)

__all__ = ["keep_signal_handlers"]  # the autouse fixture, for this module too


@pytest.fixture
def result(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    pts = [point(rng, variant=v, services=n) for v in ("nftables", "iptables-legacy")
           for n in (1, 1000)]
    pts.append(make_point(datapath="ipvs", variant="ipvs", services=1000, endpoints=10,
                          workload="udp-new", rate_pps=5000, position="last",
                          position_index=999, status="failed",
                          error="kernel feature missing: ipvs"))
    env = {**ENV, "machine_id": "3f2a9c1e"}
    return write(tmp_path / "r.json", pts, env=env, name="default")


def test_opensearch_bulk_is_one_action_and_one_document_per_point_and_metric(
        result: Path, tmp_path: Path) -> None:
    out = tmp_path / "bulk.ndjson"
    assert main("export", result, "--format", "opensearch", "-o", out, "--index", "kpb") == 0
    text = out.read_text()
    assert text.endswith("\n")  # the _bulk API needs the final newline
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    actions, docs = lines[0::2], lines[1::2]
    assert len(actions) == len(docs)
    assert all(set(a) == {"index"} and a["index"]["_index"] == "kpb" for a in actions)
    ids = [a["index"]["_id"] for a in actions]
    assert len(set(ids)) == len(ids)  # loading twice replaces, never doubles
    doc = load_result(result)
    expected = 0
    for p in iter_points(doc):
        if p["status"] == "ok":
            expected += sum(isinstance(v, int | float) for _, v, _ in summary_metrics(p))
        else:
            expected += 1  # its status, with the error
    assert len(docs) == expected
    for d in docs:
        assert d["uuid"] == doc["run_id"] and d["scenario"] == "default"
        assert d["environment"]["kernel_release"] == ENV["kernel_release"]
        assert d["machine"].startswith("test-3f2a9c1e-host-")
        assert d["point_status"] == "ok" or (d["metricName"] == "status"
                                             and d["value"] is None and d["error"])
    p50 = [d for d in docs if d["metricName"] == "latency_p50" and d["variant"] == "nftables"
           and d["services"] == 1000]
    (want,) = [p for p in iter_points(doc) if p["variant"] == "nftables"
               and p["services"] == 1000]
    assert [d["value"] for d in p50] == [want["summary"]["latency_ns"]["p50"]]
    assert p50[0]["unit"] == "ns"


def test_perfdash_is_perfdata_v1_with_its_documented_fields(result: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    assert main("export", result, "--format", "perfdash", "-o", out) == 0
    doc = json.loads(out.read_text())
    # perf-tests clusterloader2/pkg/measurement/util/perftype.go: PerfData and DataItem.
    assert set(doc) <= {"version", "dataItems", "labels"} and doc["version"] == "v1"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc["labels"].items())
    for item in doc["dataItems"]:
        assert set(item) <= {"data", "unit", "labels"} and {"data", "unit"} <= set(item)
        assert isinstance(item["unit"], str) and item["data"]
        assert all(isinstance(v, float) and math.isfinite(v) for v in item["data"].values())
        assert all(isinstance(v, str) for v in item["labels"].values())
    latency = [i for i in doc["dataItems"] if i["labels"]["Metric"] == "latency"]
    assert len(latency) == 4  # the four measured points; the failed one has none
    r = load_result(result)
    (nft,) = [p for p in iter_points(r) if p["variant"] == "nftables" and p["services"] == 1]
    (item,) = [i for i in latency if i["labels"]["variant"] == "nftables"
               and i["labels"]["services"] == "1"]
    assert item["unit"] == "us"
    assert item["data"]["Perc99"] == pytest.approx(nft["summary"]["latency_ns"]["p99"] / 1000)


def test_csv_keeps_working_and_options_that_conflict_are_one_line(
        result: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main("export", result, "--csv", tmp_path / "a.csv") == 0
    assert main("export", result, "-o", tmp_path / "b.csv") == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert main("export", result) == 0 and result.with_suffix(".csv").exists()
    capsys.readouterr()
    assert main("export", result, "--csv", tmp_path / "c.csv", "--format", "perfdash") == 2
    assert main("export", result, "--index", "x") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("kpbench: error: --") for line in err)


def _junit(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    return root


def test_compare_junit_has_one_case_per_point_and_gated_metric(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, slow, same = regressed_results(tmp_path)
    xml = tmp_path / "gate.xml"
    gates = ("--fail-on", "p99_latency:10%", "--fail-on", "cpu_ns_per_packet:10%")
    assert main("compare", base, slow, *gates, "--junit", xml) == 1
    root = _junit(xml)
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == 2 * len(REGRESSED_SCALES)  # per point, per gated metric
    failures = [c for c in cases if c.find("failure") is not None]
    assert failures and int(root.get("failures", "-1")) == len(failures)
    assert all("p99_latency within +10%" in c.get("name", "") for c in failures)
    assert all("regression beyond --fail-on p99_latency:10%"
               in c.find("failure").get("message", "") for c in failures)  # type: ignore[union-attr]
    assert main("compare", base, same, *gates, "--junit", xml) == 0
    root = _junit(xml)
    assert root.get("failures") == "0"
    assert len(root.findall(".//testcase")) == 2 * len(REGRESSED_SCALES)
    capsys.readouterr()
    assert main("compare", base, same, "--junit", xml) == 2  # nothing gated: say so
    assert "--junit" in capsys.readouterr().err
