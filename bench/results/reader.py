"""Reading results: a file checked against its schema, upgraded when older, then used.

Every read checks a document against docs/result.schema.json (every field's
type), then for what a schema cannot say (:func:`validate_result`). A
document of an older schema version is read through the chain of registered
upgrades (bench.results.schema.upgrade); a newer one, or one older than any
upgrade reaches, is refused with what to do. The file itself is read within
the input limits of bench.model.input_limits.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.analysis import stats
from bench.errors import InputError
from bench.model.input_limits import MAX_RESULT_BYTES, brief, parse_json, read_input
from bench.paths import CHECKOUT
from bench.results.model import Point, Result, as_result
from bench.results.schema import KIND, SCHEMA_VERSION, ResultDoc, upgrade

# The result document's JSON Schema (draft 2020-12), published for other tools too.
SCHEMA_PATH = CHECKOUT / "docs" / "result.schema.json"


@functools.cache
def _schema_validator() -> Any:
    # jsonschema-rs: the pure-Python jsonschema takes ~10 s on a baseline's 200 000
    # histogram buckets, this ~0.1 s.
    import jsonschema_rs

    with SCHEMA_PATH.open(encoding="utf-8") as f:
        return jsonschema_rs.Draft202012Validator(json.load(f))


def _json_path(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"), (type(None), "null"))


def _schema_error(error: Any) -> tuple[list[str | int], str]:
    """Where a schema error is (a JSON path) and what it is, in a short line."""
    path = list(error.instance_path)
    kind, value = error.kind, error.instance
    if isinstance(kind, type(kind).Required):
        return [*path, kind.property], "missing"
    if isinstance(kind, type(kind).Type):
        got = next(name for t, name in _JSON_TYPES if isinstance(value, t))
        return path, f"expected {' or '.join(kind.types)}, got {got} {brief(value)}"
    if isinstance(kind, type(kind).Enum):
        return path, f"{brief(value)} is not one of {', '.join(map(str, kind.options))}"
    if isinstance(kind, type(kind).Constant):
        return path, f"{brief(value)} is not {kind.expected_value!r}"
    return path, str(error.message)


def validate_result(doc: Any, source: str) -> ResultDoc:
    """Check a parsed document is a result this version reads; InputError says what to do.

    The document is checked against docs/result.schema.json (every field's type),
    then for what a schema cannot say: histograms that add up, one set of histogram
    parameters per point, pooled runs' shares that add up to the repetitions.
    """
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"not a kpbench result (kind is {brief(kind)}, expected {KIND!r}); "
                         f"pass a file that `kpbench run` wrote", source=source)
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"schema_version is {brief(version)}, expected an integer; the file "
                         f"is damaged or was not written by kpbench", source=source)
    if version > SCHEMA_VERSION:
        raise InputError(f"schema_version {version} is newer than this kpbench reads "
                         f"({SCHEMA_VERSION}); upgrade kpbench (git pull in the checkout) "
                         f"to read it", source=source)
    upgraded = upgrade(doc, version)
    if upgraded is None:
        raise InputError(f"schema_version {version} is older than this kpbench reads "
                         f"({SCHEMA_VERSION}); read it with the kpbench commit that wrote it "
                         f"(environment.git_commit) or re-run the scenario", source=source)
    doc = upgraded
    for error in _schema_validator().iter_errors(doc):
        path, message = _schema_error(error)
        obj = _json_path(path[:2]) if path[:1] == ["points"] and len(path) > 1 else None
        field = _json_path(path[2:] if obj else path) or None
        raise InputError(f"{message}; the file is damaged or not a kpbench result (see "
                         f"{SCHEMA_PATH.relative_to(CHECKOUT)})", source=source, obj=obj,
                         field=field)
    for i, p in enumerate(doc["points"]):
        _check_histograms(p, source, f"points[{i}]")
        if "per_run" in p:
            _check_per_run(p, source, f"points[{i}]")
        p["datapath"] = OLD_FAMILY_NAMES.get(p["datapath"], p["datapath"])
    return doc  # type: ignore[return-value]


#: Family names older results recorded (the variant's first word) -> the family's name.
#: No datapath family is called either, so mapping every document is safe.
OLD_FAMILY_NAMES = {"ebpf": "ebpf-tc", "socket": "socket-lb"}


def _check_histograms(p: dict[str, Any], source: str, obj: str) -> None:
    for key in ("latency_hist", "transit_hist", "rtt_hist"):
        params = set()
        for j, rep in enumerate(p["repetitions"]):
            if rep.get(key) is None:
                continue
            try:
                params.add(stats.Histogram.check_json(rep[key]))
            except ValueError as e:
                raise InputError(f"{e}; the file is damaged", source=source, obj=obj,
                                 field=f"repetitions[{j}].{key}") from None
        if len(params) > 1:
            raise InputError(f"the repetitions' histograms have different parameters "
                             f"{sorted(params)}; they cannot be merged", source=source,
                             obj=obj, field=f"repetitions[].{key}")


def _check_per_run(p: dict[str, Any], source: str, obj: str) -> None:
    shares = p["per_run"]
    if sum(r["repetitions"] for r in shares) != len(p["repetitions"]):
        raise InputError(f"counts {sum(r['repetitions'] for r in shares)} repetitions, the "
                         f"point has {len(p['repetitions'])}; the file is damaged",
                         source=source, obj=obj, field="per_run")


def load_result(path: str | Path) -> ResultDoc:
    """Read and validate a result file (InputError, one line, if it cannot be used)."""
    src = str(path)
    return validate_result(parse_json(read_input(path, MAX_RESULT_BYTES), src), src)


def iter_points(doc: ResultDoc | Result) -> Iterator[Point]:
    """The points of a result, read into the model (bench.results.model), each with a
    summary (the stored one, or computed from the repetitions when the file lacks it)."""
    yield from as_result(doc).points
