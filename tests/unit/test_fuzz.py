"""Fuzzing the input parsers: any input parses or fails with the project's own error."""

from __future__ import annotations

import copy
import json
import math
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import InputError
from bench.measure.scenario import load_scenario, parse_scenario
from bench.model.input_limits import parse_toml
from bench.model.k8s_input import parse_objects
from bench.present.export import rows as export_rows
from bench.present.summary import environment_table, points_table
from bench.results.reader import load_result
from bench.results.schema import KIND, SCHEMA_VERSION
from bench.results.summarise import summarise_point

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40),
                    st.floats(allow_nan=False), st.text(max_size=20),
                    st.sampled_from(["Service", "EndpointSlice", "v1", "discovery.k8s.io/v1",
                                     "172.30.0.10", "10.1.1.1", "TCP", "UDP", "NodePort",
                                     "ClientIP", "Local", "IPv4", "None", "fd00::1"]))
KEYS = st.sampled_from(["apiVersion", "kind", "metadata", "name", "namespace", "spec", "ports",
                        "port", "clusterIP", "type", "nodePort", "targetPort", "protocol",
                        "endpoints", "addresses", "conditions", "ready", "labels", "items",
                        "kubernetes.io/service-name", "addressType", "sessionAffinity",
                        "sessionAffinityConfig", "clientIP", "timeoutSeconds", "x"])
TREES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=6)), max_leaves=30)

SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"clusterIP": "172.30.0.10", "ports": [{"port": 80}]}}


def _parses_or_input_error(text: str) -> None:
    try:
        parse_objects(text, "<fuzz>")
    except InputError as e:
        assert "\n" not in str(e)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES)
def test_any_json_tree_parses_or_raises_input_error(tree: object) -> None:
    _parses_or_input_error(json.dumps(tree))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, TREES, max_size=5))
def test_a_service_with_any_spec_parses_or_raises_input_error(spec: dict) -> None:
    _parses_or_input_error(json.dumps({**SERVICE, "spec": {**SERVICE["spec"], **spec}}))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_raises_input_error(text: str) -> None:
    _parses_or_input_error(text)


SCENARIO_KEYS = st.sampled_from(["name", "kind", "sweep", "traffic", "measure", "sync",
                                 "datapaths", "services", "endpoints", "nodes", "position",
                                 "max_services", "workloads", "rate_pps", "packets",
                                 "repetitions", "warmup_packets", "probes", "overhead",
                                 "changes", "nftables", "iptables-nft", "bogus"])
SCENARIO_TREES = st.recursive(
    st.one_of(SCALARS, st.sampled_from(["nftables", "iptables-legacy", "udp-new", "last",
                                        "sync", "add-service", "latency"])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(SCENARIO_KEYS, children, max_size=5)),
    max_leaves=25)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(SCENARIO_KEYS, SCENARIO_TREES, max_size=6))
def test_any_scenario_document_parses_or_raises_input_error(doc: dict) -> None:
    try:
        parse_scenario(doc, "<fuzz>")
    except InputError as e:
        assert "\n" not in str(e)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(SCENARIO_KEYS, SCENARIO_TREES, max_size=5),
       st.dictionaries(SCENARIO_KEYS, SCENARIO_TREES, max_size=5))
def test_scenario_with_valid_sweep_and_any_traffic(traffic: dict, measure: dict) -> None:
    doc = {"sweep": {"datapaths": ["nftables"], "services": [1, 10]}, "traffic": traffic,
           "measure": measure}
    try:
        parse_scenario(doc, "<fuzz>")
    except InputError as e:
        assert "\n" not in str(e)


# -- the file readers, structure-aware, each example bounded in time and memory ------------

MAX_EXAMPLE_MB = 50
MAX_EXAMPLE_CPU_S = 2.0


def bounded(fn: Callable[[], object]) -> None:
    """Run one example: it must parse or raise a one-line InputError, within
    MAX_EXAMPLE_CPU_S of CPU and MAX_EXAMPLE_MB of Python allocations (tracemalloc).

    Over the CPU bound once, the example runs again and the quicker run counts: this
    kernel charges the softirq work it does in a task's context to that task (no IRQ
    time accounting), and once a first call of a deep example took 2.7 s of which a
    second one needed a fraction (CI, 2026-12-01). An input that really is unbounded
    is over the bound both times."""
    cpus = []
    for _ in range(2):
        tracemalloc.start()
        t0 = time.process_time()
        try:
            fn()
        except InputError as e:
            assert "\n" not in str(e) and len(str(e)) < 2000
        finally:
            cpus.append(time.process_time() - t0)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < MAX_EXAMPLE_MB * 2**20, (cpus, peak)
        if cpus[-1] < MAX_EXAMPLE_CPU_S:
            return
    raise AssertionError(f"over {MAX_EXAMPLE_CPU_S} s of CPU twice: {cpus}")


