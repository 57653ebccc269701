"""The read model (bench.results.model) and the schema's upgrade chain (bench.results.schema)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from bench.analysis import stats
from bench.analysis.metrics import METRICS
from bench.analysis.runlevel import run_values, within_run_variance
from bench.present.export import rows
from bench.present.summary import points_table
from bench.results import schema
from bench.results.baseline import merge_runs
from bench.results.model import Point, Result, runs_of
from bench.results.reader import iter_points
from bench.results.summarise import summarise_point
from bench.results.writer import make_repetition
from tests.helpers.synthetic_results import in_memory, point


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every histogram parsed from a document (stats.Histogram.from_json)."""
    calls: list[int] = []
    parse = stats.Histogram.from_json.__func__  # type: ignore[attr-defined]

    def counted(cls: type[stats.Histogram], doc: Any) -> stats.Histogram:
        calls.append(1)
        return parse(cls, doc)  # type: ignore[no-any-return]

    monkeypatch.setattr(stats.Histogram, "from_json", classmethod(counted))
    return calls


@pytest.fixture
def merges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every merge of histograms (stats.merge)."""
    calls: list[int] = []
    merge = stats.merge

    def counted(hists: Any) -> stats.Histogram:
        calls.append(1)
        return merge(hists)

    monkeypatch.setattr(stats, "merge", counted)
    return calls


def _pooled(runs: int = 3, reps: int = 3) -> Result:
    """A baseline pooled from ``runs`` runs of one point, with a breakdown repetition."""
    rng = np.random.default_rng(7)
    docs = [(f"run{i}.json", in_memory([point(rng, reps=reps)])) for i in range(runs)]
    merged: Any = copy.deepcopy(merge_runs(docs)[0])
    merged["points"][0]["breakdown"] = make_repetition(
        sent=100, delivered=100, transit_hist=stats.Histogram.from_samples([1000.0] * 100))
    return Result(merged)


def test_every_histogram_is_parsed_once_however_many_readers(parses: list[int]) -> None:
    result = _pooled(runs=3, reps=3)
    parses.clear()  # building the documents parsed them; the model starts afresh
    (p,) = result.points
    del p.doc["summary"]  # computed from the repetitions: reads their histograms too
    for metric in METRICS:  # three latency metrics read each repetition's histogram
        metric.samples(p)
        metric.pooled(p)
        run_values(metric, p.runs)
        within_run_variance(metric, p.runs)
    list(rows(result))
    points_table(result)
    # 3 runs x 3 repetitions' latency and the breakdown's transit, each parsed once
    assert len(parses) == 10
    assert [len(r.repetitions) for r in p.runs] == [3, 3, 3]
    assert all(r is s for run in p.runs for r, s in zip(
        run.repetitions, p.repetitions[3 * p.runs.index(run):], strict=False))


def test_a_points_histograms_are_merged_once(merges: list[int]) -> None:
    rng = np.random.default_rng(1)
    doc = point(rng, reps=4)
    p = Point(doc)
    assert "summary" not in doc
    first = p.summary
    assert p.summary is first and p["summary"] is first
    assert len(merges) == 1  # the latency histograms, for the summary
    assert p.latency is p.latency
    assert len(merges) == 2  # the merged histogram the figures read, kept
    assert first == summarise_point(doc)  # the same figures as from the document


def test_a_point_reads_as_its_document_with_a_summary() -> None:
    rng = np.random.default_rng(2)
    doc = point(rng, reps=3)
    (p,) = iter_points(in_memory([doc]))
    assert isinstance(p, Point)
    assert p["variant"] == doc["variant"] and p.get("error") is None
    assert set(p) == {*doc, "summary"} and len(p) == len(doc) + 1
    assert p.as_doc() == {**doc, "summary": summarise_point(doc)}
    assert runs_of(doc)[0].doc is doc  # one run: the point itself


def test_the_upgrade_chain_runs_every_step_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A document two versions old goes through both registered upgrades, in order."""
    steps: list[int] = []

    def v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
        steps.append(doc["schema_version"])
        doc["v3"] = True
        return doc

    v1_to_v2 = schema.UPGRADES[1]

    def traced_v1(doc: dict[str, Any]) -> dict[str, Any]:
        steps.append(doc["schema_version"])
        return v1_to_v2(doc)

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(schema, "UPGRADES", {1: traced_v1, 2: v2_to_v3})
    doc = schema.upgrade({"schema_version": 1, "points": []}, 1)
    assert doc is not None
    assert steps == [1, 2]
    assert doc["schema_version"] == 3 and doc["upgraded_from"] == 1 and doc["v3"]
    assert schema.upgrade({"schema_version": 0}, 0) is None  # no step from 0


def test_upgrades_are_registered_once_per_version() -> None:
    assert schema.UPGRADES[1] is schema.upgrade_v1
    with pytest.raises(ValueError, match="two upgrades from schema_version 1"):
        schema.upgrade_from(1)(lambda doc: doc)
    current = {"schema_version": schema.SCHEMA_VERSION}
    assert schema.upgrade(current, schema.SCHEMA_VERSION) is current  # nothing to do
    assert "upgraded_from" not in current
