"""Read Services and EndpointSlices as Kubernetes prints them.

Accepts what ``kubectl get svc,endpointslices -A -o yaml`` (or ``-o json``)
prints: a ``List`` (or ``ServiceList`` / ``EndpointSliceList``) or a
multi-document YAML stream of ``v1`` ``Service`` and ``discovery.k8s.io/v1``
``EndpointSlice`` objects. Fields a Service proxy does not act on are
ignored, and the ones that would change proxying but that kpbench does not
model are listed in a warning. Malformed objects raise :class:`InputError`
naming the file, the object and the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import InputError
from bench.model.input_limits import brief, parse_json, parse_yaml_documents, read_input
from bench.model.objects import (
    DEFAULT_AFFINITY_TIMEOUT,
    MAX_AFFINITY_TIMEOUT,
    PROTOCOLS,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Fields read, or known to be irrelevant to a node's Service proxy (no warning).
_SERVICE_SPEC_FIELDS = {
    "type", "clusterIP", "clusterIPs", "ports", "selector", "sessionAffinity",
    "sessionAffinityConfig", "externalTrafficPolicy", "internalTrafficPolicy", "externalIPs",
    "loadBalancerSourceRanges", "healthCheckNodePort", "ipFamilies", "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts", "loadBalancerClass", "externalName",
}
_SLICE_FIELDS = {"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"}
_ENDPOINT_FIELDS = {"addresses", "conditions", "nodeName", "targetRef", "zone", "hostname",
                    "hints"}
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


class LoadedObjects:
    """Services and EndpointSlices read from one or more files, plus warnings."""

    def __init__(self) -> None:
        self.services: list[Service] = []
        self.slices: list[EndpointSlice] = []
        self.warnings: list[str] = []


def load_objects(path: str | Path) -> LoadedObjects:
    """Parse one file of Kubernetes objects into the model."""
    return parse_objects(read_input(path), str(path))


def parse_objects(text: str, source: str = "<input>") -> LoadedObjects:
    """Parse YAML or JSON text holding Services and EndpointSlices."""
    out = LoadedObjects()
    unsupported: set[str] = set()
    skipped: list[str] = []
    service_keys: set[str] = set()
    known_keys: set[str] = set()  # includes Services skipped as not proxied
    cluster_ips: dict[str, str] = {}
    for i, obj in enumerate(_documents(text, source)):
        kind = obj.get("kind")
        label = _label(obj, i)
        if kind == "Service":
            _check_api(obj, ("v1",), source, label)
            svc = _service(obj, source, label, unsupported)
            if svc is None:
                skipped.append(label)
                known_keys.add(label.split(" ", 1)[1])
                continue
            if svc.key in service_keys:
                raise InputError("duplicate Service (same namespace and name)",
                                 source=source, obj=label, field="metadata.name")
            other = cluster_ips.get(svc.cluster_ip)
            if other is not None:
                raise InputError(f"clusterIP {svc.cluster_ip} is already used by {other}",
                                 source=source, obj=label, field="spec.clusterIP")
            service_keys.add(svc.key)
            known_keys.add(svc.key)
            cluster_ips[svc.cluster_ip] = svc.key
            out.services.append(svc)
        elif kind == "EndpointSlice":
            _check_api(obj, ("discovery.k8s.io/v1",), source, label)
            out.slices.append(_slice(obj, source, label, unsupported))
        elif kind == "Endpoints":
            # The legacy Endpoints object duplicates EndpointSlices; kube-proxy ignores it.
            continue
        else:
            raise InputError(
                f"unsupported kind {brief(kind)}: expected Service or EndpointSlice "
                "(as printed by `kubectl get svc,endpointslices -o yaml`)",
                source=source, obj=label, field="kind")
    for sl in out.slices:
        if sl.service_key not in known_keys:
            raise InputError(
                f"EndpointSlice belongs to Service {sl.service_key}, which is not in the input",
                source=source, obj=f"EndpointSlice {sl.namespace}/{sl.name}",
                field=f"metadata.labels[{SERVICE_NAME_LABEL}]")
    if skipped:
        out.warnings.append(f"{source}: skipped (not proxied): {', '.join(skipped)}")
    if unsupported:
        fields = ", ".join(sorted(unsupported))
        out.warnings.append(f"{source}: ignored unsupported fields: {fields}")
    return out


def _documents(text: str, source: str) -> Iterator[dict[str, Any]]:
    if text.lstrip().startswith(("{", "[")):
        docs: list[Any] = [parse_json(text, source)]
    else:
        docs = parse_yaml_documents(text, source)
    found = False
    for doc in docs:
        if doc is None:
            continue
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            if not isinstance(item, dict):
                raise InputError("expected a Kubernetes object (a mapping with kind)",
                                 source=source)
            kind = item.get("kind")
            if isinstance(kind, str) and kind.endswith("List") and "items" in item:
                sub = item["items"] or []
                if not isinstance(sub, list):
                    raise InputError("items must be a list", source=source, field="items")
                for s in sub:
                    if not isinstance(s, dict):
                        raise InputError("list item is not an object", source=source,
                                         field="items")
                    found = True
                    yield s
            else:
                found = True
                yield item
    if not found:
        raise InputError("no Kubernetes objects found", source=source)


def _label(obj: dict[str, Any], index: int) -> str:
    meta = obj.get("metadata")
    kind = obj.get("kind", "object")
    if not isinstance(kind, str) or len(kind) > 64:
        kind = "object"
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):
        ns = meta.get("namespace") or "default"
        return f"{kind} {ns}/{meta['name']}"
    return f"{kind} #{index + 1}"


def _check_api(obj: dict[str, Any], versions: tuple[str, ...], source: str, label: str) -> None:
    if obj.get("apiVersion") not in versions:
        raise InputError(f"apiVersion {brief(obj.get('apiVersion'))} is not "
                         f"{' or '.join(versions)}", source=source, obj=label, field="apiVersion")


def _get(d: Any, key: str, typ: type | tuple[type, ...], source: str, label: str, field: str,
         default: Any = None, required: bool = False) -> Any:
    if not isinstance(d, dict):
        raise InputError("expected a mapping", source=source, obj=label,
                         field=field.rsplit(".", 1)[0])
    if key not in d or d[key] is None:
        if required:
            raise InputError("missing required field", source=source, obj=label, field=field)
        return default
    v = d[key]
    # bool is an int in Python; a port of `true` is still wrong.
    if not isinstance(v, typ) or (isinstance(v, bool) and bool not in _as_tuple(typ)):
        raise InputError(f"expected {_type_name(typ)}, got {type(v).__name__} {brief(v)}",
                         source=source, obj=label, field=field)
    return v


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list",
             dict: "a mapping"}
    return " or ".join(names.get(x, x.__name__) for x in _as_tuple(t))


def _meta(obj: dict[str, Any], source: str, label: str) -> tuple[str, str, dict[str, Any]]:
    meta = _get(obj, "metadata", dict, source, label, "metadata", required=True)
    name = _get(meta, "name", str, source, label, "metadata.name", required=True)
    ns = _get(meta, "namespace", str, source, label, "metadata.namespace", default="default")
    if not name or not _dns_label_ok(name) or not _dns_label_ok(ns):
        raise InputError("name and namespace must be DNS labels (a-z, 0-9, '-', '.')",
                         source=source, obj=label, field="metadata.name")
    return ns, name, meta


def _dns_label_ok(s: str) -> bool:
    return 0 < len(s) <= 253 and all(c.isalnum() and (c.islower() or c.isdigit()) or c in "-."
                                     for c in s)


def _port_number(v: Any, source: str, label: str, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise InputError(f"port {brief(v)} is out of range (1-65535)", source=source, obj=label,
                         field=field)
    return v


def _protocol(d: dict[str, Any], source: str, label: str, field: str) -> str:
    proto = _get(d, "protocol", str, source, label, field, default="TCP")
    if proto not in PROTOCOLS:
        raise InputError(f"protocol {brief(proto)} is not one of {', '.join(PROTOCOLS)}",
                         source=source, obj=label, field=field)
    return proto


def _ipv4(v: Any, source: str, label: str, field: str, *, unicast: bool = True) -> str:
    if not isinstance(v, str):
        raise InputError(f"expected an IPv4 address string, got {brief(v)}", source=source,
                         obj=label, field=field)
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        raise InputError(f"{brief(v)} is not an IP address", source=source, obj=label,
                         field=field) from None
    if ip.version != 4:
        raise InputError(f"{v} is IPv6; kpbench programs IPv4 only (use an IPv4 address)",
                         source=source, obj=label, field=field)
    if unicast and (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local
                    or ip.is_reserved or v == "255.255.255.255"):
        raise InputError(f"{v} is not a usable unicast address (loopback, multicast, "
                         "link-local, reserved or unspecified)", source=source, obj=label,
                         field=field)
    return v


def _ipv4_cidr(v: Any, source: str, label: str, field: str) -> str:
    # As Kubernetes validates it: an address, a slash and a prefix length (host bits may
    # be set); a bare address or a number is not a range.
    if not isinstance(v, str) or "/" not in v:
        raise InputError(f"{brief(v)} is not an IPv4 CIDR (e.g. 203.0.113.0/24)", source=source,
                         obj=label, field=field)
    try:
        ipaddress.IPv4Network(v.strip(), strict=False)
    except ValueError:
        raise InputError(f"{brief(v)} is not an IPv4 CIDR (e.g. 203.0.113.0/24)", source=source,
                         obj=label, field=field) from None
    return v


def _service(obj: dict[str, Any], source: str, label: str,
             unsupported: set[str]) -> Service | None:
    ns, name, _ = _meta(obj, source, label)
    spec = _get(obj, "spec", dict, source, label, "spec", required=True)
    for k in spec:
        if k not in _SERVICE_SPEC_FIELDS:
            unsupported.add(f"spec.{k}")
    typ = _get(spec, "type", str, source, label, "spec.type", default="ClusterIP")
    if typ == "ExternalName":
        return None
    if typ not in _SERVICE_TYPES:
        raise InputError(f"type {brief(typ)} is not one of ClusterIP, NodePort, LoadBalancer, "
                         "ExternalName", source=source, obj=label, field="spec.type")
    cip = _get(spec, "clusterIP", str, source, label, "spec.clusterIP", required=True)
    if cip in ("None", ""):
        return None  # headless: nothing to proxy
    cip = _ipv4(cip, source, label, "spec.clusterIP")
    raw_ports = _get(spec, "ports", list, source, label, "spec.ports", required=True)
    if not raw_ports:
        raise InputError("a Service needs at least one port", source=source, obj=label,
                         field="spec.ports")
    ports = []
    names = set()
    for i, p in enumerate(raw_ports):
        f = f"spec.ports[{i}]"
        pname = _get(p, "name", str, source, label, f"{f}.name", default="")
        if pname in names or (len(raw_ports) > 1 and not pname):
            raise InputError("ports of a multi-port Service need unique, non-empty names",
                             source=source, obj=label, field=f"{f}.name")
        names.add(pname)
        port = _port_number(_get(p, "port", int, source, label, f"{f}.port", required=True),
                            source, label, f"{f}.port")
        proto = _protocol(p, source, label, f"{f}.protocol")
        target = _get(p, "targetPort", (int, str), source, label, f"{f}.targetPort",
                      default=port)
        if isinstance(target, int):
            _port_number(target, source, label, f"{f}.targetPort")
        node_port = _get(p, "nodePort", int, source, label, f"{f}.nodePort")
        if node_port is not None:
            _port_number(node_port, source, label, f"{f}.nodePort")
        if typ != "ClusterIP" and node_port is None:
            raise InputError(f"a {typ} Service needs a nodePort on every port",
                             source=source, obj=label, field=f"{f}.nodePort")
        ports.append(ServicePort(pname, port, proto, target, node_port if typ != "ClusterIP"
                                 else None))
    affinity = _get(spec, "sessionAffinity", str, source, label, "spec.sessionAffinity",
                    default="None")
    if affinity not in ("None", "ClientIP"):
        raise InputError(f"sessionAffinity {brief(affinity)} is not None or ClientIP",
                         source=source, obj=label, field="spec.sessionAffinity")
    timeout = DEFAULT_AFFINITY_TIMEOUT
    cfg = _get(spec, "sessionAffinityConfig", dict, source, label, "spec.sessionAffinityConfig")
    if cfg is not None:
        cfield = "spec.sessionAffinityConfig.clientIP"
        client = _get(cfg, "clientIP", dict, source, label, cfield, default={})
        timeout = _get(client, "timeoutSeconds", int, source, label, f"{cfield}.timeoutSeconds",
                       default=DEFAULT_AFFINITY_TIMEOUT)
        if not 0 < timeout <= MAX_AFFINITY_TIMEOUT:
            raise InputError(f"timeoutSeconds {timeout} must be within "
                             f"1-{MAX_AFFINITY_TIMEOUT}", source=source,
                             obj=label, field=f"{cfield}.timeoutSeconds")
    policies = {}
    for key in ("externalTrafficPolicy", "internalTrafficPolicy"):
        v = _get(spec, key, str, source, label, f"spec.{key}", default="Cluster")
        if v not in ("Cluster", "Local"):
            raise InputError(f"{key} {brief(v)} is not Cluster or Local", source=source, obj=label,
                             field=f"spec.{key}")
        policies[key] = v
    ext_ips = tuple(
        _ipv4(ip, source, label, f"spec.externalIPs[{i}]")
        for i, ip in enumerate(_get(spec, "externalIPs", list, source, label, "spec.externalIPs",
                                    default=[])))
    lb_ranges = tuple(_get(spec, "loadBalancerSourceRanges", list, source, label,
                           "spec.loadBalancerSourceRanges", default=[]))
    for i, r in enumerate(lb_ranges):
        _ipv4_cidr(r, source, label, f"spec.loadBalancerSourceRanges[{i}]")
    hc = _get(spec, "healthCheckNodePort", int, source, label, "spec.healthCheckNodePort")
    if hc is not None:
        _port_number(hc, source, label, "spec.healthCheckNodePort")
    lb_ips: list[str] = []
    status = _get(obj, "status", dict, source, label, "status", default={})
    lb = _get(status, "loadBalancer", dict, source, label, "status.loadBalancer", default={})
    ingress = _get(lb, "ingress", list, source, label, "status.loadBalancer.ingress",
                   default=[])
    for i, ing in enumerate(ingress):
        f = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(ing, dict):
            raise InputError(f"expected a mapping, got {type(ing).__name__}", source=source,
                             obj=label, field=f)
        if ing.get("ip") is not None:  # an ingress may give only a hostname
            lb_ips.append(_ipv4(ing["ip"], source, label, f"{f}.ip"))
    return Service(
        namespace=ns, name=name, cluster_ip=cip, ports=tuple(ports), type=typ,
        session_affinity=affinity, affinity_timeout=timeout,
        external_traffic_policy=policies["externalTrafficPolicy"],
        internal_traffic_policy=policies["internalTrafficPolicy"],
        external_ips=ext_ips, load_balancer_ips=tuple(lb_ips) if typ == "LoadBalancer" else (),
        load_balancer_source_ranges=tuple(str(r) for r in lb_ranges),
        health_check_node_port=hc,
    )


def _slice(obj: dict[str, Any], source: str, label: str,
           unsupported: set[str]) -> EndpointSlice:
    ns, name, meta = _meta(obj, source, label)
    for k in obj:
        if k not in _SLICE_FIELDS:
            unsupported.add(f"EndpointSlice.{k}")
    labels = _get(meta, "labels", dict, source, label, "metadata.labels", default={})
    svc_name = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(svc_name, str) or not svc_name:
        raise InputError(f"missing label {SERVICE_NAME_LABEL} naming the Service",
                         source=source, obj=label, field="metadata.labels")
    atype = _get(obj, "addressType", str, source, label, "addressType", required=True)
    if atype != "IPv4":
        raise InputError(f"addressType {brief(atype)} is not supported; kpbench programs IPv4 only",
                         source=source, obj=label, field="addressType")
    ports = []
    for i, p in enumerate(_get(obj, "ports", list, source, label, "ports", default=[])):
        f = f"ports[{i}]"
        pname = _get(p, "name", str, source, label, f"{f}.name", default="")
        port = _port_number(_get(p, "port", int, source, label, f"{f}.port", required=True),
                            source, label, f"{f}.port")
        ports.append(EndpointPort(pname, port, _protocol(p, source, label, f"{f}.protocol")))
    endpoints = []
    for i, e in enumerate(_get(obj, "endpoints", list, source, label, "endpoints", default=[])):
        f = f"endpoints[{i}]"
        if not isinstance(e, dict):
            raise InputError("expected a mapping", source=source, obj=label, field=f)
        for k in e:
            if k not in _ENDPOINT_FIELDS:
                unsupported.add(f"EndpointSlice.endpoints[].{k}")
        addrs = _get(e, "addresses", list, source, label, f"{f}.addresses", required=True)
        if not addrs:
            raise InputError("an endpoint needs at least one address", source=source, obj=label,
                             field=f"{f}.addresses")
        addrs = [_ipv4(a, source, label, f"{f}.addresses[{j}]") for j, a in enumerate(addrs)]
        cond = _get(e, "conditions", dict, source, label, f"{f}.conditions", default={})
        # Kubernetes: an unset `ready` means ready; `serving` defaults to `ready`.
        ready = _get(cond, "ready", bool, source, label, f"{f}.conditions.ready", default=True)
        serving = _get(cond, "serving", bool, source, label, f"{f}.conditions.serving",
                       default=ready)
        term = _get(cond, "terminating", bool, source, label, f"{f}.conditions.terminating",
                    default=False)
        node = _get(e, "nodeName", str, source, label, f"{f}.nodeName")
        endpoints.append(Endpoint(tuple(addrs), node, ready, serving, term))
    return EndpointSlice(ns, name, svc_name, tuple(endpoints), tuple(ports), atype)