HUGE = st.one_of(st.integers(-(10**200), 10**200), st.just(10**1000),
                 st.floats(allow_nan=True, allow_infinity=True))
WRONG = st.one_of(SCALARS, HUGE, st.lists(SCALARS, max_size=3),
                  st.dictionaries(KEYS, SCALARS, max_size=3))


def nested(depth: int, leaf: str = "1", kind: str = "[]") -> str:
    return kind[0] * depth + leaf + kind[1] * depth


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == math.inf else "-inf" if v == -math.inf
                                     else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}"
                               for k, x in v.items() if x is not None) + "}"
    return json.dumps(str(v))


def toml_text(doc: dict) -> str:
    """A TOML document of ``doc`` (inline tables; None dropped, as TOML has no null)."""
    return "".join(f"{json.dumps(str(k))} = {_toml_value(v)}\n" for k, v in doc.items()
                   if v is not None)


def corrupt(data: bytes, how: int, at: int) -> bytes:
    """Damage bytes: a non-UTF-8 byte, a NUL, a cut, a deep nesting, or nothing."""
    at = at % (len(data) + 1)
    return [data, data[:at] + b"\xff\xfe" + data[at:], data[:at] + b"\x00" + data[at:],
            data[:at], data[:at] + nested(5000).encode() + data[at:]][how % 5]


VALID_SCENARIO = {"name": "fuzz", "sweep": {"datapaths": ["nftables"], "services": [1, 10]},
                  "traffic": {"workloads": ["udp-new"], "repetitions": 3},
                  "measure": {"settle_tolerance": 0.15}}


def _mutate(doc: Any, path: list[int], value: object, delete: bool) -> Any:
    """``doc`` with the node at ``path`` (indices into its keys/items, wrapped) replaced by
    ``value`` or deleted."""
    doc = copy.deepcopy(doc)
    node = doc
    for step in path:
        children = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not children:
            break
        key = children[step % len(children)]
        if not isinstance(node[key], dict | list) or not node[key] or step == path[-1]:
            if delete:
                del node[key]
            else:
                node[key] = value
            return doc
        node = node[key]
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 50), min_size=1, max_size=4), WRONG, st.booleans(),
       st.integers(0, 4), st.integers(0, 10**6))
def test_scenario_files_parse_or_refuse_in_bounds(tmp_path_factory: pytest.TempPathFactory,
                                                  path: list[int], value: object,
                                                  delete: bool, how: int, at: int) -> None:
    doc = _mutate(VALID_SCENARIO, path, value, delete)
    f = tmp_path_factory.mktemp("sc") / "s.toml"
    f.write_bytes(corrupt(toml_text(doc).encode(), how, at))
    bounded(lambda: load_scenario(f))


def _valid_result() -> dict:
    from tests.unit.test_results import ENV, SCENARIO, point

    p = dict(point(0))
    p["summary"] = summarise_point(p)
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "run_id": "r", "started": "t",
            "finished": None, "status": "complete", "scenario": SCENARIO,
            "environment": ENV, "points": [p]}


VALID_RESULT = _valid_result()


def _json_value(v: object) -> str:
    # json.dumps cannot write a 1000-digit integer (Python's digit limit): spell it out.
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**300:
        return "9" * 1000
    return json.dumps(v, allow_nan=True)


def result_usable(doc: Any) -> None:
    """What the commands do with a result that was accepted: it must not fail."""
    list(export_rows(doc))
    points_table(doc)
    environment_table(doc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 50), min_size=1, max_size=7), WRONG, st.booleans(),
       st.integers(0, 4), st.integers(0, 10**6))
def test_result_files_parse_or_refuse_in_bounds(tmp_path_factory: pytest.TempPathFactory,
                                                path: list[int], value: object,
                                                delete: bool, how: int, at: int) -> None:
    marker = "\"__FUZZ_VALUE__\""
    doc = _mutate(VALID_RESULT, path, "__FUZZ_VALUE__", delete)
    text = json.dumps(doc).replace(marker, _json_value(value))
    f = tmp_path_factory.mktemp("res") / "r.json"
    f.write_bytes(corrupt(text.encode(), how, at))

    def read() -> None:
        result_usable(load_result(f))
    bounded(read)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3), st.integers(10, 5_000))
def test_deep_nesting_is_refused_in_bounds(kind: int, depth: int) -> None:
    text = [nested(depth), nested(depth, "1", "{}").replace("{", '{"a":'),
            "a: " + nested(depth), "a = " + nested(depth)][kind]
    if kind == 3:
        bounded(lambda: parse_toml(text, "<fuzz>"))
    else:
        bounded(lambda: parse_objects(text, "<fuzz>"))
