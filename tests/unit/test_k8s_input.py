"""Parsing Services and EndpointSlices as kubectl prints them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.errors import InputError
from bench.model.generate import GenSpec, generate, to_k8s
from bench.model.k8s_input import load_objects, parse_objects
from bench.model.objects import service_port_views
from tests.conftest import DATA

BAD = sorted(p for p in (DATA / "bad").iterdir() if p.suffix in (".yaml", ".json"))


def expected_error(path: Path) -> str:
    sidecar = path.with_name(path.name + ".expect")
    if sidecar.exists():
        return sidecar.read_text().strip()
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must say what error it expects"
    return first.removeprefix("# expect: ")


def test_kubectl_list_parses_with_warnings() -> None:
    objs = load_objects(DATA / "good" / "kubectl-list.yaml")
    assert [s.key for s in objs.services] == ["shop/web", "shop/edge"]
    web, edge = objs.services
    assert web.session_affinity == "ClientIP" and web.affinity_timeout == 600
    assert [p.name for p in web.ports] == ["http", "metrics"]
    assert web.ports[1].target_port == "metrics"
    assert edge.type == "NodePort" and edge.ports[0].node_port == 30443
    assert edge.external_policy_local and edge.health_check_node_port == 30500
    assert any("spec.publishNotReadyAddresses" in w for w in objs.warnings)
    assert any("Service shop/db" in w and "Service shop/ext" in w for w in objs.warnings)


def test_endpoint_conditions_and_ports_join() -> None:
    objs = load_objects(DATA / "good" / "kubectl-list.yaml")
    views = service_port_views(objs.services, objs.slices, "node-b")
    http = next(v for v in views if v.name == "shop/web:http")
    assert http.name == "shop/web:http"
    assert [e.address for e in http.endpoints] == ["10.1.1.5:8080", "10.2.1.6:8080",
                                                   "10.2.1.7:8080"]
    ready = {e.ip: e.ready for e in http.endpoints}
    # An unset `ready` condition means ready (Kubernetes API semantics).
    assert ready == {"10.1.1.5": True, "10.2.1.6": False, "10.2.1.7": True}
    assert [e.ip for e in http.cluster_endpoints] == ["10.1.1.5", "10.2.1.7"]
    assert [e.ip for e in http.local_endpoints] == ["10.2.1.7"]
    metrics = next(v for v in views if v.name == "shop/web:metrics")
    assert {e.port for e in metrics.endpoints} == {9100}
    edge = next(v for v in views if v.name == "shop/edge")
    assert [e.address for e in edge.endpoints] == ["10.2.1.9:8443"]


def test_multidocument_stream_and_json_are_the_same_input() -> None:
    services, slices = generate(GenSpec(services=3, endpoints=2))
    doc = to_k8s(services, slices)
    stream = yaml.safe_dump_all(doc["items"])
    a = parse_objects(stream)
    b = parse_objects(json.dumps(doc))
    assert a.services == b.services == services
    assert a.slices == b.slices == slices


def test_terminating_endpoints_are_used_only_when_none_is_ready() -> None:
    text = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 172.30.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.1.1.1], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.1.1.2], conditions: {ready: false, serving: false, terminating: true}}
ports: [{port: 8080}]
"""
    objs = parse_objects(text)
    (view,) = service_port_views(objs.services, objs.slices, None)
    assert [e.ip for e in view.cluster_endpoints] == ["10.1.1.1"]


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_input_is_one_line_naming_the_field(path: Path) -> None:
    with pytest.raises(InputError) as exc:
        load_objects(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    assert expected_error(path) in msg


def test_generator_rejects_impossible_scales() -> None:
    with pytest.raises(InputError, match="service CIDR"):
        generate(GenSpec(services=70000, endpoints=1))
    with pytest.raises(InputError, match="pod CIDRs"):
        generate(GenSpec(services=20000, endpoints=10, nodes=1))
    with pytest.raises(InputError, match="node port range"):
        generate(GenSpec(services=3000, endpoints=1, type="NodePort"))


def test_generator_spreads_endpoints_over_nodes() -> None:
    services, slices = generate(GenSpec(services=10, endpoints=10, nodes=2))
    views = service_port_views(services, slices, "node-0")
    assert len(views) == 10
    for v in views:
        assert len(v.endpoints) == 10
        assert sum(e.is_local for e in v.endpoints) == 5
    ips = [e.ip for v in views for e in v.endpoints]
    assert len(set(ips)) == len(ips)
    assert not any(ip.endswith((".0", ".255")) for ip in ips)
