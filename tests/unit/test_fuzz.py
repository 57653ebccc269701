"""Fuzzing the input parsers: any input parses or fails with the project's own error."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import InputError
from bench.k8s_input import parse_objects
from bench.scenario import parse_scenario

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
