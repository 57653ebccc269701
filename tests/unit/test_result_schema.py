"""docs/result.schema.json: a valid JSON Schema that every result kpbench writes passes.

Results the tests write in-process are checked by the autouse fixture in
tests/conftest.py; results of `kpbench` subprocesses when the tests read them
(load_result validates against the schema).
"""

from __future__ import annotations

import copy
import json
from typing import Any, get_type_hints

import jsonschema
import pytest

from bench.results import reader, schema, writer
from bench.results.baseline import merge_runs
from tests.conftest import ROOT
from tests.unit.test_results import ENV, SCENARIO, point

SCHEMA = json.loads(reader.SCHEMA_PATH.read_text())
BASELINE = ROOT / "results" / "baselines" / "default.json"


def reference_errors(doc: Any) -> list[str]:
    """Errors of the reference implementation (python-jsonschema), as other tools see them."""
    v = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(doc)]


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["properties"]["schema_version"]["const"] == schema.SCHEMA_VERSION


def test_the_committed_baseline_validates() -> None:
    doc = json.loads(BASELINE.read_text())
    if doc["schema_version"] < schema.SCHEMA_VERSION:  # read as the reader upgrades it
        doc = schema.upgrade_v1(doc)
    assert list(reader._schema_validator().iter_errors(doc)) == []
    # The reference implementation takes ~10 s on all 66 points: a few are enough for it.
    assert reference_errors({**doc, "points": doc["points"][:3]}) == []
    reader.load_result(BASELINE)


def _written(tmp_path: Any) -> dict[str, Any]:
    with writer.ResultWriter(tmp_path / "r.json", scenario=SCENARIO, environment=ENV) as w:
        w.add_point(point(0))
        w.add_point(point(1, status="failed", error="boom", missing={"latency": "no probe"}))
    return json.loads((tmp_path / "r.json").read_text())


def test_a_written_result_and_a_merged_baseline_validate(tmp_path: Any) -> None:
    doc = _written(tmp_path)
    assert reference_errors(doc) == []
    merged, _ = merge_runs([("a.json", doc), ("b.json", copy.deepcopy(doc))])
    assert reference_errors(merged) == [] and "merged_from" in merged


@pytest.mark.parametrize("where,value", [
    (("environment",), 5),
    (("scenario",), "default"),
    (("points",), {}),
    (("points", 0, "repetitions"), 3),
    (("points", 0, "services"), "100"),
    (("points", 0, "repetitions", 0, "sent"), 1.5),
    (("points", 0, "repetitions", 0, "latency_hist", "buckets"), [1]),
    (("points", 0, "summary"), "fast"),
    (("status",), "done"),
    (("environment", "git_dirty"), "no"),
])
def test_wrong_types_are_refused_by_both_validators(tmp_path: Any, where: tuple[Any, ...],
                                                    value: Any) -> None:
    doc = _written(tmp_path)
    target = doc
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    assert reference_errors(doc)
    assert list(reader._schema_validator().iter_errors(doc))


@pytest.mark.parametrize("typed,schema_path", [
    (schema.ResultDoc, ()),
    (schema.EnvironmentDoc, ("$defs", "environment")),
    (schema.PointDoc, ("$defs", "point")),
    (schema.RepetitionDoc, ("$defs", "repetition")),
    (schema.SummaryDoc, ("$defs", "summary")),
    (schema.SetupDoc, ("$defs", "setup")),
])
def test_every_field_the_code_writes_is_in_the_schema(typed: type, schema_path: tuple) -> None:
    node = SCHEMA
    for key in schema_path:
        node = node[key]
    assert set(get_type_hints(typed)) <= set(node["properties"]), typed.__name__
